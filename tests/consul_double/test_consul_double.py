"""Self-tests of the Consul double (python3 -m unittest, stdlib only).

Each test is bounded (waits of 1-2 s at most); the whole file runs in well
under 30 s. Blocking tests detect that a query is parked in the double through
/_double/requests (state "blocking") before changing anything, so a return
is attributable to the change, not to timing luck.
"""

import http.client
import json
import os
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from client import ConsulDouble, request  # noqa: E402

SVC = "storefront"
TOKEN = "s3cr3t-management-token"


def inst(i, **kw):
    d = {"id": "web-%d" % i, "address": "10.0.0.%d" % i, "port": 8080 + i,
         "tags": ["stable"], "meta": {"build": "b1"}}
    d.update(kw)
    return d


class Bg:
    """Run fn in a thread; .result() joins with a bound."""

    def __init__(self, fn, *a, **kw):
        self.value = None
        self.error = None
        self.t0 = time.monotonic()
        self.t_end = None

        def run():
            try:
                self.value = fn(*a, **kw)
            except BaseException as e:  # noqa: B902
                self.error = e
            self.t_end = time.monotonic()
        self.th = threading.Thread(target=run, daemon=True)
        self.th.start()

    def result(self, timeout):
        self.th.join(timeout)
        if self.th.is_alive():
            raise AssertionError("background request still running after %.1fs" % timeout)
        if self.error is not None:
            raise self.error
        return self.value


class DoubleCase(unittest.TestCase):
    token = None
    extra = ()

    @classmethod
    def setUpClass(cls):
        cls.d = ConsulDouble.start(token=cls.token, extra_args=cls.extra, ready_timeout=10)

    @classmethod
    def tearDownClass(cls):
        rc = cls.d.stop()
        assert rc == 0, "double exited with %r" % rc

    def setUp(self):
        self.d.reset_all()


class TestBlocking(DoubleCase):
    def test_listening_line_and_readiness(self):
        self.assertGreater(self.d.port, 0)
        self.assertEqual(self.d.api("GET", "/v1/status/leader").json(), "127.0.0.1:8300")

    def test_no_index_returns_at_once_with_headers_and_shape(self):
        self.d.set_service(SVC, [inst(1), inst(2, address="", tags=["canary"],
                                               weights={"passing": 5, "warning": 1})])
        r = self.d.health(SVC, timeout=2)
        self.assertEqual(r.status, 200)
        self.assertLess(r.elapsed, 0.5)
        self.assertEqual(r.header("Content-Type"), "application/json")
        self.assertGreaterEqual(r.index, 1)
        self.assertEqual(r.header("X-Consul-KnownLeader"), "true")
        self.assertEqual(r.header("X-Consul-LastContact"), "0")
        self.assertEqual(r.header("X-Consul-Effective-Consistency"), "leader")
        body = r.json()
        self.assertEqual([e["Service"]["ID"] for e in body], ["web-1", "web-2"])
        e = body[1]
        for k in ("ID", "Node", "Address", "Datacenter", "TaggedAddresses", "Meta",
                  "CreateIndex", "ModifyIndex"):
            self.assertIn(k, e["Node"])
        for k in ("ID", "Service", "Tags", "Address", "Meta", "Port", "Weights",
                  "EnableTagOverride", "CreateIndex", "ModifyIndex"):
            self.assertIn(k, e["Service"])
        self.assertEqual(e["Service"]["Address"], "")
        self.assertEqual(e["Node"]["Address"], "127.0.0.1")
        self.assertEqual(e["Service"]["Weights"], {"Passing": 5, "Warning": 1})
        self.assertEqual(e["Service"]["Meta"], {"build": "b1"})
        self.assertEqual(sorted(c["CheckID"] for c in e["Checks"]),
                         ["serfHealth", "service:web-2"])
        for c in e["Checks"]:
            for k in ("Node", "CheckID", "Name", "Status", "Output", "ServiceID",
                      "ServiceName"):
                self.assertIn(k, c)
        self.assertLessEqual(max(x["Service"]["ModifyIndex"] for x in body), r.index)
        # index=0 is not a blocking query either
        r0 = self.d.health(SVC, index=0, wait="2s", timeout=2)
        self.assertLess(r0.elapsed, 0.5)
        self.assertEqual(r0.index, r.index)

    def test_index_never_zero_for_unknown_service(self):
        r = self.d.health("nope", timeout=2)
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json(), [])
        self.assertGreaterEqual(r.index, 1)

    def test_blocks_until_change(self):
        self.d.set_service(SVC, [inst(1), inst(2)])
        idx = self.d.health(SVC).index
        bg = Bg(self.d.health, SVC, index=idx, wait="5s", timeout=8)
        parked = self.d.wait_blocking(SVC, timeout=3)
        self.assertEqual(parked[0]["index"], str(idx))
        self.assertEqual(parked[0]["wait"], "5s")
        t_change = time.monotonic()
        self.d.update_instance(SVC, "web-2", tags=["canary"])  # tags flip in place
        r = bg.result(4)
        self.assertLess(bg.t_end - t_change, 1.0)
        self.assertGreater(r.index, idx)
        tags = {e["Service"]["ID"]: e["Service"]["Tags"] for e in r.json()}
        self.assertEqual(tags, {"web-1": ["stable"], "web-2": ["canary"]})
        log = self.d.requests(path="/v1/health/service/" + SVC, since=parked[0]["seq"] - 1)
        self.assertEqual(log["requests"][0]["reason"], "changed")

    def test_other_service_change_does_not_wake(self):
        self.d.set_service(SVC, [inst(1)])
        self.d.set_service("other", [inst(5)])
        idx = self.d.health(SVC).index
        bg = Bg(self.d.health, SVC, index=idx, wait="1s", timeout=4)
        self.d.wait_blocking(SVC, timeout=3)
        self.d.update_instance("other", "web-5", tags=["x"])
        r = bg.result(3)
        self.assertGreaterEqual(r.elapsed, 1.0)
        self.assertEqual(r.index, idx)

    def test_idempotent_write_does_not_bump(self):
        self.d.set_service(SVC, [inst(1)])
        i1 = self.d.health(SVC).index
        res = self.d.set_service(SVC, [inst(1)])
        self.assertFalse(res["changed"])
        self.assertEqual(self.d.health(SVC).index, i1)
        self.d.touch(SVC)  # a write that changes the index, not the data
        r = self.d.health(SVC)
        self.assertGreater(r.index, i1)

    def test_timeout_returns_same_index_after_wait(self):
        self.d.set_service(SVC, [inst(1)])
        idx = self.d.health(SVC).index
        r = self.d.health(SVC, index=idx, wait="1s", timeout=4)
        self.assertEqual(r.status, 200)
        self.assertEqual(r.index, idx)
        self.assertGreaterEqual(r.elapsed, 1.0)
        self.assertLess(r.elapsed, 1.0 + 1.0 / 16 + 0.25)
        self.assertEqual(len(r.json()), 1)
        log = self.d.requests(path="/v1/health/service/" + SVC)["requests"]
        self.assertEqual(log[-1]["reason"], "timeout")
        self.assertEqual(log[-1]["timeout_s"], 1.0)

    def test_jitter_bounded_by_wait_over_16(self):
        self.d.set_service(SVC, [inst(1)])
        idx = self.d.health(SVC).index
        wait = 0.8
        bgs = [Bg(self.d.health, SVC, index=idx, wait="800ms", timeout=4) for _ in range(8)]
        rs = [b.result(4) for b in bgs]
        for r in rs:
            self.assertEqual(r.index, idx)
            self.assertGreaterEqual(r.elapsed, wait)
            self.assertLess(r.elapsed, wait + wait / 16 + 0.25)
        log = self.d.requests(path="/v1/health/service/" + SVC, state="done")["requests"]
        jit = [e["jitter_s"] for e in log if e["index"] == str(idx)]
        self.assertEqual(len(jit), 8)
        for j in jit:
            self.assertGreaterEqual(j, 0.0)
            self.assertLess(j, wait / 16)
        self.assertGreater(len(set(jit)), 1, "jitter is random")

    def test_wait_parsing_default_and_cap(self):
        self.d.set_service(SVC, [inst(1)])
        idx = self.d.health(SVC).index
        r = self.d.health(SVC, index=idx, wait="5", timeout=2)
        self.assertEqual((r.status, r.text), (400, "Invalid wait time"))
        r = self.d.health(SVC, index="abc", timeout=2)
        self.assertEqual((r.status, r.text), (400, "Invalid index"))
        r = self.d.health(SVC, params={"stale": "", "consistent": ""}, timeout=2)
        self.assertEqual(r.status, 400)
        self.assertEqual(r.text, "Cannot specify ?stale with ?consistent, conflicting semantics.")
        r = self.d.health(SVC, params={"stale": ""}, timeout=2)
        self.assertEqual(r.header("X-Consul-Effective-Consistency"), "stale")
        # no wait -> 5m default; wait above 10m -> capped; both released by a change
        bg1 = Bg(self.d.health, SVC, index=idx, timeout=5)
        bg2 = Bg(self.d.health, SVC, index=idx, wait="20m", timeout=5)
        bg3 = Bg(self.d.health, SVC, index=idx, wait="1m30s", timeout=5)
        parked = self.d.wait_blocking(SVC, count=3, timeout=3)
        by_wait = {p["wait"]: p for p in parked}
        self.assertEqual(by_wait[None]["timeout_s"], 300.0)
        self.assertEqual(by_wait["20m"]["timeout_s"], 600.0)
        self.assertEqual(by_wait["1m30s"]["timeout_s"], 90.0)
        self.assertLess(by_wait["20m"]["jitter_s"], 600.0 / 16)
        self.d.update_instance(SVC, "web-1", port=9999)
        for b in (bg1, bg2, bg3):
            self.assertGreater(b.result(3).index, idx)

    def test_passing_and_tag_filters(self):
        self.d.set_service(SVC, [
            inst(1, tags=["Stable", "v1"]),
            inst(2, tags=["stable"], status="warning"),
            inst(3, tags=["canary", "v1"], status="critical"),
            inst(4, tags=["canary"], node_status="critical"),
        ])
        ids = lambda r: sorted(e["Service"]["ID"] for e in r.json())  # noqa: E731
        self.assertEqual(ids(self.d.health(SVC)), ["web-1", "web-2", "web-3", "web-4"])
        self.assertEqual(ids(self.d.health(SVC, passing=True)), ["web-1"])
        self.assertEqual(ids(self.d.health(SVC, params={"passing": "false"})),
                         ["web-1", "web-2", "web-3", "web-4"])
        self.assertEqual(self.d.health(SVC, params={"passing": "maybe"}).text,
                         "Invalid value for ?passing")
        self.assertEqual(ids(self.d.health(SVC, tags=["stable"])), ["web-1", "web-2"])
        self.assertEqual(ids(self.d.health(SVC, tags=["v1", "canary"])), ["web-3"])
        self.assertEqual(ids(self.d.health(SVC, tags=["canary"], passing=True)), [])

    def test_patch_status_node_status_and_put_instance(self):
        self.d.set_service(SVC, [inst(1), inst(2)])
        ids = lambda: sorted(e["Service"]["ID"]  # noqa: E731
                             for e in self.d.health(SVC, passing=True).json())
        self.assertEqual(ids(), ["web-1", "web-2"])
        self.d.update_instance(SVC, "web-1", status="critical", output="down")
        self.assertEqual(ids(), ["web-2"])
        self.d.update_instance(SVC, "web-1", status="passing")
        self.d.update_instance(SVC, "web-2", node_status="critical")
        self.assertEqual(ids(), ["web-1"])
        self.d.put_instance(SVC, inst(3, tags=["canary"], meta={"build": "b2"}))
        e = {x["Service"]["ID"]: x for x in self.d.health(SVC).json()}
        self.assertEqual(sorted(e), ["web-1", "web-2", "web-3"])
        self.assertEqual(e["web-3"]["Service"]["Meta"], {"build": "b2"})
        self.assertEqual(e["web-2"]["Service"]["Tags"], ["stable"])  # untouched

    def test_instance_removal_and_last_instance_extinction(self):
        self.d.set_service(SVC, [inst(1), inst(2)])
        idx = self.d.health(SVC).index
        bg = Bg(self.d.health, SVC, index=idx, wait="5s", timeout=8)
        self.d.wait_blocking(SVC, timeout=3)
        self.d.remove_instance(SVC, "web-1")
        r = bg.result(3)
        self.assertGreater(r.index, idx)
        self.assertEqual([e["Service"]["ID"] for e in r.json()], ["web-2"])
        idx2 = r.index
        bg = Bg(self.d.health, SVC, index=idx2, wait="5s", timeout=8)
        self.d.wait_blocking(SVC, timeout=3, since=0)
        self.d.clear_service(SVC)
        r = bg.result(3)
        self.assertEqual(r.json(), [])
        self.assertGreater(r.index, idx2)


class TestIndexReset(DoubleCase):
    def test_reset_abandons_inflight_query_with_lower_index(self):
        self.d.set_service(SVC, [inst(1)])
        for i in range(5):
            self.d.update_instance(SVC, "web-1", port=9000 + i)
        idx = self.d.health(SVC).index
        self.assertGreater(idx, 3)
        bg = Bg(self.d.health, SVC, index=idx, wait="5s", timeout=8)
        self.d.wait_blocking(SVC, timeout=3)
        t0 = time.monotonic()
        self.d.reset_index(SVC, index=2)
        r = bg.result(3)
        self.assertLess(bg.t_end - t0, 1.0)
        self.assertEqual(r.index, 2)
        self.assertEqual(len(r.json()), 1)
        log = self.d.requests(path="/v1/health/service/" + SVC)["requests"]
        self.assertEqual(log[-1]["reason"], "abandoned")

    def test_index_above_current_blocks_until_wait_then_returns_lower(self):
        # Consul's server keeps blocking while its index <= the client's
        # (blockingquery.Query); only the client can fix this by resetting
        # its index to 0, as the blocking-queries doc says.
        self.d.set_service(SVC, [inst(1)])
        for i in range(5):
            self.d.update_instance(SVC, "web-1", port=9000 + i)
        high = self.d.health(SVC).index
        self.d.reset_index(SVC, index=2)
        r = self.d.health(SVC, index=high, wait="1s", timeout=4)
        self.assertGreaterEqual(r.elapsed, 1.0)
        self.assertEqual(r.index, 2)
        # the documented client behaviour: index went backwards -> use 0
        r0 = self.d.health(SVC, index=0, timeout=2)
        self.assertLess(r0.elapsed, 0.5)
        self.assertEqual(r0.index, 2)
        # and the next block on the new index works
        bg = Bg(self.d.health, SVC, index=r0.index, wait="5s", timeout=8)
        self.d.wait_blocking(SVC, timeout=3, since=0)
        self.d.update_instance(SVC, "web-1", tags=["canary"])
        r = bg.result(3)
        self.assertGreater(r.index, 2)

    def test_global_reset_like_snapshot_restore(self):
        self.d.set_service(SVC, [inst(1)])
        for i in range(5):
            self.d.update_instance(SVC, "web-1", port=9000 + i)
        high = self.d.health(SVC).index
        res = self.d.reset_index(None, index=3)
        self.assertEqual(res["index"], 3)
        self.d.update_instance(SVC, "web-1", port=7000)
        r = self.d.health(SVC)
        self.assertEqual(r.index, 4)  # writes continue from the restored index
        self.assertLess(r.index, high)
        self.assertEqual(r.json()[0]["Service"]["Port"], 7000)


class TestAgentEndpoints(DoubleCase):
    def test_register_visible_and_deregister(self):
        reg = {"ID": "cedra-agent-1", "Name": "cedra-agent", "Tags": ["edge"],
               "Port": 9400, "Meta": {"version": "1"},
               "Check": {"CheckID": "cedra-agent-ttl", "TTL": "10s",
                         "DeregisterCriticalServiceAfter": "1m"}}
        r = self.d.register(reg)
        self.assertEqual((r.status, r.body), (200, b""))
        h = self.d.health("cedra-agent")
        e = h.json()
        self.assertEqual(len(e), 1)
        self.assertEqual(e[0]["Service"]["ID"], "cedra-agent-1")
        self.assertEqual(e[0]["Service"]["Weights"], {"Passing": 1, "Warning": 1})
        self.assertEqual(e[0]["Node"]["Node"], "consul-double")
        st = {c["CheckID"]: c["Status"] for c in e[0]["Checks"]}
        self.assertEqual(st, {"serfHealth": "passing", "cedra-agent-ttl": "critical"})
        self.assertEqual(self.d.health("cedra-agent", passing=True).json(), [])
        self.assertEqual(self.d.check_ttl("pass", "cedra-agent-ttl", note="ok").status, 200)
        e = self.d.health("cedra-agent", passing=True).json()
        self.assertEqual(len(e), 1)
        chk = [c for c in e[0]["Checks"] if c["CheckID"] == "cedra-agent-ttl"][0]
        self.assertEqual((chk["Status"], chk["Output"], chk["Type"]), ("passing", "ok", "ttl"))
        regs = self.d.registrations()
        self.assertIn("cedra-agent-1", regs["services"])
        self.assertEqual(regs["checks"]["cedra-agent-ttl"]["Status"], "passing")
        self.assertEqual([h["op"] for h in regs["history"]], ["register", "pass"])
        # deregistration wakes a watcher and removes the entry
        idx = self.d.health("cedra-agent").index
        bg = Bg(self.d.health, "cedra-agent", index=idx, wait="5s", timeout=8)
        self.d.wait_blocking("cedra-agent", timeout=3)
        self.assertEqual(self.d.deregister("cedra-agent-1").status, 200)
        self.assertEqual(bg.result(3).json(), [])
        regs = self.d.registrations()
        self.assertEqual(regs["services"], {})
        self.assertEqual(regs["deregistered"][0]["ID"], "cedra-agent-1")
        r = self.d.deregister("cedra-agent-1")
        self.assertEqual(r.status, 404)
        self.assertEqual(r.text, 'Unknown service ID "cedra-agent-1". Ensure that the service '
                                 'ID is passed, not the service name.')

    def test_generated_check_ids_and_validation(self):
        r = self.d.register({"Name": "svc", "Checks": [{"TTL": "5s"}, {"TTL": "6s"}]})
        self.assertEqual(r.status, 200)
        regs = self.d.registrations()
        self.assertEqual(sorted(regs["checks"]), ["service:svc:1", "service:svc:2"])
        self.assertEqual(regs["checks"]["service:svc:1"]["Name"], "Service 'svc' check")
        self.d.register({"name": "one", "check": {"ttl": "5s"}})  # case/snake insensitive
        self.assertIn("service:one", self.d.registrations()["checks"])
        r = self.d.register({"Port": 1})
        self.assertEqual((r.status, r.text), (400, "Missing service name"))
        r = self.d.api("PUT", "/v1/agent/service/register", b"{not json")
        self.assertEqual(r.status, 400)
        self.assertTrue(r.text.startswith("Request decode failed"))
        r = self.d.register({"Name": "x", "Check": {"TTL": "5s", "Status": "bogus"}})
        self.assertEqual(r.status, 400)
        r = self.d.register({"Name": "x", "Check": {"HTTP": "http://x/"}})
        self.assertEqual(r.status, 400)
        r = self.d.api("GET", "/v1/agent/service/register")
        self.assertEqual((r.status, r.text), (405, "method GET not allowed"))
        self.assertEqual(r.header("Allow"), "PUT")

    def test_ttl_checks_pass_warn_fail_update_and_errors(self):
        self.d.register({"ID": "a", "Name": "a", "Check": {"CheckID": "a-ttl", "TTL": "30s"}})
        for verb, want in (("warn", "warning"), ("fail", "critical"), ("pass", "passing")):
            self.assertEqual(self.d.check_ttl(verb, "a-ttl", note=verb).status, 200)
            self.assertEqual(self.d.registrations()["checks"]["a-ttl"]["Status"], want)
        r = self.d.api("PUT", "/v1/agent/check/update/a-ttl",
                       {"Status": "warning", "Output": "slow"})
        self.assertEqual(r.status, 200)
        c = self.d.registrations()["checks"]["a-ttl"]
        self.assertEqual((c["Status"], c["Output"]), ("warning", "slow"))
        r = self.d.api("PUT", "/v1/agent/check/update/a-ttl", {"Status": "meh"})
        self.assertEqual((r.status, r.text), (400, "Invalid check status: 'meh'"))
        r = self.d.check_ttl("pass", "nope")
        self.assertEqual(r.status, 404)
        self.assertEqual(r.text, 'Unknown check ID "nope". Ensure that the check ID is passed, '
                                 'not the check name.')
        r = self.d.api("GET", "/v1/agent/check/pass/a-ttl")
        self.assertEqual(r.status, 405)
        hist = [(h["op"], h.get("status")) for h in self.d.registrations()["history"]]
        self.assertEqual(hist[1:5], [("warn", "warning"), ("fail", "critical"),
                                     ("pass", "passing"), ("update", "warning")])

    def test_idempotent_pass_does_not_bump_index_output_change_deferred(self):
        self.d.register({"ID": "a", "Name": "a", "Check": {"CheckID": "a-ttl", "TTL": "30s"}})
        self.d.check_ttl("pass", "a-ttl", note="n1")
        i1 = self.d.health("a").index
        self.d.check_ttl("pass", "a-ttl", note="n1")  # idempotent
        self.assertEqual(self.d.health("a").index, i1)
        self.d.check_ttl("pass", "a-ttl", note="n2")  # output only: deferred sync
        r = self.d.health("a")
        self.assertEqual(r.index, i1)
        chk = [c for c in r.json()[0]["Checks"] if c["CheckID"] == "a-ttl"][0]
        self.assertEqual(chk["Output"], "n1")
        self.assertEqual(self.d.registrations()["checks"]["a-ttl"]["Output"], "n2")

    def test_ttl_expiry_goes_critical(self):
        self.d.register({"ID": "b", "Name": "b",
                         "Check": {"CheckID": "b-ttl", "TTL": "700ms", "Status": "passing"}})
        self.d.check_ttl("pass", "b-ttl", note="alive")
        r = self.d.health("b", passing=True)
        self.assertEqual(len(r.json()), 1)
        t0 = time.monotonic()
        # block on the index: the expiry is a catalog change that wakes us
        r2 = self.d.health("b", index=r.index, wait="3s", timeout=5)
        took = time.monotonic() - t0
        self.assertGreater(r2.index, r.index)
        self.assertGreater(took, 0.4)
        self.assertLess(took, 1.5)
        chk = [c for c in r2.json()[0]["Checks"] if c["CheckID"] == "b-ttl"][0]
        self.assertEqual(chk["Status"], "critical")
        self.assertEqual(chk["Output"], "TTL expired (last output before timeout follows): alive")
        self.assertEqual(self.d.health("b", passing=True).json(), [])
        ops = [h["op"] for h in self.d.registrations()["history"]]
        self.assertEqual(ops, ["register", "pass", "ttl-expired"])
        self.d.check_ttl("pass", "b-ttl")  # a pass restarts the TTL clock
        self.assertEqual(len(self.d.health("b", passing=True).json()), 1)

    def test_deregister_critical_service_after_reaps(self):
        self.d.config(reap_interval=0.05, dcsa_min=0)
        self.d.register({"ID": "c", "Name": "c",
                         "Check": {"TTL": "10s", "DeregisterCriticalServiceAfter": "300ms"}})
        r = self.d.health("c")
        self.assertEqual(len(r.json()), 1)
        r2 = self.d.health("c", index=r.index, wait="2s", timeout=4)
        self.assertEqual(r2.json(), [])
        self.assertEqual(self.d.registrations()["deregistered"][0]["reason"], "reaped")

    def test_reregistration_keeps_check_state(self):
        reg = {"ID": "a", "Name": "a", "Tags": ["x"], "Check": {"CheckID": "t", "TTL": "30s"}}
        self.d.register(reg)
        self.d.check_ttl("pass", "t", note="ok")
        reg["Tags"] = ["y"]
        self.d.register(reg)
        e = self.d.health("a").json()[0]
        self.assertEqual(e["Service"]["Tags"], ["y"])
        self.assertEqual([c["Status"] for c in e["Checks"] if c["CheckID"] == "t"], ["passing"])

    def test_agent_self(self):
        r = self.d.api("GET", "/v1/agent/self")
        self.assertEqual(r.json()["Config"]["NodeName"], "consul-double")
        self.assertEqual(r.json()["Config"]["Datacenter"], "dc1")


class TestACL(DoubleCase):
    token = TOKEN

    def test_health_tokens(self):
        self.d.set_service(SVC, [inst(1)])
        for how in ("header", "bearer", "query"):
            r = self.d.health(SVC, token=TOKEN, token_in=how)
            self.assertEqual((r.status, len(r.json())), (200, 1), how)
            self.assertEqual(r.header("X-Consul-Default-ACL-Policy"), "deny")
        r = self.d.health(SVC, token="wrong")
        self.assertEqual((r.status, r.text), (403, "ACL not found"))
        self.assertIsNone(r.index)
        # the anonymous token: reads are filtered, not refused
        r = self.d.health(SVC)
        self.assertEqual((r.status, r.json()), (200, []))
        self.assertGreaterEqual(r.index, 1)
        self.assertEqual(self.d.api("GET", "/v1/status/leader").status, 200)

    def test_agent_writes_need_token(self):
        reg = {"ID": "a", "Name": "a", "Check": {"CheckID": "t", "TTL": "30s"}}
        r = self.d.register(reg)
        self.assertEqual(r.status, 403)
        self.assertEqual(r.text, "Permission denied: anonymous token lacks permission "
                                 "'service:write' on \"a\". The anonymous token is used "
                                 "implicitly when a request does not specify a token.")
        r = self.d.register(reg, token="wrong")
        self.assertEqual((r.status, r.text), (403, "ACL not found"))
        self.assertEqual(self.d.register(reg, token=TOKEN).status, 200)
        self.assertEqual(self.d.check_ttl("pass", "t").status, 403)
        self.assertEqual(self.d.check_ttl("pass", "t", token=TOKEN).status, 200)
        self.assertEqual(self.d.deregister("a").status, 403)
        self.assertEqual(self.d.api("GET", "/v1/agent/self").status, 403)
        self.assertEqual(self.d.deregister("a", token=TOKEN).status, 200)
        ops = [(h["op"], h.get("http_status")) for h in self.d.registrations()["history"]]
        self.assertIn(("register-rejected", 403), ops)


class TestFaults(DoubleCase):
    def setUp(self):
        DoubleCase.setUp(self)
        self.d.set_service(SVC, [inst(1)])

    def test_500_and_403(self):
        self.d.fault("500")
        r = self.d.health(SVC)
        self.assertEqual((r.status, r.text), (500, "rpc error making call: No cluster leader"))
        self.assertIsNone(r.index)
        self.d.fault("403")
        r = self.d.health(SVC)
        self.assertEqual((r.status, r.text), (403, "ACL not found"))
        self.d.clear_fault()
        self.assertEqual(self.d.health(SVC).status, 200)

    def test_empty_and_garbage(self):
        idx = self.d.health(SVC).index
        self.d.fault("empty")
        r = self.d.health(SVC)
        self.assertEqual((r.status, r.body), (200, b"[]"))
        self.assertEqual(r.index, idx)
        self.d.fault("garbage")
        r = self.d.health(SVC)
        self.assertEqual(r.status, 200)
        self.assertEqual(r.header("Content-Type"), "application/json")
        with self.assertRaises(ValueError):
            json.loads(r.body)

    def test_stall(self):
        self.d.fault("stall", seconds=1)
        r = self.d.health(SVC, timeout=4)
        self.assertEqual(r.status, 200)
        self.assertGreaterEqual(r.elapsed, 1.0)
        self.assertLess(r.elapsed, 1.6)

    def test_down_closes_without_answer_and_control_still_works(self):
        self.d.fault("down")
        with self.assertRaises((http.client.RemoteDisconnected, ConnectionResetError,
                                http.client.BadStatusLine)):
            self.d.health(SVC, timeout=3)
        self.assertEqual(self.d.get_service(SVC)["instances"][0]["id"], "web-1")
        self.d.fault("reset")
        with self.assertRaises((http.client.RemoteDisconnected, ConnectionResetError)):
            self.d.health(SVC, timeout=3)
        self.d.clear_fault()
        self.assertEqual(self.d.health(SVC).status, 200)

    def test_down_drops_inflight_blocking_query(self):
        idx = self.d.health(SVC).index
        bg = Bg(self.d.health, SVC, index=idx, wait="5s", timeout=8)
        self.d.wait_blocking(SVC, timeout=3)
        self.d.fault("down")
        with self.assertRaises((http.client.RemoteDisconnected, ConnectionResetError)):
            bg.result(3)

    def test_count_and_scope(self):
        self.d.fault("500", count=2, scope="health")
        self.assertEqual(self.d.api("GET", "/v1/agent/self").status, 200)
        self.assertEqual([self.d.health(SVC).status for _ in range(3)], [500, 500, 200])
        self.d.fault("500", for_seconds=0.3)
        self.assertEqual(self.d.health(SVC).status, 500)
        time.sleep(0.35)
        self.assertEqual(self.d.health(SVC).status, 200)


class TestRefuse(DoubleCase):
    extra = ("--control-port", "0")

    def test_refuse_closes_the_listener(self):
        self.assertNotEqual(self.d.control_port, self.d.port)
        self.d.set_service(SVC, [inst(1)])
        self.d.fault("refuse")
        with self.assertRaises(ConnectionRefusedError):
            self.d.health(SVC, timeout=2)
        self.d.clear_fault()
        self.assertEqual(self.d.health(SVC, timeout=2).status, 200)


class TestRequestLog(DoubleCase):
    def test_log_records_index_wait_and_times(self):
        self.d.set_service(SVC, [inst(1)])
        idx = self.d.health(SVC).index
        self.d.health(SVC, index=idx, wait="100ms")
        log = self.d.requests(kind="health")["requests"]
        self.assertEqual(len(log), 2)
        self.assertEqual((log[0]["index"], log[0]["wait"]), (None, None))
        self.assertEqual((log[1]["index"], log[1]["wait"]), (str(idx), "100ms"))
        self.assertEqual(log[1]["returned_index"], idx)
        self.assertGreaterEqual(log[1]["end"] - log[1]["start"], 0.1)
        self.assertLess(log[0]["start"], log[1]["start"])
        self.d.clear_requests()
        self.assertEqual(self.d.requests()["count"], 0)


class TestProcess(unittest.TestCase):
    def test_start_stop_by_pid(self):
        d = ConsulDouble.start(ready_timeout=10)
        pid = d.proc.pid
        self.assertEqual(d.stop(), 0)
        with self.assertRaises(ProcessLookupError):
            os.kill(pid, 0)
        with self.assertRaises(OSError):
            request(d.host, d.port, "GET", "/v1/status/leader", timeout=1)

    def test_bad_option_fails_fast(self):
        p = subprocess.run([sys.executable, os.path.join(os.path.dirname(
            os.path.abspath(__file__)), "consul_double.py"), "--max-query-time", "5"],
            capture_output=True, timeout=10)
        self.assertNotEqual(p.returncode, 0)


if __name__ == "__main__":
    unittest.main()
