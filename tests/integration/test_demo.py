"""README command 1, run the way a user runs it: scripts/demo.sh starts
Valkey, two builds of the Next.js fixture (stable, canary), the Consul double,
cedra-spoa, HAProxy with the shipped configuration and cedra-agent, prints its
walkthrough and stays up; then Ctrl-C (SIGINT to the demo's whole process
group, as a terminal sends it) stops it.

Checked: every walkthrough step's output (status lines, the edge's headers,
the page's render stamp and build id, the three operator sockets), that the
processes the demo printed are the ones that answered (the Next.js pids in the
pages), and that after Ctrl-C none of them (each runs in a session of its
own), nothing in their sessions and nothing in the demo's process group is
left, its ports are free and its directory is gone. A
second test breaks cedra-spoa's start: the demo prints that process's log
tail, exits non-zero and leaves nothing behind. ScriptsTest: shellcheck is
clean on every shell script the repository tracks (issue 7).

Environment: CEDRA_SPOA, CEDRA_AGENT (binaries handed to the demo, which then
builds nothing; default build/spoa/cedra-spoa and build/agent/cedra-agent).
The Next.js builds come from tests/fixtures/storefront/setup.sh (cached in
its .work/; the first run builds them, a few minutes).
"""

import os
import re
import signal
import stat
import subprocess
import tempfile
import unittest

import harness

DEMO = os.path.join(harness.REPO, "scripts", "demo.sh")
PORT_VARS = ("CEDRA_DEMO_HTTP", "CEDRA_DEMO_SPOA", "CEDRA_DEMO_ORIGIN", "CEDRA_DEMO_CANARY",
             "CEDRA_DEMO_REDIS", "CEDRA_DEMO_DELIVER", "CEDRA_DEMO_CONSUL")
PROCESSES = {"redis-server", "next-stable", "next-canary", "consul-double", "cedra-spoa",
             "haproxy", "cedra-agent"}
# Bound of the demo's start and walkthrough: setup.sh may have to build both
# Next.js builds the first time (minutes on 2 cores); cached, it takes ~20 s.
UP_TIMEOUT = 900
# The demo stops its 7 processes one after another, each given 10 s before
# SIGKILL (a SIGKILL fails the test through "ignored SIGTERM"): 70 s at worst,
# and a loaded machine does reach a minute.
STOP_TIMEOUT = 90
NEW_USERS = 50          # the demo's step 5
SHARE = 0.20            # canary-weight in the demo's agent configuration
# the last line of every sanitizer report, valgrind's error summary
MEMCHECK_REPORT = re.compile(rb"^(==\d+== )?SUMMARY: \w*Sanitizer: |^==\d+== ERROR SUMMARY: [1-9]", re.M)
ANSI = re.compile(r"\x1b\[[0-9;]*m")
STARTED = re.compile(r"^demo: started (\S+) pid (\d+) \(log (\S+)\)$", re.M)
PAGE = re.compile(r"^ +page: (?P<h1>.*?) \| version (?P<version>\d+) \| (?P<price>[\d.]+) € \| "
                  r"render #(?P<render>\d+) at (?P<at>[\d:]+) \(pid (?P<pid>\d+)\) \| "
                  r"build (?P<build>\S+)$", re.M)


def processes():
    """[(pid, pgid, sid)] of every live (not zombie) process."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                st = f.read()
        except OSError:
            continue
        fields = st[st.rindex(")") + 2:].split()
        if fields[0] != "Z":
            out.append((int(d), int(fields[2]), int(fields[3])))
    return out


def leftovers(demo_pid, started):
    """What is left of a demo: processes in its process group (curl, sleep,
    ...), and the daemons it started in sessions of their own, or anything in
    those sessions (their children)."""
    sids = set(started.values())
    return [(pid, g, s) for pid, g, s in processes() if g == demo_pid or s in sids]


def alive(pid):
    return any(p == pid for p, _, _ in processes())


def sections(text):
    """The walkthrough's steps: {"1": body, "1b": body, ...} from the
    "== N. title" headers."""
    out = {}
    parts = re.split(r"^== (\d+[a-z]?)\. ", text, flags=re.M)
    for i in range(1, len(parts) - 1, 2):
        out[parts[i]] = parts[i + 1]
    return out


def answers(body):
    """Each curl shown in a step: (command, status, {header: value}, page match
    or None, other lines)."""
    out = []
    for chunk in re.split(r"^\$ curl ", body, flags=re.M)[1:]:
        lines = chunk.splitlines()
        status, headers, page, rest = None, {}, None, []
        for line in lines[1:]:
            s = line.strip()
            if s.startswith("HTTP/"):
                status = int(s.split()[1])
            elif s.startswith("page: "):
                page = PAGE.match(line)
                if page is None:
                    raise AssertionError("unreadable page line: %r" % line)
            elif re.match(r"^[A-Za-z0-9-]+: ", s) and not rest:
                k, v = s.split(": ", 1)
                headers.setdefault(k.lower(), v)
            else:
                rest.append(s)
        out.append((lines[0], status, headers, page, rest))
    return out


def run_env(tmp):
    env = dict(os.environ)
    for k in list(env):
        if k.startswith("CEDRA_DEMO_"):
            del env[k]
    ports = dict(zip(PORT_VARS, harness.free_ports(len(PORT_VARS))))
    for var, port in ports.items():
        env[var] = str(port)
    env["CEDRA_SPOA"] = harness.spoa_bin()
    env["CEDRA_AGENT"] = harness.agent_bin()
    # sanitizer builds are slower: stretch the edge's timeouts, not the steps
    sf = harness.slow_factor()
    env["CEDRA_DEMO_SPOE_TIMEOUT"] = "%dms" % (500 * sf)
    env["CEDRA_DEMO_VALKEY_TIMEOUT"] = "%dms" % (250 * sf)
    env["TMPDIR"] = tmp
    return env, ports


def terminal_signals():
    """SIGINT and SIGQUIT as a terminal's shell leaves them to its jobs. A
    suite started in the background by a non-interactive shell inherits them
    ignored, and a shell cannot trap a signal ignored at its start: the demo
    would never see the Ctrl-C the test sends."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


class DemoTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        for tool in ("node", "npm", "redis-server", "redis-cli", harness.haproxy_bin(), "socat",
                     "curl", "shellcheck"):
            harness.require_tool(tool)
        harness.require_spoa()
        harness.require_agent()

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="cedra-test-demo-")
        self.proc = None
        self.out_path = os.path.join(self.tmp, "demo.out")

    def tearDown(self):
        try:
            if self.proc is not None and self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(10)
            if self.proc is not None:
                # a test that failed midway must not leave daemons behind either
                started = {m.group(1): int(m.group(2)) for m in STARTED.finditer(self.output())}
                for pid, _, _ in leftovers(self.proc.pid, started):
                    os.kill(pid, signal.SIGKILL)
        finally:
            subprocess.run(["rm", "-rf", self.tmp], check=False)

    def output(self):
        with open(self.out_path, "rb") as f:
            return ANSI.sub("", f.read().decode("utf-8", "replace"))

    def start(self, env):
        """The demo in its own session and process group, as from a terminal."""
        self.out = open(self.out_path, "wb")
        self.addCleanup(self.out.close)
        self.proc = subprocess.Popen(["bash", DEMO], env=env, stdin=subprocess.DEVNULL,
                                     stdout=self.out, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=terminal_signals)

    def assert_all_gone(self, started, workdir, kept=False):
        harness.wait_until(lambda: not leftovers(self.proc.pid, started), 10,
                           what="no process of the demo left")
        if not kept:
            self.assertFalse(os.path.exists(workdir),
                             "the demo's directory %s is still there" % workdir)

    # ------------------------------------------------------------------------------
    def test_walkthrough_then_ctrl_c(self):
        env, ports = run_env(self.tmp)
        env["CEDRA_DEMO_KEEP"] = "1"   # its logs, checked below
        self.start(env)
        harness.wait_until(lambda: self.proc.poll() is not None or
                           "Ctrl-C stops everything." in self.output(),
                           UP_TIMEOUT, interval=0.2, what="the demo's walkthrough")
        text = self.output()
        self.assertIsNone(self.proc.poll(), "the demo exited (%r):\n%s" % (self.proc.returncode,
                                                                          text[-6000:]))
        started = {m.group(1): int(m.group(2)) for m in STARTED.finditer(text)}
        logs = [m.group(3) for m in STARTED.finditer(text)]
        workdir = os.path.dirname(logs[0]) if logs else None
        if workdir and workdir.startswith("/tmp/cedra-demo."):
            self.addCleanup(subprocess.run, ["rm", "-rf", workdir], check=False)
        self.assertEqual(set(started), PROCESSES, text[-6000:])
        for name, pid in started.items():
            self.assertTrue(alive(pid), "%s (pid %d) is not running" % (name, pid))
        try:
            self.check_walkthrough(text, started, ports)
        except AssertionError as e:
            raise AssertionError("%s\n--- demo output ---\n%s" % (e, text)) from None

        # Ctrl-C: the terminal sends SIGINT to the whole foreground group
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            rc = self.proc.wait(STOP_TIMEOUT * harness.slow_factor())
        except subprocess.TimeoutExpired:
            self.fail("the demo did not stop within %d s of SIGINT:\n%s" % (
                STOP_TIMEOUT * harness.slow_factor(), self.output()[-3000:]))
        text = self.output()
        self.assertEqual(rc, 0, text[-3000:])
        self.assertIn("demo: stopped", text)
        self.assertNotIn("ignored SIGTERM", text)
        self.assert_all_gone(started, workdir, kept=True)
        for var, port in ports.items():
            self.assertFalse(harness.tcp_connectable("127.0.0.1", port), (var, port))
        # both daemons drained and exited cleanly; no sanitizer or valgrind
        # report in any log (a sanitizer build given as CEDRA_SPOA/CEDRA_AGENT)
        for name in ("cedra-spoa", "cedra-agent"):
            with open(os.path.join(workdir, name + ".log"), errors="replace") as f:
                self.assertIn("event=stopped rc=0", f.read(), name)
        for log in logs:
            with open(log, "rb") as f:
                self.assertIsNone(MEMCHECK_REPORT.search(f.read()), log)

    def check_walkthrough(self, text, started, ports):
        st = sections(text)
        want = ["1", "1b", "2", "2b", "2c", "3", "3b", "3c", "4", "5", "6", "6b", "6c", "7", "8",
                "9", "10"]
        self.assertEqual(list(st), want)
        stable_pid, canary_pid = started["next-stable"], started["next-canary"]

        def one(step):
            a = answers(st[step])
            self.assertGreaterEqual(len(a), 1, step)
            return a[0]

        def page(step, a, build, pid, cache):
            _, status, h, p, _ = a
            self.assertEqual(status, 200, step)
            self.assertEqual(h.get("x-cedra-cache"), cache, step)
            self.assertIsNotNone(p, "%s: no page line" % step)
            self.assertEqual((p.group("build"), int(p.group("pid"))), (build, pid), step)
            return p

        # 1: locale redirects
        _, status, h, _, _ = one("1")
        self.assertEqual((status, h.get("location"), h.get("x-cedra-locale")),
                         (307, "/nl/products/chair", "nl"))
        self.assertEqual(h.get("vary"), "Accept-Language, Cookie")
        _, status, h, _, _ = one("1b")
        self.assertEqual((status, h.get("location"), h.get("x-cedra-locale")),
                         (307, "/en/products/chair", "en"))

        # 2: MISS (rendered by the stable build), then HIT of that same render, then 304
        miss = page("2", one("2"), "stable", stable_pid, "MISS")
        self.assertEqual(one("2")[2].get("x-nextjs-cache"), "MISS")
        hit_a = one("2b")
        hit = page("2b", hit_a, "stable", stable_pid, "HIT")
        self.assertEqual(hit.groupdict(), miss.groupdict())
        self.assertIn("same render id as the MISS", st["2b"])
        _, status, h, _, _ = one("2c")
        self.assertEqual((status, h.get("x-cedra-cache"), h.get("etag")),
                         (304, "HIT", hit_a[2].get("etag")))
        self.assertTrue(h.get("etag"))

        # 3: revalidateTag through the edge -> MISS with a new render and the new
        # price -> HIT of that render
        _, status, h, _, rest = one("3")
        self.assertEqual((status, h.get("x-cedra-cache")), (200, "BYPASS"))
        self.assertTrue(any('"ok":true' in l and '"tags":["product-chair"]' in l for l in rest), rest)
        new = page("3b", one("3b"), "stable", stable_pid, "MISS")
        self.assertEqual(int(new.group("version")), int(miss.group("version")) + 1)
        self.assertAlmostEqual(float(new.group("price")), float(miss.group("price")) + 10, places=2)
        self.assertGreater(int(new.group("render")), int(miss.group("render")))
        again = page("3c", one("3c"), "stable", stable_pid, "HIT")
        self.assertEqual(again.groupdict(), new.groupdict())
        self.assertIn("same render id as the MISS", st["3c"])

        # 4: a session cookie is never answered from the shared cache
        _, status, h, _, _ = one("4")
        self.assertEqual((status, h.get("x-cedra-cache")), (200, "BYPASS"))

        # 5: a new user is pinned, and served by the build its pin names; the
        # canary's share of 50 new users: Binomial(50, 0.2), mean 10; outside
        # [1, 25] has probability below 2e-5
        cmd, status, h, p, rest = one("5")
        self.assertEqual(status, 200)
        m = re.match(r"cedra_pool=(stable|canary)\.(stable|canary); Path=/;", h.get("set-cookie", ""))
        self.assertTrue(m, h)
        self.assertEqual(m.group(1), m.group(2))
        self.assertEqual(p.group("build"), m.group(2))
        self.assertEqual(int(p.group("pid")), stable_pid if m.group(2) == "stable" else canary_pid)
        users = re.search(r"^ +%d new users: (.*)$" % NEW_USERS, st["5"], re.M)
        self.assertTrue(users, st["5"])
        drawn = dict((k, int(v)) for k, v in re.findall(r"(\S+) x (\d+)", users.group(1)))
        self.assertEqual(sum(drawn.values()), NEW_USERS, drawn)
        self.assertLessEqual(set(drawn), {"stable.stable", "canary.canary"}, drawn)
        self.assertTrue(1 <= drawn.get("canary.canary", 0) <= 25, drawn)

        # 6: a canary-pinned user: the canary build renders (its own keys: MISS
        # although stable has the page), then HIT of the canary's render; only
        # the canary build, also for /api/health
        a6 = answers(st["6"])
        self.assertEqual(len(a6), 2, st["6"])
        c_miss = page("6", a6[0], "canary", canary_pid, "MISS")
        c_hit = page("6", a6[1], "canary", canary_pid, "HIT")
        self.assertEqual(c_hit.groupdict(), c_miss.groupdict())
        self.assertIsNone(a6[0][2].get("set-cookie"))
        twenty = re.search(r"^ +20 requests: (.*)$", st["6b"], re.M)
        self.assertTrue(twenty, st["6b"])
        seen = dict((k, int(v)) for k, v in re.findall(r"(\w+ build \S+) x (\d+)", twenty.group(1)))
        self.assertEqual(sum(seen.values()), 20, seen)
        self.assertTrue(all(k.endswith(" build canary") for k in seen), seen)
        _, status, h, _, rest = answers(st["6b"])[0]
        self.assertEqual((status, h.get("x-cedra-cache")), (200, "BYPASS"))
        health = " ".join(rest)
        for frag in ('"buildId":"canary"', '"keyPrefix":"storefront:canary:"',
                     '"pid":%d' % canary_pid):
            self.assertIn(frag, health)
        s6c = page("6c", one("6c"), "stable", stable_pid, "HIT")
        self.assertEqual(s6c.groupdict(), new.groupdict())

        # 7: cedra-agent's operator socket
        s7 = st["7"]
        for line in ("Canary_live: 1", "Canary_builds: canary:1", "Stable_builds: stable:1",
                     "Weight: 20", "Spoa: in-sync"):
            self.assertRegex(s7, r"(?m)^ +%s$" % re.escape(line))
        rows = re.findall(r"(?m)^ +storefront,(\w+),(\w+),(\w+),(\w+),127\.0\.0\.1,(\d+),\d+,([\w-]+),(\w+),",
                          s7)
        self.assertEqual(sorted(rows), sorted([
            ("storefront_canary", "canary", "canary1", "ready", str(ports["CEDRA_DEMO_CANARY"]),
             "storefront-canary-1", "canary"),
            ("storefront_stable", "stable", "stable1", "ready", str(ports["CEDRA_DEMO_ORIGIN"]),
             "storefront-stable-1", "stable")]))

        # 8: cedra-spoa's pools, as the agent pushed them
        pools = re.findall(r"(?m)^ +(stable|canary),([^,]+),([^,]+),[^,]*,([^,]+),(\d+)$", st["8"])
        self.assertEqual(sorted(pools), [
            ("canary", "storefront:canary:", "route-cache", "canary", "20"),
            ("stable", "storefront:stable:", "route-cache", "stable", "80")])

        # 9: HAProxy's show stat: the slots the agent filled, UP, at the builds'
        # addresses; cedra-spoa's SPOP health check passes
        stat_rows = {(m[0], m[1]): m for m in re.findall(
            r"(?m)^ +(\S+) +(\S+) +(\S+) +weight=\S* +check=(\S*) +addr=(\S*) +sessions=(\d+)$", st["9"])}
        self.assertEqual(stat_rows[("storefront_stable", "stable1")][2], "UP")
        self.assertEqual(stat_rows[("storefront_stable", "stable1")][4],
                         "127.0.0.1:%d" % ports["CEDRA_DEMO_ORIGIN"])
        self.assertEqual(stat_rows[("storefront_canary", "canary1")][2], "UP")
        self.assertEqual(stat_rows[("storefront_canary", "canary1")][4],
                         "127.0.0.1:%d" % ports["CEDRA_DEMO_CANARY"])
        self.assertGreater(int(stat_rows[("storefront_canary", "canary1")][5]), 0)
        self.assertEqual(stat_rows[("spoa_cedra", "spoa1")][2:5],
                         ("UP", "L7OK", "127.0.0.1:%d" % ports["CEDRA_DEMO_SPOA"]))

        # 10: Valkey frozen: the page still comes, from Next.js (fail open)
        p10 = page("10", one("10"), "stable", stable_pid, "ERROR")
        self.assertEqual(int(p10.group("render")), 1)

    def test_failed_start_stops_what_was_started(self):
        """cedra-spoa cannot start: the demo shows its log, exits non-zero and
        stops Valkey, Next.js and the Consul double it had started."""
        env, ports = run_env(self.tmp)
        fake = os.path.join(self.tmp, "broken-spoa")
        with open(fake, "w") as f:
            f.write("#!/bin/sh\necho 'broken-spoa: cannot bind (on purpose)' >&2\nexit 3\n")
        os.chmod(fake, stat.S_IRWXU)
        env["CEDRA_SPOA"] = fake
        env["CEDRA_DEMO_ONESHOT"] = "1"
        self.start(env)
        try:
            rc = self.proc.wait(UP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.fail("the demo did not give up:\n%s" % self.output()[-3000:])
        text = self.output()
        self.assertNotEqual(rc, 0, text[-3000:])
        self.assertIn("demo: cedra-spoa exited during start; the end of its log", text)
        self.assertIn("broken-spoa: cannot bind (on purpose)", text)
        self.assertNotIn("== 1. ", text)
        started = {m.group(1): int(m.group(2)) for m in STARTED.finditer(text)}
        self.assertEqual(set(started), {"redis-server", "next-stable", "next-canary",
                                        "consul-double", "cedra-spoa"}, text[-3000:])
        logs = [m.group(3) for m in STARTED.finditer(text)]
        self.assert_all_gone(started, os.path.dirname(logs[0]))
        self.assertIn("demo: stopped", text)


def shell_scripts():
    """Every shell script the repository tracks: *.sh, or a sh/bash shebang."""
    r = subprocess.run(["git", "-C", harness.REPO, "ls-files", "-z"], stdout=subprocess.PIPE,
                       stderr=subprocess.DEVNULL)
    if r.returncode != 0:
        raise unittest.SkipTest("not a git checkout")
    out = []
    for rel in r.stdout.decode().split("\0"):
        path = os.path.join(harness.REPO, rel)
        if not rel or not os.path.isfile(path):
            continue
        with open(path, "rb") as f:
            first = f.readline(200)
        if rel.endswith(".sh") or re.match(rb"^#!\s*(/usr)?/bin/(env\s+)?(ba)?sh\b", first):
            out.append(rel)
    return out


class ScriptsTest(unittest.TestCase):
    def test_shellcheck_every_script(self):
        """Issue 7: shellcheck is clean on every script of the repository."""
        harness.require_tool("shellcheck")
        scripts = shell_scripts()
        self.assertIn("scripts/demo.sh", scripts)
        self.assertIn("tests/run.sh", scripts)
        r = subprocess.run(["shellcheck", "-x"] + scripts, cwd=harness.REPO,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.assertEqual(r.returncode, 0, r.stdout.decode(errors="replace"))


if __name__ == "__main__":
    unittest.main()
