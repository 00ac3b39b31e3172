"""The whole edge through a canary's life: the real HAProxy 2.6 with the
shipped haproxy.cfg + cedra-spoe.conf, the real cedra-spoa (pins users with
the cedra_pool cookie), the real cedra-agent (fills HAProxy's server-template
slots and pushes the pools to cedra-spoa), the Consul double, and tiny origins
(one HAProxy process each, answering 200 with x-instance: <name> and
x-build: <build>) registered in the double as the storefront service.

One stack for the class; the steps run in order and each needs the previous:

  1. two stable instances (build b1) -> the agent fills the stable slots; they
     answer (not the "origin" backup server); no canary, so no cookie;
  2. a canary appears (tag "canary", Meta build_id=b2; share 30 % from the
     agent's configuration) -> the agent fills a canary slot and pushes the
     canary pool to cedra-spoa -> of 300 new users the canary's share is
     within a binomial bound of 30 %; every new user's pin names the build of
     the instance that served it; pinned users stay on their build;
  3. promotion, as Nomad does it for a job with count = 2, canary = 1,
     max_parallel = 1: the canary's tags flip in place (same instance, build
     b2), then the rolling update replaces the old allocations one at a time:
     first s1 is stopped (its place is taken by the promoted canary), then s2
     is stopped while a new b2 allocation (n2) is placed, registered with its
     check critical until it passes. A stopped allocation is deregistered from
     Consul first and its process is killed after a shutdown_delay that lasts
     until the edge has drained it (the test waits until the agent has put its
     slot in maintenance, i.e. idle, bounded by drain-grace). Under a bounded
     concurrent load of cookie-carrying users: zero failed requests, users
     end on b2, cedra-spoa's stable pool is b2. Measured, not asserted: how
     asserted too: no request of a canary-pinned (b2) user is served by b1
     during the rollout (the promoted build keeps the canary pool, at 100 %
     of new users, until no b1 instance is left);
  4. auto-revert of a second canary (b3): users get pinned to canary.b3 (and
     stale pins of earlier builds are ignored and drawn again); with the share
     at 0 (operator override on the agent) forged pins never reach the canary
     while genuine canary.b3 users still do; the canary is deregistered (Nomad
     auto_revert stops it, same stop model as in 3) -> under load, its users
     are served by stable b2 without a failed request, the canary pool is gone
     from cedra-spoa, and with no canary nobody is pinned (the stale
     canary.b3 pin is ignored and removed: one Set-Cookie with Max-Age=0,
     stable build);
  5. forged pins after the revert (canary.bogus, canary.b3, ...) never reach a
     canary server (HAProxy's storefront_canary counters do not move), and
     are removed.

Figures (shares, request and failure counts) go to stderr.

Environment: CEDRA_TEST_HAPROXY_DIR (directory of haproxy.cfg and
cedra-spoe.conf, default the repository's haproxy/), CEDRA_SPOA, CEDRA_AGENT
(binaries, default build/spoa/cedra-spoa and build/agent/cedra-agent),
CEDRA_HAPROXY_BIN.
"""

import http.client
import math
import os
import re
import subprocess
import sys
import threading
import time
import unittest
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "consul_double"))

import harness  # noqa: E402
from client import ConsulDouble  # noqa: E402

SVC = "storefront"
PATH = "/fr/products/chair"     # under a locale prefix: no locale redirect
STABLE_SLOTS = 4
CANARY_SLOTS = 2
WEIGHT = 30                     # canary-weight in the agent's configuration
NEW_USERS = 300
LOAD_MIN_SECONDS = 5.0
POLL = 5.0                      # bound of every wait on the agent / HAProxy
PACE = 25                       # requests per user in each intermediate state


def haproxy_dir():
    return os.environ.get("CEDRA_TEST_HAPROXY_DIR") or harness.HAPROXY_DIR


def backend_total(sock, backend):
    """Sessions the backend ever handled (stot of its BACKEND row)."""
    for row in harness.show_stat(sock):
        if row["pxname"] == backend and row["svname"] == "BACKEND":
            return int(row["stot"])
    raise AssertionError("no backend %s in show stat" % backend)


def binom_tail_outside(n, p, lo, hi):
    """P(X < lo or X > hi) for X ~ Binomial(n, p), exactly."""
    inside = sum(math.comb(n, k) * p ** k * (1 - p) ** (n - k) for k in range(lo, hi + 1))
    return max(0.0, 1.0 - inside)


class Answer(object):
    __slots__ = ("t0", "t1", "status", "inst", "build", "pins", "cache", "error", "sent")

    def ok(self):
        return self.error is None and self.status is not None and 200 <= self.status < 300

    def __repr__(self):
        return "Answer(status=%r inst=%r build=%r pins=%r cache=%r error=%r sent=%r)" % (
            self.status, self.inst, self.build, self.pins, self.cache, self.error, self.sent)


def request(port, cookie=None, path=PATH, timeout=5.0):
    """One GET on a fresh connection (a browser tab); never raises."""
    a = Answer()
    a.sent = cookie
    a.status = a.inst = a.build = a.cache = a.error = None
    a.pins = []
    a.t0 = time.monotonic()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path, headers={"Cookie": cookie} if cookie else {})
        r = c.getresponse()
        r.read()
        a.status = r.status
        for k, v in r.getheaders():
            k = k.lower()
            if k == "x-instance":
                a.inst = v
            elif k == "x-build":
                a.build = v
            elif k == "x-cedra-cache":
                a.cache = v
            elif k == "set-cookie":
                m = re.match(r"\s*cedra_pool=([^;]*)", v)
                a.pins.append(m.group(1) if m else v)
    except (OSError, http.client.HTTPException) as e:
        a.error = repr(e)
    finally:
        c.close()
        a.t1 = time.monotonic()
    return a


class User(object):
    """A browser: keeps the cedra_pool cookie it was given."""

    def __init__(self, uid, pin=None):
        self.uid, self.pin = uid, pin
        self.answers = []

    def cookie(self):
        return "theme=dark; cedra_pool=%s" % self.pin if self.pin else None

    def get(self, port):
        a = request(port, self.cookie())
        if a.pins:
            self.pin = a.pins[-1]
        self.answers.append(a)
        return a


class Load(object):
    """Bounded concurrent load: one thread per user, sequential requests with
    the user's cookie, until stop()."""

    def __init__(self, port, users):
        self.port, self.users = port, users
        self.stop_ev = threading.Event()
        self.t_start = time.monotonic()
        self.threads = [threading.Thread(target=self._run, args=(u,), daemon=True)
                        for u in users]
        for t in self.threads:
            t.start()

    def _run(self, user):
        while not self.stop_ev.is_set():
            user.get(self.port)

    def settle(self, n=PACE):
        """Lets every user make n requests in the state just reached, so that
        each intermediate state sees load (pacing by requests, not by time)."""
        t = time.monotonic()
        harness.wait_until(lambda: self.count_after(t) >= n, POLL, interval=0.01,
                           what="%d requests per user in this state" % n)

    def count_after(self, t):
        return min(sum(1 for a in list(u.answers) if a.t0 >= t) for u in self.users)

    def total(self):
        return sum(len(u.answers) for u in self.users)

    def finish(self, t_final, after=5, bound=20.0):
        """Runs until LOAD_MIN_SECONDS have passed and every user made `after`
        requests started after t_final (bounded), then stops."""
        try:
            harness.wait_until(lambda: time.monotonic() - self.t_start >= LOAD_MIN_SECONDS and
                               self.count_after(t_final) >= after, bound, interval=0.05,
                               what="load: %d requests per user after the change" % after)
        finally:
            self.stop()

    def stop(self):
        self.stop_ev.set()
        for t in self.threads:
            t.join(10)

    def answers(self):
        return [a for u in self.users for a in u.answers]

    def failures(self):
        return [a for a in self.answers() if not a.ok()]


class EdgeCanaryTest(harness.IntegrationTestCase):
    done = 0            # last step that passed

    @classmethod
    def setUpClass(cls):
        cls.cfg = cls._preflight()   # skips before any process or directory exists
        super().setUpClass()
        cls.double = None
        cls.done = 0
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
            super().tearDownClass()
        finally:
            cls._stop_double()

    @classmethod
    def _stop_double(cls):
        if cls.double is not None:
            cls.double.stop()
            cls.double = None

    # ---- the stack ---------------------------------------------------------------
    @classmethod
    def _preflight(cls):
        harness.require_tool(harness.haproxy_bin())
        harness.require_agent()
        harness.require_spoa()
        cfg = os.path.join(haproxy_dir(), "haproxy.cfg")
        with open(cfg) as f:
            text = f.read()
        if not re.search(r"^\s*server-template stable ", text, re.M):
            raise unittest.SkipTest("%s has no server-template slots in storefront_stable" % cfg)
        return cfg

    @classmethod
    def _start_stack(cls):
        env = cls.cenv
        cfg = cls.cfg

        # origins: s1, s2 (b1), c2 (b2: canary, then promoted), n2 (b2: the new
        # allocation of the rollout), c3 (b3: the canary that is reverted) and
        # the backup server of storefront_stable
        cls.builds = {"s1": "b1", "s2": "b1", "c2": "b2", "n2": "b2", "c3": "b3",
                      "backup": "none"}
        cls.origin = {}
        for name, build in cls.builds.items():
            port = harness.free_port()
            ocfg = env.write("origin-%s.cfg" % name, (
                "global\n    nbthread 1\n    maxconn 1000\n"
                "defaults\n    mode http\n    timeout connect 2s\n    timeout client 10s\n"
                "    timeout server 10s\n"
                "frontend o\n    bind 127.0.0.1:%d\n"
                "    http-request return status 200 content-type text/plain string %s"
                " hdr x-instance %s hdr x-build %s\n") % (port, name, name, build))
            p = env.spawn("origin-" + name, [harness.haproxy_bin(), "-db", "-f", ocfg])
            p.expect_rc = harness.HAPROXY_STOP_RC
            p.port = port
            cls.origin[name] = p
        for name, p in cls.origin.items():
            env.wait_ready(p, lambda p=p: harness.tcp_connectable("127.0.0.1", p.port), 10,
                           "origin %s port" % name)

        # cedra-spoa: the stable pool from its file, its operator socket
        cls.spoa_sock = env.path("spoa.sock")
        cls.spoa = env.start_spoa(threads=2, extra="\n".join([
            "pool stable key-prefix s: routes pathname build b1",
            "stats-socket %s" % cls.spoa_sock]))

        # HAProxy: the shipped configuration
        cls.hap = env.start_haproxy(cls.spoa.addr, cls.origin["backup"].port, cfg=cfg,
                                    extra_env={"CEDRA_STABLE_SLOTS": str(STABLE_SLOTS),
                                               "CEDRA_CANARY_SLOTS": str(CANARY_SLOTS),
                                               "CEDRA_DELIVER_ADDR":
                                               "127.0.0.1:%d" % env.dead_port()})
        cls.port = cls.hap.port
        cls.hsock = cls.hap.sock

        # Consul double
        with open(env.path("double.err"), "wb") as err:
            cls.double = ConsulDouble.start(control_port=0, stderr=err)
        cls.double.config(jitter=False)

        # cedra-agent
        cls.agent_sock = env.path("agent.sock")
        conf = env.write("cedra-agent.conf", AGENT_CONF % {
            "consul": cls.double.addr, "hsock": cls.hsock, "ssock": cls.spoa_sock,
            "asock": cls.agent_sock, "weight": WEIGHT})
        out = subprocess.run([harness.agent_bin(), "-c", "-f", conf], capture_output=True, timeout=10)
        if out.returncode != 0:
            raise AssertionError("cedra-agent -c: %r" % (out,))
        cls.agent = env.spawn("cedra-agent", harness.agent_wrapper() + [harness.agent_bin(), "-f", conf])
        env.wait_ready(cls.agent, lambda: os.path.exists(cls.agent_sock), 10, "operator socket")

        # the SPOE answers (not ERROR) before any measurement
        harness.wait_until(lambda: request(cls.port).cache == "BYPASS", 10,
                           what="HAProxy gets answers from cedra-spoa")

    # ---- helpers -------------------------------------------------------------------
    def need(self, step):
        if self.__class__.done < step:
            self.skipTest("step %d did not pass" % step)

    def passed(self, step):
        self.__class__.done = step

    def inst(self, name, canary=False, **kw):
        d = {"id": name, "address": "127.0.0.1", "port": self.origin[name].port,
             "tags": ["web", "canary"] if canary else ["web"],
             "meta": {"build_id": self.builds[name]}}
        d.update(kw)
        return d

    def ports(self, *names):
        return sorted(self.origin[n].port for n in names)

    def wait_slots(self, backend, names, timeout=POLL):
        want = self.ports(*names)
        harness.wait_until(lambda: harness.slot_ports(self.hsock, backend) == want, timeout,
                           interval=0.01, what="%s ready on %r" % (backend, names))

    def spoa_pools(self):
        text = harness.unix_command(self.spoa_sock, "show pools")
        rows = [l.split(",") for l in text.splitlines() if l and not l.startswith("#")]
        return {r[0]: {"key_prefix": r[1], "build": r[4], "weight": int(r[5])} for r in rows}

    def wait_pools(self, want, timeout=POLL):
        """want: {pool: (build, weight)}; exactly these pools."""
        last = [None]

        def ok():
            got = last[0] = self.spoa_pools()
            return {k: (v["build"], v["weight"]) for k, v in got.items()} == want and got
        try:
            return harness.wait_until(ok, timeout, interval=0.01,
                                      what="cedra-spoa show pools == %r" % (want,))
        except AssertionError as e:
            raise AssertionError("%s; last show pools: %r" % (e, last[0]))

    def agent_cmd(self, command):
        return harness.unix_command(self.agent_sock, command)

    def stop_allocation(self, name, backend="storefront_stable", deregister=True):
        """Nomad stops an allocation: deregistered from Consul, then killed once
        the edge has drained it (shutdown_delay modelled as "until the agent
        has put its slot in maintenance", bounded by drain-grace + POLL)."""
        port = self.origin[name].port
        if deregister:
            self.double.remove_instance(SVC, name)
        harness.wait_until(lambda: port not in harness.slot_ports(self.hsock, backend,
                                                                  ("ready", "drain")),
                           3.0 + POLL, interval=0.01, what="%s drained and in maint" % name)
        self.origin[name].stop()

    def draw(self, n, first_uid=0):
        """n new users (no cookie), concurrently; returns their Users."""
        users = [User(first_uid + i) for i in range(n)]
        with ThreadPoolExecutor(8) as ex:
            list(ex.map(lambda u: u.get(self.port), users))
        return users

    def check_new_user(self, u, allowed):
        """A new user's first answer: 200 from an instance whose pool/build is
        the one its cookie names; allowed: {pin: set of instances}."""
        a = u.answers[-1]
        self.assertTrue(a.ok(), a)
        self.assertNotEqual(a.cache, "ERROR", a)
        self.assertEqual(len(a.pins), 1, a)
        pin = a.pins[0]
        self.assertIn(pin, allowed, a)
        self.assertIn(a.inst, allowed[pin], a)
        self.assertEqual(pin.split(".", 1)[1], a.build, a)
        return pin

    @staticmethod
    def report(text):
        sys.stderr.write("\n[edge canary] %s\n" % text)

    # ---- steps -----------------------------------------------------------------------
    def test_1_initial_sync(self):
        # before the agent has anything from Consul: the backup server serves
        a = request(self.port)
        self.assertEqual((a.status, a.inst), (200, "backup"), a)
        self.double.set_service(SVC, [self.inst("s1"), self.inst("s2")])
        self.wait_slots("storefront_stable", ["s1", "s2"])
        self.wait_slots("storefront_canary", [])
        self.wait_pools({"stable": ("b1", 100)})
        # cedra-spoa's own configuration already names build b1 (key-prefix s:):
        # the agent's push is the key prefix changing.
        harness.wait_until(lambda: self.spoa_pools()["stable"]["key_prefix"] == "storefront:b1:",
                           POLL, interval=0.01, what="the agent's stable pool in cedra-spoa")
        seen = {}
        for _ in range(20):
            a = request(self.port)
            self.assertTrue(a.ok(), a)
            self.assertEqual((a.build, a.pins, a.cache), ("b1", [], "BYPASS"), a)
            seen[a.inst] = seen.get(a.inst, 0) + 1
        self.assertEqual(set(seen), {"s1", "s2"}, seen)
        self.passed(1)

    def test_2_canary_share_and_pins(self):
        self.need(1)
        self.double.put_instance(SVC, self.inst("c2", canary=True))
        self.wait_slots("storefront_canary", ["c2"])
        self.wait_slots("storefront_stable", ["s1", "s2"])
        self.wait_pools({"stable": ("b1", 100 - WEIGHT), "canary": ("b2", WEIGHT)})
        self.assertEqual(self.spoa_pools()["canary"]["key_prefix"], "storefront:b2:")

        users = self.draw(NEW_USERS)
        allowed = {"canary.b2": {"c2"}, "stable.b1": {"s1", "s2"}}
        pins = {}
        for u in users:
            pin = self.check_new_user(u, allowed)
            pins[pin] = pins.get(pin, 0) + 1
        k = pins.get("canary.b2", 0)
        # Binomial(300, 0.30): mean 90, sd 7.9. [51, 129] is mean +/- 39 (about
        # 4.9 sd); the exact probability of falling outside is below 1e-6.
        lo, hi = 51, 129
        tail = binom_tail_outside(NEW_USERS, WEIGHT / 100.0, lo, hi)
        self.assertLess(tail, 1e-6)
        self.report("canary share: %d of %d new users (%.1f %%, configured %d %%; "
                    "accepted [%d, %d], P(outside) = %.1e); pins %r"
                    % (k, NEW_USERS, 100.0 * k / NEW_USERS, WEIGHT, lo, hi, tail, pins))
        self.assertTrue(lo <= k <= hi, "canary share %d of %d outside [%d, %d]"
                        % (k, NEW_USERS, lo, hi))

        # pinned users stay on their build and are not pinned again
        canary_users = [u for u in users if u.pin == "canary.b2"]
        stable_users = [u for u in users if u.pin == "stable.b1"]
        for u in canary_users[:6] + stable_users[:6]:
            pin = u.pin
            for _ in range(20):
                a = u.get(self.port)
                self.assertTrue(a.ok(), a)
                self.assertEqual((a.pins, a.build, a.cache), ([], pin.split(".")[1], "BYPASS"),
                                 (pin, a))
                self.assertIn(a.inst, allowed[pin], (pin, a))
        self.__class__.canary_b2_users = canary_users
        self.__class__.stable_b1_users = stable_users
        self.passed(2)

    def test_3_promotion_and_rollout_under_load(self):
        self.need(2)
        # fresh User objects (answer history per step) carrying the step 2 pins
        users = ([User(u.uid, u.pin) for u in self.canary_b2_users[:6]] +
                 [User(u.uid, u.pin) for u in self.stable_b1_users[:6]])
        canary_uids = {u.uid for u in self.canary_b2_users[:6]}
        load = Load(self.port, users)
        try:
            harness.wait_until(lambda: load.count_after(load.t_start) >= 5, POLL,
                               what="load flowing")
            # Nomad promotion: the canary's tags flip in place (same id, b2)
            t_promote = time.monotonic()
            self.double.update_instance(SVC, "c2", tags=["web"])
            # The promoted build keeps its own pool (and backend) while the old
            # build still serves its pinned users; it now takes every new user.
            self.wait_slots("storefront_stable", ["s1", "s2"])
            self.wait_slots("storefront_canary", ["c2"])
            self.wait_pools({"stable": ("b1", 0), "canary": ("b2", 100)})
            load.settle()
            # rolling update, max_parallel 1: s1 stops (replaced by the
            # promoted canary) ...
            self.stop_allocation("s1")
            self.wait_slots("storefront_stable", ["s2"])
            load.settle()
            # ... then s2 stops while the new b2 allocation n2 is placed: it
            # registers with its check critical, which passes once it is up
            self.double.put_instance(SVC, self.inst("n2", status="critical"))
            self.double.remove_instance(SVC, "s2")
            # b1 is gone: b2 becomes the stable build, in the stable backend.
            self.wait_slots("storefront_stable", ["c2"])
            self.wait_slots("storefront_canary", [])
            load.settle()
            self.double.update_instance(SVC, "n2", status="passing")
            self.stop_allocation("s2", deregister=False)
            self.wait_slots("storefront_stable", ["c2", "n2"])
            self.wait_pools({"stable": ("b2", 100)})
            t_final = time.monotonic()
            load.finish(t_final)
        finally:
            load.stop()
        answers = load.answers()
        failed = load.failures()
        cache_err = sum(1 for a in answers if a.cache == "ERROR")
        after = [a for a in answers if a.t0 >= t_final]
        cu_after_promo = [a for u in users if u.uid in canary_uids for a in u.answers
                          if a.t0 >= t_promote and a.ok()]
        flip_back = sum(1 for a in cu_after_promo if a.build == "b1")
        self.report("promotion + rollout: %d requests by %d users in %.1f s, %d failed "
                    "(%s), x-cedra-cache ERROR %d, Set-Cookie %d; after the rollout %d "
                    "requests, builds %r; canary-pinned (b2) users served by b1 after the "
                    "promotion: %d of %d requests"
                    % (len(answers), len(users), time.monotonic() - load.t_start, len(failed),
                       failed[:3], cache_err, sum(1 for a in answers if a.pins), len(after),
                       sorted({a.build for a in after}), flip_back, len(cu_after_promo)))
        self.assertEqual(failed, [], "failed requests during the promotion")
        # A pinned user never gets a page of the other build (DESIGN 3.2):
        # the promoted build keeps its pool until the old one is gone.
        self.assertEqual(flip_back, 0, "canary-pinned users served by the old build")
        # no canary pool at any point after the flip with a different stable
        # build: nobody gets pinned (or re-pinned) during the promotion; once
        # the canary is off, each pin is removed, once (the browser drops it)
        self.assertEqual([a for a in answers if any(a.pins)], [])
        for u in users:
            self.assertEqual(sum(1 for a in u.answers if a.pins == [""]), 1,
                             (u.uid, [a for a in u.answers if a.pins]))
        for u in users:
            last = [a for a in u.answers if a.t0 >= t_final]
            self.assertTrue(last and all(a.build == "b2" and a.inst in ("c2", "n2")
                                         for a in last), (u.uid, last[:5]))
        pools = self.spoa_pools()
        self.assertEqual(set(pools), {"stable"}, pools)
        self.assertEqual((pools["stable"]["build"], pools["stable"]["key_prefix"]),
                         ("b2", "storefront:b2:"))
        m = re.search(r"^Canary_builds: *(.*)$", self.agent_cmd("show canary"), re.M)
        self.assertTrue(m and m.group(1).strip() in ("", "-"), m and m.group(0))
        self.passed(3)

    def test_4_auto_revert_under_load(self):
        self.need(3)
        self.double.put_instance(SVC, self.inst("c3", canary=True))
        self.wait_slots("storefront_canary", ["c3"])
        self.wait_pools({"stable": ("b2", 100 - WEIGHT), "canary": ("b3", WEIGHT)})
        allowed = {"canary.b3": {"c3"}, "stable.b2": {"c2", "n2"}}

        # stale pins of earlier builds are ignored: drawn again and re-pinned
        for stale in ("canary.b2", "stable.b1"):
            for i in range(10):
                u = User(1000 + i, stale)
                u.get(self.port)
                self.check_new_user(u, allowed)

        # new users until at least 6 are pinned to canary.b3 (bounded)
        users = []
        while sum(1 for u in users if u.pin == "canary.b3") < 6:
            self.assertLess(len(users), 200, "fewer than 6 of 200 new users on the canary")
            users += self.draw(20, first_uid=2000 + len(users))
        for u in users:
            self.check_new_user(u, allowed)
        c3_users = [u for u in users if u.pin == "canary.b3"][:6]
        b2_users = [u for u in users if u.pin == "stable.b2"][:4]

        # share 0 (operator override): forged pins never reach the live canary,
        # genuine canary.b3 users still do
        self.assertEqual(self.agent_cmd("set canary weight 0"), "\n")
        self.wait_pools({"stable": ("b2", 100), "canary": ("b3", 0)})
        before = backend_total(self.hsock, "storefront_canary")
        forged = ("canary.bogus", "canary.b2", "canary", "canary.b3x", "canary.B3",
                  "stable.b3", "canary.b3.b3", "admin.b3", "")
        for f in forged:
            for _ in range(5):
                a = request(self.port, "cedra_pool=%s" % f)
                self.assertTrue(a.ok(), (f, a))
                self.assertEqual((a.build, a.pins, a.cache), ("b2", ["stable.b2"], "BYPASS"),
                                 (f, a))
        for u in c3_users[:3]:
            a = request(self.port, u.cookie())
            self.assertEqual((a.inst, a.pins), ("c3", []), a)
        self.assertEqual(backend_total(self.hsock, "storefront_canary"), before + 3)
        self.assertEqual(self.agent_cmd("set canary weight auto"), "\n")
        self.wait_pools({"stable": ("b2", 100 - WEIGHT), "canary": ("b3", WEIGHT)})

        # auto-revert under load: the canary allocation is stopped
        load_users = [User(u.uid, u.pin) for u in c3_users + b2_users]
        load = Load(self.port, load_users)
        try:
            harness.wait_until(lambda: load.count_after(load.t_start) >= 5, POLL,
                               what="load flowing")
            t_dereg = time.monotonic()
            self.double.remove_instance(SVC, "c3")
            self.wait_pools({"stable": ("b2", 100)})
            t_off = time.monotonic()
            load.settle()
            self.stop_allocation("c3", backend="storefront_canary", deregister=False)
            self.wait_slots("storefront_canary", [])
            load.finish(t_off)
        finally:
            load.stop()
        answers = load.answers()
        failed = load.failures()
        c3_answers = [a for u in load_users[:len(c3_users)] for a in u.answers]
        before_rev = [a for a in c3_answers if a.t1 < t_dereg]
        after_off = [a for a in c3_answers if a.t0 >= t_off]
        self.report("auto-revert: %d requests by %d users (%d pinned to canary.b3) in %.1f s, "
                    "%d failed (%s), x-cedra-cache ERROR %d; canary.b3 users: %d requests "
                    "before the deregistration (builds %r), %d after cedra-spoa dropped the "
                    "canary (builds %r, Set-Cookie %d); canary off %.0f ms after the "
                    "deregistration"
                    % (len(answers), len(load_users), len(c3_users),
                       time.monotonic() - load.t_start, len(failed), failed[:3],
                       sum(1 for a in answers if a.cache == "ERROR"), len(before_rev),
                       sorted({a.build for a in before_rev}), len(after_off),
                       sorted({a.build for a in after_off}),
                       sum(1 for a in after_off if a.pins), (t_off - t_dereg) * 1000))
        self.assertEqual(failed, [], "failed requests during the revert")
        self.assertTrue(before_rev and all(a.inst == "c3" for a in before_rev),
                        before_rev[:5])
        # once cedra-spoa has no canary: stable b2, the stale pin ignored and
        # removed, and nobody is pinned while no canary is live
        self.assertTrue(after_off)
        for a in after_off:
            self.assertEqual(a.build, "b2", a)
            self.assertIn(a.pins, ([], [""]), a)
            self.assertIn(a.inst, ("c2", "n2"), a)
        for u in load_users:
            self.assertLessEqual(sum(1 for a in u.answers if a.pins == [""]), 1, u.uid)
            self.assertIsNone(u.cookie(), (u.uid, u.pin))
        # nothing but b2 and b3 was ever served to anyone in this step
        self.assertLessEqual({a.build for a in answers}, {"b2", "b3"})
        self.__class__.c3_users = c3_users
        self.passed(4)

    def test_5_forged_pins_after_revert(self):
        self.need(4)
        self.assertEqual(set(self.spoa_pools()), {"stable"})
        before = backend_total(self.hsock, "storefront_canary")
        for f in ("canary.bogus", "canary.b3", "canary.b2", "canary", "stable.b1"):
            for _ in range(20):
                a = request(self.port, "a=1; cedra_pool=%s" % f)
                self.assertTrue(a.ok(), (f, a))
                self.assertEqual((a.build, a.pins, a.cache), ("b2", [""], "BYPASS"), (f, a))
                self.assertIn(a.inst, ("c2", "n2"), (f, a))
        self.assertEqual(backend_total(self.hsock, "storefront_canary"), before)
        self.passed(5)


AGENT_CONF = """\
# written by tests/integration/test_edge_canary.py
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
consul-wait 5s
consul-retry 50ms 300ms
consul-rate 100 10ms
consul-same-index-interval 50ms
haproxy-socket %(hsock)s
reconcile-interval 300ms
drain-interval 50ms
drain-grace 3s
spoa-socket %(ssock)s
spoa-verify-interval 200ms
key-prefix storefront:%%{build}:
routes pathname
register off
stats-socket %(asock)s mode 600
metrics none
log-level info
"""


if __name__ == "__main__":
    unittest.main()
