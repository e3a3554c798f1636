#!/usr/bin/env python3
"""Cold starts with N functions on one machine, beside the engine's own
create+start at the same container count, in one run.

N functions (each min 0, idle: pause), plus 50 more for the burst:

  absent   one request to each of the N, one after another, from nothing
           (stoke creates and starts a container each);
  paused   once all N replicas are paused (idle), one request to each again
           (stoke thaws it);
  burst    one request to each of the 50 other functions, all at once, from
           nothing, while the N containers exist;
  engine   without stoke, while the N containers exist: POST
           /containers/create and /start of the same image (bridge, port
           published on 127.0.0.1), then GET / until 200; a sample of 20,
           one after another.

Times are from sending the request to its response. Prints p50, p95 and max
per phase, any non-200, the controller's and the activator's CPU seconds per
phase (their threads' run time from /proc/PID/task/*/schedstat) and their
RSS at the end; then the time the
controller takes to remove the N+50 replicas on SIGTERM and the containers
left. All traffic stays on 127.0.0.1; every container it made is removed,
also on failure (the harness's cleanup, by label).

The network (STOKE_BENCH_NETWORK): bridge (stoke's default) or host, for
the functions and the engine sample alike. A Linux bridge holds at most
1,024 ports (docker0 answers "exchange full" past it, counting every other
container on it), so N = 1,000 (+50) runs on the host network.

Usage: bench/scale.py N
"""

import os
import signal
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../tests/e2e"))
from coldstart import by_create_start  # noqa: E402
from harness import Stoke, concurrent, remove_containers  # noqa: E402
import coldstart  # noqa: E402

N = int(sys.argv[1]) if len(sys.argv) > 1 else 100
BURST = 50
ENGINE_SAMPLE = 20
NETWORK = os.environ.get("STOKE_BENCH_NETWORK", "bridge")
assert NETWORK in ("bridge", "host"), NETWORK
SPEC = {"min": 0, "initial": 0, "window": "6s", "scaleToZeroGrace": "1s", "idle": "pause",
        "stopAfter": "1h"}


INSTANCES = []  # the Stoke's, for the last cleanup


def cpu_s(pid):
    """CPU seconds of every thread of `pid` (schedstat's run time, in ns:
    finer than utime+stime's clock ticks for a phase of one request)."""
    total = 0
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/schedstat" % (pid, tid)) as f:
                total += int(f.read().split()[0])
        except OSError:
            pass  # a thread that ended
    return total / 1e9


def rss_mib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def timed(s, fn):
    t0 = time.monotonic()
    try:
        st = s.fn_request(fn, timeout=120).status
    except Exception as e:  # noqa: BLE001 - counted as a failure
        st = repr(e)
    return (time.monotonic() - t0) * 1000, st


def paused_count(s):
    return s.log("controller").count("paused (idle,")


def main():
    s = Stoke("bench-scale", extra_controller_args=["--shutdown-timeout", "20m"])
    INSTANCES.append(s.instance)
    lo = 30000 + (os.getpid() % 8) * 128
    s.port_range = "%d-%d" % (lo, lo + N + BURST + 2 * 128)
    names = ["f%04d" % i for i in range(N)]
    burst = ["burst%02d" % i for i in range(BURST)]
    for name in names + burst:
        s.write_spec(name, scale=SPEC, extra="  network: %s\n" % NETWORK)
    s.start()
    s.wait_functions("activator", N + BURST, 120 + N / 5)
    ctl, act = s.procs["controller"].pid, s.procs["activator"].pid
    rows = []

    def phase(label, run):
        c0, a0 = cpu_s(ctl), cpu_s(act)
        t0 = time.monotonic()
        res = run()
        wall = time.monotonic() - t0
        ms = [r[0] for r in res]
        bad = [r[1] for r in res if r[1] != 200]
        rows.append((label, len(ms), statistics.median(ms), pct(ms, 95), max(ms), len(bad),
                     cpu_s(ctl) - c0, cpu_s(act) - a0, wall))
        r = rows[-1]
        print("  %s done: %d requests, p50 %.1f p95 %.1f max %.1f ms, %d not 200 %s, CPU s "
              "controller %.3f activator %.3f, %.0f s" % (label, len(ms), r[2], r[3], r[4],
                                                         len(bad), bad[:3], r[6], r[7], wall),
              flush=True)

    phase("absent", lambda: [timed(s, fn) for fn in names])
    # All N paused: each went idle a few seconds after its request.
    deadline = time.time() + 120 + N / 2
    while paused_count(s) < N and time.time() < deadline:
        time.sleep(0.5)
    assert paused_count(s) >= N, "only %d of %d paused" % (paused_count(s), N)
    phase("paused", lambda: [timed(s, fn) for fn in names])

    phase("burst of %d" % BURST, lambda: concurrent(BURST, lambda i: timed(s, burst[i])))

    eng = []
    for _ in range(ENGINE_SAMPLE):
        eng.append(by_create_start(NETWORK) * 1000)
    ctl_rss, act_rss = rss_mib(ctl), rss_mib(act)
    nc = len(s.containers())

    # Shutdown: every replica removed?
    t0 = time.monotonic()
    p = s.procs["controller"]
    p.send_signal(signal.SIGTERM)
    p.wait(1500)
    stop_s = time.monotonic() - t0
    left = len(s.containers())
    last = [line for line in s.log("controller").splitlines() if "exiting" in line][-1:]

    print("\nscale: N=%d functions (+%d for the burst), %s network, %s, %d containers during the "
          "engine sample" % (N, BURST, NETWORK, time.strftime("%Y-%m-%d"), nc))
    print("| phase | requests | p50 ms | p95 ms | max ms | non-200 | controller CPU s | "
          "activator CPU s | CPU ms per request (ctl+act) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, n, p50, p95, mx, bad, cc, ac, _ in rows:
        print("| %s | %d | %.1f | %.1f | %.1f | %d | %.3f | %.3f | %.2f |" %
              (label, n, p50, p95, mx, bad, cc, ac, (cc + ac) * 1000 / n))
    print("| engine create+start+GET (no stoke) | %d | %.1f | %.1f | %.1f | | | | |" %
          (len(eng), statistics.median(eng), pct(eng, 95), max(eng)))
    absent_p50 = rows[0][2]
    print("\nabsent p50 / engine create+start p50: %.2fx" % (absent_p50 / statistics.median(eng)))
    print("RSS at the end: controller %.1f MiB, activator %.1f MiB" % (ctl_rss, act_rss))
    print("shutdown (SIGTERM, %d replicas): %.1f s, exit %s, containers left %d; %s" %
          (nc, stop_s, p.returncode, left, last[0] if last else "no exit line"))
    s.stop()
    remove_containers({coldstart.LABEL_KEY: coldstart.LABEL_VALUE})
    return 0 if left == 0 and p.returncode == 0 and all(r[5] == 0 for r in rows) else 1


if __name__ == "__main__":
    try:
        rc = main()
    finally:
        # Again after the harness's own cleanup, which a slow engine (a
        # DELETE past 30 s) or a signal can cut short: a thousand
        # containers must not be left behind.
        for labels in [{coldstart.LABEL_KEY: coldstart.LABEL_VALUE}] + [
                {"io.stoke.instance": i} for i in INSTANCES]:
            for _ in range(3):
                try:
                    remove_containers(labels)
                    break
                except Exception as e:  # noqa: BLE001 - tried again
                    print("cleanup of %s: %r; again" % (labels, e), file=sys.stderr)
    sys.exit(rc)
