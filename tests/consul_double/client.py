"""Helpers for tests: start/stop the Consul double as a subprocess and drive
its control API (/_double/...) and its Consul API (/v1/...) with urllib /
http.client. Python stdlib only.

    from client import ConsulDouble
    d = ConsulDouble.start()                 # bounded readiness wait
    d.set_service("storefront", [{"id": "a", "address": "127.0.0.1", "port": 8081}])
    status, headers, body = d.health("storefront", index=0)
    ...
    d.stop()                                 # SIGTERM by pid, then SIGKILL
"""

import http.client
import json
import os
import selectors
import signal
import subprocess
import sys
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
DOUBLE = os.path.join(HERE, "consul_double.py")


class DoubleError(Exception):
    pass


class Response:
    """status, headers (case-insensitive lookups via .header()), body bytes."""

    def __init__(self, status, headers, body, elapsed):
        self.status = status
        self.headers = headers
        self.body = body
        self.elapsed = elapsed

    def header(self, name, default=None):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return default

    @property
    def index(self):
        v = self.header("X-Consul-Index")
        return int(v) if v is not None else None

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    def __repr__(self):
        return "Response(%d, %r)" % (self.status, self.body[:200])


def request(host, port, method, path, body=None, headers=None, timeout=30.0):
    """One HTTP/1.1 request on a fresh connection. Raises the connection
    errors (e.g. http.client.RemoteDisconnected, ConnectionResetError,
    ConnectionRefusedError) as they are."""
    if body is not None and not isinstance(body, (bytes, str)):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode("utf-8")
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    t0 = time.monotonic()
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        return Response(r.status, r.getheaders(), data, time.monotonic() - t0)
    finally:
        conn.close()


class ConsulDouble:
    def __init__(self, host, port, proc=None, control_port=None):
        self.host = host
        self.port = port
        self.proc = proc
        self.control_port = control_port or port

    @property
    def addr(self):
        """Value for CONSUL_HTTP_ADDR."""
        return "%s:%d" % (self.host, self.port)

    @property
    def url(self):
        return "http://%s:%d" % (self.host, self.port)

    # -- process management --------------------------------------------------
    @classmethod
    def start(cls, bind="127.0.0.1", port=0, token=None, control_port=None, extra_args=(),
              ready_timeout=10.0, stderr=None, python=None):
        """Start consul_double.py and wait (bounded) for its "listening" line.
        stderr: None (inherit), subprocess.DEVNULL or an open file."""
        argv = [python or sys.executable, DOUBLE, "--bind", bind, "--port", str(port)]
        if token is not None:
            argv += ["--token", token]
        if control_port is not None:
            argv += ["--control-port", str(control_port)]
        argv += list(extra_args)
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=stderr,
                                stdin=subprocess.DEVNULL)
        try:
            line = _read_line(proc, ready_timeout)
        except Exception:
            _kill(proc)
            raise
        parts = line.split()
        if len(parts) < 2 or parts[0] != "listening":
            _kill(proc)
            raise DoubleError("unexpected first line from the double: %r" % line)
        host, p = parts[1].rsplit(":", 1)
        cport = None
        if len(parts) >= 4 and parts[2] == "control":
            cport = int(parts[3].rsplit(":", 1)[1])
        d = cls(host, int(p), proc, cport)
        # readiness: the control API answers
        deadline = time.monotonic() + ready_timeout
        while True:
            try:
                d.control("GET", "/_double/config", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    d.stop()
                    raise DoubleError("the double did not answer within %.1fs"
                                      % ready_timeout)
                time.sleep(0.02)
        return d

    def stop(self, timeout=5.0):
        """SIGTERM by pid, bounded wait, then SIGKILL. Returns the exit code."""
        if self.proc is None:
            return None
        proc = self.proc
        self.proc = None
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout)
        if proc.stdout:
            proc.stdout.close()
        return proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    # -- raw access ----------------------------------------------------------
    def api(self, method, path, body=None, headers=None, timeout=30.0):
        return request(self.host, self.port, method, path, body, headers, timeout)

    def control(self, method, path, body=None, timeout=30.0, expect=200):
        r = request(self.host, self.control_port, method, path, body, None, timeout)
        if expect is not None and r.status != expect:
            raise DoubleError("%s %s -> %d %s" % (method, path, r.status, r.text))
        return r.json() if r.body else None

    # -- Consul API conveniences ---------------------------------------------
    def health(self, service, index=None, wait=None, passing=False, tags=(), token=None,
               params=None, timeout=None, token_in="header"):
        q = []
        if index is not None:
            q.append(("index", str(index)))
        if wait is not None:
            q.append(("wait", wait))
        if passing:
            q.append(("passing", "1"))
        for t in tags:
            q.append(("tag", t))
        for k, v in (params or {}).items():
            q.append((k, v))
        headers = {}
        if token is not None:
            if token_in == "header":
                headers["X-Consul-Token"] = token
            elif token_in == "bearer":
                headers["Authorization"] = "Bearer " + token
            else:
                q.append(("token", token))
        path = "/v1/health/service/" + urllib.parse.quote(service, safe="")
        if q:
            path += "?" + urllib.parse.urlencode(q)
        return self.api("GET", path, headers=headers, timeout=timeout or 30.0)

    def register(self, definition, token=None, replace_existing_checks=False):
        path = "/v1/agent/service/register"
        if replace_existing_checks:
            path += "?replace-existing-checks=true"
        return self.api("PUT", path, definition,
                        {"X-Consul-Token": token} if token else None)

    def deregister(self, service_id, token=None):
        return self.api("PUT", "/v1/agent/service/deregister/" +
                        urllib.parse.quote(service_id, safe=""), b"",
                        {"X-Consul-Token": token} if token else None)

    def check_ttl(self, verb, check_id, note=None, token=None):
        path = "/v1/agent/check/%s/%s" % (verb, urllib.parse.quote(check_id, safe=""))
        if note is not None:
            path += "?" + urllib.parse.urlencode({"note": note})
        return self.api("PUT", path, b"", {"X-Consul-Token": token} if token else None)

    # -- control API ---------------------------------------------------------
    def set_service(self, name, instances):
        """Replace the control-managed instances of a service (one index bump
        if anything changed)."""
        return self.control("PUT", "/_double/service/" + _q(name), instances)

    def get_service(self, name):
        return self.control("GET", "/_double/service/" + _q(name))

    def clear_service(self, name):
        return self.control("DELETE", "/_double/service/" + _q(name))

    def put_instance(self, name, instance):
        return self.control("PUT", "/_double/service/%s/instance/%s"
                            % (_q(name), _q(instance["id"])), instance)

    def update_instance(self, name, instance_id, **fields):
        """Partial update, e.g. update_instance("web", "a", tags=["stable"])."""
        return self.control("PATCH", "/_double/service/%s/instance/%s"
                            % (_q(name), _q(instance_id)), fields)

    def remove_instance(self, name, instance_id):
        return self.control("DELETE", "/_double/service/%s/instance/%s"
                            % (_q(name), _q(instance_id)))

    def touch(self, name):
        """Bump the service's index without changing its data."""
        return self.control("POST", "/_double/touch/" + _q(name), b"")

    def reset_index(self, name=None, index=2, abandon=True):
        """Make the index go backwards: for one service, or (name=None) for the
        whole store like a snapshot restore."""
        path = "/_double/reset-index" + ("/" + _q(name) if name else "")
        return self.control("POST", path, {"index": index, "abandon": abandon})

    def fault(self, mode, seconds=None, scope="all", count=None, for_seconds=None, body=None):
        f = {"mode": mode, "scope": scope}
        if seconds is not None:
            f["seconds"] = seconds
        if count is not None:
            f["count"] = count
        if for_seconds is not None:
            f["for_seconds"] = for_seconds
        if body is not None:
            f["body"] = body
        return self.control("PUT", "/_double/fault", f)

    def clear_fault(self):
        return self.fault("none")

    def config(self, **kw):
        return self.control("PUT", "/_double/config", kw)

    def registrations(self):
        return self.control("GET", "/_double/registrations")

    def set_agent_check(self, check_id, status, output=""):
        return self.control("PUT", "/_double/agent/check/" + _q(check_id),
                            {"status": status, "output": output})

    def requests(self, wait_for=0, timeout=0.0, **filters):
        """Request log entries. filters: path, path_prefix, kind (health, agent,
        status), state (received, blocking, done, dropped, client-gone),
        method, inflight=True, since=<seq>. With wait_for=N the double holds
        the call until N entries match or timeout seconds pass."""
        q = {}
        for k, v in filters.items():
            if v is None:
                continue
            q[k] = ("1" if v else "0") if isinstance(v, bool) else str(v)
        if wait_for:
            q["wait_for"] = str(wait_for)
            q["timeout"] = str(timeout)
        path = "/_double/requests"
        if q:
            path += "?" + urllib.parse.urlencode(q)
        return self.control("GET", path, timeout=timeout + 10)

    def wait_blocking(self, service, count=1, timeout=5.0, since=0):
        """Wait until `count` blocking queries on /v1/health/service/<service>
        are parked in the double (state "blocking", not answered)."""
        res = self.requests(wait_for=count, timeout=timeout, state="blocking",
                            path="/v1/health/service/" + service, since=since)
        if res["timed_out"]:
            raise DoubleError("%d blocking request(s) on %s not seen within %.1fs (saw %d)"
                              % (count, service, timeout, res["count"]))
        return res["requests"]

    def clear_requests(self):
        return self.control("DELETE", "/_double/requests")

    def reset_all(self):
        return self.control("POST", "/_double/reset-all", b"")

    def state(self):
        return self.control("GET", "/_double/state")


def _q(s):
    return urllib.parse.quote(s, safe="")


def _read_line(proc, timeout):
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    buf = b""
    try:
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DoubleError("no 'listening' line from the double within %.1fs" % timeout)
            if not sel.select(left):
                continue
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                raise DoubleError("the double exited (rc=%s) before listening"
                                  % proc.wait(timeout=5))
            buf += chunk
    finally:
        sel.close()
    return buf.split(b"\n", 1)[0].decode("utf-8", "replace").strip()


def _kill(proc):
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
