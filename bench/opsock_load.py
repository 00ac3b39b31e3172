#!/usr/bin/env python3
"""Does the operator socket slow requests down? HAProxy + cedra-spoa (shipped
config) + an origin on loopback; the same wrk load twice in one run, alone
and with 100 concurrent operator-socket clients each sending a command every
--interval seconds (default 50 ms) (show stat / show info / show metrics), alternating rounds. Prints
requests/s and p99 latency of both and the ratio.

  bench/opsock_load.py [--rounds 3] [--seconds 5]
"""
import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))

import harness  # noqa: E402

CMDS = [b"show stat\n", b"show info\n", b"show metrics\n"]


INTERVAL = 0.05


async def client(path, stop, counts):
    i = 0
    while not stop.is_set():
        try:
            r, w = await asyncio.open_unix_connection(path)
            w.write(CMDS[i % len(CMDS)])
            await w.drain()
            data = await r.read()
            w.close()
            counts["ok" if data.endswith(b"\n\n") or data.endswith(b"\n") else "bad"] += 1
        except OSError:
            counts["err"] += 1
        i += 1
        await asyncio.sleep(INTERVAL)


def socket_load(path, n, stop, counts):
    async def main():
        ev = asyncio.Event()

        async def watch():
            while not stop.is_set():
                await asyncio.sleep(INTERVAL)
            ev.set()
        tasks = [asyncio.create_task(client(path, ev, counts)) for _ in range(n)]
        await watch()
        await asyncio.gather(*tasks)
    asyncio.run(main())


def wrk(port, seconds):
    out = subprocess.run(["wrk", "-t2", "-c50", "-d%ds" % seconds, "--latency",
                          "http://127.0.0.1:%d/fr/products/chair" % port],
                         stdout=subprocess.PIPE, text=True, timeout=seconds + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    m = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    p99 = float(m.group(1)) * {"us": 1e-3, "ms": 1, "s": 1e3}[m.group(2)]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rps, p99, int(non2xx.group(1)) if non2xx else 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--interval", type=float, default=0.05,
                    help="seconds between two commands of one client")
    a = ap.parse_args()
    global INTERVAL
    INTERVAL = a.interval
    env = harness.Env("opsock-bench")
    try:
        sock = env.path("spoa.sock")
        origin = env.start_origin()
        agent = env.start_spoa(extra="stats-socket %s maxconn 200" % sock)
        hap = env.start_haproxy(agent.addr, origin.port)
        harness.wait_until(lambda: wrk(hap.port, 1)[0] > 0, 30, what="traffic")
        alone, loaded = [], []
        counts = {"ok": 0, "bad": 0, "err": 0}
        for _ in range(a.rounds):
            alone.append(wrk(hap.port, a.seconds))
            stop = threading.Event()
            t = threading.Thread(target=socket_load, args=(sock, a.clients, stop, counts))
            t.start()
            time.sleep(0.5)  # let the clients connect before measuring
            loaded.append(wrk(hap.port, a.seconds))
            stop.set()
            t.join()
        ra = statistics.median(x[0] for x in alone)
        rl = statistics.median(x[0] for x in loaded)
        pa = statistics.median(x[1] for x in alone)
        pl = statistics.median(x[1] for x in loaded)
        print("requests/s alone: %.0f  p99 %.2f ms" % (ra, pa))
        print("requests/s with %d socket clients: %.0f  p99 %.2f ms" % (a.clients, rl, pl))
        print("socket commands answered: %d ok, %d bad, %d errors" % (counts["ok"], counts["bad"], counts["err"]))
        print("non-2xx: alone %d, loaded %d" % (sum(x[2] for x in alone), sum(x[2] for x in loaded)))
        print("opsock_load ratio_rps=%.3f ratio_p99=%.3f" % (rl / ra, pl / pa if pa else 0))
    finally:
        env.stop_all()
        env.cleanup()


if __name__ == "__main__":
    main()
