"""The fast lane (docs/fast-lane.md): hot pages HAProxy answers without an SPOE
exchange, from a map cedra-spoa keeps over the Runtime API and from HAProxy's
own cache, through the real HAProxy 2.6 with the shipped configuration and a
real redis-server holding what the real Next.js 16.4.6 + cache handler wrote.

What a user sees must not change: the lane answers exactly what the SPOE
path answers, only for requests whose answer depends on nothing but the
path, and it stops at once when the page changes in Valkey, when the page
turns stale, when the pools change, when HAProxy loses its map, and within
one health-check interval when cedra-spoa dies."""

import gzip
import json
import os
import re
import socket
import time

import harness
from test_edge_cache import EdgeCachePages, FIX, PREFIX, aged, load_value, redis_cmd  # noqa: F401
from test_haproxy import HaproxyCase, SF, stat_row
from test_locale_routing import raw_request

HAPROXY_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                           "haproxy")
LANE_MAP = os.path.join(HAPROXY_DIR, "cedra-lane.map")
LANE_COOKIES = os.path.join(HAPROXY_DIR, "cedra-lane-cookies.acl")
PATH = "/fr/products/chair"


def lived(value, age_s, revalidate_s=600, expire_s=3600):
    """aged(), with the fixture's revalidate (10 s) and expireAge (15 s)
    raised: the page would turn stale or expire in the middle of a test under
    the sanitizers."""
    v = aged(value, age_s)
    ls = v["lifespan"]
    ls["revalidate"] = ls["staleAge"] = revalidate_s
    ls["expireAge"] = expire_s
    ls["staleAt"] = ls["lastModifiedAt"] + revalidate_s
    ls["expireAt"] = ls["lastModifiedAt"] + expire_s
    return v


class LaneTest(HaproxyCase):
    start_redis = EdgeCachePages.start_redis
    put_page = EdgeCachePages.put_page
    # Tests that run HAProxy without CEDRA_LANE=on (the shipped default).
    HAPROXY_LANE_OFF = ("test_haproxy_without_cedra_lane_keeps_it_closed_and_quiet",)

    def setUp(self):
        super().setUp()
        self.redis, self.rport = self.start_redis()
        self.sock = self.env.path("spoa.sock")
        self.deliver_port = harness.free_port()
        self.hap_sock = self.env.path("haproxy.sock")
        extra = "\n".join([
            "valkey 127.0.0.1:%d" % self.rport,
            "valkey-timeout %dms" % (80 * SF),
            "pool stable key-prefix %s routes %s" % (PREFIX, os.path.join(FIX, "routes.table")),
            "revalidate-lock 5s",
            "session-cookie sid",
            "deliver 127.0.0.1:%d" % self.deliver_port,
            "stats-socket %s" % self.sock,
            "lane-socket %s" % self.hap_sock,
            "lane-map %s" % LANE_MAP,
            "lane-cookies %s" % LANE_COOKIES,
            "lane-grace 2s",
        ])
        self.extra = extra
        self.start_stack(extra=extra, haproxy_env={
            "CEDRA_LANE": "off" if self._testMethodName in self.HAPROXY_LANE_OFF else "on",
            "CEDRA_DELIVER_ADDR": "127.0.0.1:%d" % self.deliver_port,
            "CEDRA_LANE_MAP": LANE_MAP,
            "CEDRA_LANE_COOKIES": LANE_COOKIES,
            # HAProxy's default check timeout is the interval: a slow answer
            # (sanitizers) must not close the lane in the middle of a test.
            "CEDRA_LANE_CHECK_INTER": "%dms" % (500 * SF),
        })
        self.assertEqual(self.hap.sock, self.hap_sock)
        self.wait_spoa_check()
        self.chair = load_value("product-chair.json")
        self.html = self.chair["value"]["html"].encode()

    # ---- helpers
    def get(self, path=PATH, headers=None, method="GET"):
        st, hdrs, body, _ = raw_request(self.hap.port, method, path, headers or {})
        return st, hdrs, body

    def info(self):
        text = harness.unix_command(self.sock, "show info", errors="strict")
        return dict(re.findall(r"^(\w+): (.*)$", text, re.M))

    def notifies(self):
        text = harness.unix_command(self.sock, "show metrics", errors="strict")
        return int(float(re.search(r"^cedra_spoa_spop_notifies_total (\S+)$", text, re.M).group(1)))

    def lane_open(self):
        harness.wait_until(lambda: self.info().get("Lane_health") == "up", 10 * SF,
                           what="the lane set up by cedra-spoa")

    def on_lane(self, path=PATH, headers=None):
        """One request: (answer, whether it skipped SPOE)."""
        n0 = self.notifies()
        st, hdrs, body = self.get(path, headers)
        return (st, hdrs, body), self.notifies() == n0

    def hot(self, slug="chair", value=None):
        """The page is on the lane: answered with no NOTIFY."""
        key = self.put_page(slug, value or lived(self.chair, 1))
        path = "/fr/products/%s" % slug
        self.lane_open()

        def laned():
            (st, hdrs, body), skipped = self.on_lane(path)
            return skipped and st == 200 and hdrs.get("x-cedra-cache") == "HIT"
        harness.wait_until(laned, 10 * SF, interval=0.02, what="%s on the lane" % path)
        return key, path

    def assert_off_lane(self, path, what, old=None):
        """The lane stops serving the old page at once, and never again."""
        old = old if old is not None else self.html
        t0 = time.monotonic()

        def changed():
            (st, hdrs, body), skipped = self.on_lane(path)
            return not (skipped and body == old)
        harness.wait_until(changed, 2 * SF, interval=0.002, what="%s seen at the edge" % what)
        ms = (time.monotonic() - t0) * 1000
        for _ in range(30):
            (st, hdrs, body), skipped = self.on_lane(path)
            self.assertFalse(skipped and body == old, "%s: the lane served the old page again" % what)
        print("\n%s: the lane stopped serving the old page after %.1f ms" % (what, ms))

    # ---- tests
    def test_hot_page_skips_spoe_and_is_answered_exactly(self):
        _, path = self.hot()
        # The SPOE path's answer (a Cache-Control header keeps the request off
        # the lane and changes nothing else): the lane must give the same.
        n0 = self.notifies()
        st0, h0, b0 = self.get(headers={"Cache-Control": "max-age=0"})
        self.assertEqual(self.notifies(), n0 + 1)
        self.assertEqual((st0, h0["x-cedra-cache"], b0), (200, "HIT", self.html))
        n0 = self.notifies()
        for _ in range(20):
            st, hdrs, body = self.get(path)
            self.assertEqual((st, hdrs.get("x-cedra-cache"), hdrs.get("x-cedra-locale")), (200, "HIT", "fr"))
            self.assertEqual(body, self.html)
            self.assertNotIn("age", hdrs)
            for k in ("content-type", "vary", "x-nextjs-cache", "x-nextjs-prerender",
                      "x-nextjs-stale-time", "x-powered-by", "cache-control", "etag", "content-length"):
                self.assertEqual(hdrs.get(k), h0.get(k), k)
            self.assertEqual(sorted(k for k in hdrs if k != "connection"),
                             sorted(k for k in h0 if k != "connection"))
        self.assertEqual(self.notifies(), n0, "lane requests reached cedra-spoa")
        i = self.info()
        self.assertGreaterEqual(int(i["Lane_published"]), 1)
        self.assertGreaterEqual(int(i["Lane_fills"]), 1)
        self.assertEqual(int(i["Lane_unknown_fills"]), 0)
        # HAProxy checks the lane (CEDRA_LANE=on). Not necessarily yet: a
        # server starts UP and its first check comes within one interval
        # (5 s under TSan), while the sentinel alone may already open the lane.
        harness.wait_until(lambda: int(self.info()["Lane_checks"]) > 0, 20 * SF,
                           what="a health check of the lane by HAProxy")

    def test_everything_else_goes_through_spoe(self):
        _, path = self.hot()
        cases = [
            ("query", path + "?a=1", {}),
            ("empty query", path + "?", {}),
            ("HEAD", path, None),
            ("rsc", path, {"RSC": "1"}),
            ("prefetch", path, {"Next-Router-Prefetch": "1"}),
            ("state tree", path, {"Next-Router-State-Tree": "%5B%22%22%5D"}),
            ("segment", path, {"Next-Router-Segment-Prefetch": "/_tree"}),
            ("next-url", path, {"Next-Url": "/fr"}),
            ("now route", path, {"X-Now-Route-Matches": "1"}),
            ("if-none-match", path, {"If-None-Match": '"x"'}),
            ("if-modified-since", path, {"If-Modified-Since": "Tue, 24 Nov 2026 00:00:00 GMT"}),
            ("authorization", path, {"Authorization": "Bearer x"}),
            ("cache-control", path, {"Cache-Control": "no-cache"}),
            ("session cookie", path, {"Cookie": "a=1; sid=2"}),
            ("session cookie alone", path, {"Cookie": "sid=2"}),
            ("preview", path, {"Cookie": "__prerender_bypass=1"}),
            ("preview data", path, {"Cookie": "__next_preview_data=1"}),
            ("pool pin", path, {"Cookie": "cedra_pool=canary.b2"}),
            ("accept-encoding, gzip refused", path, {"Accept-Encoding": "gzip;q=0"}),
            ("accept-encoding, another value", path, {"Accept-Encoding": "gzip, br"}),
            ("accept-encoding, empty", path, {"Accept-Encoding": ""}),
        ]
        for what, target, headers in cases:
            with self.subTest(what):
                n0 = self.notifies()
                if headers is None:
                    st, hdrs, _ = self.get(target, method="HEAD")
                else:
                    st, hdrs, _ = self.get(target, headers)
                self.assertEqual(self.notifies(), n0 + 1, "%s skipped SPOE" % what)
        # Two Cookie lines: only the last reaches cedra-spoa, so never the lane.
        n0 = self.notifies()
        raw = ("GET %s HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\nCookie: a=1\r\n"
               "Cookie: b=2\r\n\r\n" % path).encode()
        with socket.create_connection(("127.0.0.1", self.hap.port), timeout=5 * SF) as s:
            harness.send_and_read_to_eof(s, raw)
        self.assertEqual(self.notifies(), n0 + 1, "two Cookie lines skipped SPOE")
        # A harmless cookie stays on the lane.
        (st, hdrs, body), skipped = self.on_lane(path, {"Cookie": "consent=yes; theme=dark"})
        self.assertTrue(skipped)
        self.assertEqual((st, body), (200, self.html))

    def test_gzip_clients_get_their_own_copy(self):
        _, path = self.hot()
        for ae in ("gzip, deflate, br, zstd", "deflate, gzip"):
            # What the SPOE path answers the same client (off the lane by
            # its Cache-Control, which changes nothing else).
            st0, h0, b0 = self.get(path, {"Accept-Encoding": ae, "Cache-Control": "max-age=0"})
            self.assertEqual((st0, h0.get("content-encoding"), gzip.decompress(b0)),
                             (200, "gzip", self.html), ae)
            for _ in range(5):
                (st, hdrs, body), skipped = self.on_lane(path, {"Accept-Encoding": ae})
                self.assertTrue(skipped, "%s: not on the lane" % ae)
                self.assertEqual((st, hdrs.get("content-encoding"), hdrs.get("x-cedra-cache")),
                                 (200, "gzip", "HIT"), ae)
                self.assertEqual(gzip.decompress(body), self.html, ae)
                self.assertEqual(int(hdrs["content-length"]), len(body), ae)
                for k in ("content-type", "vary", "x-nextjs-cache", "x-nextjs-prerender",
                          "x-nextjs-stale-time", "x-powered-by", "cache-control", "etag"):
                    self.assertEqual(hdrs.get(k), h0.get(k), "%s: %s" % (ae, k))
        # The copies are apart: a client without Accept-Encoding still gets
        # the page as it is, from the lane.
        (st, hdrs, body), skipped = self.on_lane(path)
        self.assertTrue(skipped)
        self.assertEqual((st, hdrs.get("content-encoding"), body), (200, None, self.html))

    def test_gzip_clients_alone_put_a_page_on_the_lane(self):
        """Browsers all send Accept-Encoding: a page only they ask for
        (answered in gzip through the delivery server) goes on the lane too."""
        self.put_page("sofa", lived(self.chair, 1))
        self.lane_open()
        ae = {"Accept-Encoding": "gzip, deflate, br, zstd"}

        def laned():
            (st, hdrs, body), skipped = self.on_lane("/fr/products/sofa", ae)
            return skipped and st == 200 and hdrs.get("content-encoding") == "gzip"
        harness.wait_until(laned, 10 * SF, interval=0.02, what="the gzip-only page on the lane")
        (st, hdrs, body), skipped = self.on_lane("/fr/products/sofa", ae)
        self.assertTrue(skipped)
        self.assertEqual(gzip.decompress(body), self.html)

    def test_valkey_changes_take_the_page_off_the_lane(self):
        key, path = self.hot()
        self.assertEqual(redis_cmd(self.rport, "DEL", PREFIX + key), 1)
        self.assert_off_lane(path, "DEL")
        st, hdrs, _ = self.get(path)
        self.assertEqual((hdrs.get("x-origin"), hdrs["x-cedra-cache"]), ("1", "MISS"))

        # A new version comes back on the lane, and the old one never does.
        new = lived(self.chair, 0)
        new["value"]["html"] = self.chair["value"]["html"].replace("Chaise", "Chaise v2")
        key, path = self.hot(value=new)
        st, hdrs, body = self.get(path)
        self.assertIn(b"Chaise v2", body)
        # revalidatePath: the _N_T_ tag time moves past lastModified.
        tag = next(t for t in self.chair["tags"] if t.startswith("_N_T_"))
        redis_cmd(self.rport, "HSET", PREFIX + "__revalidated_tags__", tag, str(int(time.time() * 1000) + 1000))
        self.assert_off_lane(path, "revalidated tag", old=new["value"]["html"].encode())

    def test_flush_and_killed_tracking_take_everything_off(self):
        _, path = self.hot()
        redis_cmd(self.rport, "FLUSHALL")
        self.assert_off_lane(path, "FLUSHALL")
        # Invalidations stop with the subscriber: the lane must not keep a
        # page that changes right after (the L1 test does the same for the L1).
        key, path = self.hot()
        new = lived(self.chair, 0)
        new["value"]["html"] = self.chair["value"]["html"].replace("Chaise", "Chaise v3")
        redis_cmd(self.rport, "CLIENT", "KILL", "TYPE", "pubsub")
        self.put_page("chair", new)
        self.assert_off_lane(path, "CLIENT KILL of the invalidation subscriber, then a write")
        # Tracking comes back, and with it the new page on the lane.
        harness.wait_until(lambda: self.on_lane(path)[1] and b"Chaise v3" in self.get(path)[2], 10 * SF,
                           interval=0.05, what="the new page on the lane")

    def test_stale_page_leaves_the_lane_on_time(self):
        # Long enough to get on the lane first, under sanitizers too (a whole
        # lane test, setUp included, takes about 5 s under TSan).
        rv = 3 + int(SF)
        v = lived(self.chair, 0, revalidate_s=rv)
        key, path = self.hot(value=v)
        stale_ms = v["lastModified"] + rv * 1000
        seen_off = False
        t_end = time.time() + rv + 5 * SF
        while time.time() < t_end:
            t = time.time() * 1000
            (st, hdrs, body), skipped = self.on_lane(path)
            if skipped:
                self.assertLess(t, stale_ms, "the lane served the page after Next would call it stale")
            else:
                seen_off = True
                if hdrs.get("x-cedra-cache") == "STALE":
                    break
            time.sleep(0.05)
        self.assertTrue(seen_off, "the page never left the lane")

    def test_pool_change_resets_the_lane(self):
        _, path = self.hot()
        out = harness.unix_command(self.sock, "set pool canary key-prefix canary: routes pathname build b2",
                                   errors="strict")
        self.assertNotIn("rror", out)
        # The clear reaches HAProxy one Runtime API command later (like the
        # workers, which take the new pools at their next loop turn).
        t0 = time.monotonic()
        harness.wait_until(lambda: not self.on_lane(path)[1], 2 * SF, interval=0.002,
                           what="the lane reset after the pool change")
        print("\nthe lane was reset %.1f ms after set pool returned" % ((time.monotonic() - t0) * 1000))
        for _ in range(20):
            (st, hdrs, body), skipped = self.on_lane(path)
            self.assertFalse(skipped, "a page was published while a canary is live")

    def test_a_pin_left_by_a_canary_is_removed_and_its_user_back_on_the_lane(self):
        for cmd in ("set pool canary key-prefix canary: routes pathname build b2",
                    "set pool canary off"):
            self.assertNotIn("rror", harness.unix_command(self.sock, cmd, errors="strict"))
        _, path = self.hot()
        # The lane's guard sends any cedra_pool cookie to SPOE, which now
        # removes it: it pins nothing once the canary is gone.
        (st, hdrs, body), skipped = self.on_lane(path, {"Cookie": "cedra_pool=canary.b2"})
        self.assertFalse(skipped)
        self.assertEqual((st, hdrs.get("x-cedra-cache"), body), (200, "HIT", self.html))
        self.assertEqual(hdrs.get("set-cookie"),
                         "cedra_pool=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax")
        # The browser drops it: its next request is on the lane.
        (st, hdrs, body), skipped = self.on_lane(path)
        self.assertTrue(skipped)
        self.assertEqual((st, hdrs.get("x-cedra-cache"), body), (200, "HIT", self.html))
        self.assertNotIn("set-cookie", hdrs)

    def test_haproxy_losing_its_map_is_noticed(self):
        _, path = self.hot()
        out = harness.unix_command(self.hap_sock, "clear map %s" % LANE_MAP, errors="strict")
        self.assertEqual(out.strip(), "")
        (st, hdrs, body), skipped = self.on_lane(path)
        self.assertFalse(skipped, "the lane stayed open without its sentinel")
        setups = int(self.info()["Lane_setups"])
        harness.wait_until(lambda: int(self.info()["Lane_setups"]) > setups, 5 * SF,
                           what="cedra-spoa set the lane up again")
        self.hot()

    def test_agent_death_closes_the_lane(self):
        _, path = self.hot()
        self.agent.kill9()
        t0 = time.monotonic()
        harness.wait_until(lambda: self.get(path)[1].get("x-cedra-cache") != "HIT", 3 * SF,
                           interval=0.01, what="the lane closed")
        print("\nthe lane closed %.0f ms after cedra-spoa died" % ((time.monotonic() - t0) * 1000))
        st, hdrs, _ = self.get(path)
        self.assertEqual((st, hdrs.get("x-origin")), (200, "1"))

    def test_a_restarted_agent_never_names_an_old_copy(self):
        """HAProxy's cache outlives cedra-spoa: the new process publishes the
        page again, under an id the old one never used (ids counted from 1 at
        every start would give the same key, and the old copy behind it)."""
        key, path = self.hot()
        self.assertEqual(self.agent.stop(), 0)
        new = lived(self.chair, 0)
        new["value"]["html"] = self.chair["value"]["html"].replace("Chaise", "Chaise v2")
        new_html = new["value"]["html"].encode()
        redis_cmd(self.rport, "SET", PREFIX + key, json.dumps(new))
        self.agent = self.env.start_spoa(port=self.agent.port, name="cedra-spoa-2", extra=self.extra)
        self.wait_spoa_check()
        self.hot(value=new)
        for _ in range(10):
            (st, hdrs, body), skipped = self.on_lane(path)
            self.assertTrue(skipped)
            self.assertEqual(body, new_html, "the lane served a copy made for the old process")

    def test_only_the_haproxy_process_it_was_set_up_in_may_use_it(self):
        """After a reload the old HAProxy process keeps serving its clients
        with a map cedra-spoa no longer keeps: its health check (which sends
        its own pid) must fail."""
        self.lane_open()

        def health(pid):
            headers = {} if pid is None else {"x-cedra-haproxy-pid": str(pid)}
            return raw_request(self.deliver_port, "GET", "/.cedra/lane/health", headers)[0]
        self.assertEqual(health(self.hap.pid), 200)
        self.assertEqual(health(self.hap.pid + 1), 503)
        self.assertEqual(health(None), 503)
        self.assertEqual(health("x"), 503)

    def test_haproxy_without_cedra_lane_keeps_it_closed_and_quiet(self):
        """cedra-spoa configured for the lane, HAProxy started without
        CEDRA_LANE=on: lane1 stays in maintenance and is never checked, so
        every request goes through SPOE; HAProxy says nothing about the lane
        (no DOWN, no "no server available"), and cedra-spoa says, once, why
        the lane it set up stays closed."""
        harness.wait_until(lambda: self.info().get("Lane") == "up", 10 * SF, what="the lane set up")
        row = stat_row(self.hap.sock, "cedra_lane", "lane1")
        self.assertEqual(row["status"], "MAINT", row)
        self.put_page("chair", lived(self.chair, 1))
        for i in range(10):
            (st, hdrs, body), skipped = self.on_lane()
            self.assertFalse(skipped, "request %d skipped SPOE" % i)
            self.assertEqual(st, 200)
            if i:
                self.assertEqual((hdrs.get("x-cedra-cache"), body), ("HIT", self.html))
        harness.wait_until(lambda: "event=lane_unchecked" in self.agent.stderr_text(), 20 * SF,
                           interval=0.2, what="cedra-spoa's lane_unchecked warning")
        err = self.agent.stderr_text()
        self.assertEqual(err.count("event=lane_unchecked"), 1, err)
        self.assertIn("CEDRA_LANE=on", err)
        self.assertEqual(self.info()["Lane_checks"], "0")
        with open(self.hap.err_path, errors="replace") as f:
            hlog = f.read()
        self.assertNotIn("lane1 is DOWN", hlog)
        self.assertNotIn("backend 'cedra_lane' has no server available", hlog)
