"""Deployment files (nomad/): what can be checked without Nomad, Consul, Vault
or a Docker engine.

- Every nomad/*.nomad parses with HashiCorp's HCL2 parser (@cdktf/hcl2json
  from the npm registry, installed once into <repo>/.work/; skipped with the
  reason when npm cannot reach the registry), and the fields the deployment
  relies on are asserted, including the contracts between the jobs (socket
  paths, key prefix, build id Meta, canary tag, route tables).
- The Go templates of the jobs are rendered by a small stand-in for
  consul-template (below: the subset the jobs use) and the resulting
  cedra-spoa and cedra-agent configurations are checked with the daemons' own
  -c, the HAProxy environment with haproxy -c.
- nomad/edge-build.sh (the edge image's build stage) runs here: configure,
  make, make install DESTDIR; the staged binaries are the ones checked
  (CEDRA_EDGE_SRC: build another checkout than this work tree).
- nomad/deploy.sh runs against fake docker, bun, consul and nomad commands
  (shell shims first on PATH that log their argv and answer as the real ones
  do): dry run, healthy canary, --auto-promote, failure with auto_revert,
  timeout, errors.
- nomad/cedra-routes-sync.sh splits rendered bundles; shellcheck on every
  script (skipped when shellcheck is not installed: apt-get install shellcheck);
  static checks of the Dockerfiles (no hadolint here).
"""

import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
import unittest
import urllib.parse

import harness

REPO = harness.REPO
NOMAD = os.path.join(REPO, "nomad")
JOBS = ["cedra-storefront.nomad", "valkey.nomad", "cedra-edge.nomad"]
HCL2JSON_VERSION = "0.21.0"
WORK = os.path.join(REPO, ".work")  # git-ignored


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


# ---------------------------------------------------------------------------
# HCL2: HashiCorp's parser (hcl2json compiled to WebAssembly, npm)
# ---------------------------------------------------------------------------

_HCL_CACHE = {}
_HCL_SKIP = []  # the reason npm failed, so that the next tests skip at once


def hcl2json_dir():
    """Installs @cdktf/hcl2json once; returns its directory or raises SkipTest."""
    if _HCL_SKIP:
        raise unittest.SkipTest(_HCL_SKIP[0])
    d = os.path.join(WORK, "hcl2json-%s" % HCL2JSON_VERSION)
    mod = os.path.join(d, "node_modules", "@cdktf", "hcl2json", "package.json")
    if os.path.exists(mod):
        return d
    if not shutil.which("node") or not shutil.which("npm"):
        raise unittest.SkipTest("node/npm not installed: cannot run the HCL2 parser")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "package.json"), "w") as f:
        json.dump({"name": "cedra-hcl2json", "private": True, "version": "0.0.0"}, f)
    r = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error",
                        "@cdktf/hcl2json@%s" % HCL2JSON_VERSION], cwd=d,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
    if r.returncode != 0 or not os.path.exists(mod):
        shutil.rmtree(d, ignore_errors=True)
        _HCL_SKIP.append("npm could not install @cdktf/hcl2json@%s (registry unreachable?): %s"
                         % (HCL2JSON_VERSION, r.stdout.decode(errors="replace")[-300:]))
        raise unittest.SkipTest(_HCL_SKIP[0])
    return d


PARSE_JS = r"""
const { parse } = require("@cdktf/hcl2json");
const fs = require("fs");
(async () => {
  const out = {};
  for (const f of process.argv.slice(2)) {
    try { out[f] = { ok: await parse(f, fs.readFileSync(f, "utf8")) }; }
    catch (e) { out[f] = { error: String(e && e.message || e) }; }
  }
  process.stdout.write(JSON.stringify(out));
})();
"""


def hcl_parse(paths):
    """{path: {"ok": json} | {"error": message}} from HashiCorp's parser."""
    d = hcl2json_dir()
    js = os.path.join(d, "parse.js")
    with open(js, "w") as f:
        f.write(PARSE_JS)
    r = subprocess.run(["node", js] + list(paths), cwd=d, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=120)
    if r.returncode != 0:
        raise AssertionError("hcl2json runner failed: %s" % r.stderr.decode(errors="replace"))
    return json.loads(r.stdout)


def job_json(name):
    if name not in _HCL_CACHE:
        res = hcl_parse([os.path.join(NOMAD, j) for j in JOBS])
        for path, v in res.items():
            _HCL_CACHE[os.path.basename(path)] = v
    v = _HCL_CACHE[name]
    if "error" in v:
        raise AssertionError("%s does not parse: %s" % (name, v["error"]))
    return v["ok"]


def one(blocks, what="block"):
    assert isinstance(blocks, list) and len(blocks) == 1, "%s: expected one, got %r" % (what, blocks)
    return blocks[0]


def variables(doc, overrides=None):
    vals = {}
    for name, blocks in doc.get("variable", {}).items():
        b = one(blocks, "variable " + name)
        if "default" in b:
            vals[name] = b["default"]
    vals.update(overrides or {})
    return vals


def hcl_string(s, doc, overrides=None, runtime=None):
    """What Nomad makes of an HCL string as hcl2json returns it: ${var.x} and
    ${local.x} evaluated, $${ and %%{ unescaped, runtime ${...} (NOMAD_*,
    node.*) from `runtime` when given, else kept."""
    vs = variables(doc, overrides)
    locs = {}
    for blk in doc.get("locals", []):
        locs.update(blk)

    def sub(m):
        expr = m.group(1)
        if expr.startswith("var."):
            v = vs[expr[4:]]
            return str(v).lower() if isinstance(v, bool) else str(v)
        if expr.startswith("local."):
            return hcl_string(locs[expr[6:]], doc, overrides, runtime)
        if runtime is not None and expr in runtime:
            return str(runtime[expr])
        return "${%s}" % expr

    out = re.sub(r"(?<!\$)\$\{([^}]*)\}", sub, s)
    return out.replace("$${", "${").replace("%%{", "%{")


def durations(s):
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", s)
    assert m, "bad duration %r" % s
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


# ---------------------------------------------------------------------------
# A stand-in for consul-template: the subset of Go's text/template the jobs
# use (text, {{- -}} trimming, with/range/if/else/end, variables, pipelines,
# the functions below). Unknown syntax or functions raise, so a template the
# stand-in cannot read is a test failure, not a silent pass.
# ---------------------------------------------------------------------------

class TemplateError(Exception):
    pass


def _tokenize(src):
    toks = []
    pos = 0
    for m in re.finditer(r"\{\{(-\s)?(.*?)(\s-)?\}\}", src, re.S):
        toks.append(["text", src[pos:m.start()]])
        toks.append(["action", m.group(2).strip(), bool(m.group(1)), bool(m.group(3))])
        pos = m.end()
    toks.append(["text", src[pos:]])
    for i, t in enumerate(toks):
        if t[0] != "action":
            continue
        if t[2] and i > 0:
            toks[i - 1][1] = toks[i - 1][1].rstrip()
        if t[3] and i + 1 < len(toks):
            toks[i + 1][1] = toks[i + 1][1].lstrip()
    if "{{" in "".join(t[1] for t in toks if t[0] == "text"):
        raise TemplateError("unbalanced {{")
    return toks


def _parse(toks, i=0, nested=False):
    """Nodes up to the end of the tokens (top level) or up to the {{end}} or
    {{else}} that closes a block (nested); returns (nodes, index, word)."""
    nodes = []
    while i < len(toks):
        t = toks[i]
        if t[0] == "text":
            nodes.append(("text", t[1]))
            i += 1
            continue
        a = t[1]
        words = a.split()
        word = words[0] if words else ""
        if a.startswith("/*"):
            i += 1
            continue
        if word in ("end", "else"):
            if not nested or len(words) != 1:
                raise TemplateError("unexpected {{%s}}" % a)
            return nodes, i, word
        if word in ("if", "with", "range"):
            body, i, w = _parse(toks, i + 1, True)
            els = []
            if w == "else":
                els, i, w = _parse(toks, i + 1, True)
                if w != "end":
                    raise TemplateError("{{%s}}: a second {{else}}" % a)
            nodes.append((word, a[len(word):].strip(), body, els))
            i += 1
            continue
        nodes.append(("action", a))
        i += 1
    if nested:
        raise TemplateError("missing {{end}}")
    return nodes, i, None


def _split_words(s):
    return re.findall(r'"(?:[^"\\]|\\.)*"|`[^`]*`|[^\s]+', s)


class GoTemplate:
    def __init__(self, ctx):
        self.ctx = ctx  # env, services, secrets, kv
        self.funcs = {
            "env": lambda k: str(ctx["env"].get(k, "")),
            "service": self._service,
            "secret": self._secret,
            "ls": self._ls,
            "key": lambda k: ctx["kv"][k],
            "index": lambda c, i: c[int(i)] if isinstance(c, list) else c[i],
            "eq": lambda a, b: a == b,
            "urlquery": lambda s: urllib.parse.quote_plus(str(s)),
            "toJSON": lambda v: json.dumps(v),
        }

    def _service(self, q):
        name = q.split("|")[0]
        tag = None
        if "." in name:
            tag, name = name.split(".", 1)
        out = []
        for s in self.ctx["services"].get(name, []):
            if tag and tag not in s.get("Tags", []):
                continue
            if "|" not in q and s.get("Status", "passing") != "passing":
                continue
            out.append(s)
        return out

    def _secret(self, path):
        if path not in self.ctx["secrets"]:
            raise TemplateError("no secret %s in the test context" % path)
        return {"Data": {"data": self.ctx["secrets"][path]}}

    def _ls(self, prefix):
        prefix = prefix.rstrip("/") + "/"
        out = []
        for k in sorted(self.ctx["kv"]):
            rest = k[len(prefix):]
            if k.startswith(prefix) and rest and "/" not in rest:
                out.append({"Key": rest, "Value": self.ctx["kv"][k]})
        return out

    @staticmethod
    def truth(v):
        return bool(v)

    def _operand(self, w, dot, vars_):
        if w.startswith('"'):
            return json.loads(w)
        if w.startswith("`"):
            return w[1:-1]
        if re.fullmatch(r"-?\d+", w):
            return int(w)
        if w in ("true", "false"):
            return w == "true"
        if w == ".":
            return dot
        if w.startswith("$") or w.startswith("."):
            if w.startswith("$"):
                name, _, path = w.partition(".")
                if name not in vars_:
                    raise TemplateError("undefined variable %s" % name)
                v = vars_[name]
            else:
                v, path = dot, w[1:]
            for part in [p for p in path.split(".") if p]:
                if not isinstance(v, dict) or part not in v:
                    raise TemplateError("no field %s in %r" % (part, v))
                v = v[part]
            return v
        raise TemplateError("cannot read operand %r" % w)

    def _command(self, words, dot, vars_, piped=None):
        if words[0] == "(":
            raise TemplateError("parentheses are not supported by the stand-in")
        if re.fullmatch(r"[A-Za-z_]\w*", words[0]) and words[0] not in ("true", "false"):
            fn = self.funcs.get(words[0])
            if fn is None:
                raise TemplateError("function %s not known to the stand-in" % words[0])
            args = [self._operand(w, dot, vars_) for w in words[1:]]
            if piped is not None:
                args.append(piped[0])
            return fn(*args)
        if len(words) != 1 or piped is not None:
            raise TemplateError("cannot evaluate %r" % words)
        return self._operand(words[0], dot, vars_)

    def pipeline(self, s, dot, vars_):
        val = None
        first = True
        for cmd in [c.strip() for c in re.split(r'\|(?=(?:[^"]*"[^"]*")*[^"]*$)', s)]:
            words = _split_words(cmd)
            if not words:
                raise TemplateError("empty command in %r" % s)
            val = self._command(words, dot, vars_, None if first else (val,))
            first = False
        return val

    def _decl(self, a):
        m = re.match(r"^(\$\w+)(?:\s*,\s*(\$\w+))?\s*:=\s*(.*)$", a, re.S)
        return (m.group(1), m.group(2), m.group(3)) if m else (None, None, a)

    def run(self, nodes, dot, vars_):
        out = []
        for n in nodes:
            kind = n[0]
            if kind == "text":
                out.append(n[1])
            elif kind == "action":
                v1, v2, expr = self._decl(n[1])
                val = self.pipeline(expr, dot, vars_)
                if v1:
                    vars_[v1] = val
                else:
                    out.append("" if val is None else str(val))
            elif kind in ("if", "with"):
                val = self.pipeline(n[1], dot, vars_)
                if self.truth(val):
                    out.append(self.run(n[2], val if kind == "with" else dot, dict(vars_)))
                else:
                    out.append(self.run(n[3], dot, dict(vars_)))
            elif kind == "range":
                v1, v2, expr = self._decl(n[1])
                coll = self.pipeline(expr, dot, vars_)
                if not coll:
                    out.append(self.run(n[3], dot, dict(vars_)))
                    continue
                items = list(coll.items()) if isinstance(coll, dict) else list(enumerate(coll))
                for k, v in items:
                    scope = dict(vars_)
                    if v1 and v2:
                        scope[v1], scope[v2] = k, v
                    elif v1:
                        scope[v1] = v
                    out.append(self.run(n[2], v, scope))
        return "".join(out)

    def render(self, src):
        nodes, _, _ = _parse(_tokenize(src))
        return self.run(nodes, None, {"$": None})


# ---------------------------------------------------------------------------
# helpers on the parsed jobs
# ---------------------------------------------------------------------------

def storefront():
    doc = job_json("cedra-storefront.nomad")
    return doc, one(doc["job"]["cedra-storefront"], "job")


def valkey():
    doc = job_json("valkey.nomad")
    return doc, one(doc["job"]["valkey"], "job")


def edge():
    doc = job_json("cedra-edge.nomad")
    return doc, one(doc["job"]["cedra-edge"], "job")


def edge_group():
    doc, job = edge()
    return doc, job, one(job["group"]["edge"], "group edge")


def template_with(task, needle):
    found = [t for t in task.get("template", []) if needle in t.get("data", "")]
    assert len(found) == 1, "expected one template containing %r, got %d" % (needle, len(found))
    return found[0]


# The values a Nomad client gives the edge tasks (docker driver: the shared
# allocation directory is /alloc inside the containers).
def edge_runtime(alloc_dir):
    return {
        "NOMAD_ALLOC_DIR": alloc_dir,
        "NOMAD_IP_spoa_metrics": "127.0.0.1",
        "NOMAD_PORT_spoa_metrics": str(harness.free_port()),
        "NOMAD_IP_agent_metrics": "127.0.0.1",
        "NOMAD_PORT_agent_metrics": str(harness.free_port()),
        "NOMAD_PORT_deliver": str(harness.free_port()),
        "NOMAD_PORT_http": str(harness.free_port()),
        "node.unique.name": "edge-1",
    }


def fake_ctx(runtime, kv=None):
    return {
        "env": runtime,
        "services": {
            "valkey": [{"Address": "10.1.2.3", "Port": 6379, "Tags": ["valkey"], "Status": "critical"}],
            "storefront": [
                {"Address": "10.1.2.10", "Port": 23456, "Tags": ["storefront", "http"],
                 "ServiceMeta": {"build_id": "b41"}},
                {"Address": "10.1.2.11", "Port": 23457, "Tags": ["canary"],
                 "ServiceMeta": {"build_id": "b42"}},
            ],
        },
        "secrets": {
            "secret/data/cedra/prod": {"revalidate_secret": "r" * 64, "session_secret": "s" * 64},
            "secret/data/cedra/valkey": {"password": "0123abcd" * 8},
            "secret/data/cedra/edge": {"consul_token": "11111111-2222-3333-4444-555555555555"},
        },
        "kv": dict(kv or {}),
    }


def render_task_template(doc, tmpl, runtime, ctx=None):
    src = hcl_string(tmpl["data"], doc)
    return GoTemplate(ctx or fake_ctx(runtime)).render(src)


def parse_env_file(text):
    env = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        k, _, v = line.partition("=")
        env[k] = v
    return env


# ---------------------------------------------------------------------------
# (a) the jobs parse and say what the deployment relies on
# ---------------------------------------------------------------------------

class NomadJobsTest(unittest.TestCase):
    def test_every_nomad_file_parses_with_hcl2(self):
        files = sorted(f for f in os.listdir(NOMAD) if f.endswith(".nomad"))
        self.assertEqual(sorted(files), sorted(JOBS), "a job file is not covered by this test")
        res = hcl_parse([os.path.join(NOMAD, f) for f in files])
        for path, v in res.items():
            self.assertIn("ok", v, "%s: %s" % (path, v.get("error")))
            self.assertIn("job", v["ok"], path)

    def test_parser_rejects_what_nomad_rejects(self):
        """The parser is a real HCL2 one: an unescaped %{ (the agent's own
        template syntax) in a heredoc is an error, which is why the edge job
        writes %%{build}."""
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d)
        bad = os.path.join(d, "bad.nomad")
        with open(bad, "w") as f:
            f.write('job "x" {\n  group "g" {\n    task "t" {\n      template {\n'
                    '        data = <<-EOT\n        key-prefix storefront:%{build}:\n        EOT\n'
                    '      }\n    }\n  }\n}\n')
        res = hcl_parse([bad])
        self.assertIn("error", res[bad])

    def test_storefront_update_canary_and_auto_revert(self):
        _, job = storefront()
        self.assertEqual(job["type"], "service")
        up = one(job["update"], "update")
        self.assertEqual(up["canary"], 1)
        self.assertIs(up["auto_revert"], True)
        self.assertIs(up.get("auto_promote", False), False)
        self.assertEqual(up["min_healthy_time"], "60s")
        self.assertEqual(up["health_check"], "checks")
        self.assertGreaterEqual(up["max_parallel"], 1)
        self.assertLess(durations(up["min_healthy_time"]), durations(up["healthy_deadline"]))
        self.assertLess(durations(up["healthy_deadline"]), durations(up["progress_deadline"]))

    def test_storefront_service_check_tags_meta(self):
        doc, job = storefront()
        grp = one(job["group"]["storefront"])
        svc = one(grp["service"], "service")
        self.assertEqual(svc["name"], "storefront")
        self.assertEqual(svc["canary_tags"], ["canary"])
        self.assertTrue(svc["tags"])
        self.assertNotIn("canary", svc["tags"])
        meta = one(svc["meta"])
        self.assertEqual(meta["build_id"], "${var.build_id}")
        chk = one(svc["check"], "check")
        self.assertEqual(chk["type"], "http")
        self.assertEqual(chk["path"], "/api/health")
        self.assertIn("interval", chk)
        self.assertIn("timeout", chk)
        self.assertLess(durations(chk["timeout"]), durations(chk["interval"]))
        # restart/reschedule policies
        self.assertIn("restart", grp)
        self.assertIn("reschedule", grp)
        # build_id is validated as cedra-spoa's cookie token
        var = one(doc["variable"]["build_id"])
        self.assertIn("validation", var)
        self.assertIn("A-Za-z0-9_-", one(var["validation"])["condition"])

    def test_storefront_task_drains_and_gets_secrets(self):
        doc, job = storefront()
        grp = one(job["group"]["storefront"])
        task = one(grp["task"]["next"])
        self.assertEqual(task["driver"], "docker")
        self.assertEqual(one(task["config"])["image"], "${var.image}")
        self.assertGreaterEqual(durations(task["shutdown_delay"]), 5)
        self.assertIn("vault", task)
        self.assertIn("resources", task)
        secret_t = template_with(task, 'secret "secret/data/cedra/prod"')
        self.assertIs(secret_t["env"], True)
        self.assertTrue(secret_t["destination"].startswith("secrets/"))
        valkey_t = template_with(task, 'service "valkey')
        self.assertIs(valkey_t["env"], True)
        runtime = {"NOMAD_ALLOC_DIR": "/alloc"}
        env = parse_env_file(render_task_template(doc, secret_t, runtime))
        self.assertEqual(env, {"REVALIDATE_SECRET": "r" * 64, "SESSION_SECRET": "s" * 64})
        env = parse_env_file(render_task_template(doc, valkey_t, runtime))
        self.assertEqual(env, {"REDIS_URL": "redis://:%s@10.1.2.3:6379" % ("0123abcd" * 8)})
        # The key prefix is per build, and the env has what the fixture app reads.
        e = one(task["env"])
        self.assertEqual(hcl_string(e["CACHE_KEY_PREFIX"], doc, {"build_id": "b42"}), "storefront:b42:")
        self.assertEqual(hcl_string(e["BUILD_ID"], doc, {"build_id": "b42"}), "b42")

    def test_valkey_persistence_and_eviction(self):
        doc, job = valkey()
        grp = one(job["group"]["valkey"])
        self.assertEqual(grp["count"], 1)
        vol = one(grp["volume"]["data"])
        self.assertEqual(vol["type"], "host")
        self.assertIs(vol["read_only"], False)
        task = one(grp["task"]["valkey"])
        self.assertTrue(one(task["config"])["image"].startswith("${var.image}"))
        self.assertRegex(variables(doc)["image"], r"^valkey/valkey:8\.0\.\d+$")
        self.assertEqual(one(task["volume_mount"])["destination"], "/data")
        conf_t = template_with(task, "maxmemory-policy")
        conf = render_task_template(doc, conf_t, {"NOMAD_ALLOC_DIR": "/alloc"})
        lines = dict(re.match(r"(\S+)\s*(.*)", l).groups() for l in conf.splitlines()
                     if l.strip() and not l.startswith("#"))
        self.assertEqual(lines["dir"], "/data")
        self.assertEqual(lines["appendonly"], "yes")
        self.assertEqual(lines["appendfsync"], "everysec")
        self.assertEqual(lines["save"], '""')
        self.assertEqual(lines["maxmemory"], "2048mb")
        self.assertRegex(lines["maxmemory-policy"], r"^volatile-(lfu|lru|ttl|random)$")
        self.assertEqual(lines["requirepass"], "0123abcd" * 8)
        # the task has room above maxmemory for the rewrite fork
        self.assertIn("var.maxmemory_mb", str(one(task["resources"])["memory"]))
        # Consul service + check, exporter sidecar with its own scraped service
        svc = one(task["service"])
        self.assertEqual(svc["name"], "valkey")
        self.assertTrue(svc["check"])
        exp = one(grp["task"]["exporter"])
        lc = one(exp["lifecycle"])
        self.assertIs(lc["sidecar"], True)
        self.assertIn("redis_exporter", variables(doc)["exporter_image"])
        esvc = one(exp["service"])
        self.assertIn("prometheus", esvc["tags"])
        self.assertEqual(one(esvc["meta"])["metrics_path"], "/metrics")
        self.assertEqual(one(esvc["check"])["type"], "http")

    def test_volatile_policy_cannot_evict_the_handler_hashes(self):
        """The reason for volatile-*: in what the real handler wrote, page keys
        have a TTL and the bookkeeping hashes do not."""
        ttl = read(os.path.join(REPO, "tests/fixtures/isr/v16/ttl-after-product.txt"))
        rows = [l.split() for l in ttl.splitlines() if l.strip()]
        hashes = [r for r in rows if r[1] == "hash"]
        strings = [r for r in rows if r[1] == "string"]
        self.assertTrue(any(r[2].endswith("__sharedTags__") for r in hashes))
        self.assertTrue(strings)
        for r in hashes:
            self.assertEqual(r[0], "-1", r)
        for r in strings:
            self.assertGreater(int(r[0]), 0, r)
        rp = read(os.path.join(REPO, "tests/fixtures/isr/v16/revalidate-path.txt"))
        self.assertIn("HGETALL storefront:__revalidated_tags__ (TTL -1)", rp)

    def test_edge_group_tasks_share_the_alloc_dir(self):
        doc, job, grp = edge_group()
        self.assertEqual(job["type"], "system")
        self.assertEqual(one(job["constraint"])["attribute"], "${node.class}")
        tasks = grp["task"]
        for t in ("haproxy", "cedra-spoa", "cedra-agent"):
            self.assertIn(t, tasks)
            self.assertEqual(one(one(tasks[t])["config"])["network_mode"], "host")
        rt = edge_runtime("/alloc")
        hap = one(tasks["haproxy"])
        henv = {k: hcl_string(v, doc, runtime=rt) for k, v in one(hap["env"]).items()}
        spoa_conf = render_task_template(doc, template_with(one(tasks["cedra-spoa"]), "listen unix:"), rt)
        agent_conf = render_task_template(doc, template_with(one(tasks["cedra-agent"]), "haproxy-socket"), rt)

        def kw(conf, key):
            for line in conf.splitlines():
                w = line.split()
                if w and w[0] == key:
                    return w[1:]
            self.fail("no %s in\n%s" % (key, conf))

        # HAProxy -> cedra-spoa (SPOP), cedra-agent -> HAProxy, cedra-agent -> cedra-spoa
        self.assertEqual(henv["CEDRA_SPOA_ADDR"], "unix@/alloc/run/spoa.sock")
        self.assertEqual(kw(spoa_conf, "listen"), ["unix:/alloc/run/spoa.sock"])
        self.assertEqual(kw(agent_conf, "haproxy-socket"), [henv["CEDRA_HAPROXY_SOCK"]])
        self.assertTrue(henv["CEDRA_HAPROXY_SOCK"].startswith("/alloc/run/"))
        self.assertEqual(kw(agent_conf, "spoa-socket")[0], kw(spoa_conf, "stats-socket")[0])
        self.assertTrue(kw(spoa_conf, "stats-socket")[0].startswith("/alloc/run/"))
        self.assertTrue(kw(agent_conf, "stats-socket")[0].startswith("/alloc/run/"))
        self.assertEqual(henv["CEDRA_DELIVER_ADDR"], kw(spoa_conf, "deliver")[0])
        # the directory is made by a prestart task before anyone binds in it
        init = one(tasks["init"])
        self.assertEqual(one(init["lifecycle"])["hook"], "prestart")
        args = [hcl_string(a, doc, runtime=rt) for a in one(init["config"])["args"]]
        self.assertIn("/alloc/run", args)
        self.assertIn("/alloc/routes", args)

    def test_edge_env_is_haproxy_readme_env(self):
        doc, job, grp = edge_group()
        readme = read(os.path.join(REPO, "haproxy", "README.md"))
        documented = set(re.findall(r"`(CEDRA_[A-Z0-9_]+)`", readme))
        env = one(one(grp["task"]["haproxy"])["env"])
        self.assertTrue(set(env) <= documented, set(env) - documented)
        for k in ("CEDRA_HTTP_BIND", "CEDRA_SPOA_ADDR", "CEDRA_HAPROXY_SOCK", "CEDRA_DELIVER_ADDR"):
            self.assertIn(k, env)

    def test_edge_registration_metrics_and_vault(self):
        doc, job, grp = edge_group()
        tasks = grp["task"]
        rt = edge_runtime("/alloc")
        agent = one(tasks["cedra-agent"])
        # The agent registers itself: no Nomad service for it.
        self.assertNotIn("service", agent)
        agent_conf = render_task_template(doc, template_with(agent, "haproxy-socket"), rt)
        reg = [l.split() for l in agent_conf.splitlines() if l.startswith("register ")]
        self.assertEqual(len(reg), 1)
        reg = reg[0]
        opts = dict(zip(reg[2::2], reg[3::2]))
        self.assertEqual(reg[1], "cedra-agent")
        self.assertIn("prometheus", opts["tags"].split(","))
        self.assertEqual(opts["meta"], "metrics_path=/metrics")
        self.assertEqual(opts["port"], rt["NOMAD_PORT_agent_metrics"])
        metrics = [l.split()[1] for l in agent_conf.splitlines() if l.startswith("metrics ")]
        self.assertEqual(metrics, ["127.0.0.1:%s" % rt["NOMAD_PORT_agent_metrics"]])
        # Nomad registers HAProxy and cedra-spoa's metrics, each once.
        names = []
        for t in tasks.values():
            for s in one(t).get("service", []):
                names.append(s["name"])
        self.assertEqual(sorted(names), ["cedra-edge", "cedra-spoa"])
        spoa_svc = one(one(tasks["cedra-spoa"])["service"])
        self.assertIn("prometheus", spoa_svc["tags"])
        self.assertEqual(one(spoa_svc["meta"])["metrics_path"], "/metrics")
        self.assertEqual(one(spoa_svc["check"])["path"], "/metrics")
        hsvc = one(one(tasks["haproxy"])["service"])
        types = sorted(c["type"] for c in hsvc["check"])
        self.assertIn("http", types)
        # Vault: the Consul token for the agent, the Valkey password for cedra-spoa
        tok = parse_env_file(render_task_template(doc, template_with(agent, "CONSUL_HTTP_TOKEN"), rt))
        self.assertEqual(tok, {"CONSUL_HTTP_TOKEN": "11111111-2222-3333-4444-555555555555"})
        spoa = one(tasks["cedra-spoa"])
        pw_t = template_with(spoa, "CEDRA_VALKEY_PASSWORD")
        self.assertIs(pw_t["env"], True)
        pw = parse_env_file(render_task_template(doc, pw_t, rt))
        self.assertEqual(pw, {"CEDRA_VALKEY_PASSWORD": "0123abcd" * 8})
        for t in ("cedra-agent", "cedra-spoa"):
            self.assertIn("vault", one(tasks[t]))

    def test_edge_agent_matches_storefront_contracts(self):
        """Key prefix, build id Meta key, canary tag and route tables agree
        between the storefront job, the agent's configuration and deploy.sh."""
        sdoc, sjob = storefront()
        doc, job, grp = edge_group()
        rt = edge_runtime("/alloc")
        agent = one(grp["task"]["cedra-agent"])
        conf = render_task_template(doc, template_with(agent, "haproxy-socket"), rt)
        kv = {l.split()[0]: l.split()[1:] for l in conf.splitlines() if l.strip() and not l.startswith("#")}
        sgrp = one(sjob["group"]["storefront"])
        svc = one(sgrp["service"])
        task = one(sgrp["task"]["next"])
        # key-prefix storefront:%{build}: == CACHE_KEY_PREFIX for any build
        prefix = hcl_string(one(task["env"])["CACHE_KEY_PREFIX"], sdoc, {"build_id": "b42"})
        self.assertEqual(kv["key-prefix"][0].replace("%{build}", "b42"), prefix)
        self.assertEqual(kv["build-key"], ["build_id"])
        self.assertIn("build_id", one(svc["meta"]))
        self.assertEqual(kv["canary-tag"], svc["canary_tags"])
        self.assertEqual(kv["canary-weight-key"], ["canary_weight"])
        self.assertIn("canary_weight", one(svc["meta"]))
        self.assertEqual(kv["service"], [svc["name"]])
        # routes <alloc>/routes/%{build}.table, from the bundle of cedra/routes
        self.assertEqual(kv["routes"], ["/alloc/routes/%{build}.table"])
        bundle_t = template_with(agent, "@@ cedra-routes end")
        self.assertIn('ls "cedra/routes"', bundle_t["data"])
        self.assertEqual(bundle_t["change_mode"], "script")
        cs = one(bundle_t["change_script"])
        self.assertEqual(cs["command"], "/usr/local/bin/cedra-routes-sync")
        self.assertIn("routes_prefix=cedra/routes", read(os.path.join(NOMAD, "deploy.sh")))
        # the initial route sync runs before the agent
        args = one(agent["config"])["args"]
        self.assertIn("cedra-routes-sync /local/routes.bundle && exec cedra-agent", args[-1])

    def test_templates_use_known_functions_only(self):
        known = {"env", "service", "services", "secret", "key", "keyOrDefault", "ls", "tree",
                 "index", "eq", "ne", "urlquery", "toJSON", "range", "with", "if", "else", "end"}
        for name in JOBS:
            doc = job_json(name)
            text = json.dumps(doc)
            for m in re.finditer(r"\{\{-?\s*([a-zA-Z]+)", text):
                self.assertIn(m.group(1), known, "%s: {{%s ...}}" % (name, m.group(1)))


# ---------------------------------------------------------------------------
# (e) the edge image's build stage, and the rendered configurations checked
#     by the staged daemons themselves
# ---------------------------------------------------------------------------

class EdgeBuildTest(unittest.TestCase):
    stage = None
    tmp = None
    build_log = ""

    @classmethod
    def setUpClass(cls):
        for tool in ("autoreconf", "make", "cc", "pkg-config"):
            if not shutil.which(tool):
                raise unittest.SkipTest("%s not installed (scripts/deps.sh)" % tool)
        cls.tmp = tempfile.mkdtemp(prefix="cedra-edge-build.")
        src = os.path.join(cls.tmp, "src")
        # The Docker build context: the work tree (or CEDRA_EDGE_SRC) minus
        # what nomad/edge.Dockerfile.dockerignore excludes (git's ignore
        # rules cover the same build trees).
        top = os.environ.get("CEDRA_EDGE_SRC") or REPO
        files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=top,
                               stdout=subprocess.PIPE, check=True).stdout.split(b"\0")
        for f in files:
            if not f:
                continue
            rel = f.decode()
            if not os.path.isfile(os.path.join(top, rel)):
                continue
            dst = os.path.join(src, rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copy2(os.path.join(top, rel), dst)
        cls.stage = os.path.join(cls.tmp, "stage")
        env = dict(os.environ, CEDRA_EDGE_CHECK="0", CEDRA_EDGE_BUILD_DIR=os.path.join(cls.tmp, "build"))
        r = subprocess.run([os.path.join(src, "nomad", "edge-build.sh"), cls.stage], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=900)
        cls.build_log = r.stdout.decode(errors="replace")
        cls.build_rc = r.returncode

    @classmethod
    def tearDownClass(cls):
        if cls.tmp and not os.environ.get("CEDRA_KEEP_TMP"):
            shutil.rmtree(cls.tmp, ignore_errors=True)

    def bin(self, name):
        self.assertEqual(self.build_rc, 0, "nomad/edge-build.sh failed:\n" + self.build_log[-4000:])
        return os.path.join(self.stage, "usr/local/sbin", name)

    def test_build_stages_the_image_tree(self):
        self.assertEqual(self.build_rc, 0, "nomad/edge-build.sh failed:\n" + self.build_log[-4000:])
        for rel in ("usr/local/sbin/cedra-spoa", "usr/local/sbin/cedra-agent",
                    "usr/local/bin/cedra-routes-sync",
                    "usr/local/etc/cedra/haproxy/haproxy.cfg",
                    "usr/local/etc/cedra/haproxy/cedra-spoe.conf",
                    "usr/local/share/man/man8/cedra-spoa.8"):
            p = os.path.join(self.stage, rel)
            self.assertTrue(os.path.isfile(p), rel)
        for rel in ("usr/local/sbin/cedra-spoa", "usr/local/sbin/cedra-agent", "usr/local/bin/cedra-routes-sync"):
            self.assertTrue(os.access(os.path.join(self.stage, rel), os.X_OK), rel)
        # the job's command paths exist in the image tree
        doc, job, grp = edge_group()
        hap_args = one(one(grp["task"]["haproxy"])["config"])["args"]
        self.assertTrue(os.path.isfile(os.path.join(self.stage, hap_args[-1].lstrip("/"))))

    def test_runtime_packages_cover_the_binaries(self):
        """Every library the daemons link (their NEEDED entries) comes from a
        package the runtime stage installs (or from libc6)."""
        if not shutil.which("readelf") or not shutil.which("dpkg"):
            self.skipTest("readelf/dpkg not available")
        df = read(os.path.join(NOMAD, "edge.Dockerfile"))
        runtime = df[df.index("AS runtime"):]
        m = re.search(r"apt-get install -y --no-install-recommends(.*?)&&", runtime, re.S)
        pkgs = set(m.group(1).replace("\\", " ").split())
        for b in ("cedra-spoa", "cedra-agent"):
            out = subprocess.run(["readelf", "-d", self.bin(b)], stdout=subprocess.PIPE, check=True).stdout.decode()
            for lib in re.findall(r"\(NEEDED\).*\[(.+?)\]", out):
                path = None
                for d in ("/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu"):
                    if os.path.exists(os.path.join(d, lib)):
                        path = os.path.join("/usr/lib", os.path.basename(d), lib)
                        break
                self.assertIsNotNone(path, lib)
                r = subprocess.run(["dpkg", "-S", path], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                if r.returncode != 0:
                    r = subprocess.run(["dpkg", "-S", path.replace("/usr/lib/", "/lib/", 1)],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                self.assertEqual(r.returncode, 0, "%s: %s" % (lib, r.stderr))
                pkg = r.stdout.decode().split(":")[0]
                self.assertTrue(pkg in pkgs or pkg == "libc6", "%s (%s) needs %s in the runtime stage" % (b, lib, pkg))

    def render_edge(self, kv=None):
        doc, job, grp = edge_group()
        d = tempfile.mkdtemp(dir=self.tmp)
        alloc = os.path.join(d, "alloc")
        for sub in ("run", "routes"):
            os.makedirs(os.path.join(alloc, sub))
        rt = edge_runtime(alloc)
        ctx = fake_ctx(rt, kv)
        tasks = grp["task"]
        spoa = render_task_template(doc, template_with(one(tasks["cedra-spoa"]), "listen unix:"), rt, ctx)
        agent = render_task_template(doc, template_with(one(tasks["cedra-agent"]), "haproxy-socket"), rt, ctx)
        bundle = render_task_template(doc, template_with(one(tasks["cedra-agent"]), "@@ cedra-routes end"), rt, ctx)
        files = {}
        for name, text in (("cedra-spoa.conf", spoa), ("cedra-agent.conf", agent), ("routes.bundle", bundle)):
            files[name] = os.path.join(d, name)
            with open(files[name], "w") as f:
                f.write(text)
        return doc, grp, rt, alloc, files

    def test_rendered_spoa_conf_passes_cedra_spoa_check(self):
        doc, grp, rt, alloc, files = self.render_edge()
        text = read(files["cedra-spoa.conf"])
        self.assertIn("valkey 10.1.2.3:6379", text)  # "valkey|any": a critical instance still counts
        r = subprocess.run([self.bin("cedra-spoa"), "-c", "-f", files["cedra-spoa.conf"]],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
        self.assertEqual(r.returncode, 0, r.stdout.decode() + "\n" + text)

    def test_rendered_agent_conf_passes_cedra_agent_check(self):
        doc, grp, rt, alloc, files = self.render_edge()
        text = read(files["cedra-agent.conf"])
        self.assertIn("key-prefix storefront:%{build}:", text)
        r = subprocess.run([self.bin("cedra-agent"), "-c", "-f", files["cedra-agent.conf"]],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30,
                           env=dict(os.environ, CONSUL_HTTP_ADDR="http://127.0.0.1:8500"))
        self.assertEqual(r.returncode, 0, r.stdout.decode() + "\n" + text)

    def test_haproxy_accepts_the_job_environment(self):
        hap = harness.require_tool("haproxy")
        doc, grp, rt, alloc, files = self.render_edge()
        hap_task = one(grp["task"]["haproxy"])
        env = dict(os.environ)
        for k, v in one(hap_task["env"]).items():
            env[k] = hcl_string(v, doc, runtime=rt)
        origin = parse_env_file(render_task_template(doc, template_with(hap_task, "CEDRA_ORIGIN_ADDR"), rt))
        self.assertEqual(origin, {"CEDRA_ORIGIN_ADDR": "10.1.2.10:23456"})  # stable, not the canary
        env.update(origin)
        cfg = os.path.join(self.stage, one(hap_task["config"])["args"][-1].lstrip("/"))
        r = subprocess.run([hap, "-c", "-f", cfg], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=30)
        self.assertEqual(r.returncode, 0, r.stdout.decode())

    def test_fast_lane_recipe_of_the_readme(self):
        """nomad/README.md's fast-lane recipe, applied to the job as written
        there: HAProxy accepts the environment (lane server checked, map and
        cookie file found in the image tree), cedra-spoa accepts the
        configuration, and both name the same map and cookie file."""
        hap = harness.require_tool("haproxy")
        readme = read(os.path.join(NOMAD, "README.md"))
        sec = readme[readme.index("### The fast lane (opt-in)"):]
        hcl_block = re.search(r"```hcl\n(.*?)```", sec, re.S).group(1)
        conf_block = re.search(r"```\n(lane-socket.*?)```", sec, re.S).group(1)
        lane_env = dict(re.findall(r'^(CEDRA_\w+)\s*=\s*"([^"]*)"$', hcl_block, re.M))
        self.assertEqual(set(lane_env), {"CEDRA_LANE", "CEDRA_LANE_MAP", "CEDRA_LANE_COOKIES"})
        doc, grp, rt, alloc, files = self.render_edge()
        tasks = grp["task"]
        tmpl = dict(template_with(one(tasks["cedra-spoa"]), "listen unix:"))
        tmpl["data"] = tmpl["data"] + conf_block
        spoa_conf = render_task_template(doc, tmpl, rt, fake_ctx(rt))
        kw = {l.split()[0]: l.split()[1:] for l in spoa_conf.splitlines() if l.split()}
        self.assertEqual(kw["lane-map"], [lane_env["CEDRA_LANE_MAP"]])
        self.assertEqual(kw["lane-cookies"], [lane_env["CEDRA_LANE_COOKIES"]])
        hap_task = one(tasks["haproxy"])
        henv = {k: hcl_string(v, doc, runtime=rt) for k, v in one(hap_task["env"]).items()}
        self.assertEqual(kw["lane-socket"], [henv["CEDRA_HAPROXY_SOCK"]])
        path = os.path.join(self.tmp, "lane-spoa.conf")
        with open(path, "w") as f:
            f.write(spoa_conf)
        r = subprocess.run([self.bin("cedra-spoa"), "-c", "-f", path],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
        self.assertEqual(r.returncode, 0, r.stdout.decode() + "\n" + spoa_conf)
        # HAProxy, with the image tree's files at the recipe's absolute paths.
        env = dict(os.environ, **henv)
        env["CEDRA_ORIGIN_ADDR"] = "10.1.2.10:23456"
        for k in ("CEDRA_LANE_MAP", "CEDRA_LANE_COOKIES"):
            staged = os.path.join(self.stage, lane_env[k].lstrip("/"))
            self.assertTrue(os.path.isfile(staged), staged)
            env[k] = staged
        env["CEDRA_LANE"] = lane_env["CEDRA_LANE"]
        cfg = os.path.join(self.stage, one(hap_task["config"])["args"][-1].lstrip("/"))
        r = subprocess.run([hap, "-c", "-f", cfg], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=30)
        self.assertEqual(r.returncode, 0, r.stdout.decode())

    def test_published_route_table_reaches_cedra_spoa(self):
        """deploy.sh's table in Consul KV -> the bundle template -> the staged
        cedra-routes-sync -> a file cedra-spoa loads as a pool's routes."""
        table = read(os.path.join(REPO, "tests/fixtures/isr/v16/routes.table"))
        table = table.replace("scheme route-cache\n", "scheme route-cache\nbuild b42\n")
        kv = {"cedra/routes/b42": table, "cedra/routes/b41": "scheme pathname\nbuild b41\n"}
        doc, grp, rt, alloc, files = self.render_edge(kv)
        sync = os.path.join(self.stage, "usr/local/bin/cedra-routes-sync")
        r = subprocess.run([sync, files["routes.bundle"]], env=dict(os.environ, NOMAD_ALLOC_DIR=alloc),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
        self.assertEqual(r.returncode, 0, r.stdout.decode() + read(files["routes.bundle"]))
        self.assertEqual(sorted(os.listdir(os.path.join(alloc, "routes"))), ["b41.table", "b42.table"])
        self.assertEqual(read(os.path.join(alloc, "routes", "b42.table")).strip(), table.strip())
        # what cedra-agent would send: set pool ... routes <dir>/%{build}.table
        conf = read(files["cedra-spoa.conf"]).replace(
            "pool stable key-prefix storefront:unset: routes pathname",
            "pool stable key-prefix storefront:b41: routes %s/routes/b41.table\n"
            "pool canary key-prefix storefront:b42: routes %s/routes/b42.table" % (alloc, alloc))
        with open(files["cedra-spoa.conf"], "w") as f:
            f.write(conf)
        r = subprocess.run([self.bin("cedra-spoa"), "-c", "-f", files["cedra-spoa.conf"]],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
        self.assertEqual(r.returncode, 0, r.stdout.decode())


# ---------------------------------------------------------------------------
# cedra-routes-sync
# ---------------------------------------------------------------------------

class RoutesSyncTest(unittest.TestCase):
    SYNC = os.path.join(NOMAD, "cedra-routes-sync.sh")

    def setUp(self):
        self.d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.d)
        self.out = os.path.join(self.d, "routes")

    def sync(self, bundle_text, *extra):
        b = os.path.join(self.d, "bundle")
        with open(b, "w") as f:
            f.write(bundle_text)
        return subprocess.run([self.SYNC, b, self.out] + list(extra), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=30)

    @staticmethod
    def bundle(tables, end=True):
        s = ""
        for k, v in tables.items():
            s += "\n@@ cedra-routes build %s\n%s" % (k, v)
        return s + ("\n@@ cedra-routes end\n" if end else "")

    def test_splits_writes_atomically_and_only_changes(self):
        t1 = "# made by cedra-routes\nscheme pathname\nbuild b1\n"
        t2 = read(os.path.join(REPO, "tests/fixtures/isr/v16/routes.table"))
        r = self.sync(self.bundle({"b1": t1, "b-2_x": t2}))
        self.assertEqual(r.returncode, 0, r.stdout)
        self.assertEqual(read(os.path.join(self.out, "b1.table")), t1 + "\n")
        self.assertEqual(read(os.path.join(self.out, "b-2_x.table")).strip(), t2.strip())
        self.assertIn(b"event=table_written build=b1", r.stdout)
        self.assertEqual(sorted(os.listdir(self.out)), ["b-2_x.table", "b1.table"])  # no temp left
        m1 = os.stat(os.path.join(self.out, "b1.table")).st_ino
        r = self.sync(self.bundle({"b1": t1, "b-2_x": t2}))
        self.assertEqual(r.returncode, 0)
        self.assertIn(b"written=0 unchanged=2", r.stdout)
        self.assertEqual(os.stat(os.path.join(self.out, "b1.table")).st_ino, m1)
        # a build gone from KV keeps its file (an allocation may still use it)
        r = self.sync(self.bundle({"b1": t1}))
        self.assertEqual(r.returncode, 0)
        self.assertTrue(os.path.exists(os.path.join(self.out, "b-2_x.table")))

    def test_rejects_incomplete_or_wrong_bundles(self):
        good = "scheme pathname\nbuild b1\n"
        self.assertEqual(self.sync(self.bundle({"b1": good})).returncode, 0)
        before = read(os.path.join(self.out, "b1.table"))
        cases = {
            "no end marker": self.bundle({"b1": "scheme route-cache\n"}, end=False),
            "bad build id": self.bundle({"b1;rm": good}),
            "table of another build": self.bundle({"b1": "scheme pathname\nbuild b9\n"}),
            "no scheme": self.bundle({"b1": "build b1\n"}),
            "unknown marker": "@@ cedra-routes frobnicate\n@@ cedra-routes end\n",
        }
        for what, text in cases.items():
            with self.subTest(what):
                r = self.sync(text)
                self.assertEqual(r.returncode, 1, r.stdout)
                self.assertEqual(read(os.path.join(self.out, "b1.table")), before)
        r = subprocess.run([self.SYNC], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.assertEqual(r.returncode, 2)

    def test_empty_kv_is_valid(self):
        r = self.sync("\n@@ cedra-routes end\n")
        self.assertEqual(r.returncode, 0, r.stdout)
        self.assertEqual(os.listdir(self.out), [])

    def test_bundle_template_output_splits(self):
        doc, job, grp = edge_group()
        t = template_with(one(grp["task"]["cedra-agent"]), "@@ cedra-routes end")
        kv = {"cedra/routes/b1": "scheme pathname\nbuild b1\n",
              "cedra/routes/b2": "scheme pathname\nbuild b2",  # no final newline
              "cedra/other/x": "ignored"}
        text = render_task_template(doc, t, {}, fake_ctx({}, kv))
        r = self.sync(text)
        self.assertEqual(r.returncode, 0, r.stdout + text.encode())
        self.assertEqual(sorted(os.listdir(self.out)), ["b1.table", "b2.table"])


# ---------------------------------------------------------------------------
# (b) deploy.sh against fake docker, bun, consul and nomad
# ---------------------------------------------------------------------------

SHIM_LOG = r'''
log_argv() {
  local a line="$(basename "$0")"
  for a in "$@"; do line+=$'\t'"$a"; done
  printf '%s\n' "$line" >>"$FAKE_DIR/calls"
}
'''

SHIMS = {
    "docker": SHIM_LOG + r'''
log_argv "$@"
case "$1" in
  build) [ "${FAKE_DOCKER_BUILD_RC:-0}" = 0 ] || { echo "fake docker: build failed" >&2; exit "$FAKE_DOCKER_BUILD_RC"; }
         echo "fake docker: built" ;;
  push) echo "fake docker: pushed $2" ;;
  create) echo "c0ffee0123" ;;
  cp) src=${2#*:}; cp "$FAKE_IMAGE_ROOT${src#/app}" "$3" ;;
  rm) echo "$2" ;;
  *) echo "fake docker: unexpected $*" >&2; exit 64 ;;
esac
''',
    "bun": SHIM_LOG + r'''
log_argv "$@"
exec node "$@"
''',
    "consul": SHIM_LOG + r'''
log_argv "$@"
if [ "$1 $2" = "kv put" ]; then
  mkdir -p "$FAKE_DIR/kv/$(dirname "$3")"
  cp "${4#@}" "$FAKE_DIR/kv/$3"
  echo "Success! Data written to: $3"
else
  echo "fake consul: unexpected $*" >&2; exit 64
fi
''',
    "nomad": SHIM_LOG + r'''
log_argv "$@"
# next line of a scenario file (the last one repeats)
pop() {
  local f=$1 n
  n=$(cat "$f.n" 2>/dev/null || echo 0)
  n=$((n + 1)); echo "$n" >"$f.n"
  local total; total=$(wc -l <"$f")
  [ "$n" -le "$total" ] || n=$total
  sed -n "${n}p" "$f"
}
case "$1 $2" in
  "job run")
    echo "==> View this job in the Web UI: http://127.0.0.1:4646/ui/jobs/cedra-storefront"
    echo "Job registration successful"
    echo "Evaluation ID: 8e0b2c4f-1111-2222-3333-444455556666" ;;
  "eval status") echo "complete ${FAKE_DEPLOYMENT-5a1f2e3d-aaaa-bbbb-cccc-ddddeeeeffff}" ;;
  "deployment status")
    if [ -e "$FAKE_DIR/promoted" ]; then pop "$FAKE_DIR/after-promote"; else pop "$FAKE_DIR/states"; fi ;;
  "deployment promote") touch "$FAKE_DIR/promoted"; echo "==> Deployment $3 promoted" ;;
  "job deployments") echo "77aa66bb-0000-1111-2222-333344445555 4 running" ;;
  *) echo "fake nomad: unexpected $*" >&2; exit 64 ;;
esac
''',
}

DEP = "5a1f2e3d-aaaa-bbbb-cccc-ddddeeeeffff"


def state(status, desc, version, healthy, unhealthy, placed_canaries, promoted, total=3, canaries=1):
    return "%s|%s|%d|storefront %d %d %d %d %s %d" % (
        status, desc, version, canaries, placed_canaries, healthy, unhealthy,
        "true" if promoted else "false", total)


class DeployScriptTest(unittest.TestCase):
    DEPLOY = os.path.join(NOMAD, "deploy.sh")

    def setUp(self):
        if not shutil.which("node"):
            self.skipTest("node not installed (runs cedra-routes.mjs behind the bun shim)")
        self.d = tempfile.mkdtemp(prefix="cedra-deploy-test.")
        self.addCleanup(shutil.rmtree, self.d)
        self.bin = os.path.join(self.d, "bin")
        os.makedirs(self.bin)
        for name, body in SHIMS.items():
            p = os.path.join(self.bin, name)
            with open(p, "w") as f:
                f.write("#!/usr/bin/env bash\nset -euo pipefail\n" + body)
            os.chmod(p, 0o755)
        self.fake = os.path.join(self.d, "fake")
        os.makedirs(self.fake)
        open(os.path.join(self.fake, "calls"), "w").close()
        # the storefront source (the fixture app with the v16 dependency set)
        self.app = os.path.join(self.d, "app")
        shutil.copytree(os.path.join(REPO, "tests/fixtures/storefront/app-src"), self.app)
        for f in ("package.json", "package-lock.json"):
            shutil.copy(os.path.join(REPO, "tests/fixtures/storefront/v16", f), self.app)
        # what `docker cp` finds in the built image (/app)
        self.image_root = os.path.join(self.d, "image-app")
        nxt = os.path.join(self.image_root, ".next")
        os.makedirs(nxt)
        for f in ("app-path-routes-manifest.json", "routes-manifest.json"):
            shutil.copy(os.path.join(REPO, "tests/fixtures/isr/v16/manifests", f), nxt)
        with open(os.path.join(nxt, "BUILD_ID"), "w") as f:
            f.write("b42")
        os.makedirs(os.path.join(self.image_root, "node_modules/next"))
        with open(os.path.join(self.image_root, "node_modules/next/package.json"), "w") as f:
            json.dump({"name": "next", "version": "16.4.6"}, f)

    def scenario(self, states, after_promote=None):
        with open(os.path.join(self.fake, "states"), "w") as f:
            f.write("\n".join(states) + "\n")
        with open(os.path.join(self.fake, "after-promote"), "w") as f:
            f.write("\n".join(after_promote or states[-1:]) + "\n")

    def deploy(self, *args, env=None, timeout=60):
        e = dict(os.environ)
        e.update({
            "PATH": self.bin + os.pathsep + os.environ.get("PATH", ""),
            "FAKE_DIR": self.fake,
            "FAKE_IMAGE_ROOT": self.image_root,
            "CEDRA_IMAGE_REPO": "registry.test/cedra/storefront",
        })
        e.pop("CEDRA_JS", None)
        e.update(env or {})
        r = subprocess.run([self.DEPLOY] + list(args), env=e, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=timeout)
        return r.returncode, r.stdout.decode(errors="replace")

    def calls(self):
        with open(os.path.join(self.fake, "calls")) as f:
            return [l.rstrip("\n").split("\t") for l in f if l.strip()]

    def names(self):
        """Each call as 'tool subcommand' (docker cp, nomad deployment status...)."""
        out = []
        for c in self.calls():
            if c[0] == "nomad":
                out.append(" ".join(c[:3]) if c[1] in ("job", "eval", "deployment") else " ".join(c[:2]))
            elif c[0] == "consul":
                out.append(" ".join(c[:3]))
            elif c[0] == "bun":
                out.append("bun " + os.path.basename(c[1]))
            else:
                out.append(" ".join(c[:2]))
        return out

    def collapse(self, names):
        out = []
        for n in names:
            if not out or out[-1] != n:
                out.append(n)
        return out

    PREFIX = ["docker build", "docker push", "docker create", "docker cp", "docker rm",
              "bun cedra-routes.mjs", "consul kv put", "nomad job run", "nomad eval status",
              "nomad deployment status"]

    def test_healthy_canary_prints_the_promote_command(self):
        self.scenario([
            state("running", "Deployment is running", 5, 0, 0, 0, False),
            state("running", "Deployment is running", 5, 0, 0, 1, False),
            state("running", "Deployment is running but requires manual promotion", 5, 1, 0, 1, False),
        ])
        rc, out = self.deploy("--app", self.app, "--build-id", "b42", "--interval", "1", "--timeout", "30")
        self.assertEqual(rc, 0, out)
        self.assertEqual(self.collapse(self.names()), self.PREFIX, out)
        self.assertNotIn("nomad deployment promote", self.names())
        calls = self.calls()
        build = calls[0]
        self.assertEqual(build[:2], ["docker", "build"])
        self.assertIn("BUILD_ID=b42", build)
        self.assertEqual(build[build.index("-f") + 1], os.path.join(NOMAD, "storefront.Dockerfile"))
        self.assertEqual(build[build.index("-t") + 1], "registry.test/cedra/storefront:b42")
        self.assertEqual(build[-1], self.app)
        self.assertEqual(calls[1], ["docker", "push", "registry.test/cedra/storefront:b42"])
        cps = [c[2] for c in calls if c[:2] == ["docker", "cp"]]
        self.assertEqual(cps, ["c0ffee0123:/app/.next/BUILD_ID",
                               "c0ffee0123:/app/.next/app-path-routes-manifest.json",
                               "c0ffee0123:/app/.next/routes-manifest.json",
                               "c0ffee0123:/app/node_modules/next/package.json"])
        self.assertIn(["docker", "rm", "c0ffee0123"], calls)
        run = [c for c in calls if c[:3] == ["nomad", "job", "run"]][0]
        self.assertIn("-detach", run)
        self.assertEqual(run[run.index("-var") + 1], "build_id=b42")
        self.assertIn("image=registry.test/cedra/storefront:b42", run)
        self.assertEqual(run[-1], os.path.join(NOMAD, "cedra-storefront.nomad"))
        # the route table in Consul KV is cedra-routes' table for this build
        table = read(os.path.join(self.fake, "kv/cedra/routes/b42"))
        self.assertIn("\nscheme route-cache\nbuild b42\n", table)
        fixture = [l for l in read(os.path.join(REPO, "tests/fixtures/isr/v16/routes.table")).splitlines()
                   if l.startswith("route ")]
        self.assertEqual([l for l in table.splitlines() if l.startswith("route ")], fixture)
        self.assertEqual([c for c in calls if c[0] == "consul"][0][4], "@" + [c for c in calls if c[0] == "bun"][0][3])
        # messages
        self.assertIn("canary of build b42 is healthy", out)
        self.assertIn("nomad deployment promote %s" % DEP, out)
        self.assertIn("nomad deployment fail %s" % DEP, out)
        self.assertIn("scheme route-cache, 4 routes", out)
        self.assertIn("canary 1/1 placed", out)

    def test_auto_promote_follows_to_success(self):
        self.scenario(
            [state("running", "Deployment is running", 5, 0, 0, 1, False),
             state("running", "Deployment is running but requires manual promotion", 5, 1, 0, 1, False)],
            [state("running", "Deployment is running", 5, 1, 0, 1, True),
             state("running", "Deployment is running", 5, 2, 0, 1, True),
             state("successful", "Deployment completed successfully", 5, 3, 0, 1, True)])
        rc, out = self.deploy("--app", self.app, "--build-id", "b42", "--interval", "1",
                              "--timeout", "30", "--auto-promote")
        self.assertEqual(rc, 0, out)
        names = self.names()
        self.assertEqual(names.count("nomad deployment promote"), 1, names)
        promote = [c for c in self.calls() if c[:3] == ["nomad", "deployment", "promote"]][0]
        self.assertEqual(promote[3], DEP)
        i = names.index("nomad deployment promote")
        self.assertEqual(names[i + 1:], ["nomad deployment status"] * 3)
        self.assertIn("promoting (--auto-promote)", out)
        self.assertIn("deployment %s successful: build b42 is live" % DEP, out)

    def test_failed_canary_reports_the_auto_revert(self):
        self.scenario([
            state("running", "Deployment is running", 5, 0, 0, 1, False),
            state("running", "Deployment is running", 5, 0, 1, 1, False),
            state("failed", "Failed due to unhealthy allocations - rolling back to job version 4", 5, 0, 1, 1, False),
        ])
        rc, out = self.deploy("--app", self.app, "--build-id", "b42", "--interval", "1", "--timeout", "30",
                              "--auto-promote")
        self.assertEqual(rc, 1, out)
        self.assertNotIn("nomad deployment promote", self.names())
        self.assertEqual(self.names()[-1], "nomad job deployments")
        self.assertIn("FAILED: Failed due to unhealthy allocations - rolling back to job version 4", out)
        self.assertIn("auto_revert: Nomad registered job version 4 again", out)
        self.assertIn("rollback deployment 77aa66bb-0000-1111-2222-333344445555 (job version 4): running", out)
        self.assertIn("nomad job history -p cedra-storefront", out)

    def test_timeout(self):
        self.scenario([state("running", "Deployment is running", 5, 0, 0, 1, False)])
        rc, out = self.deploy("--app", self.app, "--build-id", "b42", "--interval", "1", "--timeout", "2")
        self.assertEqual(rc, 3, out)
        self.assertIn("timeout: deployment %s still running after 2s" % DEP, out)
        self.assertIn("nomad deployment status -monitor %s" % DEP, out)

    def test_unchanged_job_creates_no_deployment(self):
        self.scenario([state("running", "x", 5, 0, 0, 0, False)])
        rc, out = self.deploy("--app", self.app, "--build-id", "b42", "--interval", "1",
                              env={"FAKE_DEPLOYMENT": ""})
        self.assertEqual(rc, 0, out)
        self.assertIn("no deployment was created", out)
        self.assertNotIn("nomad deployment status", self.names())

    def test_dry_run_prints_everything_and_runs_nothing(self):
        rc, out = self.deploy("--app", self.app, "--build-id", "b42", "--dry-run", "--auto-promote",
                              "--var", "instances=4")
        self.assertEqual(rc, 0, out)
        self.assertEqual(self.calls(), [], "a command ran during --dry-run")
        cmds = [l[2:] for l in out.splitlines() if l.startswith("+ ")]
        heads = [" ".join(c.split()[:2]) for c in cmds]
        self.assertEqual(self.collapse(heads), [
            "docker build", "docker push", "docker create", "docker cp", "docker rm",
            "bun " + os.path.join(REPO, "spoa/cedra-routes.mjs"), "consul kv", "nomad job",
            "nomad eval", "nomad deployment"], out)
        self.assertIn("nomad job run -detach -var build_id=b42 -var image=registry.test/cedra/storefront:b42 "
                      "-var instances=4 " + os.path.join(NOMAD, "cedra-storefront.nomad"), out)
        self.assertIn("consul kv put cedra/routes/b42 @", out)
        self.assertIn("+ nomad deployment promote DEPLOYMENT_ID", out)
        self.assertIn("dry run done: nothing was built, published or deployed", out)
        # every printed command is valid shell (quoted as needed)
        for c in cmds:
            r = subprocess.run(["bash", "-n", "-c", c], stderr=subprocess.PIPE)
            self.assertEqual(r.returncode, 0, c)

    def test_dry_run_without_the_tools(self):
        node_dir = os.path.dirname(shutil.which("node"))
        rc, out = self.deploy("--app", self.app, "--build-id", "b42", "--dry-run",
                              env={"PATH": "/usr/bin:/bin:" + node_dir, "CEDRA_JS": "node"})
        self.assertEqual(rc, 0, out)
        self.assertIn("ignored with --dry-run", out)

    def test_missing_tools_stop_a_real_run(self):
        node_dir = os.path.dirname(shutil.which("node"))
        rc, out = self.deploy("--app", self.app, "--build-id", "b42",
                              env={"PATH": "/nonexistent:" + node_dir, "CEDRA_JS": "node"})
        self.assertEqual(rc, 2, out)
        self.assertRegex(out, r"not installed: .*nomad")

    def test_a_failed_step_stops_before_anything_is_deployed(self):
        self.scenario([state("running", "x", 5, 0, 0, 0, False)])
        rc, out = self.deploy("--app", self.app, "--build-id", "b42", env={"FAKE_DOCKER_BUILD_RC": "1"})
        self.assertEqual(rc, 1, out)
        self.assertEqual(self.names(), ["docker build"])
        self.assertIn("'docker build' failed", out)

    def test_route_table_of_another_build_is_refused(self):
        with open(os.path.join(self.image_root, ".next/BUILD_ID"), "w") as f:
            f.write("stable")
        rc, out = self.deploy("--app", self.app, "--build-id", "b42")
        self.assertEqual(rc, 1, out)
        self.assertIn("names another build than b42", out)
        self.assertNotIn("consul kv put", self.names())

    def test_usage_errors(self):
        cases = [
            ([], "--app DIR is required"),
            (["--app", "/nonexistent"], "no such directory"),
            (["--app", self.app, "--build-id", "bad.id"], "build id 'bad.id'"),
            (["--app", self.app, "--timeout", "0"], "--timeout must be a positive integer"),
            (["--app", self.app, "--var", "build_id=x"], "set by deploy.sh itself"),
            (["--app", self.app, "--bogus"], "unknown argument '--bogus'"),
        ]
        for args, msg in cases:
            with self.subTest(args=args):
                rc, out = self.deploy(*args)
                self.assertEqual(rc, 2, out)
                self.assertIn(msg, out)
        self.assertEqual(self.calls(), [])
        rc, out = self.deploy("--help")
        self.assertEqual(rc, 0)
        for opt in ("--dry-run", "--auto-promote", "--build-id", "--timeout", "--app"):
            self.assertIn(opt, out)

    def test_default_build_id(self):
        rc, out = self.deploy("--app", self.app, "--dry-run")
        self.assertEqual(rc, 0, out)
        m = re.search(r"storefront build (\S+) from", out)
        self.assertRegex(m.group(1), r"^\d{14}(-[0-9a-f]+)?$")


# ---------------------------------------------------------------------------
# (c) shellcheck, (d) Dockerfiles
# ---------------------------------------------------------------------------

class ScriptsAndDockerfilesTest(unittest.TestCase):
    def test_shellcheck(self):
        sc = shutil.which("shellcheck")
        if not sc:
            self.skipTest("shellcheck not installed (apt-get install shellcheck)")
        scripts = sorted(os.path.join(NOMAD, f) for f in os.listdir(NOMAD) if f.endswith(".sh"))
        self.assertGreaterEqual(len(scripts), 3)
        r = subprocess.run([sc, "-x"] + scripts, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.assertEqual(r.returncode, 0, r.stdout.decode())
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d)
        for name, body in SHIMS.items():  # the test's own shims too
            p = os.path.join(d, name)
            with open(p, "w") as f:
                f.write("#!/usr/bin/env bash\nset -euo pipefail\n" + body)
            r = subprocess.run([sc, "-e", "SC2155", p], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            self.assertEqual(r.returncode, 0, r.stdout.decode())

    def test_scripts_are_strict_and_executable(self):
        for f in ("deploy.sh", "edge-build.sh"):
            p = os.path.join(NOMAD, f)
            self.assertTrue(os.stat(p).st_mode & stat.S_IXUSR, f)
            self.assertIn("set -euo pipefail", read(p), f)
        p = os.path.join(NOMAD, "cedra-routes-sync.sh")
        self.assertTrue(os.stat(p).st_mode & stat.S_IXUSR)
        self.assertIn("set -eu", read(p))

    @staticmethod
    def stages(path):
        out = []
        for line in read(path).splitlines():
            m = re.match(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?\s*$", line, re.I)
            if m:
                out.append((m.group(1), m.group(2)))
        return out

    def check_common(self, name):
        path = os.path.join(NOMAD, name)
        text = read(path)
        stages = self.stages(path)
        self.assertGreaterEqual(len(stages), 2, "%s: not multi-stage" % name)
        names = [s[1] for s in stages]
        self.assertTrue(all(names), "%s: every stage is named" % name)
        for image, _ in stages:
            if image in names:
                continue  # FROM an earlier stage
            repo, _, tag = image.partition(":")
            self.assertTrue(tag, "%s: %s has no tag" % (name, image))
            self.assertNotIn("latest", tag)
            self.assertRegex(tag.split("@")[0], r"^v?\d+\.\d+(\.\d+)?(-[a-z0-9.-]+)?$",
                             "%s: %s is not pinned to a version" % (name, image))
        final = text[text.rindex("\nFROM "):]
        self.assertIn("COPY --from=", final)
        users = re.findall(r"^USER\s+(\S+)", final, re.M)
        self.assertTrue(users and not users[-1].startswith(("root", "0")), "%s: runs as root" % name)
        self.assertNotRegex(text, r"(?m)^ADD\s+https?://")
        for m in re.finditer(r"apt-get install([^\n]*(?:\\\n[^\n]*)*)", text):
            self.assertIn("--no-install-recommends", m.group(1))
        if "apt-get install" in text:
            self.assertIn("rm -rf /var/lib/apt/lists/*", text)
        self.assertTrue(os.path.exists(path + ".dockerignore"), "%s.dockerignore" % name)
        self.assertTrue(text.startswith("# syntax=docker/dockerfile:1"))
        return stages, text

    def test_edge_dockerfile(self):
        stages, text = self.check_common("edge.Dockerfile")
        self.assertTrue(all(img.startswith("debian:12.") for img, _ in stages))
        self.assertIn("RUN CEDRA_EDGE_BUILD_DIR=/tmp/build nomad/edge-build.sh /stage", text)
        self.assertIn("COPY --from=build /stage/ /", text)
        self.assertRegex(text, r"install -y --no-install-recommends \\\n\s+haproxy ")
        self.assertIn("make install DESTDIR=\"$dest\"", read(os.path.join(NOMAD, "edge-build.sh")))
        self.assertIn('"$src/configure"', read(os.path.join(NOMAD, "edge-build.sh")))
        ign = read(os.path.join(NOMAD, "edge.Dockerfile.dockerignore"))
        self.assertIn("!build-aux", ign)  # autoreconf's aux dir survives "build-*"

    def test_storefront_dockerfile(self):
        stages, text = self.check_common("storefront.Dockerfile")
        images = [img for img, _ in stages]
        self.assertTrue(any(i.startswith("oven/bun:1.") for i in images))
        self.assertTrue(images[-1].startswith("node:22."), images[-1])
        self.assertIn("bun install --frozen-lockfile", text)
        self.assertIn("bun install --frozen-lockfile --production", text)
        self.assertIn("bun --bun run build", text)
        self.assertIn("ARG BUILD_ID", text)
        self.assertIn('test "$(cat .next/BUILD_ID)" = "${BUILD_ID}"', text)
        self.assertRegex(text, r'CMD \["node", "node_modules/next/dist/bin/next", "start"')
        # deploy.sh copies the manifests out of /app
        self.assertIn("WORKDIR /app", text)
        self.assertIn('docker cp "$cid:/app/$f"', read(os.path.join(NOMAD, "deploy.sh")))


if __name__ == "__main__":
    unittest.main()
