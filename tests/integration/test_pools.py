"""Stable and canary pools through the real HAProxy and the shipped config:
cedra-spoa pins users with a cookie, sends the configured share of new users
to the canary, never mixes builds (the edge reads the pinned pool's keys), and
takes operator/agent changes over its operator socket ("set pool ...")."""

import json
import os

import harness
from test_haproxy import HaproxyCase, SF
from test_locale_routing import raw_request
from test_edge_cache import redis_cmd, load_value, aged, EdgeCachePages


class PoolsTest(HaproxyCase):
    start_redis = EdgeCachePages.start_redis

    def start_origin_named(self, name):
        port = harness.free_port()
        cfg = self.env.write("origin-%s.cfg" % name, (
            "global\n    nbthread 1\n"
            "defaults\n    mode http\n    timeout client 30s\n    timeout server 30s\n"
            "    timeout connect 2s\n"
            "frontend o\n    bind 127.0.0.1:%d\n"
            "    http-request return status 200 content-type text/plain string \"%s\" hdr x-origin %s\n"
        ) % (port, name, name))
        proc = self.env.spawn("origin-" + name, [harness.haproxy_bin(), "-db", "-f", cfg])
        proc.expect_rc = harness.HAPROXY_STOP_RC
        self.env.wait_ready(proc, lambda: harness.tcp_connectable("127.0.0.1", port), 10, "origin")
        return port

    def setUp(self):
        super().setUp()
        self.redis, self.rport = self.start_redis()
        self.sock = self.env.path("spoa.sock")
        extra = "\n".join([
            "valkey 127.0.0.1:%d" % self.rport,
            "pool stable key-prefix s: routes pathname build b1",
            "stats-socket %s" % self.sock,
        ])
        self.start_stack(extra=extra)
        self.wait_spoa_check()
        # The canary origin in the first canary slot, as cedra-agent would do.
        self.canary_port = self.start_origin_named("canary")
        for cmd in ("set server storefront_canary/canary1 addr 127.0.0.1 port %d" % self.canary_port,
                    "set server storefront_canary/canary1 state ready"):
            harness.unix_command(self.hap.sock, cmd)

    def cmd(self, line):
        out = harness.unix_command(self.sock, line, errors="strict")
        self.assertNotIn("error", out, line)
        return out

    def get(self, path="/fr/products/chair", cookie=None):
        h = {"Cookie": cookie} if cookie else {}
        st, hdrs, body, head = raw_request(self.hap.port, "GET", path, h)
        return st, hdrs, body

    def served_by(self, hdrs):
        return "canary" if hdrs.get("x-origin") == "canary" else "stable"

    def test_share_pinning_and_builds(self):
        # No canary: nobody is pinned. Nor unpinned while cedra-agent has not
        # said whether a canary is live (a canary pin waits for that).
        st, hdrs, _ = self.get()
        self.assertEqual((st, self.served_by(hdrs)), (200, "stable"))
        self.assertNotIn("set-cookie", hdrs)
        for cookie in ("cedra_pool=stable.b1", "cedra_pool=canary.b2"):
            st, hdrs, _ = self.get(cookie=cookie)
            self.assertEqual(st, 200)
            self.assertNotIn("set-cookie", hdrs, cookie)

        self.cmd("set pool canary key-prefix c: routes pathname build b2")
        self.cmd("set pool canary weight 50")
        out = self.cmd("show pools")
        self.assertIn("canary,c:,pathname,0,b2,50", out)
        self.assertIn("stable,s:,pathname,0,b1,50", out)

        pins = {"stable": 0, "canary": 0}
        for _ in range(200):
            st, hdrs, _ = self.get()
            self.assertEqual(st, 200)
            who = self.served_by(hdrs)
            cookie = hdrs.get("set-cookie", "")
            want = "cedra_pool=%s.%s;" % (who, "b2" if who == "canary" else "b1")
            self.assertTrue(cookie.startswith(want), (who, cookie))
            self.assertIn("HttpOnly", cookie)
            pins[who] += 1
        # 50% of 200: outside [60, 140] has probability < 1e-8.
        self.assertTrue(60 <= pins["canary"] <= 140, pins)

        # Pinned users stay where they are, and are not re-pinned.
        for pool, build in (("canary", "b2"), ("stable", "b1")):
            for _ in range(20):
                st, hdrs, _ = self.get(cookie="a=1; cedra_pool=%s.%s" % (pool, build))
                self.assertEqual(self.served_by(hdrs), pool)
                self.assertNotIn("set-cookie", hdrs)
        # A forged or stale pin is ignored: drawn again and re-pinned.
        for forged in ("cedra_pool=canary.bogus", "cedra_pool=admin.b1", "cedra_pool=canary",
                       "cedra_pool=canary.b2x"):
            st, hdrs, _ = self.get(cookie=forged)
            self.assertIn("set-cookie", hdrs, forged)

        self.cmd("set pool canary weight 100")
        for _ in range(20):
            self.assertEqual(self.served_by(self.get()[1]), "canary")
        self.cmd("set pool canary weight 0")
        for _ in range(20):
            self.assertEqual(self.served_by(self.get()[1]), "stable")

        # Promotion in flight: cedra-agent moves stable to the promoted build
        # before it turns the canary off. With both pools on one build there
        # is nothing to choose: a stale pin (the old stable build) or no pin
        # is not pinned anew, while a valid canary pin still holds.
        self.cmd("set pool canary weight 100")
        self.cmd("set pool stable key-prefix c: routes pathname build b2")
        for cookie in ("cedra_pool=stable.b1", None):
            for _ in range(20):
                st, hdrs, _ = self.get(cookie=cookie)
                self.assertEqual((st, self.served_by(hdrs)), (200, "stable"), cookie)
                self.assertNotIn("set-cookie", hdrs, cookie)
        st, hdrs, _ = self.get(cookie="cedra_pool=canary.b2")
        self.assertEqual(self.served_by(hdrs), "canary")
        self.assertNotIn("set-cookie", hdrs)
        self.cmd("set pool stable key-prefix s: routes pathname build b1")

        # Canary gone (auto-revert): its users are back on stable, and every
        # pin is removed (it pins nothing, and keeps its user off the lane).
        self.cmd("set pool canary off")
        for cookie in ("cedra_pool=canary.b2", "a=1; cedra_pool=stable.b1", "cedra_pool=x"):
            st, hdrs, _ = self.get(cookie=cookie)
            self.assertEqual((st, self.served_by(hdrs)), (200, "stable"), cookie)
            self.assertEqual(hdrs.get("set-cookie"),
                             "cedra_pool=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax", cookie)
        for cookie in (None, "a=1", "xcedra_pool=1"):
            st, hdrs, _ = self.get(cookie=cookie)
            self.assertEqual(st, 200)
            self.assertNotIn("set-cookie", hdrs, cookie)

    def test_edge_reads_the_pinned_builds_keys(self):
        chair = load_value("product-chair.json")
        # Only the canary build has the page in its cache.
        key = "c:/fr/products/chair"
        redis_cmd(self.rport, "SET", key, json.dumps(aged(chair, 1)))
        redis_cmd(self.rport, "HSET", "c:__sharedTags__", "/fr/products/chair", json.dumps(chair["tags"]))
        self.cmd("set pool canary key-prefix c: routes pathname build b2")
        self.cmd("set pool canary weight 50")
        harness.wait_until(lambda: self.get(cookie="cedra_pool=canary.b2")[1].get("x-cedra-cache") == "HIT",
                           10 * SF, what="canary HIT")
        st, hdrs, body = self.get(cookie="cedra_pool=stable.b1")
        self.assertEqual((hdrs["x-cedra-cache"], self.served_by(hdrs)), ("MISS", "stable"))
        self.assertEqual(hdrs.get("x-origin"), "1")  # the stable origin of start_stack

    def test_show_cache_and_purge(self):
        chair = load_value("product-chair.json")
        redis_cmd(self.rport, "SET", "s:/fr/products/chair", json.dumps(aged(chair, 1)))
        redis_cmd(self.rport, "HSET", "s:__sharedTags__", "/fr/products/chair", json.dumps(chair["tags"]))
        harness.wait_until(lambda: self.get()[1].get("x-cedra-cache") == "HIT", 10 * SF, what="HIT")
        # The L1 takes the page on a lookup made while tracking is up, which
        # may come after the first HIT (Valkey path): keep asking.
        harness.wait_until(lambda: self.get() and "s:/fr/products/chair," in self.cmd("show cache"),
                           10 * SF, what="page in the in-process cache")
        out = self.cmd("show cache s:/fr/")
        self.assertIn("# enabled=1", out)
        self.assertRegex(out, r"s:/fr/products/chair,\d+,[\d.]+,\d+,(main|probation),200")
        self.assertNotIn("s:/fr/products/chair", self.cmd("show cache c:"))
        self.assertIn("purged 1", self.cmd("purge key s:/fr/products/chair"))
        self.assertNotIn("s:/fr/products/chair,", self.cmd("show cache"))
        # Valkey is untouched: the next request reads it again and it is back.
        self.assertEqual(self.get()[1].get("x-cedra-cache"), "HIT")
        harness.wait_until(lambda: "s:/fr/products/chair," in self.cmd("show cache"), 10 * SF,
                           what="page back in memory")
        info = self.cmd("show info")
        self.assertIn("Valkey_tracking: up", info)
        self.assertRegex(info, r"L1_entries: [1-9]")
        self.assertIn("purged 1", self.cmd("purge path /fr/products/chair"))
        self.assertEqual(self.get()[1].get("x-cedra-cache"), "HIT")
        harness.wait_until(lambda: "s:/fr/products/chair," in self.cmd("show cache"), 10 * SF,
                           what="page back in memory again")
        self.assertIn("purged 1", self.cmd("purge prefix s:"))
        self.assertIn("purged 0", self.cmd("purge all"))
        self.assertIn("error", harness.unix_command(self.sock, "purge key", errors="strict"))
        self.assertIn("error", harness.unix_command(self.sock, "show cache a b", errors="strict"))

    def test_bad_commands(self):
        for line in ("set pool", "set pool blue key-prefix x routes pathname",
                     "set pool canary weight 101", "set pool stable off",
                     "set pool canary key-prefix c: routes /nonexistent build b2",
                     "set pool canary key-prefix c: routes pathname build bad.id",
                     "set pool canary key-prefix c:"):
            out = harness.unix_command(self.sock, line, errors="strict")
            self.assertTrue(out.startswith("error") or "error:" in out, (line, out))
        self.assertIn("stable,s:", self.cmd("show pools"))
        self.assertNotIn("canary", self.cmd("show pools"))
