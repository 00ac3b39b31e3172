"""cedra-spoa's in-process page cache (L1) kept exact by Valkey client-side
caching (issue 4), through the real HAProxy 2.6 with the shipped config and a
real redis-server holding the values the real Next.js 16.4.6 + cache handler
wrote (tests/fixtures/isr/v16).

Every way a key can change in Valkey must drop the page from the edge: a
write (in test_edge_cache), DEL, EXPIRE, eviction under maxmemory, FLUSHALL;
and when the invalidation connections are killed, the L1 is off until
tracking is back, so no write made in between is missed. The L1 never holds
more than its byte budget while pages churn. revalidateTag/revalidatePath
through the real Next.js app are in test_nextjs.py (the L1 is on by default).

"Dropped" is checked strictly: once the change is made in Valkey, the edge
must stop serving the old page within the invalidation's own latency (polled
with a deadline), and after the first answer that shows the change, the old
page never comes back."""

import os
import re
import time
import unittest

import harness
from test_edge_cache import EdgeCachePages, FIX, PREFIX, ROUTE_KEY, aged, load_value, redis_cmd
from test_haproxy import HaproxyCase, SF

# Small on purpose: the churn test overflows it. 16 shards, and an entry may
# take at most a quarter of its shard (48 KiB here; the chair's value is 26 KB).
L1_BUDGET = 3 * 1024 * 1024


class L1Test(EdgeCachePages, HaproxyCase):
    def setUp(self):
        super().setUp()
        self.redis, self.rport = self.start_redis()
        self.sock = self.env.path("spoa.sock")
        extra = "\n".join([
            "valkey 127.0.0.1:%d" % self.rport,
            "valkey-timeout 80ms",
            "pool stable key-prefix %s routes %s" % (PREFIX, os.path.join(FIX, "routes.table")),
            "revalidate-lock 5s",
            "session-cookie sid",
            "l1-size %d" % L1_BUDGET,
            "stats-socket %s" % self.sock,
        ])
        self.start_stack(extra=extra)
        self.wait_spoa_check()
        self.chair = load_value("product-chair.json")
        self.html = self.chair["value"]["html"].encode()

    # ---- helpers
    def cache_info(self):
        head = harness.unix_command(self.sock, "show cache", errors="strict").splitlines()[0]
        return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", head)}

    def cached_keys(self):
        text = harness.unix_command(self.sock, "show cache", errors="strict")
        return [l.split(",")[0] for l in text.splitlines()
                if l and not l.startswith("#")]

    def hot(self, slug="chair", value=None):
        """A page served from the L1: HIT and present in `show cache`."""
        key = self.put_page(slug, value or aged(self.chair, 1))
        path = "/fr/products/%s" % slug
        self.wait_hit(path)

        # The L1 takes a page on a lookup made while tracking is up, which may
        # come after the first hits (Valkey path): keep asking.
        def in_l1():
            self.get(path)
            return PREFIX + key in self.cached_keys()
        harness.wait_until(in_l1, 5 * SF, what="%s in the L1" % key)
        return key, path

    def assert_dropped(self, path, what, old=None):
        """The edge stops serving the old page within the invalidation's own
        latency, and never serves it again afterwards."""
        old = old if old is not None else self.html
        t0 = time.monotonic()

        def changed():
            st, hdrs, body = self.get(path)
            return not (hdrs.get("x-cedra-cache") == "HIT" and body == old)
        harness.wait_until(changed, 2 * SF, interval=0.002, what="%s seen at the edge" % what)
        ms = (time.monotonic() - t0) * 1000
        for _ in range(30):
            st, hdrs, body = self.get(path)
            self.assertFalse(hdrs.get("x-cedra-cache") in ("HIT", "STALE") and body == old,
                             "%s: the old page came back from the edge" % what)
        print("\n%s: the edge stopped serving the old page after %.1f ms" % (what, ms))

    # ---- tests
    def test_del_drops_the_page(self):
        key, path = self.hot()
        self.assertEqual(redis_cmd(self.rport, "DEL", PREFIX + key), 1)
        self.assert_dropped(path, "DEL")
        st, hdrs, _ = self.get(path)
        self.assertEqual((hdrs.get("x-origin"), hdrs["x-cedra-cache"]), ("1", "MISS"))

    def test_expire_drops_the_page(self):
        key, path = self.hot()
        self.assertEqual(redis_cmd(self.rport, "PEXPIRE", PREFIX + key, 300), 1)
        # Until Valkey expires the key, Next.js itself would still read it.
        harness.wait_until(lambda: redis_cmd(self.rport, "EXISTS", PREFIX + key) == 0, 5 * SF,
                           what="the key expired in Valkey")
        self.assert_dropped(path, "EXPIRE")

    def test_eviction_drops_the_page(self):
        key, path = self.hot()
        used = int(re.search(r"used_memory:(\d+)", redis_cmd(self.rport, "INFO", "memory").decode()).group(1))
        redis_cmd(self.rport, "CONFIG", "SET", "maxmemory-policy", "allkeys-random")
        redis_cmd(self.rport, "CONFIG", "SET", "maxmemory", str(used + 2 * 1024 * 1024))
        filler = "x" * 16384
        for i in range(4000):  # ~64 MB at most: far past the limit
            redis_cmd(self.rport, "SET", "filler:%d" % i, filler)
            if i % 50 == 49 and redis_cmd(self.rport, "EXISTS", PREFIX + key) == 0:
                break
        self.assertEqual(redis_cmd(self.rport, "EXISTS", PREFIX + key), 0, "the page was never evicted")
        evicted = int(re.search(r"evicted_keys:(\d+)", redis_cmd(self.rport, "INFO", "stats").decode()).group(1))
        self.assertGreater(evicted, 0)
        self.assert_dropped(path, "eviction")
        redis_cmd(self.rport, "CONFIG", "SET", "maxmemory", "0")

    def test_flushall_drops_every_page(self):
        key1, path1 = self.hot("chair")
        key2, path2 = self.hot("sofa")
        self.assertEqual(redis_cmd(self.rport, "FLUSHALL"), "OK")
        self.assert_dropped(path1, "FLUSHALL (first page)")
        self.assert_dropped(path2, "FLUSHALL (second page)")
        harness.wait_until(lambda: self.cache_info()["entries"] == 0, 2 * SF, what="L1 empty")

    def kill_then_write(self, name):
        """CLIENT KILL of one of cedra-spoa's two tracking connections, then a
        write at once: nobody tracks any more, so that write's invalidation
        is never sent; the L1 must already be off (cedra-spoa closes both
        connections when one breaks) — the new page or the origin, never the
        old page — and come back, exact, once tracking is re-established."""
        key, path = self.hot()
        clients = redis_cmd(self.rport, "CLIENT", "LIST").decode().splitlines()
        ids = [re.search(r"\bid=(\d+)", l).group(1) for l in clients if " name=%s " % name in l]
        self.assertEqual(len(ids), 1, (name, clients))
        self.assertEqual(redis_cmd(self.rport, "CLIENT", "KILL", "ID", ids[0]), 1)
        new = aged(self.chair, 0)
        new["value"]["html"] = self.chair["value"]["html"].replace("Chaise", "Chaise v2")
        self.put_page("chair", new)
        new_html = new["value"]["html"].encode()
        t_end = time.monotonic() + 5 * SF
        back = False
        while time.monotonic() < t_end and not back:
            st, hdrs, body = self.get(path)
            self.assertEqual(st, 200)
            self.assertNotEqual(body, self.html, "old page served after its key was rewritten (%s)" % hdrs)
            back = (hdrs.get("x-cedra-cache") == "HIT" and body == new_html and
                    self.cache_info()["enabled"] == 1 and PREFIX + key in self.cached_keys())
        self.assertTrue(back, "the L1 never served the new page again")
        # Tracking is back: the L1 follows writes again.
        new2 = aged(self.chair, 0)
        new2["value"]["html"] = self.chair["value"]["html"].replace("Chaise", "Chaise v3")
        self.put_page("chair", new2)
        self.assert_dropped(path, "write after tracking came back (%s killed)" % name, old=new_html)

    def test_invalidation_subscriber_killed_no_stale_serve(self):
        self.kill_then_write("cedra-invalidations")

    def test_tracking_connection_killed_no_stale_serve(self):
        self.kill_then_write("cedra-tracking")

    def test_byte_budget_respected_under_churn(self):
        """160 pages whose values are 29 to 35 KB (about 1.7 times the budget) requested in turn:
        every answer is the right page, the L1 never holds more than its
        budget, and it evicts."""
        pages = {}
        base = self.chair["value"]["html"]
        for i in range(160):
            v = aged(self.chair, 1)
            v["value"]["html"] = base.replace("Chaise", "Chaise %03d " % i + "z" * (3000 + 37 * (i % 80)), 1)
            slug = "churn%03d" % i
            self.put_page(slug, v)
            pages[slug] = v["value"]["html"].encode()
        self.wait_hit("/fr/products/churn000")
        hits = 0
        max_seen = 0
        for rnd in range(3):
            for slug, html in pages.items():
                st, hdrs, body = self.get("/fr/products/%s" % slug)
                self.assertEqual((st, body), (200, html), (slug, hdrs))
                hits += hdrs.get("x-cedra-cache") == "HIT"
                if slug.endswith("0"):
                    info = self.cache_info()
                    max_seen = max(max_seen, info["bytes"])
                    self.assertLessEqual(info["bytes"], info["max_bytes"], info)
                    self.assertEqual(info["max_bytes"], L1_BUDGET)
        info = self.cache_info()
        self.assertLessEqual(info["bytes"], L1_BUDGET, info)
        self.assertGreater(info["evictions"], 0, info)
        self.assertGreater(hits, 400, "pages did not come from the edge")
        print("\nL1 under churn: max %d of %d bytes held, %d evictions, %d entries at the end" % (
            max_seen, L1_BUDGET, info["evictions"], info["entries"]))

    def test_pages_around_the_inline_limit_never_fail(self):
        """An edge answer is built by HAProxy in one buffer: a page whose
        answer would not fit must go another way (here, with no delivery
        path configured, to the origin), never become HAProxy's 500. Found
        by the churn test: 15843-byte pages with the usual headers got 500s."""
        self.hot()
        base = self.chair["value"]["html"]
        seen = set()
        for n in range(15000, 16500, 25):
            v = aged(self.chair, 1)
            v["value"]["html"] = base.replace("Chaise", "Chaise" + "z" * (n - len(base.encode())), 1)
            slug = "size%d" % n
            self.put_page(slug, v)
            st, hdrs, body = self.get("/fr/products/" + slug)
            self.assertEqual(st, 200, (n, hdrs))
            if hdrs.get("x-origin") == "1":
                seen.add("origin")
            else:
                self.assertEqual((hdrs["x-cedra-cache"], body), ("HIT", v["value"]["html"].encode()), n)
                seen.add("edge")
        self.assertEqual(seen, {"edge", "origin"}, "the sizes did not straddle the limit")


if __name__ == "__main__":
    unittest.main()
