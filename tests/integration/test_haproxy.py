"""The shipped haproxy/haproxy.cfg + cedra-spoe.conf with the real HAProxy 2.6,
cedra-spoa and an origin (a second HAProxy answering 200 "origin", x-origin: 1).

Nothing is copied: HAProxy reads haproxy/haproxy.cfg and the environment
variables documented at its top point it at our ports and sockets.
"""

import http.client
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
import spop_client as sc  # noqa: E402

SF = harness.slow_factor()


def http_get(port, path, headers=None, timeout=5.0 * SF, method="GET"):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, headers=headers or {})
        r = c.getresponse()
        body = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, body
    finally:
        c.close()


def serving(row):
    """HAProxy starts a checked server as "UP 1/3" (UP, one failed check from
    DOWN) and shows plain "UP" only after its first good check, up to one
    check interval later: both take traffic."""
    return row["status"] == "UP" or row["status"].startswith("UP ")


def stat_row(sock_path, px, sv):
    for row in harness.show_stat(sock_path):
        if row["pxname"] == px and row["svname"] == sv:
            return row
    raise AssertionError("no %s/%s in show stat" % (px, sv))


class FakeAgent(object):
    """An SPOP agent that completes HELLOs (health checks too) and never ACKs:
    the "alive but too slow" case."""

    def __init__(self):
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(64)
        self.addr = self.srv.getsockname()
        self.notifies = 0
        self.stop = False
        self.conns = []
        self.t = threading.Thread(target=self._accept, daemon=True)
        self.t.start()

    def _accept(self):
        while not self.stop:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        buf = b""
        try:
            while True:
                d = c.recv(65536)
                if not d:
                    return
                buf += d
                frames, buf = sc.split_frames(buf)
                for f in frames:
                    if f.type == sc.FRAME_HAPROXY_HELLO:
                        kv = f.kv()
                        c.sendall(sc.encode_frame(sc.FRAME_AGENT_HELLO, sc.encode_kv_list([
                            ("version", "2.0"),
                            ("max-frame-size", sc.Uint32(min(16380, int(kv["max-frame-size"])))),
                            ("capabilities", "pipelining")])))
                        if kv.get("healthcheck"):
                            return
                    elif f.type in (sc.FRAME_NOTIFY, sc.FRAME_UNSET):
                        self.notifies += 1
                    elif f.type == sc.FRAME_HAPROXY_DISCONNECT:
                        c.sendall(sc.agent_disconnect(0, "bye"))
                        return
        except OSError:
            return
        finally:
            c.close()

    def close(self):
        self.stop = True
        self.srv.close()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass


class HaproxyCase(harness.IntegrationTestCase):
    def setUp(self):
        super().setUp()
        harness.require_tool(harness.haproxy_bin())

    def start_stack(self, spoa=True, haproxy_env=None, **spoa_conf):
        """origin, then cedra-spoa, then HAProxy with the shipped config."""
        self.origin = self.env.start_origin()
        if spoa:
            self.agent = self.env.start_spoa(**spoa_conf)
            addr = self.agent.addr
        else:
            self.agent = None
            addr = ("127.0.0.1", self.env.dead_port())
        self.hap = self.env.start_haproxy(addr, self.origin.port, extra_env=haproxy_env)
        self.wait_origin_up()
        return self.hap

    def wait_origin_up(self):
        harness.wait_until(lambda: serving(stat_row(self.hap.sock, "storefront_stable", "origin")),
                           10, what="storefront_stable/origin UP")

    def wait_spoa_check(self, status="UP", check="L7OK", timeout=10 * SF):
        def ok():
            row = stat_row(self.hap.sock, "spoa_cedra", "spoa1")
            self._last_row = row
            return row["status"] == status and row["check_status"] == check
        try:
            harness.wait_until(ok, timeout, interval=0.05,
                               what="spoa_cedra/spoa1 %s/%s" % (status, check))
        except AssertionError:
            raise AssertionError("spoa_cedra/spoa1 never %s/%s; last: status=%s check_status=%s desc=%s" % (
                status, check, self._last_row.get("status"), self._last_row.get("check_status"),
                self._last_row.get("check_desc")))

    def get(self, path, **kw):
        return http_get(self.hap.port, path, **kw)

    def assertOrigin(self, status, hdrs, body):
        self.assertEqual(status, 200, hdrs)
        self.assertEqual(body, b"origin")
        self.assertEqual(hdrs.get("x-origin"), "1")

    def assertUnprefixed(self, status, hdrs, body, path, query=None, method="GET"):
        """A path without a locale prefix: either passed to the origin with no
        x-cedra-locale, or (GET/HEAD, if the agent decides so) redirected by
        HAProxy to /<locale><path>[?query] with x-cedra-locale set."""
        self.assertEqual(hdrs.get("x-cedra-cache"), "BYPASS", hdrs)
        if status == 200:
            if method != "HEAD":
                self.assertOrigin(status, hdrs, body)
            self.assertNotIn("x-cedra-locale", hdrs)
            return
        self.assertIn(method, ("GET", "HEAD"))
        self.assertIn(status, (302, 307), hdrs)
        self.assertNotIn("x-origin", hdrs, "a redirect must come from HAProxy, not the origin")
        loc = hdrs.get("x-cedra-locale")
        self.assertIn(loc, ("fr", "nl", "en"), hdrs)
        target = "/" + loc + ("" if path == "/" else path) + ("?" + query if query else "")
        self.assertEqual(hdrs.get("location"), target, hdrs)


class ConfigTest(unittest.TestCase):
    def test_shipped_config_is_valid_without_warnings(self):
        harness.require_tool(harness.haproxy_bin())
        env = dict(os.environ, CEDRA_HAPROXY_SOCK="/tmp/cedra-it-check.sock")
        r = subprocess.run([harness.haproxy_bin(), "-c", "-f", os.path.join(harness.HAPROXY_DIR, "haproxy.cfg")],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, timeout=30,
                           cwd="/")
        out = r.stdout.decode(errors="replace")
        self.assertEqual(r.returncode, 0, out)
        self.assertNotIn("WARNING", out)
        self.assertNotIn("Warnings were found", out)

    def test_every_variable_is_documented(self):
        """Each ${VAR} used in the 2.6 and 3.1 files is listed in the header of
        haproxy.cfg and in haproxy/README.md."""
        used = set()
        for name in ("haproxy.cfg", "cedra-spoe.conf", "haproxy-3.1.cfg", "cedra-spoe-3.1.conf"):
            with open(os.path.join(harness.HAPROXY_DIR, name)) as f:
                used |= set(re.findall(r"\$\{([A-Z0-9_]+)", f.read()))
        with open(os.path.join(harness.HAPROXY_DIR, "haproxy.cfg")) as f:
            header = "".join(l for l in f if l.startswith("#"))
        with open(os.path.join(harness.HAPROXY_DIR, "README.md")) as f:
            readme = f.read()
        self.assertTrue(used)
        for v in sorted(used):
            self.assertIn(v, header, "%s not documented in haproxy.cfg" % v)
            self.assertIn(v, readme, "%s not documented in haproxy/README.md" % v)


    @staticmethod
    def _directives(path, start="global", stop="backend spoa_cedra"):
        out, on = [], False
        with open(path) as f:
            for line in f:
                line = line.split("#", 1)[0].strip() if not line.lstrip().startswith("log-format") else line.strip()
                if line.startswith(start):
                    on = True
                if line.startswith(stop):
                    break
                if on and line and not line.startswith("filter spoe"):
                    out.append(line)
        return out

    def test_31_variant_matches_the_26_one(self):
        """haproxy-3.1.cfg = haproxy.cfg except the SPOE file name and the agent
        backend; with "mode spop" swapped for "mode tcp" it must pass 2.6's
        -c (the only 3.1-only keyword is "mode spop")."""
        d = harness.HAPROXY_DIR
        self.assertEqual(self._directives(os.path.join(d, "haproxy-3.1.cfg")),
                         self._directives(os.path.join(d, "haproxy.cfg")))
        with open(os.path.join(d, "haproxy-3.1.cfg")) as f:
            cfg31 = f.read()
        self.assertIn("    mode spop\n", cfg31)
        self.assertIn("cedra-spoe-3.1.conf", cfg31)
        with open(os.path.join(d, "cedra-spoe-3.1.conf")) as f:
            spoe31 = f.read()
        directives31 = "\n".join(self._directives(os.path.join(d, "cedra-spoe-3.1.conf"), "[cedra]", "\0"))
        self.assertIn("timeout processing", directives31)
        for gone in ("max-waiting-frames", "option pipelining", "option async", "send-frag-payload"):
            self.assertNotIn(gone, directives31)
        self.assertEqual(self._directives(os.path.join(d, "cedra-spoe-3.1.conf"), "spoe-message", "\0"),
                         self._directives(os.path.join(d, "cedra-spoe.conf"), "spoe-message", "\0"))
        harness.require_tool(harness.haproxy_bin())
        tmp = tempfile.mkdtemp(prefix="cedra-it-cfg31-")
        try:
            with open(os.path.join(tmp, "haproxy-3.1.cfg"), "w") as f:
                f.write(cfg31.replace("    mode spop\n", "    mode tcp\n"))
            for name in ("cedra-spoe-3.1.conf", "cedra-lane.map", "cedra-lane-cookies.acl"):
                shutil.copy(os.path.join(d, name), tmp)
            env = dict(os.environ, CEDRA_HAPROXY_SOCK=os.path.join(tmp, "s.sock"))
            r = subprocess.run([harness.haproxy_bin(), "-c", "-f", os.path.join(tmp, "haproxy-3.1.cfg")],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, timeout=30)
            self.assertEqual(r.returncode, 0, r.stdout.decode(errors="replace"))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


class HaproxyTest(HaproxyCase):
    def test_health_check_passes(self):
        self.start_stack()
        self.wait_spoa_check("UP", "L7OK")
        self.assertEqual(os.stat(self.hap.sock).st_mode & 0o777, 0o600, "stats socket mode")
        row = stat_row(self.hap.sock, "spoa_cedra", "spoa1")
        self.assertEqual(row.get("check_desc"), "Layer7 check passed", row)

    def test_locale_through_haproxy(self):
        self.start_stack()
        self.wait_spoa_check()
        st, h, body = self.get("/fr/x")
        self.assertOrigin(st, h, body)
        self.assertEqual(h.get("x-cedra-locale"), "fr", h)
        self.assertEqual(h.get("x-cedra-cache"), "BYPASS", h)

        st, h, body = self.get("/de/x")
        self.assertUnprefixed(st, h, body, "/de/x")
        st, h, body = self.get("/de/x?a=1&b=2")
        self.assertUnprefixed(st, h, body, "/de/x", "a=1&b=2")
        st, h, body = self.get("/de/x", method="POST")
        self.assertUnprefixed(st, h, body, "/de/x", method="POST")
        self.assertEqual(st, 200, "a POST is never redirected")
        st, h, body = self.get("/api/products")
        self.assertUnprefixed(st, h, body, "/api/products")

        st, h, body = self.get("/nl?q=1", headers={
            "Accept-Language": "nl-BE,nl;q=0.9,en;q=0.8", "Cookie": "a=1; b=2, c=3"})
        self.assertOrigin(st, h, body)
        self.assertEqual(h.get("x-cedra-locale"), "nl", h)

        st, h, body = self.get("/en/", method="HEAD")
        self.assertEqual(st, 200)
        self.assertEqual(h.get("x-cedra-locale"), "en", h)

        # The log line carries the SPOE processing time (txn.cedra.ptime).
        harness.wait_until(lambda: re.search(r"locale=fr,action=pass,cache=BYPASS,error=-,ptime=\d+",
                                             self.hap.stderr_text()),
                           5, what="log line with ptime")

    BIG_COOKIE = "; ".join("c%03d=%s" % (i, "v" * 112) for i in range(105))

    def test_big_cookie_fragmented_notify(self):
        """12 KiB of cookies, agent and SPOE both at max-frame-size 1024:
        HAProxy 2.6 sends the NOTIFY as NOTIFY + UNSET fragments and every
        request, the first included, gets its locale."""
        self.start_stack(max_frame_size=1024,
                         haproxy_env={"CEDRA_SPOE_MAX_FRAME_SIZE": "1024"})
        self.wait_spoa_check()
        self.assertGreaterEqual(len(self.BIG_COOKIE), 12 * 1024)
        for path, loc in (("/fr/big", "fr"), ("/nl/big", "nl"), ("/de/big", None),
                          ("/en/big", "en"), ("/fr/big2", "fr"), ("/nl/big2", "nl")):
            st, h, body = self.get(path, headers={"Cookie": self.BIG_COOKIE})
            if loc is None:
                self.assertUnprefixed(st, h, body, path)
                continue
            self.assertOrigin(st, h, body)
            self.assertEqual(h.get("x-cedra-locale"), loc, "%s: %r" % (path, h))
            self.assertEqual(h.get("x-cedra-cache"), "BYPASS", h)

    def test_big_cookie_agent_frame_smaller_than_haproxy(self):
        """Agent at 1024, SPOE left at 16380. Observed on 2.6.12: until a
        thread has completed its first HELLO, HAProxy encodes the NOTIFY for
        16380 and fails it with error 259 (256 + SPOP 3, too big) without
        sending it; afterwards it fragments for the negotiated 1024. Either
        way the client gets the origin's 200."""
        self.start_stack(max_frame_size=1024)
        self.wait_spoa_check()
        nbthread = int(self.hap.env["CEDRA_NBTHREAD"])
        results = []
        for i in range(12):
            st, h, body = self.get("/fr/big%d" % i, headers={"Cookie": self.BIG_COOKIE})
            self.assertOrigin(st, h, body)
            results.append((h.get("x-cedra-cache"), h.get("x-cedra-locale")))
        errors = [r for r in results if r[0] == "ERROR"]
        self.assertLessEqual(len(errors), nbthread, results)
        self.assertTrue(all(r in (("ERROR", None), ("BYPASS", "fr")) for r in results), results)
        self.assertEqual(results[-4:], [("BYPASS", "fr")] * 4, results)

    def test_agent_down_from_the_start(self):
        """No agent at all: every request still gets the origin's 200, marked
        x-cedra-cache: ERROR (the edge could not decide; BYPASS would claim the
        agent chose to bypass), without a locale, within the processing timeout."""
        self.start_stack(spoa=False)
        self.wait_spoa_check("DOWN", "L4CON")
        for i in range(10):
            t0 = time.monotonic()
            st, h, body = self.get("/fr/x%d" % i)
            elapsed = time.monotonic() - t0
            self.assertOrigin(st, h, body)
            self.assertEqual(h.get("x-cedra-cache"), "ERROR", h)
            self.assertNotIn("x-cedra-locale", h)
            self.assertLess(elapsed, 2.0 * SF, "request %d took %.3fs" % (i, elapsed))

    def test_agent_that_never_answers(self):
        """An agent that says HELLO but never ACKs: the request waits at most
        "timeout processing" (100 ms) and gets the origin, x-cedra-cache: ERROR."""
        fake = FakeAgent()
        self.addCleanup(fake.close)
        self.origin = self.env.start_origin()
        self.hap = self.env.start_haproxy(fake.addr, self.origin.port)
        self.wait_origin_up()
        self.wait_spoa_check()
        for i in range(5):
            t0 = time.monotonic()
            st, h, body = self.get("/fr/slow%d" % i)
            elapsed = time.monotonic() - t0
            self.assertOrigin(st, h, body)
            self.assertEqual(h.get("x-cedra-cache"), "ERROR", h)
            self.assertNotIn("x-cedra-locale", h)
            # "timeout processing" is 100 ms, 2 s under a slow factor (harness)
            self.assertLess(elapsed, 1.0 + (2.0 if SF > 1 else 0.1), "request %d took %.3fs" % (i, elapsed))
        self.assertGreater(fake.notifies, 0, "the fake agent never received a NOTIFY")

    def test_kill9_under_load_then_restart(self):
        wrk = harness.require_tool(harness.wrk_bin())
        self.start_stack()
        self.wait_spoa_check()
        st, h, _ = self.get("/fr/x")
        self.assertEqual(h.get("x-cedra-locale"), "fr", h)

        def req_tot():
            return int(stat_row(self.hap.sock, "fe_http", "FRONTEND")["req_tot"] or 0)
        base = req_tot()
        out_path = self.env.path("wrk.out")
        with open(out_path, "wb") as out:
            # Under the sanitizers every request in flight at the kill waits the
            # SPOE processing timeout (2 s there): give the load time to resume.
            w = subprocess.Popen([wrk, "-t2", "-c20", "-d%ds" % (5 * min(SF, 3)), "--timeout", "3s",
                                  "http://127.0.0.1:%d/fr/x" % self.hap.port],
                                 stdout=out, stderr=subprocess.STDOUT)
        try:
            # load is flowing and the agent is answering under it
            harness.wait_until(lambda: req_tot() > base + 500, 10, what="wrk traffic")
            before_kill = req_tot()
            self.agent.kill9()
            harness.wait_until(lambda: req_tot() > before_kill + 500, 10 * SF,
                               what="traffic after the kill")
            w.wait(30 * SF)
        finally:
            if w.poll() is None:
                w.kill()
                w.wait()
        with open(out_path, errors="replace") as f:
            report = f.read()
        sys.stderr.write("\n" + report)
        self.assertEqual(w.returncode, 0, report)
        m = re.search(r"(\d+) requests in", report)
        self.assertTrue(m, report)
        self.assertGreater(int(m.group(1)), 1000, report)
        self.assertNotIn("Non-2xx or 3xx responses", report)
        self.assertNotIn("Socket errors", report)

        # A new agent on the same port: traffic carries the locale again.
        self.agent2 = self.env.start_spoa(port=self.agent.port)

        def locale_back():
            _, h2, _ = self.get("/fr/again")
            return h2.get("x-cedra-locale") == "fr" and h2.get("x-cedra-cache") == "BYPASS"
        harness.wait_until(locale_back, 15 * SF, interval=0.1, what="locale header after restart")
        self.wait_spoa_check()


class CanaryRelayTest(HaproxyCase):
    """storefront_canary's backup server hands its requests to the stable pool
    when no canary server is usable, in place of the 503 a drained pool gives."""

    PIN = {"cookie": "cedra_pool=canary.b2"}

    def setUp(self):
        super().setUp()
        self.start_pools()

    def start_pools(self, haproxy_env=None):
        # No agent: the SPOE fails and the pin cookie picks the canary pool,
        # the route a canary user takes while cedra-spoa is down.
        self.start_stack(spoa=False, haproxy_env=haproxy_env)
        self.canary = self.env.start_origin(name="canary")
        sock = self.hap.sock
        harness.unix_command(sock, "set server storefront_canary/canary1 addr 127.0.0.1 port %d"
                             % self.canary.port)
        harness.unix_command(sock, "set server storefront_canary/canary1 state ready")
        harness.wait_until(lambda: self.get("/fr/p", headers=self.PIN)[2] == b"canary", 10 * SF,
                           what="the canary server serving")

    def test_drained_canary_pool_goes_to_stable(self):
        st, h, body = self.get("/fr/p", headers=self.PIN)
        self.assertEqual((st, body, h.get("x-xff-count")), (200, b"canary", "1"), h)
        harness.unix_command(self.hap.sock, "set server storefront_canary/canary1 state drain")
        for state in ("drain", "maint"):
            harness.unix_command(self.hap.sock, "set server storefront_canary/canary1 state " + state)
            st, h, body = self.get("/fr/p", headers=self.PIN)
            self.assertEqual(st, 200, (state, h))
            self.assertEqual(body, b"origin", state)
            # one X-Forwarded-For, as on the direct way: the relay adds none
            self.assertEqual(h.get("x-xff-count"), "1", (state, h))
            self.assertEqual(h.get("x-cedra-cache"), "ERROR", h)
        self.assertEqual(stat_row(self.hap.sock, "storefront_canary", "relay")["stot"], "2")
        self.assertEqual(stat_row(self.hap.sock, "cedra_relay", "FRONTEND")["stot"], "2")
        # users with no canary pin never take the relay
        st, h, body = self.get("/fr/p")
        self.assertEqual((st, body), (200, b"origin"))
        self.assertEqual(stat_row(self.hap.sock, "storefront_canary", "relay")["stot"], "2")

    def test_reload_keeps_the_relay_and_the_old_process_exits_cleanly(self):
        """A -sf reload with the shipped config: the old process finishes and
        exits 0 (with an abns@ relay listener, HAProxy 2.6.12's old process
        crashed on every reload: 'bug condition "l->rx.fd == -1"'), and the
        new one relays. The relay socket is the default one, next to the
        Runtime API socket, mode 600."""
        old = self.hap
        new = self.env.spawn("haproxy", [harness.haproxy_bin(), "-db", "-f", old.argv[-1],
                                         "-sf", str(old.pid)], env=old.env)
        new.expect_rc = harness.HAPROXY_STOP_RC
        old.popen.wait(10 * SF)
        err = old.stderr_text()
        self.assertEqual(old.popen.returncode, 0, err[-2000:])
        self.assertNotIn("bug condition", err)
        path = old.sock + ".relay"
        self.assertTrue(stat.S_ISSOCK(os.stat(path).st_mode))
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        # The new process answers on the same port and socket; its canary
        # slots start empty (no state file here), so the pin is relayed.
        st, h, body = self.get("/fr/p", headers=self.PIN)
        self.assertEqual((st, body, h.get("x-xff-count")), (200, b"origin", "1"), h)
        self.assertEqual(stat_row(old.sock, "storefront_canary", "relay")["stot"], "1")

    def test_relay_address_from_the_environment(self):
        """CEDRA_RELAY_ADDR replaces the default socket path (too long, or
        another directory): here a UNIX socket elsewhere on disk."""
        self.env.stop_all()
        path = self.env.path("relay.sock")
        self.start_pools({"CEDRA_RELAY_ADDR": "unix@" + path})
        st_mode = os.stat(path).st_mode
        self.assertTrue(stat.S_ISSOCK(st_mode))
        self.assertEqual(stat.S_IMODE(st_mode), 0o600)  # HAProxy to itself only
        harness.unix_command(self.hap.sock, "set server storefront_canary/canary1 state maint")
        st, h, body = self.get("/fr/p", headers=self.PIN)
        self.assertEqual((st, body, h.get("x-xff-count")), (200, b"origin", "1"), h)
        self.assertEqual(stat_row(self.hap.sock, "storefront_canary", "relay")["stot"], "1")


if __name__ == "__main__":
    unittest.main()
