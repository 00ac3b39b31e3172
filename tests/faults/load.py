"""Bounded load through the edge, every answer checked.

Threads of the standard library, each with one keep-alive connection, share a
pace of `rate` requests per second and stop at `budget` requests. A request is
made by one of three kinds of user (drawn per request with a seeded RNG):

  new     no cookie: a first visit; the answer's build must be the one its
          Set-Cookie pins it to (stable when nothing pins it);
  stable  cookie cedra_pool=stable.stable, as the edge sets it;
  canary  cookie cedra_pool=canary.canary.

for a page in fr/nl/en: product pages and the home (ISR, revalidate 30 s),
/about (static), all edge-cacheable, or /api/health (passed through, JSON
with the serving build). A reused keep-alive connection that fails before
any byte of an answer is retried once on a new connection, as browsers and
HTTP clients do for idempotent requests (RFC 9110 9.2.2); any other
transport failure is recorded as such.
"""

import calendar
import http.client
import json
import random
import re
import socket
import threading
import time

LOCALES = ("fr", "nl", "en")
SLUGS = ("chair", "table", "lamp")
COOKIE_OF = {"stable": "theme=dark; cedra_pool=stable.stable",
             "canary": "theme=dark; cedra_pool=canary.canary"}
USER_MIX = (("new", 2), ("stable", 4), ("canary", 4))
PAGE_MIX = (("product", 5), ("home", 1), ("about", 2), ("health", 2))
# What the Valkey watcher may miss: its poll period plus a GET under load.
POLL_TOLERANCE = 0.05

BUILD_RE = re.compile(rb'\\"b\\":\\"([A-Za-z0-9._-]+)\\"')
LANG_RE = re.compile(rb'<html lang="([a-z]+)"')
STAMP_RE = re.compile(rb'<p id="render-stamp" data-page="([^"]+)" data-render="\d+" '
                      rb'data-rendered-at="([^"]+)" data-render-id="([^"]+)"')


def _weighted(rng, mix):
    total = sum(w for _, w in mix)
    x = rng.uniform(0, total)
    for v, w in mix:
        x -= w
        if x <= 0:
            return v
    return mix[-1][0]


def iso_to_epoch(s):
    """2026-11-24T03:03:51.009Z -> seconds since the epoch (float)."""
    main, _, frac = s.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(main, "%Y-%m-%dT%H:%M:%S")) + float("0." + (frac or "0"))


class Answer(object):
    __slots__ = ("user", "path", "locale", "slug", "kind", "t0", "t0_wall", "t1", "status",
                 "error", "cache", "pins", "build", "lang", "page", "rendered_at", "render_id", "cport",
                 "retried", "verdict", "why")

    def __repr__(self):
        return ("Answer(%s %s status=%r cache=%r build=%r pins=%r lang=%r page=%r error=%r "
                "cport=%r verdict=%r why=%r)" % (
                    self.user, self.path, self.status, self.cache, self.build, self.pins,
                    self.lang, self.page, self.error, self.cport, self.verdict, self.why))

    def expected_build(self):
        if self.user in ("stable", "canary"):
            return self.user
        if self.pins:
            return self.pins[-1].split(".", 1)[-1]
        return "stable"


def parse_body(a, body):
    if a.kind == "health":
        try:
            a.build = json.loads(body).get("buildId")
        except ValueError:
            a.build = None
        return
    m = BUILD_RE.search(body)
    a.build = m.group(1).decode() if m else None
    m = LANG_RE.search(body)
    a.lang = m.group(1).decode() if m else None
    m = STAMP_RE.search(body)
    if m:
        a.page = m.group(1).decode()
        a.rendered_at = iso_to_epoch(m.group(2).decode())
        a.render_id = m.group(3).decode()


class Load(object):
    def __init__(self, port, rate, budget, workers=8, seed=1, timeout=10.0):
        self.port, self.rate, self.budget, self.timeout = port, rate, budget, timeout
        self.answers = []
        self.lock = threading.Lock()
        self.stop_ev = threading.Event()
        self.tickets = 0
        self.seed = seed
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(workers)]

    def start(self):
        self.t_start = time.monotonic()
        for t in self.threads:
            t.start()
        return self

    def stop(self):
        self.stop_ev.set()
        for t in self.threads:
            t.join(self.timeout + 5)
        return self.answers

    def sent(self):
        with self.lock:
            return len(self.answers)

    def exhausted(self):
        return self.tickets >= self.budget

    def _ticket(self):
        with self.lock:
            if self.tickets >= self.budget:
                return None
            k = self.tickets
            self.tickets += 1
        return self.t_start + k / float(self.rate)

    def _run(self, i):
        rng = random.Random(self.seed * 1000 + i)
        conn = None
        while not self.stop_ev.is_set():
            due = self._ticket()
            if due is None:
                break
            # pacing of the generator, not a test wait: stop() interrupts it
            if self.stop_ev.wait(max(0.0, due - time.monotonic())):
                break
            a = self._draw(rng)
            conn = self._request(conn, a)
            with self.lock:
                self.answers.append(a)
        if conn is not None:
            conn.close()

    def _draw(self, rng):
        a = Answer()
        a.user = _weighted(rng, USER_MIX)
        a.kind = _weighted(rng, PAGE_MIX)
        a.locale = rng.choice(LOCALES)
        a.slug = None
        if a.kind == "product":
            a.slug = rng.choice(SLUGS)
            a.path = "/%s/products/%s" % (a.locale, a.slug)
        elif a.kind == "home":
            a.path = "/%s" % a.locale
        elif a.kind == "about":
            a.path = "/%s/about" % a.locale
        else:
            a.path, a.locale = "/api/health", None
        a.status = a.error = a.cache = a.build = a.lang = a.page = a.rendered_at = None
        a.render_id = a.cport = a.verdict = a.why = None
        a.pins = []
        a.retried = False
        return a

    def _request(self, conn, a):
        headers = {"Accept-Encoding": "identity"}
        if a.user in COOKIE_OF:
            headers["Cookie"] = COOKIE_OF[a.user]
        a.t0 = time.monotonic()
        a.t0_wall = time.time()
        for attempt in (0, 1):
            reused = conn is not None
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            got_bytes = False
            try:
                if conn.sock is None:
                    conn.connect()
                a.cport = conn.sock.getsockname()[1]
                conn.request("GET", a.path, headers=headers)
                r = conn.getresponse()
                got_bytes = True
                body = r.read()
                a.status = r.status
                for k, v in r.getheaders():
                    k = k.lower()
                    if k == "x-cedra-cache":
                        a.cache = v
                    elif k == "set-cookie":
                        m = re.match(r"\s*cedra_pool=([^;]*)", v)
                        if m:
                            a.pins.append(m.group(1))
                parse_body(a, body)
                if r.will_close:
                    conn.close()
                    conn = None
                break
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                conn = None
                if attempt == 0 and reused and not got_bytes and not isinstance(
                        e, socket.timeout):
                    a.retried = True
                    continue
                a.error = "%s: %s" % (type(e).__name__, e)
                break
        a.t1 = time.monotonic()
        return conn


class Revalidation(object):
    """One on-demand revalidation: revalidateTag(product-<slug>) on an
    instance of `build`, complete once Valkey shows every page key of the
    slug gone or rewritten by a render newer than the call. timeline[locale]
    is what Valkey held under that locale's key afterwards, polled:
    [(t_mono, render id or None)]."""

    def __init__(self, build, slug, t_call_wall, t_call_mono):
        self.build, self.slug = build, slug
        self.t_call_wall, self.t_call_mono = t_call_wall, t_call_mono
        self.t_done_mono = None
        self.timeline = {loc: [] for loc in LOCALES}

    def describe(self, locale, t0):
        """The timeline of a key, times relative to t0 (for failure reports)."""
        return " ".join("%+.3f:%s" % (t - t0, (rid or "-")[:8])
                        for t, rid in self.timeline.get(locale, ()))

    def valkey_held(self, locale, render_id, t0):
        """Next.js wrote this render back under the key after the revalidation
        had completed (a render in flight when revalidateTag ran), and the
        request started before (or within the poll tolerance after) Valkey
        stopped holding it. The edge only gets pages from Valkey, so a render
        that never reappears there was served from a cache that should have
        dropped it."""
        tl = self.timeline.get(locale, ())
        for i, (t, rid) in enumerate(tl):
            if rid == render_id and t >= self.t_done_mono:
                end = tl[i + 1][0] if i + 1 < len(tl) else float("inf")
                if t0 <= end + POLL_TOLERANCE:
                    return True
        return False


def judge(a, revals):
    """Sets a.verdict: ok | wrong | edge5xx? (5xx decided later from the
    logs) | transport; a.why says what is wrong."""
    if a.error is not None:
        a.verdict, a.why = "transport", a.error
        return
    if a.status >= 500:
        a.verdict = "5xx"
        return
    problems = []
    if a.status not in (200, 404):
        problems.append("status %d" % a.status)
    want = a.expected_build()
    if a.build != want:
        problems.append("build %r, pinned to %r" % (a.build, want))
    if a.kind != "health":
        if a.lang != a.locale:
            problems.append("lang %r on %s" % (a.lang, a.path))
        if a.page is None or (a.locale not in a.page.split(":")):
            problems.append("page %r on %s" % (a.page, a.path))
    if a.kind == "product" and a.rendered_at is not None:
        for rv in revals:
            if (rv.t_done_mono is not None and rv.build == a.build and rv.slug == a.slug and
                    a.t0 >= rv.t_done_mono and a.rendered_at < rv.t_call_wall - 0.002):
                why = ("rendered %.3f s before a revalidation completed %.3f s before this "
                       "request" % (rv.t_call_wall - a.rendered_at, a.t0 - rv.t_done_mono))
                if not problems and rv.valkey_held(a.locale, a.render_id, a.t0):
                    # Next.js itself wrote an older render back after the
                    # revalidation (a render in flight when it was called):
                    # Valkey holds it, the origin serves it too.
                    a.verdict, a.why = "stale_origin", why + "; Valkey held that render"
                    return
                problems.append(why + "; render %s, Valkey %s key after the call: %s" % (
                    a.render_id, a.locale, rv.describe(a.locale, a.t0)))
                break
    a.verdict = "wrong" if problems else "ok"
    a.why = "; ".join(problems) or None
