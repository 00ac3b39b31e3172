#!/usr/bin/env python3
"""Memory of cedra-spoa's L1 page cache (issue 4): RSS with 10 000 cached
pages of 30 KiB against the configured budget (l1-size).

Valkey gets N entries (default 10 000) shaped like the real v16 chair entry
(tests/fixtures/isr/v16: html, rscData, segmentData, tags, headers), each with
30 KiB of HTML, under their route-cache keys. cedra-spoa (2 workers) is asked
for every page over SPOP, as HAProxy would ask (tests/integration/
spop_client.py, several connections, pipelined), twice, and its RSS
(/proc/<pid>/status VmRSS) and `show cache` are read:
  - budget 1g: every page fits; RSS growth per cached byte is the overhead
    of the L1 (allocator, parsed entries, the index);
  - budget 128m: 4 times less than the pages: the L1 evicts and RSS stays
    near the budget.
Prints, for each: entries held, L1 bytes (the accounting), RSS before and
after, RSS growth / L1 bytes, and L1 bytes / budget.

  bench/l1_memory.py [--pages 10000] [--html-kib 30]
"""
import argparse
import json
import os
import re
import socket
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))

import harness  # noqa: E402
import spop_client as sc  # noqa: E402
from test_edge_cache import load_value, aged, ROUTE_KEY, PREFIX  # noqa: E402


def resp(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


def fill_valkey(port, n, html_kib):
    chair = load_value("product-chair.json")
    chair["lifespan"]["revalidate"] = chair["lifespan"]["staleAge"] = 3600
    chair["lifespan"]["expireAge"] = 7200
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    base = chair["value"]["html"]
    pad = html_kib * 1024 - len(base.encode())
    size = 0
    batch = []
    for i in range(n):
        v = aged(chair, 1)
        v["value"]["html"] = base.replace("Chaise", "Chaise %05d %s" % (i, "z" * (pad - 12)), 1)
        raw = json.dumps(v)
        size += len(raw)
        key = ROUTE_KEY % ("p%05d" % i)
        batch.append(resp("SET", PREFIX + key, raw))
        batch.append(resp("HSET", PREFIX + "__sharedTags__", key, json.dumps(v["tags"])))
        if len(batch) >= 200 or i == n - 1:
            s.sendall(b"".join(batch))
            want, got = len(batch), 0
            buf = b""
            while got < want:
                buf += s.recv(65536)
                got = buf.count(b"\r\n")
            batch = []
    s.close()
    return size // n


def ask_all(addr, n, conns=8, depth=32):
    """Every page once over SPOP (30 KiB pages do not fit one ACK: with no
    delivery path configured the answers pass to the origin; the L1 keeps
    the parsed entries all the same)."""
    socks = []
    for _ in range(conns):
        c = sc.Connection(addr, timeout=30)
        c.send(sc.haproxy_hello(max_frame_size=16380, capabilities="pipelining"))
        f = c.recv_frame()
        assert f.type == sc.FRAME_AGENT_HELLO, f
        socks.append(c)
    todo = list(range(n))
    fid = 0
    while todo:
        for c in socks:
            chunk, todo = todo[:depth], todo[depth:]
            for i in chunk:
                fid += 1
                args = [("method", "GET"), ("path", "/fr/products/p%05d" % i), ("query", None),
                        ("host", "127.0.0.1"), ("cookie", None), ("accept_language", None),
                        ("src", "127.0.0.1"), ("if_none_match", None), ("cache_control", None),
                        ("if_modified_since", sc.Int32(0)), ("rsc", sc.Int32(0)),
                        ("prefetch", sc.Int32(0)), ("state_tree", sc.Int32(0)),
                        ("segment_prefetch", sc.Int32(0)), ("authorization", sc.Int32(0))]
                c.send(sc.notify(fid, fid, [("cedra-req", args)]))
            for _ in chunk:
                f = c.recv_frame()
                assert f.type == sc.FRAME_ACK, f
            if not todo:
                break
    for c in socks:
        c.close()


def rss_mb(pid):
    with open("/proc/%d/status" % pid) as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) / 1024.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pages", type=int, default=10000)
    ap.add_argument("--html-kib", type=int, default=30)
    a = ap.parse_args()
    env = harness.Env("bench-l1-memory")
    try:
        rport = env.start_redis().port
        t = time.monotonic()
        per = fill_valkey(rport, a.pages, a.html_kib)
        print("Valkey: %d entries of %d KiB HTML, %d bytes of JSON each (%.0f MB), written in %.1f s" % (
            a.pages, a.html_kib, per, a.pages * per / 1e6, time.monotonic() - t))
        print("%-8s %8s %10s %10s %9s %9s %12s %12s" % (
            "budget", "entries", "L1 MB", "RSS0 MB", "RSS MB", "L1 hits", "RSS+/L1", "L1/budget"))
        for budget_mb in (1024, 128):
            sock = env.path("spoa-%d.sock" % budget_mb)
            agent = env.start_spoa(name="cedra-spoa-%dm" % budget_mb, extra="\n".join([
                "valkey 127.0.0.1:%d" % rport,
                "valkey-timeout 2s",
                "pool stable key-prefix %s routes %s" % (
                    PREFIX, os.path.join(harness.REPO, "tests/fixtures/isr/v16/routes.table")),
                "stats-socket %s" % sock,
                "log-level warning",
                "l1-size %dm" % budget_mb]))
            harness.wait_until(lambda: "enabled=1" in harness.unix_command(sock, "show cache"), 10,
                               what="L1 enabled (tracking up)")
            rss0 = rss_mb(agent.pid)
            ask_all(agent.addr, a.pages)
            ask_all(agent.addr, a.pages)
            head = harness.unix_command(sock, "show cache").splitlines()[0]
            st = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", head)}
            rss = rss_mb(agent.pid)
            l1mb = st["bytes"] / 1048576.0
            print("%-8s %8d %10.1f %10.1f %9.1f %9d %12.2f %12.2f" % (
                "%dm" % budget_mb, st["entries"], l1mb, rss0, rss, st["hits"],
                (rss - rss0) / max(l1mb, 1e-9), st["bytes"] / float(budget_mb << 20)))
            print("          show cache: %s" % head.lstrip("# "))
            print("l1_memory budget_mb=%d entries=%d l1_mb=%.1f rss_mb=%.1f rss_over_budget=%.2f" % (
                budget_mb, st["entries"], l1mb, rss, rss / budget_mb))
            agent.stop()
    finally:
        env.stop_all()
        env.cleanup()


if __name__ == "__main__":
    main()
