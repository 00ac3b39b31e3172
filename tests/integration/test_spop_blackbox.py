"""cedra-spoa driven directly over SPOP 2.0 by the black-box client.

Needs build/spoa/cedra-spoa (or $CEDRA_SPOA); skipped otherwise.
"""

import ipaddress
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
import spop_client as sc  # noqa: E402

SF = harness.slow_factor()
LOCALES = ("fr", "nl", "en")
T = 5.0 * SF            # answer timeout for one frame
QUIET = 0.3             # "nothing more arrives" window

# path -> expected txn.cedra.locale (None: unset); agent runs "locales fr nl en"
PATHS = [
    ("/fr", "fr"), ("/fr/", "fr"), ("/fr/products/chair", "fr"), ("/nl", "nl"),
    ("/nl/x/y/z", "nl"), ("/en/about", "en"), ("/de/x", None), ("/", None),
    ("/frx", None), ("/french/x", None), ("/f", None), ("/api/fr", None),
    ("/en", "en"), ("/nl/", "nl"), ("/fr/a?b", "fr"), ("/xx/fr", None),
    ("/fr/%C3%A9t%C3%A9", "fr"), ("/en/" + "p" * 200, "en"), ("/es/x", None), ("/nl/a", "nl"),
]


class AgentCase(harness.IntegrationTestCase):
    """Shares one cedra-spoa (2 threads, max-frame-size 16380) across tests."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        try:
            cls.agent = cls.cenv.start_spoa(threads=2, max_frame_size=16380, log_level="info")
        except BaseException:
            cls.tearDownClass()
            raise

    def tearDown(self):
        super().tearDown()
        self.assertTrue(self.agent.alive(), "cedra-spoa died (rc=%r)" % self.agent.popen.returncode)

    # helpers
    def conn(self, timeout=T):
        return sc.Connection(self.agent.addr, timeout=timeout)

    def hello_conn(self, max_frame_size=16380, caps="pipelining,async"):
        c = self.conn()
        c.hello(max_frame_size=max_frame_size, capabilities=caps)
        return c

    def assertDisconnect(self, c, status, what=""):
        """Next frame is AGENT-DISCONNECT with `status`, then the agent closes."""
        try:
            f = c.recv_frame(T)
        except sc.Closed as e:
            self.fail("%s: expected AGENT-DISCONNECT %d, connection closed first (%s)" % (what, status, e))
        self.assertEqual(f.type, sc.FRAME_AGENT_DISCONNECT, "%s: got %r" % (what, f))
        self.assertEqual((f.stream_id, f.frame_id), (0, 0), what)
        self.assertTrue(f.fin, what)
        kv = f.kv()
        self.assertIn("status-code", kv, what)
        self.assertIn("message", kv, what)
        self.assertIsInstance(kv["message"], str)
        self.assertEqual(kv["status-code"], status, "%s: %r" % (what, kv))
        self.assertIs(type(kv["status-code"]), sc.Uint32, what)
        rest = c.expect_close(T)
        self.assertEqual(rest, [], "%s: frames after AGENT-DISCONNECT: %r" % (what, rest))
        return kv

    def assertQuiet(self, c, window=QUIET):
        try:
            f = c.recv_frame(window)
        except socket.timeout:
            return
        except sc.Closed:
            self.fail("connection closed unexpectedly")
        self.fail("unexpected frame %r" % (f,))

    def assertCedraAck(self, actions, locale, what="", path=None, query=None, method="GET"):
        """The ACK of a cedra-req: all actions on txn; a path under a locale
        prefix gets that locale and "pass"; any other path gets either no
        locale and "pass" (issue 1 contract) or, for GET/HEAD, a well-formed
        locale redirect ("redirect", location /<locale><path>[?query],
        status 30x) - the agent decides which."""
        self.assertTrue(all(a.scope == sc.SCOPE_TXN for a in actions), "%s: %r" % (what, actions))
        v = sc.actions_to_vars(actions)
        for name in ("locale", "action", "cache", "location"):
            if name in v:
                self.assertIsInstance(v[name], str, "%s: %s is %r" % (what, name, v[name]))
        self.assertEqual(v.get("cache"), "BYPASS", "%s: %r" % (what, actions))
        if locale is not None or v.get("action") != "redirect":
            self.assertEqual(v.get("locale"), locale, "%s: %r" % (what, actions))
            self.assertEqual(v.get("action"), "pass", "%s: %r" % (what, actions))
            return v
        self.assertIn(method, ("GET", "HEAD"), "%s: redirected a %s: %r" % (what, method, actions))
        loc = v.get("locale")
        self.assertIn(loc, LOCALES, "%s: %r" % (what, actions))
        if path is not None:
            p = what if path is True else path
            target = "/" + loc + ("" if p == "/" else p)
            if query:
                target += "?" + query
            self.assertEqual(v.get("location"), target, "%s: %r" % (what, actions))
        self.assertIn(v.get("status"), (301, 302, 303, 307, 308), "%s: %r" % (what, actions))
        return v

    def roundtrip(self, c, sid, fid, path, locale):
        c.notify(sid, fid, [sc.cedra_req(path)])
        return self.assertCedraAck(c.ack_for(sid, fid), locale, path, path=path)


class HelloTest(AgentCase):
    def test_hello_normal(self):
        with self.conn() as c:
            c.send(sc.haproxy_hello(max_frame_size=16380, capabilities="pipelining,async"))
            f = c.recv_frame()
            self.assertEqual(f.type, sc.FRAME_AGENT_HELLO)
            self.assertEqual((f.stream_id, f.frame_id, f.fin, f.abort), (0, 0, True, False))
            kv = f.kv()
            self.assertEqual(kv["version"], "2.0")
            self.assertIs(type(kv["max-frame-size"]), sc.Uint32)
            self.assertEqual(kv["max-frame-size"], 16380)
            self.assertIsInstance(kv["capabilities"], str)
            self.assertIn("pipelining", sc.caps_set(kv["capabilities"]))
            self.assertTrue(sc.caps_set(kv["capabilities"]) <= {"pipelining", "async", "fragmentation"},
                            kv["capabilities"])
            # the connection is usable
            self.roundtrip(c, 1, 1, "/fr/x", "fr")

    def test_max_frame_size_is_the_minimum(self):
        for asked, expected in ((1000, 1000), (256, 256), (16380, 16380), (65535, 16380),
                                (2 ** 32 - 1, 16380)):
            with self.subTest(asked=asked), self.conn() as c:
                kv = c.hello(max_frame_size=asked)
                self.assertEqual(kv["max-frame-size"], expected)
                self.roundtrip(c, 1, 1, "/nl", "nl")

    def test_versions_list_with_spaces(self):
        with self.conn() as c:
            kv = c.hello(versions=" 2.0 , 1.5 ")
            self.assertEqual(kv["version"], "2.0")

    def test_hello_with_unknown_keys_and_caps(self):
        with self.conn() as c:
            kv = c.hello(capabilities="pipelining, async, teleportation",
                         extra=[("x-unknown", sc.Uint64(5)), ("x-null", None)])
            self.assertEqual(kv["version"], "2.0")
            self.roundtrip(c, 2, 9, "/en/a", "en")

    def test_healthcheck_hello(self):
        with self.conn() as c:
            c.send(sc.haproxy_hello(healthcheck=True, capabilities=""))
            f = c.recv_frame()
            self.assertEqual(f.type, sc.FRAME_AGENT_HELLO)
            self.assertEqual(f.kv()["version"], "2.0")
            rest = c.expect_close(T)
            self.assertTrue(all(r.type == sc.FRAME_AGENT_DISCONNECT for r in rest), rest)

    def test_haproxy_disconnect(self):
        with self.hello_conn() as c:
            c.send(sc.haproxy_disconnect(0, "normal"))
            self.assertDisconnect(c, 0, "HAPROXY-DISCONNECT")

    def test_haproxy_disconnect_with_error(self):
        with self.hello_conn() as c:
            c.send(sc.haproxy_disconnect(sc.ST_TIMEOUT, "a timeout occurred"))
            f = c.recv_frame(T)
            self.assertEqual(f.type, sc.FRAME_AGENT_DISCONNECT)
            c.expect_close(T)


class HelloErrorTest(AgentCase):
    def test_wrong_version(self):
        with self.conn() as c:
            c.send(sc.haproxy_hello(versions="1.0"))
            self.assertDisconnect(c, sc.ST_BAD_VSN, "version 1.0")

    def test_missing_version(self):
        with self.conn() as c:
            c.send(sc.haproxy_hello(omit=("supported-versions",)))
            self.assertDisconnect(c, sc.ST_NO_VSN, "no supported-versions")

    def test_missing_max_frame_size(self):
        with self.conn() as c:
            c.send(sc.haproxy_hello(omit=("max-frame-size",)))
            self.assertDisconnect(c, sc.ST_NO_FRAME_SIZE, "no max-frame-size")

    def test_missing_capabilities(self):
        with self.conn() as c:
            c.send(sc.haproxy_hello(omit=("capabilities",)))
            self.assertDisconnect(c, sc.ST_NO_CAP, "no capabilities")

    def test_max_frame_size_too_small(self):
        with self.conn() as c:
            c.send(sc.haproxy_hello(max_frame_size=255))
            self.assertDisconnect(c, sc.ST_BAD_FRAME_SIZE, "max-frame-size 255")

    def test_notify_before_hello(self):
        with self.conn() as c:
            c.notify(1, 1, [sc.cedra_req("/fr")])
            self.assertDisconnect(c, sc.ST_INVALID, "NOTIFY before HELLO")


class NotifyTest(AgentCase):
    def test_one_notify(self):
        with self.hello_conn() as c:
            for i, (path, loc) in enumerate(PATHS):
                self.roundtrip(c, 100 + i, i, path, loc)

    def test_pipelined_20_in_one_write(self):
        with self.hello_conn() as c:
            sent = {}
            data = b""
            for i, (path, loc) in enumerate(PATHS):
                sid, fid = 1000 + 37 * i, 5 + (i % 3)
                sent[(sid, fid)] = (path, loc)
                data += sc.notify(sid, fid, [sc.cedra_req(path, cookie="k=v; n=%d" % i)])
            self.assertEqual(len(sent), 20)
            c.send(data)
            seen = set()
            for _ in range(20):
                f = c.recv_frame(T)
                self.assertEqual(f.type, sc.FRAME_ACK, f)
                self.assertTrue(f.fin)
                key = (f.stream_id, f.frame_id)
                self.assertIn(key, sent, "ACK for an unknown stream/frame %r" % (key,))
                self.assertNotIn(key, seen, "second ACK for %r" % (key,))
                seen.add(key)
                path, loc = sent[key]
                self.assertCedraAck(f.actions(), loc, path, path=path)
            self.assertQuiet(c)

    def test_notify_one_byte_at_a_time(self):
        with self.hello_conn() as c:
            c.send_bytewise(sc.notify(7, 3, [sc.cedra_req("/nl/slow", accept_language="nl-BE,nl;q=0.9,en;q=0.5")]))
            self.assertCedraAck(c.ack_for(7, 3), "nl")
            self.roundtrip(c, 8, 1, "/fr", "fr")

    def test_hello_one_byte_at_a_time(self):
        with self.conn() as c:
            c.send_bytewise(sc.haproxy_hello())
            f = c.recv_frame()
            self.assertEqual(f.type, sc.FRAME_AGENT_HELLO)
            self.roundtrip(c, 1, 1, "/en", "en")

    def test_fragmented_notify(self):
        with self.hello_conn(max_frame_size=1024) as c:
            self.assertEqual(c.max_frame_size, 1024)
            msgs = [sc.cedra_req("/nl/big", cookie="c=" + "x" * 6000, accept_language="nl")]
            frames = sc.fragmented_notify(11, 4, msgs, 1000)
            self.assertGreaterEqual(len(frames), 6)
            for fr in frames:
                self.assertLessEqual(len(fr) - 4, 1024)
            c.send(b"".join(frames))
            self.assertCedraAck(c.ack_for(11, 4), "nl")
            self.assertQuiet(c)
            self.roundtrip(c, 12, 1, "/fr/after", "fr")

    def test_fragmented_notify_in_separate_writes(self):
        with self.hello_conn(max_frame_size=512) as c:
            frames = sc.fragmented_notify(21, 1, [sc.cedra_req("/en/x", cookie="y" * 2000)], 400)
            for fr in frames:
                c.send(fr)
                time.sleep(0.01)
            self.assertCedraAck(c.ack_for(21, 1), "en")

    def test_aborted_fragmented_notify(self):
        with self.hello_conn(max_frame_size=1024) as c:
            frames = sc.fragmented_notify(31, 2, [sc.cedra_req("/fr/aborted", cookie="z" * 3000)],
                                          900, abort=True)
            c.send(b"".join(frames))
            c.notify(32, 1, [sc.cedra_req("/nl/next")])
            f = c.recv_frame(T)
            self.assertEqual((f.type, f.stream_id, f.frame_id), (sc.FRAME_ACK, 32, 1),
                             "first frame after an aborted NOTIFY: %r" % (f,))
            self.assertCedraAck(f.actions(), "nl")
            self.assertQuiet(c)
            self.roundtrip(c, 33, 1, "/en", "en")

    def test_frame_larger_than_max_frame_size(self):
        with self.hello_conn(max_frame_size=1024) as c:
            big = sc.notify(1, 1, [sc.cedra_req("/fr", cookie="q" * 3000)])
            self.assertGreater(len(big) - 4, 1024)
            # Send only the head: the length prefix alone says "too big", and
            # the agent then has nothing unread (no RST hiding its DISCONNECT).
            c.send(big[:16])
            self.assertDisconnect(c, sc.ST_TOO_BIG, "frame of %d > 1024" % (len(big) - 4))

    def test_frame_just_at_max_frame_size(self):
        with self.hello_conn(max_frame_size=1024) as c:
            pad = 1024
            fr = sc.notify(1, 1, [sc.cedra_req("/fr", cookie="q" * pad)])
            while len(fr) - 4 > 1024:   # the cookie's length varint may shrink too
                pad -= len(fr) - 4 - 1024
                fr = sc.notify(1, 1, [sc.cedra_req("/fr", cookie="q" * pad)])
            self.assertEqual(len(fr) - 4, 1024)
            c.send(fr)
            self.assertCedraAck(c.ack_for(1, 1), "fr")

    def test_unknown_frame_type_is_skipped(self):
        with self.hello_conn() as c:
            c.send(sc.encode_frame(50, b"\x01\x02\x03", 1, 1))
            c.send(sc.encode_frame(200, b"", 0, 0))
            c.send(sc.encode_frame(99, b"junk" * 10, 5, 5))
            self.roundtrip(c, 2, 1, "/fr/x", "fr")
            self.assertQuiet(c)

    def test_other_message_is_acked_without_actions(self):
        with self.hello_conn() as c:
            c.notify(3, 1, [("something-else", [("a", "b"), ("n", sc.Int32(-4))])])
            self.assertEqual(c.ack_for(3, 1), [])
            c.notify(4, 1, [])
            f = c.recv_frame(T)
            self.assertIn(f.type, (sc.FRAME_ACK, sc.FRAME_AGENT_DISCONNECT), f)
            if f.type == sc.FRAME_ACK:
                self.assertEqual((f.stream_id, f.frame_id), (4, 1))
                self.roundtrip(c, 5, 1, "/nl", "nl")

    def test_nulls_ipv6_and_all_types(self):
        with self.hello_conn() as c:
            msg = ("cedra-req", [
                ("method", "GET"), ("path", "/en/t"), ("query", None), ("host", None),
                ("cookie", None), ("accept_language", None),
                ("src", ipaddress.IPv6Address("2001:db8::7")),
                ("x-bool", True), ("x-i32", sc.Int32(-7)), ("x-u32", sc.Uint32(7)),
                ("x-i64", sc.Int64(-(2 ** 40))), ("x-u64", sc.Uint64(2 ** 63)),
                ("x-bin", b"\x00\x01"), ("x-v4", ipaddress.IPv4Address("10.0.0.1")),
            ])
            c.notify(9, 9, [msg])
            self.assertCedraAck(c.ack_for(9, 9), "en")
            # method POST, query string present, same locale rules
            c.notify(10, 1, [sc.cedra_req("/fr/cart", method="POST", query="a=1&b=2")])
            self.assertCedraAck(c.ack_for(10, 1), "fr", "POST /fr/cart")
            c.notify(11, 1, [sc.cedra_req("/de/cart", method="POST", query="a=1")])
            self.assertCedraAck(c.ack_for(11, 1), None, "POST /de/cart", method="POST")
            c.notify(12, 1, [sc.cedra_req("/de/q", query="a=1&b=%C3%A9")])
            self.assertCedraAck(c.ack_for(12, 1), None, "GET /de/q?a=1&b=%C3%A9", path="/de/q",
                                query="a=1&b=%C3%A9")

    def test_large_ids(self):
        with self.hello_conn() as c:
            for sid, fid in ((2 ** 32 + 5, 1), (2 ** 63, 2 ** 40), (2 ** 64 - 1, 2 ** 64 - 1)):
                self.roundtrip(c, sid, fid, "/nl/id", "nl")


class RobustnessTest(AgentCase):
    ROUNDS = 1400

    def _garbage(self, rng, kind):
        valid_notify = sc.notify(rng.randrange(1, 1000), rng.randrange(0, 50),
                                 [sc.cedra_req(rng.choice(PATHS)[0], cookie="a=b")])
        if kind == 0:       # pure noise
            return rng.randbytes(rng.randint(1, 600))
        if kind == 1:       # plausible length, random body
            body = rng.randbytes(rng.randint(0, 300))
            return struct.pack("!I", len(body)) + body
        if kind == 2:       # hello, then noise
            return sc.haproxy_hello() + rng.randbytes(rng.randint(1, 300))
        if kind == 3:       # hello, then a NOTIFY with flipped bytes (length kept)
            b = bytearray(valid_notify)
            for _ in range(rng.randint(1, 6)):
                b[rng.randrange(4, len(b))] = rng.randrange(256)
            return sc.haproxy_hello() + bytes(b)
        if kind == 4:       # a HELLO with flipped bytes
            b = bytearray(sc.haproxy_hello())
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(4, len(b))] = rng.randrange(256)
            return bytes(b)
        if kind == 5:       # hello, then a truncated NOTIFY with a wrong length
            cut = rng.randint(5, len(valid_notify))
            b = bytearray(valid_notify[:cut])
            b[0:4] = struct.pack("!I", max(0, cut - 4 + rng.randint(-3, 3)))
            return sc.haproxy_hello() + bytes(b)
        # kind 6: hello, then frames of random types and flags with random payloads
        out = sc.haproxy_hello()
        for _ in range(rng.randint(1, 5)):
            out += sc.encode_frame(rng.randrange(256), rng.randbytes(rng.randint(0, 80)),
                                   rng.randrange(5), rng.randrange(5), rng.randrange(4))
        return out

    def test_random_garbage(self):
        rng = random.Random(0xCED2A)
        for r in range(self.ROUNDS):
            kind = r % 7
            data = self._garbage(rng, kind)
            with self.conn(timeout=T) as c:
                try:
                    c.send(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                c.shutdown_write()
                try:
                    frames = c.expect_close(T)
                except socket.timeout:
                    self.fail("round %d (kind %d): agent kept the connection open after EOF; sent %s"
                              % (r, kind, data[:64].hex()))
                except sc.SpopError as e:
                    self.fail("round %d (kind %d): malformed answer: %s" % (r, kind, e))
                for f in frames:
                    self.assertIn(f.type, (sc.FRAME_AGENT_HELLO, sc.FRAME_ACK, sc.FRAME_AGENT_DISCONNECT),
                                  "round %d: %r" % (r, f))
                    if f.type == sc.FRAME_ACK:
                        f.actions()   # must decode
                    if f.type == sc.FRAME_AGENT_DISCONNECT:
                        self.assertIn("status-code", f.kv())
            if r % 50 == 49:
                self.assertTrue(self.agent.alive(), "agent died at round %d" % r)
        with self.hello_conn() as c:
            self.roundtrip(c, 1, 1, "/fr/after-garbage", "fr")

    def test_garbage_without_eof_gets_disconnect_or_close(self):
        """Noise that can never be a frame (huge length) is refused at once."""
        rng = random.Random(7)
        for r in range(30):
            noise = bytes((rng.randrange(1, 256),)) + rng.randbytes(rng.randint(3, 100))
            with self.conn() as c:
                c.send(noise)
                try:
                    frames = c.expect_close(T)
                except socket.timeout:
                    self.fail("round %d: no DISCONNECT/close for %s" % (r, noise[:16].hex()))
                for f in frames:
                    self.assertEqual(f.type, sc.FRAME_AGENT_DISCONNECT, f)
        with self.hello_conn() as c:
            self.roundtrip(c, 1, 1, "/nl", "nl")

    def test_200_concurrent_connections(self):
        n = 200
        barrier = threading.Barrier(n, timeout=30 * SF)
        errors = []
        lock = threading.Lock()

        def worker(i):
            try:
                with sc.Connection(self.agent.addr, timeout=15 * SF) as c:
                    barrier.wait()
                    c.hello()
                    path, loc = PATHS[i % len(PATHS)]
                    c.notify(i + 1, 1, [sc.cedra_req(path)])
                    acts = c.ack_for(i + 1, 1)
                    self.assertCedraAck(acts, loc, "conn %d %s" % (i, path), path=path)
            except BaseException as e:  # noqa: BLE001
                with lock:
                    errors.append("conn %d: %r" % (i, e))

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60 * SF)
        self.assertFalse(any(t.is_alive() for t in threads), "workers still running")
        self.assertEqual(errors, [], "%d/%d failed, first: %s" % (len(errors), n, errors[:3]))
        with self.hello_conn() as c:
            self.roundtrip(c, 1, 1, "/en", "en")


class LifecycleTest(harness.IntegrationTestCase):
    """Tests that start their own cedra-spoa."""

    def test_unix_socket_listener(self):
        agent = self.env.start_spoa(unix_path=self.env.path("spoa.sock"))
        with sc.Connection(agent.addr, timeout=T) as c:
            c.hello()
            c.notify(1, 1, [sc.cedra_req("/nl/unix")])
            self.assertEqual(sc.actions_to_vars(c.ack_for(1, 1)).get("locale"), "nl")

    def test_ipv6_listener(self):
        try:
            harness.free_port("::1")
        except OSError:
            self.skipTest("no IPv6 loopback")
        agent = self.env.start_spoa(host="::1")
        with sc.Connection(agent.addr, timeout=T) as c:
            c.hello()
            c.notify(1, 1, [sc.cedra_req("/en/v6")])
            self.assertEqual(sc.actions_to_vars(c.ack_for(1, 1)).get("locale"), "en")

    def test_configured_max_frame_size(self):
        agent = self.env.start_spoa(max_frame_size=1024)
        with sc.Connection(agent.addr, timeout=T) as c:
            self.assertEqual(c.hello(max_frame_size=16380)["max-frame-size"], 1024)
        with sc.Connection(agent.addr, timeout=T) as c:
            self.assertEqual(c.hello(max_frame_size=600)["max-frame-size"], 600)

    def test_sigterm_sends_disconnect_and_exits_0(self):
        agent = self.env.start_spoa()
        c = sc.Connection(agent.addr, timeout=T)
        try:
            c.hello()
            self.assertEqual(sc.actions_to_vars(
                (c.notify(1, 1, [sc.cedra_req("/fr")]), c.ack_for(1, 1))[1]).get("locale"), "fr")
            agent.signal(signal.SIGTERM)
            frames = c.expect_close(T)
            self.assertEqual([f.type for f in frames], [sc.FRAME_AGENT_DISCONNECT],
                             "on SIGTERM expected one AGENT-DISCONNECT then close: %r" % frames)
            self.assertIn("status-code", frames[0].kv())
        finally:
            c.close()
        rc = agent.stop(timeout=10 * SF)
        self.assertEqual(rc, 0, "cedra-spoa exit code after SIGTERM")

    def test_check_and_version_flags(self):
        binary = harness.require_spoa()
        good = self.env.spoa_config("127.0.0.1:%d" % harness.free_port())
        bad = self.env.write("bad.conf", "listen 127.0.0.1:1\nno-such-keyword 1\n")
        bad2 = self.env.write("bad2.conf", "listen 127.0.0.1:1\nthreads many\n")
        bad_limits = [self.env.write("bad-limit%d.conf" % i, "listen 127.0.0.1:1\n%s\n" % line)
                      for i, line in enumerate(("max-connections 0", "max-connections 1000001",
                                                "max-connections", "max-connections -1"))]
        run = lambda *a: subprocess.run([binary] + list(a), stdout=subprocess.PIPE,  # noqa: E731
                                        stderr=subprocess.PIPE, timeout=20)
        r = run("-c", "-f", good)
        self.assertEqual(r.returncode, 0, r.stderr)
        for cfg in [bad, bad2, self.env.path("missing.conf")] + bad_limits:
            r = run("-c", "-f", cfg)
            self.assertEqual(r.returncode, 1, "%s: %s" % (cfg, r.stderr))
        r = run("-v")
        self.assertEqual(r.returncode, 0)
        self.assertTrue((r.stdout + r.stderr).strip(), "-v printed nothing")


if __name__ == "__main__":
    unittest.main()
