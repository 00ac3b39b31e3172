"""What the fault suite watches besides the answers: the pools (sampled every
~100 ms), HAProxy's request log (to tell edge-caused 5xx from origin-caused
ones) and the recovery condition."""

import re
import threading
import time

import stack as st

# The shipped log-format: "%ci:%cp [%tr] %ft %b/%s %TR/%Tw/%Tc/%Tr/%Ta %ST %B %tsc ..."
LOG_RE = re.compile(r"^(?P<ci>[0-9.]+):(?P<cp>\d+) \[(?P<tr>[^\]]+)\] (?P<ft>\S+) "
                    r"(?P<b>[^/\s]+)/(?P<s>\S+) (?P<timers>\S+) (?P<st>-?\d+) (?P<bytes>\d+) "
                    r"(?P<tsc>\S+) ")
ORIGIN_BACKENDS = ("storefront_stable", "storefront_canary")


class Sampler(object):
    """Every `interval`: HAProxy's usable slots per backend and whether the
    SPOE agent is up, cedra-spoa's pools. A pool counts as emptied when a
    build that has live instances in Consul has no usable server in its
    backend, or cedra-spoa has lost the pool while HAProxy uses cedra-spoa.
    A sample where a socket does not answer (the process is being
    restarted) is counted apart, not as emptied."""

    def __init__(self, stk, interval=0.1):
        self.stk = stk
        self.interval = interval
        self.samples = 0
        self.unreachable = 0
        self.unsynced = 0         # cedra-spoa restarted, not yet told its pools by the agent
        self.events = []          # (t, what)
        self.stop_ev = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.stop_ev.set()
        self.thread.join(10)

    def emptied(self):
        """Distinct emptying episodes: consecutive samples with the same
        problem count once."""
        n, prev = 0, None
        for _, what in self.events:
            if what is None:
                prev = None
                continue
            if what != prev:
                n += 1
            prev = what
        return n

    def detail(self):
        return sorted({w for _, w in self.events if w})

    def longest(self):
        """Seconds of the longest run of samples with a problem (from the first
        bad sample to the first good one after it)."""
        best, start = 0.0, None
        for t, what in self.events:
            if what and start is None:
                start = t
            elif not what and start is not None:
                best, start = max(best, t - start), None
        if start is not None and self.events:
            best = max(best, self.events[-1][0] - start)
        return best

    def _run(self):
        while not self.stop_ev.wait(self.interval):
            self.sample()

    def spoa_told(self):
        """The running cedra-spoa has been sent pools over its socket."""
        try:
            with open(self.stk.spoa.err_path, "rb") as f:
                return b"event=pool_changed" in f.read()
        except OSError:
            return False

    def alive_builds(self):
        """Builds with at least one passing instance in the double."""
        return set(self.stk.alive_builds)

    def sample(self):
        stk = self.stk
        self.samples += 1
        problems = []
        try:
            for backend, build in (("storefront_stable", "stable"),
                                   ("storefront_canary", "canary")):
                if build in self.alive_builds() and not st.usable_ports(stk.hap_sock, backend):
                    problems.append("%s has no usable server" % backend)
            spoa_up = hap_spoa_up(stk)
        except (OSError, RuntimeError, ValueError, IndexError):
            self.unreachable += 1
            return
        if spoa_up:
            try:
                pools = stk.spoa_pools()
            except (OSError, RuntimeError, ValueError, IndexError):
                self.unreachable += 1
                pools = None
            if pools is not None and not self.spoa_told():
                # Restarted, cedra-spoa has only its file's pools until the
                # agent pushes them; meanwhile it sends canary pins to the
                # canary backend (not a lost pool: "wrong" shows if not).
                if any(pools.get("canary" if b == "canary" else "stable", {}).get("build") != b
                       for b in self.alive_builds()):
                    self.unsynced += 1
                pools = None
            if pools is not None:
                for build in sorted(self.alive_builds()):
                    pool = "canary" if build == "canary" else "stable"
                    if pools.get(pool, {}).get("build") != build:
                        problems.append("cedra-spoa pool %s is %r, not build %s" % (
                            pool, pools.get(pool, {}).get("build"), build))
        self.events.append((time.monotonic(), "; ".join(problems) or None))


def show_stat_rows(sock):
    text = st.unix_command(sock, "show stat")
    lines = [l for l in text.splitlines() if l.strip()]
    if not lines or not lines[0].startswith("# "):
        raise RuntimeError("unexpected show stat answer: %r" % text[:200])
    head = lines[0][2:].split(",")
    return [dict(zip(head, l.split(","))) for l in lines[1:]]


def hap_spoa_up(stk):
    for row in show_stat_rows(stk.hap_sock):
        if row["pxname"] == "spoa_cedra" and row["svname"] == "spoa1":
            return row["status"].startswith("UP")
    raise RuntimeError("no spoa_cedra/spoa1")


def parse_tr(tr):
    """HAProxy's %tr (local time, ms) -> epoch seconds."""
    main, _, ms = tr.partition(".")
    return time.mktime(time.strptime(main, "%d/%b/%Y:%H:%M:%S")) + int(ms or 0) / 1000.0


def read_log(paths):
    """Every request line of the HAProxy stderr files -> list of dicts."""
    out = []
    for p in paths:
        try:
            with open(p, "r", errors="replace") as f:
                for line in f:
                    m = LOG_RE.match(line)
                    if m:
                        d = m.groupdict()
                        d["t"] = parse_tr(d["tr"])
                        d["line"] = line.rstrip("\n")
                        out.append(d)
        except OSError:
            continue
    return out


def classify_5xx(answers, log):
    """For every 5xx answer: origin when HAProxy's log line for it (same
    client port and status, nearest in time) names a storefront server and its
    termination state says the answer or the failure came from that server
    ('-' a normal answer of the server, 'S' the server aborted or errored,
    's' the server timed out); edge otherwise (no server: <NOSRV>, the
    delivery backend, a proxy/internal/resource error, or no log line)."""
    by_port = {}
    for e in log:
        by_port.setdefault(int(e["cp"]), []).append(e)
    for a in answers:
        if a.verdict != "5xx":
            continue
        cands = [e for e in by_port.get(a.cport, []) if int(e["st"]) == a.status]
        if not cands:
            a.verdict, a.why = "edge5xx", "%d with no log line" % a.status
            continue
        e = min(cands, key=lambda e: abs(e["t"] - a.t0_wall))
        origin = (e["b"] in ORIGIN_BACKENDS and e["s"] != "<NOSRV>" and e["tsc"][0] in "-Ss")
        a.verdict = "origin5xx" if origin else "edge5xx"
        a.why = e["line"]
