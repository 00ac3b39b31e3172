#!/usr/bin/env python3
"""Is variant D of bench/edge.sh (bench/lua/cedra_edge.lua, CEDRA_LUA_CACHE=1)
exact, like cedra-spoa's L1? Python 3 stdlib only.

  exact_check.py HTTP_PORT REDIS_PORT KEY_FILE [PREFIX]

HTTP_PORT serves GET /fr/products/chair from a running variant-D HAProxy,
REDIS_PORT is its Valkey, KEY_FILE holds the page's full Valkey key (edge.sh:
$tmp/key); PREFIX, the handler's key prefix, defaults to what precedes the
key's first "/". Misses must go to an origin that does not answer HIT (edge.sh's
stub answers 503). Every request opens a new connection, so that they spread
over HAProxy's threads (each has its own table).

Checks, one line each; exit status 1 if any failed:
  1. the page is answered HIT, and from the table: 20 requests, no GET in Valkey
     (INFO commandstats);
  2. after DEL of the key, the answers stop being HIT within 2 s (10 in a row
     not HIT), then 50 more in a row are never HIT;
  3. with the value SET back, HIT again, from the table;
  4. HSET <prefix>__revalidated_tags__ _N_T_/dummy 1 (what revalidateTag
     changes) flushes the table: a request is read from Valkey again (the GET
     count moves) within 2 s;
  5. CLIENT KILL TYPE pubsub, then DEL right away (its invalidation is lost):
     the answers stop being HIT within 50 ms - the time HAProxy may take to see
     the connection closed, less than its first reconnection (100 ms) - and 50
     more in a row are never HIT, reconnected or not; with the value back, HIT
     from the table again once tracking is back.
HIT answers seen before the answers stopped being HIT are counted in the
report line (normally 0).
The value is restored (with its TTL) and the tag hash field removed at the end
of each check, whatever happened. The GET counts are Valkey-wide: run it while
nothing else reads that Valkey (no load on the other variants).
"""

import http.client
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))

from test_edge_cache import redis_cmd  # noqa: E402

PATH = "/fr/products/chair"
DUMMY_TAG = "_N_T_/dummy"
NOTICE_S = 0.05  # check 5: time for HAProxy to see its subscriber's connection closed


class Failed(Exception):
    pass


def request(port):
    """x-cedra-cache of one GET on a new connection ("" if absent)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request("GET", PATH, headers={"Connection": "close"})
        r = c.getresponse()
        r.read()
        return r.status, r.getheader("x-cedra-cache") or ""
    finally:
        c.close()


def get_calls(rport):
    info = redis_cmd(rport, "INFO", "commandstats")
    for line in info.decode().splitlines():
        if line.startswith("cmdstat_get:"):
            for kv in line.split(":", 1)[1].split(","):
                k, _, v = kv.partition("=")
                if k == "calls":
                    return int(v)
    return 0


def from_table(port, rport, n=20, seconds=5.0):
    """Until n requests in a row are HIT with no GET in Valkey; returns how long
    it took, or raises."""
    t0 = time.monotonic()
    last = None
    while True:
        before = get_calls(rport)
        answers = [request(port) for _ in range(n)]
        gets = get_calls(rport) - before
        if all(a == (200, "HIT") for a in answers) and gets == 0:
            return time.monotonic() - t0
        last = "%d GETs, answers %s" % (gets, sorted(set(answers)))
        if time.monotonic() - t0 > seconds:
            raise Failed("not served from the table within %.0f s (last batch of %d: %s)" % (seconds, n, last))
        time.sleep(0.05)


def stops_hitting(port, seconds, quiet=10):
    """Until `quiet` answers in a row are not HIT (new connections: over every
    thread); returns (time of the first of them, HITs seen before), or raises
    if it takes more than `seconds`."""
    t0 = time.monotonic()
    hits = run = 0
    first = None
    while run < quiet:
        st, cache = request(port)
        if cache == "HIT":
            hits += 1
            run, first = 0, None
        else:
            run += 1
            if first is None:
                first = time.monotonic() - t0
        if run < quiet and time.monotonic() - t0 > seconds:
            raise Failed("still HIT %.0f ms after the change (%d HIT answers)" % (seconds * 1000, hits))
    return first, hits


def never_hit(port, n):
    answers = [request(port) for _ in range(n)]
    hits = sum(1 for _, c in answers if c == "HIT")
    if hits:
        raise Failed("%d of %d answers HIT after the change" % (hits, n))
    return sorted(set(answers))


class Value:
    """The page's value in Valkey, saved, to be put back as it was."""

    def __init__(self, rport, key):
        self.rport, self.key = rport, key
        self.raw = redis_cmd(rport, "GET", key)
        if self.raw is None:
            raise SystemExit("exact_check: %s is not in Valkey on port %d" % (key, rport))
        self.pttl = redis_cmd(rport, "PTTL", key)

    def delete(self):
        if redis_cmd(self.rport, "DEL", self.key) != 1:
            raise Failed("DEL %s did not delete it" % self.key)

    def restore(self):
        if self.pttl is not None and self.pttl > 0:
            redis_cmd(self.rport, "SET", self.key, self.raw, "PX", self.pttl)
        else:
            redis_cmd(self.rport, "SET", self.key, self.raw)


def check_hit(port, rport, val, prefix):
    t = from_table(port, rport, seconds=15)  # tracking may still be coming up
    return "HIT, 20 requests in a row from the table (no GET in Valkey), after %.2f s" % t


def check_del(port, rport, val, prefix):
    try:
        val.delete()
        t, hits = stops_hitting(port, 2.0)
        answers = never_hit(port, 50)
    finally:
        val.restore()
    return "after DEL: no more HIT after %.1f ms (%d HIT before), then 50/50 not HIT %s" % (t * 1000, hits, answers)


def check_restore(port, rport, val, prefix):
    t = from_table(port, rport)
    return "value SET back: HIT from the table again after %.2f s" % t


def check_tags(port, rport, val, prefix):
    tags = prefix + "__revalidated_tags__"
    from_table(port, rport)
    try:
        before = get_calls(rport)
        redis_cmd(rport, "HSET", tags, DUMMY_TAG, "1")
        t0 = time.monotonic()
        n = 0
        while True:
            st, cache = request(port)
            n += 1
            if get_calls(rport) > before:
                break
            if time.monotonic() - t0 > 2:
                raise Failed("HSET %s: %d requests in 2 s, none read from Valkey (table not flushed)" % (tags, n))
        t = time.monotonic() - t0
    finally:
        redis_cmd(rport, "HDEL", tags, DUMMY_TAG)
    from_table(port, rport)
    return "HSET %s %s 1: request %d (after %.3f s) read from Valkey again (answer %d %s)" % (
        tags, DUMMY_TAG, n, t, st, cache)


def check_kill(port, rport, val, prefix):
    from_table(port, rport)
    try:
        killed = redis_cmd(rport, "CLIENT", "KILL", "TYPE", "pubsub")
        val.delete()
        if not isinstance(killed, int) or killed < 1:
            raise Failed("CLIENT KILL TYPE pubsub killed %r connections (no subscriber?)" % killed)
        # The DEL's invalidation is lost (nobody subscribed): the table must be
        # off from the moment HAProxy sees the connection close. That takes a
        # few scheduler hops inside HAProxy, well under a millisecond on an idle
        # machine but not when its thread waits for a CPU: NOTICE_S for it,
        # shorter than the first reconnection (100 ms), so a table that stays
        # on until tracking is back still fails.
        t, hits = stops_hitting(port, NOTICE_S)
        answers = never_hit(port, 50)
    finally:
        val.restore()
    t2 = from_table(port, rport)
    return ("CLIENT KILL TYPE pubsub (%d killed) + DEL: no more HIT after %.1f ms (%d HIT before), then 50/50 "
            "not HIT %s; value back: HIT from the table after %.2f s" % (killed, t * 1000, hits, answers, t2))


def main():
    if len(sys.argv) not in (4, 5):
        raise SystemExit(__doc__.split("\n\n")[1])
    port, rport = int(sys.argv[1]), int(sys.argv[2])
    with open(sys.argv[3]) as f:
        key = f.read().strip()
    prefix = sys.argv[4] if len(sys.argv) == 5 else key[:key.index("/")]
    val = Value(rport, key)
    failed = 0
    checks = [("1 hit", check_hit), ("2 del", check_del), ("3 restore", check_restore),
              ("4 tags", check_tags), ("5 kill", check_kill)]
    for name, fn in checks:
        try:
            print("exact_check %s: ok: %s" % (name, fn(port, rport, val, prefix)), flush=True)
        except (Failed, OSError, http.client.HTTPException) as e:
            failed += 1
            print("exact_check %s: FAILED: %s" % (name, e), flush=True)
    if failed:
        print("exact_check: %d of %d checks failed" % (failed, len(checks)))
        sys.exit(1)
    print("exact_check: variant D is exact (%d checks)" % len(checks))


if __name__ == "__main__":
    main()
