#!/usr/bin/env python3
"""Run the integration tests (every test_*.py next to this file).

Prints unittest's verbose output, then one line per test
  PASS <id> | FAIL <id> | SKIP <id>
and a final line
  integration: N passed, N failed, N skipped
Exit status 1 when anything failed (errors count as failures).

  --only PATTERN   run only tests whose id contains PATTERN, or matches it as
                   a glob (fnmatch) when it contains * ? or [; repeatable
  --skip PATTERN   leave out tests matching PATTERN (same matching); repeatable
  --timeout SECS   abort the whole run after SECS (default 300), dumping stacks
  -q               less unittest output
  --times N        print the N slowest modules and tests (default 8)
"""

import argparse
import faulthandler
import fnmatch
import os
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def iter_tests(suite):
    for t in suite:
        if isinstance(t, unittest.TestSuite):
            for x in iter_tests(t):
                yield x
        else:
            yield t


def matches(test_id, patterns):
    for p in patterns:
        if any(ch in p for ch in "*?["):
            if fnmatch.fnmatchcase(test_id, p) or fnmatch.fnmatchcase(test_id, "*" + p + "*"):
                return True
        elif p in test_id:
            return True
    return False


class RecordingResult(unittest.TextTestResult):
    """Records one outcome per test id (in order of completion)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.outcomes = []   # (status, id)
        # module -> seconds since the previous test ended: its tests and
        # class fixtures (and the previous class's tearDownClass)
        self.seconds = {}
        self.test_seconds = {}
        self._last = time.monotonic()

    def stopTest(self, test):
        super().stopTest(test)
        now = time.monotonic()
        mod = test.id().split(".", 1)[0]
        self.seconds[mod] = self.seconds.get(mod, 0.0) + now - self._last
        self.test_seconds[test.id()] = self.test_seconds.get(test.id(), 0.0) + now - self._last
        self._last = now

    def _record(self, status, test):
        self.outcomes.append((status, test.id()))

    def addSuccess(self, test):
        super().addSuccess(test)
        self._record("PASS", test)

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._record("FAIL", test)

    def addError(self, test, err):
        super().addError(test, err)
        self._record("FAIL", test)

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self._record("SKIP", test)

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self._record("PASS", test)

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._record("FAIL", test)

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None and not issubclass(err[0], unittest.SkipTest):
            self.outcomes.append(("FAIL", subtest.test_case.id()))


def main(argv=None):
    ap = argparse.ArgumentParser(description="cedra-edge integration tests")
    ap.add_argument("--only", action="append", default=[], metavar="PATTERN")
    ap.add_argument("--skip", action="append", default=[], metavar="PATTERN")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("-q", "--quiet", action="store_true")
    ap.add_argument("--times", type=int, default=8, metavar="N")
    args = ap.parse_args(argv)

    faulthandler.dump_traceback_later(args.timeout, exit=True)

    loader = unittest.TestLoader()
    suite = loader.discover(HERE, pattern="test_*.py", top_level_dir=HERE)
    # A TestCase class imported into another module is discovered there too,
    # under the same id: run each test once.
    once = {}
    for t in iter_tests(suite):
        once.setdefault(t.id(), t)
    suite = unittest.TestSuite(list(once.values()))
    if args.only:
        selected = [t for t in iter_tests(suite) if matches(t.id(), args.only)]
        # keep loader errors visible even when filtering
        selected += [t for t in iter_tests(suite)
                     if t.id().startswith("unittest.loader") and t not in selected]
        suite = unittest.TestSuite(selected)
    if args.skip:
        suite = unittest.TestSuite([t for t in iter_tests(suite) if not matches(t.id(), args.skip)])

    runner = unittest.TextTestRunner(stream=sys.stderr, verbosity=1 if args.quiet else 2,
                                     resultclass=RecordingResult)
    result = runner.run(suite)

    # A test whose subtests failed is recorded FAIL once (not also PASS).
    final = {}
    order = []
    for status, base in result.outcomes:
        if base not in final:
            order.append(base)
            final[base] = status
        elif status == "FAIL":
            final[base] = "FAIL"
    counts = {"PASS": 0, "FAIL": 0, "SKIP": 0}
    out = sys.stdout
    for tid in order:
        counts[final[tid]] += 1
        out.write("%s %s\n" % (final[tid], tid))
    # Where the time goes, slowest module first: the suite must stay well
    # under CI's budget on 2 cores.
    for mod, sec in sorted(result.seconds.items(), key=lambda kv: -kv[1])[:args.times]:
        out.write("time %s %.0fs\n" % (mod, sec))
    for tid, sec in sorted(result.test_seconds.items(), key=lambda kv: -kv[1])[:args.times]:
        out.write("time %s %.0fs\n" % (tid, sec))
    out.write("integration: %d passed, %d failed, %d skipped\n" % (
        counts["PASS"], counts["FAIL"], counts["SKIP"]))
    out.flush()
    faulthandler.cancel_dump_traceback_later()
    return 1 if counts["FAIL"] or not result.wasSuccessful() else 0


if __name__ == "__main__":
    sys.exit(main())
