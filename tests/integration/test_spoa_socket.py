"""cedra-spoa's operator socket and /metrics against a running daemon behind
the real HAProxy: every command with its errors, the socket's permissions,
the Prometheus exposition checked by promtool, counters that move with
traffic."""

import os
import re
import shutil
import stat
import subprocess
import urllib.error
import urllib.request

import harness
from test_agent import connect_as
from test_haproxy import HaproxyCase
from test_locale_routing import raw_request


class SpoaSocketTest(HaproxyCase):
    def setUp(self):
        super().setUp()
        self.sock = self.env.path("spoa.sock")
        self.mport = harness.free_port()
        self.start_stack(extra="stats-socket %s\nmetrics 127.0.0.1:%d" % (self.sock, self.mport))
        self.wait_spoa_check()

    def metrics(self):
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.mport, timeout=5) as r:
            self.assertIn("text/plain; version=0.0.4", r.headers["Content-Type"])
            return r.read().decode()

    def counter(self, text, name, labels=""):
        m = re.search(r"^%s%s (\S+)$" % (re.escape(name), re.escape(labels)), text, re.M)
        return float(m.group(1)) if m else None

    def test_commands(self):
        out = harness.unix_command(self.sock, "show info", errors="strict")
        for field in ("Name: cedra-spoa", "Version:", "Pid: %d" % self.agent.pid, "Uptime_sec:",
                      "Threads: 2", "Valkey: none", "Locales: fr(default),nl,en"):
            self.assertIn(field, out)
        self.assertTrue(out.endswith("\n\n"), "answers end with an empty line")
        # Traffic moves the counters of show stat, both forms.
        for path in ("/fr/x", "/nl/y", "/x"):
            raw_request(self.hap.port, "GET", path, {})
        csv = harness.unix_command(self.sock, "show stat", errors="strict")
        self.assertTrue(csv.startswith("# decision,cache,requests\n"), csv)
        rows = dict((r.rsplit(",", 1)[0], int(r.rsplit(",", 1)[1])) for r in csv.strip().splitlines()[1:])
        self.assertGreaterEqual(rows["pass,BYPASS"], 2)
        self.assertGreaterEqual(rows["redirect,BYPASS"], 1)
        js = harness.unix_command(self.sock, "show stat json", errors="strict")
        self.assertIn('"decision":"redirect","cache":"BYPASS"', js)
        self.assertIn("error", harness.unix_command(self.sock, "show stat xml", errors="strict"))
        self.assertIn("# pool,key_prefix", harness.unix_command(self.sock, "show pools", errors="strict"))
        # ; separates commands, each answer ends with an empty line.
        both = harness.unix_command(self.sock, "show info; show pools", errors="strict")
        self.assertIn("Name: cedra-spoa", both)
        self.assertIn("# pool,key_prefix", both)
        # set log-level takes effect at once.
        self.assertEqual(harness.unix_command(self.sock, "set log-level debug", errors="strict"), "\n")
        self.assertIn("Log_level: debug", harness.unix_command(self.sock, "show info", errors="strict"))
        self.assertIn("error", harness.unix_command(self.sock, "set log-level loud", errors="strict"))
        # no Valkey, no cache
        self.assertIn("error", harness.unix_command(self.sock, "show cache", errors="strict"))
        # help lists every command; unknown commands get a one-line error.
        helptext = harness.unix_command(self.sock, "help", errors="strict")
        for cmd in ("show info", "show stat", "show pools", "set pool", "set log-level", "show cache",
                    "purge key", "purge prefix", "purge all", "show metrics", "prompt", "quit"):
            self.assertIn(cmd, helptext)
        err = harness.unix_command(self.sock, "frobnicate", errors="strict")
        self.assertTrue(err.startswith("Unknown command") or "help" in err, err)
        # Interactive mode.
        data = harness.unix_command(self.sock, "prompt\nshow pools\nquit", text=False)
        self.assertIn(b"> ", data)
        self.assertIn(b"# pool,key_prefix", data)
        # show metrics over the socket is the same exposition as /metrics.
        self.assertIn("cedra_spoa_requests_total",
                      harness.unix_command(self.sock, "show metrics", errors="strict"))

    def test_socket_is_0600_and_refuses_other_users(self):
        st = os.stat(self.sock)
        self.assertTrue(stat.S_ISSOCK(st.st_mode))
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o600)
        if os.getuid() != 0:
            self.skipTest("needs root to connect as another user")
        self.assertEqual(connect_as(65534, self.sock), "EACCES")
        self.assertEqual(connect_as(0, self.sock), "ok")

    def test_metrics_pass_promtool_and_move(self):
        before = self.metrics()
        for _ in range(5):
            raw_request(self.hap.port, "GET", "/fr/products/chair", {})
        after = self.metrics()
        name, labels = "cedra_spoa_requests_total", '{decision="pass",cache="BYPASS"}'
        self.assertGreaterEqual(self.counter(after, name, labels) - (self.counter(before, name, labels) or 0), 5)
        self.assertGreaterEqual(self.counter(after, "cedra_spoa_spop_connections_total"), 1)
        promtool = shutil.which("promtool")
        if not promtool:
            self.skipTest("promtool not installed (Debian package prometheus)")
        r = subprocess.run([promtool, "check", "metrics"], input=after.encode(), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=30)
        self.assertEqual(r.returncode, 0, r.stdout.decode())
        with self.assertRaises(urllib.error.HTTPError) as cm:
            urllib.request.urlopen("http://127.0.0.1:%d/nope" % self.mport, timeout=5)
        self.assertEqual(cm.exception.code, 404)
