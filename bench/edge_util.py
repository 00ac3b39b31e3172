#!/usr/bin/env python3
"""Helpers of bench/edge.sh (Python stdlib only; the RESP client, Next.js's
ETag and operator-socket commands are tests/integration's).

  ports N                          N free loopback TCP ports
  wait-tcp PORT [SECONDS]          until PORT accepts a connection
  redis PORT CMD [ARG...]          one command, reply printed (repr for non-str)
  seed REDIS_PORT DIR              the real v16 chair entry, timestamps moved to
                                   now, under its route-cache key; writes
                                   DIR/body.html, DIR/expected.json (the headers
                                   Next.js sends for it), DIR/static.cfg (variant A)
                                   and DIR/key
  verify LABEL PORT DIR [N]        N GETs of /fr/products/chair over keep-alive
                                   connections: status, body byte for byte,
                                   headers, x-cedra-cache HIT
  verify-origin PORT [SECONDS]     Next.js answers the page 200 with x-nextjs-cache HIT
  spoa-metrics SOCK                cedra-spoa edge/HIT and total decisions
  cpu-snap OUT NAME=PGID...        CPU seconds used so far by each process group
  rb-rate FILE                     GET/s from redis-benchmark --csv output
  one DIR STEM                     one round's summary line
  report DIR [TITLE]               the table and ratios from DIR/*.wrk, *.rb, *.cpu*
"""

import glob
import gzip
import http.client
import json
import os
import re
import socket
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))

import harness  # noqa: E402
from test_edge_cache import next_etag, redis_cmd  # noqa: E402

FIX = os.path.join(REPO, "tests", "fixtures", "isr", "v16")
PREFIX = "storefront:"
ROUTE_KEY = ("/route-cache/APP_PAGE/600fe424a8f39649d833b7ff10b31023d5c4f89f76ff08babb88a1011243c40d"
             "/$/fr/products/chair")
PATH = "/fr/products/chair"
# Long enough to stay fresh for the whole run (the fixture's own value is 10 s);
# only Cache-Control's numbers change with it.
REVALIDATE = int(os.environ.get("CEDRA_BENCH_REVALIDATE", "3600"))
NEXT_EXPIRE = 31536000
APP_VARY = "rsc, next-router-state-tree, next-router-prefetch, next-router-segment-prefetch"


def free_ports(n):
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def wait_tcp(port, seconds):
    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)


def seed(rport, out):
    with open(os.path.join(FIX, "values", "product-chair.json")) as f:
        v = json.load(f)
    now_ms = int(time.time() * 1000)
    ls = v["lifespan"]
    ls["revalidate"] = REVALIDATE
    ls["staleAge"] = REVALIDATE
    ls["expireAge"] = REVALIDATE * 3 // 2
    v["lastModified"] = now_ms
    ls["lastModifiedAt"] = now_ms // 1000
    ls["staleAt"] = ls["lastModifiedAt"] + ls["staleAge"]
    ls["expireAt"] = ls["lastModifiedAt"] + ls["expireAge"]
    raw = json.dumps(v)
    assert redis_cmd(rport, "SET", PREFIX + ROUTE_KEY, raw) == "OK"
    redis_cmd(rport, "HSET", PREFIX + "__sharedTags__", ROUTE_KEY, json.dumps(v["tags"]))
    html = v["value"]["html"]
    body = html.encode()
    with open(os.path.join(out, "body.html"), "wb") as f:
        f.write(body)
    with open(os.path.join(out, "key"), "w") as f:
        f.write(PREFIX + ROUTE_KEY)
    expected = {
        "vary": APP_VARY + ", Accept-Encoding",
        "x-nextjs-cache": "HIT",
        "x-nextjs-prerender": "1",
        "x-nextjs-stale-time": v["value"]["headers"]["x-nextjs-stale-time"],
        "x-powered-by": "Next.js",
        "cache-control": "s-maxage=%d, stale-while-revalidate=%d" % (REVALIDATE, NEXT_EXPIRE - REVALIDATE),
        "etag": next_etag(html),
        "content-type": "text/html; charset=utf-8",
        "content-length": str(len(body)),
        "x-cedra-cache": "HIT",
        "x-cedra-locale": "fr",
    }
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
    q = lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'  # noqa: E731
    hdrs = " ".join("hdr %s %s" % (k, q(expected[k])) for k in (
        "vary", "x-nextjs-cache", "x-nextjs-prerender", "x-nextjs-stale-time", "x-powered-by",
        "cache-control", "etag"))
    with open(os.path.join(HERE, "lua", "haproxy-lua.cfg")) as f:
        lua_cfg = f.read()
    # Variant A: the same global/defaults (log format included) as the others,
    # the page from a file, the same headers.
    head = lua_cfg[lua_cfg.index("\nglobal\n") + 1:lua_cfg.index("frontend fe_http")]
    head = "\n".join(l for l in head.splitlines() if "lua" not in l.lower()) + "\n"
    cfg = ("# variant A of bench/edge.sh: the static limit (written by edge_util.py seed)\n" + head +
           ("frontend fe_http\n"
            "    bind \"${CEDRA_HTTP_BIND}\"\n"
            "    http-request return status 200 content-type \"text/html; charset=utf-8\" file %s %s\n"
            "    http-after-response set-header x-cedra-cache HIT\n"
            "    http-after-response set-header x-cedra-locale fr\n") % (
                os.path.join(out, "body.html"), hdrs))
    with open(os.path.join(out, "static.cfg"), "w") as f:
        f.write(cfg)
    # Variant S: variant A's return behind the shipped SPOE filter, message and
    # agent backend; the agent (fake_spoa.py --minimal) answers one variable.
    with open(os.path.join(REPO, "haproxy", "haproxy.cfg")) as f:
        shipped = f.read()
    spoa_backend = shipped[shipped.index("\nbackend spoa_cedra\n") + 1:]
    spoe_conf = os.path.join(REPO, "haproxy", "cedra-spoe.conf")
    cfg_s = ("# variant S of bench/edge.sh: the SPOE exchange alone (written by edge_util.py seed)\n" +
             head +
             ("frontend fe_http\n"
              "    bind \"${CEDRA_HTTP_BIND}\"\n"
              "    filter spoe engine cedra config %s\n"
              "    http-request send-spoe-group cedra cedra-req-group\n"
              "    http-request return status 200 content-type \"text/html; charset=utf-8\" file %s %s"
              " if { var(txn.cedra.action) -m str edge }\n"
              "    http-request return status 503 content-type text/plain string \"no SPOE answer\"\n"
              "    http-after-response set-header x-cedra-cache HIT\n"
              "    http-after-response set-header x-cedra-locale fr\n\n") % (
                  spoe_conf, os.path.join(out, "body.html"), hdrs) + spoa_backend)
    with open(os.path.join(out, "spoe_floor.cfg"), "w") as f:
        f.write(cfg_s)
    # Variant K (a design probe, not what haproxy/ ships): the SPOE decision
    # on every request as in S, the body from HAProxy's own cache keyed by an
    # entry version the agent names (txn.cedra.ver), filled once per version
    # from a server (here a frontend of the same process returning the file).
    vary = expected["vary"]
    cfg_k = ("# variant K of bench/edge.sh: SPOE + HAProxy's cache keyed by version (edge_util.py seed)\n" +
             head +
             ("cache edge\n"
              "    total-max-size 64\n"
              "    max-object-size 1000000\n"
              "    max-age 86400\n\n"
              "frontend fe_http\n"
              "    bind \"${CEDRA_HTTP_BIND}\"\n"
              "    filter spoe engine cedra config %s\n"
              "    http-request send-spoe-group cedra cedra-req-group\n"
              "    filter cache edge\n"
              "    acl edge var(txn.cedra.action) -m str edge\n"
              "    http-request return status 503 content-type text/plain string \"no SPOE answer\" if !edge\n"
              "    http-request set-uri \"/.cedra/%%[var(txn.cedra.ver)]\"\n"
              "    http-request cache-use edge\n"
              "    use_backend be_fill\n"
              "    http-response del-header vary\n"
              "    http-response cache-store edge\n"
              "    http-after-response set-header vary \"%s\"\n"
              "    http-after-response del-header age\n"
              "    http-after-response set-header x-cedra-cache \"%%[var(txn.cedra.cache)]\"\n"
              "    http-after-response set-header x-cedra-locale \"%%[var(txn.cedra.locale)]\"\n\n"
              "backend be_fill\n"
              "    server fill \"${CEDRA_FILL_ADDR}\"\n\n"
              "frontend fill\n"
              "    bind \"${CEDRA_FILL_ADDR}\"\n"
              "    http-request return status 200 content-type \"text/html; charset=utf-8\" file %s %s\n\n") % (
                  spoe_conf, vary, os.path.join(out, "body.html"), hdrs) + spoa_backend)
    with open(os.path.join(out, "spoe_cache.cfg"), "w") as f:
        f.write(cfg_k)
    # Variant L (a design probe, not what haproxy/ ships): no SPOE exchange
    # for a hot page. The request guard a fast lane would need (GET, no query,
    # none of the headers that change Next's answer, no session/preview/pool
    # cookie, one Cookie line at most, agent up), then a map lookup of the path
    # (entry version, fresh-until in epoch seconds, locale: what cedra-spoa
    # would publish and withdraw over the Runtime API), the freshness check
    # against "date", and the body from HAProxy's cache keyed by the version.
    # The map here is a file written once: nothing withdraws an entry, which
    # is exactly what the real design would have to do, exactly and in time.
    with open(os.path.join(out, "lane.map"), "w") as f:
        f.write("/fr/products/chair v1 %d fr\n" % (int(time.time()) + 86400))
    cfg_l = ("# variant L of bench/edge.sh: SPOE-free fast lane probe (edge_util.py seed)\n" +
             head +
             ("cache edge\n"
              "    total-max-size 64\n"
              "    max-object-size 1000000\n"
              "    max-age 86400\n\n"
              "frontend fe_http\n"
              "    bind \"${CEDRA_HTTP_BIND}\"\n"
              "    filter cache edge\n"
              "    acl lane_shape method GET\n"
              "    acl lane_no query -m found\n"
              "    acl lane_no req.hdr_cnt(rsc) gt 0\n"
              "    acl lane_no req.hdr_cnt(next-router-prefetch) gt 0\n"
              "    acl lane_no req.hdr_cnt(next-router-state-tree) gt 0\n"
              "    acl lane_no req.hdr_cnt(next-router-segment-prefetch) gt 0\n"
              "    acl lane_no req.hdr_cnt(next-url) gt 0\n"
              "    acl lane_no req.hdr_cnt(x-now-route-matches) gt 0\n"
              "    acl lane_no req.hdr_cnt(if-none-match) gt 0\n"
              "    acl lane_no req.hdr_cnt(if-modified-since) gt 0\n"
              "    acl lane_no req.hdr_cnt(authorization) gt 0\n"
              "    acl lane_no req.hdr_cnt(cache-control) gt 0\n"
              "    acl lane_no req.fhdr_cnt(cookie) gt 1\n"
              "    acl lane_no req.fhdr(cookie) -m sub sid __prerender_bypass __next_preview_data cedra_pool\n"
              "    acl lane_up srv_is_up(be_fill/fill)\n"
              "    http-request set-var(txn.lane) path,map(%s) if lane_shape !lane_no lane_up\n"
              "    http-request set-var(txn.now) date\n"
              "    http-request set-var(txn.exp) var(txn.lane),field(2,' ') if { var(txn.lane) -m found }\n"
              "    acl lane_fresh var(txn.exp),sub(txn.now) gt 0\n"
              "    http-request return status 503 content-type text/plain string \"not in the lane\" if !lane_fresh\n"
              "    http-request set-var(txn.cedra.locale) var(txn.lane),field(3,' ')\n"
              "    http-request set-uri \"/.cedra/%%[var(txn.lane),field(1,' ')]%%[path]\"\n"
              "    http-request cache-use edge\n"
              "    use_backend be_fill\n"
              "    http-after-response set-header vary \"%s\"\n"
              "    http-after-response del-header age\n"
              "    http-after-response set-header x-cedra-cache HIT\n"
              "    http-after-response set-header x-cedra-locale \"%%[var(txn.cedra.locale)]\"\n\n"
              "backend be_fill\n"
              "    http-response del-header vary\n"
              "    http-response cache-store edge\n"
              "    server fill \"${CEDRA_FILL_ADDR}\" check inter 500ms\n\n"
              "frontend fill\n"
              "    bind \"${CEDRA_FILL_ADDR}\"\n"
              "    http-request return status 200 content-type \"text/html; charset=utf-8\" file %s %s\n") % (
                  os.path.join(out, "lane.map"), vary, os.path.join(out, "body.html"), hdrs))
    with open(os.path.join(out, "lane.cfg"), "w") as f:
        f.write(cfg_l)
    print("seeded %s (%d bytes of JSON, %d bytes of HTML, revalidate %d s)" % (
        PREFIX + ROUTE_KEY, len(raw), len(body), REVALIDATE))


GZIP_AE = "gzip, deflate, br, zstd"


def get(conn, ae=None):
    conn.request("GET", PATH, headers={"Accept-Encoding": ae} if ae else {})
    r = conn.getresponse()
    return r.status, [(k.lower(), v) for k, v in r.getheaders()], r.read()


def verify(label, port, out, n):
    with open(os.path.join(out, "body.html"), "rb") as f:
        body = f.read()
    with open(os.path.join(out, "expected.json")) as f:
        expected = json.load(f)
    # Y, Z and W: a browser's Accept-Encoding; Next answers gzip, Content-Length
    # that of the gzip bytes (which need not be Node's: compared decoded).
    ae = GZIP_AE if label in "YZW" else None
    if ae:
        expected = dict(expected, **{"content-encoding": "gzip"})
        expected.pop("content-length", None)
    # The first requests may pass while cedra-spoa connects to Valkey.
    deadline = time.monotonic() + 15
    while True:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            st, hdrs, got = get(c, ae)
            c.close()
            if st == 200 and dict(hdrs).get("x-cedra-cache") == "HIT":
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            sys.exit("%s: never answered HIT on port %d" % (label, port))
        time.sleep(0.1)
    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=5) for _ in range(4)]
    bad = []
    for i in range(n):
        st, hdrs, got = get(conns[i % len(conns)], ae)
        names = [k for k, _ in hdrs]
        d = dict(hdrs)
        if ae:
            d.pop("date", None)  # the delivery server's (Next sends one too)
            if int(d.pop("content-length", -1)) != len(got):
                bad.append("content-length is not the gzip body's")
            try:
                got = gzip.decompress(got)
            except (OSError, EOFError) as e:
                bad.append("not gzip: %r" % e)
        if st != 200:
            bad.append("status %d" % st)
        if got != body:
            bad.append("body differs (%d bytes vs %d)" % (len(got), len(body)))
        if len(set(names)) != len(names):
            bad.append("repeated header in %r" % names)
        if d != expected:
            diff = {k: (d.get(k), expected.get(k)) for k in set(d) | set(expected) if d.get(k) != expected.get(k)}
            bad.append("headers differ: %r" % diff)
        if bad:
            sys.exit("%s: response %d of %d: %s" % (label, i + 1, n, "; ".join(bad)))
    for c in conns:
        c.close()
    print("%s: %d/%d responses 200, body byte-identical (%d bytes%s), the %d headers Next.js sends + x-cedra-*, x-cedra-cache HIT" % (
        label, n, n, len(body), ", decoded from gzip" if ae else "", len(expected)))


def verify_origin(port, seconds):
    deadline = time.monotonic() + seconds
    last = None
    while time.monotonic() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            st, hdrs, got = get(c)
            c.close()
            last = (st, dict(hdrs).get("x-nextjs-cache"), len(got))
            if st == 200 and last[1] == "HIT":
                print("E: Next.js answers %s 200, x-nextjs-cache HIT, %d bytes" % (PATH, len(got)))
                return
        except OSError as e:
            last = e
        time.sleep(0.3)
    sys.exit("E: Next.js never answered a HIT (last: %r)" % (last,))


def spoa_metrics(sock):
    hit = total = 0
    for line in harness.unix_command(sock, "show metrics", timeout=5, errors="strict").splitlines():
        m = re.match(r'cedra_spoa_requests_total\{([^}]*)\} (\d+)', line)
        if m:
            total += int(m.group(2))
            if ('decision="edge"' in m.group(1) or 'decision="cache"' in m.group(1)) and \
                    'cache="HIT"' in m.group(1):
                hit += int(m.group(2))
    print(hit, total)


def cpu_snap(out, specs):
    """specs: NAME=PGID... -> json {NAME: utime+stime seconds of every
    process of that process group, threads included, "sys": {NAME: stime}}:
    the kernel's part (TCP on loopback, mostly) apart."""
    tck = os.sysconf("SC_CLK_TCK")
    groups = {}
    for spec in specs:
        name, pg = spec.split("=")
        groups[name] = int(pg)
    tot = {name: 0.0 for name in groups}
    sys_ = {name: 0.0 for name in groups}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pgrp = int(fields[2])
        for name, pg in groups.items():
            if pg and pgrp == pg:
                tot[name] += (int(fields[11]) + int(fields[12])) / tck
                sys_[name] += int(fields[12]) / tck
    with open(out, "w") as f:
        json.dump(dict(tot, sys=sys_), f)


def _secs(num, unit):
    return float(num) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]


def parse_wrk(path):
    with open(path) as f:
        t = f.read()
    m = re.search(r"Requests/sec:\s+([\d.]+)", t)
    n = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)\b", t)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", t)
    p50 = re.search(r"^\s+50%\s+(\S+)", t, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", t, re.M)
    requests = int(n.group(1)) if n else 0
    secs = _secs(n.group(2), n.group(3)) if n else 0.0
    bad = (int(non2xx.group(1)) if non2xx else 0) + (sum(int(x) for x in errs.groups()) if errs else 0)
    return {
        # what counts: responses served as asked (2xx), per second
        "ok_rps": (requests - min(bad, requests)) / secs if secs else float("nan"),
        "rps": float(m.group(1)) if m else float("nan"),
        "requests": int(n.group(1)) if n else 0,
        "secs": _secs(n.group(2), n.group(3)) if n else 0.0,
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "errors": sum(int(x) for x in errs.groups()) if errs else 0,
        "p50": p50.group(1) if p50 else "?",
        "p99": p99.group(1) if p99 else "?",
    }


def rb_rate(path):
    print("%.0f" % parse_rb(path))


def parse_rb(path):
    with open(path) as f:
        for line in f:
            cells = [c.strip('"') for c in line.strip().split('","')]
            if len(cells) >= 2 and cells[0].upper().startswith("GET"):
                try:
                    return float(cells[1])
                except ValueError:
                    pass
    return float("nan")


def cpu_delta(d, stem):
    try:
        with open(os.path.join(d, stem + ".cpu0")) as f:
            a = json.load(f)
        with open(os.path.join(d, stem + ".cpu1")) as f:
            b = json.load(f)
    except OSError:
        return {}
    return {k: b[k] - a.get(k, 0.0) for k in b if k != "sys"}


def cpu_sys(d, stem):
    """Kernel seconds of a round, all of the variant's processes."""
    try:
        with open(os.path.join(d, stem + ".cpu0")) as f:
            a = json.load(f).get("sys", {})
        with open(os.path.join(d, stem + ".cpu1")) as f:
            b = json.load(f).get("sys", {})
    except OSError:
        return 0.0
    return sum(b[k] - a.get(k, 0.0) for k in b)


def one(d, stem):
    """One line about one round, for the progress log."""
    v = stem.split(".")[0]
    cpu = cpu_delta(d, stem)
    if v == "F":
        rps = parse_rb(os.path.join(d, stem + ".rb"))
        print("%.0f GET/s" % rps)
        return
    w = parse_wrk(os.path.join(d, stem + ".wrk"))
    extra = ", ".join("%s %.0f%%" % (k, 100 * c / max(1e-9, w["secs"])) for k, c in sorted(cpu.items()))
    print("%.0f good req/s (%.0f with failures), non-2xx %d, errors %d, p50 %s, p99 %s%s" % (
        w["ok_rps"], w["rps"], w["non2xx"], w["errors"], w["p50"], w["p99"], "; CPU " + extra if extra else ""))


NAMES = {
    "A": "HAProxy http-request return file (static limit)",
    "B": "HAProxy (shipped cfg) + cedra-spoa",
    "J": "B with the fast lane off: SPOE on every request",
    "Z": "B, browser Accept-Encoding: gzip (lane's gzip copy)",
    "Y": "J, browser Accept-Encoding: gzip (delivery server)",
    "N": "J with haproxy-cache on: SPOE, page from HAProxy's cache",
    "W": "N, browser Accept-Encoding: gzip (HAProxy's cache)",
    "H": "HAProxy (shipped cfg) + cedra-spoa, l1-size 0 (Valkey path)",
    "C": "HAProxy + Lua, Valkey per request (core.tcp pool)",
    "D": "HAProxy + Lua, per-thread table cache",
    "E": "Next.js origin (own Redis cache handler), direct",
    "F": "redis-benchmark GET of the same value",
    "G": "HAProxy (shipped cfg) + do-nothing agent replaying B's ACK",
    "S": "A behind the shipped SPOE filter, 1-variable ACK (floor)",
    "K": "SPOE (4-variable ACK) + HAProxy cache keyed by version",
    "L": "no SPOE: guard + map lookup + HAProxy cache (probe)",
}


def report(d, title):
    try:
        with open(os.path.join(d, "spoa-l1")) as f:
            l1 = f.read().strip() == "1"
    except OSError:
        l1 = False
    names = dict(NAMES)
    try:
        with open(os.path.join(d, "spoa-lane")) as f:
            lane = f.read().strip() == "1"
    except OSError:
        lane = False
    names["B"] += ", fast lane on" if lane else (", L1 on (default)" if l1 else ", no L1: Valkey per request")
    names["J"] += ", L1" if l1 else ", no L1"
    wrk, cpu, rb, ksys = {}, {}, [], {}
    for p in sorted(glob.glob(os.path.join(d, "?.*.wrk"))):
        stem = os.path.basename(p)[:-4]
        v = stem.split(".")[0]
        wrk.setdefault(v, []).append(parse_wrk(p))
        k = ksys.setdefault(v, [0.0, 0])
        k[0] += cpu_sys(d, stem)
        k[1] += wrk[v][-1]["requests"]
        for k, c in cpu_delta(d, stem).items():
            acc = cpu.setdefault(v, {}).setdefault(k, [0.0, 0])
            acc[0] += c
            acc[1] += wrk[v][-1]["requests"]
    for p in sorted(glob.glob(os.path.join(d, "F.*.rb"))):
        rb.append(parse_rb(p))
        for k, c in cpu_delta(d, os.path.basename(p)[:-3]).items():
            acc = cpu.setdefault("F", {}).setdefault(k, [0.0, 0])
            acc[0] += c
    med = {}
    print()
    print("edge hit benchmark, GET /fr/products/chair (8030-byte page, 26 KB entry): " + title)
    if not l1:
        print("(this cedra-spoa has no L1 page cache: B is the Valkey path, H is not run)")
    print()
    print("   %-58s %7s  %-20s %-16s %s" % ("variant", "req/s", "rounds", "p50/p99", "failed (non-2xx+errors)"))
    for v in "ABZJYNWHCDEGSKL":
        rs = wrk.get(v)
        if not rs:
            continue
        med[v] = statistics.median(r["ok_rps"] for r in rs)
        mid = sorted(rs, key=lambda r: r["ok_rps"])[len(rs) // 2]
        sent = sum(r["requests"] for r in rs)
        failed = sum(min(r["requests"], r["non2xx"] + r["errors"]) for r in rs)
        print("%-2s %-58s %7.0f  %-20s %-16s %d of %d%s" % (
            v, names[v], med[v], " ".join("%.0f" % r["ok_rps"] for r in rs),
            "%s/%s" % (mid["p50"], mid["p99"]), failed, sent,
            " (%.0f%%)" % (100.0 * failed / sent) if failed and sent else ""))
    if rb:
        med["F"] = statistics.median(rb)
        print("%-2s %-58s %7.0f  %-20s" % ("F", NAMES["F"], med["F"], " ".join("%.0f" % x for x in rb)))
    print("   (req/s = 2xx responses per second, median of the rounds; failures are requests the")
    print("    edge did not answer in time and passed to the 503 origin stub, or socket errors)")
    print()
    print("ratios of the medians (same run):")
    valkey_path = "H" if "H" in med else "B"
    for name, x, y, target in [
            ("B/A", "B", "A", ">= 0.6"), ("B/D", "B", "D", ">= 2"), ("B/C", "B", "C", ">= 5"),
            ("%s/F" % valkey_path, valkey_path, "F", "Valkey path vs the store"),
            ("B/E", "B", "E", "edge vs origin"), ("B/H", "B", "H", "L1 on vs off"),
            ("J/A", "J", "A", "SPOE on every request (lane off)"),
            ("J/D", "J", "D", "SPOE on every request (lane off)"),
            ("J/C", "J", "C", "SPOE on every request (lane off)"),
            ("B/J", "B", "J", "lane on vs off"),
            ("Z/A", "Z", "A", "browser (gzip), lane on"),
            ("Z/D", "Z", "D", "browser (gzip), lane on"),
            ("Z/B", "Z", "B", "gzip vs identity, lane on"),
            ("Y/A", "Y", "A", "browser (gzip), lane off"),
            ("Y/D", "Y", "D", "browser (gzip), lane off"),
            ("Y/J", "Y", "J", "gzip (delivery) vs identity (return)"),
            ("N/A", "N", "A", "SPOE, page from HAProxy's cache"),
            ("N/D", "N", "D", "SPOE, page from HAProxy's cache"),
            ("N/J", "N", "J", "haproxy-cache on vs off"),
            ("W/D", "W", "D", "browser (gzip), haproxy-cache on"),
            ("W/Y", "W", "Y", "browser (gzip), haproxy-cache on vs off"),
            ("G/A", "G", "A", "HAProxy side, agent ~free"),
            ("S/A", "S", "A", "SPOE exchange alone: ceiling of B/A"),
            ("S/D", "S", "D", "SPOE exchange alone: ceiling of B/D"),
            ("K/A", "K", "A", "design probe: bodies in HAProxy's cache"),
            ("K/D", "K", "D", "design probe: bodies in HAProxy's cache"),
            ("L/A", "L", "A", "design probe: SPOE-free fast lane"),
            ("L/D", "L", "D", "design probe: SPOE-free fast lane"),
            ("L/C", "L", "C", "design probe: SPOE-free fast lane"),
            ("A/D", "A", "D", "static return: ceiling of B/D"),
            ("D/A", "D", "A", "Lua cache vs static"), ("C/A", "C", "A", "Lua lookup vs static")]:
        if x in med and y in med and med[y] > 0:
            r = med[x] / med[y]
            verdict = ""
            if target.startswith(">="):
                verdict = "met" if r >= float(target[2:]) else "NOT met"
            print("  %-4s %8.2f   target %-26s %s" % (name, r, target, verdict))
    if cpu:
        print()
        print("CPU per request, microseconds (utime+stime of the server-side processes / requests")
        print("sent, all rounds; wrk's own CPU not included):")
        cost = {}
        for v in "ABZJYNWHCDEGSKL":
            if v in cpu:
                parts = ["%s %.1f" % (k, 1e6 * c / max(1, n)) for k, (c, n) in sorted(cpu[v].items())]
                cost[v] = sum(c for c, _ in cpu[v].values()) * 1e6 / max(1, next(iter(cpu[v].values()))[1])
                kern = 1e6 * ksys[v][0] / max(1, ksys[v][1]) if v in ksys else float("nan")
                print("  %s  total %6.1f (kernel %5.1f): %s" % (v, cost[v], kern, ", ".join(parts)))
        print("  (kernel: stime, mostly TCP on loopback for the same request and 8 KB answer:")
        print("   a floor under every variant's cost that no edge logic removes)")
        print()
        print("the same ratios from CPU per request (cost(Y)/cost(X)): what they would be if the")
        print("server's CPU were the only limit, i.e. with the load generator on other cores:")
        for name, x, y, target in [("B/A", "B", "A", ">= 0.6"), ("B/D", "B", "D", ">= 2"),
                                   ("B/C", "B", "C", ">= 5"), ("B/E", "B", "E", ""),
                                   ("B/H", "B", "H", "L1 on vs off"),
                                   ("J/A", "J", "A", "lane off"), ("J/D", "J", "D", "lane off"),
                                   ("J/C", "J", "C", "lane off"),
                                   ("Z/A", "Z", "A", "gzip, lane on"),
                                   ("Z/D", "Z", "D", "gzip, lane on"),
                                   ("Y/A", "Y", "A", "gzip, lane off"),
                                   ("Y/J", "Y", "J", "gzip vs identity, lane off"),
                                   ("N/D", "N", "D", "haproxy-cache on"),
                                   ("N/J", "N", "J", "haproxy-cache on vs off"),
                                   ("W/Y", "W", "Y", "gzip, haproxy-cache on vs off"),
                                   ("G/A", "G", "A", "HAProxy side, agent ~free"),
                                   ("G/D", "G", "D", ""), ("G/C", "G", "C", ""),
                                   ("S/A", "S", "A", "ceiling of B/A with SPOE"),
                                   ("S/D", "S", "D", "ceiling of B/D with SPOE"),
                                   ("K/A", "K", "A", "design probe"),
                                   ("K/D", "K", "D", "design probe"),
                                   ("L/A", "L", "A", "design probe"),
                                   ("L/D", "L", "D", "design probe"),
                                   ("A/D", "A", "D", "static return: ceiling of B/D")]:
            if x in cost and y in cost and cost[x] > 0:
                print("  %-4s %8.2f   %s" % (name, cost[y] / cost[x], target))
    print()
    for v in "BJNH":
        try:
            with open(os.path.join(d, "spoa-metrics." + v)) as f:
                h0, t0, h1, t1 = (int(x) for x in f.read().split())
        except (OSError, ValueError):
            continue
        # Z runs on B's stack, Y on J's and W on N's: their requests count there too.
        also = {"B": "Z", "J": "Y", "N": "W"}.get(v, "")
        sent = sum(r["requests"] for x in v + also for r in wrk.get(x, []))
        print("cedra-spoa during the %s rounds: %d decisions, %d edge HIT; wrk sent %d requests" % (
            "+".join(x for x in v + also if x in wrk), t1 - t0, h1 - h0, sent))


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "ports":
        print(" ".join(str(p) for p in free_ports(int(args[0]))))
    elif cmd == "wait-tcp":
        sys.exit(0 if wait_tcp(int(args[0]), float(args[1]) if len(args) > 1 else 10) else 1)
    elif cmd == "redis":
        r = redis_cmd(int(args[0]), *args[1:])
        print(r.decode() if isinstance(r, bytes) else r)
    elif cmd == "seed":
        seed(int(args[0]), args[1])
    elif cmd == "verify":
        verify(args[0], int(args[1]), args[2], int(args[3]) if len(args) > 3 else 200)
    elif cmd == "verify-origin":
        verify_origin(int(args[0]), float(args[1]) if len(args) > 1 else 60)
    elif cmd == "spoa-metrics":
        spoa_metrics(args[0])
    elif cmd == "cpu-snap":
        cpu_snap(args[0], args[1:])
    elif cmd == "rb-rate":
        rb_rate(args[0])
    elif cmd == "one":
        one(args[0], args[1])
    elif cmd == "report":
        report(args[0], args[1] if len(args) > 1 else "")
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
