#!/usr/bin/env python3
"""Captures real seeds for fuzz_consul and fuzz_hapi from running programs.

- corpus/consul/: /v1/health/service answers of the Consul double
  (tests/consul_double), for catalogs like the ones tests/integration/test_agent.py
  builds (stable and canary builds, Meta weights, warning and critical checks,
  IPv6 and host-name addresses, Node.Address fallback, empty service).
- corpus/hapi/: answers of HAProxy (the installed 2.6) started with the shipped
  haproxy/haproxy.cfg: "show servers state <backend>", "show stat <backend> 4 -1",
  "show info" and "set server" replies, before and after filling slots. Each seed
  is one selector byte (which parser, as fuzz_hapi.c reads it) then the answer.

Everything listens on 127.0.0.1 with random ports and is stopped by pid. Rerun it
after a HAProxy or Consul-double change; it rewrites the captured files only.

Usage: capture_seeds.py [CORPUS_DIR]   (default: corpus/ next to this file)
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))
sys.path.insert(0, os.path.join(REPO, "tests", "consul_double"))

import harness  # noqa: E402
from client import ConsulDouble  # noqa: E402

# fuzz_hapi.c: data[0] % 4 picks the parser; for set replies bit 2 picks the kind.
SEL_STATE, SEL_STAT, SEL_INFO, SEL_SET_SILENT, SEL_SET_ADDR = 0, 1, 2, 3, 7


def write(outdir, name, data):
    os.makedirs(outdir, exist_ok=True)
    with open(os.path.join(outdir, name), "wb") as f:
        f.write(data)


def inst(n, port, tags=(), build="b1", **kw):
    d = {"id": "o%d" % n, "address": "127.0.0.1", "port": port, "tags": list(tags),
         "meta": {"build_id": build}}
    d.update(kw)
    return d


def capture_consul(outdir):
    catalogs = {
        "stable3": [inst(1, 3001), inst(2, 3002), inst(3, 3003)],
        "canary": [inst(1, 3001), inst(2, 3002),
                   inst(3, 3003, tags=["canary"], build="b2",
                        meta={"build_id": "b2", "canary_weight": "25"})],
        "canary_promoted": [inst(1, 3001, build="b2"), inst(2, 3002, build="b2")],
        "warning_weights": [inst(1, 3001, status="warning", weights={"passing": 10, "warning": 1}),
                            inst(2, 3002, weights={"passing": 5, "warning": 0})],
        "critical_and_node_down": [inst(1, 3001, status="critical"),
                                   inst(2, 3002, node_status="critical"), inst(3, 3003)],
        "node_address_fallback": [inst(1, 3001, address="", node_address="10.0.0.7"),
                                  inst(2, 3002, address="", node="n2", node_address="10.0.0.8")],
        "ipv6_and_hostname": [inst(1, 3001, address="::1"),
                              inst(2, 3002, address="2001:db8::5"),
                              inst(3, 3003, address="web-3.service.consul")],
        "invalid_entries": [inst(1, 3001, address="not an address!"), inst(2, 1),
                            inst(3, 3003, meta={"build_id": "b\u00e9ta"}),
                            inst(4, 3004, meta={"canary_weight": "250"}, tags=["canary"])],
        "no_meta_many_checks": [inst(1, 3001, meta=None,
                                     checks=[{"status": "passing"}, {"status": "warning"}]),
                                inst(2, 3002, meta=None, checks=[{"status": "passing"},
                                                                 {"status": "critical"}])],
        "empty": [],
    }
    d = ConsulDouble.start(control_port=0)
    try:
        for name, insts in sorted(catalogs.items()):
            d.set_service("storefront", insts)
            r = d.health("storefront")
            write(outdir, name + ".json", r.body)
            if name == "canary":
                pretty = d.health("storefront", params={"pretty": "1"})
                write(outdir, name + "_pretty.json", pretty.body)
            json.loads(r.body)  # the double must answer JSON
    finally:
        d.stop()


def capture_hapi(outdir):
    env = harness.Env("fuzzseeds")
    try:
        origin = env.start_origin()
        # Nobody listens on the SPOA port: HAProxy fails open, which is all we need.
        hp = env.start_haproxy(("127.0.0.1", harness.free_port()), origin.port,
                               extra_env={"CEDRA_STABLE_SLOTS": "4",
                                          "CEDRA_CANARY_SLOTS": "2"})
        sock = hp.sock

        def cap(name, sel, cmd):
            write(outdir, name, bytes([sel]) + harness.unix_command(sock, cmd, text=False))

        def capset(name, sel, cmd):
            write(outdir, name, bytes([sel]) + harness.unix_command(sock, cmd, text=False))

        cap("info", SEL_INFO, "show info")
        for be in ("storefront_stable", "storefront_canary", "spoa_cedra"):
            cap("state_%s_initial" % be, SEL_STATE, "show servers state %s" % be)
            cap("stat_%s_initial" % be, SEL_STAT, "show stat %s 4 -1" % be)
        cap("state_all", SEL_STATE, "show servers state")
        cap("stat_all", SEL_STAT, "show stat")
        # Fill two slots the way cedra-agent does, and capture every reply.
        capset("set_addr_changed", SEL_SET_ADDR,
               "set server storefront_stable/stable1 addr 127.0.0.1 port %d" % origin.port)
        capset("set_addr_same", SEL_SET_ADDR,
               "set server storefront_stable/stable1 addr 127.0.0.1 port %d" % origin.port)
        capset("set_addr_v6", SEL_SET_ADDR,
               "set server storefront_canary/canary1 addr ::1 port %d" % origin.port)
        capset("set_weight", SEL_SET_SILENT, "set server storefront_stable/stable1 weight 128")
        capset("set_state_ready", SEL_SET_SILENT, "set server storefront_stable/stable1 state ready")
        capset("set_state_drain", SEL_SET_SILENT, "set server storefront_canary/canary1 state drain")
        capset("set_weight_bad", SEL_SET_SILENT, "set server storefront_stable/stable1 weight abc")
        capset("set_addr_bad", SEL_SET_ADDR, "set server storefront_stable/stable2 addr x port 1")
        capset("set_no_such_server", SEL_SET_SILENT, "set server storefront_stable/nope state ready")
        capset("set_no_such_backend", SEL_SET_ADDR, "set server nope/stable1 addr 127.0.0.1 port 1")
        harness.wait_until(
            lambda: "storefront_stable,stable1," in harness.unix_command(
                sock, "show stat storefront_stable 4 -1"),
            5, what="stable1 in show stat")
        for be in ("storefront_stable", "storefront_canary"):
            cap("state_%s_filled" % be, SEL_STATE, "show servers state %s" % be)
            cap("stat_%s_filled" % be, SEL_STAT, "show stat %s 4 -1" % be)
        cap("state_unknown_backend", SEL_STATE, "show servers state nope")
        cap("stat_typed", SEL_STAT, "show stat typed")
        cap("info_json", SEL_INFO, "show info json")
    finally:
        env.stop_all()
        env.cleanup()


def main():
    corpus = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "corpus")
    capture_consul(os.path.join(corpus, "consul"))
    capture_hapi(os.path.join(corpus, "hapi"))
    for d in ("consul", "hapi"):
        print("%s: %d seeds" % (d, len(os.listdir(os.path.join(corpus, d)))))


if __name__ == "__main__":
    main()
