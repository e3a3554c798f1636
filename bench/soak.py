#!/usr/bin/env python3
"""Soak: stoke under mixed traffic for a long time (1 hour by default).

One controller and one activator (the real daemons, from STOKE_BUILD_DIR)
against the real Docker engine, with FUNCTIONS functions (50) of the example
image, in five groups of equal size, one per idle tier:

  paused    idle: pause, stopAfter 1h         cold starts thaw a paused replica
  stopped   idle: stop, removeAfter 1h        cold starts start a stopped one
  created   idle: remove, precreated: 1       cold starts start a pre-created one
  absent    idle: remove                      cold starts create a new one
  walk      idle: pause, stopAfter 15s,       replicas walk paused -> stopped ->
            removeAfter 15s                   removed while the function is idle

Every spec has window 6s, scaleToZeroGrace 10s, initial 0, min 0, max 4,
target 2 at 70 %, so a function is back at zero about 20 s after its last
request. Each function runs its own cycle: a burst of 1 to 6 clients for 15
to 40 s (each client a keep-alive connection sending GET / or GET
/delay/<20..300 ms> one after the other; one request in ten closes its
connection), then an idle gap of 35 to 70 s, longer than the way to zero:
each burst takes the function from 0 to N replicas (N up to 4) and the gap
back to 0. Every ROLLOUT_EVERY (10 min; a third of the run when the run is
shorter than 30 min) every spec is rewritten with a new env value: a new
revision of all 50 functions at once, under that traffic.

Every 10 s it samples both daemons' VmRSS and open fds (/proc), and the
controller's replica gauges. At the end it stops the traffic, counts the
containers (by state and revision), stops the daemons with SIGTERM, counts
the containers left, and prints a markdown table: the slopes per hour of RSS
and fds (least squares over the samples after the warm-up: a sixth of the
run, at least 60 s), failed requests by status (any answer but 200, and
client errors), requests total, cold starts by tier (the controller's
stoke_controller_cold_starts_total) and containers left.

A request that fails on a reused keep-alive connection before any byte of
an answer (the server closed it while idle) is sent again once on a new
connection, as HTTP clients do for idempotent requests; those are counted
apart ("keep-alive retries"), and a failure of the retry counts as failed.

Traffic goes to the activator on 127.0.0.1 only; at most FUNCTIONS x 6
client connections at once. Every process it starts dies with it (harness's
DIE_WITH_TEST), and every container of its instance is removed at exit, on
SIGINT/SIGTERM (it then prints the report of what ran so far) and on
failure.

Usage: bench/soak.py [--duration 1h] [--functions 50] [--rollout-every 10m]
                     [--logs DIR] [--seed N]
Exit status 0 when no request failed, no daemon died and no container was
left; 1 otherwise.
"""

import argparse
import http.client
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../tests/e2e"))
from harness import Stoke, containers, spec_text  # noqa: E402

SAMPLE_S = 10
GROUPS = [
    ("paused", {"idle": "pause", "stopAfter": "1h"}),
    ("stopped", {"idle": "stop", "removeAfter": "1h"}),
    ("created", {"idle": "remove", "precreated": 1}),
    ("absent", {"idle": "remove"}),
    ("walk", {"idle": "pause", "stopAfter": "15s", "removeAfter": "15s"}),
]
BASE_SCALE = {"min": 0, "initial": 0, "max": 4, "target": 2, "utilization": 70,
              "window": "6s", "scaleToZeroGrace": "10s"}
MAX_CLIENTS = 6
BURST_S = (15, 40)
GAP_S = (35, 70)


def duration(text):
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", text.strip())
    if not m:
        raise argparse.ArgumentTypeError("a duration: 90, 90s, 10m, 1h")
    return float(m.group(1)) * {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600}[m.group(2)]


def fmt_dur(s):
    return "%dh%02dm" % (s // 3600, s % 3600 // 60) if s >= 3600 else (
        "%dm%02ds" % (s // 60, s % 60) if s >= 60 else "%ds" % s)


METRIC = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def metrics(port):
    """{(name, frozenset(labels)): value} from a daemon's /metrics."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", "/metrics")
        r = c.getresponse()
        text = r.read().decode()
        assert r.status == 200, (port, r.status)
    finally:
        c.close()
    out = {}
    for line in text.splitlines():
        m = METRIC.match(line)
        if m:
            out[(m.group(1), frozenset(LABEL.findall(m.group(2) or "")))] = float(m.group(3))
    return out


def series(ms, name, **want):
    """[(labels dict, value)] of metric `name` whose labels include `want`."""
    res = []
    for (n, labels), v in ms.items():
        d = dict(labels)
        if n == name and all(d.get(k) == v2 for k, v2 in want.items()):
            res.append((d, v))
    return res


def proc_sample(pid):
    """(VmRSS in KiB, open fds) of a running process."""
    with open("/proc/%d/status" % pid) as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return rss, len(os.listdir("/proc/%d/fd" % pid))


def slope_per_hour(points):
    """Least-squares slope of [(t seconds, y)], per hour."""
    n = len(points)
    if n < 2:
        return float("nan")
    mt = sum(t for t, _ in points) / n
    my = sum(y for _, y in points) / n
    den = sum((t - mt) ** 2 for t, _ in points)
    return sum((t - mt) * (y - my) for t, y in points) / den * 3600 if den else float("nan")


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.codes = {}  # status code (int) or client error name -> count
        self.retries = 0
        self.bursts = 0
        self.bursts_from_zero = 0
        self.first_failures = []  # (time, function, what) of the first few

    def add(self, fn, code, t0):
        with self.lock:
            self.codes[code] = self.codes.get(code, 0) + 1
            if code != 200 and len(self.first_failures) < 20:
                self.first_failures.append((round(time.monotonic() - t0, 1), fn, code))

    def failed(self):
        with self.lock:
            return {k: v for k, v in self.codes.items() if k != 200}

    def total(self):
        with self.lock:
            return sum(self.codes.values())


def client(port, fn, until, stop, stats, t0, rng):
    conn, reused = None, False
    while not stop.is_set() and time.monotonic() < until:
        path = "/" if rng.random() < 0.3 else "/delay/%d" % rng.randint(20, 300)
        for attempt in (0, 1):
            if conn is None:
                conn, reused = http.client.HTTPConnection("127.0.0.1", port, timeout=90), False
            try:
                conn.request("GET", "/fn/%s%s" % (fn, path))
                r = conn.getresponse()
                r.read()
                code = r.status
                if r.will_close or rng.random() < 0.1:
                    conn.close()
                    conn = None
                else:
                    reused = True
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                conn.close()
                conn = None
                code = type(e).__name__
                if reused and attempt == 0:
                    with stats.lock:
                        stats.retries += 1
                    continue
                break
            except Exception as e:  # noqa: BLE001 - counted as a failure
                conn.close()
                conn = None
                code = type(e).__name__
                break
        stats.add(fn, code, t0)
    if conn is not None:
        conn.close()


def ready_now(ops_port, fn):
    ms = metrics(ops_port)
    return sum(v for _, v in series(ms, "stoke_controller_replicas", function=fn, state="ready"))


def function_cycle(s, fn, end, stop, stats, t0, seed):
    rng = random.Random(seed)
    stop.wait(rng.uniform(0, GAP_S[1]))
    while not stop.is_set() and time.monotonic() < end - BURST_S[0]:
        try:
            at_zero = ready_now(s.ctl_ops_port, fn) == 0
        except Exception:  # noqa: BLE001 - the sampler reports a dead daemon
            at_zero = False
        n = rng.randint(1, MAX_CLIENTS)
        until = min(end, time.monotonic() + rng.uniform(*BURST_S))
        ts = [threading.Thread(target=client, daemon=True,
                               args=(s.port, fn, until, stop, stats, t0,
                                     random.Random(rng.random())))
              for _ in range(n)]
        with stats.lock:
            stats.bursts += 1
            stats.bursts_from_zero += at_zero
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        stop.wait(rng.uniform(*GAP_S))


def write_specs(s, names, rev):
    for fn, group in names:
        scale = dict(BASE_SCALE, **dict(GROUPS)[group])
        s.write_file(fn + ".yaml", spec_text(fn, scale=scale, env={"SOAK_REV": rev}))


def terminate(proc, wait_s=120):
    """SIGTERM, then SIGKILL after `wait_s` (the controller removes every
    replica first, which takes a while on a slow engine)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Interrupted(Exception):
    pass


def on_signal(signum, _frame):
    raise Interrupted(signal.Signals(signum).name)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=duration, default=3600.0)
    ap.add_argument("--functions", type=int, default=50)
    ap.add_argument("--rollout-every", type=duration, default=None)
    ap.add_argument("--logs", help="copy the daemons' logs here at the end")
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args()
    dur = args.duration
    assert dur >= 60, "--duration: at least 60s"
    assert args.functions >= len(GROUPS), "--functions: at least %d" % len(GROUPS)
    rollout_every = args.rollout_every or (600.0 if dur >= 1800 else dur / 3)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    warmup = max(60.0, dur / 6)
    rng = random.Random(seed)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    lo = 21000 + 1000 * rng.randrange(4)
    s = Stoke("soak", extra_controller_args=["--port-range", "%d-%d" % (lo, lo + 999)])
    names = [("soak-%s-%02d" % (GROUPS[i % len(GROUPS)][0], i), GROUPS[i % len(GROUPS)][0])
             for i in range(args.functions)]
    rev = 0
    write_specs(s, names, "r%d" % rev)
    s.start()
    s.wait_functions("activator", len(names), 60)
    pids = {"controller": s.procs["controller"].pid, "activator": s.procs["activator"].pid}
    idle_start = {n: proc_sample(pid) for n, pid in pids.items()}
    print("soak: %d functions, %s, rollout every %s, seed %d, logs in %s" % (
        len(names), fmt_dur(dur), fmt_dur(rollout_every), seed, s.tmp), file=sys.stderr)

    stats = Stats()
    stop = threading.Event()
    t0 = time.monotonic()
    end = t0 + dur
    samples = []  # (t, {daemon: (rss KiB, fds)})
    peak_ready = {}
    rollouts = []
    died = []
    interrupted = None
    threads = [threading.Thread(target=function_cycle, daemon=True,
                                args=(s, fn, end, stop, stats, t0, rng.random()))
               for fn, _ in names]
    for t in threads:
        t.start()
    next_sample, next_rollout, next_print = t0, t0 + rollout_every, t0 + 60
    try:
        while time.monotonic() < end:
            now = time.monotonic()
            if now >= next_sample:
                next_sample += SAMPLE_S
                for name, p in s.procs.items():
                    if p.poll() is not None:
                        died.append("%s exited with %s" % (name, p.returncode))
                if died:
                    break
                samples.append((now - t0, {n: proc_sample(pid) for n, pid in pids.items()}))
                for labels, v in series(metrics(s.ctl_ops_port), "stoke_controller_replicas",
                                        state="ready"):
                    fn = labels["function"]
                    peak_ready[fn] = max(peak_ready.get(fn, 0), v)
            if now >= next_rollout and now < end - 30:
                next_rollout += rollout_every
                rev += 1
                write_specs(s, names, "r%d" % rev)
                rollouts.append(round(now - t0))
                print("soak: %s rollout %d (all %d specs)" % (
                    fmt_dur(now - t0), rev, len(names)), file=sys.stderr)
            if now >= next_print:
                next_print += 60
                _, last = samples[-1]
                print("soak: %s requests %d failed %d bursts %d  controller %d KiB %d fds"
                      "  activator %d KiB %d fds" % (
                          fmt_dur(now - t0), stats.total(), sum(stats.failed().values()),
                          stats.bursts, *last["controller"], *last["activator"]),
                      file=sys.stderr)
            time.sleep(max(0.0, min(next_sample, end) - time.monotonic()))
    except Interrupted as e:
        interrupted = str(e)
    ran = time.monotonic() - t0
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    stop.set()
    for t in threads:
        t.join(120)

    # The end: both daemons idle again (every function at zero ready, as at the
    # start), what is there once the traffic stopped, and what is left once
    # the daemons stopped.
    idle_end = None
    deadline = time.monotonic() + 120
    while not died and time.monotonic() < deadline:
        try:
            if sum(v for _, v in series(metrics(s.ctl_ops_port), "stoke_controller_replicas",
                                        state="ready")) == 0:
                time.sleep(2)  # the activator closes the pools of the replicas that left
                idle_end = {n: proc_sample(pid) for n, pid in pids.items()}
                break
        except Exception as e:  # noqa: BLE001 - reported below
            died.append("at the end: %s" % e)
        time.sleep(1)
    end_ms = {}
    try:
        end_ms = metrics(s.ctl_ops_port)
        act_ms = metrics(s.ops_port)
    except Exception as e:  # noqa: BLE001 - reported below
        died.append("metrics at the end: %s" % e)
        act_ms = {}
    labels = {"io.stoke.instance": s.instance}
    at_end = containers(labels)
    states = {}
    for c in at_end:
        states[c["State"]] = states.get(c["State"], 0) + 1
    revs = {}
    for c in at_end:
        revs.setdefault(c["Labels"].get("io.stoke.function"), set()).add(
            c["Labels"].get("io.stoke.revision"))
    mixed = sorted(fn for fn, r in revs.items() if len(r) > 1)
    for name in [n for n in s.procs if n != "controller"] + ["controller"]:
        terminate(s.procs[name])
    left = containers(labels)
    exits = {n: p.returncode for n, p in s.procs.items()}
    if args.logs:
        os.makedirs(args.logs, exist_ok=True)
        for n, path in s.logs.items():
            shutil.copy(path, os.path.join(args.logs, os.path.basename(path)))
    try:
        s.stop()  # removes whatever is left, checks exit codes and sanitizer markers
    except AssertionError as e:
        died.append(str(e).split("\n")[0])

    # The report.
    failed = stats.failed()
    after = [(t, d) for t, d in samples if t >= warmup]
    cold = {}
    for lab, v in series(end_ms, "stoke_controller_cold_starts_total"):
        cold[lab["tier"]] = cold.get(lab["tier"], 0) + v
    act_codes = {}
    for lab, v in series(act_ms, "stoke_activator_requests_total"):
        act_codes[lab["code"]] = act_codes.get(lab["code"], 0) + v
    peaks = sorted(peak_ready.values())

    def row(k, v):
        print("| %s | %s |" % (k, v))

    print()
    print("Soak: %d functions, %s%s, rollout every %s, seed %d" % (
        len(names), fmt_dur(ran), " (interrupted: %s)" % interrupted if interrupted else "",
        fmt_dur(rollout_every), seed))
    print()
    print("| measure | result |")
    print("|---|---|")
    for d in ("controller", "activator"):
        if after:
            rss = [(t, v[d][0] / 1024) for t, v in after]
            fds = [(t, v[d][1]) for t, v in after]
            row("%s RSS slope" % d, "%+.2f MiB/h (%.1f → %.1f MiB, min %.1f, max %.1f)" % (
                slope_per_hour(rss), rss[0][1], rss[-1][1], min(y for _, y in rss),
                max(y for _, y in rss)))
            row("%s open fds slope" % d, "%+.1f /h (%d → %d, min %d, max %d)" % (
                slope_per_hour(fds), fds[0][1], fds[-1][1], min(y for _, y in fds),
                max(y for _, y in fds)))
        row("%s idle, at the start → at the end" % d, "%.1f → %s MiB, %d → %s fds" % (
            idle_start[d][0] / 1024, "%.1f" % (idle_end[d][0] / 1024) if idle_end else "n/a",
            idle_start[d][1], idle_end[d][1] if idle_end else "n/a"))
    row("samples", "%d every %d s, %d after the %s warm-up" % (
        len(samples), SAMPLE_S, len(after), fmt_dur(warmup)))
    row("requests (client)", "%d" % stats.total())
    row("failed requests", "%d%s" % (sum(failed.values()), " (%s)" % ", ".join(
        "%s: %d" % kv for kv in sorted(failed.items(), key=str)) if failed else ""))
    row("keep-alive retries", "%d" % stats.retries)
    row("requests (activator, by code)", ", ".join(
        "%s: %d" % kv for kv in sorted(act_codes.items())) or "n/a")
    row("bursts (0 → N → 0)", "%d, %d of them started at 0 ready" % (
        stats.bursts, stats.bursts_from_zero))
    if peaks:
        row("most ready replicas of a function", "median %d, max %d" % (
            peaks[len(peaks) // 2], peaks[-1]))
    row("cold starts by tier", ", ".join(
        "%s: %d" % (k, cold.get(k, 0)) for k in ("paused", "stopped", "created", "new")))
    row("rollouts (all specs)", "%d, at %s" % (len(rollouts), ", ".join(
        fmt_dur(t) for t in rollouts) or "-"))
    row("containers once idle again", "%d (%s)" % (len(at_end), ", ".join(
        "%s: %d" % kv for kv in sorted(states.items())) or "-"))
    row("functions with replicas of two revisions then", "%d%s" % (
        len(mixed), " (%s)" % ", ".join(mixed[:5]) if mixed else ""))
    row("containers left after SIGTERM", "%d" % len(left))
    row("daemon exits", ", ".join("%s %s" % kv for kv in sorted(exits.items())))
    for d in died:
        print("\nproblem: %s" % d)
    if stats.first_failures:
        print("\nfirst failures (s since start, function, status): %s" % stats.first_failures)
    ok = not failed and not left and not died and not interrupted
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
