#!/usr/bin/env python3
"""App Router navigations from the edge vs from Next.js, side by side.

  python3 bench/rsc_edge.py [VARIANT] [SECONDS]      (default v16, 3)

Starts (through tests/integration/nextjs_fixture.py, loopback, random ports)
redis-server, the fixture storefront's `next start` (build "edgeit") and one
edge node (cedra-spoa from build/ or $CEDRA_SPOA, HAProxy 2.6 with the shipped
config). For each variant, the page is rendered afresh first (Redis flushed,
one request, the entry written) so that it stays fresh (revalidate 8 s) during
a `wrk -t2 -c20 -d SECONDS` run:

  A  HTML of /fr/products/chair through HAProxy, from the edge (HAProxy return rule)
  B  the client navigation to it (RSC: 1, state tree, _rsc) through HAProxy,
     from the edge (delivery path)
  C  the same navigation sent to Next.js directly (x-nextjs-cache: HIT)
  D  B on a second edge node with cedra-spoa's "haproxy-cache on": the
     payload from HAProxy's cache by entry id (filled once)

Every variant is checked first (status 200, the edge's x-cedra-cache HIT or
Next's x-nextjs-cache HIT, body = the stored payload). Prints req/s, mean
latency, the ratios to C, and D/B. Absolute numbers on a shared 2-core machine are
noise; the ratios of one run are the figures."""

import base64
import json
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))

import harness  # noqa: E402
import nextjs_fixture as nf  # noqa: E402
from test_edge_cache import redis_cmd  # noqa: E402
from test_rsc import navigation  # noqa: E402

PATH = "/fr/products/chair"


def wrk(url, headers, seconds):
    argv = ["wrk", "-t2", "-c20", "-d%ds" % seconds, "--latency"]
    for k, v in headers.items():
        argv += ["-H", "%s: %s" % (k, v)]
    out = subprocess.check_output(argv + [url]).decode()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = re.search(r"Latency\s+([\d.]+)(us|ms|s)", out)
    mean_ms = float(lat.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[lat.group(2)]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rps, mean_ms, int(non2xx.group(1)) if non2xx else 0


def main():
    variant = sys.argv[1] if len(sys.argv) > 1 else "v16"
    seconds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    harness.require_tool("wrk")
    env = harness.Env("bench-rsc")
    try:
        proj = nf.setup_variant(variant)
        table = nf.route_table(env, proj)
        keys = nf.CacheKeys(table)
        redis = env.start_redis()
        nxt = nf.start_next(env, variant, redis.port, nf.copy_catalogue(env))
        edge = nf.EdgeNode(env, "a", redis.port, table, nxt.port, processing="200ms")
        edge2 = nf.EdgeNode(env, "b", redis.port, table, nxt.port, processing="200ms", first=False,
                            haproxy_cache=True)
        target, headers = navigation(PATH)
        runs = [("A", "HTML from the edge", edge.port, PATH, {}),
                ("B", "navigation from the edge", edge.port, target, headers),
                ("C", "navigation from Next.js", nxt.port, target, headers),
                ("D", "navigation, haproxy-cache on", edge2.port, target, headers)]
        results = {}
        for label, what, port, tgt, hdrs in runs:
            redis_cmd(redis.port, "FLUSHALL")
            edge.get(PATH)
            harness.wait_until(lambda: nf.redis_key_ready(redis.port, keys.key(PATH)), 30, what="entry")
            value = json.loads(redis_cmd(redis.port, "GET", nf.PREFIX + keys.key(PATH)))["value"]
            want = value["html"].encode() if not hdrs else base64.b64decode(value["rscData"])
            harness.wait_until(lambda: nf.http_request(port, tgt, hdrs).h(
                "x-nextjs-cache" if port == nxt.port else "x-cedra-cache") == "HIT", 10, what=what)
            r = nf.http_request(port, tgt, hdrs)
            if r.status != 200 or r.body != want:
                raise SystemExit("%s: not the stored payload: %r" % (what, r))
            results[label] = wrk("http://127.0.0.1:%d%s" % (port, tgt), dict(hdrs, **{"Accept-Encoding": "identity"}),
                                 seconds)
        base = results["C"][0]
        print("%-2s %-28s %10s %10s %8s %s" % ("", "variant", "req/s", "mean ms", "vs C", "non-2xx"))
        for label, what, _, _, _ in runs:
            rps, ms, bad = results[label]
            print("%-2s %-28s %10.0f %10.2f %7.2fx %d" % (label, what, rps, ms, rps / base, bad))
        print("D/B %.2f (navigation from HAProxy's cache vs through the delivery server)" % (
            results["D"][0] / results["B"][0]))
    finally:
        env.stop_all()
        env.cleanup(keep=bool(env.problems))


if __name__ == "__main__":
    main()
