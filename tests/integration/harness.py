"""Integration-test harness: real processes on free loopback ports.

Python stdlib only. Each test (or test class) gets a temporary directory;
processes are started with their stdout/stderr in files there, readiness is
polled (bounded), processes are stopped by pid (SIGTERM, then SIGKILL), and
on failure the logs are printed.

Environment:
  CEDRA_SPOA          path of the cedra-spoa binary [<repo>/build/spoa/cedra-spoa]
  CEDRA_AGENT         path of the cedra-agent binary [<repo>/build/agent/cedra-agent]
  CEDRA_SPOA_WRAPPER  command prepended to cedra-spoa, e.g.
                      "valgrind --leak-check=full --error-exitcode=99
                       --errors-for-leak-kinds=definite,indirect"
  CEDRA_AGENT_WRAPPER the same for cedra-agent (agent_wrapper())
  CEDRA_SLOW_FACTOR   multiplier for deadlines (slow_factor()); default 20
                      under a wrapper, else 1 (e.g. 4 for ThreadSanitizer builds)
  CEDRA_HAPROXY_BIN   haproxy binary [haproxy]
  CEDRA_WRK_BIN       wrk binary [wrk]
  CEDRA_KEEP_TMP      keep temporary directories (set to 1)
"""

import csv
import io
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import spop_client as sc  # noqa: E402

REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
HAPROXY_DIR = os.path.join(REPO, "haproxy")
LOG_TAIL_LINES = 80
# haproxy -db dies from SIGTERM (hard stop) rather than exiting 0
HAPROXY_STOP_RC = (0, -signal.SIGTERM)


def spoa_bin():
    return os.environ.get("CEDRA_SPOA") or os.path.join(REPO, "build", "spoa", "cedra-spoa")


def agent_bin():
    return os.environ.get("CEDRA_AGENT") or os.path.join(REPO, "build", "agent", "cedra-agent")


def spoa_wrapper():
    return shlex.split(os.environ.get("CEDRA_SPOA_WRAPPER", ""))


def agent_wrapper():
    return shlex.split(os.environ.get("CEDRA_AGENT_WRAPPER", ""))


def slow_factor():
    """Timeouts are stretched when a daemon runs under a wrapper (valgrind) or
    an instrumented build (CEDRA_SLOW_FACTOR)."""
    if os.environ.get("CEDRA_SLOW_FACTOR"):
        return float(os.environ["CEDRA_SLOW_FACTOR"])
    return 20.0 if spoa_wrapper() or agent_wrapper() else 1.0


# A sanitizer or valgrind report in a process's stderr fails the test even when
# the exit status does not show it (a process killed on purpose, a report in a
# child): ASan, LSan and TSan end a report with "SUMMARY: <Name>Sanitizer: ...",
# UBSan built with -fno-sanitize-recover prints only "file:l:c: runtime error:".
MEMCHECK_REPORT = re.compile(rb"^(==\d+== )?SUMMARY: \w*Sanitizer: .*$"
                             rb"|^\S+:\d+:\d+: runtime error: .*$"
                             rb"|^==\d+== ERROR SUMMARY: [1-9]\d* errors.*$", re.M)


def memcheck_reports(path):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return []
    return [m.group(0).decode(errors="replace") for m in MEMCHECK_REPORT.finditer(data)]


def haproxy_bin():
    return os.environ.get("CEDRA_HAPROXY_BIN", "haproxy")


def wrk_bin():
    return os.environ.get("CEDRA_WRK_BIN", "wrk")


def require_spoa():
    b = spoa_bin()
    if not (os.path.isfile(b) and os.access(b, os.X_OK)):
        raise unittest.SkipTest("cedra-spoa not built (%s)" % b)
    return b


def require_agent():
    b = agent_bin()
    if not (os.path.isfile(b) and os.access(b, os.X_OK)):
        raise unittest.SkipTest("cedra-agent not built (%s)" % b)
    return b


def require_tool(name):
    path = shutil.which(name)
    if not path:
        raise unittest.SkipTest("%s not installed" % name)
    return path


# Ports free_port()/free_ports() handed out in this process. bind(0) may
# return a port it returned a moment ago (it was released), and a test that
# asks for two ports, one per server, would then start both on the same port.
_handed_out = set()


def _pick_ports(n, host):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    socks, ports = [], []
    try:
        while len(ports) < n:
            if len(socks) > n + 256:
                raise RuntimeError("no free port left that was not handed out already")
            s = socket.socket(fam, socket.SOCK_STREAM)
            socks.append(s)  # held until all are picked: distinct within one call
            s.bind((host, 0))
            port = s.getsockname()[1]
            if (host, port) not in _handed_out:
                ports.append(port)
        _handed_out.update((host, p) for p in ports)
        return ports
    finally:
        for s in socks:
            s.close()


def free_port(host="127.0.0.1"):
    """A port nothing listens on now, never handed out before by this process.
    It is released: for a port that must stay unused, Env.dead_port()."""
    return _pick_ports(1, host)[0]


def free_ports(n, host="127.0.0.1"):
    """n distinct free ports (see free_port())."""
    return _pick_ports(n, host)


def wait_until(pred, timeout, interval=0.02, what="condition"):
    """Poll pred() until it returns a true value (returned) or timeout."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            v = pred()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - report the last one
            last_exc = e
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1fs waiting for %s%s" % (
                timeout, what, " (last error: %r)" % (last_exc,) if last_exc else ""))
        time.sleep(interval)


def tcp_connectable(host, port, timeout=0.5):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect((host, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def spop_healthcheck(addr, timeout=1.0):
    """True when addr answers a health-check HELLO with AGENT-HELLO."""
    with sc.Connection(addr, timeout=timeout) as c:
        c.send(sc.haproxy_hello(healthcheck=True, capabilities=""))
        f = c.recv_frame()
        return f.type == sc.FRAME_AGENT_HELLO


def send_and_read_to_eof(s, data):
    """Sends data on the connected socket s; what the peer sends until it
    closes."""
    s.sendall(data)
    chunks = []
    while True:
        d = s.recv(65536)
        if not d:
            return b"".join(chunks)
        chunks.append(d)


def unix_command(path, line, timeout=None, text=True, errors="replace"):
    """One command (str or bytes, without its newline) on a UNIX stream
    socket, such as cedra-spoa's or cedra-agent's operator socket or
    HAProxy's Runtime API: all three answer and close, so the answer is
    everything up to EOF. text=False gives the bytes as read (hostile input
    echoed back, fuzz seeds); errors="strict" makes an answer that is not
    UTF-8 an error. timeout (default 5 s * slow_factor()) bounds each
    socket operation."""
    if timeout is None:
        timeout = 5.0 * slow_factor()
    data = line if isinstance(line, bytes) else line.encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        out = send_and_read_to_eof(s, data + b"\n")
    return out.decode("utf-8", errors) if text else out


# HAProxy's SRV_ADMF_MAINT and SRV_ADMF_DRAIN masks of srv_admin (show servers
# state, field 6).
ADMF_MAINT = 0x23
ADMF_DRAIN = 0x18


def servers_state(sock, backend):
    """HAProxy's show servers state <backend> -> {srv_name: {addr, op, admin,
    weight, port, state}}; state is "maint", "drain" or "ready" from admin."""
    text = unix_command(sock, "show servers state %s" % backend)
    lines = text.splitlines()
    if not lines or lines[0].strip() != "1":
        raise AssertionError("unexpected show servers state answer: %r" % text[:200])
    out = {}
    for line in lines[2:]:
        if not line.strip():
            continue
        f = line.split()
        admin = int(f[6])
        state = "maint" if admin & ADMF_MAINT else "drain" if admin & ADMF_DRAIN else "ready"
        out[f[3]] = {"addr": f[4], "op": int(f[5]), "admin": admin, "weight": int(f[7]),
                     "port": int(f[18]), "state": state}
    return out


def slot_ports(sock, backend, states=("ready",)):
    """Ports of the server-template slots (stableN, canaryN; not the backup
    server) in one of states."""
    return sorted(r["port"] for name, r in servers_state(sock, backend).items()
                  if r["state"] in states and re.match(r"^(stable|canary)\d+$", name))


def show_stat(sock):
    """HAProxy's show stat -> list of dicts (CSV, first line starts with "# ")."""
    text = unix_command(sock, "show stat")
    lines = [l for l in text.splitlines() if l.strip()]
    if not lines or not lines[0].startswith("# "):
        raise AssertionError("unexpected show stat answer: %r" % text[:200])
    lines[0] = lines[0][2:]
    return list(csv.DictReader(io.StringIO("\n".join(lines))))


def redis_ping(port, timeout=1.0):
    """True when the redis-server on 127.0.0.1:port answers PING (an inline
    command: no RESP client needed here)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"PING\r\n")
        with s.makefile("rb") as f:
            return f.readline() == b"+PONG\r\n"


class Proc(object):
    def __init__(self, name, argv, popen, out_path, err_path):
        self.name, self.argv, self.popen = name, argv, popen
        self.out_path, self.err_path = out_path, err_path
        self.expect_rc = (0,)   # what a stop() should end with
        self.rc = None

    @property
    def pid(self):
        return self.popen.pid

    def alive(self):
        return self.popen.poll() is None

    def signal(self, sig):
        if self.alive():
            os.kill(self.popen.pid, sig)

    def kill9(self):
        """Kill -9 on purpose: the test does not expect a clean exit."""
        self.expect_rc = None
        self.signal(signal.SIGKILL)
        self.popen.wait(10)
        self.rc = self.popen.returncode

    def stop(self, timeout=10.0):
        """SIGTERM, wait, then SIGKILL. Returns the exit code."""
        if self.popen.poll() is None:
            try:
                os.kill(self.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.popen.pid, signal.SIGKILL)
                self.popen.wait(10)
                self.rc = self.popen.returncode
                return ("timeout", self.rc)
        self.rc = self.popen.returncode
        return self.rc

    def stderr_text(self):
        try:
            with open(self.err_path, "r", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def dump(self, stream=sys.stderr, tail=LOG_TAIL_LINES):
        for label, path in (("stdout", self.out_path), ("stderr", self.err_path)):
            try:
                with open(path, "r", errors="replace") as f:
                    lines = f.readlines()
            except OSError:
                continue
            if not lines:
                continue
            skipped = max(0, len(lines) - tail)
            stream.write("----- %s %s (pid %d, rc %r)%s -----\n" % (
                self.name, label, self.pid, self.popen.returncode,
                ", last %d of %d lines" % (tail, len(lines)) if skipped else ""))
            stream.writelines(lines[skipped:])
            if lines and not lines[-1].endswith("\n"):
                stream.write("\n")


class Env(object):
    """A set of processes sharing a temporary directory."""

    def __init__(self, label):
        # The label cut short: HAProxy refuses UNIX socket paths over 97
        # bytes, and its sockets (and the relay's, <stats socket>.relay) live
        # in this directory.
        self.dir = tempfile.mkdtemp(prefix="cedra-it-%s-" % label[:40])
        self.procs = []
        self.problems = []   # unclean exits found at stop time
        self._seq = 0
        self._held = []      # sockets behind dead_port()

    def path(self, name):
        return os.path.join(self.dir, name)

    def dead_port(self, host="127.0.0.1"):
        """A port where nothing listens, for as long as this Env runs.
        A released free port is not enough: another listener may get it (seen
        in CI: HAProxy's SPOE check of a "dead" agent address ended in
        "Layer7 invalid response", what it reports when an HTTP listener
        answers its HELLO, not L4CON), and a client that keeps reconnecting
        may get it as its own source port (a TCP self-connect). A socket
        bound without listen() refuses every connection, and while it is
        held neither bind(0) nor a connect() can take the port."""
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.bind((host, 0))
        self._held.append(s)
        _handed_out.add((host, s.getsockname()[1]))
        return s.getsockname()[1]

    def write(self, name, text):
        p = self.path(name)
        with open(p, "w") as f:
            f.write(text)
        return p

    def spawn(self, name, argv, env=None, cwd=None):
        self._seq += 1
        out_path = self.path("%02d-%s.out" % (self._seq, name))
        err_path = self.path("%02d-%s.err" % (self._seq, name))
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                 env=full_env, cwd=cwd or self.dir, start_new_session=True)
        proc = Proc(name, argv, p, out_path, err_path)
        self.procs.append(proc)
        return proc

    def wait_ready(self, proc, pred, timeout, what):
        def check():
            if not proc.alive():
                raise AssertionError("%s exited early with %r" % (proc.name, proc.popen.returncode))
            return pred()
        try:
            wait_until(check, timeout, what="%s: %s" % (proc.name, what))
        except AssertionError:
            proc.dump()
            raise

    # ---- redis-server
    def start_redis(self, port=None, name="redis-server", extra=()):
        """redis-server on 127.0.0.1:port (a free port by default) without
        persistence, extra: more arguments; waits until it answers PING.
        The process's port is proc.port."""
        require_tool("redis-server")
        port = port or free_port()
        proc = self.spawn(name, ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                 "--save", "", "--appendonly", "no"] + list(extra))
        proc.expect_rc = (0, -signal.SIGTERM)
        proc.port = port
        self.wait_ready(proc, lambda: redis_ping(port), 10, "redis PING")
        return proc

    # ---- cedra-spoa
    def spoa_config(self, listen, threads=2, max_frame_size=16380, log_level="info",
                    locales=("fr", "nl", "en"), default_locale="fr", extra=""):
        listens = [listen] if isinstance(listen, str) else list(listen)
        # The suite runs as root (CI): the test daemons stay root on purpose,
        # so that they read the route tables and sockets in the tests' 0700
        # temporary directories (test_privileges.py covers "user").
        lines = ["# written by tests/integration/harness.py", "allow-root"]
        lines += ["listen %s" % l for l in listens]
        lines += ["threads %d" % threads,
                  "max-frame-size %d" % max_frame_size,
                  "log-level %s" % log_level,
                  "locales %s" % " ".join(locales),
                  "default-locale %s" % default_locale]
        if extra:
            lines.append(extra)
        self._seq += 1
        return self.write("%02d-cedra-spoa.conf" % self._seq, "\n".join(lines) + "\n")

    def start_spoa(self, port=None, host="127.0.0.1", unix_path=None, name="cedra-spoa",
                   wait=True, **conf):
        """Start cedra-spoa listening on host:port (free port by default) or on a
        UNIX socket; wait until it answers an SPOP health check."""
        binary = require_spoa()
        if unix_path:
            listen = "unix:%s" % unix_path
            addr = unix_path
        else:
            port = port or free_port(host)
            listen = "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)
            addr = (host, port)
        cfg = self.spoa_config(listen, **conf)
        proc = self.spawn(name, spoa_wrapper() + [binary, "-f", cfg])
        proc.addr = addr
        proc.port = port
        proc.config = cfg
        if wait:
            self.wait_ready(proc, lambda: spop_healthcheck(addr, timeout=1.0 * slow_factor()),
                            10 * slow_factor(), "SPOP health check on %r" % (addr,))
        return proc

    # ---- haproxy
    def start_origin(self, port=None, name="origin"):
        """A second HAProxy that plays the storefront: 200 <name> ("origin"),
        x-origin: 1, and x-xff-count: how many X-Forwarded-For lines came."""
        require_tool(haproxy_bin())
        port = port or free_port()
        cfg = self.write(name + ".cfg", (
            "global\n"
            "    nbthread 1\n"
            "    maxconn 2000\n"
            "defaults\n"
            "    mode http\n"
            "    timeout client 30s\n"
            "    timeout server 30s\n"
            "    timeout connect 2s\n"
            "frontend origin\n"
            "    bind 127.0.0.1:%d\n"
            "    http-request return status 200 content-type text/plain string \"%s\""
            " hdr x-origin 1 hdr x-xff-count \"%%[req.fhdr_cnt(x-forwarded-for)]\"\n") % (port, name))
        proc = self.spawn(name, [haproxy_bin(), "-db", "-f", cfg])
        proc.expect_rc = HAPROXY_STOP_RC
        proc.port = port
        self.wait_ready(proc, lambda: tcp_connectable("127.0.0.1", port), 10, "port %d" % port)
        return proc

    def start_haproxy(self, spoa_addr, origin_port, extra_env=None, cfg=None):
        """The shipped haproxy/haproxy.cfg, pointed at our ports by env vars."""
        require_tool(haproxy_bin())
        port = free_port()
        sock = self.path("haproxy.sock")
        if isinstance(spoa_addr, str):
            spoa = "unix@%s" % spoa_addr
        else:
            spoa = "%s:%d" % spoa_addr
        env = {
            "CEDRA_HTTP_BIND": "127.0.0.1:%d" % port,
            "CEDRA_SPOA_ADDR": spoa,
            "CEDRA_ORIGIN_ADDR": "127.0.0.1:%d" % origin_port,
            "CEDRA_HAPROXY_SOCK": sock,
            "CEDRA_NBTHREAD": "2",
            "CEDRA_SPOA_CHECK_INTER": "200ms",
            "CEDRA_ORIGIN_CHECK_INTER": "1s",
            "CEDRA_HAPROXY_LOG": "stderr",
            "CEDRA_HAPROXY_LOG_LEVEL": "info",
        }
        if slow_factor() > 1:
            env["CEDRA_SPOE_TIMEOUT_PROCESSING"] = "2s"
            env["CEDRA_SPOE_TIMEOUT_HELLO"] = "5s"
        if extra_env:
            env.update(extra_env)
        cfg = cfg or os.path.join(HAPROXY_DIR, "haproxy.cfg")
        proc = self.spawn("haproxy", [haproxy_bin(), "-db", "-f", cfg], env=env)
        proc.expect_rc = HAPROXY_STOP_RC
        proc.port = port
        proc.sock = sock
        proc.env = env
        self.wait_ready(proc, lambda: tcp_connectable("127.0.0.1", port) and os.path.exists(sock),
                        10, "port %d and stats socket" % port)
        return proc

    # ---- lifecycle
    def stop_all(self):
        for proc in reversed(self.procs):
            was_alive = proc.alive()
            rc = proc.stop(timeout=10 * (slow_factor() if proc.name.startswith("cedra-") else 1))
            if proc.expect_rc is not None and was_alive and rc not in proc.expect_rc:
                self.problems.append("%s (pid %d) exited with %r after SIGTERM, expected %r" % (
                    proc.name, proc.pid, rc, proc.expect_rc))
            elif proc.expect_rc is not None and not was_alive and rc not in proc.expect_rc:
                self.problems.append("%s (pid %d) had already exited with %r" % (
                    proc.name, proc.pid, rc))
            for report in memcheck_reports(proc.err_path):
                self.problems.append("%s (pid %d): %s" % (proc.name, proc.pid, report))
        for s in self._held:
            s.close()
        self._held = []

    def dump(self):
        sys.stderr.write("\n===== logs in %s =====\n" % self.dir)
        for proc in self.procs:
            proc.dump()

    def cleanup(self, keep=False):
        if keep or os.environ.get("CEDRA_KEEP_TMP"):
            sys.stderr.write("(kept %s)\n" % self.dir)
            return
        shutil.rmtree(self.dir, ignore_errors=True)


def _failed_count(result):
    return len(result.failures) + len(result.errors) + len(getattr(result, "unexpectedSuccesses", []))


class IntegrationTestCase(unittest.TestCase):
    """Per-test Env in self.env; class-level Env in cls.cenv (setUpClass may use
    it). Processes are stopped in tearDown; logs printed if the test failed."""

    cenv = None

    @classmethod
    def setUpClass(cls):
        cls.cenv = Env(cls.__name__)

    @classmethod
    def tearDownClass(cls):
        if cls.cenv is not None:
            cls.cenv.stop_all()
            problems = cls.cenv.problems
            if problems:
                cls.cenv.dump()
            cls.cenv.cleanup(keep=bool(problems))
            cls.cenv = None
            if problems:
                raise AssertionError("; ".join(problems))

    def setUp(self):
        self.env = Env(self._testMethodName)

    def tearDown(self):
        self.env.stop_all()
        if self.env.problems:
            self.fail("; ".join(self.env.problems))

    def run(self, result=None):
        if result is None:
            return super().run(result)
        before = _failed_count(result)
        try:
            return super().run(result)
        finally:
            env = getattr(self, "env", None)
            # unittest skips tearDown when setUp fails: what setUp started
            # must not outlive the test all the same.
            if env is not None:
                env.stop_all()
            failed = _failed_count(result) > before
            if failed:
                if env is not None:
                    env.dump()
                if self.cenv is not None:
                    sys.stderr.write("\n===== class-level processes =====\n")
                    for proc in self.cenv.procs:
                        proc.dump()
            if env is not None:
                env.cleanup(keep=failed)
