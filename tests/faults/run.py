#!/usr/bin/env python3
"""The fault suite under load: one command, bounded in time, loopback only.

  python3 tests/faults/run.py [--profile short|long] [--only SCENARIO]... [--list]

Starts the full chain once (redis-server, three Next.js fixture instances of
two builds, cedra-spoa, HAProxy with the shipped haproxy.cfg, the Consul
double, cedra-agent), then runs each scenario under a bounded load, prints one
line per scenario ("PASS faults/<name>" or "FAIL faults/<name>: why") and the
table, and exits 1 when any must-be-0 cell is not 0 or a recovery failed.
See README.md for the columns and the rules.

Environment: CEDRA_SPOA, CEDRA_AGENT (binaries; default build/...),
CEDRA_HAPROXY_BIN, CEDRA_KEEP_TMP=1 (keep the logs directory).
"""

import argparse
import http.client
import os
import re
import socket
import sys
import threading
import time
import unittest
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import stack as st  # noqa: E402  (puts tests/integration on sys.path)
import harness  # noqa: E402
import load as ld  # noqa: E402
import nextjs_fixture as nf  # noqa: E402
import observe as ob  # noqa: E402
import scenarios as sc  # noqa: E402
import test_edge_cache as tec  # noqa: E402

PROFILES = {
    # rate (req/s), warm-up and tail (requests), recovery deadline (s),
    # consul-wait of the agent (its client timeout follows: wait x 17/16 + margin)
    "short": {"rate": 40, "warm": 60, "tail": 60, "deadline": 30.0, "consul_wait": "2s"},
    "long": {"rate": 80, "warm": 400, "tail": 400, "deadline": 60.0, "consul_wait": "10s"},
}
REVAL_DEADLINE = 10.0
HOT = "/fr/about"           # a static page: HIT from the edge once filled


class Ctx(object):
    """What a scenario may use and leave behind."""

    def __init__(self, stk, port):
        self.stk = stk
        self.port = port
        self.notes = []
        self.down_from = self.down_until = None
        self.victims = []

    @staticmethod
    def now():
        return time.monotonic()

    def note(self, text):
        self.notes.append(text)

    def stat_rows(self):
        return ob.show_stat_rows(self.stk.hap_sock)

    def one_request(self, path, user, extra_cookie=None, timeout=10.0):
        a = ld.Answer()
        a.user, a.path, a.kind = user, path, "page"
        a.locale = path.split("/")[1]
        a.slug = None
        a.status = a.error = a.cache = a.build = a.lang = a.page = a.rendered_at = None
        a.cport = a.verdict = a.why = None
        a.pins, a.retried = [], False
        cookie = ld.COOKIE_OF.get(user, "")
        if extra_cookie:
            cookie = "%s; %s" % (cookie, extra_cookie) if cookie else extra_cookie
        a.t0, a.t0_wall = time.monotonic(), time.time()
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            c.connect()
            a.cport = c.sock.getsockname()[1]
            c.request("GET", path, headers={"Cookie": cookie, "Accept-Encoding": "identity"})
            r = c.getresponse()
            body = r.read()
            a.status = r.status
            a.cache = r.getheader("x-cedra-cache")
            ld.parse_body(a, body)
        except (OSError, http.client.HTTPException) as e:
            a.error = "%s: %s" % (type(e).__name__, e)
        finally:
            c.close()
            a.t1 = time.monotonic()
        return a


# ---- revalidation ------------------------------------------------------------------
RID_RE = re.compile(rb'data-render-id=\\"([0-9a-f-]+)\\"')
LM_RE = re.compile(rb'^\{"lastModified":(\d+)')


class Valkey(object):
    """A persistent RESP connection for pipelined GETs (reconnects on error)."""

    def __init__(self, port):
        self.port, self.sock, self.f = port, None, None

    def get_many(self, keys):
        if self.sock is None:
            self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=1.0)
            self.f = self.sock.makefile("rb")
        try:
            out = b"".join(b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(k), k.encode())
                           for k in keys)
            self.sock.sendall(out)
            return [tec._read(self.f) for _ in keys]
        except (OSError, AssertionError, ValueError):
            self.close()
            raise

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = self.f = None


def revalidate(stk, build, slug, revals, errors, stop):
    """revalidateTag(product-<slug>) on a running instance of build; then polls
    Valkey (every ~10 ms, until stop) for what each locale's page key holds:
    complete once each is gone or newer than the call."""
    inst = next(p for n, p in sorted(stk.next.items()) if p.build == build and p.alive())
    t_wall, t_mono = time.time(), time.monotonic()
    rv = ld.Revalidation(build, slug, t_wall, t_mono)
    q = urllib.parse.urlencode({"tag": "product-%s" % slug, "secret": st.SECRET})
    try:
        r = nf.http_request(inst.port, "/api/revalidate?" + q, timeout=5)
        if r.status != 200:
            errors.append("revalidate %s on %s: %d" % (slug, build, r.status))
            return
    except (OSError, http.client.HTTPException) as e:
        errors.append("revalidate %s on %s: %r" % (slug, build, e))
        return
    revals.append(rv)
    keys = [stk.key(build, "/%s/products/%s" % (loc, slug)) for loc in ld.LOCALES]
    vk = Valkey(stk.redis_port)
    deadline = time.monotonic() + REVAL_DEADLINE
    try:
        while not stop.is_set():
            try:
                vals = vk.get_many(keys)
            except (OSError, AssertionError, ValueError):
                vals = None
            now = time.monotonic()
            if vals is not None and not any(isinstance(v, str) for v in vals):
                fresh = True
                for loc, v in zip(ld.LOCALES, vals):
                    rid = None
                    if v is not None:
                        m = RID_RE.search(v)
                        rid = m.group(1).decode() if m else "?"
                        lm = LM_RE.match(v)
                        if not lm or int(lm.group(1)) < t_wall * 1000 - 2:
                            fresh = False
                    tl = rv.timeline[loc]
                    if not tl or tl[-1][1] != rid:
                        tl.append((now, rid))
                if fresh and rv.t_done_mono is None:
                    rv.t_done_mono = now
            if rv.t_done_mono is None and now > deadline:
                errors.append("revalidation of %s (%s) not seen in Valkey within %.0f s" % (
                    slug, build, REVAL_DEADLINE))
                return
            stop.wait(0.01)     # the poll period of the watcher
    finally:
        vk.close()


def revalidate_all(stk, slug, revals, errors, stop):
    ts = [threading.Thread(target=revalidate, args=(stk, b, slug, revals, errors, stop),
                           daemon=True)
          for b in st.BUILDS]
    for t in ts:
        t.start()
    return ts


# ---- recovery ------------------------------------------------------------------------
def recovery_state(stk, port):
    """None when everything is back, else what is not."""
    for backend in ("storefront_stable", "storefront_canary"):
        got = st.usable_ports(stk.hap_sock, backend)
        if got != stk.expected_ports(backend):
            return "%s usable %r, want %r" % (backend, got, stk.expected_ports(backend))
    if not ob.hap_spoa_up(stk):
        return "HAProxy: cedra-spoa not UP"
    pools = {k: (v["build"], v["weight"]) for k, v in stk.spoa_pools().items()}
    want = {"stable": ("stable", 100 - st.CANARY_WEIGHT), "canary": ("canary", st.CANARY_WEIGHT)}
    if pools != want:
        return "cedra-spoa pools %r" % pools
    info = stk.spoa_info()
    if info.get("Valkey_tracking") != "up":
        return "cedra-spoa Valkey tracking %r" % info.get("Valkey_tracking")
    ai = stk.agent_info()
    if ai.get("Spoa_in_sync") != "1" or ai.get("Panic") != "0":
        return "agent: Spoa_in_sync %r Panic %r" % (ai.get("Spoa_in_sync"), ai.get("Panic"))
    sv = stk.agent_service()
    if sv.get("panic") != "0" or sv.get("applied_index") in (None, "0") or \
            sv.get("good_index") != sv.get("index"):
        return "agent service: %r" % {k: sv.get(k) for k in ("panic", "index", "good_index",
                                                              "applied_index")}
    if not stk.agent_watching():
        return "agent: no unfaulted health query parked in Consul"
    for user in ("stable", "canary"):
        r = nf.http_request(port, HOT, headers={"Cookie": ld.COOKIE_OF[user]}, timeout=5)
        if r.cache != "HIT":
            return "%s %s: %s %s" % (user, HOT, r.status, r.cache)
    return None


def wait_recovered(stk, port, deadline):
    last = [None]

    def ok():
        last[0] = recovery_state(stk, port)
        return last[0] is None
    try:
        harness.wait_until(ok, deadline, interval=0.02, what="full recovery")
        return True, None
    except AssertionError as e:
        return False, "%s; last: %s" % (e, last[0])


# ---- one scenario ----------------------------------------------------------------------
class Row(object):
    pass


def run_scenario(stk, scen, prof, seed):
    port = stk.port
    ctx = Ctx(stk, port)
    rate = prof["rate"]
    budget = int(rate * (scen.hold + prof["deadline"]) + prof["warm"] + prof["tail"] + 100)
    revals, rerrors = [], []
    rstop = threading.Event()
    load = ld.Load(port, rate, budget, workers=8, seed=seed).start()
    sampler = ob.Sampler(stk).start()
    row = Row()
    row.name, row.what, row.notes = scen.name, scen.what, ctx.notes
    row.problems = []
    rthreads = []
    try:
        harness.wait_until(lambda: load.sent() >= prof["warm"], prof["warm"] / rate * 3 + 10,
                           what="warm-up load")
        slug = ld.SLUGS[seed % len(ld.SLUGS)]
        seen0 = stk.agent_counters() if scen.agent_sees else None
        t_fault = time.monotonic()
        scen.inject(stk, ctx)
        rthreads += revalidate_all(stk, slug, revals, rerrors, rstop)
        if scen.hold:
            # the fault's duration is the scenario's definition, not a wait
            threading.Event().wait(scen.hold)
        scen.heal(stk, ctx)
        t_heal = time.monotonic()
        if scen.agent_sees:
            # The fault must have reached the agent, or the scenario tested
            # nothing. A fault with no hold (an index reset) persists but is
            # only seen on the agent's next query, which can come after heal():
            # wait for it within the recovery deadline instead of reading once.
            moved = {}

            def agent_saw():
                seen1 = stk.agent_counters()
                moved.clear()
                moved.update({k: seen1.get(k, 0) - seen0.get(k, 0) for k in seen1
                              if seen1.get(k, 0) != seen0.get(k, 0)})
                return any(moved.get(k) for k in scen.agent_sees)
            try:
                harness.wait_until(agent_saw, prof["deadline"], interval=0.05,
                                   what="cedra-agent's %s counter" % "/".join(scen.agent_sees))
            except AssertionError:
                row.problems.append("cedra-agent never saw the fault (%s unchanged)" %
                                    "/".join(scen.agent_sees))
            ctx.note("cedra-agent counters moved: %s" % (
                ", ".join("%s +%d" % kv for kv in sorted(moved.items())) or "none"))
        rthreads += revalidate_all(stk, slug, revals, rerrors, rstop)
        ok, why = wait_recovered(stk, port, prof["deadline"])
        t_rec = time.monotonic()
        row.recovery = (t_rec - t_heal) if ok else None
        if not ok:
            row.problems.append("not recovered: %s" % why)
        n_rec = load.sent()
        harness.wait_until(lambda: load.sent() >= n_rec + prof["tail"] or load.exhausted(),
                           prof["tail"] / rate * 3 + 10, what="tail load")
    except Exception as e:  # noqa: BLE001 - the row says it, the suite goes on
        row.problems.append("scenario error: %r" % (e,))
        row.recovery = None
        t_fault = t_heal = time.monotonic()
    finally:
        answers = load.stop()
        sampler.stop()
        rstop.set()
        for t in rthreads:
            t.join(REVAL_DEADLINE + 10)
    answers = answers + list(ctx.victims)
    for a in answers:
        ld.judge(a, revals)
    log = ob.read_log([p.err_path for p in stk.haps])
    ob.classify_5xx(answers, log)
    row.sent = len(answers)
    row.by_status = {}
    for a in answers:
        k = str(a.status) if a.status is not None else "conn"
        row.by_status[k] = row.by_status.get(k, 0) + 1
    row.hits = sum(1 for a in answers if a.cache in ("HIT", "STALE"))
    planned = [a for a in answers if a.verdict == "transport" and ctx.down_from is not None and
               ctx.down_from <= a.t0 and a.t0 <= (ctx.down_until or a.t0)]
    row.down_refused = len(planned)
    row.edge5xx = [a for a in answers if a.verdict == "edge5xx"]
    row.transport = [a for a in answers if a.verdict == "transport" and a not in planned]
    row.origin5xx = [a for a in answers if a.verdict == "origin5xx"]
    row.wrong = [a for a in answers if a.verdict == "wrong"]
    row.stale_origin = [a for a in answers if a.verdict == "stale_origin"]
    row.emptied = sampler.emptied()
    row.emptied_detail = sampler.detail()
    row.emptied_longest = sampler.longest()
    row.samples, row.unreachable = sampler.samples, sampler.unreachable
    row.unsynced = sampler.unsynced
    row.revals = "%d/%d" % (sum(1 for r in revals if r.t_done_mono), len(revals))
    row.reval_errors = rerrors
    row.retried = sum(1 for a in answers if a.retried)
    row.fault_s = t_heal - t_fault
    row.failed = bool(row.problems or row.edge5xx or row.transport or row.wrong or row.emptied)
    return row


# ---- self-check ----------------------------------------------------------------------------
def self_check():
    """The judges on made-up answers and log lines, each of which must get
    its verdict: the must-be-0 cells can only be 0 if the checks can fire."""
    def ans(user, path, status=200, build=None, lang=None, page=None, pins=(), rendered=None,
            rid=None, t0=100.0, cport=1000, kind=None):
        a = ld.Answer()
        a.user, a.path, a.status, a.build, a.lang, a.page = user, path, status, build, lang, page
        a.kind = kind or ("health" if path == "/api/health" else
                          "product" if "/products/" in path else "page")
        parts = path.split("/")
        a.locale = parts[1] if a.kind != "health" else None
        a.slug = parts[3] if a.kind == "product" else None
        a.pins, a.rendered_at, a.render_id = list(pins), rendered, rid
        a.t0, a.t1, a.t0_wall, a.cport = t0, t0 + 0.01, 1000.0, cport
        a.error = a.cache = a.verdict = a.why = None
        a.retried = False
        return a
    rv = ld.Revalidation("stable", "chair", t_call_wall=500.0, t_call_mono=50.0)
    rv.t_done_mono = 51.0
    rv.timeline["nl"] = [(51.0, None), (52.0, "old-rid"), (70.0, None)]
    rv.timeline["en"] = [(50.9, "gone-rid"), (51.0, None)]
    pc = "/fr/products/chair"
    cases = [
        (ans("canary", "/fr/about", build="canary", lang="fr", page="about:fr"), "ok"),
        (ans("canary", "/fr/about", build="stable", lang="fr", page="about:fr"), "wrong"),
        (ans("stable", "/api/health", build="canary"), "wrong"),
        (ans("new", "/api/health", build="stable", pins=["canary.canary"]), "wrong"),
        (ans("new", "/nl", build="canary", lang="nl", page="home:nl", pins=["canary.canary"]),
         "ok"),
        (ans("stable", "/nl/about", build="stable", lang="fr", page="about:fr"), "wrong"),
        (ans("stable", pc, status=302, build="stable", lang="fr", page="product:fr:chair"),
         "wrong"),
        (ans("stable", pc, build="stable", lang="fr", page="product:fr:chair", rendered=499.0,
             rid="x", t0=60.0), "wrong"),
        (ans("stable", pc, build="stable", lang="fr", page="product:fr:chair", rendered=499.0,
             rid="x", t0=50.5), "ok"),
        (ans("stable", pc, build="stable", lang="fr", page="product:fr:chair", rendered=501.0,
             rid="y", t0=60.0), "ok"),
        (ans("stable", "/nl/products/chair", build="stable", lang="nl",
             page="product:nl:chair", rendered=499.0, rid="old-rid", t0=60.0), "stale_origin"),
        (ans("stable", "/nl/products/chair", build="stable", lang="nl",
             page="product:nl:chair", rendered=499.0, rid="old-rid", t0=71.0), "wrong"),
        (ans("stable", "/en/products/chair", build="stable", lang="en",
             page="product:en:chair", rendered=499.0, rid="gone-rid", t0=52.0), "wrong"),
        (ans("canary", pc, status=502, cport=2001), "origin5xx"),
        (ans("canary", pc, status=503, cport=2002), "edge5xx"),
        (ans("canary", pc, status=502, cport=2003), "edge5xx"),
        (ans("canary", pc, status=500, cport=2004), "edge5xx"),
        (ans("canary", pc, status=504, cport=2005), "origin5xx"),
    ]
    tr = time.strftime("%d/%b/%Y:%H:%M:%S", time.localtime(1000.0)) + ".000"
    lines = [
        "127.0.0.1:2001 [%s] fe_http storefront_canary/canary1 0/0/0/-1/5 502 244 SH-- ..." % tr,
        "127.0.0.1:2002 [%s] fe_http storefront_canary/<NOSRV> 0/-1/-1/-1/0 503 216 SC-- ." % tr,
        "127.0.0.1:2003 [%s] fe_http cedra_deliver/deliver1 0/0/0/-1/1 502 209 SH-- ..." % tr,
        "127.0.0.1:2005 [%s] fe_http storefront_stable/stable1 0/0/0/-1/9 504 198 sH-- ." % tr,
    ]
    log = []
    for line in lines:
        m = ob.LOG_RE.match(line)
        d = m.groupdict()
        d["t"], d["line"] = ob.parse_tr(d["tr"]), line
        log.append(d)
    answers = [a for a, _ in cases]
    for a in answers:
        ld.judge(a, [rv])
    ob.classify_5xx(answers, log)
    bad = ["%r: %s, want %s" % (a, a.verdict, want) for a, want in cases if a.verdict != want]
    return len(cases), bad


# ---- table ---------------------------------------------------------------------------------
COLS = ("scenario", "sent", "by status", "HIT", "edge 5xx*", "conn err*", "origin 5xx",
        "wrong*", "stale origin", "emptied*", "reval", "fault s", "recovery s", "result")


def table(rows):
    lines = []
    data = []
    for r in rows:
        data.append((r.name, str(r.sent),
                     " ".join("%s:%d" % kv for kv in sorted(r.by_status.items())),
                     str(r.hits), str(len(r.edge5xx)),
                     str(len(r.transport)) + ("(+%d down)" % r.down_refused
                                              if r.down_refused else ""),
                     str(len(r.origin5xx)), str(len(r.wrong)), str(len(r.stale_origin)),
                     str(r.emptied), r.revals,
                     "%.1f" % r.fault_s,
                     "%.2f" % r.recovery if r.recovery is not None else "NONE",
                     "FAIL" if r.failed else "ok"))
    w = [max(len(c), *(len(d[i]) for d in data)) if data else len(c) for i, c in enumerate(COLS)]
    fmt = "  ".join("%%-%ds" % x for x in w)
    lines.append(fmt % COLS)
    lines.append(fmt % tuple("-" * x for x in w))
    for d in data:
        lines.append(fmt % d)
    lines.append("* must be 0. conn err: transport failures (refused, reset, timeout) outside "
                 "a planned HAProxy restart window (counted as +N down).")
    return "\n".join(lines)


def explain(r, out):
    for n in r.notes:
        out.write("  %s: %s\n" % (r.name, n))
    for p in r.problems:
        out.write("  %s: %s\n" % (r.name, p))
    if r.unsynced:
        out.write("  %s: %d samples with cedra-spoa restarted and not yet given its pools by "
                  "cedra-agent\n" % (r.name, r.unsynced))
    for label, lst in (("edge 5xx", r.edge5xx), ("conn err", r.transport),
                       ("wrong", r.wrong), ("origin 5xx", r.origin5xx),
                       ("stale origin", r.stale_origin)):
        for a in lst[:4]:
            out.write("  %s %s: %r\n" % (r.name, label, a))
        if len(lst) > 4:
            out.write("  %s %s: ... %d more\n" % (r.name, label, len(lst) - 4))
    if r.emptied:
        out.write("  %s emptied (longest %.0f ms): %s\n" % (
            r.name, r.emptied_longest * 1000, "; ".join(r.emptied_detail)))
    for e in r.reval_errors:
        out.write("  %s revalidation: %s\n" % (r.name, e))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", choices=sorted(PROFILES), default="short")
    ap.add_argument("--only", action="append", default=[], metavar="SCENARIO")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    scens = [c(args.profile) for c in sc.ALL]
    if args.list:
        for s in scens:
            print("%-20s %s" % (s.name, s.what))
        return 0
    if args.only:
        unknown = set(args.only) - {s.name for s in scens}
        if unknown:
            ap.error("unknown scenario(s): %s" % ", ".join(sorted(unknown)))
        scens = [s for s in scens if s.name in args.only]
    prof = PROFILES[args.profile]
    n, bad = self_check()
    if bad:
        print("FAIL faults/self-check:\n  " + "\n  ".join(bad))
        return 1
    print("faults: self-check of the judges passed (%d made-up answers)" % n)
    t0 = time.monotonic()
    env = harness.Env("faults")
    stk = st.Stack(env, consul_wait=prof["consul_wait"])
    rows = []
    keep = False
    try:
        try:
            stk.preflight()
        except unittest.SkipTest as e:
            print("SKIP faults/all: %s" % e)
            return 0
        except Exception as e:  # noqa: BLE001 - a broken setup fails the stage
            print("FAIL faults/setup: %s" % e)
            return 1
        stk.start()
        ok, why = wait_recovered(stk, stk.port, prof["deadline"])
        if not ok:
            print("FAIL faults/setup: the chain never became ready: %s" % why)
            keep = True
            return 1
        print("faults: chain ready in %.1f s (logs in %s)" % (time.monotonic() - t0, env.dir))
        sys.stdout.flush()
        for i, s in enumerate(scens):
            r = run_scenario(stk, s, prof, args.seed + i)
            rows.append(r)
            print("%s faults/%s%s" % ("FAIL" if r.failed else "PASS", s.name,
                                      "" if not r.failed else ": see below"))
            explain(r, sys.stdout)
            sys.stdout.flush()
            if r.recovery is None:
                # a chain that did not recover would fail every later scenario
                keep = True
                ok, why = wait_recovered(stk, stk.port, prof["deadline"])
                if not ok:
                    print("FAIL faults/chain: still not recovered (%s); stopping" % why)
                    break
    finally:
        stk.stop()
        failed = any(r.failed for r in rows) or keep
        if rows:
            print()
            print("fault suite, profile %s, %.0f s" % (args.profile, time.monotonic() - t0))
            print(table(rows))
        env.cleanup(keep=failed)
    print("faults: %d passed, %d failed" % (sum(1 for r in rows if not r.failed),
                                            sum(1 for r in rows if r.failed)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
