"""Documentation stays true to the code: every configuration keyword and
every operator-socket command the daemons accept appears in their man page,
and the man pages render."""

import glob
import os
import re
import shutil
import subprocess
import unittest

import harness

DAEMONS = [
    # (name, config parser, operator command sources, man page)
    ("cedra-spoa", "spoa/conf.c", ["spoa/cli.c"], "docs/cedra-spoa.8"),
    ("cedra-agent", "agent/conf.c", sorted(glob.glob(os.path.join(harness.REPO, "agent", "*.c"))),
     "docs/cedra-agent.8"),
]


def read(path):
    with open(os.path.join(harness.REPO, path), encoding="utf-8") as f:
        return f.read()


def man_text(path):
    """The page's words: troff escapes for '-' undone, font changes dropped."""
    t = read(path)
    t = t.replace("\\-", "-")
    t = re.sub(r"\\f[BIRP]", "", t)
    return t


def config_keywords(src):
    return set(re.findall(r'strcmp\(kw, "([a-z][a-z0-9-]*)"\)', src))


def socket_commands(srcs):
    cmds = set()
    for path in srcs:
        with open(path if os.path.isabs(path) else os.path.join(harness.REPO, path)) as f:
            src = f.read()
        # opsock tables: {"show info", "help text", fn}
        cmds |= set(re.findall(r'\{\s*"((?:show|set|pause|resume|resync|purge|clear|add|del)[a-z -]*)",',
                               src))
    return cmds


class DocsTest(unittest.TestCase):
    def test_every_keyword_and_command_is_documented(self):
        checked = 0
        for name, conf, clis, man in DAEMONS:
            if not os.path.exists(os.path.join(harness.REPO, conf)):
                continue
            with self.subTest(daemon=name):
                self.assertTrue(os.path.exists(os.path.join(harness.REPO, man)), man)
                text = man_text(man)
                kws = config_keywords(read(conf))
                self.assertGreater(len(kws), 5, "no keywords found in %s" % conf)
                missing = sorted(k for k in kws if not re.search(r"(^|[\s.])%s(\s|$)" % re.escape(k), text, re.M))
                self.assertEqual(missing, [], "%s: keywords missing from %s" % (name, man))
                cmds = socket_commands(clis)
                self.assertGreater(len(cmds), 2, "no socket commands found for %s" % name)
                missing = sorted(c for c in cmds if c not in text)
                self.assertEqual(missing, [], "%s: socket commands missing from %s" % (name, man))
                checked += 1
        self.assertGreaterEqual(checked, 1)

    def test_man_pages_render(self):
        if not shutil.which("man"):
            self.skipTest("man not installed")
        for page in glob.glob(os.path.join(harness.REPO, "docs", "*.8")):
            r = subprocess.run(["man", "-l", "-Tutf8", page], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, timeout=30)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertGreater(len(r.stdout), 1000)
            self.assertNotIn(b"warning", r.stderr.lower(), page)

    def test_help_lists_the_flags(self):
        binary = harness.require_spoa()
        out = subprocess.run([binary, "-h"], stdout=subprocess.PIPE, timeout=10).stdout.decode()
        flags = re.findall(r"^\s+(-[a-z])\b", out, re.M)
        self.assertGreater(len(flags), 5, out)
        text = man_text("docs/cedra-spoa.8")
        for flag in flags:
            self.assertRegex(text, r"\.BI? %s\b" % re.escape(flag), flag)


class ReadmeTest(unittest.TestCase):
    """Issue 7: the README says what the project is, shows the picture, the two
    commands, how to deploy on Nomad, the configuration, and links the
    operations guide; every repository path it names exists."""

    def test_sections_and_commands(self):
        text = read("README.md")
        heads = re.findall(r"^## (.+)$", text, re.M)
        for h in ("The picture", "Quick start", "Deploying on Nomad", "Configuration",
                  "Documentation"):
            self.assertIn(h, heads)
        quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
        self.assertRegex(quick, r"(?m)^\./scripts/demo\.sh\b")
        self.assertRegex(quick, r"(?m)^\./tests/run\.sh\b")
        picture = text.split("## The picture", 1)[1].split("\n## ", 1)[0]
        for part in ("HAProxy", "cedra-spoa", "cedra-agent", "Valkey", "Consul", "storefront_canary"):
            self.assertIn(part, picture)
        self.assertIn("docs/operations.md", text)
        self.assertIn("nomad/README.md", text.split("## Deploying on Nomad", 1)[1])

    def test_paths_exist(self):
        text = read("README.md")
        paths = set(re.findall(
            r"(?<![\w/.$])((?:\./)?(?:docs|nomad|haproxy|scripts|tests|bench|spoa|agent|lib)/"
            r"[\w./-]*[\w/])", text))
        self.assertGreater(len(paths), 10)
        missing = sorted(p for p in paths if not os.path.exists(os.path.join(harness.REPO, p)))
        self.assertEqual(missing, [])
        for var in re.findall(r"`(CEDRA_DEMO_[A-Z]+)`", text):
            self.assertIn(var, read("scripts/demo.sh"), var)


if __name__ == "__main__":
    unittest.main()
