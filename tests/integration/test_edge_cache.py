"""The ISR edge path through the real HAProxy 2.6 and the shipped config,
against a real redis-server holding the exact values the real Next.js 16.4.6
+ @fortedigital/nextjs-cache-handler wrote (tests/fixtures/isr/v16), with
their timestamps moved to now. The Next.js end-to-end tests live in
test_nextjs.py; this one pins the edge's reading of the handler's layout."""

import json
import re
import os
import signal
import socket
import subprocess
import time
import unittest

import harness
from test_haproxy import HaproxyCase, SF
from test_locale_routing import raw_request

FIX = os.path.join(harness.REPO, "tests", "fixtures", "isr", "v16")
PREFIX = "storefront:"
MAX_BODY = 2 * 1024 * 1024  # isr-max-body of this stack: the largest page served from the edge
ROUTE_KEY = ("/route-cache/APP_PAGE/600fe424a8f39649d833b7ff10b31023d5c4f89f76ff08babb88a1011243c40d"
             "/$/fr/products/%s")


def redis_cmd(port, *args):
    """A minimal RESP client: one command, one reply (str/int/None/list)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        s.sendall(out)
        f = s.makefile("rb")
        return _read(f)
    finally:
        s.close()


def _read(f):
    line = f.readline().rstrip(b"\r\n")
    t, rest = line[:1], line[1:]
    if t in (b"+", b"-"):
        return rest.decode()
    if t == b":":
        return int(rest)
    if t == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)[:-2]
        return data
    if t == b"*":
        return [_read(f) for _ in range(int(rest))]
    raise AssertionError("bad RESP %r" % line)


def next_etag(text):
    """Next.js's ETag, written from its algorithm (FNV-1a 64 over UTF-16
    units folded to 52 bits, base36 hash + base36 length), independently of
    the C code; checked below against an ETag the real Next.js sent."""
    units = text.encode("utf-16-le")
    h = 0xcbf29ce484222325
    n = len(units) // 2
    for i in range(n):
        h ^= units[2 * i] | (units[2 * i + 1] << 8)
        h = (h * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    v = (h & ((1 << 52) - 1)) ^ (h >> 52)

    def b36(x):
        d = "0123456789abcdefghijklmnopqrstuvwxyz"
        s = ""
        while True:
            x, r = divmod(x, 36)
            s = d[r] + s
            if not x:
                return s
    return '"%s%s"' % (b36(v), b36(n))


def load_value(name):
    with open(os.path.join(FIX, "values", name)) as f:
        return json.load(f)


def aged(value, age_s):
    """The value as if written age_s seconds ago (lifespan moved along)."""
    v = json.loads(json.dumps(value))
    now_ms = int(time.time() * 1000) - int(age_s * 1000)
    ls = v["lifespan"]
    v["lastModified"] = now_ms
    ls["lastModifiedAt"] = now_ms // 1000
    ls["staleAt"] = ls["lastModifiedAt"] + ls["staleAge"]
    ls["expireAt"] = ls["lastModifiedAt"] + ls["expireAge"]
    return v


class EdgeCachePages:
    """Valkey and page helpers shared with the other HaproxyCase modules (a
    mixin, not a TestCase: importing it does not run EdgeCacheTest again)."""

    def start_redis(self):
        proc = self.env.start_redis()
        return proc, proc.port

    def put_page(self, slug, value, shared=True):
        key = ROUTE_KEY % slug
        redis_cmd(self.rport, "SET", PREFIX + key, json.dumps(value))
        if shared:
            redis_cmd(self.rport, "HSET", PREFIX + "__sharedTags__", key, json.dumps(value["tags"]))
        return key

    def get(self, path, headers=None, method="GET"):
        st, hdrs, body, _ = raw_request(self.hap.port, method, path, headers or {})
        return st, hdrs, body

    def wait_hit(self, path):
        """Valkey connects asynchronously at start: the first requests may pass."""
        harness.wait_until(lambda: self.get(path)[1].get("x-cedra-cache") == "HIT", 10 * SF,
                           what="HIT on %s" % path)


class EdgeCacheTest(EdgeCachePages, HaproxyCase):
    def setUp(self):
        super().setUp()
        self.redis, self.rport = self.start_redis()
        extra = "\n".join([
            "valkey 127.0.0.1:%d" % self.rport,
            "valkey-timeout %dms" % (80 * SF),
            "pool stable key-prefix %s routes %s" % (PREFIX, os.path.join(FIX, "routes.table")),
            "revalidate-lock 5s",
            "session-cookie sid",
            "isr-max-body %d" % MAX_BODY,
        ])
        self.deliver_port = harness.free_port()
        extra += "\ndeliver 127.0.0.1:%d" % self.deliver_port
        self.start_stack(extra=extra, haproxy_env={"CEDRA_DELIVER_ADDR": "127.0.0.1:%d" % self.deliver_port})
        self.wait_spoa_check()
        self.chair = load_value("product-chair.json")
        self.html = self.chair["value"]["html"].encode()
        with open(os.path.join(FIX, "origin", "product-2.headers")) as f:
            self.next_headers = {}
            for line in f.read().splitlines()[1:]:
                k, _, v = line.partition(":")
                if k:
                    self.next_headers[k.strip().lower()] = v.strip()

    def test_fresh_page_is_served_by_the_edge_as_nextjs_serves_it(self):
        self.put_page("chair", aged(self.chair, 1))
        self.wait_hit("/fr/products/chair")
        st, hdrs, body = self.get("/fr/products/chair")
        self.assertEqual(st, 200)
        self.assertNotIn("x-origin", hdrs, "served by the origin, not the edge")
        self.assertEqual(body, self.html)
        self.assertEqual(hdrs["x-cedra-cache"], "HIT")
        self.assertEqual(hdrs["x-cedra-locale"], "fr")
        # What Next.js sent for the same entry (captured from the real app).
        for h in ("content-type", "cache-control", "vary", "etag", "x-nextjs-cache",
                  "x-nextjs-stale-time", "x-nextjs-prerender", "x-powered-by"):
            self.assertEqual(hdrs.get(h), self.next_headers[h], h)
        self.assertNotIn("x-next-cache-tags", hdrs)
        self.assertEqual(int(hdrs["content-length"]), len(self.html))

    def test_l1_serves_hot_pages_without_valkey_and_stays_exact(self):
        """Hot pages come from cedra-spoa's memory (no GET to Valkey), and a
        write to the key is seen at once through client-side tracking."""
        self.put_page("chair", aged(self.chair, 1))
        self.wait_hit("/fr/products/chair")

        def gets():
            info = redis_cmd(self.rport, "INFO", "commandstats").decode()
            m = re.search(r"cmdstat_get:calls=(\d+)", info)
            return int(m.group(1)) if m else 0

        # The L1 takes a page on a lookup made while tracking is up, which may
        # come after the first HITs (read from Valkey): keep asking until one
        # is answered from memory.
        def from_memory():
            g = gets()
            self.get("/fr/products/chair")
            return gets() == g
        harness.wait_until(from_memory, 5 * SF, what="the page in the L1")
        g0 = gets()
        for _ in range(20):
            st, hdrs, body = self.get("/fr/products/chair")
            self.assertEqual((st, hdrs["x-cedra-cache"], body), (200, "HIT", self.html))
        self.assertEqual(gets() - g0, 0, "hot page read from Valkey again")

        new = aged(self.chair, 0)
        new["value"]["html"] = self.chair["value"]["html"].replace("Chaise", "Chaise v2")
        self.put_page("chair", new)
        t0 = time.monotonic()
        seen_new = False
        while time.monotonic() - t0 < 2 * SF:
            st, hdrs, body = self.get("/fr/products/chair")
            if b"Chaise v2" in body:
                seen_new = True
                break
        self.assertTrue(seen_new, "the new page never showed")
        # Once the new page showed, the old one never comes back.
        for _ in range(20):
            st, hdrs, body = self.get("/fr/products/chair")
            self.assertIn(b"Chaise v2", body)
        print("\nL1 invalidation seen by a client after %.1f ms" % ((time.monotonic() - t0) * 1000))

    def test_bodies_with_control_bytes_are_served_exactly(self):
        """HAProxy's lf-string escapes control bytes of a variable (a newline
        becomes %0A): such pages must still reach the client byte for byte."""
        page = json.loads(json.dumps(self.chair))
        page["value"]["html"] = ("<!DOCTYPE html>\n<html><body>\r\n<pre>a\tb\nc</pre>"
                                 "<p>100% \u007f %0A</p></body></html>\n")
        self.put_page("chair", aged(self.chair, 1))
        self.wait_hit("/fr/products/chair")
        self.put_page("pre", aged(page, 1))
        harness.wait_until(lambda: self.get("/fr/products/pre")[1].get("x-cedra-cache") == "HIT",
                           10 * SF, what="HIT on the page with control bytes")
        st, hdrs, body = self.get("/fr/products/pre")
        self.assertEqual(st, 200)
        self.assertNotIn("x-origin", hdrs)
        self.assertEqual(body, page["value"]["html"].encode())
        self.assertEqual(hdrs["etag"], next_etag(page["value"]["html"]))

    def test_etag_algorithm_matches_nextjs(self):
        self.assertEqual(next_etag(self.chair["value"]["html"]), self.next_headers["etag"])

    def test_big_page_streams_from_the_local_delivery_path(self):
        """1.25 MiB of HTML (with non-ASCII), far over one SPOE frame and one
        HAProxy buffer: served from the edge, byte-identical, and a 304 too."""
        big = json.loads(json.dumps(self.chair))
        block = "<p>Chaise en chêne — fabriquée à Liège ✓ 🪑</p>\n"
        big["value"]["html"] = "<!DOCTYPE html><html><body>" + block * (1310720 // len(block.encode())) + "</body></html>"
        body = big["value"]["html"].encode()
        self.assertGreater(len(body), 1 << 20)
        self.put_page("chair", aged(self.chair, 1))
        self.wait_hit("/fr/products/chair")
        self.put_page("big", aged(big, 1))
        # Reading and parsing 1.3 MB may exceed the SPOE processing timeout on
        # a loaded machine; the request then passes to the origin (fail open),
        # which is right but not what this test looks at: wait for a HIT.
        harness.wait_until(lambda: self.get("/fr/products/big")[1].get("x-cedra-cache") == "HIT",
                           10 * SF, what="HIT on the big page")
        st, hdrs, got = self.get("/fr/products/big")
        self.assertEqual((st, hdrs.get("x-cedra-cache")), (200, "HIT"), hdrs)
        self.assertNotIn("x-origin", hdrs)
        self.assertEqual(len(got), len(body))
        self.assertEqual(got, body)
        self.assertEqual(hdrs["etag"], next_etag(big["value"]["html"]))
        self.assertEqual(hdrs["content-type"], "text/html; charset=utf-8")
        self.assertEqual(hdrs["cache-control"], self.next_headers["cache-control"])
        self.assertNotIn("x-cedra-token", hdrs)
        st, hdrs, got = self.get("/fr/products/big", {"If-None-Match": hdrs["etag"]})
        self.assertEqual((st, got), (304, b""))
        # A forged token from a client is dropped by HAProxy before anything sees it.
        st, hdrs, got = self.get("/fr/products/big", {"X-Cedra-Token": "0" * 32})
        self.assertEqual((st, len(got)), (200, len(body)))

    def test_gzip_answers_keep_their_delivery_connections(self):
        """A browser's Accept-Encoding: the page in gzip (Next compresses it),
        through the delivery server, over connections HAProxy keeps: the
        delivery server must not close one after each page."""
        import gzip
        import http.client
        from test_haproxy import stat_row
        self.put_page("chair", aged(self.chair, 1))
        self.wait_hit("/fr/products/chair")
        html = self.chair["value"]["html"].encode()
        c = http.client.HTTPConnection("127.0.0.1", self.hap.port, timeout=5 * SF)
        try:
            for _ in range(30):
                c.request("GET", "/fr/products/chair", headers={"Accept-Encoding": "gzip, deflate, br"})
                r = c.getresponse()
                body = r.read()
                self.assertEqual((r.status, r.getheader("x-cedra-cache"), r.getheader("content-encoding")),
                                 (200, "HIT", "gzip"))
                self.assertIsNone(r.getheader("x-origin"))
                self.assertEqual(gzip.decompress(body), html)
                self.assertLess(len(body), len(html) // 2)
                self.assertEqual(r.getheader("etag"), self.next_headers["etag"])
        finally:
            c.close()
        row = stat_row(self.hap.sock, "cedra_deliver", "deliver1")
        self.assertGreaterEqual(int(row["reuse"]), 25, row)
        self.assertLessEqual(int(row["connect"]), 5, row)

    def test_page_of_the_configured_maximum_size(self):
        """isr-max-body is 2 MiB in this stack: a page of exactly that size is
        served from the edge byte for byte; one byte more goes to the origin."""
        self.put_page("chair", aged(self.chair, 1))
        self.wait_hit("/fr/products/chair")
        for slug, size, edge in (("max", MAX_BODY, True), ("over", MAX_BODY + 1, False)):
            page = json.loads(json.dumps(self.chair))
            head, tail = "<!DOCTYPE html><html><body><pre>", "</pre></body></html>"
            page["value"]["html"] = head + "x" * (size - len(head) - len(tail)) + tail
            body = page["value"]["html"].encode()
            self.assertEqual(len(body), size)
            self.put_page(slug, aged(page, 1))
            path = "/fr/products/" + slug
            if edge:
                harness.wait_until(lambda: self.get(path)[1].get("x-cedra-cache") == "HIT",
                                   10 * SF, what="HIT on the %d-byte page" % size)
                st, hdrs, got = self.get(path)
                self.assertEqual((st, hdrs["x-cedra-cache"], len(got)), (200, "HIT", size))
                self.assertNotIn("x-origin", hdrs)
                self.assertEqual(got, body)
                self.assertEqual(hdrs["etag"], next_etag(page["value"]["html"]))
            else:
                # Reading and parsing 2 MiB may outlast the answer deadline on
                # a loaded machine (ERROR: failed open); either way, the origin.
                for _ in range(3):
                    st, hdrs, got = self.get(path)
                    self.assertEqual((st, hdrs.get("x-origin")), (200, "1"))
                    self.assertIn(hdrs["x-cedra-cache"], ("MISS", "ERROR"))

    def test_if_none_match_gets_304(self):
        self.put_page("chair", aged(self.chair, 1))
        self.wait_hit("/fr/products/chair")
        etag = self.next_headers["etag"]
        st, hdrs, body = self.get("/fr/products/chair", {"If-None-Match": etag})
        self.assertEqual((st, body), (304, b""))
        self.assertEqual(hdrs["etag"], etag)
        self.assertNotIn("x-origin", hdrs)
        # Next answers 200 when the request says no-cache, or to another tag.
        st, _, _ = self.get("/fr/products/chair", {"If-None-Match": etag, "Cache-Control": "no-cache"})
        self.assertEqual(st, 200)
        st, _, _ = self.get("/fr/products/chair", {"If-None-Match": '"other"'})
        self.assertEqual(st, 200)

    def test_404_page_comes_back_404_from_the_edge(self):
        nope = load_value("product-nope-404.json")
        self.put_page("nope", aged(nope, 1))
        self.put_page("chair", aged(self.chair, 1))
        self.wait_hit("/fr/products/chair")
        st, hdrs, body = self.get("/fr/products/nope")
        self.assertEqual(st, 404)
        self.assertEqual(hdrs["x-cedra-cache"], "HIT")
        self.assertEqual(body, nope["value"]["html"].encode())
        self.assertNotIn("x-origin", hdrs)

    def test_misses_go_to_the_origin(self):
        self.put_page("chair", aged(self.chair, 1))
        self.wait_hit("/fr/products/chair")
        # absent key
        st, hdrs, body = self.get("/fr/products/table")
        self.assertEqual((st, hdrs.get("x-origin"), hdrs["x-cedra-cache"]), (200, "1", "MISS"))
        # present but not in __sharedTags__: the handler treats it as a miss
        self.put_page("lamp", aged(self.chair, 1), shared=False)
        st, hdrs, _ = self.get("/fr/products/lamp")
        self.assertEqual((hdrs.get("x-origin"), hdrs["x-cedra-cache"]), ("1", "MISS"))
        # expired (past lifespan.expireAt): once the rewrite's invalidation
        # reached the L1 (sub-millisecond, measured in test_l1), a miss for good
        self.put_page("chair", aged(self.chair, 60))
        harness.wait_until(lambda: self.get("/fr/products/chair")[1].get("x-origin") == "1", 2 * SF,
                           what="the expired page passed to the origin")
        for _ in range(5):
            st, hdrs, _ = self.get("/fr/products/chair")
            self.assertEqual((hdrs.get("x-origin"), hdrs["x-cedra-cache"]), ("1", "MISS"))

    def test_revalidated_tag_is_never_served_again(self):
        self.put_page("chair", aged(self.chair, 1))
        self.wait_hit("/fr/products/chair")
        # revalidatePath records the _N_T_ tag with the time of the call
        redis_cmd(self.rport, "HSET", PREFIX + "__revalidated_tags__", "_N_T_/fr/products/chair",
                  str(int(time.time() * 1000) + 5))
        harness.wait_until(lambda: self.get("/fr/products/chair")[1].get("x-origin") == "1", 2 * SF,
                           what="the revalidated page passed to the origin")
        for _ in range(5):
            st, hdrs, _ = self.get("/fr/products/chair")
            self.assertEqual((hdrs.get("x-origin"), hdrs["x-cedra-cache"]), ("1", "MISS"))

    def test_stale_page_one_request_revalidates(self):
        self.put_page("chair", aged(self.chair, 1))
        self.wait_hit("/fr/products/chair")
        # Another page, never cached: rewriting the chair would race its own
        # invalidation (the L1 may still answer HIT for the invalidation's
        # sub-millisecond latency, which test_l1 measures).
        self.put_page("sofa", aged(self.chair, 12))  # past revalidate (10 s), before expire (15 s)
        results = [self.get("/fr/products/sofa") for _ in range(10)]
        to_origin = [r for r in results if r[1].get("x-origin") == "1"]
        from_edge = [r for r in results if "x-origin" not in r[1]]
        self.assertEqual(len(to_origin), 1, [r[1] for r in results])
        self.assertEqual(to_origin[0][1]["x-cedra-cache"], "STALE")
        for st, hdrs, body in from_edge:
            self.assertEqual((st, hdrs["x-cedra-cache"], hdrs["x-nextjs-cache"]), (200, "STALE", "STALE"))
            self.assertEqual(body, self.html)

    def test_bypass_cases_reach_the_origin(self):
        self.put_page("chair", aged(self.chair, 1))
        self.wait_hit("/fr/products/chair")
        cases = [
            ("GET", {"RSC": "1"}),
            ("GET", {"Next-Router-Prefetch": "1"}),
            ("GET", {"Next-Router-Segment-Prefetch": "/_tree"}),
            ("GET", {"Cookie": "sid=abc"}),
            ("GET", {"Cookie": "a=1; __prerender_bypass=x"}),
            ("GET", {"Authorization": "Bearer x"}),
            ("POST", {}),
        ]
        for method, headers in cases:
            with self.subTest(method=method, headers=headers):
                st, hdrs, _ = self.get("/fr/products/chair", headers, method=method)
                self.assertEqual((hdrs.get("x-origin"), hdrs["x-cedra-cache"]), ("1", "BYPASS"))

    def test_valkey_down_fails_open(self):
        self.put_page("chair", aged(self.chair, 1))
        self.wait_hit("/fr/products/chair")
        self.redis.kill9()
        for _ in range(5):
            st, hdrs, body = self.get("/fr/products/chair")
            self.assertEqual((st, hdrs.get("x-origin")), (200, "1"))
            self.assertIn(hdrs["x-cedra-cache"], ("ERROR",))

    def test_valkey_frozen_fails_open_in_time(self):
        """Every request is answered in time while Valkey is frozen: from the
        in-process cache while it is known exact (a frozen Valkey takes no
        writes either), from the origin once tracking declares it lost."""
        self.put_page("chair", aged(self.chair, 1))
        self.wait_hit("/fr/products/chair")
        self.redis.signal(signal.SIGSTOP)
        try:
            seen = set()
            deadline = time.monotonic() + 5 * SF
            while time.monotonic() < deadline:
                t0 = time.monotonic()
                st, hdrs, body = self.get("/fr/products/chair")
                self.assertEqual(st, 200)
                self.assertLess(time.monotonic() - t0, 2.0 * SF)
                if hdrs.get("x-origin") == "1":
                    self.assertIn(hdrs["x-cedra-cache"], ("ERROR", "MISS"))
                    seen.add("origin")
                    if len(seen) == 1 or "edge" in seen:
                        break
                else:
                    self.assertEqual((hdrs["x-cedra-cache"], body), ("HIT", self.html))
                    seen.add("edge")
            self.assertIn("origin", seen, "never fell back to the origin while Valkey was frozen")
        finally:
            self.redis.signal(signal.SIGCONT)
        self.wait_hit("/fr/products/chair")

if __name__ == "__main__":
    unittest.main()
