"""Helpers for test_nextjs.py: the real Next.js fixture storefront
(tests/fixtures/storefront) behind the real edge (cedra-spoa + HAProxy 2.6 with
the shipped haproxy/haproxy.cfg), sharing a real redis-server.

Everything runs on loopback ports chosen at run time; every process is
started through harness.Env (so stopped by pid) except the in-process TCP
delay proxy (a thread with its own asyncio loop)."""

import asyncio
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time

import harness
from test_edge_cache import redis_cmd
from test_haproxy import serving, stat_row

STOREFRONT = os.path.join(harness.REPO, "tests", "fixtures", "storefront")
ROUTES_TOOL = os.path.join(harness.REPO, "spoa", "cedra-routes.mjs")

# One build per variant for the whole file: BUILD_ID "edgeit" with
# FIXTURE_REVALIDATE=8 (build-time: the pages' `export const revalidate` must be
# a literal, setup.sh writes it into the copied sources). Small enough for the
# stale test to wait for it, large enough for HIT checks to finish before it.
BUILD_ID = "edgeit"
REVALIDATE = 8
PREFIX = "storefront:"          # the fixture's default CACHE_KEY_PREFIX, passed explicitly
SECRET = "edge-it-secret"
# Per Redis command in Next's cache handler: a frozen Redis costs Next ~3x this.
NEXT_REDIS_TIMEOUT_MS = 400


# ---------------------------------------------------------------- fixture app

def setup_variant(variant, build_id=BUILD_ID, revalidate=REVALIDATE, timeout=900):
    """setup.sh: install + build (idempotent); returns the project dir."""
    harness.require_tool("node")
    env = dict(os.environ, FIXTURE_REVALIDATE=str(revalidate))
    p = subprocess.run([os.path.join(STOREFRONT, "setup.sh"), variant, build_id], env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    if p.returncode != 0:
        raise AssertionError("setup.sh %s %s failed (%d):\n%s" % (
            variant, build_id, p.returncode, p.stderr.decode(errors="replace")[-4000:]))
    proj = p.stdout.decode().strip().splitlines()[-1]
    if not os.path.isfile(os.path.join(proj, ".next", "BUILD_ID")):
        raise AssertionError("setup.sh printed %r, which holds no build" % proj)
    return proj


def route_table(env, proj):
    """node spoa/cedra-routes.mjs <proj>/.next > table; returns its path."""
    p = subprocess.run(["node", ROUTES_TOOL, os.path.join(proj, ".next")],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    if p.returncode != 0:
        raise AssertionError("cedra-routes failed: %s" % p.stderr.decode(errors="replace"))
    return env.write("routes.table", p.stdout.decode())


class CacheKeys(object):
    """The Valkey key Next.js reads for a URL, from the same route table the
    edge loads (route-cache scheme) or the pathname (pathname scheme)."""

    def __init__(self, table_path):
        self.scheme = None
        self.routes = []
        with open(table_path) as f:
            for line in f:
                w = line.split()
                if not w or w[0].startswith("#"):
                    continue
                if w[0] == "scheme":
                    self.scheme = w[1]
                elif w[0] == "route":
                    pattern, kind, digest = w[1], w[2], w[3]
                    rx = "^" + re.sub(r"\\\[[^/]+?\\\]", "[^/]+", re.escape(pattern)) + "$"
                    self.routes.append((re.compile(rx), kind, digest))

    def key(self, path):
        if self.scheme == "pathname":
            return path if path != "/" else "/index"
        for rx, kind, digest in self.routes:
            if rx.match(path):
                return "/route-cache/%s/%s/$%s" % (kind, digest, path if path != "/" else "/index")
        raise AssertionError("no route for %s" % path)


def start_next(env, variant, redis_port, data_file, build_id=BUILD_ID):
    port = harness.free_port()
    proc = env.spawn("next-" + variant, [os.path.join(STOREFRONT, "start.sh"), variant, str(port), build_id],
                     env={"REDIS_URL": "redis://127.0.0.1:%d" % redis_port,
                          "CACHE_KEY_PREFIX": PREFIX,
                          "REVALIDATE_SECRET": SECRET,
                          "FIXTURE_DATA_FILE": data_file,
                          "FIXTURE_REDIS_TIMEOUT_MS": str(NEXT_REDIS_TIMEOUT_MS),
                          "NEXT_TELEMETRY_DISABLED": "1"})
    # next start exits 0 on SIGTERM (Node's default handler would give -15).
    proc.expect_rc = (0, -signal.SIGTERM, 143)
    proc.port = port

    def healthy():
        r = http_request(port, "/api/health", timeout=2)
        if r.status != 200:
            return False
        proc.health = json.loads(r.body)
        return True
    env.wait_ready(proc, healthy, 60, "GET /api/health 200")
    if proc.health.get("keyPrefix") != PREFIX or proc.health.get("buildId") != build_id:
        raise AssertionError("unexpected /api/health: %r" % proc.health)
    return proc


# ---------------------------------------------------------------- the edge

class EdgeNode(object):
    """cedra-spoa + HAProxy (shipped haproxy.cfg) pointed at Next."""

    def __init__(self, env, label, valkey_port, table, origin_port, processing=None,
                 first=True, lock_prefix=None, haproxy_cache=False):
        self.label = label
        self.deliver_port = harness.free_port()
        self.spoa_sock = env.path("cedra-spoa-%s.sock" % label)
        extra = ["valkey 127.0.0.1:%d" % valkey_port,
                 "valkey-timeout %dms" % (80 * harness.slow_factor()),
                 "pool stable key-prefix %s routes %s" % (PREFIX, table),
                 "deliver 127.0.0.1:%d" % self.deliver_port,
                 "stats-socket %s" % self.spoa_sock,
                 "session-cookie sid"]
        if lock_prefix:
            extra.append("revalidate-lock-prefix %s" % lock_prefix)
        if haproxy_cache:
            extra.append("haproxy-cache on")
        self.spoa = env.start_spoa(name="cedra-spoa-" + label, threads=2, extra="\n".join(extra))
        self.hap = None
        if origin_port is None:
            return
        hap_env = {"CEDRA_DELIVER_ADDR": "127.0.0.1:%d" % self.deliver_port}
        if processing:
            hap_env["CEDRA_SPOE_TIMEOUT_PROCESSING"] = processing
        if not first:   # the harness names every HAProxy socket "haproxy.sock"
            hap_env["CEDRA_HAPROXY_SOCK"] = env.path("haproxy-%s.sock" % label)
        self.hap = env.start_haproxy(self.spoa.addr, origin_port, extra_env=hap_env)
        self.hap.name = "haproxy-" + label
        self.hap.sock = hap_env.get("CEDRA_HAPROXY_SOCK", self.hap.sock)
        harness.wait_until(lambda: os.path.exists(self.hap.sock), 10, what="%s stats socket" % label)
        harness.wait_until(lambda: serving(stat_row(self.hap.sock, "storefront_stable", "origin")),
                           15, what="%s: storefront_stable/origin UP" % label)
        harness.wait_until(lambda: stat_row(self.hap.sock, "spoa_cedra", "spoa1")["status"] == "UP",
                           15, what="%s: spoa_cedra/spoa1 UP" % label)

    @property
    def port(self):
        return self.hap.port

    def origin_requests(self):
        """Requests HAProxy sent to Next (stot of storefront_stable/origin;
        health checks are not sessions)."""
        return int(stat_row(self.hap.sock, "storefront_stable", "origin")["stot"])

    def spoa_info(self):
        out = {}
        for line in harness.unix_command(self.spoa_sock, "show info").splitlines():
            k, _, v = line.partition(":")
            out[k.strip()] = v.strip()
        return out

    def spoa_stat(self):
        return json.loads(harness.unix_command(self.spoa_sock, "show stat json"))

    def get(self, path, headers=None, method="GET", timeout=5.0):
        return http_request(self.hap.port, path, headers, method, timeout)


# ---------------------------------------------------------------- HTTP

class Response(object):
    def __init__(self, status, header_list, body, elapsed=0.0):
        self.status = status
        self.header_list = [(k.lower(), v) for k, v in header_list]
        self.body = body
        self.elapsed = elapsed

    def h(self, name, default=None):
        vals = [v for k, v in self.header_list if k == name]
        return ", ".join(vals) if vals else default

    def all(self, name):
        return [v for k, v in self.header_list if k == name]

    @property
    def names(self):
        return set(k for k, _ in self.header_list)

    @property
    def cache(self):
        return self.h("x-cedra-cache")

    def render_id(self):
        m = re.search(rb'data-render-id="([^"]+)"', self.body)
        return m.group(1).decode() if m else None

    def version(self):
        m = re.search(rb'data-version="(\d+)"', self.body)
        return int(m.group(1)) if m else None

    def page_label(self):
        m = re.search(rb'data-page="([^"]+)"', self.body)
        return m.group(1).decode() if m else None

    def __repr__(self):
        return "<%d %s render=%s %dB %.3fs>" % (self.status, dict(self.header_list), self.render_id(),
                                                 len(self.body), self.elapsed)


def http_request(port, path, headers=None, method="GET", timeout=5.0, conn=None):
    """One request (http.client: Content-Length and chunked bodies)."""
    t0 = time.monotonic()
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        hdrs = {"Accept-Encoding": "identity"}
        hdrs.update(headers or {})
        body = b"" if method in ("POST", "PUT") else None
        c.request(method, path, body=body, headers=hdrs)
        r = c.getresponse()
        data = r.read()
        return Response(r.status, r.getheaders(), data, time.monotonic() - t0)
    finally:
        c.close()


def burst(targets, path, timeout=10.0):
    """len(targets) clients (one port each), connected first, then released
    together by a barrier: returns the list of Response (or exceptions)."""
    n = len(targets)
    barrier = threading.Barrier(n)
    results = [None] * n

    def client(i, port):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            c.connect()
            barrier.wait(timeout)
            results[i] = http_request(port, path, conn=c, timeout=timeout)
        except Exception as e:  # noqa: BLE001 - reported by the caller
            results[i] = e
    threads = [threading.Thread(target=client, args=(i, p)) for i, p in enumerate(targets)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 5)
    return results


class Load(object):
    """`workers` threads issuing GETs over `paths` (round robin) until stop():
    every result is kept (Response or the exception)."""

    def __init__(self, port, paths, workers=6, timeout=10.0):
        self.port, self.paths, self.timeout = port, paths, timeout
        self.results = []   # (path, Response | Exception)
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(workers)]

    def _run(self, i):
        n = i
        while not self.stopping.is_set():
            path = self.paths[n % len(self.paths)]
            n += 1
            try:
                r = http_request(self.port, path, timeout=self.timeout)
            except Exception as e:  # noqa: BLE001
                r = e
            with self.lock:
                self.results.append((path, r))

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join(self.timeout + 5)
        return self.results


# ---------------------------------------------------------------- a slow Valkey

class DelayProxy(object):
    """TCP proxy 127.0.0.1:port -> 127.0.0.1:target that holds every chunk of
    the server's replies for `delay` seconds (order kept): a slow Valkey."""

    def __init__(self, target_port):
        self.target_port = target_port
        self.delay = 0.0
        self.loop = asyncio.new_event_loop()
        self.writers = set()
        self.tasks = set()
        self.connections = 0
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        if not ready.wait(5):
            raise AssertionError("delay proxy did not start")

    def _run(self, ready):
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._client, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()
        self.loop.close()

    async def _client(self, creader, cwriter):
        self.connections += 1
        task = asyncio.current_task()
        self.tasks.add(task)
        try:
            try:
                sreader, swriter = await asyncio.open_connection("127.0.0.1", self.target_port)
            except OSError:
                cwriter.transport.abort()
                return
            self.writers.update((cwriter, swriter))
            await asyncio.gather(self._pump(creader, swriter, False), self._pump(sreader, cwriter, True),
                                 return_exceptions=True)
            for w in (cwriter, swriter):
                self.writers.discard(w)
                w.transport.abort()
        finally:
            self.tasks.discard(task)

    async def _pump(self, reader, writer, delayed):
        queue = asyncio.Queue()

        async def send():
            while True:
                due, data = await queue.get()
                if data is None:
                    return
                wait = due - self.loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
        sender = asyncio.ensure_future(send())
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                queue.put_nowait((self.loop.time() + (self.delay if delayed else 0.0), data))
        except OSError:
            pass
        finally:
            queue.put_nowait((0, None))
            try:
                await sender
            except Exception:  # noqa: BLE001 - the peer went away
                pass
            writer.transport.abort()

    def close(self):
        """Stops accepting, resets every connection, waits for the tasks."""
        async def shut():
            self.server.close()
            for w in list(self.writers):
                w.transport.abort()
            if self.tasks:
                await asyncio.wait(list(self.tasks), timeout=2)
            self.loop.stop()
        self.loop.call_soon_threadsafe(lambda: asyncio.ensure_future(shut(), loop=self.loop))
        self.thread.join(5)


# ---------------------------------------------------------------- misc

def redis_key_ready(port, key):
    """Next's handler has written the entry: the value and its
    __sharedTags__ field are both there (the edge needs both)."""
    return (redis_cmd(port, "EXISTS", PREFIX + key) == 1 and
            redis_cmd(port, "HEXISTS", PREFIX + "__sharedTags__", key) == 1)


def copy_catalogue(env):
    dst = env.path("products.json")
    shutil.copyfile(os.path.join(STOREFRONT, "app-src", "data", "products.json"), dst)
    return dst


def bump_version(data_file, slug):
    with open(data_file) as f:
        cat = json.load(f)
    cat["products"][slug]["version"] += 1
    tmp = data_file + ".tmp"
    with open(tmp, "w") as f:
        json.dump(cat, f, ensure_ascii=False, indent=1)
    os.replace(tmp, data_file)
    return cat["products"][slug]["version"]
