#!/usr/bin/env python3
"""HAProxy's memory cost of the local delivery path (pages bigger than one
HAProxy buffer, DESIGN 3.2 / issue 3): HAProxy's pool memory and RSS idle,
under 50 concurrent downloads of a small edge page (answered by "http-request
return"), and under 50 concurrent downloads of a 1.25 MiB page (streamed from
cedra-spoa's delivery server through HAProxy's normal buffers). tune.bufsize
stays at its default (16384).

  bench/deliver_memory.py [--seconds 5]
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))

import harness  # noqa: E402
from test_edge_cache import redis_cmd, load_value, aged, ROUTE_KEY, PREFIX  # noqa: E402


def haproxy_mem(hap):
    info = harness.unix_command(hap.sock, "show info")
    used = float(re.search(r"^PoolUsed_MB: (\S+)", info, re.M).group(1))
    alloc = float(re.search(r"^PoolAlloc_MB: (\S+)", info, re.M).group(1))
    with open("/proc/%d/status" % hap.pid) as f:
        rss = int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) / 1024.0
    return used, alloc, rss


def under_load(hap, path, seconds):
    p = subprocess.Popen(["wrk", "-t2", "-c50", "-d%ds" % seconds,
                          "http://127.0.0.1:%d%s" % (hap.port, path)],
                         stdout=subprocess.PIPE, text=True)
    peak = (0.0, 0.0, 0.0)
    while p.poll() is None:
        m = haproxy_mem(hap)
        peak = tuple(max(a, b) for a, b in zip(peak, m))
        time.sleep(0.2)
    out = p.stdout.read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return peak, rps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=5)
    a = ap.parse_args()
    env = harness.Env("deliver-memory")
    try:
        port = env.start_redis().port
        chair = load_value("product-chair.json")
        chair["lifespan"]["revalidate"] = chair["lifespan"]["staleAge"] = 3600
        chair["lifespan"]["expireAge"] = 7200
        big = json.loads(json.dumps(chair))
        big["value"]["html"] = "<!DOCTYPE html><html><body>" + "<p>chaise</p>" * 110000 + "</body></html>"
        for slug, v in (("chair", chair), ("big", big)):
            key = ROUTE_KEY % slug
            redis_cmd(port, "SET", PREFIX + key, json.dumps(aged(v, 1)))
            redis_cmd(port, "HSET", PREFIX + "__sharedTags__", key, json.dumps(v["tags"]))
        dport = harness.free_port()
        origin = env.start_origin()
        agent = env.start_spoa(extra="\n".join([
            "valkey 127.0.0.1:%d" % port,
            "pool stable key-prefix %s routes %s" % (
                PREFIX, os.path.join(harness.REPO, "tests/fixtures/isr/v16/routes.table")),
            "deliver 127.0.0.1:%d" % dport]))
        hap = env.start_haproxy(agent.addr, origin.port,
                                extra_env={"CEDRA_DELIVER_ADDR": "127.0.0.1:%d" % dport,
                                           "CEDRA_SPOE_TIMEOUT_PROCESSING": "500ms"})
        for path in ("/fr/products/chair", "/fr/products/big"):
            harness.wait_until(lambda: b"x-cedra-cache: HIT" in subprocess.run(
                ["curl", "-si", "http://127.0.0.1:%d%s" % (hap.port, path)],
                stdout=subprocess.PIPE).stdout, 30, what="HIT on " + path)
        idle = haproxy_mem(hap)
        small, rps_s = under_load(hap, "/fr/products/chair", a.seconds)
        large, rps_l = under_load(hap, "/fr/products/big", a.seconds)
        print("page sizes: small %d bytes (return rule), big %d bytes (delivery path)" % (
            len(chair["value"]["html"].encode()), len(big["value"]["html"].encode())))
        print("%-34s %12s %12s %10s" % ("", "PoolUsed_MB", "PoolAlloc_MB", "RSS_MB"))
        for name, m in (("idle", idle), ("50 conns, small page (peak)", small),
                        ("50 conns, 1.25 MiB page (peak)", large)):
            print("%-34s %12.2f %12.2f %10.1f" % (name, m[0], m[1], m[2]))
        print("throughput: small %.0f req/s, big %.0f req/s (%.0f MB/s)" % (
            rps_s, rps_l, rps_l * len(big["value"]["html"]) / 1e6))
        print("deliver_memory pool_used_big_mb=%.2f pool_used_small_mb=%.2f" % (large[0], small[0]))
    finally:
        env.stop_all()
        env.cleanup()


if __name__ == "__main__":
    main()
