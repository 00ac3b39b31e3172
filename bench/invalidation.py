#!/usr/bin/env python3
"""Invalidation latency (issue 4): the time from a revalidateTag write in
Valkey to the edge no longer serving the old page, p50/p99 over N trials.

Stack: redis-server, cedra-spoa (L1 on, its defaults) and HAProxy with the
shipped config, on loopback. Each trial:
  1. writes the page (the real v16 chair entry, a new render each trial) and
     its __sharedTags__ field, as the cache handler's set() does, and reads
     it through HAProxy until it is an edge HIT held in the L1 (`show cache`);
  2. t0; the write revalidateTag makes in Valkey for this page with the
     redis-strings handler: UNLINK of the key and HDEL of its __sharedTags__
     field, in one MULTI/EXEC;
  3. GET through HAProxy on a keep-alive connection, back to back, until the
     answer is not the old page from the edge; t1.
t1 - t0 includes one HTTP round trip through HAProxy and SPOE (the poll's own
granularity, printed apart as the median plain GET time). The same is done
with the L1 off (l1-size 0: every request reads Valkey) as the reference:
there the edge can only be as late as one lookup. And with the L1 on and
"haproxy-cache on": the page from HAProxy's cache by entry id, which a new
version must leave behind as quickly (a new entry, a new key).

  bench/invalidation.py [--trials 200]
"""
import argparse
import http.client
import json
import os
import re
import socket
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))

import harness  # noqa: E402
from test_edge_cache import load_value, aged, ROUTE_KEY, PREFIX  # noqa: E402

PATH = "/fr/products/chair"


class Redis(object):
    """One persistent RESP connection (the bench's own writes)."""

    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.f = self.s.makefile("rb")

    def cmds(self, *cmds):
        out = b""
        for args in cmds:
            out += b"*%d\r\n" % len(args)
            for a in args:
                a = a if isinstance(a, bytes) else str(a).encode()
                out += b"$%d\r\n%s\r\n" % (len(a), a)
        self.s.sendall(out)
        return [self._read() for _ in cmds]

    def _read(self):
        line = self.f.readline().rstrip(b"\r\n")
        t, rest = line[:1], line[1:]
        if t == b"-":
            raise RuntimeError(rest.decode())
        if t == b"+":
            return rest.decode()
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            return None if n < 0 else self.f.read(n + 2)[:-2]
        if t == b"*":
            n = int(rest)
            return None if n < 0 else [self._read() for _ in range(n)]
        raise ValueError(line)


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))]


def run(env, rport, trials, l1, hcache=False):
    tag = ("l1" if l1 else "nol1") + ("-hc" if hcache else "")
    sock = env.path("spoa-%s.sock" % tag)
    deliver = harness.free_port()
    origin = env.start_origin()
    agent = env.start_spoa(name="cedra-spoa-" + tag, extra="\n".join([
        "valkey 127.0.0.1:%d" % rport,
        "pool stable key-prefix %s routes %s" % (
            PREFIX, os.path.join(harness.REPO, "tests/fixtures/isr/v16/routes.table")),
        "stats-socket %s" % sock,
        "log-level warning",
    ] + ([] if l1 else ["l1-size 0"]) +
        (["deliver 127.0.0.1:%d" % deliver, "haproxy-cache on"] if hcache else [])))
    hap = env.start_haproxy(agent.addr, origin.port, extra_env={
        "CEDRA_HAPROXY_LOG_LEVEL": "err", "CEDRA_DELIVER_ADDR": "127.0.0.1:%d" % deliver})
    r = Redis(rport)
    key = ROUTE_KEY % "chair"
    chair = load_value("product-chair.json")
    chair["lifespan"]["revalidate"] = chair["lifespan"]["staleAge"] = 3600
    chair["lifespan"]["expireAge"] = 7200
    conn = http.client.HTTPConnection("127.0.0.1", hap.port, timeout=5)

    def get():
        conn.request("GET", PATH)
        resp = conn.getresponse()
        return resp.getheader("x-cedra-cache"), resp.read()

    lat, rtt = [], []
    for i in range(trials):
        v = aged(chair, 1)
        v["value"]["html"] = chair["value"]["html"].replace("Chaise", "Chaise #%d" % i)
        old = v["value"]["html"].encode()
        r.cmds(("SET", PREFIX + key, json.dumps(v)),
               ("HSET", PREFIX + "__sharedTags__", key, json.dumps(v["tags"])))
        deadline = time.monotonic() + 10
        while True:
            t = time.monotonic()
            cache, body = get()
            rtt.append(time.monotonic() - t)
            if cache == "HIT" and body == old and (
                    not l1 or (PREFIX + key) in harness.unix_command(sock, "show cache")):
                break
            if time.monotonic() > deadline:
                raise SystemExit("trial %d: the page never became an edge HIT%s" % (i, " in the L1" if l1 else ""))
        t0 = time.monotonic()
        r.cmds(("MULTI",), ("UNLINK", PREFIX + key), ("HDEL", PREFIX + "__sharedTags__", key), ("EXEC",))
        while True:
            cache, body = get()
            if not (cache in ("HIT", "STALE") and body == old):
                break
            if time.monotonic() - t0 > 10:
                raise SystemExit("trial %d: the old page was still served 10 s after revalidateTag" % i)
        lat.append(time.monotonic() - t0)
    conn.close()
    info = harness.unix_command(sock, "show cache").splitlines()[0] if l1 else ""
    hap.stop()
    agent.stop()
    origin.stop()
    return lat, rtt, info


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=200)
    a = ap.parse_args()
    env = harness.Env("bench-invalidation")
    try:
        rport = env.start_redis().port
        print("invalidation: revalidateTag's write (MULTI UNLINK key, HDEL __sharedTags__ field EXEC)")
        print("to the first answer through HAProxy that is not the old page; %d trials each" % a.trials)
        print("%-28s %9s %9s %9s %9s   %s" % ("", "p50 ms", "p90 ms", "p99 ms", "max ms", "GET p50 ms"))
        res = {}
        for label, l1, hcache in (("L1 on (tracking)", True, False),
                                  ("L1 on, haproxy-cache on", True, True),
                                  ("L1 off (Valkey per request)", False, False)):
            lat, rtt, info = run(env, rport, a.trials, l1, hcache)
            res[label] = lat
            print("%-28s %9.2f %9.2f %9.2f %9.2f   %.2f" % (
                label,
                1000 * pct(lat, 50), 1000 * pct(lat, 90), 1000 * pct(lat, 99), 1000 * max(lat),
                1000 * statistics.median(rtt)))
            if info:
                print("    cedra-spoa show cache: %s" % info.lstrip("# "))
        on, off, hc = (res["L1 on (tracking)"], res["L1 off (Valkey per request)"],
                       res["L1 on, haproxy-cache on"])
        print("ratio p99 L1 on / L1 off: %.2f (what tracking adds over reading Valkey every time)" % (
            pct(on, 99) / max(1e-9, pct(off, 99))))
        print("invalidation p50_ms=%.2f p99_ms=%.2f trials=%d" % (
            1000 * pct(on, 50), 1000 * pct(on, 99), a.trials))
        print("invalidation haproxy-cache p50_ms=%.2f p99_ms=%.2f trials=%d" % (
            1000 * pct(hc, 50), 1000 * pct(hc, 99), a.trials))
    finally:
        env.stop_all()
        env.cleanup()


if __name__ == "__main__":
    main()
