#!/usr/bin/env python3
"""cedra-agent propagation latency: from a catalog change in the Consul double
to HAProxy's server state changing.

Stack on loopback: the Consul double, one HAProxy playing N origins, the edge
HAProxy with server-template slots (storefront_stable / storefront_canary),
cedra-agent. The catalog alternates between {o1, o2} and {o1, o2, o3} (a fill:
addr + ready; a removal: drain), CHANGES times, with a random 5..25 ms pause
between the end of one change and the next.

Two figures per change, both printed as p50 / p90 / p99 / max:
  observed  t0 = just before the control-API PUT that changes the catalog;
            t1 = the first "show servers state" poll (tight loop on HAProxy's
            stats socket) that shows o3's slot ready (added) or no longer
            ready (removed).
  agent log t0 (wall clock) -> the agent's "reconcile_applied" line for the
            index the double returned (ms-resolution timestamps; the last
            command of the plan was acknowledged by HAProxy then).

The agent runs with the Consul rate limit opened for this (consul-rate 1000
1ms, consul-same-index-interval 1ms): with the defaults (5 queries, then one
per second) a change that follows another within a second waits for a token,
on purpose, and that wait would be what this measures.

Usage: bench/agent_latency.py [--changes 200] [--strict]
Environment: CEDRA_AGENT (default build/agent/cedra-agent), CEDRA_HAPROXY_BIN.
Exit status: 0; with --strict, 1 when the observed p99 is >= 100 ms.
"""

import argparse
import datetime
import os
import random
import re
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))
sys.path.insert(0, os.path.join(REPO, "tests", "consul_double"))

import harness  # noqa: E402
from client import ConsulDouble  # noqa: E402
from test_agent import EDGE_CFG  # noqa: E402

TARGET_P99 = 0.100


def pct(values, p):
    v = sorted(values)
    if not v:
        return float("nan")
    k = min(len(v) - 1, max(0, int(round(p / 100.0 * len(v) + 0.5)) - 1))
    return v[k]


def summary(label, values):
    ms = [x * 1000 for x in values]
    return "%-10s n=%d  p50=%.1f ms  p90=%.1f ms  p99=%.1f ms  max=%.1f ms" % (
        label, len(ms), pct(ms, 50), pct(ms, 90), pct(ms, 99), max(ms))


def parse_ts(s):
    # ts=2026-11-24T00:59:11.054Z
    return datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--changes", type=int, default=200)
    ap.add_argument("--strict", action="store_true")
    args = ap.parse_args()
    agent = harness.agent_bin()
    if not os.access(agent, os.X_OK):
        sys.exit("agent_latency: %s not found (build it, or set CEDRA_AGENT)" % agent)

    env = harness.Env("agent-latency")
    double = None
    ok = False
    try:
        oport = [harness.free_port() for _ in range(3)]
        lines = ["global", "    nbthread 1", "defaults", "    mode http",
                 "    timeout connect 2s", "    timeout client 10s", "    timeout server 10s"]
        for i, p in enumerate(oport):
            lines += ["frontend o%d" % (i + 1), "    bind 127.0.0.1:%d" % p,
                      "    http-request return status 200 content-type text/plain "
                      "string o%d" % (i + 1)]
        ocfg = env.write("origins.cfg", "\n".join(lines) + "\n")
        origins = env.spawn("origins", [harness.haproxy_bin(), "-db", "-f", ocfg])
        origins.expect_rc = harness.HAPROXY_STOP_RC
        env.wait_ready(origins, lambda: all(harness.tcp_connectable("127.0.0.1", p)
                                            for p in oport), 10, "origins")
        fe_port = harness.free_port()
        hsock = env.path("haproxy.sock")
        ecfg = env.write("edge.cfg", EDGE_CFG % {"sock": hsock, "port": fe_port, "stable": 4,
                                                 "canary": 2, "backup": oport[0]})
        edge = env.spawn("edge", [harness.haproxy_bin(), "-db", "-f", ecfg])
        edge.expect_rc = harness.HAPROXY_STOP_RC
        env.wait_ready(edge, lambda: os.path.exists(hsock), 10, "edge stats socket")

        double = ConsulDouble.start(stderr=open(env.path("double.err"), "wb"))
        double.config(jitter=False)
        asock = env.path("agent.sock")
        conf = env.write("agent.conf", (
            "allow-root\n"
            "service storefront\n"
            "consul-addr %s\n"
            "consul-wait 30s\n"
            "consul-rate 1000 1ms\n"
            "consul-same-index-interval 1ms\n"
            "haproxy-socket %s\n"
            "reconcile-interval 1s\n"
            "drain-interval 50ms\n"
            "drain-grace 2s\n"
            "stats-socket %s\n"
            "register off\n"
            "log-level %s\n") % (double.addr, hsock, asock, os.environ.get("CEDRA_BENCH_LOG_LEVEL", "notice")))
        ag = env.spawn("cedra-agent", [agent, "-f", conf])
        env.wait_ready(ag, lambda: os.path.exists(asock), 10, "agent socket")

        def inst(n):
            return {"id": "o%d" % n, "address": "127.0.0.1", "port": oport[n - 1],
                    "meta": {"build_id": "b1"}}

        def o3_ready():
            for r in harness.servers_state(hsock, "storefront_stable").values():
                if r["port"] == oport[2]:
                    return r["state"] == "ready"
            return False

        double.set_service("storefront", [inst(1), inst(2)])
        harness.wait_until(lambda: len(harness.slot_ports(hsock, "storefront_stable")) == 2, 10,
                           what="initial sync")
        observed, by_index = [], {}
        for i in range(args.changes):
            add = i % 2 == 0
            want = [inst(1), inst(2), inst(3)] if add else [inst(1), inst(2)]
            t0w = time.time()
            t0 = time.monotonic()
            res = double.set_service("storefront", want)
            deadline = t0 + 5
            while o3_ready() != add:
                if time.monotonic() > deadline:
                    raise AssertionError("change %d not seen in HAProxy within 5 s" % i)
            observed.append(time.monotonic() - t0)
            by_index[res["index"]] = t0w
            time.sleep(random.uniform(0.005, 0.025))  # pacing between changes, not a sync

        harness.unix_command(asock, "show info")  # the agent is alive and answering
        logged = []
        with open(ag.err_path, errors="replace") as f:
            for line in f:
                m = re.match(r"ts=(\S+) .*event=reconcile_applied .*index=(\d+) ", line)
                if m and int(m.group(2)) in by_index:
                    logged.append(parse_ts(m.group(1)) - by_index.pop(int(m.group(2))))
        p99 = pct(observed, 99)
        print("cedra-agent: Consul double change -> HAProxy server state, %d changes "
              "(fill and drain alternately)" % args.changes)
        print(summary("observed", observed))
        if logged:
            print(summary("agent log", logged))
        print("target p99 < %.0f ms: %s (observed p99 %.1f ms)" % (
            TARGET_P99 * 1000, "met" if p99 < TARGET_P99 else "MISSED", p99 * 1000))
        print("agent_latency changes=%d p50_ms=%.2f p99_ms=%.2f max_ms=%.2f" % (
            args.changes, pct(observed, 50) * 1000, p99 * 1000, max(observed) * 1000))
        ok = p99 < TARGET_P99 or not args.strict
    finally:
        env.stop_all()
        if double is not None:
            double.stop()
        if env.problems:
            env.dump()
        env.cleanup(keep=bool(env.problems) or not ok or bool(os.environ.get("CEDRA_KEEP_TMP")))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
