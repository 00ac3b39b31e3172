"""cedra-spoa "haproxy-cache on": an edge HIT answered with its entry id, and
the page served by HAProxy's own cache under that id (filled once per version
and coding by cedra-spoa's delivery server), through the real HAProxy 2.6
with the shipped configuration and a real redis-server holding what the real
Next.js 16.4.6 + cache handler wrote.

What a user sees must not change: the same status, headers and bytes as the
edge's answer from the ACK; a new version of the page is a new key, so the
old one is never served again once cedra-spoa knows of the change; a user
pinned to one build never gets another build's page."""

import gzip
import json
import os
import re
import signal

import harness
from test_edge_cache import EdgeCachePages, FIX, PREFIX, aged, load_value, redis_cmd
from test_haproxy import HaproxyCase, SF
from test_lane import lived
from test_locale_routing import raw_request

PATH = "/fr/products/chair"
# Kept off the "cache" answer, and otherwise changing nothing in Next's 200:
# an If-None-Match that matches no ETag. The reference answer comes this way.
OFF = {"If-None-Match": '"no-such-etag"'}
HEADERS = ("content-type", "vary", "x-nextjs-cache", "x-nextjs-prerender", "x-nextjs-stale-time",
           "x-powered-by", "cache-control", "etag", "content-length", "content-encoding",
           "x-cedra-cache", "x-cedra-locale")


class HaproxyCacheTest(EdgeCachePages, HaproxyCase):
    def setUp(self):
        super().setUp()
        self.redis, self.rport = self.start_redis()
        self.sock = self.env.path("spoa.sock")
        self.deliver_port = harness.free_port()
        extra = "\n".join([
            "valkey 127.0.0.1:%d" % self.rport,
            "valkey-timeout %dms" % (80 * SF),
            "pool stable key-prefix %s routes %s build b1" % (PREFIX, os.path.join(FIX, "routes.table")),
            "revalidate-lock 5s",
            "session-cookie sid",
            "deliver 127.0.0.1:%d" % self.deliver_port,
            "stats-socket %s" % self.sock,
            "haproxy-cache on",
        ])
        self.extra = extra
        self.start_stack(extra=extra, haproxy_env={"CEDRA_DELIVER_ADDR": "127.0.0.1:%d" % self.deliver_port})
        self.wait_spoa_check()
        self.chair = load_value("product-chair.json")
        self.html = self.chair["value"]["html"].encode()

    # ---- helpers
    def info(self):
        text = harness.unix_command(self.sock, "show info", errors="strict")
        return dict(re.findall(r"^(\w+): (.*)$", text, re.M))

    def metric(self, name, labels=""):
        text = harness.unix_command(self.sock, "show metrics", errors="strict")
        m = re.search(r"^%s%s (\S+)$" % (re.escape(name), re.escape(labels)), text, re.M)
        return int(float(m.group(1))) if m else 0

    def cached_answers(self):
        return self.metric("cedra_spoa_requests_total", '{decision="cache",cache="HIT"}')

    def fills(self):
        i = self.info()
        return int(i["Haproxy_cache_fills"]) + int(i["Haproxy_cache_grace_fills"])

    def hot(self, slug="chair", value=None):
        key = self.put_page(slug, value or lived(self.chair, 1))
        path = "/fr/products/%s" % slug
        self.wait_hit(path)
        return key, path

    def assert_same(self, got, ref, what):
        """Date aside: HAProxy's cache would give the fill's, frozen, so the
        answer has none, as an edge HIT from the ACK (the delivery server's
        answers, gzip ones included, have their own)."""
        st, hdrs, body = got
        st0, h0, b0 = ref
        h0 = {k: v for k, v in h0.items() if k != "date"}
        self.assertNotIn("date", hdrs, what)
        self.assertEqual((st, body), (st0, b0), what)
        for k in HEADERS:
            self.assertEqual(hdrs.get(k), h0.get(k), "%s: %s" % (what, k))
        self.assertEqual(sorted(k for k in hdrs if k != "connection"),
                         sorted(k for k in h0 if k != "connection"), what)

    # ---- tests
    def test_hit_comes_from_haproxys_cache_exactly(self):
        _, path = self.hot()
        ref = self.get(path, OFF)
        self.assertEqual((ref[0], ref[1]["x-cedra-cache"], ref[2]), (200, "HIT", self.html))
        self.assertNotIn("age", ref[1])
        self.assertNotIn("date", ref[1])
        a0 = self.cached_answers()
        for i in range(20):
            self.assert_same(self.get(path), ref, "request %d" % i)
        # Every one of them was a "cache" answer, and HAProxy's cache was
        # filled once (by the first HIT of hot()): the body travelled once.
        self.assertEqual(self.cached_answers(), a0 + 20)
        self.assertEqual(self.fills(), 1)
        self.assertEqual(int(self.info()["Haproxy_cache_unknown_fills"]), 0)

    def test_gzip_clients_get_their_own_copy(self):
        _, path = self.hot()
        ae = {"Accept-Encoding": "gzip, deflate, br, zstd"}
        ref = self.get(path, dict(OFF, **ae))
        self.assertEqual((ref[0], ref[1].get("content-encoding")), (200, "gzip"))
        self.assertEqual(gzip.decompress(ref[2]), self.html)
        a0 = self.cached_answers()
        for i in range(5):
            self.assert_same(self.get(path, ae), ref, "gzip %d" % i)
        # And the identity copy is apart (filled by hot()).
        st, hdrs, body = self.get(path)
        self.assertEqual((st, hdrs.get("content-encoding"), body), (200, None, self.html))
        self.assertEqual(self.cached_answers(), a0 + 6)
        self.assertEqual(self.fills(), 2)

    def test_what_is_not_a_cache_answer(self):
        _, path = self.hot()
        a0 = self.cached_answers()
        # HEAD, a conditional request (304), a deflate-only client (origin).
        st, hdrs, body = self.get(path, method="HEAD")
        self.assertEqual((st, hdrs["x-cedra-cache"], body), (200, "HIT", b""))
        etag = self.get(path, OFF)[1]["etag"]
        st, hdrs, body = self.get(path, {"If-None-Match": etag})
        self.assertEqual((st, body), (304, b""))
        self.assertEqual(self.cached_answers(), a0)

    def test_a_new_version_is_a_new_key(self):
        key, path = self.hot()
        self.assertEqual(self.get(path)[2], self.html)
        f0 = self.fills()
        new = lived(self.chair, 0)
        new["value"]["html"] = self.chair["value"]["html"].replace("Chaise", "Chaise v2")
        new_html = new["value"]["html"].encode()
        self.assertNotEqual(new_html, self.html)
        redis_cmd(self.rport, "SET", PREFIX + key, json.dumps(new))
        # Once cedra-spoa dropped the old entry (the invalidation: an event,
        # seen on its socket), the old page never comes back.
        harness.wait_until(lambda: PREFIX + key not in harness.unix_command(
            self.sock, "show cache %s" % PREFIX, errors="strict"), 5 * SF, interval=0.005,
            what="the old version out of cedra-spoa's cache")
        for _ in range(30):
            st, hdrs, body = self.get(path)
            self.assertEqual(st, 200)
            self.assertNotEqual(body, self.html, "the old version was served")
            self.assertIn(body, (new_html,), "neither version")
        self.assertEqual(self.fills(), f0 + 1)
        # DEL: not in Valkey any more, the origin answers.
        redis_cmd(self.rport, "DEL", PREFIX + key)
        harness.wait_until(lambda: self.get(path)[1].get("x-cedra-cache") == "MISS", 5 * SF,
                           interval=0.005, what="MISS after DEL")
        st, hdrs, body = self.get(path)
        self.assertEqual((hdrs.get("x-origin"), hdrs["x-cedra-cache"]), ("1", "MISS"))

    def test_each_build_its_own_page(self):
        """The key is the entry's id, and a build's pages are its own entries:
        a user pinned to the canary gets the canary's page, a stable user the
        stable one, both from HAProxy's cache."""
        _, path = self.hot()
        canary = lived(self.chair, 1)
        canary["value"]["html"] = self.chair["value"]["html"].replace("Chaise", "Chaise canary")
        canary_html = canary["value"]["html"].encode()
        ckey = "c:" + path
        redis_cmd(self.rport, "SET", ckey, json.dumps(canary))
        redis_cmd(self.rport, "HSET", "c:__sharedTags__", path, json.dumps(canary["tags"]))
        for cmd in ("set pool canary key-prefix c: routes pathname build b2",
                    "set pool canary weight 50"):
            out = harness.unix_command(self.sock, cmd, errors="strict")
            self.assertNotIn("error", out, cmd)
        harness.wait_until(lambda: self.get(path, {"Cookie": "cedra_pool=canary.b2"})[2] == canary_html,
                           10 * SF, what="the canary's page")
        stable_pin = "cedra_pool=stable.b1"
        a0 = self.cached_answers()
        for _ in range(10):
            self.assertEqual(self.get(path, {"Cookie": "cedra_pool=canary.b2"})[2], canary_html)
            st, hdrs, body = self.get(path, {"Cookie": stable_pin})
            self.assertEqual((st, hdrs["x-cedra-cache"]), (200, "HIT"))
            self.assertEqual(body, self.html)
        self.assertEqual(self.cached_answers(), a0 + 20)

    def test_a_reload_of_the_settings_is_a_new_key(self):
        """A configuration change may change the headers (isr-expire: the
        Cache-Control): HAProxy's copy made under the old one is not used."""
        _, path = self.hot()
        before = self.get(path)[1]["cache-control"]
        f0 = self.fills()
        with open(self.agent.config) as f:
            text = f.read()
        with open(self.agent.config, "w") as f:
            f.write(text + "\nisr-expire 7200\n")
        self.agent.signal(signal.SIGHUP)
        harness.wait_until(lambda: self.get(path)[1]["cache-control"] != before, 10 * SF,
                           what="the new Cache-Control")
        ref = self.get(path, OFF)
        self.assert_same(self.get(path), ref, "after the reload")
        self.assertGreaterEqual(self.fills(), f0 + 1)

    def test_a_restarted_cedra_spoa_never_reuses_a_key(self):
        """HAProxy's cache outlives cedra-spoa: a new process must not name
        another version of a page by a key HAProxy still holds a copy under
        (ids counted from 1 at every start would: the first page after each
        start would be id 1, with the old process's copy behind it)."""
        key, path = self.hot()
        self.assertEqual(self.get(path)[2], self.html)
        self.assertEqual(self.agent.stop(), 0)
        new = lived(self.chair, 0)
        new["value"]["html"] = self.chair["value"]["html"].replace("Chaise", "Chaise v2")
        new_html = new["value"]["html"].encode()
        redis_cmd(self.rport, "SET", PREFIX + key, json.dumps(new))
        self.agent = self.env.start_spoa(port=self.agent.port, name="cedra-spoa-2", extra=self.extra)
        self.wait_spoa_check()
        harness.wait_until(lambda: self.get(path)[1].get("x-cedra-cache") == "HIT", 10 * SF,
                           what="HIT from the new process")
        for _ in range(10):
            st, hdrs, body = self.get(path)
            self.assertEqual((st, hdrs["x-cedra-cache"]), (200, "HIT"))
            self.assertEqual(body, new_html, "a copy made for the old process was served")

    def test_fill_paths_are_checked(self):
        """The delivery server's fill endpoint takes only what cedra-spoa
        names: malformed paths get a 404, an id it never offered a 503, and
        neither harms the next answers."""
        _, path = self.hot()
        bad = ["/.cedra/page/", "/.cedra/page/xyz", "/.cedra/page/0123456789abcdef",
               "/.cedra/page/0123456789abcdef-", "/.cedra/page/0123456789abcdef-1.gzip",
               "/.cedra/page/0123456789abcdef-1.seg", "/.cedra/page/0123456789abcdef-1.seg4",
               "/.cedra/page/0123456789abcdef-1.seg2f.gz.gz", "/.cedra/page/0123456789abcdef-1.rsc.x",
               "/.cedra/page/0123456789ABCDEF-1", "/.cedra/page/0123456789abcdef-1/../x",
               "/.cedra/page/0123456789abcdef-11111111111111111"]
        for target in bad:
            st, _, body, _ = raw_request(self.deliver_port, "GET", target, {})
            self.assertEqual(st, 404, "%s: %r" % (target, body))
        u0 = int(self.info()["Haproxy_cache_unknown_fills"])
        for target in ("/.cedra/page/0000000000000001-1", "/.cedra/page/0000000000000001-1.rsc.gz",
                       "/.cedra/page/0000000000000001-1.seg2f5f74726565"):
            st, _, body, _ = raw_request(self.deliver_port, "GET", target, {})
            self.assertEqual(st, 503, "%s: %r" % (target, body))
        self.assertEqual(int(self.info()["Haproxy_cache_unknown_fills"]), u0 + 3)
        st, hdrs, body = self.get(path)
        self.assertEqual((st, hdrs["x-cedra-cache"], body), (200, "HIT", self.html))
