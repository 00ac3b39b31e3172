"""The faults: each one injects (inject), optionally holds for the profile's
duration and heals (heal). Every scenario runs on the same chain, which is
fully recovered before the next one starts."""

import os
import re
import signal
import threading

import harness
import stack as st


class Scenario(object):
    name = None
    what = None
    hold = 0.0              # seconds the fault lasts (profile-scaled in run.py)
    agent_sees = None       # agent counters (show services) of which one must move
    planned_down = False    # the edge itself is down for a moment (refused connects expected)

    def __init__(self, profile):
        self.profile = profile
        self.hold = self.holds().get(profile, self.hold)

    def holds(self):
        return {}

    def inject(self, stk, ctx):
        raise NotImplementedError

    def heal(self, stk, ctx):
        pass


# ---- the edge's own processes -------------------------------------------------
class SpoaKill(Scenario):
    name, what = "spoa_kill9", "kill -9 cedra-spoa, restart it (same config, port, socket)"

    def holds(self):
        return {"short": 1.0, "long": 5.0}

    def inject(self, stk, ctx):
        stk.spoa.kill9()

    def heal(self, stk, ctx):
        stk.start_spoa()


class AgentKill(Scenario):
    name, what = "agent_kill9", "kill -9 cedra-agent, restart it"

    def holds(self):
        return {"short": 1.0, "long": 5.0}

    def inject(self, stk, ctx):
        stk.agent.kill9()

    def heal(self, stk, ctx):
        stk.start_agent()


class HaproxyReload(Scenario):
    name, what = ("haproxy_reload", "show servers state saved to CEDRA_SERVER_STATE_FILE, a new "
                  "HAProxy with -sf <old pid> (reload)")

    def inject(self, stk, ctx):
        stk.save_server_state()
        stk.start_haproxy(replace=stk.hap)


class HaproxyRestart(Scenario):
    name, what = ("haproxy_restart", "show servers state saved, HAProxy soft-stopped (SIGUSR1, "
                  "waited), then started again")
    planned_down = True

    def inject(self, stk, ctx):
        old = stk.hap
        old.expect_rc = None
        stk.save_server_state()
        # a soft stop closes the listener at once, then finishes what is in flight
        ctx.down_from = ctx.now()
        old.signal(signal.SIGUSR1)
        old.popen.wait(30)

    def heal(self, stk, ctx):
        stk.start_haproxy()
        ctx.down_until = ctx.now()


# ---- Valkey (redis-server) -----------------------------------------------------
class RedisStop(Scenario):
    name, what = "redis_stop", "redis-server stopped (SIGTERM), started again empty on its port"

    def holds(self):
        return {"short": 2.0, "long": 10.0}

    def inject(self, stk, ctx):
        stk.redis.stop()

    def heal(self, stk, ctx):
        stk.start_redis()


class RedisFreeze(Scenario):
    name, what = "redis_freeze", "redis-server frozen (SIGSTOP), SIGCONT after the hold"

    def holds(self):
        return {"short": 5.0, "long": 5.0}

    def inject(self, stk, ctx):
        stk.redis.signal(signal.SIGSTOP)

    def heal(self, stk, ctx):
        stk.redis.signal(signal.SIGCONT)


class RedisFlush(Scenario):
    name, what = "redis_flushall", "FLUSHALL: Valkey restarted empty, without a disconnect"

    def inject(self, stk, ctx):
        if stk.rcmd("FLUSHALL") != "OK":
            raise AssertionError("FLUSHALL failed")


def spoa_valkey_ports(stk):
    """Local ports of cedra-spoa's TCP connections to Valkey (from /proc)."""
    inodes = set()
    fd_dir = "/proc/%d/fd" % stk.spoa.pid
    for fd in os.listdir(fd_dir):
        try:
            m = re.match(r"socket:\[(\d+)\]", os.readlink(os.path.join(fd_dir, fd)))
        except OSError:
            continue
        if m:
            inodes.add(m.group(1))
    ports = []
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            w = line.split()
            lport = int(w[1].split(":")[1], 16)
            rport = int(w[2].split(":")[1], 16)
            if rport == stk.redis_port and w[9] in inodes:
                ports.append(lport)
    return ports


class RedisClientKill(Scenario):
    name = "redis_client_kill"
    what = ("CLIENT KILL of every cedra-spoa connection to Valkey: lookup connections by "
            "address, the tracking and invalidation (pub/sub) connections by name")

    def inject(self, stk, ctx):
        ports = spoa_valkey_ports(stk)
        listing = stk.rcmd("CLIENT", "LIST").decode()
        names = sorted(set(re.findall(r" name=(cedra-\S+)", listing)))
        killed = 0
        for p in ports:
            # the new form answers the number of clients killed
            r = stk.rcmd("CLIENT", "KILL", "ADDR", "127.0.0.1:%d" % p)
            killed += r if isinstance(r, int) else 0
        ctx.note("killed %d of cedra-spoa's %d connections by address (named among them: %s)"
                 % (killed, len(ports), ",".join(names) or "-"))
        if killed < 3 or "cedra-tracking" not in names or "cedra-invalidations" not in names:
            raise AssertionError("expected cedra-spoa's lookup, tracking and subscriber "
                                 "connections, killed %d of %r (%r)" % (killed, ports, names))


class RedisMaxmemory(Scenario):
    name = "redis_maxmemory"
    what = ("maxmemory set just above the memory in use, policy volatile-lfu (the Nomad "
            "job's): page keys get evicted, writes beyond that fail OOM")

    def holds(self):
        return {"short": 4.0, "long": 20.0}

    def inject(self, stk, ctx):
        info = stk.rcmd("INFO", "memory").decode()
        used = int(re.search(r"used_memory:(\d+)", info).group(1))
        ctx.saved_policy = stk.rcmd("CONFIG", "GET", "maxmemory-policy")[1].decode()
        stk.rcmd("CONFIG", "SET", "maxmemory-policy", "volatile-lfu")
        if stk.rcmd("CONFIG", "SET", "maxmemory", str(used + 64 * 1024)) != "OK":
            raise AssertionError("CONFIG SET maxmemory failed")
        ctx.note("maxmemory %d (used %d)" % (used + 64 * 1024, used))

    def heal(self, stk, ctx):
        stk.rcmd("CONFIG", "SET", "maxmemory", "0")
        stk.rcmd("CONFIG", "SET", "maxmemory-policy", ctx.saved_policy)


# ---- Consul (the double) ------------------------------------------------------------
class ConsulFault(Scenario):
    mode = None
    seconds = None

    def holds(self):
        return {"short": 3.0, "long": 20.0}

    def inject(self, stk, ctx):
        stk.double.fault(self.mode, seconds=self.seconds, scope="health")

    def heal(self, stk, ctx):
        stk.double.clear_fault()


class ConsulDown(ConsulFault):
    name, what, mode = "consul_down", "Consul API refuses connections (listener closed)", "refuse"
    agent_sees = ("connect",)


class Consul500(ConsulFault):
    name, what, mode = "consul_500", "every health query answers 500 (No cluster leader)", "500"
    agent_sees = ("http_5xx",)


class Consul403(ConsulFault):
    name, what, mode = "consul_403", "every health query answers 403 (ACL not found)", "403"
    agent_sees = ("http_403",)


class ConsulEmpty(ConsulFault):
    name, what, mode = "consul_empty", "health queries answer 200 [] (after blocking)", "empty"
    agent_sees = ("refused",)


class ConsulIndexReset(Scenario):
    name, what = "consul_index_reset", "the service's index goes back to 2, queries abandoned"
    agent_sees = ("resets",)

    def inject(self, stk, ctx):
        stk.double.reset_index(st.SVC, index=2, abandon=True)


class ConsulStall(ConsulFault):
    name = "consul_stall"
    what = ("every health query held 30 s past its answer (stall), longer than the agent's "
            "client timeout (consul-wait x 17/16 + margin)")
    mode, seconds = "stall", 30
    agent_sees = ("timeout",)

    def holds(self):
        return {"short": 8.0, "long": 40.0}


# ---- the origin -------------------------------------------------------------------
class OriginKill(Scenario):
    name = "origin_kill"
    what = ("kill -9 of a stable Next.js instance while HAProxy has requests on it, its "
            "Consul check goes critical; restarted on its port, check passing")

    def holds(self):
        return {"short": 2.0, "long": 10.0}

    def inject(self, stk, ctx):
        victim = stk.next["s2"]
        # Requests that are in flight on s2 when it dies: the 1.2 MB page,
        # made private by a session cookie (bypasses the edge cache).
        ctx.victims = []
        stop = threading.Event()

        def slow():
            while not stop.is_set():
                ctx.victims.append(ctx.one_request("/fr/big", "stable", extra_cookie="sid=1"))
        threads = [threading.Thread(target=slow, daemon=True) for _ in range(4)]
        for t in threads:
            t.start()

        def busy():
            rows = ctx.stat_rows()
            for r in rows:
                if r["pxname"] == "storefront_stable" and r["svname"].startswith("stable") \
                        and r.get("addr", "").endswith(":%d" % victim.port) and int(r["scur"]) > 0:
                    return True
            return False
        try:
            harness.wait_until(busy, 10, interval=0.005, what="a request in flight on s2")
            victim.kill9()
        finally:
            stop.set()
            for t in threads:
                t.join(15)
        stk.double.update_instance(st.SVC, "s2", status="critical")

    def heal(self, stk, ctx):
        old = stk.next["s2"]
        stk.start_next("s2", "stable", port=old.port)
        stk.double.update_instance(st.SVC, "s2", status="passing")


ALL = [SpoaKill, AgentKill, HaproxyReload, HaproxyRestart, RedisStop, RedisFreeze, RedisFlush,
       RedisClientKill, RedisMaxmemory, ConsulDown, Consul500, Consul403, ConsulEmpty,
       ConsulIndexReset, ConsulStall, OriginKill]
