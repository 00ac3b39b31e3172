"""Privileges (issue 8 item 5): both daemons refuse to stay root unless told
to, drop to "user"/"group" once every socket is bound (every thread), still
serve, own the sockets they serve, cannot take a different user back on
SIGHUP, re-read files as the dropped user; "-c" reports unsafe socket
permissions; secrets (cookies, query strings, Authorization, the Consul token,
delivery tokens) never reach a daemon's log, even at debug level.

Most tests need root (the CI runs as root) and the "nobody" user."""

import json
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import unittest
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "consul_double"))

import harness  # noqa: E402
import test_edge_cache as ec  # noqa: E402 (helpers only: no test class is imported)
from client import ConsulDouble  # noqa: E402
from test_haproxy import HaproxyCase, SF  # noqa: E402
from test_locale_routing import raw_request  # noqa: E402

try:
    NOBODY = pwd.getpwnam("nobody")
except KeyError:
    NOBODY = None

# Secrets a request or the environment carries; none may reach a log.
SECRETS = {
    "session": "sidS3cr3tV4lu3a1b2",
    "bypass": "prerenderBypassS3cr3t77",
    "bearer": "AuthBearerS3cr3t99",
    "query": "revalidateQueryS3cr3t55",
    "preview": "previewDataS3cr3t11",
}
TOKEN_RE = re.compile(r"(?<![0-9a-f])[0-9a-f]{32}(?![0-9a-f])")


def thread_creds(pid):
    """{tid: (Uid fields, Gid fields, Groups)} of every thread of pid."""
    out = {}
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/status" % (pid, tid)) as f:
                st = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
        except FileNotFoundError:
            continue   # a thread that just ended
        out[tid] = (st["Uid"].split(), st["Gid"].split(), st["Groups"].split())
    return out


def http_status(port, path="/metrics"):
    with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=5 * SF) as r:
        return r.status, r.read().decode()


def run(argv, env=None, timeout=20):
    full = dict(os.environ)
    full.update(env or {})
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=full,
                          timeout=timeout * SF)


def bound_unix_socket(path, uid=None, gid=None):
    """Leaves a socket file at path (a closed listener's), optionally chowned."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()
    if uid is not None:
        os.chown(path, uid, gid)


class RootCase(HaproxyCase):
    def setUp(self):
        super().setUp()
        if os.geteuid() != 0:
            self.skipTest("needs root")
        if NOBODY is None:
            self.skipTest("no 'nobody' user")
        # The dropped daemons must reach their files: the environment's
        # directory is traversable, sockets live in a directory "nobody" owns
        # (short: sun_path holds 108 bytes).
        os.chmod(self.env.dir, 0o711)
        self.run_dir = tempfile.mkdtemp(prefix="cedra-priv-")
        self.addCleanup(shutil.rmtree, self.run_dir, True)
        os.chmod(self.run_dir, 0o750)
        os.chown(self.run_dir, NOBODY.pw_uid, NOBODY.pw_gid)

    def assert_all_threads_are(self, proc, uid, gid):
        creds = thread_creds(proc.pid)
        self.assertGreater(len(creds), 1, "expected several threads")
        for tid, (uids, gids, groups) in creds.items():
            self.assertEqual(uids, [str(uid)] * 4, "thread %s Uid" % tid)
            self.assertEqual(gids, [str(gid)] * 4, "thread %s Gid" % tid)
            self.assertLessEqual(set(groups), {str(g) for g in os.getgrouplist(NOBODY.pw_name, gid)},
                                 "thread %s supplementary groups" % tid)
        return creds

    def assert_socket(self, path, uid, gid, mode):
        st = os.lstat(path)
        self.assertTrue(stat.S_ISSOCK(st.st_mode), path)
        self.assertEqual((st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)), (uid, gid, mode),
                         "%s owner/group/mode" % path)

    def wait_log(self, proc, pattern, count=1):
        rx = re.compile(pattern)
        harness.wait_until(lambda: len(rx.findall(proc.stderr_text())) >= count, 10 * SF,
                           what="%s logs %s" % (proc.name, pattern))


class RefuseRootTest(RootCase):
    def test_both_daemons_refuse_root_without_user_or_allow_root(self):
        port = harness.free_port()
        sock = os.path.join(self.run_dir, "spoa-admin.sock")
        cases = [
            (harness.require_spoa(), "spoa.conf",
             "listen 127.0.0.1:%d\nstats-socket %s\n" % (port, sock), "refusing to run as root"),
            (harness.require_spoa(), "spoa-root.conf",
             "listen 127.0.0.1:%d\nstats-socket %s\nuser root\n" % (port, sock), "'user root' is root"),
        ]
        if os.access(harness.agent_bin(), os.X_OK):
            cases.append((harness.agent_bin(), "agent.conf",
                          "service storefront\nconsul-addr 127.0.0.1:1\nhaproxy-socket %s\n"
                          "stats-socket %s\nmetrics none\nregister off\n" % (
                              self.env.path("none.sock"), sock), "refusing to run as root"))
        for binary, name, text, want in cases:
            with self.subTest(conf=name):
                conf = self.env.write(name, text)
                r = run([binary, "-f", conf])
                err = r.stderr.decode()
                self.assertEqual(r.returncode, 1, err)
                self.assertEqual(len(err.strip().splitlines()), 1, "one line: %r" % err)
                self.assertIn(want, err)
                self.assertIn("allow-root", err)
                self.assertIn(conf, err)
                # It refused before opening anything.
                self.assertFalse(os.path.exists(sock))
                self.assertFalse(harness.tcp_connectable("127.0.0.1", port))


class SpoaUserTest(RootCase):
    """cedra-spoa as "nobody" behind the real HAProxy, with Valkey, the
    delivery path on a UNIX socket, the operator socket and /metrics."""

    def start(self, log_level="info"):
        self.redis, self.rport = ec.EdgeCacheTest.start_redis(self)
        self.spoa_sock = os.path.join(self.run_dir, "spoa.sock")
        self.admin = os.path.join(self.run_dir, "spoa-admin.sock")
        self.deliver = os.path.join(self.run_dir, "deliver.sock")
        self.mport = harness.free_port()
        self.extra = "\n".join([
            "user nobody",
            "valkey 127.0.0.1:%d" % self.rport,
            "valkey-timeout 80ms",
            "pool stable key-prefix %s routes %s" % (ec.PREFIX, os.path.join(ec.FIX, "routes.table")),
            "session-cookie sid",
            "deliver unix:%s" % self.deliver,
            "stats-socket %s" % self.admin,
            "metrics 127.0.0.1:%d" % self.mport,
            "isr-max-body %d" % ec.MAX_BODY,
        ])
        self.origin = self.env.start_origin()
        self.spoa = self.env.start_spoa(unix_path=self.spoa_sock, log_level=log_level,
                                        extra=self.extra)
        self.hap = self.env.start_haproxy(self.spoa_sock, self.origin.port,
                                          extra_env={"CEDRA_DELIVER_ADDR": "unix@" + self.deliver})
        self.wait_origin_up()
        self.wait_spoa_check()
        self.chair = ec.load_value("product-chair.json")

    def put_page(self, slug, value):
        key = ec.ROUTE_KEY % slug
        ec.redis_cmd(self.rport, "SET", ec.PREFIX + key, json.dumps(value))
        ec.redis_cmd(self.rport, "HSET", ec.PREFIX + "__sharedTags__", key, json.dumps(value["tags"]))

    def get(self, path, headers=None):
        st, hdrs, body, _ = raw_request(self.hap.port, "GET", path, headers or {})
        return st, hdrs, body

    def serve_pages(self):
        """A page from Valkey (worker threads' connections, made after the
        drop) and a big one through the delivery socket."""
        self.put_page("chair", ec.aged(self.chair, 1))
        harness.wait_until(lambda: self.get("/fr/products/chair")[1].get("x-cedra-cache") == "HIT",
                           10 * SF, what="HIT on the chair")
        big = json.loads(json.dumps(self.chair))
        big["value"]["html"] = "<!DOCTYPE html><html><body>" + "<p>big</p>\n" * 40000 + "</body></html>"
        self.put_page("big", ec.aged(big, 1))
        harness.wait_until(lambda: self.get("/fr/products/big")[1].get("x-cedra-cache") == "HIT",
                           10 * SF, what="HIT on the big page")
        st, hdrs, body = self.get("/fr/products/big")
        self.assertEqual((st, hdrs.get("x-cedra-cache"), body), (200, "HIT", big["value"]["html"].encode()))

    def rewrite_config(self, text, mode=0o644):
        with open(self.spoa.config, "w") as f:
            f.write(text)
        os.chmod(self.spoa.config, mode)

    def test_runs_as_nobody_serves_and_owns_its_sockets(self):
        self.start()
        uid, gid = NOBODY.pw_uid, NOBODY.pw_gid
        self.serve_pages()
        self.assertIn("event=privileges_dropped user=nobody uid=%d gid=%d" % (uid, gid),
                      self.spoa.stderr_text())
        self.assert_all_threads_are(self.spoa, uid, gid)
        self.assert_socket(self.spoa_sock, uid, gid, 0o660)   # unix-mode: HAProxy's group
        self.assert_socket(self.admin, uid, gid, 0o600)
        self.assert_socket(self.deliver, uid, gid, 0o600)
        self.assertIn("Name: cedra-spoa", harness.unix_command(self.admin, "show info"))
        st, text = http_status(self.mport)
        self.assertEqual(st, 200)
        self.assertIn("cedra_spoa_requests_total", text)
        # Stopped, the dropped process still removes the sockets it owns.
        self.assertEqual(self.spoa.stop(timeout=10 * SF), 0)
        self.assertFalse(os.path.exists(self.admin))
        self.assertFalse(os.path.exists(self.spoa_sock))

    def test_reload_reads_as_the_user_and_cannot_change_privileges(self):
        self.start()
        self.serve_pages()
        with open(self.spoa.config) as f:
            good = f.read()
        # A valid change is read (as nobody: the file is 0644) and applied.
        self.rewrite_config(good.replace("log-level info", "log-level notice"))
        self.spoa.signal(signal.SIGHUP)
        self.wait_log(self.spoa, r"event=reloaded ")
        # Another user needs a restart: refused as a whole, the old one stays.
        for i, text in enumerate([good.replace("user nobody\n", ""),
                                  good.replace("user nobody", "user root"),
                                  good.replace("user nobody", "user nobody\ngroup root")]):
            self.rewrite_config(text)
            self.spoa.signal(signal.SIGHUP)
            self.wait_log(self.spoa, r"event=reload_failed [^\n]*need a restart[^\n]*dropped=yes", i + 1)
        # A file only root can read: the dropped process cannot, and says so.
        self.rewrite_config(good, mode=0o600)
        self.spoa.signal(signal.SIGHUP)
        self.wait_log(self.spoa, r"event=reload_failed [^\n]*Permission denied")
        # A new listener on a privileged port: not bound by a reload.
        self.rewrite_config(good + "listen 127.0.0.1:1\n")
        self.spoa.signal(signal.SIGHUP)
        self.wait_log(self.spoa, r"event=reload_partial [^\n]*listen[^\n]*need a restart")
        self.assertFalse(harness.tcp_connectable("127.0.0.1", 1))
        # Still nobody, still serving, on the old settings.
        self.assert_all_threads_are(self.spoa, NOBODY.pw_uid, NOBODY.pw_gid)
        self.assertEqual(self.get("/fr/products/chair")[1].get("x-cedra-cache"), "HIT")
        self.assertIn("Name: cedra-spoa", harness.unix_command(self.admin, "show info"))

    def test_secrets_never_reach_the_log(self):
        """Debug logs through real traffic carrying every kind of secret."""
        self.start(log_level="debug")
        self.serve_pages()
        s = SECRETS
        cookie = "sid=%s; __prerender_bypass=%s; __next_preview_data=%s; NEXT_LOCALE=fr" % (
            s["session"], s["bypass"], s["preview"])
        requests = [
            ("/fr/products/chair", {"Cookie": cookie, "Authorization": "Bearer " + s["bearer"]}),
            ("/fr/products/chair", {"Cookie": "__prerender_bypass=" + s["bypass"]}),
            ("/fr/products/chair?secret=" + s["query"], {}),
            ("/api/revalidate?secret=%s&path=/fr/products/chair" % s["query"], {}),
            ("/products/chair?secret=" + s["query"], {"Cookie": "sid=" + s["session"]}),
            ("/fr/products/big", {"Authorization": "Bearer " + s["bearer"]}),
            ("/fr/products/big?secret=" + s["query"], {"Cookie": cookie}),
        ]
        for path, headers in requests:
            st, _, _ = self.get(path, headers)
            self.assertLess(st, 500, path)
        # One more HIT through the delivery path: its one-time token went by.
        self.assertEqual(self.get("/fr/products/big")[1].get("x-cedra-cache"), "HIT")
        self.assertEqual(self.spoa.stop(timeout=10 * SF), 0)
        log = self.spoa.stderr_text()
        self.assertIn("level=debug", log)   # the log really was at debug level
        for name, secret in s.items():
            self.assertNotIn(secret, log, "%s secret in cedra-spoa's log" % name)
        self.assertEqual(TOKEN_RE.findall(log), [], "a delivery token in cedra-spoa's log")


class AgentUserTest(RootCase):
    def start_agent(self, token_env, name="cedra-agent", extra=""):
        self.admin = os.path.join(self.run_dir, "%s.sock" % name)
        self.mport = harness.free_port()
        conf = self.env.write("%s.conf" % name, (
            "user nobody\n"
            "service storefront\n"
            "consul-addr %s\n"
            "consul-retry 50ms 200ms\n"
            "haproxy-socket %s\n"
            "reconcile-interval 200ms\n"
            "stats-socket %s\n"
            "metrics 127.0.0.1:%d\n"
            "register %s id %s-test ttl 2s\n"
            "log-level debug\n%s") % (self.double.addr, os.path.join(self.run_dir, "no-haproxy.sock"),
                                      self.admin, self.mport, name, name, extra))
        os.chmod(conf, 0o644)
        proc = self.env.spawn(name, harness.agent_wrapper() + [harness.agent_bin(), "-f", conf],
                              env=token_env)
        self.env.wait_ready(proc, lambda: os.path.exists(self.admin), 10 * SF, "operator socket")
        proc.config = conf
        return proc

    def setUp(self):
        super().setUp()
        harness.require_agent()
        self.token = "c0ffee00-5ec7-4e7a-b00c-%012d" % os.getpid()
        self.double = ConsulDouble.start(token=self.token, control_port=0,
                                         stderr=open(self.env.path("double.err"), "wb"))
        self.addCleanup(self.double.stop)
        self.double.set_service("storefront", [{"id": "o1", "address": "127.0.0.1", "port": 1,
                                                 "tags": [], "meta": {"build_id": "b1"}}])

    def test_runs_as_nobody_with_a_root_only_token_file_and_never_logs_it(self):
        # CONSUL_HTTP_TOKEN_FILE readable by root only: read before the drop.
        tok = self.env.path("consul.token")
        with open(tok, "w") as f:
            f.write(self.token + "\n")
        os.chmod(tok, 0o400)
        agent = self.start_agent({"CONSUL_HTTP_TOKEN_FILE": tok})
        uid, gid = NOBODY.pw_uid, NOBODY.pw_gid
        # It works with the token (registered, the service watched) ...
        harness.wait_until(lambda: "storefront-test" in json.dumps(self.double.registrations()) or
                           "cedra-agent-test" in json.dumps(self.double.registrations()),
                           10 * SF, what="cedra-agent registered itself")
        self.wait_log(agent, r"event=consul_service_update ")
        self.double.touch("storefront")   # the same answer again: a debug line
        self.wait_log(agent, r"level=debug ")
        self.assert_all_threads_are(agent, uid, gid)
        self.assert_socket(self.admin, uid, gid, 0o600)
        self.assertIn("cedra-agent", harness.unix_command(self.admin, "show info"))
        self.assertEqual(http_status(self.mport)[0], 200)
        # ... cannot change user on SIGHUP ...
        with open(agent.config) as f:
            good = f.read()
        with open(agent.config, "w") as f:
            f.write(good.replace("user nobody\n", ""))
        agent.signal(signal.SIGHUP)
        self.wait_log(agent, r"event=reload_failed [^\n]*need a restart[^\n]*dropped=yes")
        with open(agent.config, "w") as f:
            f.write(good)
        self.assertEqual(agent.stop(timeout=10 * SF), 0)
        self.assertFalse(os.path.exists(self.admin))
        log = agent.stderr_text()
        self.assertIn("level=debug", log)
        self.assertIn("token=set", log)
        self.assertNotIn(self.token, log)

    def test_a_refused_token_is_not_logged_either(self):
        wrong = "deadbeef-0bad-4bad-8bad-%012d" % os.getpid()
        agent = self.start_agent({"CONSUL_HTTP_TOKEN": wrong}, name="cedra-agent-wrong")
        self.wait_log(agent, r"event=consul_watch_failing ")
        self.wait_log(agent, r"event=consul_watch_retry ")   # the repeats, at debug level
        self.assertEqual(agent.stop(timeout=10 * SF), 0)
        log = agent.stderr_text()
        self.assertIn("level=debug", log)
        self.assertNotIn(wrong, log)
        self.assertNotIn(self.token, log)


class CheckPermissionsTest(unittest.TestCase):
    """-c: one case per rule, and clean configurations pass."""

    def setUp(self):
        self.env = harness.Env("privs-check")
        self.addCleanup(self.env.cleanup)
        self.spoa = harness.require_spoa()

    def check(self, binary, text):
        conf = self.env.write("c.conf", text)
        r = run([binary, "-c", "-f", conf])
        return r.returncode, r.stderr.decode(), r.stdout.decode()

    def sock_dir(self, mode):
        d = self.env.path("d%o" % mode)
        os.mkdir(d)
        os.chmod(d, mode)
        return d

    def test_spoa_rules(self):
        base = "listen 127.0.0.1:1\nallow-root\n"
        safe = self.sock_dir(0o755)
        nobody = "user nobody\n" if NOBODY else "allow-root\n"
        cases = [
            # (name, config, rc, [ALERT] pattern or None, [WARNING] pattern or None)
            ("clean", base + "stats-socket %s/a.sock\n" % safe, 0, None, None),
            ("clean-user", nobody + "listen unix:%s/l.sock\nstats-socket %s/a.sock\n" % (safe, safe),
             0, None, None),
            ("world-writable", base + "stats-socket %s/a.sock mode 666\n" % safe, 1,
             r"mode 0666 lets any local user connect", None),
            ("group-writable", base + "stats-socket %s/a.sock mode 660\n" % safe, 0, None,
             r"mode 0660 lets every member of the socket's group"),
            ("others-read", base + "stats-socket %s/a.sock mode 604\n" % safe, 0, None,
             r"mode 0604 grants others access"),
            ("dir-world-writable", base + "stats-socket %s/a.sock\n" % self.sock_dir(0o777), 1,
             r"writable by anyone without the sticky bit", None),
            ("dir-sticky", base + "stats-socket %s/a.sock\n" % self.sock_dir(0o1777), 0, None, None),
            ("listen-dir-world-writable", "allow-root\nlisten unix:%s/l.sock\n" % self.sock_dir(0o757), 1,
             r"listen .*writable by anyone without the sticky bit", None),
            ("listen-unix-mode", base + "listen unix:%s/l.sock\nunix-mode 0666\n" % safe, 0, None,
             r"listen .*mode 0666 lets any local user connect"),
            ("user-root", "listen 127.0.0.1:1\nuser root\n", 1, r"'user root' is root", None),
            ("user-root-allowed", base + "user root\n", 0, None, r"'user root' with 'allow-root'"),
            ("unknown-user", base + "user no-such-user-x\n", 1, r"unknown user 'no-such-user-x'", None),
            ("uid-without-group", base + "user 54321\n", 1, r"say which group", None),
        ]
        regular = os.path.join(safe, "file")
        open(regular, "w").close()
        cases.append(("not-a-socket", base + "stats-socket %s\n" % regular, 1, r"exists and is not a socket",
                      None))
        if os.geteuid() == 0:
            other = os.path.join(safe, "other.sock")
            bound_unix_socket(other, 54321, 54321)
            cases.append(("owned-by-another-user", base + "stats-socket %s\n" % other, 1,
                          r"belongs to uid 54321, not to uid 0", None))
            cases.append(("root-without-user", "listen 127.0.0.1:1\n", 0, None, r"refuses to start"))
        for name, text, rc, alert, warning in cases:
            with self.subTest(case=name):
                got, err, out = self.check(self.spoa, text)
                self.assertEqual(got, rc, err)
                alerts = [line for line in err.splitlines() if "[ALERT]" in line]
                warnings = [line for line in err.splitlines() if "[WARNING]" in line]
                if alert and rc == 1 and not alerts:   # a plain configuration error
                    self.assertRegex(err, alert)
                elif alert:
                    self.assertTrue(any(re.search(alert, a) for a in alerts), err)
                elif rc == 0:
                    self.assertEqual(alerts, [], err)
                if warning:
                    self.assertTrue(any(re.search(warning, w) for w in warnings), err)
                elif rc == 0:
                    self.assertEqual(warnings, [], err)
                if rc == 0:
                    self.assertIn("Configuration file is valid", out)

    def test_agent_rules(self):
        harness.require_agent()
        safe = self.sock_dir(0o755)
        base = "service storefront\nmetrics none\nallow-root\n"
        cases = [
            ("clean", base + "stats-socket %s/a.sock mode 600\n" % safe, 0, None),
            ("world-writable", base + "stats-socket %s/a.sock mode 662\n" % safe, 1, r"\[ALERT\].*0662"),
            ("group-writable", base + "stats-socket %s/a.sock mode 660\n" % safe, 0, r"\[WARNING\].*0660"),
            ("dir", base + "stats-socket %s/a.sock\n" % self.sock_dir(0o777), 1, r"\[ALERT\].*sticky"),
            ("user-root", "service storefront\nmetrics none\nuser 0\n", 1, r"\[ALERT\].*is root"),
        ]
        if os.geteuid() == 0 and NOBODY:
            # HAProxy's socket as HAProxy makes it (root, 0600): the dropped
            # agent could not drive it; a group it is in with 0660 works.
            hsock = os.path.join(safe, "haproxy.sock")
            bound_unix_socket(hsock, 0, 0)
            os.chmod(hsock, 0o600)
            conf = base.replace("allow-root\n", "user nobody\n") + "haproxy-socket %s\n" % hsock
            cases.append(("haproxy-socket-unreachable", conf, 0,
                          r"\[WARNING\] haproxy-socket .*uid %d cannot connect" % NOBODY.pw_uid))
            hsock2 = os.path.join(safe, "haproxy2.sock")
            bound_unix_socket(hsock2, 0, NOBODY.pw_gid)
            os.chmod(hsock2, 0o660)
            cases.append(("haproxy-socket-group", conf.replace(hsock, hsock2), 0, None))
        for name, text, rc, pattern in cases:
            with self.subTest(case=name):
                got, err, out = self.check(harness.agent_bin(), text)
                self.assertEqual(got, rc, err)
                if pattern:
                    self.assertRegex(err, pattern)
                else:
                    self.assertEqual(err, "")
                    self.assertIn("Configuration file is valid", out)


if __name__ == "__main__":
    unittest.main()
