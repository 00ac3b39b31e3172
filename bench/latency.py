#!/usr/bin/env python3
"""Latency added by cedra-spoa (issue 4): p50/p99 at a fixed request rate,
HAProxy with the shipped config and the SPOE filter vs the same config with
the filter line removed, side by side in one run.

Two pairs, on loopback, HAProxy nbthread 2, cedra-spoa 2 workers (L1 on):
  pass  a request the edge passes to the origin (a session cookie: BYPASS),
        origin = an HAProxy stub answering 200; without the filter the same
        request goes to the same stub. The difference is the SPOE exchange.
  hit   the real v16 chair page answered from the edge (x-cedra-cache HIT)
        vs HAProxy's "http-request return ... file" of the same page with the
        same headers, no filter (bench/edge.sh's variant A); and the same HIT
        from a second cedra-spoa with "haproxy-cache on" (the page from
        HAProxy's cache by entry id), at the same rate.
The rate: closed-loop wrk finds the SPOE variant's maximum, then every
variant runs at --load (default 50 %) of it: wrk with a per-connection delay
(bench/lua/paced.lua) so that C connections each send one request every
C / rate seconds. wrk reports latency without the delay; the achieved rate
is printed next to each result so that the pairs can be compared.
Rounds alternate the variants; the medians of the rounds are printed.

  bench/latency.py [--seconds 8] [--rounds 3] [--load 0.5] [--connections 40]
"""
import argparse
import os
import re
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
sys.path.insert(0, HERE)

import harness  # noqa: E402
import edge_util  # noqa: E402

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk(port, path, seconds, conns, headers=(), rate=None):
    cmd = ["wrk", "-t2", "-c%d" % conns, "-d%ds" % seconds, "--latency"]
    for h in headers:
        cmd += ["-H", h]
    env = dict(os.environ)
    if rate:
        cmd += ["-s", os.path.join(HERE, "lua", "paced.lua")]
        env["PACED_DELAY_MS"] = "%.3f" % (1000.0 * conns / rate)
    out = subprocess.run(cmd + ["http://127.0.0.1:%d%s" % (port, path)], stdout=subprocess.PIPE,
                         text=True, env=env, check=True).stdout
    lat = {}
    for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)", out, re.M):
        lat[p] = float(v) * UNITS[u]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {"p50": lat["50"], "p99": lat["99"], "rps": rps,
            "bad": int(non2xx.group(1)) if non2xx else 0, "errors": errors.group(1) if errors else ""}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--load", type=float, default=0.5)
    ap.add_argument("--connections", type=int, default=40)
    a = ap.parse_args()
    env = harness.Env("bench-latency")
    try:
        rport = env.start_redis().port
        edge_util.seed(rport, env.dir)  # the chair entry + static.cfg (variant A of edge.sh)
        origin = env.start_origin()
        agent = env.start_spoa(log_level="warning", extra="\n".join([
            "valkey 127.0.0.1:%d" % rport,
            "session-cookie sid",
            "pool stable key-prefix %s routes %s" % (
                edge_util.PREFIX, os.path.join(harness.REPO, "tests/fixtures/isr/v16/routes.table"))]))
        quiet = {"CEDRA_HAPROXY_LOG_LEVEL": "err"}
        deliver = harness.free_port()
        agent_hc = env.start_spoa(name="cedra-spoa-hc", log_level="warning", extra="\n".join([
            "valkey 127.0.0.1:%d" % rport,
            "session-cookie sid",
            "pool stable key-prefix %s routes %s" % (
                edge_util.PREFIX, os.path.join(harness.REPO, "tests/fixtures/isr/v16/routes.table")),
            "deliver 127.0.0.1:%d" % deliver,
            "haproxy-cache on"]))
        with open(os.path.join(harness.REPO, "haproxy", "haproxy.cfg")) as f:
            shipped = f.read()
        nofilter = re.sub(r"(?m)^\s*(filter spoe|http-request send-spoe-group) .*\n", "", shipped)
        assert nofilter.count("spoe") < shipped.count("spoe")
        nofilter = nofilter.replace('"${CEDRA_SPOE_CONF-cedra-spoe.conf}"', '""')
        cfg_nf = env.write("haproxy-nofilter.cfg", nofilter)
        # The copy lives elsewhere: the lane's (empty, unused) pattern files by absolute path.
        lane_files = {"CEDRA_LANE_MAP": os.path.join(harness.REPO, "haproxy", "cedra-lane.map"),
                      "CEDRA_LANE_COOKIES": os.path.join(harness.REPO, "haproxy", "cedra-lane-cookies.acl")}
        with_f = env.start_haproxy(agent.addr, origin.port, extra_env=quiet)
        without = env.start_haproxy(agent.addr, origin.port, extra_env=dict(quiet, **lane_files), cfg=cfg_nf)
        with_hc = env.start_haproxy(agent_hc.addr, origin.port, extra_env=dict(
            quiet, CEDRA_DELIVER_ADDR="127.0.0.1:%d" % deliver,
            CEDRA_HAPROXY_SOCK=env.path("haproxy-hc.sock")))
        static_port = harness.free_port()
        static = env.spawn("haproxy-static", ["haproxy", "-db", "-f", os.path.join(env.dir, "static.cfg")],
                           env={"CEDRA_HTTP_BIND": "127.0.0.1:%d" % static_port, "CEDRA_NBTHREAD": "2",
                                "CEDRA_HAPROXY_LOG_LEVEL": "err"})
        harness.wait_until(lambda: harness.tcp_connectable("127.0.0.1", static_port), 10, what="static")
        path = "/fr/products/chair"
        for label, port in (("hit", with_f.port), ("static", static_port), ("hit-hc", with_hc.port)):
            edge_util.verify(label, port, env.dir, 50)
        cookie = ("Cookie: sid=bench",)
        variants = [
            ("pass", "SPOE filter (BYPASS) -> origin stub", with_f.port, cookie),
            ("pass", "no filter -> origin stub", without.port, cookie),
            ("hit", "SPOE filter, edge HIT from the L1", with_f.port, ()),
            ("hit", "no filter, static return of the page", static_port, ()),
            ("hit", "SPOE filter, HIT from HAProxy's cache", with_hc.port, ()),
        ]
        rates = {}
        for kind in ("pass", "hit"):
            spoe = [v for v in variants if v[0] == kind][0]
            wrk(spoe[2], path, 2, a.connections, spoe[3])  # warm-up
            mx = wrk(spoe[2], path, 4, a.connections, spoe[3])["rps"]
            rates[kind] = mx * a.load
            print("%s: the SPOE variant's closed-loop maximum %.0f req/s -> fixed rate %.0f req/s" % (
                kind, mx, rates[kind]))
        res = {i: [] for i in range(len(variants))}
        for r in range(a.rounds):
            order = list(range(len(variants)))
            order = order[r % len(order):] + order[:r % len(order)]
            for i in order:
                kind, _, port, hdrs = variants[i]
                res[i].append(wrk(port, path, a.seconds, a.connections, hdrs, rates[kind]))
        print()
        print("fixed rate, %d connections, wrk -t2, %d rounds of %d s (median of rounds)" % (
            a.connections, a.rounds, a.seconds))
        print("%-5s %-40s %9s %9s %9s %6s" % ("", "variant", "req/s", "p50 ms", "p99 ms", "bad"))
        med = {}
        for i, (kind, name, _, _) in enumerate(variants):
            m = {k: statistics.median(x[k] for x in res[i]) for k in ("rps", "p50", "p99")}
            med[i] = m
            print("%-5s %-40s %9.0f %9.3f %9.3f %6d" % (kind, name, m["rps"], m["p50"], m["p99"],
                                                      sum(x["bad"] for x in res[i])))
        print()
        for kind, (i, j) in (("pass", (0, 1)), ("hit", (2, 3)), ("hit, haproxy-cache", (4, 3))):
            print("%s: added by cedra-spoa p50 %+.3f ms, p99 %+.3f ms (ratio p50 %.2f, p99 %.2f)" % (
                kind, med[i]["p50"] - med[j]["p50"], med[i]["p99"] - med[j]["p99"],
                med[i]["p50"] / med[j]["p50"], med[i]["p99"] / med[j]["p99"]))
        print("latency pass_added_p50_ms=%.3f pass_added_p99_ms=%.3f" % (
            med[0]["p50"] - med[1]["p50"], med[0]["p99"] - med[1]["p99"]))
    finally:
        env.stop_all()
        env.cleanup()


if __name__ == "__main__":
    main()
