"""HAProxy restarted by someone else keeps its pools: cedra-agent writes
HAProxy's server-state-file ("server-state-file" in its configuration) after
each round that changed the slots, and the shipped haproxy.cfg loads it at
start when CEDRA_SERVER_STATE_FILE is set.

The agent is paused before HAProxy is restarted, so that it cannot refill the
slots itself: what the new HAProxy serves comes from the file alone. The same
restart without the variable comes back with empty slots (the control: the
file, not the agent, restored them)."""

import os
import signal
import subprocess
import time
import unittest

import harness
from test_edge_canary import AGENT_CONF, SVC, ConsulDouble, haproxy_dir, request


class StateFileTest(harness.IntegrationTestCase):
    def setUp(self):
        super().setUp()
        harness.require_tool(harness.haproxy_bin())
        harness.require_agent()
        env = self.env
        self.origin = {}
        for name in ("s1", "s2", "c1", "backup"):
            port = harness.free_port()
            ocfg = env.write("origin-%s.cfg" % name, (
                "global\n    nbthread 1\n"
                "defaults\n    mode http\n    timeout connect 2s\n    timeout client 10s\n"
                "    timeout server 10s\n"
                "frontend o\n    bind 127.0.0.1:%d\n"
                "    http-request return status 200 content-type text/plain string %s"
                " hdr x-instance %s hdr x-build %s\n") % (
                    port, name, name, "b2" if name == "c1" else "b1"))
            p = env.spawn("origin-" + name, [harness.haproxy_bin(), "-db", "-f", ocfg])
            p.expect_rc = harness.HAPROXY_STOP_RC
            p.port = port
            self.origin[name] = p
        for p in self.origin.values():
            env.wait_ready(p, lambda p=p: harness.tcp_connectable("127.0.0.1", p.port), 10, "origin")
        self.spoa_sock = env.path("spoa.sock")
        self.spoa = env.start_spoa(extra="\n".join([
            "pool stable key-prefix s: routes pathname build b1",
            "stats-socket %s" % self.spoa_sock]))
        self.state = env.path("haproxy.state")
        self.hap_env = {"CEDRA_STABLE_SLOTS": "4", "CEDRA_CANARY_SLOTS": "2",
                        "CEDRA_DELIVER_ADDR": "127.0.0.1:%d" % env.dead_port(),
                        "CEDRA_SERVER_STATE_FILE": self.state}
        self.cfg = os.path.join(haproxy_dir(), "haproxy.cfg")
        self.hap = env.start_haproxy(self.spoa.addr, self.origin["backup"].port, cfg=self.cfg,
                                     extra_env=self.hap_env)
        with open(env.path("double.err"), "wb") as err:
            self.double = ConsulDouble.start(control_port=0, stderr=err)
        self.addCleanup(self.double.stop)
        self.double.config(jitter=False)
        self.agent_sock = env.path("agent.sock")
        conf = env.write("cedra-agent.conf", AGENT_CONF % {
            "consul": self.double.addr, "hsock": self.hap.sock, "ssock": self.spoa_sock,
            "asock": self.agent_sock, "weight": 30} + "server-state-file %s\n" % self.state)
        out = subprocess.run([harness.agent_bin(), "-c", "-f", conf], capture_output=True, timeout=10)
        self.assertEqual(out.returncode, 0, out)
        self.agent = env.spawn("cedra-agent", harness.agent_wrapper() + [harness.agent_bin(), "-f", conf])
        env.wait_ready(self.agent, lambda: os.path.exists(self.agent_sock), 10, "operator socket")

    def inst(self, name, canary=False):
        return {"id": name, "address": "127.0.0.1", "port": self.origin[name].port,
                "tags": ["web", "canary"] if canary else ["web"],
                "meta": {"build_id": "b2" if canary else "b1"}}

    def restart_haproxy(self, with_state):
        self.hap.stop()
        extra = dict(self.hap_env)
        if not with_state:
            del extra["CEDRA_SERVER_STATE_FILE"]
        self.hap = self.env.start_haproxy(self.spoa.addr, self.origin["backup"].port, cfg=self.cfg,
                                          extra_env=extra)

    def test_haproxy_restart_keeps_pools(self):
        stable = sorted([self.origin["s1"].port, self.origin["s2"].port])
        self.double.set_service(SVC, [self.inst("s1"), self.inst("s2"), self.inst("c1", canary=True)])
        harness.wait_until(lambda: harness.slot_ports(self.hap.sock, "storefront_stable") == stable and
                           harness.slot_ports(self.hap.sock, "storefront_canary") == [self.origin["c1"].port],
                           10 * harness.slow_factor(), what="slots filled by the agent")

        def file_has_slots():
            try:
                with open(self.state) as f:
                    text = f.read()
            except OSError:
                return False
            return all(" %d " % p in text for p in stable + [self.origin["c1"].port])
        harness.wait_until(file_has_slots, 5 * harness.slow_factor(), what="state file written")
        with open(self.state) as f:
            text = f.read()
        self.assertTrue(text.startswith("1\n# be_id "), text[:80])
        self.assertFalse(os.path.exists(self.state + ".tmp"))

        # The agent can no longer touch HAProxy: the file alone must do it.
        # Paused is not enough: a paused agent still gives a restarted
        # HAProxy back what it had (cedra-agent(8), "pause"), and may do so
        # before the assertions below run. Stopped, it cannot.
        self.assertEqual(harness.unix_command(self.agent_sock, "pause"), "\n")
        self.agent.signal(signal.SIGSTOP)
        self.addCleanup(self.agent.signal, signal.SIGCONT)
        self.restart_haproxy(with_state=True)
        t0 = time.monotonic()
        self.assertEqual(harness.slot_ports(self.hap.sock, "storefront_stable"), stable)
        self.assertEqual(harness.slot_ports(self.hap.sock, "storefront_canary"), [self.origin["c1"].port])
        seen = set()
        while len(seen) < 2 and time.monotonic() - t0 < 5 * harness.slow_factor():
            a = request(self.hap.port, cookie="cedra_pool=stable.b1")
            self.assertTrue(a.ok(), a)
            self.assertIn(a.inst, ("s1", "s2"), a)
            seen.add(a.inst)
        a = request(self.hap.port, cookie="cedra_pool=canary.b2")
        self.assertEqual((a.status, a.inst), (200, "c1"), a)

        # The control: without the state file, the restarted HAProxy has no slots.
        self.restart_haproxy(with_state=False)
        self.assertEqual(harness.slot_ports(self.hap.sock, "storefront_stable"), [])
        self.assertEqual(harness.slot_ports(self.hap.sock, "storefront_canary"), [])
        self.agent.signal(signal.SIGCONT)
        self.assertEqual(harness.unix_command(self.agent_sock, "resume"), "\n")
        harness.wait_until(lambda: harness.slot_ports(self.hap.sock, "storefront_stable") == stable,
                           10 * harness.slow_factor(), what="the agent refills after resume")


if __name__ == "__main__":
    unittest.main()
