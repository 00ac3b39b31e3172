"""The full edge chain for the fault suite, on loopback ports chosen at run
time: redis-server, three real Next.js fixture instances (v16: two of build
"stable", one of build "canary"), cedra-spoa, HAProxy 2.6 with the shipped
haproxy.cfg, the Consul double and cedra-agent. Every process is started
through harness.Env (stopped by pid); the fault scenarios kill, freeze and
restart them through the methods here."""

import json
import os
import re
import signal
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
IT = os.path.join(HERE, "..", "integration")
sys.path.insert(0, IT)
sys.path.insert(0, os.path.join(HERE, "..", "consul_double"))

import harness  # noqa: E402
import nextjs_fixture as nf  # noqa: E402
from client import ConsulDouble  # noqa: E402
from test_edge_cache import redis_cmd  # noqa: E402

SVC = "storefront"
VARIANT = "v16"
REVALIDATE = 30             # FIXTURE_REVALIDATE of both builds (shared with the demo)
BUILDS = ("stable", "canary")
SECRET = "faults-secret"
# instance name -> build; s1 is also HAProxy's backup "origin" server
INSTANCES = (("s1", "stable"), ("s2", "stable"), ("c1", "canary"))
STABLE_SLOTS = 4
CANARY_SLOTS = 2
CANARY_WEIGHT = 30
ADMF_MAINT = 0x23
ADMF_DRAIN = 0x18
SLOT_RE = re.compile(r"^(stable|canary)\d+$")


def prefix(build):
    return "storefront:%s:" % build


def unix_command(path, command):
    """harness.unix_command bounded at 2 s: the observer samples these sockets
    while processes are killed, frozen and restarted, and a sample must stay
    short."""
    return harness.unix_command(path, command, timeout=2.0)


def servers_state(sock, backend):
    """show servers state <backend> -> {slot: {port, admin, op}}; template
    slots only (not the backup server)."""
    text = unix_command(sock, "show servers state %s" % backend)
    lines = text.splitlines()
    if not lines or lines[0].strip() != "1":
        raise RuntimeError("unexpected show servers state answer: %r" % text[:200])
    out = {}
    for line in lines[2:]:
        f = line.split()
        if len(f) < 19 or not SLOT_RE.match(f[3]):
            continue
        admin = int(f[6])
        out[f[3]] = {"addr": f[4], "op": int(f[5]), "port": int(f[18]),
                     "admin": "maint" if admin & ADMF_MAINT else
                     "drain" if admin & ADMF_DRAIN else "ready"}
    return out


def usable_ports(sock, backend):
    """Ports of slots that take traffic: admin ready and operationally up."""
    return sorted(r["port"] for r in servers_state(sock, backend).values()
                  if r["admin"] == "ready" and r["op"] == 2)


AGENT_CONF = """\
# written by tests/faults/stack.py
allow-root
service storefront
backend stable storefront_stable slots stable
backend canary storefront_canary slots canary
canary-tag canary
build-key build_id
canary-weight-key canary_weight
canary-weight %(weight)d
panic-ratio 0.5
consul-addr %(consul)s
consul-wait %(wait)s
consul-retry 50ms 500ms
consul-rate 100 10ms
consul-same-index-interval 50ms
haproxy-socket %(hsock)s
reconcile-interval 300ms
drain-interval 50ms
drain-grace 3s
spoa-socket %(ssock)s
spoa-verify-interval 200ms
key-prefix storefront:%%{build}:
routes %(routes)s/%%{build}.table
register off
stats-socket %(asock)s mode 600
metrics none
log-level info
"""


class Stack(object):
    """The chain. Attributes: redis, next (name -> Proc), spoa, hap, agent,
    double; port (HAProxy's client port)."""

    def __init__(self, env, consul_wait="5s"):
        self.env = env
        self.consul_wait = consul_wait
        self.double = None
        self.haps = []          # every HAProxy process started (logs are parsed from all)
        self.next = {}
        self.projects = {}
        self.tables = {}
        self.data_file = None
        self.alive_builds = set(BUILDS)   # builds with passing instances in Consul
        self.health_seq = 0                # the double's request log, read up to here

    # ---- start ------------------------------------------------------------------
    def preflight(self):
        harness.require_spoa()
        harness.require_tool(harness.haproxy_bin())
        harness.require_tool("redis-server")
        harness.require_tool("node")
        harness.require_agent()
        for b in BUILDS:
            self.projects[b] = nf.setup_variant(VARIANT, build_id=b, revalidate=REVALIDATE)

    def start(self):
        env = self.env
        self.routes_dir = env.path("routes")
        os.makedirs(self.routes_dir)
        for b in BUILDS:
            p = subprocess.run(["node", nf.ROUTES_TOOL, os.path.join(self.projects[b], ".next")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
            if p.returncode != 0:
                raise RuntimeError("cedra-routes: %s" % p.stderr.decode(errors="replace"))
            self.tables[b] = os.path.join(self.routes_dir, "%s.table" % b)
            with open(self.tables[b], "wb") as f:
                f.write(p.stdout)
        self.keys = {b: nf.CacheKeys(self.tables[b]) for b in BUILDS}
        self.data_file = nf.copy_catalogue(env)
        self.redis_port = harness.free_port()
        self.start_redis()
        for name, build in INSTANCES:
            self.start_next(name, build, port=harness.free_port())

        self.spoa_sock = env.path("spoa.sock")
        self.deliver_port = harness.free_port()
        self.spoa_port = harness.free_port()
        self.start_spoa()

        self.hap_port = harness.free_port()
        self.hap_sock = env.path("haproxy.sock")
        self.hap_env = {
            "CEDRA_HTTP_BIND": "127.0.0.1:%d" % self.hap_port,
            "CEDRA_SPOA_ADDR": "127.0.0.1:%d" % self.spoa_port,
            "CEDRA_ORIGIN_ADDR": "127.0.0.1:%d" % self.next["s1"].port,
            "CEDRA_HAPROXY_SOCK": self.hap_sock,
            "CEDRA_NBTHREAD": "2",
            "CEDRA_SPOA_CHECK_INTER": "200ms",
            "CEDRA_ORIGIN_CHECK_INTER": "500ms",
            "CEDRA_HAPROXY_LOG": "stderr",
            "CEDRA_HAPROXY_LOG_LEVEL": "info",
            "CEDRA_STABLE_SLOTS": str(STABLE_SLOTS),
            "CEDRA_CANARY_SLOTS": str(CANARY_SLOTS),
            "CEDRA_DELIVER_ADDR": "127.0.0.1:%d" % self.deliver_port,
            "CEDRA_SERVER_STATE_FILE": env.path("haproxy-servers.state"),
        }
        self.start_haproxy()

        with open(env.path("double.err"), "wb") as err:
            self.double = ConsulDouble.start(control_port=0, stderr=err)
        self.double.config(jitter=False)
        self.agent_sock = env.path("agent.sock")
        self.agent_conf = env.write("cedra-agent.conf", AGENT_CONF % {
            "consul": self.double.addr, "hsock": self.hap_sock, "ssock": self.spoa_sock,
            "asock": self.agent_sock, "weight": CANARY_WEIGHT, "wait": self.consul_wait,
            "routes": self.routes_dir})
        out = subprocess.run([harness.agent_bin(), "-c", "-f", self.agent_conf],
                             capture_output=True, timeout=10)
        if out.returncode != 0:
            raise RuntimeError("cedra-agent -c: %r" % (out,))
        self.start_agent()
        self.double.set_service(SVC, [self.instance(n) for n, _ in INSTANCES])

    def instance(self, name, **kw):
        build = dict(INSTANCES)[name]
        d = {"id": name, "address": "127.0.0.1", "port": self.next[name].port,
             "tags": ["web", "canary"] if build == "canary" else ["web"],
             "meta": {"build_id": build}}
        d.update(kw)
        return d

    def start_redis(self, extra=()):
        self.redis = self.env.start_redis(port=self.redis_port, extra=extra)

    def start_next(self, name, build, port):
        env = {"REDIS_URL": "redis://127.0.0.1:%d" % self.redis_port,
               "CACHE_KEY_PREFIX": prefix(build),
               "REVALIDATE_SECRET": SECRET,
               "FIXTURE_REDIS_TIMEOUT_MS": "400",
               "NEXT_TELEMETRY_DISABLED": "1"}
        if self.data_file:
            env["FIXTURE_DATA_FILE"] = self.data_file
        proc = self.env.spawn("next-" + name, [os.path.join(nf.STOREFRONT, "start.sh"), VARIANT,
                                               str(port), build], env=env)
        proc.expect_rc = (0, -signal.SIGTERM, 143)
        proc.port = port
        proc.build = build
        self.next[name] = proc

        def healthy():
            r = nf.http_request(port, "/api/health", timeout=2)
            return r.status == 200 and json.loads(r.body).get("buildId") == build
        self.env.wait_ready(proc, healthy, 60, "GET /api/health 200 (%s)" % build)
        return proc

    def start_spoa(self):
        extra = ["valkey 127.0.0.1:%d" % self.redis_port,
                 "valkey-timeout 80ms",
                 "pool stable key-prefix %s routes %s build stable" % (
                     prefix("stable"), self.tables["stable"]),
                 "deliver 127.0.0.1:%d" % self.deliver_port,
                 # As the shipped Nomad job runs it: fresh hits from
                 # HAProxy's cache, filled from the delivery server.
                 "haproxy-cache on",
                 "stats-socket %s" % self.spoa_sock,
                 "session-cookie sid"]
        self.spoa = self.env.start_spoa(port=self.spoa_port, threads=2, extra="\n".join(extra))

    def save_server_state(self):
        """The reload procedure haproxy.cfg documents: the slots' state goes to
        CEDRA_SERVER_STATE_FILE, which the next process loads."""
        text = unix_command(self.hap_sock, "show servers state")
        if not text.startswith("1\n"):
            raise RuntimeError("show servers state: %r" % text[:200])
        path = self.hap_env["CEDRA_SERVER_STATE_FILE"]
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)

    def start_haproxy(self, replace=None):
        """The shipped haproxy.cfg. replace: the running HAProxy to hand over
        to (-sf, a reload)."""
        argv = [harness.haproxy_bin(), "-db", "-f", os.path.join(harness.HAPROXY_DIR,
                                                                 "haproxy.cfg")]
        if replace is not None:
            argv += ["-sf", str(replace.pid)]
            replace.expect_rc = None    # it leaves once its connections are done
        proc = self.env.spawn("haproxy", argv, env=self.hap_env)
        proc.expect_rc = harness.HAPROXY_STOP_RC
        proc.port = self.hap_port
        self.haps.append(proc)
        self.hap = proc
        self.env.wait_ready(proc, lambda: harness.tcp_connectable("127.0.0.1", self.hap_port) and
                            os.path.exists(self.hap_sock) and
                            unix_command(self.hap_sock, "show info").find("Pid: %d" % proc.pid)
                            >= 0, 10, "HAProxy listening, its own stats socket")
        return proc

    def start_agent(self):
        self.agent = self.env.spawn("cedra-agent", [harness.agent_bin(), "-f", self.agent_conf])
        self.env.wait_ready(self.agent, lambda: os.path.exists(self.agent_sock) and
                            unix_command(self.agent_sock, "show info").startswith("Name:"),
                            10, "operator socket")

    def stop(self):
        try:
            self.env.stop_all()
        finally:
            if self.double is not None:
                self.double.stop()
                self.double = None

    # ---- observation --------------------------------------------------------------
    @property
    def port(self):
        return self.hap_port

    def expected_ports(self, backend):
        build = "canary" if backend == "storefront_canary" else "stable"
        return sorted(p.port for n, p in self.next.items() if p.build == build)

    def spoa_pools(self):
        text = unix_command(self.spoa_sock, "show pools")
        rows = [l.split(",") for l in text.splitlines() if l and not l.startswith("#")]
        return {r[0]: {"key_prefix": r[1], "build": r[4], "weight": int(r[5])} for r in rows}

    def spoa_info(self):
        out = {}
        for line in unix_command(self.spoa_sock, "show info").splitlines():
            k, _, v = line.partition(":")
            out[k.strip()] = v.strip()
        return out

    def agent_info(self):
        out = {}
        for line in unix_command(self.agent_sock, "show info").splitlines():
            k, _, v = line.partition(":")
            out[k.strip()] = v.strip()
        return out

    def agent_service(self):
        """show services -> {key: value} of the storefront line."""
        for line in unix_command(self.agent_sock, "show services").splitlines():
            if line.startswith(SVC + " "):
                return dict(kv.split("=", 1) for kv in line.split()[1:] if "=" in kv)
        raise RuntimeError("no %s in show services" % SVC)

    def agent_watching(self):
        """cedra-agent's latest health query reached the double unfaulted and is
        parked there (or was answered 200): it watches Consul again. The
        agent's own "last success" only moves when a blocking query returns,
        up to consul-wait later."""
        res = self.double.requests(path="/v1/health/service/" + SVC,
                                   since=max(0, self.health_seq - 1))
        reqs = res["requests"]
        if not reqs:
            return False
        latest = max(reqs, key=lambda e: e["seq"])
        self.health_seq = latest["seq"]
        return not latest.get("fault") and (
            latest["state"] == "blocking" or
            (latest["state"] == "done" and latest.get("status") == 200))

    def agent_counters(self):
        """show services counters: errors by kind, refused (panic threshold),
        resets (index went backwards)."""
        sv = self.agent_service()
        out = {k: int(sv[k]) for k in ("refused", "resets")}
        for kv in sv.get("errors", "").split(","):
            k, _, v = kv.partition(":")
            if k:
                out[k] = int(v)
        return out

    def rcmd(self, *args):
        return redis_cmd(self.redis_port, *args)

    def key(self, build, path):
        return prefix(build) + self.keys[build].key(path)
