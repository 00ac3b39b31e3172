"""cedra-agent against the Consul double, the real HAProxy 2.6 (server-template
slots in storefront_stable / storefront_canary, filled over the Runtime API),
tiny HTTP origins (a second HAProxy answering "oN" with an x-instance header)
and the real cedra-spoa (its operator socket receives the pools and the canary
weight).

The edge HAProxy configuration is written here, mirroring the backend layout
proposed for haproxy/haproxy.cfg (default-server check ... fall 3 rise 2,
server-template ... disabled, canary chosen by txn.cedra.pool when the canary
backend has a usable server). There is no SPOE here: a request header plays
the part of cedra-spoa's pool choice (txn.cedra.pool).

The whole class shares one stack (about 1 s to start); every test starts by
putting the catalog back to its baseline and waiting for HAProxy to match.

Environment: CEDRA_AGENT (cedra-agent binary, default build/agent/cedra-agent),
CEDRA_SPOA (cedra-spoa binary), CEDRA_HAPROXY_BIN, CEDRA_WRK_BIN.
"""

import http.client
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "consul_double"))

import harness  # noqa: E402
from client import ConsulDouble  # noqa: E402

SVC = "storefront"
NORIGINS = 7
STABLE_SLOTS = 6
CANARY_SLOTS = 3


def connect_as(uid, path):
    """Connects to a UNIX socket as another user (forked child, setuid):
    "ok", "EACCES" or "error"."""
    pid = os.fork()
    if pid == 0:
        code = 2
        try:
            os.setgid(uid)
            os.setuid(uid)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                code = 0
            except PermissionError:
                code = 3
        except BaseException:  # noqa: BLE001 - the child must exit whatever happens
            code = 2
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return {0: "ok", 3: "EACCES"}.get(os.waitstatus_to_exitcode(status), "error")


def http_get(port, path="/", headers=None, timeout=5.0):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        body = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, body
    finally:
        c.close()


class Load(object):
    """Bounded background HTTP load (threads, one connection per request)
    counting failures and answers per origin."""

    def __init__(self, port, headers=None, threads=3):
        self.port, self.headers = port, headers or {}
        self.ok = self.fail = 0
        self.by = {}
        self.errors = []
        self.stop_ev = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for t in self.threads:
            t.start()

    def _run(self):
        while not self.stop_ev.is_set():
            try:
                st, h, _ = http_get(self.port, "/", self.headers, timeout=5.0)
                with self.lock:
                    if st == 200:
                        self.ok += 1
                        inst = h.get("x-instance", "?")
                        self.by[inst] = self.by.get(inst, 0) + 1
                    else:
                        self.fail += 1
                        self.errors.append("status %d" % st)
            except OSError as e:
                with self.lock:
                    self.fail += 1
                    self.errors.append(repr(e))

    def total(self):
        with self.lock:
            return self.ok + self.fail

    def stop(self):
        self.stop_ev.set()
        for t in self.threads:
            t.join(10)


class AgentTest(harness.IntegrationTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.double = None
        try:
            cls._start_stack()
        except BaseException:
            if cls.cenv is not None:
                cls.cenv.dump()
            cls._stop_double()
            cls.cenv.stop_all()
            raise

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()   # the agents first: they deregister from the double
        finally:
            cls._stop_double()

    @classmethod
    def _stop_double(cls):
        if cls.double is not None:
            cls.double.stop()
            cls.double = None

    # ---- the stack ---------------------------------------------------------------
    @classmethod
    def _start_stack(cls):
        env = cls.cenv
        harness.require_tool(harness.haproxy_bin())
        harness.require_agent()
        harness.require_spoa()

        # origins o1..oN: 200 "oN", x-instance: oN
        cls.oport = [harness.free_port() for _ in range(NORIGINS)]
        lines = ["global", "    nbthread 1", "defaults", "    mode http",
                 "    timeout connect 2s", "    timeout client 10s", "    timeout server 10s"]
        cls.backup_port = harness.free_port()
        for i, p in enumerate(cls.oport + [cls.backup_port]):
            name = "o%d" % (i + 1) if i < NORIGINS else "backup"
            lines += ["frontend %s" % name, "    bind 127.0.0.1:%d" % p,
                      "    http-request return status 200 content-type text/plain "
                      "string %s hdr x-instance %s" % (name, name)]
        ocfg = env.write("origins.cfg", "\n".join(lines) + "\n")
        cls.origins = env.spawn("origins", [harness.haproxy_bin(), "-db", "-f", ocfg])
        cls.origins.expect_rc = harness.HAPROXY_STOP_RC
        env.wait_ready(cls.origins, lambda: all(harness.tcp_connectable("127.0.0.1", p)
                                                for p in cls.oport), 10, "origin ports")

        # edge HAProxy with the slots (test-local copy of the proposed layout)
        cls.fe_port = harness.free_port()
        cls.hsock = env.path("haproxy.sock")
        cls.edge_cfg = env.write("edge.cfg", EDGE_CFG % {
            "sock": cls.hsock, "port": cls.fe_port, "stable": STABLE_SLOTS,
            "canary": CANARY_SLOTS, "backup": cls.backup_port})
        cls._start_edge()

        # Consul double, with a separate control port so that "refuse" works
        cls.double = ConsulDouble.start(control_port=0, stderr=open(env.path("double.err"), "wb"))
        cls.double.config(jitter=False)

        # cedra-spoa (real), its operator socket receives the pools
        cls.spoa_sock = env.path("spoa.sock")
        cls.spoa = env.start_spoa(threads=1, extra="stats-socket %s" % cls.spoa_sock)
        help_text = harness.unix_command(cls.spoa_sock, "help")
        if "set pool" not in help_text:
            raise unittest.SkipTest("this cedra-spoa has no 'set pool' command")

        cls.agent_sock = env.path("agent.sock")
        cls.metrics_port = harness.free_port()
        cls.agent_conf = env.write("cedra-agent.conf", AGENT_CONF % {
            "consul": cls.double.addr, "hsock": cls.hsock, "ssock": cls.spoa_sock,
            "asock": cls.agent_sock, "mport": cls.metrics_port})
        out = subprocess.run([harness.agent_bin(), "-c", "-f", cls.agent_conf], capture_output=True,
                             timeout=10)
        if out.returncode != 0:
            raise AssertionError("cedra-agent -c: %r" % out)
        cls.agent = env.spawn("cedra-agent",
                              harness.agent_wrapper() + [harness.agent_bin(), "-f", cls.agent_conf])
        env.wait_ready(cls.agent, lambda: os.path.exists(cls.agent_sock), 10, "operator socket")

    @classmethod
    def _start_edge(cls):
        env = cls.cenv
        cls.edge = env.spawn("edge", [harness.haproxy_bin(), "-db", "-f", cls.edge_cfg])
        cls.edge.expect_rc = harness.HAPROXY_STOP_RC
        env.wait_ready(cls.edge, lambda: harness.tcp_connectable("127.0.0.1", cls.fe_port) and
                       os.path.exists(cls.hsock), 10, "edge port and stats socket")

    # ---- helpers -------------------------------------------------------------------
    def cmd(self, command):
        return harness.unix_command(self.agent_sock, command)

    def inst(self, n, tags=(), build="b1", **kw):
        d = {"id": "o%d" % n, "address": "127.0.0.1", "port": self.oport[n - 1],
             "tags": list(tags), "meta": {"build_id": build}}
        d.update(kw)
        return d

    def set_catalog(self, *insts):
        self.double.set_service(SVC, list(insts))

    def wait_ports(self, backend, origins, timeout=5.0):
        want = sorted(self.oport[n - 1] for n in origins)
        harness.wait_until(lambda: harness.slot_ports(self.hsock, backend) == want, timeout,
                           interval=0.01, what="%s ready on origins %r" % (backend, origins))

    def wait_no_drain(self, timeout=6.0):
        def ok():
            return all(r["state"] != "drain" for b in ("storefront_stable", "storefront_canary")
                       for r in harness.servers_state(self.hsock, b).values())
        harness.wait_until(ok, timeout, what="no slot draining")

    def baseline(self):
        """o1..o3 stable (build b1), no canary; HAProxy matching; not paused."""
        self.double.clear_fault()
        if "Paused: 1" in self.cmd("show info"):
            self.cmd("resume")
        self.cmd("set canary weight auto")
        self.set_catalog(self.inst(1), self.inst(2), self.inst(3))
        want = sorted(self.oport[:3])

        def settled():
            if harness.slot_ports(self.hsock, "storefront_stable") == want:
                return "ok"
            return "panic" if self.services()["panic"] == "1" else None
        if harness.wait_until(settled, 5, what="baseline") == "panic":
            self.cmd("resync")   # a previous test left a much bigger pool
        self.wait_ports("storefront_stable", [1, 2, 3])
        self.wait_ports("storefront_canary", [])
        self.wait_no_drain()
        harness.wait_until(lambda: "panic=0" in self.cmd("show services"), 5,
                           what="no panic")

    def kick(self):
        """An answer now, given by a query that started after the last fault
        change (faults meet new queries): wake the one in flight, wait for
        its successor to park in the double, wake that one."""
        self.double.clear_requests()
        self.double.touch(SVC)
        self.double.wait_blocking(SVC, timeout=5)
        self.double.touch(SVC)

    def services(self):
        line = self.cmd("show services").splitlines()[0]
        kv = dict(re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', line))
        return kv

    def spoa_pools(self):
        text = harness.unix_command(self.spoa_sock, "show pools")
        rows = [l.split(",") for l in text.splitlines() if l and not l.startswith("#")]
        return {r[0]: {"key_prefix": r[1], "build": r[4], "weight": int(r[5])} for r in rows}

    def wait_spoa(self, pred, what, timeout=5.0):
        harness.wait_until(lambda: pred(self.spoa_pools()), timeout, what="cedra-spoa: " + what)

    def summary(self):
        """Like snapshot() but without slot names: what each backend serves."""
        return {b: sorted(v for v in snap.values() if v[0] != "maint")
                for b, snap in self.snapshot().items()}

    def cum_req(self):
        m = re.search(r"^CumReq: (\d+)$", harness.unix_command(self.hsock, "show info"), re.M)
        return int(m.group(1))

    def snapshot(self):
        return {b: {k: (v["state"], v["port"], v["weight"])
                    for k, v in harness.servers_state(self.hsock, b).items()}
                for b in ("storefront_stable", "storefront_canary")}

    def metrics(self):
        st, _, body = http_get(self.metrics_port, "/metrics")
        self.assertEqual(st, 200)
        return body.decode()

    @staticmethod
    def metric(text, name, **labels):
        for line in text.splitlines():
            if line.startswith("#") or not line.startswith(name):
                continue
            m = re.match(r"([a-z_]+)(\{[^}]*\})? (\S+)$", line)
            if not m or m.group(1) != name:
                continue
            got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            if all(got.get(k) == v for k, v in labels.items()):
                return float(m.group(3))
        raise AssertionError("metric %s%r not found" % (name, labels))

    # ---- tests -----------------------------------------------------------------------
    def test_01_initial_sync(self):
        # nothing in Consul yet: the backup server (not a slot) serves
        code, h, _ = http_get(self.fe_port)
        self.assertEqual((code, h.get("x-instance")), (200, "backup"))
        self.set_catalog(self.inst(1), self.inst(2), self.inst(3))
        self.wait_ports("storefront_stable", [1, 2, 3])
        st = harness.servers_state(self.hsock, "storefront_stable")
        self.assertEqual(sum(1 for r in st.values() if r["state"] == "maint"), STABLE_SLOTS - 3)
        seen = {}
        for _ in range(30):
            code, h, _ = http_get(self.fe_port)
            self.assertEqual(code, 200)
            seen[h["x-instance"]] = seen.get(h["x-instance"], 0) + 1
        self.assertEqual(set(seen), {"o1", "o2", "o3"}, seen)
        # the stable build went to cedra-spoa, no canary there
        self.wait_spoa(lambda p: p.get("stable", {}).get("build") == "b1" and "canary" not in p,
                       "stable b1")
        self.assertEqual(self.spoa_pools()["stable"]["key_prefix"], "storefront:b1:")
        servers = self.cmd("show servers")
        self.assertRegex(servers, r"storefront,storefront_stable,stable,stable\d,ready,127\.0\.0\.1,"
                                  r"%d,1,o1,b1," % self.oport[0])

    def test_02_scale_up_and_down_under_wrk(self):
        wrk = harness.require_tool(harness.wrk_bin())
        self.baseline()
        out_path = self.cenv.path("wrk.out")
        with open(out_path, "wb") as out:
            w = subprocess.Popen([wrk, "-t2", "-c8", "-d5s", "--timeout", "3s",
                                  "http://127.0.0.1:%d/" % self.fe_port],
                                 stdout=out, stderr=subprocess.STDOUT)
        try:
            base = self.cum_req()
            harness.wait_until(lambda: self.cum_req() > base + 200, 5, what="wrk load flowing")
            self.set_catalog(*[self.inst(n) for n in (1, 2, 3, 4, 5)])      # scale up
            self.wait_ports("storefront_stable", [1, 2, 3, 4, 5])
            self.set_catalog(*[self.inst(n) for n in (2, 3, 4, 5)])         # scale down
            self.wait_ports("storefront_stable", [2, 3, 4, 5])
            self.wait_no_drain()
            self.set_catalog(*[self.inst(n) for n in (3, 5)])               # two at once
            self.wait_ports("storefront_stable", [3, 5])
            self.wait_no_drain()
            self.set_catalog(*[self.inst(n) for n in (1, 3, 5)])
            self.wait_ports("storefront_stable", [1, 3, 5])
            w.wait(20)
        finally:
            if w.poll() is None:
                w.kill()
                w.wait()
        with open(out_path, errors="replace") as f:
            report = f.read()
        self.assertEqual(w.returncode, 0, report)
        m = re.search(r"(\d+) requests in", report)
        self.assertTrue(m and int(m.group(1)) > 500, report)
        self.assertNotIn("Non-2xx", report)
        self.assertNotIn("Socket errors", report)
        sys.stderr.write("\nwrk during scale up/down: %s requests, 0 failed\n" % m.group(1))

    def test_03_canary_weight_and_spoa(self):
        self.baseline()
        self.set_catalog(self.inst(1), self.inst(2), self.inst(3),
                         self.inst(4, tags=["canary"], build="b2"))
        self.wait_ports("storefront_canary", [4])
        code, h, _ = http_get(self.fe_port, headers={"x-test-pool": "canary"})
        self.assertEqual(h.get("x-instance"), "o4")
        code, h, _ = http_get(self.fe_port)
        self.assertIn(h.get("x-instance"), ("o1", "o2", "o3"))
        # the canary pool and the configured share (10) reach cedra-spoa
        self.wait_spoa(lambda p: p.get("canary", {}).get("build") == "b2" and
                       p["canary"]["weight"] == 10 and p["stable"]["build"] == "b1",
                       "canary b2 at 10%")
        self.assertEqual(self.spoa_pools()["canary"]["key_prefix"], "storefront:b2:")
        text = self.cmd("show canary")
        self.assertIn("Canary_builds: b2:1", text)
        self.assertIn("Weight: 10\nWeight_source: config", text)
        # Consul Meta overrides the configuration ...
        self.double.update_instance(SVC, "o4", meta={"build_id": "b2", "canary_weight": "25"})
        self.wait_spoa(lambda p: p.get("canary", {}).get("weight") == 25, "weight 25 (meta)")
        self.assertIn("Weight_source: consul-meta", self.cmd("show canary"))
        # ... and the operator overrides both, until "auto"
        self.assertEqual(self.cmd("set canary weight 40"), "\n")
        self.wait_spoa(lambda p: p.get("canary", {}).get("weight") == 40, "weight 40 (operator)")
        self.assertIn("Weight: 40\nWeight_source: operator", self.cmd("show canary"))
        self.assertEqual(self.cmd("set canary weight auto"), "\n")
        self.wait_spoa(lambda p: p.get("canary", {}).get("weight") == 25, "weight back to 25")
        m = self.metrics()
        self.assertEqual(self.metric(m, "cedra_agent_canary_weight_ratio"), 0.25)
        self.assertEqual(self.metric(m, "cedra_agent_canary_instances"), 1)

    def test_04_promotion_without_failure(self):
        self.baseline()
        self.set_catalog(self.inst(1), self.inst(2), self.inst(4, tags=["canary"], build="b2"))
        self.wait_ports("storefront_canary", [4])
        self.wait_ports("storefront_stable", [1, 2])
        canary_load = Load(self.fe_port, {"x-test-pool": "canary"})
        stable_load = Load(self.fe_port)
        try:
            harness.wait_until(lambda: canary_load.total() > 50 and stable_load.total() > 50, 10,
                               what="load flowing")
            # Nomad promotion: the tags flip in place, same instance, same id.
            # Pools follow builds: b2 keeps its backend and pool (now taking
            # every new user) while b1 still serves the users pinned to it.
            self.double.update_instance(SVC, "o4", tags=[])
            self.wait_spoa(lambda p: p.get("canary", {}).get("build") == "b2" and
                           p["canary"]["weight"] == 100 and p["stable"]["build"] == "b1",
                           "promoted canary takes every new user")
            self.wait_ports("storefront_canary", [4])
            self.wait_ports("storefront_stable", [1, 2])
            n = canary_load.total()
            harness.wait_until(lambda: canary_load.total() > n + 50, 10, what="load after the flip")
            # The rollout replaces the b1 allocations: once none is left, b2 is
            # the stable build and moves to the stable backend.
            self.set_catalog(self.inst(4, build="b2"), self.inst(5, build="b2"))
            self.wait_ports("storefront_stable", [4, 5])
            self.wait_ports("storefront_canary", [])
            self.wait_no_drain()
            self.wait_spoa(lambda p: "canary" not in p and p["stable"]["build"] == "b2",
                           "stable is b2, canary off")
            n = canary_load.total()
            harness.wait_until(lambda: canary_load.total() > n + 50, 10, what="load after")
        finally:
            canary_load.stop()
            stable_load.stop()
        self.assertEqual(canary_load.fail, 0, canary_load.errors[:5])
        self.assertEqual(stable_load.fail, 0, stable_load.errors[:5])
        self.assertGreater(canary_load.by.get("o4", 0), 0)
        # canary users never reached a b1 instance after the flip... they are
        # served by b2 (o4, then o4/o5 in the stable backend)
        self.assertTrue(set(canary_load.by) <= {"o1", "o2", "o4", "o5"}, canary_load.by)

    def test_05_revert_without_failure(self):
        self.baseline()
        self.set_catalog(self.inst(1), self.inst(2), self.inst(3),
                         self.inst(6, tags=["canary"], build="b3"))
        self.wait_ports("storefront_canary", [6])
        self.wait_spoa(lambda p: p.get("canary", {}).get("build") == "b3", "canary b3")
        load = Load(self.fe_port, {"x-test-pool": "canary"})
        try:
            harness.wait_until(lambda: load.by.get("o6", 0) > 30, 10, what="canary load")
            self.double.remove_instance(SVC, "o6")     # auto-revert: the canary is gone
            self.wait_spoa(lambda p: "canary" not in p, "canary off")
            self.wait_ports("storefront_canary", [])
            self.wait_no_drain()
            n = load.total()
            harness.wait_until(lambda: load.total() > n + 50, 10, what="load after the revert")
        finally:
            load.stop()
        self.assertEqual(load.fail, 0, load.errors[:5])
        self.assertTrue({"o1", "o2", "o3"} & set(load.by), load.by)
        row = harness.servers_state(self.hsock, "storefront_canary")
        self.assertTrue(all(r["state"] == "maint" for k, r in row.items() if k != "relay"), row)

    def test_06_consul_faults_keep_the_pools(self):
        self.baseline()
        self.set_catalog(*[self.inst(n) for n in (1, 2, 3, 4)])
        self.wait_ports("storefront_stable", [1, 2, 3, 4])
        self.wait_no_drain()
        before = self.snapshot()

        # Consul down (connections refused), then back
        self.double.fault("refuse")
        harness.wait_until(lambda: int(self.services()["failures"]) >= 2, 5,
                           what="the watch failing")
        self.assertEqual(self.snapshot(), before)
        self.assertRegex(self.services()["errors"], r"connect:[1-9]")
        self.double.clear_fault()
        self.double.touch(SVC)   # an answer now rather than at the end of a blocking wait
        harness.wait_until(lambda: self.services()["failures"] == "0", 5, what="recovery")

        # 403 (ACL): the in-flight query is woken by a touch, the next one gets 403
        self.double.fault("403", scope="health")
        self.double.touch(SVC)
        harness.wait_until(lambda: re.search(r"http_403:[1-9]", self.services()["errors"]), 5,
                           what="a 403")
        self.assertEqual(self.snapshot(), before)
        self.double.clear_fault()
        self.double.touch(SVC)
        harness.wait_until(lambda: self.services()["failures"] == "0", 5, what="recovery")

        # an empty answer (200 []) is refused: panic, pools unchanged
        refused0 = int(self.services()["refused"])
        self.double.fault("empty", scope="health")
        # like 403, the fault meets new queries: wake the one in flight, wait
        # for its successor to park, then wake that one
        self.kick()
        harness.wait_until(lambda: int(self.services()["refused"]) > refused0, 5,
                           what="the empty answer refused")
        kv = self.services()
        self.assertEqual(kv["panic"], "1")
        self.assertIn("empty", kv["panic_reason"])
        self.assertEqual(self.snapshot(), before)
        self.assertIn("Panic: 1", self.cmd("show info"))
        self.assertEqual(self.metric(self.metrics(), "cedra_agent_panic", service=SVC), 1)
        self.double.clear_fault()
        self.kick()
        harness.wait_until(lambda: self.services()["panic"] == "0", 5, what="panic cleared")

        # far fewer instances than before (1 of 4 < panic-ratio 0.5): refused too
        self.set_catalog(self.inst(1))
        harness.wait_until(lambda: self.services()["panic"] == "1", 5, what="panic on 1/4")
        self.assertEqual(self.snapshot(), before)

        # index going backwards: the agent resets and keeps the pools
        resets0 = int(self.services()["resets"])
        self.double.reset_index(SVC, index=2)
        harness.wait_until(lambda: int(self.services()["resets"]) > resets0, 5,
                           what="index reset seen")
        self.assertEqual(self.snapshot(), before)

        # recovery: Consul says 3 of 4 again (within the ratio) -> applied
        self.set_catalog(self.inst(1), self.inst(2), self.inst(4))
        self.wait_ports("storefront_stable", [1, 2, 4])
        self.assertEqual(self.services()["panic"], "0")

    def test_07_resync_accepts_a_refused_answer(self):
        self.baseline()
        self.set_catalog(self.inst(1), self.inst(2), self.inst(3), self.inst(4))
        self.wait_ports("storefront_stable", [1, 2, 3, 4])
        self.set_catalog(self.inst(5))          # 1 of 4: refused
        harness.wait_until(lambda: self.services()["panic"] == "1", 5, what="panic")
        self.assertEqual(harness.slot_ports(self.hsock, "storefront_stable"),
                         sorted(self.oport[:4]))
        self.assertEqual(self.cmd("resync"), "\n")   # the operator says it is real
        self.wait_ports("storefront_stable", [5])
        self.assertEqual(self.services()["panic"], "0")

    def test_08_haproxy_restart_restores_every_slot(self):
        self.baseline()
        self.set_catalog(self.inst(1), self.inst(2), self.inst(3),
                         self.inst(4, tags=["canary"], build="b2"))
        self.wait_ports("storefront_canary", [4])
        self.wait_no_drain()
        before = self.summary()
        restarts0 = self.metric(self.metrics(), "cedra_agent_haproxy_restarts_total")
        self.edge.stop()
        self.__class__._start_edge()
        t0 = time.monotonic()   # the new HAProxy answers on its socket from here
        harness.wait_until(lambda: self.summary() == before, 2.0, interval=0.005,
                           what="every slot restored within 2 s")
        took = time.monotonic() - t0
        sys.stderr.write("\nHAProxy restart: slots restored %.0f ms after its socket was up\n"
                         % (took * 1000))
        self.assertLess(took, 2.0)
        code, h, _ = http_get(self.fe_port, headers={"x-test-pool": "canary"})
        self.assertEqual((code, h.get("x-instance")), (200, "o4"))
        harness.wait_until(lambda: self.metric(self.metrics(),
                                               "cedra_agent_haproxy_restarts_total") > restarts0,
                           3, what="restart counted")
        # paused: HAProxy gets no update, but a restarted one gets back what it had
        self.assertEqual(self.cmd("pause"), "\n")
        self.edge.stop()
        self.__class__._start_edge()
        harness.wait_until(lambda: self.summary() == before, 2.0, interval=0.005,
                           what="slots restored while paused")
        self.assertEqual(self.cmd("resume"), "\n")

    def test_09_registration_and_deregistration(self):
        self.baseline()
        # the long-running agent: registered, its TTL check passing
        def passing():
            reg = self.double.registrations()
            chk = reg["checks"].get("service:cedra-agent-test")
            return reg["services"].get("cedra-agent-test") and chk and \
                chk["Status"] == "passing" and chk
        chk = harness.wait_until(passing, 5, what="agent registered and passing")
        self.assertIn("HAProxy", chk.get("Output", ""))
        svc = self.double.registrations()["services"]["cedra-agent-test"]
        self.assertEqual(svc["Service"], "cedra-agent")
        self.assertEqual(svc["Port"], self.metrics_port)
        self.assertIn("edge", svc["Tags"])

        # a second agent with an unreachable HAProxy: registered, check critical
        # (its health is its HAProxy rounds), deregistered on SIGTERM, exit 0
        env = self.env
        conf = env.write("second.conf", (
            "allow-root\nservice %s\nconsul-addr %s\nhaproxy-socket %s\nstats-socket %s\nmetrics none\n"
            "register cedra-agent id cedra-agent-second ttl 1s\nhealth-window 500ms\n"
            "reconcile-interval 100ms\n") % (SVC, self.double.addr, env.path("nothing.sock"),
                                          env.path("second.sock")))
        p = env.spawn("cedra-agent-second", harness.agent_wrapper() + [harness.agent_bin(), "-f", conf])

        def critical():
            reg = self.double.registrations()
            chk = reg["checks"].get("service:cedra-agent-second")
            return chk and chk["Status"] == "critical" and "HAProxy" in chk.get("Output", "")
        harness.wait_until(critical, 5, what="second agent registered, check critical")
        self.assertEqual(p.stop(), 0)
        reg = self.double.registrations()
        self.assertNotIn("cedra-agent-second", reg["services"])
        self.assertTrue(any(d["ID"] == "cedra-agent-second" for d in reg["deregistered"]))

    def test_10_operator_commands(self):
        self.baseline()
        mode = stat.S_IMODE(os.stat(self.agent_sock).st_mode)
        self.assertEqual(mode, 0o600)
        help_text = self.cmd("help")
        for c in ("show info", "show services", "show servers", "show canary",
                  "set canary weight", "pause", "resume", "resync", "show metrics",
                  "show stat", "set log-level"):
            self.assertIn(c, help_text)
        info = self.cmd("show info")
        for k in ("Name: cedra-agent", "Version: ", "Pid: %d" % self.agent.pid, "Uptime_sec: ",
                  "Consul: http://%s" % self.double.addr, "Haproxy_socket: %s" % self.hsock,
                  "Paused: 0", "Panic: 0", "Spoa_socket: %s" % self.spoa_sock):
            self.assertIn(k, info)
        self.assertTrue(info.endswith("\n\n"))
        self.assertIn("storefront index=", self.cmd("show services"))
        self.assertIn("# service,backend,pool,slot,state", self.cmd("show servers storefront"))
        self.assertEqual(self.cmd("show servers nope"), "error: no such service 'nope'\n\n")
        self.assertIn("Weight_source: config", self.cmd("show canary"))
        for bad in ("set canary weight 101", "set canary weight abc", "set canary weight -1"):
            self.assertTrue(self.cmd(bad).startswith("error: bad weight"), bad)
        self.assertTrue(self.cmd("set canary weight").startswith("error: usage"))
        self.assertTrue(self.cmd("show nothing").startswith("error:"))
        self.assertTrue(self.cmd("resume").startswith("error: not paused"))
        self.assertTrue(self.cmd("set log-level loud").startswith("error: usage"))
        self.assertEqual(self.cmd("set log-level info"), "\n")
        self.assertIn("rounds_ok,,", self.cmd("show stat"))
        self.assertIn("# TYPE cedra_agent_reconcile_rounds_total counter", self.cmd("show metrics"))
        # two commands on one line, HAProxy style
        both = self.cmd("show canary; show stat")
        self.assertIn("Weight:", both)
        self.assertIn("rounds_ok", both)

        # pause freezes HAProxy updates; resume applies what Consul says
        self.assertEqual(self.cmd("pause"), "\n")
        self.assertTrue(self.cmd("pause").startswith("error: already paused"))
        self.assertIn("Paused: 1", self.cmd("show info"))
        before = self.snapshot()
        self.set_catalog(self.inst(1), self.inst(2), self.inst(3), self.inst(5))
        harness.wait_until(lambda: "stable=4" in self.cmd("show services"), 5,
                           what="the change seen while paused")
        rounds = self.metric(self.metrics(), "cedra_agent_reconcile_rounds_total", result="ok")
        harness.wait_until(lambda: self.metric(self.metrics(), "cedra_agent_reconcile_rounds_total",
                                               result="ok") > rounds + 1, 5,
                           what="rounds go on while paused")
        self.assertEqual(self.snapshot(), before)
        self.assertEqual(self.metric(self.metrics(), "cedra_agent_paused"), 1)
        self.assertEqual(self.cmd("resume"), "\n")
        self.wait_ports("storefront_stable", [1, 2, 3, 5])

        # 0600 refuses another user
        if os.geteuid() == 0:
            # the directory must not be what stops it: only the socket's mode
            os.chmod(self.cenv.dir, 0o755)
            self.addCleanup(os.chmod, self.cenv.dir, 0o700)
            self.assertEqual(connect_as(65534, self.agent_sock), "EACCES",
                             "another user could connect")

    def test_11_metrics_promtool_and_counters(self):
        promtool = shutil.which("promtool") or "/usr/bin/promtool"
        if not os.access(promtool, os.X_OK):
            self.skipTest("promtool not installed")
        self.baseline()
        m0 = self.metrics()
        self.set_catalog(self.inst(1), self.inst(2))
        self.wait_ports("storefront_stable", [1, 2])
        self.wait_no_drain()
        harness.wait_until(lambda: self.metric(self.metrics(), "cedra_agent_slots_used",
                                               backend="storefront_stable") == 2, 3,
                           what="slots_used 2")
        m1 = self.metrics()
        out = subprocess.run([promtool, "check", "metrics"], input=m1.encode(),
                             capture_output=True, timeout=20)
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        for name, labels in (("cedra_agent_consul_updates_total", {"service": SVC}),
                             ("cedra_agent_reconcile_rounds_total", {"result": "ok"}),
                             ("cedra_agent_haproxy_api_commands_total", {})):
            self.assertGreater(self.metric(m1, name, **labels), self.metric(m0, name, **labels),
                               name)
        self.assertEqual(self.metric(m1, "cedra_agent_pool_instances", service=SVC,
                                     pool="stable"), 2)
        self.assertEqual(self.metric(m1, "cedra_agent_slots_free", backend="storefront_stable"),
                         STABLE_SLOTS - 2)
        self.assertGreater(self.metric(m1, "cedra_agent_consul_request_duration_seconds_count"), 0)
        self.assertEqual(self.metric(m1, "cedra_agent_consul_registered"), 1)
        self.assertGreaterEqual(self.metric(m1, "cedra_agent_consul_errors_total", service=SVC,
                                            kind="connect"), 0)
        self.assertEqual(self.metric(m1, "cedra_agent_spoa_in_sync"), 1)
        self.assertGreater(self.metric(m1, "cedra_agent_spoa_pushes_total", result="ok"), 0)

    def test_12_spoa_restart_gets_everything_again(self):
        self.baseline()
        self.set_catalog(self.inst(1), self.inst(2), self.inst(4, tags=["canary"], build="b2"))
        self.wait_spoa(lambda p: p.get("canary", {}).get("build") == "b2", "canary b2")
        self.cmd("set canary weight 30")
        self.wait_spoa(lambda p: p.get("canary", {}).get("weight") == 30, "weight 30")
        old = self.__class__.spoa
        old.stop()
        # while it is down the agent retries; a new process starts with no pool
        self.set_catalog(self.inst(1), self.inst(2), self.inst(3),
                         self.inst(4, tags=["canary"], build="b2"))
        self.wait_ports("storefront_stable", [1, 2, 3])
        self.__class__.spoa = self.cenv.start_spoa(threads=1,
                                                   extra="stats-socket %s" % self.spoa_sock)
        self.wait_spoa(lambda p: p.get("stable", {}).get("build") == "b1" and
                       p.get("canary", {}).get("build") == "b2" and
                       p["canary"]["weight"] == 30, "everything pushed again", timeout=8)
        self.assertIn("Spoa: in-sync", self.cmd("show canary"))

    def test_14_weights_and_more_instances_than_slots(self):
        self.baseline()
        # Consul Weights.Passing -> HAProxy weight
        self.set_catalog(self.inst(1, weights={"passing": 3, "warning": 1}), self.inst(2),
                         self.inst(3))
        harness.wait_until(lambda: any(r["port"] == self.oport[0] and r["weight"] == 3
                                       for r in harness.servers_state(
                                           self.hsock, "storefront_stable").values()),
                           5, what="weight 3 on o1's slot")
        # 7 instances, 6 slots: one left out, said once in the log and in a metric
        self.set_catalog(*[self.inst(n) for n in range(1, NORIGINS + 1)])
        harness.wait_until(lambda: self.metric(self.metrics(), "cedra_agent_instances_without_slot",
                                               backend="storefront_stable") == 1, 5,
                           what="instances_without_slot 1")
        self.assertEqual(len(harness.slot_ports(self.hsock, "storefront_stable")), STABLE_SLOTS)
        self.assertEqual(self.agent.stderr_text().count("event=slots_exhausted"), 1)
        self.set_catalog(*[self.inst(n) for n in range(1, 5)])   # 4/7: above panic-ratio
        self.wait_ports("storefront_stable", [1, 2, 3, 4])
        harness.wait_until(lambda: "event=slots_available" in self.agent.stderr_text(), 5,
                           what="slots_available logged")

    # ---- the last canary server waits for cedra-spoa ----------------------------------
    def _reload_conf(self, text):
        n = self.agent.stderr_text().count("event=reloaded")
        with open(self.agent_conf, "w") as f:
            f.write(text)
        self.agent.signal(signal.SIGHUP)
        harness.wait_until(lambda: self.agent.stderr_text().count("event=reloaded") > n,
                           5 * harness.slow_factor(), what="configuration reloaded")

    def _revert_with_spoa_stopped(self, build):
        """A live canary (o6) reverted while cedra-spoa cannot answer
        (SIGSTOP: its socket accepts, nothing comes back). Returns the
        agent's log from there on, and continues cedra-spoa at cleanup."""
        self.baseline()
        self.set_catalog(self.inst(1), self.inst(2), self.inst(3),
                         self.inst(6, tags=["canary"], build=build))
        self.wait_ports("storefront_canary", [6])
        self.wait_spoa(lambda p: p.get("canary", {}).get("build") == build, "canary " + build)
        mark = len(self.agent.stderr_text())
        self.spoa.signal(signal.SIGSTOP)
        self.addCleanup(self.spoa.signal, signal.SIGCONT)
        self.double.remove_instance(SVC, "o6")
        harness.wait_until(lambda: "Canary_drain_held: -" not in self.cmd("show canary"),
                           5 * harness.slow_factor(), what="the canary drain held")
        return mark

    def test_15_last_canary_drains_once_spoa_confirms(self):
        with open(self.agent_conf) as f:
            original = f.read()
        # long enough that only cedra-spoa's answer can end the wait here
        self._reload_conf(original + "canary-drain-wait 120s\n")
        self.addCleanup(self._reload_conf, original)
        confirmed = self.metric(self.metrics(), "cedra_agent_canary_drain_waits_total",
                                result="confirmed")
        mark = self._revert_with_spoa_stopped("b4")
        # cedra-spoa still pins users to the canary: its server keeps taking them
        self.assertEqual(harness.slot_ports(self.hsock, "storefront_canary"), [self.oport[5]])
        _, h, _ = http_get(self.fe_port, headers={"x-test-pool": "canary"})
        self.assertEqual(h.get("x-instance"), "o6")
        self.spoa.signal(signal.SIGCONT)
        self.wait_spoa(lambda p: "canary" not in p, "canary off", timeout=5 * harness.slow_factor())
        self.wait_ports("storefront_canary", [], timeout=5 * harness.slow_factor())
        log = self.agent.stderr_text()[mark:]
        held = log.index("event=canary_drain_held")
        acked = log.index("event=spoa_pushed cmd=\"set pool canary off\"")
        released = log.index("event=canary_drain_released")
        self.assertLess(held, released)
        self.assertLess(acked, released)
        self.assertIn("reason=spoa-confirmed", log[released:].splitlines()[0])
        self.assertNotIn("canary_drain_unconfirmed", log)
        self.assertEqual(self.metric(self.metrics(), "cedra_agent_canary_drain_waits_total",
                                     result="confirmed"), confirmed + 1)
        self.assertIn("Canary_drain_held: -", self.cmd("show canary"))

    def test_16_last_canary_drains_anyway_when_spoa_never_confirms(self):
        timeouts = self.metric(self.metrics(), "cedra_agent_canary_drain_waits_total",
                               result="timeout")
        mark = self._revert_with_spoa_stopped("b5")
        # canary-drain-wait (2 s by default) over: drained without cedra-spoa
        self.wait_ports("storefront_canary", [], timeout=10 * harness.slow_factor())
        log = self.agent.stderr_text()[mark:]
        self.assertIn("event=canary_drain_unconfirmed", log)
        self.assertNotIn("event=canary_drain_released", log)
        waited = log[log.index("event=canary_drain_held"):
                     log.index("event=canary_drain_unconfirmed")]
        self.assertNotIn("event=spoa_pushed cmd=\"set pool canary off\"", waited)
        self.assertEqual(self.metric(self.metrics(), "cedra_agent_canary_drain_waits_total",
                                     result="timeout"), timeouts + 1)
        self.spoa.signal(signal.SIGCONT)
        self.wait_spoa(lambda p: "canary" not in p, "canary off", timeout=5 * harness.slow_factor())

    def test_13_sighup_reload(self):
        self.baseline()
        with open(self.agent_conf) as f:
            original = f.read()
        self.addCleanup(self._restore_conf, original)
        with open(self.agent_conf, "w") as f:
            f.write(original.replace("canary-weight 10", "canary-weight 20"))
        self.agent.signal(signal.SIGHUP)
        harness.wait_until(lambda: "Weight_config: 20" in self.cmd("show canary"), 5,
                           what="canary-weight reloaded")
        with open(self.agent_conf, "w") as f:
            f.write(original + "nonsense here\n")
        self.agent.signal(signal.SIGHUP)
        harness.wait_until(lambda: "event=reload_failed" in self.agent.stderr_text(), 5,
                           what="reload_failed logged")
        self.assertIn("Weight_config: 20", self.cmd("show canary"))   # still running, unchanged

    def _restore_conf(self, text):
        with open(self.agent_conf, "w") as f:
            f.write(text)
        self.agent.signal(signal.SIGHUP)
        harness.wait_until(lambda: "Weight_config: 10" in self.cmd("show canary"), 5,
                           what="configuration restored")


class AgentConfigDocsTest(unittest.TestCase):
    """cedra-agent -c/-v, and every configuration keyword and socket command
    of the code appears in docs/cedra-agent.8."""

    def setUp(self):
        harness.require_agent()

    def run_agent(self, *args):
        return subprocess.run([harness.agent_bin()] + list(args), capture_output=True, timeout=10,
                              text=True)

    def test_every_keyword_and_command_is_documented(self):
        with open(os.path.join(harness.REPO, "agent", "conf.c")) as f:
            kws = set(re.findall(r'!strcmp\(kw, "([a-z-]+)"\)', f.read()))
        with open(os.path.join(harness.REPO, "agent", "agent_cli.c")) as f:
            cmds = set(re.findall(r'\{\s*"([a-z][a-z -]*)",\s*"', f.read()))
        with open(os.path.join(harness.REPO, "docs", "cedra-agent.8")) as f:
            man = f.read().replace("\\-", "-")
        self.assertGreater(len(kws), 30)
        self.assertGreaterEqual(len(cmds), 11)
        missing = [k for k in sorted(kws) if not re.search(r"^\.BI? %s(\s|$)" % re.escape(k), man,
                                                             re.M)]
        self.assertEqual(missing, [], "keywords missing from cedra-agent.8")
        self.assertEqual([c for c in sorted(cmds) if c not in man], [],
                         "commands missing from cedra-agent.8")
        example = os.path.join(harness.REPO, "docs", "cedra-agent.conf")
        out = self.run_agent("-c", "-f", example)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("Configuration file is valid", out.stdout)

    def test_version_and_bad_configurations(self):
        out = self.run_agent("-v")
        self.assertEqual(out.returncode, 0)
        self.assertRegex(out.stdout, r"^cedra-agent \d+\.\d+")
        d = tempfile.mkdtemp(prefix="cedra-agent-conf-")
        self.addCleanup(shutil.rmtree, d, True)
        cases = {
            "": "no 'service'",
            "service storefront\nfrobnicate 1\n": "unknown keyword 'frobnicate'",
            "service storefront\ncanary-weight 101\n": "canary-weight",
            "service storefront\npanic-ratio 2\n": "panic-ratio",
            "service storefront\nspoa-socket /run/x.sock\n": "key-prefix",
            "service storefront\nkey-prefix sf:%{nope}:\n": "unknown %{variable}",
            "service a\nservice b\n": "service b: backend-stable is required",
            "service storefront\ndrain-grace 1s\ndrain-min 2s\n": "drain-min",
            "service storefront\nreconcile-interval 1x\n": "bad duration",
        }
        for i, (text, want) in enumerate(cases.items()):
            path = os.path.join(d, "c%d.conf" % i)
            with open(path, "w") as f:
                f.write(text)
            out = self.run_agent("-c", "-f", path)
            self.assertEqual(out.returncode, 1, text)
            self.assertIn(want, out.stderr, text)


EDGE_CFG = """\
global
    stats socket %(sock)s mode 600 level admin
    stats timeout 30s
    hard-stop-after 5s
    nbthread 2

defaults
    mode http
    timeout connect 2s
    timeout client 10s
    timeout server 10s
    timeout queue 5s
    retries 3
    option redispatch

frontend fe_http
    bind 127.0.0.1:%(port)d
    # cedra-spoa sets txn.cedra.pool; here a header plays its part
    http-request set-var(txn.cedra.pool) str(canary) if { req.hdr(x-test-pool) -m str canary }
    use_backend storefront_canary if { var(txn.cedra.pool) -m str canary }
    default_backend storefront_stable

# as in haproxy/haproxy.cfg: a canary pool with no usable server relays to stable
frontend cedra_relay
    bind unix@%(sock)s.relay mode 600
    default_backend storefront_stable

backend storefront_stable
    balance roundrobin
    option forwardfor
    default-server check inter 1s fall 3 rise 2
    server-template stable 1-%(stable)d 0.0.0.0:0 disabled
    # used only while no slot is usable; not a slot, so cedra-agent leaves it alone
    server origin 127.0.0.1:%(backup)d check inter 1s backup

backend storefront_canary
    balance roundrobin
    option forwardfor
    default-server check inter 1s fall 3 rise 2
    server-template canary 1-%(canary)d 0.0.0.0:0 disabled
    server relay unix@%(sock)s.relay backup no-check
"""

AGENT_CONF = """\
# written by tests/integration/test_agent.py
allow-root
service storefront
canary-tag canary
build-key build_id
canary-weight-key canary_weight
canary-weight 10
panic-ratio 0.5
consul-addr %(consul)s
consul-wait 5s
consul-retry 50ms 300ms
consul-rate 100 10ms
consul-same-index-interval 50ms
haproxy-socket %(hsock)s
backend stable storefront_stable slots stable
backend canary storefront_canary slots canary
reconcile-interval 300ms
drain-interval 50ms
drain-grace 3s
spoa-socket %(ssock)s
spoa-verify-interval 200ms
key-prefix storefront:%%{build}:
routes pathname
register cedra-agent id cedra-agent-test tags edge,cedra ttl 2s
stats-socket %(asock)s mode 600
metrics 127.0.0.1:%(mport)d
log-level info
"""


if __name__ == "__main__":
    unittest.main()
