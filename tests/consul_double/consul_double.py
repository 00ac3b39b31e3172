#!/usr/bin/env python3
"""A Consul HTTP API double for cedra-edge tests (python3 stdlib only).

It is a test tool, not product code. It implements the subset of Consul's HTTP
API that cedra-agent uses, following Consul's documentation and source for the
observable behaviour (see README.md in this directory for the facts and their
sources), plus a control API under /_double/ that is never part of Consul.

Usage:
    consul_double.py --bind 127.0.0.1 --port 0 [--token SECRET]
prints "listening 127.0.0.1:PORT" on stdout (flushed) once it accepts
connections; everything else goes to stderr. SIGTERM/SIGINT stop it.
"""

import argparse
import collections
import copy
import json
import random
import re
import select
import signal
import socket
import struct
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

VERSION = "1.15.4-double"

# Consul defaults (agent config max_query_time / default_query_time,
# structs.JitterFraction, check_update_interval, CheckBufSize / OutputMaxSize,
# reaper period and minimum of DeregisterCriticalServiceAfter).
DEFAULT_CONFIG = {
    "max_query_time": 600.0,
    "default_query_time": 300.0,
    "jitter": True,
    "check_update_interval": 300.0,
    "reap_interval": 30.0,
    "dcsa_min": 60.0,
    "known_leader": True,
    "last_contact_ms": 0,
    "leader": "127.0.0.1:8300",
    "output_max_size": 4096,
}
JITTER_FRACTION = 16
REQUEST_LOG_MAX = 20000
HISTORY_MAX = 20000
START_INDEX = 5

HEALTH_PASSING, HEALTH_WARNING, HEALTH_CRITICAL = "passing", "warning", "critical"
VALID_STATUS = (HEALTH_PASSING, HEALTH_WARNING, HEALTH_CRITICAL)

FAULT_MODES = ("none", "500", "403", "empty", "garbage", "stall", "down", "reset", "refuse")


class HTTPError(Exception):
    def __init__(self, status, reason, headers=()):
        Exception.__init__(self, reason)
        self.status = status
        self.reason = reason
        self.headers = list(headers)


# ----------------------------------------------------------------------------
# Go-compatible parsing helpers
# ----------------------------------------------------------------------------

_DUR_UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ms": 1e-3,
              "s": 1.0, "m": 60.0, "h": 3600.0}
_DUR_RE = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")


def parse_go_duration(text):
    """time.ParseDuration: "300ms", "-1.5h", "2h45m", "0". Returns seconds."""
    if not isinstance(text, str):
        raise ValueError("time: invalid duration %r" % (text,))
    s = text
    neg = False
    if s[:1] in ("-", "+"):
        neg = s[0] == "-"
        s = s[1:]
    if s == "0":
        return 0.0
    if s == "":
        raise ValueError('time: invalid duration "%s"' % text)
    total = 0.0
    pos = 0
    while pos < len(s):
        m = _DUR_RE.match(s, pos)
        if not m or m.group(1) in ("", "."):
            if re.match(r"[0-9.]+$", s[pos:]):
                raise ValueError('time: missing unit in duration "%s"' % text)
            raise ValueError('time: invalid duration "%s"' % text)
        total += float(m.group(1)) * _DUR_UNITS[m.group(2)]
        pos = m.end()
    return -total if neg else total


def format_go_duration(seconds):
    """A short Go-like rendering (used only for display fields)."""
    if seconds is None:
        return ""
    if seconds == 0:
        return "0s"
    if seconds % 3600 == 0:
        return "%dh0m0s" % (seconds // 3600)
    if seconds >= 60:
        m, s = divmod(seconds, 60)
        if m >= 60:
            h, m = divmod(m, 60)
            return "%dh%dm%gs" % (h, m, s)
        return "%dm%gs" % (m, s)
    if seconds >= 1:
        return "%gs" % seconds
    return "%gms" % (seconds * 1000)


def parse_uint64(text):
    if not re.match(r"^[0-9]+$", text or ""):
        raise ValueError("invalid syntax")
    v = int(text)
    if v >= 1 << 64:
        raise ValueError("value out of range")
    return v


def parse_go_bool(text):
    """strconv.ParseBool."""
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise ValueError("invalid syntax")


def go_json(obj, pretty=False):
    """encoding/json output: compact, UTF-8, HTML characters escaped."""
    if pretty:
        s = json.dumps(obj, indent=4, ensure_ascii=False) + "\n"
    else:
        s = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    s = (s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
         .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))
    return s.encode("utf-8")


def nkey(k):
    """mapstructure matches field names case-insensitively, and the register
    endpoint also accepts snake_case: compare keys without case or '_'."""
    return k.lower().replace("_", "").replace("-", "")


def nget(d, name, default=None):
    want = nkey(name)
    for k, v in d.items():
        if nkey(k) == want:
            return v
    return default


def is_ipv4(addr):
    try:
        socket.inet_pton(socket.AF_INET, addr)
        return True
    except (OSError, TypeError):
        return False


def now_unix():
    return time.time()


# ----------------------------------------------------------------------------
# State: catalog (raft-indexed), agent-local state, faults, logs
# ----------------------------------------------------------------------------

class State:
    def __init__(self, node_name, node_address, datacenter, token, acl_default_policy):
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.node_name = node_name
        self.node_address = node_address
        self.datacenter = datacenter
        self.node_id = str(uuid.uuid4())
        self.token = token
        self.acl_default_policy = acl_default_policy
        self.config = dict(DEFAULT_CONFIG)
        self.req_log = collections.deque(maxlen=REQUEST_LOG_MAX)
        self.req_seq = 0
        self.log_cond = threading.Condition(self.lock)
        self.fault = {"mode": "none"}
        self.fault_gen = 0
        self.refuse_hook = None  # set by main when a control port exists
        self.reset_all(initial=True)

    # -- whole reset ---------------------------------------------------------
    def reset_all(self, initial=False):
        with self.lock:
            self.raft = START_INDEX
            self.max_index = START_INDEX
            self.last_extinction = 0
            self.nodes = {}
            self.services = {}      # name -> {(node, sid): inst}
            self.svc_index = {}     # name -> raft index of last change
            self.abandon_gen = 0 if initial else self.abandon_gen + 1
            self.svc_abandon = collections.Counter() if initial else self.svc_abandon
            self.agent_services = {}  # sid -> definition dict (normalised)
            self.agent_checks = {}    # cid -> dict
            self.history = collections.deque(maxlen=HISTORY_MAX)
            self.deregistered = []
            if not initial:
                self.req_log.clear()
                self.fault = {"mode": "none"}
                self.fault_gen += 1
                self.config = dict(DEFAULT_CONFIG)
            txn = self._begin()
            self._ensure_node(txn, self.node_name, self.node_address, {}, HEALTH_PASSING,
                              permanent=True)
            self._commit(txn)
            self.cond.notify_all()

    # -- transactions --------------------------------------------------------
    def _begin(self):
        return {"index": self.raft + 1, "affected": set(), "changed": False}

    def _commit(self, txn, force=False):
        if not (txn["changed"] or force):
            return False
        idx = txn["index"]
        self.raft = idx
        self.max_index = idx
        for name in txn["affected"]:
            if self.services.get(name):
                self.svc_index[name] = idx
            else:
                self.services.pop(name, None)
                if name in self.svc_index:
                    del self.svc_index[name]
                    self.last_extinction = idx
        self.cond.notify_all()
        return True

    def index_for(self, name):
        """maxIndexForService: the service index while it has instances, else
        the last extinction index, else the catalog max index; never 0."""
        if self.services.get(name) and name in self.svc_index:
            idx = self.svc_index[name]
        elif self.last_extinction > 0:
            idx = self.last_extinction
        else:
            idx = self.max_index
        return max(1, idx)

    # -- nodes ---------------------------------------------------------------
    def _ensure_node(self, txn, name, address, meta, serf_status, permanent=False):
        meta_full = {"consul-network-segment": ""}
        meta_full.update(meta or {})
        tagged = {"lan": address, "wan": address}
        if is_ipv4(address):
            tagged.update({"lan_ipv4": address, "wan_ipv4": address})
        node = self.nodes.get(name)
        if node is None:
            node = {"ID": str(uuid.uuid5(uuid.NAMESPACE_DNS, name + ".consul-double")),
                    "Node": name, "Address": address, "Datacenter": self.datacenter,
                    "TaggedAddresses": tagged, "Meta": meta_full,
                    "CreateIndex": txn["index"], "ModifyIndex": txn["index"],
                    "permanent": permanent, "checks": {}}
            if name == self.node_name:
                node["ID"] = self.node_id
            self.nodes[name] = node
            txn["changed"] = True
        elif node["Address"] != address or node["Meta"] != meta_full:
            node.update({"Address": address, "TaggedAddresses": tagged, "Meta": meta_full,
                         "ModifyIndex": txn["index"]})
            txn["changed"] = True
            txn["affected"].update(self._services_on_node(name))
        self._set_check(txn, name, node["checks"], {
            "CheckID": "serfHealth", "Name": "Serf Health Status", "Status": serf_status,
            "Notes": "", "Output": "Agent alive and reachable" if serf_status == HEALTH_PASSING
            else "Agent not live or unreachable", "ServiceID": "", "ServiceName": "",
            "ServiceTags": [], "Type": "", "Interval": "", "Timeout": "",
        }, affected=self._services_on_node(name))
        return node

    def _services_on_node(self, node_name):
        out = set()
        for name, insts in self.services.items():
            for (n, _sid) in insts:
                if n == node_name:
                    out.add(name)
        return out

    def _gc_node(self, txn, node_name):
        node = self.nodes.get(node_name)
        if node and not node["permanent"] and not self._services_on_node(node_name):
            del self.nodes[node_name]
            txn["changed"] = True

    def _set_check(self, txn, node_name, checks, fields, affected=()):
        cid = fields["CheckID"]
        full = {"Node": node_name}
        full.update(fields)
        full.setdefault("ExposedPort", 0)
        full.setdefault("Definition", {})
        old = checks.get(cid)
        if old is not None:
            cmp_old = {k: v for k, v in old.items() if k not in ("CreateIndex", "ModifyIndex")}
            if cmp_old == full:
                return False
            full["CreateIndex"] = old["CreateIndex"]
        else:
            full["CreateIndex"] = txn["index"]
        full["ModifyIndex"] = txn["index"]
        checks[cid] = full
        txn["changed"] = True
        txn["affected"].update(affected)
        return True

    # -- service instances ---------------------------------------------------
    def _put_instance(self, txn, name, node_name, svc_fields, checks):
        """svc_fields: Consul NodeService fields (no indexes). checks: list of
        check field dicts. Writes only what changed (Consul skips idempotent
        writes)."""
        insts = self.services.setdefault(name, {})
        key = (node_name, svc_fields["ID"])
        old = insts.get(key)
        if old is None:
            inst = {"node": node_name, "source": svc_fields.pop("_source", "control"),
                    "svc": svc_fields, "checks": {},
                    "CreateIndex": txn["index"], "ModifyIndex": txn["index"]}
            insts[key] = inst
            txn["changed"] = True
            txn["affected"].add(name)
        else:
            inst = old
            src = svc_fields.pop("_source", inst["source"])
            inst["source"] = src
            if inst["svc"] != svc_fields:
                inst["svc"] = svc_fields
                inst["ModifyIndex"] = txn["index"]
                txn["changed"] = True
                txn["affected"].add(name)
        wanted = set()
        for c in checks:
            c = dict(c)
            c.setdefault("ServiceID", svc_fields["ID"])
            c.setdefault("ServiceName", name)
            c["ServiceTags"] = list(svc_fields.get("Tags") or [])
            wanted.add(c["CheckID"])
            self._set_check(txn, node_name, inst["checks"], c, affected=(name,))
        for cid in list(inst["checks"]):
            if cid not in wanted:
                del inst["checks"][cid]
                txn["changed"] = True
                txn["affected"].add(name)
        return inst

    def _del_instance(self, txn, name, node_name, sid):
        insts = self.services.get(name) or {}
        if (node_name, sid) in insts:
            del insts[(node_name, sid)]
            txn["changed"] = True
            txn["affected"].add(name)
            self._gc_node(txn, node_name)
            return True
        return False

    def _find_instances(self, name, sid):
        return [(k, v) for k, v in (self.services.get(name) or {}).items() if k[1] == sid]

    # -- health/service result -----------------------------------------------
    def health_entries(self, name, tags, passing, node_meta):
        out = []
        insts = self.services.get(name) or {}
        for key in sorted(insts):
            inst = insts[key]
            svc = inst["svc"]
            if tags:
                have = {t.lower() for t in (svc.get("Tags") or [])}
                if any(t.lower() not in have for t in tags):
                    continue
            node = self.nodes[inst["node"]]
            if node_meta and any(node["Meta"].get(k) != v for k, v in node_meta):
                continue
            checks = [copy.deepcopy(node["checks"][c]) for c in sorted(node["checks"])]
            checks += [copy.deepcopy(inst["checks"][c]) for c in sorted(inst["checks"])]
            if passing and any(c["Status"] != HEALTH_PASSING for c in checks):
                continue
            node_out = {k: copy.deepcopy(node[k]) for k in (
                "ID", "Node", "Address", "Datacenter", "TaggedAddresses", "Meta",
                "CreateIndex", "ModifyIndex")}
            svc_out = copy.deepcopy(svc)
            svc_out["Tags"] = list(svc_out.get("Tags") or [])
            svc_out["CreateIndex"] = inst["CreateIndex"]
            svc_out["ModifyIndex"] = inst["ModifyIndex"]
            out.append({"Node": node_out, "Service": svc_out, "Checks": checks})
        return out

    # -- history / log -------------------------------------------------------
    def record(self, op, **kw):
        ev = {"at": now_unix(), "op": op}
        ev.update(kw)
        self.history.append(ev)
        return ev

    def log_request(self, entry):
        with self.lock:
            self.req_seq += 1
            entry["seq"] = self.req_seq
            self.req_log.append(entry)
            self.log_cond.notify_all()
        return entry

    def log_update(self, entry, **kw):
        with self.lock:
            entry.update(kw)
            self.log_cond.notify_all()


# ----------------------------------------------------------------------------
# Catalog instances from the control API
# ----------------------------------------------------------------------------

def control_instance(name, raw, default_id=None):
    """Control-API instance {id, address, port, tags, meta, weights, status,
    node, node_address, node_meta, node_status, output, checks,
    enable_tag_override} -> (node, node_address, node_meta, node_status,
    svc_fields, checks)."""
    if not isinstance(raw, dict):
        raise HTTPError(400, "instance must be a JSON object")
    sid = nget(raw, "id", default_id)
    if not isinstance(sid, str) or not sid:
        raise HTTPError(400, "instance needs a non-empty string id")
    port = nget(raw, "port", 0)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise HTTPError(400, "instance %s: bad port %r" % (sid, port))
    tags = nget(raw, "tags", []) or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise HTTPError(400, "instance %s: tags must be a list of strings" % sid)
    meta = nget(raw, "meta", None)
    if meta is not None and (not isinstance(meta, dict)
                             or not all(isinstance(v, str) for v in meta.values())):
        raise HTTPError(400, "instance %s: meta must be an object of strings" % sid)
    weights = nget(raw, "weights", None) or {}
    if not isinstance(weights, dict):
        raise HTTPError(400, "instance %s: weights must be an object" % sid)
    wp = nget(weights, "passing", 1)
    ww = nget(weights, "warning", 1)
    status = nget(raw, "status", HEALTH_PASSING)
    if status not in VALID_STATUS:
        raise HTTPError(400, "instance %s: bad status %r" % (sid, status))
    node_status = nget(raw, "node_status", HEALTH_PASSING)
    if node_status not in VALID_STATUS:
        raise HTTPError(400, "instance %s: bad node_status %r" % (sid, node_status))
    address = nget(raw, "address", "") or ""
    node = nget(raw, "node", None) or ("node-" + sid)
    node_address = nget(raw, "node_address", None) or "127.0.0.1"
    node_meta = nget(raw, "node_meta", None) or {}
    svc = {"ID": sid, "Service": name, "Tags": list(tags), "Address": address}
    if address and is_ipv4(address):
        svc["TaggedAddresses"] = {"lan_ipv4": {"Address": address, "Port": port},
                                  "wan_ipv4": {"Address": address, "Port": port}}
    svc.update({"Meta": dict(meta) if meta is not None else None, "Port": port,
                "Weights": {"Passing": wp, "Warning": ww},
                "EnableTagOverride": bool(nget(raw, "enable_tag_override", False)),
                "Proxy": {"Mode": "", "MeshGateway": {}, "Expose": {}}, "Connect": {}})
    checks_raw = nget(raw, "checks", None)
    checks = []
    if checks_raw is None:
        checks.append({"CheckID": "service:" + sid, "Name": "Service '%s' check" % name,
                       "Status": status, "Notes": "", "Output": nget(raw, "output", "") or "",
                       "Type": "", "Interval": "", "Timeout": ""})
    else:
        for i, c in enumerate(checks_raw):
            st = nget(c, "status", HEALTH_PASSING)
            if st not in VALID_STATUS:
                raise HTTPError(400, "instance %s: bad check status %r" % (sid, st))
            checks.append({"CheckID": nget(c, "id", None) or "service:%s:%d" % (sid, i + 1),
                           "Name": nget(c, "name", None) or "Service '%s' check" % name,
                           "Status": st, "Notes": nget(c, "notes", "") or "",
                           "Output": nget(c, "output", "") or "",
                           "Type": nget(c, "type", "") or "", "Interval": "", "Timeout": ""})
    return node, node_address, node_meta, node_status, svc, checks


# ----------------------------------------------------------------------------
# Agent-local state (services and checks registered through /v1/agent/...)
# ----------------------------------------------------------------------------

class Agent:
    def __init__(self, st):
        self.st = st

    # All methods are called with st.lock held.

    def truncate(self, output):
        limit = int(self.st.config["output_max_size"])
        total = len(output.encode("utf-8"))
        if total > limit:
            head = output.encode("utf-8")[:limit].decode("utf-8", "ignore")
            return "%s ... (captured %d of %d bytes)" % (head, limit, total)
        return output

    def sync_service(self, sid):
        """Anti-entropy: push the agent's view of the service (with the
        *synced* check status/output) to the catalog."""
        st = self.st
        svc = st.agent_services.get(sid)
        txn = st._begin()
        if svc is None:
            for name in list(st.services):
                st._del_instance(txn, name, st.node_name, sid)
            st._commit(txn)
            return
        # a service re-registered under another name moves
        for name in list(st.services):
            if name != svc["Service"]:
                st._del_instance(txn, name, st.node_name, sid)
        st._ensure_node(txn, st.node_name, st.node_address, {}, HEALTH_PASSING, permanent=True)
        checks = []
        for cid in sorted(st.agent_checks):
            c = st.agent_checks[cid]
            if c["ServiceID"] != sid:
                continue
            checks.append({"CheckID": cid, "Name": c["Name"], "Status": c["synced_status"],
                           "Notes": c["Notes"], "Output": c["synced_output"],
                           "ServiceID": sid, "ServiceName": svc["Service"], "Type": c["Type"],
                           "Interval": c["Interval"], "Timeout": c["Timeout"]})
        fields = {k: copy.deepcopy(v) for k, v in svc.items() if not k.startswith("_")}
        fields["_source"] = "agent"
        st._put_instance(txn, svc["Service"], st.node_name, fields, checks)
        st._commit(txn)

    def update_check(self, cid, status, output, origin):
        """local.State.UpdateCheck semantics: idempotent updates do nothing;
        status changes sync at once; output-only changes are deferred by
        check_update_interval/2 + random(check_update_interval)."""
        st = self.st
        c = st.agent_checks[cid]
        now = time.monotonic()
        if status == HEALTH_CRITICAL and c["Status"] != HEALTH_CRITICAL:
            c["critical_since"] = now
        elif status != HEALTH_CRITICAL:
            c["critical_since"] = None
        changed = (c["Status"], c["Output"]) != (status, output)
        c["Status"], c["Output"] = status, output
        c["last_update_at"] = now_unix()
        if not changed:
            return
        civ = float(st.config["check_update_interval"])
        if civ > 0 and c["synced_status"] == status:
            if c["defer_at"] is None:
                c["defer_at"] = now + civ / 2 + random.uniform(0, civ)
            return
        c["defer_at"] = None
        c["synced_status"], c["synced_output"] = status, output
        if c["ServiceID"]:
            self.sync_service(c["ServiceID"])
        else:
            self.sync_node_check(cid)

    def sync_node_check(self, cid):
        st = self.st
        txn = st._begin()
        node = st._ensure_node(txn, st.node_name, st.node_address, {}, HEALTH_PASSING,
                               permanent=True)
        c = st.agent_checks.get(cid)
        if c is None:
            if cid in node["checks"]:
                del node["checks"][cid]
                txn["changed"] = True
                txn["affected"].update(st._services_on_node(st.node_name))
        else:
            st._set_check(txn, st.node_name, node["checks"], {
                "CheckID": cid, "Name": c["Name"], "Status": c["synced_status"],
                "Notes": c["Notes"], "Output": c["synced_output"], "ServiceID": "",
                "ServiceName": "", "ServiceTags": [], "Type": c["Type"],
                "Interval": c["Interval"], "Timeout": c["Timeout"]},
                affected=st._services_on_node(st.node_name))
        st._commit(txn)

    def tick(self):
        """TTL expiry, deferred output syncs, critical-service reaping."""
        st = self.st
        now = time.monotonic()
        for cid in list(st.agent_checks):
            c = st.agent_checks.get(cid)
            if c is None:
                continue
            if c["ttl"] is not None and c["expires_at"] is not None and now >= c["expires_at"]:
                c["expires_at"] = None  # a Go timer fires once until Reset
                out = "TTL expired"
                if c["last_output"]:
                    out = "TTL expired (last output before timeout follows): %s" % c["last_output"]
                st.record("ttl-expired", check_id=cid, service_id=c["ServiceID"],
                          status=HEALTH_CRITICAL, output=out)
                self.update_check(cid, HEALTH_CRITICAL, out, "ttl")
            c = st.agent_checks.get(cid)
            if c is not None and c["defer_at"] is not None and now >= c["defer_at"]:
                c["defer_at"] = None
                if c["synced_output"] != c["Output"] or c["synced_status"] != c["Status"]:
                    c["synced_status"], c["synced_output"] = c["Status"], c["Output"]
                    if c["ServiceID"]:
                        self.sync_service(c["ServiceID"])
                    else:
                        self.sync_node_check(cid)
        if now >= st._next_reap:
            st._next_reap = now + float(st.config["reap_interval"])
            for cid, c in list(st.agent_checks.items()):
                dcsa = c.get("dcsa")
                if (dcsa and c["ServiceID"] and c["critical_since"] is not None
                        and now - c["critical_since"] > dcsa
                        and c["ServiceID"] in st.agent_services):
                    sid = c["ServiceID"]
                    st.record("reaped", service_id=sid, check_id=cid)
                    self.remove_service(sid, reason="reaped")

    def remove_service(self, sid, reason="deregister"):
        st = self.st
        svc = st.agent_services.pop(sid)
        for cid in [k for k, c in st.agent_checks.items() if c["ServiceID"] == sid]:
            del st.agent_checks[cid]
        st.deregistered.append({"ID": sid, "Service": svc["Service"], "at": now_unix(),
                                "reason": reason})
        self.sync_service(sid)

    def make_check(self, raw, sid, sname, stags, index, count):
        """CheckType from a service definition's Check/Checks entry or a
        /v1/agent/check/register body. Raises HTTPError(400) like Consul."""
        if not isinstance(raw, dict):
            raise HTTPError(400, "Request decode failed: check must be an object")
        status = nget(raw, "Status", "") or ""
        if status and status not in VALID_STATUS:
            raise HTTPError(400, "Status for checks must 'passing', 'warning', 'critical'")

        def dur(field):
            v = nget(raw, field, None)
            if v in (None, ""):
                return None
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return float(v) / 1e9  # a JSON number is nanoseconds in Go
            try:
                return parse_go_duration(v)
            except ValueError as e:
                raise HTTPError(400, "Request decode failed: %s" % e)
        ttl = dur("TTL")
        interval = dur("Interval")
        timeout = dur("Timeout")
        dcsa = dur("DeregisterCriticalServiceAfter")
        kinds = [k for k in ("HTTP", "TCP", "GRPC", "H2PING", "UDP", "OSService")
                 if nget(raw, k, "")]
        if nget(raw, "Args", None) or nget(raw, "ScriptArgs", None):
            kinds.append("script")
        if nget(raw, "DockerContainerID", ""):
            kinds.append("docker")
        alias = bool(nget(raw, "AliasService", "") or nget(raw, "AliasNode", ""))
        if kinds and not (interval and interval > 0):
            raise HTTPError(400, "Invalid check: Interval must be > 0 for Script, HTTP, "
                                 "H2PING, or TCP checks")
        if not kinds and not alias and not (ttl and ttl > 0):
            raise HTTPError(400, "Invalid check: TTL must be > 0 for TTL checks")
        cid = nget(raw, "CheckID", None) or nget(raw, "ID", None)
        if not cid:
            if sid is None:
                cid = nget(raw, "Name", "")
            else:
                cid = "service:%s" % sid
                if count > 1:
                    cid += ":%d" % (index + 1)
        name = nget(raw, "Name", None) or ("Service '%s' check" % sname if sname else cid)
        ctype = "ttl" if (ttl and not kinds) else (
            "alias" if alias and not kinds else kinds[0].lower())
        if dcsa is not None and dcsa < float(self.st.config["dcsa_min"]):
            dcsa = float(self.st.config["dcsa_min"])
        return {"CheckID": cid, "Name": name, "Status": status or HEALTH_CRITICAL,
                "Notes": nget(raw, "Notes", "") or "", "Output": "",
                "ServiceID": sid or "", "ServiceName": sname or "",
                "ServiceTags": list(stags or []), "Type": ctype,
                "Interval": format_go_duration(interval) if interval else "",
                "Timeout": format_go_duration(timeout) if timeout else "",
                "ttl": ttl if ctype == "ttl" else None, "TTL": nget(raw, "TTL", "") or "",
                "dcsa": dcsa, "definition": copy.deepcopy(raw)}

    def install_check(self, chk, snap):
        st = self.st
        cid = chk["CheckID"]
        prev = snap.get(cid)
        if prev is not None:  # Consul restores status and output on re-registration
            chk["Status"], chk["Output"] = prev
        now = time.monotonic()
        chk.update({"synced_status": chk["Status"], "synced_output": chk["Output"],
                    "defer_at": None, "last_output": "",
                    "expires_at": now + chk["ttl"] if chk["ttl"] else None,
                    "critical_since": now if chk["Status"] == HEALTH_CRITICAL else None,
                    "registered_at": now_unix(), "last_update_at": None})
        st.agent_checks[cid] = chk


# ----------------------------------------------------------------------------
# HTTP handler
# ----------------------------------------------------------------------------

class DropConnection(Exception):
    def __init__(self, rst=False):
        Exception.__init__(self)
        self.rst = rst


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "consul-double"
    sys_version = ""
    # Go sets TCP_NODELAY on every TCP connection, so Consul does. Without it,
    # an answer written as headers then body waits for the client's delayed
    # ACK (40 ms on Linux) on a kept-alive connection.
    disable_nagle_algorithm = True

    # set on the class by make_server
    st = None
    agent = None
    verbose = False
    is_control_only = False

    def log_message(self, fmt, *args):
        if self.verbose:
            sys.stderr.write("consul-double: %s %s\n" % (self.address_string(), fmt % args))

    def send_response(self, code, message=None):
        # Go's net/http sends Date but no Server header.
        self.log_request(code)
        self.send_response_only(code, message)
        self.send_header("Date", self.date_time_string())

    # -- plumbing ------------------------------------------------------------
    def do_GET(self):
        self.dispatch()

    do_PUT = do_POST = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_GET

    def read_body(self):
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            chunks = []
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    break
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while True:
                        trailer = self.rfile.readline(65537)
                        if trailer in (b"\r\n", b"\n", b""):
                            break
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline(3)
            return b"".join(chunks)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def reply(self, status, body=b"", ctype=None, headers=()):
        if isinstance(body, str):
            body = body.encode("utf-8")
        if ctype is None and body:
            ctype = "text/plain; charset=utf-8"
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        if ctype:
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
        self.wfile.flush()
        if self._entry is not None:
            self.st.log_update(self._entry, status=status, end=now_unix(),
                               state="done" if self._entry.get("state") != "dropped" else "dropped")

    def reply_json(self, status, obj, headers=(), raw=None):
        pretty = "pretty" in self._q
        body = raw if raw is not None else go_json(obj, pretty=pretty)
        self.reply(status, body, "application/json", headers)

    def drop(self, rst=False):
        """Close the connection without answering."""
        self.close_connection = True
        try:
            if rst:
                # linger 0: the close sends RST (the fd closes once rfile/wfile
                # are closed by finish(); socketserver's own shutdown then fails
                # quietly on the closed socket)
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           struct.pack("ii", 1, 0))
                self.connection.close()
            else:
                self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        if self._entry is not None:
            self.st.log_update(self._entry, state="dropped", end=now_unix(), status=None)

    def client_gone(self):
        try:
            r, _, _ = select.select([self.connection], [], [], 0)
            if r:
                return self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True
        return False

    def dispatch(self):
        self._entry = None
        parts = urlsplit(self.path)
        self._path = unquote(parts.path)
        self._raw_query = parts.query
        self._q = parse_qs(parts.query, keep_blank_values=True)
        try:
            self._body = self.read_body()
        except (ValueError, OSError):
            self.close_connection = True
            return
        try:
            if self._path.startswith("/_double/"):
                self.control()
            elif self.is_control_only:
                self.reply(404, "")
            elif self._path.startswith("/v1/"):
                self.api()
            elif self._path == "/":
                self.reply(200, "Consul Agent")
            else:
                self.reply(404, "")
        except DropConnection as d:
            self.drop(rst=d.rst)
        except HTTPError as e:
            hdrs = list(e.headers)
            if self._path.startswith("/v1/"):
                hdrs.append(("X-Consul-Default-Acl-Policy", self.default_policy()))
            self.reply(e.status, e.reason, headers=hdrs)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            if self._entry is not None:
                self.st.log_update(self._entry, state="client-gone", end=now_unix())

    # -- ACL -----------------------------------------------------------------
    def default_policy(self):
        if self.st.token is None:
            return "allow"
        return self.st.acl_default_policy

    def request_token(self):
        """parseToken: ?token=, then X-Consul-Token, then Authorization: Bearer."""
        t = self._q.get("token", [""])[0]
        if t:
            return t
        t = self.headers.get("X-Consul-Token")
        if t:
            return t
        auth = self.headers.get("Authorization") or ""
        parts = auth.split(" ")
        if len(parts) > 1 and parts[0].lower() == "bearer":
            return " ".join(parts[1:]).strip().split(" ")[0].strip()
        return ""

    def resolve_token(self):
        """Returns "management", "anonymous" or raises 403 ACL not found."""
        if self.st.token is None:
            return "management"
        t = self.request_token()
        if t == "":
            return "anonymous"
        if t == self.st.token:
            return "management"
        raise HTTPError(403, "ACL not found")

    def allowed(self, who):
        return who == "management" or self.default_policy() == "allow"

    def deny(self, perm, resource=None):
        cause = "anonymous token lacks permission '%s'" % perm
        if resource is not None:
            cause += " on %s" % json.dumps(resource)
        cause += (". The anonymous token is used implicitly when a request does not "
                  "specify a token.")
        raise HTTPError(403, "Permission denied: " + cause)

    # -- fault injection -----------------------------------------------------
    def fault_applies(self, fault, kind):
        scope = fault.get("scope", "all")
        return scope == "all" or scope == kind

    def take_fault(self, kind):
        """Returns the fault dict that applies to this request (consuming one
        of its count) or None."""
        st = self.st
        with st.lock:
            f = st.fault
            if f["mode"] == "none":
                return None
            if f.get("until") is not None and time.monotonic() >= f["until"]:
                st.fault = {"mode": "none"}
                st.fault_gen += 1
                return None
            if not self.fault_applies(f, kind):
                return None
            if f.get("count") is not None:
                if f["count"] <= 0:
                    st.fault = {"mode": "none"}
                    st.fault_gen += 1
                    return None
                f["count"] -= 1
                f["applied"] = f.get("applied", 0) + 1
                fcopy = dict(f)
                if f["count"] <= 0:
                    st.fault = {"mode": "none"}
                    st.fault_gen += 1
                return fcopy
            f["applied"] = f.get("applied", 0) + 1
            return dict(f)

    def apply_pre_fault(self, f):
        """Faults that act before the request is handled. Returns the fault
        that still has to act on the answer (empty/garbage) or None."""
        if f is None:
            return None
        mode = f["mode"]
        self.st.log_update(self._entry, fault=mode)
        if mode in ("down", "refuse"):
            raise DropConnection()
        if mode == "reset":
            raise DropConnection(rst=True)
        if mode == "500":
            raise HTTPError(500, f.get("body") or "rpc error making call: No cluster leader")
        if mode == "403":
            raise HTTPError(403, f.get("body") or "ACL not found")
        if mode == "stall":
            end = time.monotonic() + float(f.get("seconds") or 0)
            while time.monotonic() < end:
                time.sleep(min(0.05, max(0.0, end - time.monotonic())))
                if self.client_gone():
                    self.close_connection = True
                    self.st.log_update(self._entry, state="client-gone", end=now_unix())
                    raise DropConnection()
                if self.st.fault["mode"] in ("down", "refuse", "reset"):
                    raise DropConnection(rst=self.st.fault["mode"] == "reset")
            return None
        return f  # empty / garbage act on the answer

    # -- /v1 API -------------------------------------------------------------
    ROUTES = [
        (re.compile(r"^/v1/health/service/(.*)$"), ("GET",), "health_service", "health"),
        (re.compile(r"^/v1/agent/self$"), ("GET",), "agent_self", "agent"),
        (re.compile(r"^/v1/agent/services$"), ("GET",), "agent_services", "agent"),
        (re.compile(r"^/v1/agent/checks$"), ("GET",), "agent_checks", "agent"),
        (re.compile(r"^/v1/agent/service/register$"), ("PUT",), "agent_service_register", "agent"),
        (re.compile(r"^/v1/agent/service/deregister/(.*)$"), ("PUT",),
         "agent_service_deregister", "agent"),
        (re.compile(r"^/v1/agent/check/register$"), ("PUT",), "agent_check_register", "agent"),
        (re.compile(r"^/v1/agent/check/deregister/(.*)$"), ("PUT",),
         "agent_check_deregister", "agent"),
        (re.compile(r"^/v1/agent/check/(pass|warn|fail)/(.*)$"), ("PUT",), "agent_check_ttl",
         "agent"),
        (re.compile(r"^/v1/agent/check/update/(.*)$"), ("PUT",), "agent_check_update", "agent"),
        (re.compile(r"^/v1/status/leader$"), ("GET",), "status_leader", "status"),
        (re.compile(r"^/v1/status/peers$"), ("GET",), "status_peers", "status"),
    ]

    def api(self):
        st = self.st
        q = self._q
        idx_param = q.get("index", [None])[0]
        wait_param = q.get("wait", [None])[0]
        self._entry = st.log_request({
            "start": now_unix(), "end": None, "method": self.command, "path": self._path,
            "query": {k: v for k, v in q.items() if k != "token"},
            "index": idx_param, "wait": wait_param, "token": bool(self.request_token()),
            "state": "received", "status": None, "reason": None, "returned_index": None,
            "timeout_s": None, "jitter_s": None, "client_port": self.client_address[1],
        })
        for rx, methods, fn, kind in self.ROUTES:
            m = rx.match(self._path)
            if not m:
                continue
            self._entry["kind"] = kind
            post = self.apply_pre_fault(self.take_fault(kind))
            pol = [("X-Consul-Default-Acl-Policy", self.default_policy())]
            if self.command == "OPTIONS":
                self.reply(200, "", headers=pol + [("Allow", ",".join(("OPTIONS",) + methods))])
                return
            if self.command not in methods:
                raise HTTPError(405, "method %s not allowed" % self.command,
                                headers=[("Allow", ",".join(methods))])
            getattr(self, fn)(post, *m.groups())
            return
        self._entry["kind"] = "unknown"
        post = self.apply_pre_fault(self.take_fault("all"))
        self.reply(404, "")

    def parse_blocking(self):
        """parseWait + parseConsistency + dc."""
        q = self._q
        wait = None
        if q.get("wait", [""])[0] != "":
            try:
                wait = parse_go_duration(q["wait"][0])
            except ValueError:
                raise HTTPError(400, "Invalid wait time")
        index = 0
        if q.get("index", [""])[0] != "":
            try:
                index = parse_uint64(q["index"][0])
            except ValueError:
                raise HTTPError(400, "Invalid index")
        stale = "stale" in q
        consistent = "consistent" in q
        if stale and consistent:
            raise HTTPError(400, "Cannot specify ?stale with ?consistent, conflicting semantics.")
        dc = q.get("dc", [""])[0]
        if dc and dc != self.st.datacenter:
            raise HTTPError(500, "No path to datacenter")
        if "filter" in q and q["filter"][0] != "":
            raise HTTPError(400, "consul-double: ?filter is not implemented")
        consistency = "stale" if stale else ("consistent" if consistent else "leader")
        return index, wait, consistency

    def health_service(self, post_fault, name):
        st = self.st
        q = self._q
        index, wait, consistency = self.parse_blocking()
        if name == "":
            raise HTTPError(400, "Missing service name")
        passing = False
        if "passing" in q:
            v = q["passing"][0]
            if v == "":
                passing = True
            else:
                try:
                    passing = parse_go_bool(v)
                except ValueError:
                    raise HTTPError(400, "Invalid value for ?passing")
        tags = [t for t in q.get("tag", [])]
        node_meta = []
        for nm in q.get("node-meta", []):
            if ":" not in nm:
                raise HTTPError(400, "Invalid node-meta filter %r" % nm)
            k, v = nm.split(":", 1)
            node_meta.append((k, v))
        who = self.resolve_token()
        reason = "immediate"
        with st.lock:
            cfg = st.config
            cur = st.index_for(name)
            if index > 0:
                t = wait if wait is not None else 0.0
                if t > cfg["max_query_time"]:
                    t = float(cfg["max_query_time"])
                elif t <= 0:
                    t = float(cfg["default_query_time"])
                jitter = random.uniform(0, t / JITTER_FRACTION) if cfg["jitter"] else 0.0
                deadline = time.monotonic() + t + jitter
                st.log_update(self._entry, timeout_s=t, jitter_s=jitter,
                              seen_index=cur)
                if cur <= index:
                    gen0 = (st.abandon_gen, st.svc_abandon[name])
                    st.log_update(self._entry, state="blocking")
                    while True:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            reason = "timeout"
                            break
                        st.cond.wait(min(remaining, 0.2))
                        if (st.abandon_gen, st.svc_abandon[name]) != gen0:
                            reason = "abandoned"
                            break
                        if st.index_for(name) > index:
                            reason = "changed"
                            break
                        fm = st.fault["mode"]
                        if fm in ("down", "refuse", "reset") and self.fault_applies(st.fault,
                                                                                   "health"):
                            raise DropConnection(rst=fm == "reset")
                        if self.client_gone():
                            self.close_connection = True
                            st.log_update(self._entry, state="client-gone", end=now_unix(),
                                          reason="client-gone")
                            return
                else:
                    reason = "behind"  # the client's index is older: answer at once
            cur = st.index_for(name)
            entries = st.health_entries(name, tags, passing, node_meta)
        if who == "anonymous" and not self.allowed(who):
            entries = []  # reads are filtered by ACLs, not refused
        headers = [("X-Consul-Default-Acl-Policy", self.default_policy()),
                   ("X-Consul-Effective-Consistency", consistency),
                   ("X-Consul-Index", str(cur)),
                   ("X-Consul-Knownleader", "true" if st.config["known_leader"] else "false"),
                   ("X-Consul-Lastcontact", str(int(st.config["last_contact_ms"]))),
                   ("Vary", "Accept-Encoding")]
        if "cached" in q:
            headers += [("X-Cache", "MISS"), ("Age", "0")]
        st.log_update(self._entry, reason=reason, returned_index=cur)
        if post_fault is not None and post_fault["mode"] == "empty":
            self.reply_json(200, [], headers)
        elif post_fault is not None and post_fault["mode"] == "garbage":
            self.reply_json(200, None, headers,
                            raw=post_fault.get("body", '[{"Node": {"Node": "x",').encode())
        else:
            self.reply_json(200, entries, headers)

    def agent_self(self, post_fault):
        who = self.resolve_token()
        st = self.st
        if not self.allowed(who):
            self.deny("agent:read", st.node_name)
        obj = {
            "Config": {"Datacenter": st.datacenter, "PrimaryDatacenter": st.datacenter,
                       "NodeName": st.node_name, "NodeID": st.node_id, "Revision": "double",
                       "Server": True, "Version": VERSION, "BuildDate": "2023-01-01T00:00:00Z"},
            "Coord": None,
            "Member": {"Name": st.node_name, "Addr": st.node_address, "Port": 8301,
                       "Tags": {"dc": st.datacenter, "role": "consul", "id": st.node_id},
                       "Status": 1},
            "Stats": {}, "Meta": {"consul-network-segment": ""},
        }
        self.reply_json(200, obj, [("X-Consul-Default-Acl-Policy", self.default_policy())])

    def agent_services(self, post_fault):
        who = self.resolve_token()
        st = self.st
        out = {}
        if self.allowed(who):
            with st.lock:
                for sid, svc in st.agent_services.items():
                    s = {k: copy.deepcopy(v) for k, v in svc.items() if not k.startswith("_")}
                    s["Datacenter"] = st.datacenter
                    out[sid] = s
        self.reply_json(200, out, [("X-Consul-Default-Acl-Policy", self.default_policy())])

    def agent_checks(self, post_fault):
        who = self.resolve_token()
        st = self.st
        out = {}
        if self.allowed(who):
            with st.lock:
                for cid, c in st.agent_checks.items():
                    out[cid] = {"Node": st.node_name, "CheckID": cid, "Name": c["Name"],
                                "Status": c["Status"], "Notes": c["Notes"],
                                "Output": c["Output"], "ServiceID": c["ServiceID"],
                                "ServiceName": c["ServiceName"],
                                "ServiceTags": c["ServiceTags"], "Type": c["Type"],
                                "Interval": c["Interval"], "Timeout": c["Timeout"],
                                "ExposedPort": 0, "Definition": {},
                                "CreateIndex": 0, "ModifyIndex": 0}
        self.reply_json(200, out, [("X-Consul-Default-Acl-Policy", self.default_policy())])

    def decode_body(self):
        try:
            text = self._body.decode("utf-8")
            return json.loads(text) if text.strip() else None
        except (UnicodeDecodeError, ValueError) as e:
            raise HTTPError(400, "Request decode failed: %s" % e)

    def agent_service_register(self, post_fault):
        st = self.st
        ag = self.agent
        body = self.decode_body()
        if body is None:
            raise HTTPError(400, "Request decode failed: EOF")
        if not isinstance(body, dict):
            raise HTTPError(400, "Request decode failed: json: cannot unmarshal %s into Go "
                                 "value of type structs.ServiceDefinition" % type(body).__name__)
        name = nget(body, "Name", "") or ""
        sid = nget(body, "ID", "") or name
        if not isinstance(name, str) or name == "":
            st.record("register-rejected", http_status=400, reason="Missing service name")
            raise HTTPError(400, "Missing service name")
        address = nget(body, "Address", "") or ""
        if address in ("0.0.0.0", "::", "[::]"):
            raise HTTPError(400, "Invalid service address")
        port = nget(body, "Port", 0) or 0
        if not isinstance(port, int) or isinstance(port, bool):
            raise HTTPError(400, "Request decode failed: 1 error(s) decoding:\n\n* 'Port' "
                                 "expected type 'int', got unconvertible type '%s'"
                            % type(port).__name__)
        tags = nget(body, "Tags", None)
        if tags is not None and (not isinstance(tags, list)
                                 or not all(isinstance(t, str) for t in tags)):
            raise HTTPError(400, "Request decode failed: 'Tags' expected a list of strings")
        meta = nget(body, "Meta", None)
        if meta is not None and (not isinstance(meta, dict)
                                 or not all(isinstance(v, str) for v in meta.values())):
            raise HTTPError(400, "Request decode failed: 'Meta' expected a map of strings")
        weights = nget(body, "Weights", None)
        if weights is None:
            w = {"Passing": 1, "Warning": 1}
        else:
            if not isinstance(weights, dict):
                raise HTTPError(400, "Request decode failed: 'Weights' expected a map")
            w = {"Passing": nget(weights, "Passing", 0) or 0,
                 "Warning": nget(weights, "Warning", 0) or 0}
            if w["Passing"] < 1:
                raise HTTPError(400, "Invalid Weights: Passing must be greater than 0")
            if w["Warning"] < 0:
                raise HTTPError(400, "Invalid Weights: Warning must be greater or equal "
                                     "than 0")
        raw_checks = []
        one = nget(body, "Check", None)
        if isinstance(one, dict) and one:
            raw_checks.append(one)
        many = nget(body, "Checks", None) or []
        if not isinstance(many, list):
            raise HTTPError(400, "Request decode failed: 'Checks' expected a list")
        raw_checks += [c for c in many if c]
        checks = [ag.make_check(c, sid, name, tags, i, len(raw_checks))
                  for i, c in enumerate(raw_checks)]
        who = self.resolve_token()
        if not self.allowed(who):
            with st.lock:
                st.record("register-rejected", service_id=sid, http_status=403)
            self.deny("service:write", name)
        svc = {"ID": sid, "Service": name, "Tags": list(tags or []), "Address": address}
        tagged = nget(body, "TaggedAddresses", None)
        if tagged:
            svc["TaggedAddresses"] = copy.deepcopy(tagged)
        elif address and is_ipv4(address):
            svc["TaggedAddresses"] = {"lan_ipv4": {"Address": address, "Port": port},
                                      "wan_ipv4": {"Address": address, "Port": port}}
        svc.update({"Meta": copy.deepcopy(meta) if meta is not None else None, "Port": port,
                    "Weights": w,
                    "EnableTagOverride": bool(nget(body, "EnableTagOverride", False)),
                    "Proxy": {"Mode": "", "MeshGateway": {}, "Expose": {}}, "Connect": {}})
        kind = nget(body, "Kind", "")
        if kind:
            svc["Kind"] = kind
        replace = "replace-existing-checks" in self._q
        with st.lock:
            snap = {cid: (c["Status"], c["Output"]) for cid, c in st.agent_checks.items()}
            existing = [cid for cid, c in st.agent_checks.items() if c["ServiceID"] == sid]
            new_ids = {c["CheckID"] for c in checks}
            for cid in existing:
                if cid in new_ids or replace:
                    del st.agent_checks[cid]
            st.agent_services[sid] = svc
            for c in checks:
                ag.install_check(c, snap)
            st.record("register", service_id=sid, service=name, definition=copy.deepcopy(body),
                      checks=[c["CheckID"] for c in checks], http_status=200)
            ag.sync_service(sid)
        self.reply(200, "", headers=[("X-Consul-Default-Acl-Policy", self.default_policy())])

    def agent_service_deregister(self, post_fault, sid):
        st = self.st
        who = self.resolve_token()
        with st.lock:
            svc = st.agent_services.get(sid)
            if svc is not None and not self.allowed(who):
                st.record("deregister-rejected", service_id=sid, http_status=403)
                self.deny("service:write", svc["Service"])
            if svc is None:
                st.record("deregister-rejected", service_id=sid, http_status=404)
                raise HTTPError(404, "Unknown service ID %s. Ensure that the service ID is "
                                     "passed, not the service name." % json.dumps(sid))
            st.record("deregister", service_id=sid, service=svc["Service"], http_status=200)
            self.agent.remove_service(sid)
        self.reply(200, "", headers=[("X-Consul-Default-Acl-Policy", self.default_policy())])

    def agent_check_register(self, post_fault):
        st = self.st
        body = self.decode_body()
        if not isinstance(body, dict):
            raise HTTPError(400, "Request decode failed: EOF")
        if not nget(body, "Name", ""):
            raise HTTPError(400, "Missing check name")
        status = nget(body, "Status", "") or ""
        if status and status not in VALID_STATUS:
            raise HTTPError(400, "Bad check status")
        sid = nget(body, "ServiceID", "") or None
        with st.lock:
            svc = st.agent_services.get(sid) if sid else None
            if sid and svc is None:
                raise HTTPError(400, "ServiceID %s does not exist" % json.dumps(sid))
            chk = self.agent.make_check(body, sid, svc["Service"] if svc else None,
                                        svc["Tags"] if svc else [], 0, 1)
            if not (nget(body, "CheckID", None) or nget(body, "ID", None)):
                chk["CheckID"] = nget(body, "Name")
            chk["Name"] = nget(body, "Name")
        who = self.resolve_token()
        if not self.allowed(who):
            if svc:
                self.deny("service:write", svc["Service"])
            self.deny("node:write", st.node_name)
        with st.lock:
            snap = {cid: (c["Status"], c["Output"]) for cid, c in st.agent_checks.items()}
            self.agent.install_check(chk, snap)
            st.record("check-register", check_id=chk["CheckID"], service_id=sid or "",
                      http_status=200)
            if sid:
                self.agent.sync_service(sid)
            else:
                self.agent.sync_node_check(chk["CheckID"])
        self.reply(200, "", headers=[("X-Consul-Default-Acl-Policy", self.default_policy())])

    def vet_check(self, cid, who, op):
        st = self.st
        c = st.agent_checks.get(cid)
        if c is not None and not self.allowed(who):
            st.record(op + "-rejected", check_id=cid, http_status=403)
            if c["ServiceName"]:
                self.deny("service:write", c["ServiceName"])
            self.deny("node:write", st.node_name)
        if c is None:
            st.record(op + "-rejected", check_id=cid, http_status=404)
            raise HTTPError(404, "Unknown check ID %s. Ensure that the check ID is passed, "
                                 "not the check name." % json.dumps(cid))
        return c

    def agent_check_deregister(self, post_fault, cid):
        st = self.st
        who = self.resolve_token()
        with st.lock:
            c = self.vet_check(cid, who, "check-deregister")
            del st.agent_checks[cid]
            st.record("check-deregister", check_id=cid, http_status=200)
            if c["ServiceID"]:
                self.agent.sync_service(c["ServiceID"])
            else:
                self.agent.sync_node_check(cid)
        self.reply(200, "", headers=[("X-Consul-Default-Acl-Policy", self.default_policy())])

    def ttl_update(self, cid, status, output, op):
        st = self.st
        who = self.resolve_token()
        with st.lock:
            c = self.vet_check(cid, who, op)
            if c["ttl"] is None:
                st.record(op + "-rejected", check_id=cid, http_status=500)
                raise HTTPError(500, "CheckID %s does not have associated TTL"
                                % json.dumps(cid))
            output = self.agent.truncate(output)
            c["expires_at"] = time.monotonic() + c["ttl"]  # timer.Reset(TTL)
            c["last_output"] = output
            st.record(op, check_id=cid, service_id=c["ServiceID"], status=status,
                      output=output, http_status=200)
            self.agent.update_check(cid, status, output, op)
        self.reply(200, "", headers=[("X-Consul-Default-Acl-Policy", self.default_policy())])

    def agent_check_ttl(self, post_fault, verb, cid):
        status = {"pass": HEALTH_PASSING, "warn": HEALTH_WARNING, "fail": HEALTH_CRITICAL}[verb]
        note = self._q.get("note", [""])[0]
        self.ttl_update(cid, status, note, verb)

    def agent_check_update(self, post_fault, cid):
        body = self.decode_body()
        if body is None:
            raise HTTPError(400, "Request decode failed: EOF")
        if not isinstance(body, dict):
            raise HTTPError(400, "Request decode failed: json: cannot unmarshal into "
                                 "checkUpdate")
        status = nget(body, "Status", "") or ""
        if status not in VALID_STATUS:
            raise HTTPError(400, "Invalid check status: '%s'" % status)
        output = nget(body, "Output", "") or ""
        self.ttl_update(cid, status, output, "update")

    def status_leader(self, post_fault):
        st = self.st
        leader = st.config["leader"] if st.config["known_leader"] else ""
        self.reply_json(200, leader, [("X-Consul-Default-Acl-Policy", self.default_policy())])

    def status_peers(self, post_fault):
        self.reply_json(200, [self.st.config["leader"]],
                        [("X-Consul-Default-Acl-Policy", self.default_policy())])

    # -- /_double control API ------------------------------------------------
    def control_body(self, required=True):
        if not self._body.strip():
            if required:
                raise HTTPError(400, "a JSON body is required")
            return None
        try:
            return json.loads(self._body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise HTTPError(400, "invalid JSON body: %s" % e)

    def control_reply(self, obj, status=200):
        self.reply(status, go_json(obj), "application/json")

    def service_view(self, name):
        st = self.st
        insts = st.services.get(name) or {}
        return {"service": name, "index": st.index_for(name),
                "instances": [{"id": k[1], "node": k[0], "source": v["source"],
                               "address": v["svc"]["Address"], "port": v["svc"]["Port"],
                               "tags": v["svc"]["Tags"], "meta": v["svc"]["Meta"],
                               "weights": v["svc"]["Weights"],
                               "checks": {c: x["Status"] for c, x in v["checks"].items()}}
                              for k, v in sorted(insts.items())]}

    def put_control_instances(self, name, raws, replace):
        st = self.st
        parsed = [control_instance(name, r) for r in raws]
        ids = [p[4]["ID"] for p in parsed]
        if len(set(ids)) != len(ids):
            raise HTTPError(400, "duplicate instance ids")
        with st.lock:
            txn = st._begin()
            keep = set()
            for node, naddr, nmeta, nstatus, svc, checks in parsed:
                for key, _inst in st._find_instances(name, svc["ID"]):
                    if key[0] != node and _inst["source"] == "control":
                        st._del_instance(txn, name, key[0], key[1])
                st._ensure_node(txn, node, naddr, nmeta, nstatus)
                svc["_source"] = "control"
                st._put_instance(txn, name, node, svc, checks)
                keep.add((node, svc["ID"]))
            if replace:
                for key, inst in list((st.services.get(name) or {}).items()):
                    if inst["source"] == "control" and key not in keep:
                        st._del_instance(txn, name, key[0], key[1])
            if not st.services.get(name):
                st.services.pop(name, None)
            changed = st._commit(txn)
            view = self.service_view(name)
            view["changed"] = changed
        return view

    def control(self):
        st = self.st
        path = self._path[len("/_double"):]
        cmd = self.command
        m = re.match(r"^/service/([^/]+)$", path)
        if m:
            name = m.group(1)
            if cmd == "GET":
                with st.lock:
                    return self.control_reply(self.service_view(name))
            if cmd == "PUT":
                body = self.control_body()
                if isinstance(body, dict):
                    body = nget(body, "instances", None)
                if not isinstance(body, list):
                    raise HTTPError(400, "body must be a JSON list of instances")
                return self.control_reply(self.put_control_instances(name, body, True))
            if cmd == "DELETE":
                with st.lock:
                    txn = st._begin()
                    for key, inst in list((st.services.get(name) or {}).items()):
                        if inst["source"] == "control":
                            st._del_instance(txn, name, key[0], key[1])
                    changed = st._commit(txn)
                    view = self.service_view(name)
                    view["changed"] = changed
                return self.control_reply(view)
            raise HTTPError(405, "method not allowed")
        m = re.match(r"^/service/([^/]+)/instance/([^/]+)$", path)
        if m:
            name, sid = m.group(1), m.group(2)
            if cmd == "PUT":
                body = self.control_body()
                if not isinstance(body, dict):
                    raise HTTPError(400, "body must be a JSON object")
                body = dict(body)
                body["id"] = sid
                return self.control_reply(self.put_control_instances(name, [body], False))
            if cmd == "PATCH":
                body = self.control_body()
                if not isinstance(body, dict):
                    raise HTTPError(400, "body must be a JSON object")
                with st.lock:
                    found = [(k, v) for k, v in st._find_instances(name, sid)
                             if v["source"] == "control"]
                    if not found:
                        raise HTTPError(404, "no control instance %s of %s" % (sid, name))
                    (node, _), inst = found[0]
                    nd = st.nodes[node]
                    svc = inst["svc"]
                    cur = {"id": sid, "address": svc["Address"], "port": svc["Port"],
                           "tags": svc["Tags"], "meta": svc["Meta"],
                           "weights": {"passing": svc["Weights"]["Passing"],
                                       "warning": svc["Weights"]["Warning"]},
                           "enable_tag_override": svc["EnableTagOverride"], "node": node,
                           "node_address": nd["Address"],
                           "node_meta": {k: v for k, v in nd["Meta"].items()
                                         if k != "consul-network-segment"},
                           "node_status": nd["checks"]["serfHealth"]["Status"],
                           "checks": [{"id": c["CheckID"], "name": c["Name"],
                                       "status": c["Status"], "output": c["Output"],
                                       "notes": c["Notes"], "type": c["Type"]}
                                      for _, c in sorted(inst["checks"].items())]}
                    for k, v in body.items():
                        cur = {kk: vv for kk, vv in cur.items() if nkey(kk) != nkey(k)}
                        cur[k] = v
                    if ("status" in {nkey(k) for k in body} or "output" in {
                            nkey(k) for k in body}) and "checks" not in {nkey(k) for k in body}:
                        # a status/output on PATCH applies to every service check
                        for c in cur["checks"]:
                            if nget(body, "status", None) is not None:
                                c["status"] = nget(body, "status")
                            if nget(body, "output", None) is not None:
                                c["output"] = nget(body, "output")
                    return self.control_reply(self.put_control_instances(name, [cur], False))
            if cmd == "DELETE":
                with st.lock:
                    txn = st._begin()
                    found = False
                    for key, inst in st._find_instances(name, sid):
                        if inst["source"] == "control":
                            found = st._del_instance(txn, name, key[0], key[1]) or found
                    st._commit(txn)
                    if not found:
                        raise HTTPError(404, "no control instance %s of %s" % (sid, name))
                    return self.control_reply(self.service_view(name))
            raise HTTPError(405, "method not allowed")
        m = re.match(r"^/touch/([^/]+)$", path)
        if m and cmd in ("POST", "PUT"):
            name = m.group(1)
            with st.lock:
                if not st.services.get(name):
                    raise HTTPError(404, "service %s has no instances" % name)
                txn = st._begin()
                txn["affected"].add(name)
                st._commit(txn, force=True)
                return self.control_reply(self.service_view(name))
        m = re.match(r"^/reset-index(?:/([^/]+))?$", path)
        if m and cmd in ("POST", "PUT"):
            name = m.group(1)
            body = self.control_body(required=False) or {}
            new = nget(body, "index", 2)
            abandon = nget(body, "abandon", True)
            if not isinstance(new, int) or new < 1:
                raise HTTPError(400, "index must be an integer >= 1")
            with st.lock:
                if name is not None:
                    if not st.services.get(name):
                        raise HTTPError(404, "service %s has no instances; use "
                                             "/_double/reset-index for the whole store" % name)
                    old = st.index_for(name)
                    if new >= old:
                        raise HTTPError(400, "index %d is not below the current %d"
                                        % (new, old))
                    st.svc_index[name] = new
                    for inst in st.services[name].values():
                        inst["CreateIndex"] = min(inst["CreateIndex"], new)
                        inst["ModifyIndex"] = min(inst["ModifyIndex"], new)
                        for c in inst["checks"].values():
                            c["CreateIndex"] = min(c["CreateIndex"], new)
                            c["ModifyIndex"] = min(c["ModifyIndex"], new)
                    if abandon:
                        st.svc_abandon[name] += 1
                else:
                    old = st.raft
                    if new >= old:
                        raise HTTPError(400, "index %d is not below the current %d"
                                        % (new, old))
                    st.raft = st.max_index = new
                    st.last_extinction = min(st.last_extinction, new)
                    for n in st.svc_index:
                        st.svc_index[n] = min(st.svc_index[n], new)
                    for nd in st.nodes.values():
                        nd["CreateIndex"] = min(nd["CreateIndex"], new)
                        nd["ModifyIndex"] = min(nd["ModifyIndex"], new)
                        for c in nd["checks"].values():
                            c["CreateIndex"] = min(c["CreateIndex"], new)
                            c["ModifyIndex"] = min(c["ModifyIndex"], new)
                    for insts in st.services.values():
                        for inst in insts.values():
                            inst["CreateIndex"] = min(inst["CreateIndex"], new)
                            inst["ModifyIndex"] = min(inst["ModifyIndex"], new)
                            for c in inst["checks"].values():
                                c["CreateIndex"] = min(c["CreateIndex"], new)
                                c["ModifyIndex"] = min(c["ModifyIndex"], new)
                    if abandon:
                        st.abandon_gen += 1
                st.cond.notify_all()
                return self.control_reply({"old_index": old, "index": new,
                                           "abandoned": bool(abandon)})
        if path == "/fault":
            if cmd == "GET":
                with st.lock:
                    return self.control_reply(self.fault_view())
            if cmd in ("PUT", "POST"):
                body = self.control_body()
                if not isinstance(body, dict):
                    raise HTTPError(400, "body must be a JSON object")
                mode = str(nget(body, "mode", "none"))
                if mode not in FAULT_MODES:
                    raise HTTPError(400, "mode must be one of %s" % ", ".join(FAULT_MODES))
                scope = nget(body, "scope", "all")
                if scope not in ("all", "health", "agent", "status"):
                    raise HTTPError(400, "scope must be all, health, agent or status")
                if mode == "refuse" and st.refuse_hook is None:
                    raise HTTPError(400, "mode refuse needs --control-port (the API "
                                         "listener is closed)")
                f = {"mode": mode, "scope": scope}
                for k in ("seconds", "count", "body"):
                    v = nget(body, k, None)
                    if v is not None:
                        f[k] = v
                dur = nget(body, "for_seconds", None)
                if dur is not None:
                    f["until"] = time.monotonic() + float(dur)
                if mode == "stall" and f.get("seconds") is None:
                    raise HTTPError(400, "mode stall needs seconds")
                with st.lock:
                    st.fault = f if mode != "none" else {"mode": "none"}
                    st.fault_gen += 1
                    st.cond.notify_all()
                if st.refuse_hook is not None:
                    st.refuse_hook(mode == "refuse")
                with st.lock:
                    return self.control_reply(self.fault_view())
            raise HTTPError(405, "method not allowed")
        if path == "/registrations" and cmd == "GET":
            with st.lock:
                return self.control_reply(self.registrations_view())
        if path == "/requests":
            if cmd == "DELETE":
                with st.lock:
                    st.req_log.clear()
                return self.control_reply({"cleared": True})
            if cmd == "GET":
                return self.control_reply(self.requests_view())
        if path == "/config":
            if cmd in ("PUT", "POST"):
                body = self.control_body()
                if not isinstance(body, dict):
                    raise HTTPError(400, "body must be a JSON object")
                with st.lock:
                    for k, v in body.items():
                        if k not in DEFAULT_CONFIG:
                            raise HTTPError(400, "unknown config key %s" % k)
                        if k in ("max_query_time", "default_query_time",
                                 "check_update_interval", "reap_interval", "dcsa_min") \
                                and isinstance(v, str):
                            v = parse_go_duration(v)
                        st.config[k] = v
                    st._next_reap = time.monotonic() + float(st.config["reap_interval"])
                    st.cond.notify_all()
            with st.lock:
                return self.control_reply(dict(st.config))
        m = re.match(r"^/agent/check/([^/]+)$", path)
        if m and cmd in ("PUT", "POST"):
            cid = m.group(1)
            body = self.control_body()
            with st.lock:
                if cid not in st.agent_checks:
                    raise HTTPError(404, "no agent check %s" % cid)
                status = nget(body, "status", st.agent_checks[cid]["Status"])
                if status not in VALID_STATUS:
                    raise HTTPError(400, "bad status")
                st.record("control-check", check_id=cid, status=status)
                self.agent.update_check(cid, status, nget(body, "output", "") or "", "control")
                return self.control_reply(self.registrations_view())
        if path == "/state" and cmd == "GET":
            with st.lock:
                return self.control_reply({
                    "raft_index": st.raft, "max_index": st.max_index,
                    "last_extinction": st.last_extinction, "service_index": dict(st.svc_index),
                    "services": {n: self.service_view(n) for n in st.services},
                    "nodes": sorted(st.nodes)})
        if path == "/reset-all" and cmd in ("POST", "PUT"):
            st.reset_all()
            if st.refuse_hook is not None:
                st.refuse_hook(False)
            return self.control_reply({"reset": True, "index": st.raft})
        raise HTTPError(404, "unknown control endpoint %s %s" % (cmd, self._path))

    def fault_view(self):
        f = dict(self.st.fault)
        if f.get("until") is not None:
            f["remaining_s"] = max(0.0, f.pop("until") - time.monotonic())
        return f

    def registrations_view(self):
        st = self.st
        now = time.monotonic()
        checks = {}
        for cid, c in st.agent_checks.items():
            checks[cid] = {
                "CheckID": cid, "Name": c["Name"], "ServiceID": c["ServiceID"],
                "ServiceName": c["ServiceName"], "Type": c["Type"], "TTL": c["TTL"],
                "Status": c["Status"], "Output": c["Output"], "Notes": c["Notes"],
                "CatalogStatus": c["synced_status"], "CatalogOutput": c["synced_output"],
                "registered_at": c["registered_at"], "last_update_at": c["last_update_at"],
                "ttl_remaining_s": (max(0.0, c["expires_at"] - now)
                                    if c["expires_at"] is not None else None),
                "DeregisterCriticalServiceAfter_s": c["dcsa"],
            }
        services = {}
        for sid, svc in st.agent_services.items():
            s = {k: copy.deepcopy(v) for k, v in svc.items() if not k.startswith("_")}
            s["Checks"] = sorted(cid for cid, c in st.agent_checks.items()
                                 if c["ServiceID"] == sid)
            services[sid] = s
        return {"node": st.node_name, "services": services, "checks": checks,
                "deregistered": list(st.deregistered), "history": list(st.history)}

    def requests_view(self):
        st = self.st
        q = self._q

        def one(name, default=None):
            return q.get(name, [default])[0]
        flt_path = one("path")
        flt_prefix = one("path_prefix")
        flt_kind = one("kind")
        flt_state = one("state")
        flt_method = one("method")
        inflight = one("inflight") in ("1", "true")
        since = int(one("since", "0") or 0)
        wait_for = int(one("wait_for", "0") or 0)
        timeout = float(one("timeout", "0") or 0)

        def match(e):
            if e["seq"] <= since:
                return False
            if flt_path is not None and e["path"] != flt_path:
                return False
            if flt_prefix is not None and not e["path"].startswith(flt_prefix):
                return False
            if flt_kind is not None and e.get("kind") != flt_kind:
                return False
            if flt_state is not None and e.get("state") != flt_state:
                return False
            if flt_method is not None and e["method"] != flt_method:
                return False
            if inflight and e["end"] is not None:
                return False
            return True
        deadline = time.monotonic() + timeout
        with st.lock:
            while True:
                res = [dict(e) for e in st.req_log if match(e)]
                if len(res) >= wait_for or time.monotonic() >= deadline:
                    break
                st.log_cond.wait(min(0.2, max(0.0, deadline - time.monotonic())))
            return {"requests": res, "count": len(res),
                    "timed_out": wait_for > 0 and len(res) < wait_for,
                    "last_seq": st.req_seq, "now": now_unix()}


# ----------------------------------------------------------------------------
# Servers
# ----------------------------------------------------------------------------

class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def make_handler(st, agent, verbose, control_only=False):
    return type("BoundHandler", (Handler,), {"st": st, "agent": agent, "verbose": verbose,
                                             "is_control_only": control_only})


class Runner:
    def __init__(self, args):
        self.args = args
        self.st = State(args.node_name, args.node_address, args.datacenter, args.token,
                        args.acl_default_policy)
        self.st._next_reap = time.monotonic() + self.st.config["reap_interval"]
        self.st.config["max_query_time"] = args.max_query_time
        self.st.config["default_query_time"] = args.default_query_time
        self.agent = Agent(self.st)
        self.stop_ev = threading.Event()
        self.api = None
        self.api_thread = None
        self.api_addr = None
        self.api_lock = threading.Lock()
        self.control = None

    def start_api(self, port):
        srv = Server((self.args.bind, port), make_handler(self.st, self.agent, self.args.verbose))
        th = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1},
                              daemon=True)
        th.start()
        self.api, self.api_thread = srv, th
        self.api_addr = srv.server_address[:2]

    def refuse(self, on):
        with self.api_lock:
            if on and self.api is not None:
                srv = self.api
                self.api = None
                srv.shutdown()
                srv.server_close()
            elif not on and self.api is None:
                for _ in range(50):
                    try:
                        self.start_api(self.api_addr[1])
                        break
                    except OSError:
                        time.sleep(0.05)

    def ticker(self):
        while not self.stop_ev.wait(0.01):
            with self.st.lock:
                self.agent.tick()

    def run(self):
        self.start_api(self.args.port)
        if self.args.control_port is not None:
            self.control = Server((self.args.bind, self.args.control_port),
                                  make_handler(self.st, self.agent, self.args.verbose, True))
            threading.Thread(target=self.control.serve_forever,
                             kwargs={"poll_interval": 0.1}, daemon=True).start()
            self.st.refuse_hook = self.refuse
        threading.Thread(target=self.ticker, daemon=True).start()
        host, port = self.api_addr
        line = "listening %s:%d" % (host, port)
        if self.control is not None:
            line += " control %s:%d" % self.control.server_address[:2]
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
        self.stop_ev.wait()
        with self.api_lock:
            if self.api is not None:
                self.api.shutdown()
                self.api.server_close()
        if self.control is not None:
            self.control.shutdown()
            self.control.server_close()


def main(argv=None):
    p = argparse.ArgumentParser(description="Consul HTTP API double for tests")
    p.add_argument("--bind", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--control-port", type=int, default=None,
                   help="also serve /_double/ on this port (needed for fault mode refuse)")
    p.add_argument("--token", default=None,
                   help="enable ACLs: this is the only valid token (a management token)")
    p.add_argument("--acl-default-policy", choices=("allow", "deny"), default="deny",
                   help="acl.default_policy when --token is given (anonymous requests)")
    p.add_argument("--node-name", default="consul-double")
    p.add_argument("--node-address", default="127.0.0.1")
    p.add_argument("--datacenter", default="dc1")
    p.add_argument("--max-query-time", type=parse_go_duration, default=600.0)
    p.add_argument("--default-query-time", type=parse_go_duration, default=300.0)
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    runner = Runner(args)

    def on_signal(signum, frame):
        runner.stop_ev.set()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    runner.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
