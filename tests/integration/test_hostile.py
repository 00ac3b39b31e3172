"""Hostile input, driven by the corpus in tests/hostile/ (data only, see its
README): through the shipped haproxy/haproxy.cfg + cedra-spoa + redis-server
holding real cached pages, over raw sockets (no client-side normalisation);
directly over SPOP against cedra-spoa; and against the operator sockets of
cedra-spoa and cedra-agent.

Every answer is checked against invariants whatever the case expects: no 5xx,
every Location a same-origin /<locale> path, no header made of request bytes,
pins only to live pools, a cached page only for the exact path it was cached
under; and cedra-spoa stays the same process and answers a good request after
each bad one."""

import base64
import hashlib
import ipaddress
import json
import os
import re
import selectors
import signal
import socket
import struct
import threading
import time
import unittest

import harness
import spop_client as sc
from test_haproxy import HaproxyCase, SF
from test_edge_cache import redis_cmd, load_value, aged, EdgeCachePages, FIX, next_etag

CORPUS = os.path.join(harness.REPO, "tests", "hostile")
T = 5.0 * SF           # one answer
QUIET = 0.3            # "nothing more arrives" window
PREFIX = "storefront:"
CANARY_PREFIX = "canary:"
ROUTE_HASH = {         # tests/fixtures/isr/v16/routes.table
    "home": "2825bf9e1aa035199cc70149b2d86ad387d3637a420605faa046db23b53f0b30",
    "about": "cb86e4a9c0237a4d1395f3b088c9d8bd4a8b62248b95d11eca5620c2bebaead9",
    "product": "600fe424a8f39649d833b7ff10b31023d5c4f89f76ff08babb88a1011243c40d",
}
LOCALES = ("fr", "nl", "en")
LIVE_PINS = ("stable.b1", "canary.b2")
# A Location the edge may emit: a same-origin path under a locale, printable
# ASCII only (no CR/LF/NUL/space), never a backslash.
# One event per line (DESIGN section 4); a quoted value escapes what it must.
LOG_LINE = re.compile(r'^ts=\S+ level=[a-z]+ prog=cedra-\w+ event=[a-z_0-9]+( [a-z_0-9.]+=("([^"\\\x00-\x1f]|\\.)*"|[^ "\x00-\x1f]*))*$')
SAFE_LOCATION = re.compile(r"^/(fr|nl|en)(/[\x21-\x7e]*|\?[\x21-\x7e]*)?$")


def corpus(name):
    with open(os.path.join(CORPUS, name)) as f:
        return json.load(f)


def lat(s):
    """Corpus strings are bytes written as Latin-1 code points."""
    return s.encode("latin-1")


def expand(s):
    """Size placeholders of the corpus: BIG<n> (n filler bytes), LONGPATH
    (longer than any redirect target), MANYCOOKIES<n>, LONG<n>, REPEAT<n>{...}."""
    s = re.sub(r"REPEAT(\d+)\{([^{}]*)\}", lambda m: m.group(2) * int(m.group(1)), s)
    s = re.sub(r"BIG(\d+)", lambda m: "x" * int(m.group(1)), s)
    s = re.sub(r"LONG(\d+)", lambda m: "a" * int(m.group(1)), s)
    s = s.replace("LONGPATH", "a" * 4200)
    s = re.sub(r"MANYCOOKIES(\d+)", lambda m: "; ".join("c%d=v%d" % (i, i) for i in range(int(m.group(1)))), s)
    return s


def subst(obj, p):
    """obj with every "{P}" in its strings replaced by p."""
    if isinstance(obj, str):
        return obj.replace("{P}", p)
    if isinstance(obj, list):
        return [subst(x, p) for x in obj]
    if isinstance(obj, dict):
        return {k: subst(v, p) for k, v in obj.items()}
    return obj


def location_ok(loc):
    return bool(SAFE_LOCATION.match(loc)) and "\\" not in loc


def sanitized(binary):
    """ASan's redzones and quarantine, TSan's shadow memory: RSS bounds mean
    nothing for a sanitizer build (they are printed, not asserted)."""
    try:
        with open(binary, "rb") as f:
            data = f.read()
        return b"__asan_init" in data or b"__tsan_init" in data
    except OSError:
        return False


def log_lines_broken(proc):
    """Lines of a daemon's stderr that are not one key=value event."""
    return [l for l in proc.stderr_text().splitlines()
            if not LOG_LINE.match(l) and not re.match(r"^==\d+==", l)]  # (valgrind's own)


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for pid %d" % pid)


# ---- HTTP over raw sockets -------------------------------------------------------


def build_request(case, placeholder=None):
    if "raw" in case:
        return lat(expand(case["raw"]))
    method = case.get("method", "GET")
    target = expand(case["target"])
    host = expand(case.get("host", "shop.example"))
    lines = ["%s %s HTTP/1.1" % (method, target), "Host: %s" % host, "Connection: close"]
    for name, value in case.get("headers", []):
        lines.append("%s: %s" % (name, expand(value)))
    for name, value, n in case.get("headers_repeat", []):
        lines += ["%s: %s%d" % (name, value, i) for i in range(n)]
    if method in ("POST", "PUT"):
        lines.append("Content-Length: 0")
    return lat("\r\n".join(lines) + "\r\n\r\n")


def request_path(req):
    """The path of the first request line, as HAProxy's "path" sees it."""
    line = req.split(b"\r\n", 1)[0].split(b"\n", 1)[0]
    parts = re.split(rb"[ \t]+", line)  # HAProxy takes a tab for a separator too
    target = parts[1] if len(parts) > 1 else b""
    m = re.match(rb"^[a-zA-Z][a-zA-Z0-9+.-]*://[^/]*(/.*)?$", target)
    if m:
        target = m.group(1) or b"/"
    return target.split(b"?", 1)[0], parts[0]


class Response(object):
    def __init__(self, status, headers, body, head):
        self.status, self.headers, self.body, self.head = status, headers, body, head

    def get(self, name):
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def all(self, name):
        return [v for k, v in self.headers if k == name]


def parse_responses(raw, head_request=False):
    out = []
    while raw:
        head, sep, rest = raw.partition(b"\r\n\r\n")
        if not sep or not head.startswith(b"HTTP/"):
            break
        lines = head.decode("latin-1").split("\r\n")
        try:
            status = int(lines[0].split()[1])
        except (IndexError, ValueError):
            break
        hdrs = []
        for line in lines[1:]:
            k, _, v = line.partition(":")
            hdrs.append((k.strip().lower(), v.strip()))
        n = 0
        chunked = False
        for k, v in hdrs:
            if k == "content-length" and v.isdigit():
                n = int(v)
            if k == "transfer-encoding" and "chunked" in v.lower():
                chunked = True
        if head_request or status == 304 or status < 200:
            n, chunked = 0, False
        if chunked:
            body = b""
            while True:
                line, _, rest = rest.partition(b"\r\n")
                size = int(line.split(b";")[0] or b"0", 16)
                if size == 0:
                    rest = rest.partition(b"\r\n")[2]  # (no trailers here)
                    break
                body, rest = body + rest[:size], rest[size + 2:]
            out.append(Response(status, hdrs, body, head))
            raw = rest
        else:
            out.append(Response(status, hdrs, rest[:n], head))
            raw = rest[n:]
        head_request = False
    return out


def send_raw(port, data, timeout=T, half_close=False):
    """Sends data, returns what came back until EOF (or the timeout: a server
    still waiting for the rest of a request answers nothing)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    chunks = []
    try:
        try:
            s.sendall(data)
            if half_close:
                s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server refused the rest (reset): read what it said
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                d = s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not d:
                break
            chunks.append(d)
    finally:
        s.close()
    return b"".join(chunks)


class HostileHttpBase(HaproxyCase):
    """The shipped stack with real cached pages (Next.js 16.4.6 values, route
    table of the fixture), session cookie "sid", operator socket."""

    start_redis = EdgeCachePages.start_redis
    FRAME = 16380   # max-frame-size of both HAProxy's SPOE and cedra-spoa
    ROUTES = os.path.join(FIX, "routes.table")  # or "pathname" (Next <= 16.3.7 keys)

    def page_key(self, path):
        if self.ROUTES == "pathname":
            return path
        parts = path.strip("/").split("/")
        kind = "home" if len(parts) == 1 else ("about" if parts[1] == "about" else "product")
        return "/route-cache/APP_PAGE/%s/$%s" % (ROUTE_HASH[kind], path)

    def put(self, prefix, key, html):
        v = aged(self.template, 1)
        v["value"]["html"] = html
        redis_cmd(self.rport, "SET", prefix + key, json.dumps(v))
        redis_cmd(self.rport, "HSET", prefix + "__sharedTags__", key, json.dumps(v["tags"]))

    def setUp(self):
        super().setUp()
        self.redis, self.rport = self.start_redis()
        self.sock = self.env.path("spoa.sock")
        deliver_port = harness.free_port()
        extra = "\n".join([
            "valkey 127.0.0.1:%d" % self.rport,
            "valkey-timeout 500ms",
            "pool stable key-prefix %s routes %s build b1" % (PREFIX, self.ROUTES),
            "session-cookie sid",
            "stats-socket %s" % self.sock,
            "deliver 127.0.0.1:%d" % deliver_port,
        ])
        self.start_stack(extra=extra, max_frame_size=self.FRAME,
                         haproxy_env={"CEDRA_SPOE_TIMEOUT_PROCESSING": "%dms" % (1000 * SF),
                                      "CEDRA_SPOE_MAX_FRAME_SIZE": str(self.FRAME),
                                      "CEDRA_DELIVER_ADDR": "127.0.0.1:%d" % deliver_port})
        self.wait_spoa_check()
        self.template = load_value("product-chair.json")
        spec = corpus("http.json")
        self.pages = {}      # path -> html bytes
        self.page_ids = {}   # id -> path
        for pid, path in spec["pages"].items():
            size = 0
            if isinstance(path, dict):   # a page too big for one ACK: the delivery path
                path, size = path["path"], path["size"]
            html = "<!DOCTYPE html><html><body><h1>PAGE %s %s</h1>%s</body></html>" % (
                pid, path, "<p>%s</p>" % ("x" * size) if size else "")
            self.put(PREFIX, self.page_key(path), html)
            self.pages[path.encode()] = html.encode()
            self.page_ids[pid] = path.encode()
        for path in self.pages:
            harness.wait_until(lambda: self.classify(build_request({"target": path.decode()}))[0] == "edge",
                               10 * SF, what="HIT on %s" % path)
        self.spoa_pid = self.agent.pid

    # -- one exchange, the invariants, the class
    def exchange(self, req):
        raw = send_raw(self.hap.port, req)
        path, method = request_path(req)
        resps = parse_responses(raw, head_request=(method == b"HEAD"))
        return raw, resps, path, method

    def classify(self, req):
        raw, resps, path, method = self.exchange(req)
        if not resps:
            return "closed", None, path, method, raw
        r = resps[0]
        origin = r.get("x-origin")
        if origin is not None:
            return "origin", r, path, method, raw
        if r.get("x-cedra-cache") in ("HIT", "STALE") and r.status in (200, 304, 404):
            return "edge", r, path, method, raw
        if r.status in (301, 302, 303, 307, 308):
            return "redirect", r, path, method, raw
        if 400 <= r.status < 500:
            return "4xx", r, path, method, raw
        return "other", r, path, method, raw

    def check_invariants(self, what, req, raw, resps, path, method, live_pins=LIVE_PINS):
        for r in resps:
            self.assertLess(r.status, 500, "%s: %d %r" % (what, r.status, r.head[:300]))
            for loc in r.all("location"):
                self.assertTrue(location_ok(loc), "%s: unsafe Location %r" % (what, loc))
            names = [k for k, _ in r.headers]
            self.assertNotIn("x-injected", names, what)
            for sc_ in r.all("set-cookie"):
                m = re.match(r"^cedra_pool=([^;]*);", sc_)
                self.assertTrue(m and m.group(1) in live_pins, "%s: set-cookie %r" % (what, sc_))
        # Pipelined requests (no bodies in the corpus's pipelines): answer i
        # belongs to request i.
        heads = [path] + [request_path(h)[0] for h in req.split(b"\r\n\r\n")[1:] if h.strip()]
        for i, r in enumerate(resps[:len(heads)] if b"Content-Length" not in req else resps[:1]):
            if r.get("x-origin") is None and r.get("x-cedra-cache") in ("HIT", "STALE"):
                # Served from the cache: only ever for the exact path of a page.
                self.assertIn(heads[i], self.pages, "%s: cached page served for %r (%d)" % (what, heads[i], r.status))
                if r.status == 200 and method != b"HEAD":
                    self.assertEqual(r.body, self.pages[heads[i]], "%s: another page's body" % what)

    def check_class(self, what, expect, kind, r):
        def is_hit(pid):
            return kind == "edge" and r.get("x-cedra-cache") == "HIT" and r.body == self.pages[self.page_ids[pid]]
        if expect.startswith("hit:"):
            self.assertTrue(is_hit(expect[4:]), "%s: expected %s, got %s %r" % (
                what, expect, kind, r.head[:300] if r else None))
        elif expect.startswith("hit-or-pass:"):
            self.assertTrue(is_hit(expect[12:]) or kind == "origin", "%s: expected %s, got %s %r" % (
                what, expect, kind, r.head[:300] if r else None))
        elif expect == "pass":
            self.assertEqual(kind, "origin", "%s: %r" % (what, r.head[:300] if r else None))
        elif expect == "redirect":
            self.assertEqual(kind, "redirect", "%s: %r" % (what, r.head[:300] if r else None))
        elif expect == "4xx-from-haproxy":
            self.assertIn(kind, ("4xx", "closed"), "%s: %r" % (what, r.head[:300] if r else None))
        elif expect == "not-served":
            self.assertNotEqual(kind, "edge", "%s: %r" % (what, r.head[:300] if r else None))
        elif expect.startswith("status:"):
            # What Next.js answers (200 or 304), whoever answers.
            want = [int(x) for x in expect[7:].split(",")]
            self.assertIn(r.status if r else None, want, "%s: %r" % (what, r.head[:300] if r else None))
        else:
            self.assertEqual(expect, "safe", what)

    def assertSpoaHealthy(self, what):
        self.assertTrue(self.agent.alive(), "cedra-spoa died after %s (rc=%r)" % (what, self.agent.popen.returncode))
        self.assertEqual(self.agent.pid, self.spoa_pid)
        kind, r, _, _, _ = self.classify(build_request({"target": "/fr/products/chair"}))
        self.assertEqual(kind, "edge", "no HIT for a good request after %s" % what)
        self.assertEqual(r.body, self.pages[b"/fr/products/chair"])
        kind, r, _, _, _ = self.classify(build_request({"target": "/nl/whatever"}))
        self.assertEqual((kind, r.get("x-cedra-locale")), ("origin", "nl"),
                         "no agent answer for a good request after %s" % what)

    def with_etags(self, case):
        """ETAG(<page>) in a header or raw request: the ETag Next.js sends for it."""
        def sub(text):
            return re.sub(r"ETAG\((\w[\w-]*)\)",
                          lambda m: next_etag(self.pages[self.page_ids[m.group(1)]].decode()), text)
        case = dict(case)
        if "raw" in case:
            case["raw"] = sub(case["raw"])
        if "headers" in case:
            case["headers"] = [[k, sub(v)] for k, v in case["headers"]]
        return case

    def run_http_case(self, what, case, expect):
        case = self.with_etags(case)
        req = build_request(case)
        kind, r, path, method, raw = self.classify(req)
        self.last = r
        self.check_invariants(what, req, raw, parse_responses(raw, method == b"HEAD"), path, method)
        self.check_class(what, expect, kind, r)
        if "responses" in case:
            self.assertEqual(len(parse_responses(raw, method == b"HEAD")), case["responses"], what)
        if expect == "redirect" and "location" in case:
            self.assertEqual(r.get("location"), case["location"], what)
        return kind


class HostileHttpTest(HostileHttpBase):
    def test_http_corpus(self):
        self.run_http_corpus()

    def run_http_corpus(self):
        spec = corpus("http.json")
        seen = {}
        for i, case in enumerate(spec["cases"]):
            with self.subTest(case=case["id"]):
                kind = self.run_http_case(case["id"], case, case["expect"])
                # Every request HAProxy accepted got the agent's answer (a
                # NOTIFY it could not take would show as ERROR, failing open).
                self.assertNotEqual(self.last.get("x-cedra-cache") if self.last else None, "ERROR", case["id"])
                seen[kind] = seen.get(kind, 0) + 1
            if i % 10 == 9:
                self.assertSpoaHealthy(case["id"])
        self.assertSpoaHealthy("the whole HTTP corpus")
        self.assertEqual(log_lines_broken(self.agent)[:5], [], "log lines broken by the HTTP corpus")
        print("\nhostile HTTP corpus: %d cases, outcomes %r" % (len(spec["cases"]), seen))

    def test_field_matrix(self):
        spec = corpus("http_fields.json")
        n = 0
        for field in spec["fields"]:
            for payload in spec["payloads"]:
                case = subst(field, payload)
                what = "%s %r" % (field["id"], payload)
                with self.subTest(field=field["id"], payload=payload):
                    self.run_http_case(what, case, field["expect"])
                n += 1
            self.assertSpoaHealthy("field %s" % field["id"])
        self.assertEqual(log_lines_broken(self.agent)[:5], [], "log lines broken by the field matrix")
        print("\nhostile field matrix: %d requests" % n)

    def test_pool_cookies(self):
        """A pin cookie only ever pins to a live pool and its build: stable b1
        and canary b2, canary weight 0 so that a forged pin lands on stable."""
        port = harness.free_port()
        cfg = self.env.write("origin-canary.cfg", (
            "global\n    nbthread 1\ndefaults\n    mode http\n    timeout client 30s\n"
            "    timeout server 30s\n    timeout connect 2s\nfrontend o\n    bind 127.0.0.1:%d\n"
            "    http-request return status 200 content-type text/plain string canary hdr x-origin canary\n") % port)
        proc = self.env.spawn("origin-canary", [harness.haproxy_bin(), "-db", "-f", cfg])
        proc.expect_rc = harness.HAPROXY_STOP_RC
        self.env.wait_ready(proc, lambda: harness.tcp_connectable("127.0.0.1", port), 10, "canary origin")
        for cmd in ("set server storefront_canary/canary1 addr 127.0.0.1 port %d" % port,
                    "set server storefront_canary/canary1 state ready"):
            harness.unix_command(self.hap.sock, cmd)
        for cmd in ("set pool canary key-prefix %s routes pathname build b2" % CANARY_PREFIX,
                    "set pool canary weight 0"):
            self.assertNotIn("error", harness.unix_command(self.sock, cmd, errors="strict"))
        canary_html = b"<!DOCTYPE html><html><body>CANARY chair</body></html>"
        self.put(CANARY_PREFIX, "/fr/products/chair", canary_html.decode())
        stable_html = self.pages[b"/fr/products/chair"]

        def pool_of(what, cookies, path):
            lines = ["GET %s HTTP/1.1" % path, "Host: shop.example", "Connection: close"]
            lines += ["Cookie: %s" % expand(c) for c in cookies]
            req = lat("\r\n".join(lines) + "\r\n\r\n")
            kind, r, rpath, method, raw = self.classify(req)
            if kind == "4xx":
                return "4xx", None
            # The canary page is a cached page too, for the exact path.
            pages, self.pages = self.pages, dict(self.pages)
            if r is not None and r.body == canary_html:
                self.pages[rpath] = canary_html
            try:
                self.check_invariants(what, req, raw, parse_responses(raw), rpath, method)
            finally:
                self.pages = pages
            if kind == "origin":
                who = "canary" if r.get("x-origin") == "canary" else "stable"
            elif kind == "edge":
                self.assertIn(r.body, (stable_html, canary_html), what)
                who = "canary" if r.body == canary_html else "stable"
            else:
                self.fail("%s: %s %r" % (what, kind, r.head[:300] if r else None))
            pins = [re.match(r"cedra_pool=([^;]*);", v).group(1) for v in r.all("set-cookie")]
            for p in pins:
                self.assertEqual(p.split(".")[0], who, "%s: pinned to %s, served by %s" % (what, p, who))
            return who, pins

        # canary pinning works at all (else the cases below prove nothing)
        harness.wait_until(lambda: pool_of("canary", ["cedra_pool=canary.b2"], "/fr/products/chair")[0] == "canary",
                           10 * SF, what="canary page for a canary pin")
        spec = corpus("pool_cookies.json")
        for case in spec["cases"]:
            for path in ("/fr/products/chair", "/fr/pass-to-origin"):
                what = "%s %s" % (case["id"], path)
                with self.subTest(case=case["id"], path=path):
                    who, pins = pool_of(what, case["cookies"], path)
                    exp = case["expect"]
                    if exp == "stable-or-4xx":
                        self.assertIn(who, ("stable", "4xx"), what)
                    elif exp == "live":
                        self.assertIn(who, ("stable", "canary"), what)
                    else:
                        self.assertEqual(who, exp, what)
                    if who != "4xx" and "repin" in case:
                        self.assertEqual(bool(pins), case["repin"], "%s: set-cookie %r" % (what, pins))
        self.assertSpoaHealthy("the pool cookie corpus")


def rsc_param(prefetch, segment, tree, next_url=None):
    """The client's _rsc value (FACTS.md section 9), written from the
    description, not from the C code."""
    if prefetch in (None, "0") and segment is None and tree is None:
        return ""
    text = ",".join(v if v is not None else "0" for v in (prefetch, segment, tree, next_url))
    digest = hashlib.sha256(lat(text)).digest()[:12]
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


class HostileRscTest(HostileHttpBase):
    def test_rsc_corpus(self):
        value = self.template["value"]
        full = base64.b64decode(value["rscData"])
        segments = {k: base64.b64decode(v) for k, v in value["segmentData"].items()}
        seen = {}
        for case in corpus("rsc.json")["cases"]:
            what = case["id"]
            with self.subTest(case=what):
                path = case.get("path", "/fr/products/chair")
                prefetch, segment, tree = case.get("prefetch"), case.get("segment"), case.get("tree")
                segment = expand(segment) if segment is not None else None
                tree = expand(tree) if tree is not None else None
                if "query" in case:
                    query = case["query"]
                else:
                    query = "_rsc=" + rsc_param(prefetch, segment, tree)
                query = case.get("query_prefix", "") + query + case.get("extra_query", "")
                method = case.get("method", "GET")
                lines = ["%s %s%s HTTP/1.1" % (method, path, "?" + query if query else ""),
                         "Host: shop.example", "Connection: close"]
                lines += ["RSC: %s" % case.get("rsc", "1")] * case.get("rsc_lines", 1)
                if prefetch is not None:
                    lines.append("Next-Router-Prefetch: %s" % prefetch)
                if segment is not None:
                    lines.append("Next-Router-Segment-Prefetch: %s" % segment)
                if tree is not None:
                    lines.append("Next-Router-State-Tree: %s" % tree)
                lines += ["%s: %s" % (k, v) for k, v in case.get("headers", [])]
                if method == "POST":
                    lines.append("Content-Length: 0")
                req = lat("\r\n".join(lines) + "\r\n\r\n")
                raw, resps, rpath, rmethod = self.exchange(req)
                r = resps[0] if resps else None
                edge = r is not None and r.get("x-origin") is None and r.get("x-cedra-cache") in ("HIT", "STALE")
                for x in resps:
                    self.assertLess(x.status, 500, "%s: %r" % (what, x.head[:300]))
                if edge and (r.get("content-type") or "").startswith("text/x-component"):
                    self.assertIn(rpath, self.pages, "%s: RSC payload served for %r" % (what, rpath))
                    if r.status == 200 and method == "GET":
                        want = segments.get(segment) if (prefetch == "1" and segment is not None) else full
                        self.assertEqual(r.body, want, "%s: not the payload the request names" % what)
                elif edge:
                    self.check_invariants(what, req, raw, resps, rpath, rmethod)
                exp = case["expect"]
                kind = "origin" if r is not None and r.get("x-origin") else ("edge" if edge else "other")
                seen[kind] = seen.get(kind, 0) + 1
                if exp == "rsc:full":
                    self.assertTrue(edge and r.body == full, "%s: %r" % (what, r.head[:300] if r else None))
                elif exp == "rsc:segment":
                    self.assertTrue(edge and r.body == segments[segment], "%s: %r" % (what, r.head[:300] if r else None))
                elif exp == "pass":
                    self.assertEqual(kind, "origin", "%s: %r" % (what, r.head[:300] if r else None))
                elif exp == "not-served":
                    self.assertFalse(edge, "%s: %r" % (what, r.head[:300] if r else None))
                else:
                    self.assertEqual(exp, "safe")
        self.assertSpoaHealthy("the RSC corpus")
        print("\nhostile RSC corpus: outcomes %r" % (seen,))


class HostileHttpSmallFramesTest(HostileHttpBase):
    """The same corpus with 2 KiB SPOE frames on both sides: HAProxy sends the
    NOTIFYs of big requests in fragments that cedra-spoa must reassemble."""

    FRAME = 2048

    def test_http_corpus_fragmented(self):
        HostileHttpTest.run_http_corpus(self)


class HostileHttpPathnameTest(HostileHttpBase):
    """The same corpus with pages keyed by their pathname (Next.js <= 16.3.7,
    <= 15.5.26): the key is the request path itself, so only an exact,
    plain path may ever reach it."""

    ROUTES = "pathname"

    def test_http_corpus_pathname_keys(self):
        HostileHttpTest.run_http_corpus(self)


# ---- SPOP ---------------------------------------------------------------------------------


def typed(v):
    if v is None:
        return sc.encode_typed(None)
    if isinstance(v, str):
        return bytes((sc.T_STRING,)) + sc.encode_bytes(lat(v))
    if "fill" in v:
        s = (v["fill"] * (v["n"] // max(1, len(v["fill"])) + 1))[:v["n"]]
        return bytes((sc.T_STRING,)) + sc.encode_bytes(lat(v.get("prefix", "") + s))
    if "bin" in v:
        return bytes((sc.T_BINARY,)) + sc.encode_bytes(lat(v["bin"]))
    if "int" in v:
        return sc.encode_typed(sc.Int64(v["int"]))
    if "uint32" in v:
        return sc.encode_typed(sc.Uint32(v["uint32"]))
    if "bool" in v:
        return sc.encode_typed(bool(v["bool"]))
    if "ipv4" in v:
        return sc.encode_typed(ipaddress.IPv4Address(v["ipv4"]))
    if "typed_hex" in v:
        return bytes.fromhex(v["typed_hex"].replace(" ", ""))
    raise ValueError("bad value %r" % (v,))


def message(spec):
    args = [("f%d" % i, "x") for i in range(spec.get("filler_first", 0))]
    args += list(spec.get("fields", {}).items())
    if "repeat_field" in spec:
        name, value, n = spec["repeat_field"]
        args += [(name, value)] * n
    args += [("g%d" % i, "y") for i in range(spec.get("filler_args", 0))]
    assert len(args) <= 255, len(args)
    out = sc.encode_bytes(lat(spec.get("name", "cedra-req"))) + bytes((len(args),))
    for n, v in args:
        out += sc.encode_bytes(lat(n)) + typed(v)
    return out


def payload(p):
    if "hex" in p:
        return bytes.fromhex(p["hex"].replace(" ", ""))
    if "fill_hex" in p:
        return bytes.fromhex(p["fill_hex"]) * p["n"]
    if "req" in p:
        return message(p["req"])
    raise ValueError("bad payload %r" % (p,))


def frame_bytes(ftype, flags, sid, fid, body, len_delta=0, length=None):
    b = bytes((ftype,)) + struct.pack("!I", flags) + sc.encode_varint(sid) + sc.encode_varint(fid) + body
    n = len(b) + len_delta if length is None else length
    return struct.pack("!I", n) + b


def hello_bytes(item):
    kv = b""
    versions = item.get("versions", "2.0")
    kv += sc.encode_bytes(b"supported-versions") + typed(versions)
    if "mfs_hex" in item:
        kv += sc.encode_bytes(b"max-frame-size") + bytes.fromhex(item["mfs_hex"].replace(" ", ""))
    else:
        kv += sc.encode_bytes(b"max-frame-size") + sc.encode_typed(sc.Uint32(item.get("max_frame_size", 16380)))
    kv += sc.encode_bytes(b"capabilities") + typed(item.get("capabilities", "pipelining,async"))
    kv += sc.encode_bytes(b"engine-id") + typed(item.get("engine_id", "hostile"))
    if item.get("healthcheck"):
        kv += sc.encode_bytes(b"healthcheck") + sc.encode_typed(True)
    return frame_bytes(sc.FRAME_HAPROXY_HELLO, item.get("flags", 1), 0, 0, kv)


def item_bytes(item):
    """One corpus send item -> (bytes, (sid, fid) of the last NOTIFY or None)."""
    out, last = b"", None
    for i in range(item.get("repeat", 1)):
        if "hex" in item:
            b = bytes.fromhex(item["hex"].replace(" ", ""))
        elif "hello" in item:
            b = hello_bytes(item)
        elif "notify" in item:
            sid = i + 1 if item.get("sid_step") else item.get("sid", 1)
            fid = item.get("fid", 1)
            b = frame_bytes(sc.FRAME_NOTIFY, 1, sid, fid, message(item["notify"]),
                            item.get("len_delta", 0))
            last = (sid, fid)
        elif "notify_messages" in item:
            spec = item["notify_messages"]
            body = b""
            for k in range(spec.get("others", 0)):
                body += sc.encode_bytes(lat(spec.get("other_name", "other-msg"))) + b"\x01" + \
                    sc.encode_bytes(b"a") + typed("b")
            for k in range(spec.get("cedra", 1 if "fields" in spec else 0)):
                body += message({"fields": spec["fields"]})
            b = frame_bytes(sc.FRAME_NOTIFY, 1, 1, 1, body)
            last = (1, 1)
        elif "frame" in item:
            f = item["frame"]
            b = frame_bytes(f["type"], f.get("flags", 1), f.get("sid", 0), f.get("fid", 0),
                            payload(f.get("payload", {"hex": ""})), f.get("len_delta", 0), f.get("len"))
            if f["type"] == sc.FRAME_NOTIFY and f.get("flags", 1) & 1:
                last = (f.get("sid", 0), f.get("fid", 0))
        elif "fragments" in item:
            spec = item["fragments"]
            body = message(spec)
            chunk = spec["chunk"]
            pieces = [body[k:k + chunk] for k in range(0, len(body), chunk)]
            sid, fid = spec.get("sid", 1), spec.get("fid", 1)
            for k, piece in enumerate(pieces):
                end = k == len(pieces) - 1
                flags = (1 | (2 if spec.get("abort") else 0)) if end else 0
                b_ = frame_bytes(sc.FRAME_NOTIFY if k == 0 else sc.FRAME_UNSET, flags, sid, fid, piece)
                out += b_
            b = b""
            last = None if spec.get("abort") else (sid, fid)
        else:
            raise ValueError("bad item %r" % (item,))
        if "cut" in item:
            b = b[:item["cut"]]
        out += b
    return out, last


class SpopHostileTest(harness.IntegrationTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        try:
            # debug: every event that may quote client bytes is written
            cls.agent = cls.cenv.start_spoa(threads=2, max_frame_size=16380, log_level="debug")
        except BaseException:
            cls.tearDownClass()
            raise
        cls.agent_pid = cls.agent.pid

    def check_vars(self, what, actions):
        for a in actions:
            self.assertEqual(a.scope, sc.SCOPE_TXN, "%s: %r" % (what, a))
            if isinstance(a.value, str):
                self.assertFalse(re.search(r"[\x00-\x1f\x7f]", a.value), "%s: control byte in %r" % (what, a))
        v = sc.actions_to_vars(actions)
        self.assertIn(v.get("action"), ("pass", "redirect"), "%s: %r" % (what, v))
        self.assertIn(v.get("cache"), ("BYPASS", "MISS", "ERROR"), "%s: %r" % (what, v))
        if "locale" in v:
            self.assertIn(v["locale"], LOCALES, what)
        if v.get("action") == "redirect":
            self.assertTrue(location_ok(v.get("location", "")), "%s: unsafe location %r" % (what, v))
            self.assertIn(v.get("status"), (302, 307), what)
            self.assertTrue(v["location"].startswith("/" + v["locale"]), what)
        return v

    def assertLogLinesIntact(self, what):
        """Client bytes never break the one-event-per-line log."""
        self.assertEqual(log_lines_broken(self.agent)[:5], [], "%s: log lines not of the key=value form" % what)

    def good_request(self, what):
        self.assertTrue(self.agent.alive(), "cedra-spoa died after %s (rc=%r)" % (
            what, self.agent.popen.returncode))
        self.assertEqual(self.agent.pid, self.agent_pid)
        with sc.Connection(self.agent.addr, timeout=T) as c:
            c.hello()
            c.notify(5, 6, [sc.cedra_req("/fr/good", cookie="NEXT_LOCALE=nl")])
            v = self.check_vars("good after " + what, c.ack_for(5, 6))
            self.assertEqual((v.get("locale"), v.get("action")), ("fr", "pass"), what)
            c.notify(7, 8, [sc.cedra_req("/p", accept_language="en")])
            v = self.check_vars("good after " + what, c.ack_for(7, 8))
            self.assertEqual((v.get("location"), v.get("action")), ("/en/p", "redirect"), what)

    def observe(self, c, what, expect_quiet):
        """The first thing the agent does: ('quiet'|'close'|'disconnect:N'|
        'ack'|'ack-empty'|'ack-hello', frame)."""
        try:
            f = c.recv_frame(QUIET if expect_quiet else T)
        except socket.timeout:
            return "quiet", None
        except sc.Closed:
            return "close", None
        if f.type == sc.FRAME_AGENT_DISCONNECT:
            kv = f.kv()
            self.assertIn("message", kv, what)
            self.assertIs(type(kv.get("status-code")), sc.Uint32, what)
            self.assertEqual(c.expect_close(T), [], "%s: frames after AGENT-DISCONNECT" % what)
            return "disconnect:%d" % kv["status-code"], f
        if f.type == sc.FRAME_ACK:
            if c.max_frame_size:
                size = 5 + sc.varint_len(f.stream_id) + sc.varint_len(f.frame_id) + len(f.payload)
                self.assertLessEqual(size, c.max_frame_size, "%s: ACK over the negotiated frame size" % what)
            return ("ack" if f.payload else "ack-empty"), f
        if f.type == sc.FRAME_AGENT_HELLO:
            if f.kv().get("healthcheck") is not None or "healthcheck" in what:
                # A health check ends with the HELLO: nothing is answered after it.
                self.assertEqual(c.expect_close(T), [], "%s: frames after a health-check HELLO" % what)
                return "ack-hello-then-close", f
            return "ack-hello", f
        self.fail("%s: unexpected frame %r" % (what, f))

    def run_case(self, case):
        what = case["id"]
        expect = case["expect"]
        allowed = expect if isinstance(expect, list) else [expect]
        c = sc.Connection(self.agent.addr, timeout=T)
        try:
            if case.get("hello", True):
                c.hello(max_frame_size=case.get("max_frame_size", 16380))
            last = None
            for item in case["send"]:
                data, l = item_bytes(item)
                last = l or last
                try:
                    c.send(data)
                except (BrokenPipeError, ConnectionResetError):
                    break
            end = case.get("end", "keep")
            if end == "rst":
                c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                c.close()
                self.assertEqual(allowed, ["gone"], what)
                return "gone"
            if end == "eof":
                c.shutdown_write()
            if allowed == ["acks"]:
                for k in range(case["count"]):
                    f = c.recv_frame(T)
                    self.assertEqual(f.type, sc.FRAME_ACK, "%s: ACK %d: %r" % (what, k, f))
                    v = self.check_vars(what, f.actions())
                    if "locale" in case:
                        self.assertEqual(v.get("locale"), case["locale"], what)
                return "acks"
            got, f = self.observe(c, what, "quiet" in allowed)
            ok = got in allowed or ("close" in allowed and got.startswith("disconnect:"))
            self.assertTrue(ok, "%s: expected %r, got %s" % (what, expect, got))
            if got == "ack":
                ids = tuple(case.get("ack_ids", last or (1, 1)))
                self.assertEqual((f.stream_id, f.frame_id), ids, what)
                v = self.check_vars(what, f.actions())
                if "locale" in case:
                    self.assertEqual(v.get("locale"), case["locale"], "%s: %r" % (what, v))
            if got == "quiet":
                # the connection is still usable
                c.notify(99, 1, [sc.cedra_req("/nl/after")])
                v = self.check_vars(what, c.ack_for(99, 1))
                self.assertEqual(v.get("locale"), "nl", what)
            return got
        finally:
            c.close()

    def test_spop_corpus(self):
        spec = corpus("spop.json")
        outcomes = {}
        for case in spec["cases"]:
            with self.subTest(case=case["id"]):
                got = self.run_case(case)
                outcomes[got] = outcomes.get(got, 0) + 1
            self.good_request(case["id"])
        self.assertLogLinesIntact("the SPOP corpus")
        print("\nhostile SPOP corpus: %d cases, outcomes %r" % (len(spec["cases"]), outcomes))

    def test_many_connections_holding_partial_frames(self):
        """200 connections each holding a NOTIFY reassembly of ~200 KiB and a
        partial frame: memory stays within what the limits allow per
        connection (max-frame-size read buffer + max-reassembly), and a good
        client is served meanwhile and afterwards."""
        n, frag = 200, 12 * 16000
        rss0 = rss_kib(self.agent.pid)
        conns = []
        try:
            for i in range(n):
                c = sc.Connection(self.agent.addr, timeout=T)
                conns.append(c)
                c.hello()
                c.send(frame_bytes(sc.FRAME_NOTIFY, 0, 1, 1, b"\x09"))
                for _ in range(frag // 16000):
                    c.send(frame_bytes(sc.FRAME_UNSET, 0, 1, 1, b"a" * 16000))
                c.send(frame_bytes(sc.FRAME_UNSET, 1, 1, 1, b"a" * 16000)[:8000])  # cut mid-frame
            self.good_request("%d connections holding partial frames" % n)
            rss1 = rss_kib(self.agent.pid)
        finally:
            for c in conns:
                c.close()
        self.good_request("closing them")
        per_conn = (16380 + 4 + 262144) // 1024 + 16   # read buffer + reassembly bound + bookkeeping
        print("\n%d connections holding %d KiB of fragments each: RSS %d -> %d KiB (%.0f KiB per connection, bound %d)"
              % (n, frag // 1024, rss0, rss1, (rss1 - rss0) / n, per_conn))
        if not harness.spoa_wrapper() and not sanitized(harness.spoa_bin()):
            self.assertLess(rss1 - rss0, n * per_conn)

    def test_spop_field_matrix(self):
        """Each hostile payload in each string argument the agent reads, as
        STRING and BINARY: always a sane ACK, then a good request."""
        m = corpus("spop.json")["matrix"]
        n = 0
        plan = [(f, m["base"]) for f in m["fields"]] + [(f, m["rsc_base"]) for f in m["rsc_fields"]]
        for field, base_fields in plan:
            for p in m["payloads"]:
                for mode in m["modes"]:
                    for kind in ("str", "bin"):
                        fields = dict(base_fields)
                        base = fields[field]
                        val = {"suffix": base + p, "prefix": p + base, "replace": p}[mode]
                        fields[field] = val if kind == "str" else {"bin": val}
                        what = "%s %s %s %r" % (field, mode, kind, p)
                        with self.subTest(what=what):
                            with sc.Connection(self.agent.addr, timeout=T) as c:
                                c.hello()
                                c.send(frame_bytes(sc.FRAME_NOTIFY, 1, 3, 4, message({"fields": fields})))
                                self.check_vars(what, c.ack_for(3, 4))
                        n += 1
            self.good_request("field %s" % field)
        self.assertLogLinesIntact("the SPOP matrix")
        print("\nhostile SPOP field matrix: %d NOTIFYs" % n)


class SpopConnectionLimitTest(harness.IntegrationTestCase):
    """max-connections: beyond it a connection is closed as soon as accepted;
    the connections already open keep working, and a slot freed is reused."""

    def stat(self, name):
        out = harness.unix_command(self.sock, "show stat", errors="strict")
        return int(re.search(r"^%s,,(\d+)$" % name, out, re.M).group(1))

    def test_connections_beyond_the_limit_are_refused(self):
        self.sock = self.env.path("spoa.sock")
        agent = self.env.start_spoa(threads=2, extra="max-connections 3\nstats-socket %s" % self.sock)
        self.assertIn("Spop_max_connections: 3\n", harness.unix_command(self.sock, "show info"))
        # The start-up health check's connection may not be accounted closed yet.
        harness.wait_until(lambda: "Spop_connections: 0\n" in harness.unix_command(self.sock, "show info"),
                           10 * SF, what="no SPOP connection open")
        held = []
        try:
            for _ in range(3):
                c = sc.Connection(agent.addr, timeout=T)
                held.append(c)
                c.hello()
            # Both workers' listeners: the limit is the process's, not a worker's.
            for i in range(6):
                s = socket.create_connection(agent.addr, timeout=T)
                try:
                    try:
                        s.sendall(sc.haproxy_hello())
                        data = s.recv(4096)
                    except (ConnectionResetError, BrokenPipeError):
                        data = b""  # closed before (or while) our HELLO arrived
                    self.assertEqual(data, b"", "connection %d beyond the limit was served" % (i + 4))
                finally:
                    s.close()
            self.assertEqual(self.stat("spop_refused"), 6)
            self.assertRegex(agent.stderr_text(), r"event=spop_conn_limit worker=\d max_connections=3 ")
            # The three held connections were not harmed.
            for i, c in enumerate(held):
                c.notify(1, i + 1, [sc.cedra_req("/fr/products/chair")])
                self.assertEqual(sc.actions_to_vars(c.ack_for(1, i + 1)).get("locale"), "fr")
            held.pop().close()

            def served():
                with sc.Connection(agent.addr, timeout=T) as c:
                    c.hello()
                    c.notify(2, 2, [sc.cedra_req("/nl/x")])
                    return sc.actions_to_vars(c.ack_for(2, 2)).get("locale") == "nl"
            harness.wait_until(served, 10 * SF, what="a freed slot taken by a new connection")
        finally:
            for c in held:
                c.close()
        self.assertTrue(agent.alive())


class SpopValkeyHostileTest(harness.IntegrationTestCase):
    """Connections that vanish while their lookups are still in Valkey (or
    while Valkey is frozen): the answers must find nothing freed under them."""

    def setUp(self):
        super().setUp()
        self.redis, self.rport = EdgeCachePages.start_redis(self)
        tmpl = load_value("product-chair.json")
        # Fresh for the whole test, however slow the daemon runs (TSan): the
        # fixture's own 15 s lifespan would turn the answer into a MISS.
        tmpl["lifespan"].update(revalidate=3600, staleAge=3600, expireAge=7200)
        tmpl = aged(tmpl, 1)
        key = "/route-cache/APP_PAGE/%s/$/fr/products/chair" % ROUTE_HASH["product"]
        redis_cmd(self.rport, "SET", PREFIX + key, json.dumps(tmpl))
        redis_cmd(self.rport, "HSET", PREFIX + "__sharedTags__", key, json.dumps(tmpl["tags"]))
        extra = "\n".join([
            "valkey 127.0.0.1:%d" % self.rport,
            "valkey-timeout %dms" % (500 * SF),
            "pool stable key-prefix %s routes %s build b1" % (PREFIX, os.path.join(FIX, "routes.table")),
            # No in-process cache: every NOTIFY below waits for Valkey.
            "l1-size 0",
        ])
        self.agent = self.env.start_spoa(threads=2, extra=extra)
        self.pid = self.agent.pid
        harness.wait_until(lambda: self.lookup_action() == "edge", 10 * SF, what="an edge answer")

    def lookup_action(self, sid=1, fid=1):
        with sc.Connection(self.agent.addr, timeout=T) as c:
            c.hello()
            c.notify(sid, fid, [sc.cedra_req("/fr/products/chair")])
            return sc.actions_to_vars(c.ack_for(sid, fid)).get("action")

    def vanish(self, how, n):
        c = sc.Connection(self.agent.addr, timeout=T)
        c.hello()
        c.send(b"".join(sc.notify(i + 1, 1, [sc.cedra_req("/fr/products/chair")]) for i in range(n)))
        if how == "rst":
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif how == "disconnect":
            c.send(sc.haproxy_disconnect())
        c.close()

    def test_connections_vanish_with_lookups_pending(self):
        for how in ("rst", "close", "disconnect"):
            for _ in range(30):
                self.vanish(how, 50)
            self.assertTrue(self.agent.alive(), "cedra-spoa died after %s with lookups pending" % how)
            # (the abandoned lookups may still fill Valkey's queue for a while)
            harness.wait_until(lambda: self.lookup_action() == "edge", 10 * SF,
                               what="edge answers after connections vanished (%s)" % how)
        # Valkey frozen: the lookups outlive the connections by far.
        self.redis.signal(signal.SIGSTOP)
        try:
            for how in ("rst", "close", "disconnect"):
                for _ in range(10):
                    self.vanish(how, 20)
            with sc.Connection(self.agent.addr, timeout=T) as c:
                c.hello()
                c.notify(9, 9, [sc.cedra_req("/fr/products/chair")])
                v = sc.actions_to_vars(c.ack_for(9, 9))   # answered by the deadline
                self.assertEqual(v.get("action"), "pass", v)
        finally:
            self.redis.signal(signal.SIGCONT)
        harness.wait_until(lambda: self.lookup_action() == "edge", 10 * SF, what="edge answers again")
        self.assertEqual(self.agent.pid, self.pid)


# ---- operator sockets -----------------------------------------------------------------------


class Abuser(object):
    """One operator-socket client: sends in a thread (the daemon may stop
    reading), reads concurrently when asked to."""

    def __init__(self, path, data, read, half_close):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(T)
        self.s.connect(path)
        self.data, self.half_close = data, half_close
        self.received = bytearray()
        self.eof = False
        self.send_error = None
        self.sent = threading.Event()
        threading.Thread(target=self._send, daemon=True).start()
        if read:
            threading.Thread(target=self._read, daemon=True).start()

    def _send(self):
        try:
            self.s.sendall(self.data)
            if self.half_close:
                self.s.shutdown(socket.SHUT_WR)
        except OSError as e:
            self.send_error = e
        finally:
            self.sent.set()

    def _read(self):
        try:
            while True:
                d = self.s.recv(65536)
                if not d:
                    break
                self.received += d
        except OSError:
            pass
        self.eof = True

    def wait_eof(self, timeout):
        harness.wait_until(lambda: self.eof, timeout, what="the daemon to close the connection")

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass


class OpsockHostileBase(object):
    """Mixed into a test case that sets self.sock_path, self.daemon and
    self.healthy()."""

    def run_opsock_corpus(self, label, traffic=None):
        """traffic: a function making one request, run in a loop meanwhile;
        it returns a status, and none may be a 5xx."""
        statuses = []
        stop = threading.Event()

        def load():
            while not stop.is_set():
                try:
                    statuses.append(traffic())
                except OSError as e:
                    statuses.append(repr(e))
        loader = threading.Thread(target=load, daemon=True) if traffic else None
        if loader:
            loader.start()
        try:
            self._run_opsock_corpus(label)
        finally:
            stop.set()
            if loader:
                loader.join(10 * T)
        if traffic:
            bad = [st for st in statuses if not isinstance(st, int) or st >= 500]
            print("\n%s: %d requests through HAProxy during the abuse, %d bad" % (label, len(statuses), len(bad)))
            self.assertGreater(len(statuses), 0)
            self.assertEqual(bad[:5], [], "%s: traffic failed during the abuse" % label)

    def _run_opsock_corpus(self, label):
        spec = corpus("opsock.json")
        rss0 = rss_kib(self.daemon.pid)
        peak = rss0
        os.mkfifo(self.env.path("fifo"))
        with open(self.env.path("nul.table"), "wb") as f:
            f.write(b"scheme route-cache\n\0route /[locale] APP_PAGE " + b"0" * 64 + b"\n")
        for case in spec["cases"]:
            if case.get("only", label) != label:
                continue
            what = "%s %s" % (label, case["id"])
            with self.subTest(case=case["id"]):
                expect = case["expect"]
                read = case.get("read", expect != "any")
                data = lat(expand(case["send"]).replace("{DIR}", self.env.dir))
                a = Abuser(self.sock_path, data, read, case.get("half_close", False))
                try:
                    if expect != "any":
                        a.wait_eof(10 * T)
                        out = bytes(a.received)
                        text = out.decode("latin-1")
                        if "contains" in case:
                            self.assertIn(case["contains"], text, "%s: %r" % (what, text[:200]))
                        if expect == "error":
                            self.assertTrue(text.startswith("error:"), "%s: %r" % (what, text[:200]))
                            self.assertTrue(text.endswith("\n\n"), "%s: %r" % (what, text[-100:]))
                        elif expect == "error-line":
                            self.assertTrue(text.startswith("error:") or text.startswith("Unknown command"),
                                            "%s: %r" % (what, text[:200]))
                            self.assertTrue(text.endswith("\n\n"), what)
                        elif expect == "answers":
                            self.assertEqual(text.count("\n\n"), case["n"], "%s: %r" % (what, text[-200:]))
                        elif expect == "close" and case.get("no_error"):
                            self.assertNotIn("error", text, "%s: %r" % (what, text[:300]))
                    else:
                        a.sent.wait(T)
                    # Another client and the HTTP path are served meanwhile.
                    self.healthy(what)
                    peak = max(peak, rss_kib(self.daemon.pid))
                finally:
                    a.close()
        # Many concurrent clients: beyond the limit they get one error line;
        # the others, and everything else, are served.
        conc = spec["concurrent"]
        clients = []
        try:
            for _ in range(conc["clients"]):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.settimeout(T)
                s.connect(self.sock_path)
                clients.append(s)
            # A refused client gets its error line as soon as the daemon
            # accepts it; the others get nothing. One quiet window for all of
            # them (not one each), restarted by every answer: a slow daemon
            # (sanitizers) may still be accepting the last ones.
            refused = 0
            accepted = set(clients)
            with selectors.DefaultSelector() as sel:
                for s in clients:
                    sel.register(s, selectors.EVENT_READ)
                quiet = QUIET * SF
                deadline = time.monotonic() + quiet
                while accepted and time.monotonic() < deadline:
                    for key, _ in sel.select(max(0.0, deadline - time.monotonic())):
                        deadline = time.monotonic() + quiet
                        sel.unregister(key.fileobj)
                        accepted.discard(key.fileobj)
                        try:
                            if key.fileobj.recv(4096).startswith(b"error: too many clients"):
                                refused += 1
                        except OSError:
                            pass
            for s in accepted:
                # make it hold an unfinished line as long as allowed
                s.settimeout(QUIET)
                try:
                    s.sendall(b"a" * conc.get("partial_line_bytes", 0))
                except OSError:
                    pass
            if conc["expect_some_refused"]:
                self.assertGreater(refused, 0, "%s: no client refused out of %d" % (label, len(clients)))
            self.healthy_http("%s: %d clients connected" % (label, len(clients)))
            peak = max(peak, rss_kib(self.daemon.pid))
        finally:
            for s in clients:
                s.close()
        harness.wait_until(lambda: "Pid:" in harness.unix_command(self.sock_path, "show info"), 10 * SF,
                           what="operator socket served again after the concurrent clients left")
        self.healthy(label + " after all")
        self.assertEqual(log_lines_broken(self.daemon)[:5], [], "%s: log lines broken" % label)
        rss1 = rss_kib(self.daemon.pid)
        bound = spec["rss_bound_mib"] * 1024
        print("\n%s operator socket abuse: RSS %d KiB before, peak %d KiB, %d KiB after (bound +%d KiB)"
              % (label, rss0, peak, rss1, bound))
        # Not under valgrind, not with ASan (its quarantine keeps freed memory).
        if self.daemon.argv[0] == self.daemon.argv[-3] and not sanitized(self.daemon.argv[-3]):
            self.assertLess(peak - rss0, bound, "%s: RSS grew from %d to %d KiB" % (label, rss0, peak))
            self.assertLess(rss1 - rss0, bound, "%s: RSS grew from %d to %d KiB" % (label, rss0, rss1))


class SpoaOpsockHostileTest(OpsockHostileBase, HaproxyCase):
    def setUp(self):
        super().setUp()
        self.sock_path = self.env.path("spoa.sock")
        self.mport = harness.free_port()
        self.start_stack(extra="stats-socket %s\nmetrics 127.0.0.1:%d\npool stable key-prefix s: routes pathname build b1"
                         % (self.sock_path, self.mport))
        self.wait_spoa_check()
        self.daemon = self.agent
        self.pid = self.agent.pid

    def healthy_http(self, what):
        self.assertTrue(self.agent.alive(), "cedra-spoa died: %s" % what)
        self.assertEqual(self.agent.pid, self.pid)
        st, hdrs, body = self.get("/nl/during-abuse")
        self.assertEqual((st, hdrs.get("x-cedra-locale"), hdrs.get("x-cedra-cache")), (200, "nl", "BYPASS"), what)

    def healthy(self, what):
        self.healthy_http(what)
        out = harness.unix_command(self.sock_path, "show info", text=False).decode("latin-1")
        self.assertIn("Pid: %d" % self.pid, out, what)

    def test_spoa_operator_socket_abuse(self):
        def one():
            st, hdrs, _ = self.get("/nl/under-abuse")
            return st if hdrs.get("x-cedra-locale") == "nl" else "no agent answer (%r)" % hdrs.get("x-cedra-cache")
        self.run_opsock_corpus("cedra-spoa", traffic=one)

    def metrics_ok(self):
        resps = parse_responses(send_raw(self.mport, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
        return bool(resps) and resps[0].status == 200 and b"cedra_" in resps[0].body

    def test_metrics_endpoint_abuse(self):
        spec = corpus("metrics_http.json")
        for case in spec["cases"]:
            with self.subTest(case=case["id"]):
                raw = send_raw(self.mport, lat(expand(case["raw"])), half_close=True)
                resps = parse_responses(raw)
                if case["expect"] == "ok":
                    self.assertTrue(resps and resps[0].status == 200, "%s: %r" % (case["id"], raw[:200]))
                elif case["expect"] == "refused":
                    self.assertTrue(not resps or resps[0].status >= 400, "%s: %r" % (case["id"], raw[:200]))
                self.assertTrue(self.metrics_ok(), "/metrics not served after %s" % case["id"])
                self.healthy_http(case["id"])
        # Slow clients: connections that send half a request and wait.
        def slow_clients(n):
            out = []
            for _ in range(n):
                s = socket.create_connection(("127.0.0.1", self.mport), timeout=T)
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                out.append(s)
            return out
        slow = slow_clients(spec["slow_clients"])
        try:
            self.assertTrue(self.metrics_ok(), "/metrics not served with %d slow clients" % len(slow))
            self.healthy("%d slow /metrics clients" % len(slow))
        finally:
            for s in slow:
                s.close()
        # More than the listener takes: everything else is served meanwhile,
        # /metrics again within its connection timeout (10 s) once they are
        # gone, and a SIGTERM while they hold it is not held up.
        slow = slow_clients(spec["burst_clients"])
        try:
            self.healthy("a burst of %d slow /metrics clients" % len(slow))
        finally:
            for s in slow:
                s.close()
        harness.wait_until(self.metrics_ok, 12 * SF, interval=0.2, what="/metrics after a burst of slow clients")
        slow = slow_clients(spec["burst_clients"])
        try:
            t0 = time.monotonic()
            self.agent.signal(signal.SIGTERM)
            self.agent.popen.wait(10 * SF)
            took = time.monotonic() - t0
        finally:
            for s in slow:
                s.close()
        self.assertEqual(self.agent.popen.returncode, 0)
        print("\nSIGTERM with %d slow /metrics clients connected: exit after %.2f s" % (len(slow), took))
        self.assertLess(took, 3.0 * SF, "SIGTERM took %.1f s with slow /metrics clients" % took)


class AgentOpsockHostileTest(OpsockHostileBase, harness.IntegrationTestCase):
    def setUp(self):
        super().setUp()
        harness.require_agent()
        self.sock_path = self.env.path("agent.sock")
        conf = self.env.write("agent.conf", (
            "allow-root\nservice storefront\nconsul-addr 127.0.0.1:%d\nhaproxy-socket %s\nstats-socket %s\n"
            "metrics none\n") % (harness.free_port(), self.env.path("no-haproxy.sock"), self.sock_path))
        self.daemon = self.env.spawn("cedra-agent",
                                     harness.agent_wrapper() + [harness.agent_bin(), "-f", conf])
        self.env.wait_ready(self.daemon, lambda: os.path.exists(self.sock_path), 10 * SF, "operator socket")
        self.pid = self.daemon.pid

    def healthy_http(self, what):
        self.assertTrue(self.daemon.alive(), "cedra-agent died: %s" % what)
        self.assertEqual(self.daemon.pid, self.pid)

    def healthy(self, what):
        self.healthy_http(what)
        out = harness.unix_command(self.sock_path, "show info", text=False).decode("latin-1")
        self.assertIn("Pid: %d" % self.pid, out, what)

    def test_agent_operator_socket_abuse(self):
        self.run_opsock_corpus("cedra-agent")


if __name__ == "__main__":
    unittest.main()
