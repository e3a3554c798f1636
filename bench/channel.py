#!/usr/bin/env python3
"""What one function's change costs on the controller <-> activator channel,
at 1 and at 1,000 functions (issue 13), in one run of one build:

  update      what a change sends now: the function's entry alone (an
              "update"), K changes of one function's queue bound, each
              waited for at the activator;
  full table  what every change sent before (and what an activator still
              gets at connect, when activators come or go, or on a resync):
              the whole table, measured on the same activator from the
              tables it gets when a second activator joins and leaves, K
              times.

Per message: bytes on the wire (the activator's
stoke_activator_route_bytes_total) and the activator's time to parse and
apply it (stoke_activator_route_apply_seconds_total), averaged; and the
controller's CPU per change (from /proc, the K updates only). Real
controller and activators on a unix channel, one worker each; the specs are
min 0 and initial 0, so no container is started. Needs the build
(STOKE_BUILD_DIR, default build/).

Usage: bench/channel.py [K]          (default 50)
"""
import http.client
import os
import re
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../tests/e2e"))
from harness import BUILD, Stoke, free_port, spec_text, terminate  # noqa: E402

K = int(sys.argv[1]) if len(sys.argv) > 1 else 50
CLK = os.sysconf("SC_CLK_TCK")


def counters(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", "/metrics")
        text = c.getresponse().read().decode()
    except OSError:
        return {}  # not listening yet
    finally:
        c.close()
    out = {}
    for m in re.finditer(r'^stoke_activator_route_(\w+)(?:\{kind="(\w+)"\})? (\S+)$', text, re.M):
        out[m.group(1) + ("." + m.group(2) if m.group(2) else "")] = float(m.group(3))
    return out


def wait_for(check, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = check()
        if v:
            return v
        time.sleep(0.01)
    raise SystemExit("timed out")


def cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def per_msg(c0, c1, kind):
    n = c1["messages_total." + kind] - c0["messages_total." + kind]
    return (n, (c1["bytes_total." + kind] - c0["bytes_total." + kind]) / n,
            (c1["apply_seconds_total." + kind] - c0["apply_seconds_total." + kind]) / n)


def run(n):
    s = Stoke("bench-channel-%d" % n, activator_args=["--workers", "1"])
    for i in range(n):
        name = "fn-%04d" % i
        with open(os.path.join(s.fndir, name + ".yaml"), "w") as f:
            f.write(spec_text(name, scale={"min": 0, "initial": 0}, env={}))
    s.start()
    try:
        port = s.ops_port
        wait_for(lambda: counters(port).get("functions") == n)

        # K changes of one function, each waited for at the activator.
        c0 = counters(port)
        cpu0 = cpu_s(s.procs["controller"].pid)
        for k in range(K):
            s.write_spec("fn-0000", scale={"min": 0, "initial": 0},
                         queue={"max": 10 + k % 2, "timeout": "1s"}, env={})
            want = c0["messages_total.update"] + k + 1
            wait_for(lambda: counters(port)["messages_total.update"] >= want)
        cpu1 = cpu_s(s.procs["controller"].pid)
        c1 = counters(port)
        updates = per_msg(c0, c1, "update")

        # Full tables: a second activator joins and leaves, K / 5 times (two
        # tables each on the first activator).
        rounds = max(1, K // 5)
        for r in range(rounds):
            ops = free_port()
            name = "other%d" % r
            s._spawn(name, [os.path.join(BUILD, "stoke-activator"), "--listen",
                            "127.0.0.1:%d" % free_port(), "--ops-listen", "127.0.0.1:%d" % ops,
                            "--controller", s.ctl, "--id", name, "--workers", "1"])
            wait_for(lambda: counters(ops).get("functions") == n)
            terminate(s.procs.pop(name))
            want = c1["messages_total.table"] + 2 * (r + 1)
            wait_for(lambda: counters(port)["messages_total.table"] >= want)
        tables = per_msg(c1, counters(port), "table")
        return updates, tables, (cpu1 - cpu0) / K
    finally:
        s.stop()


def main():
    rows = []
    for n in (1, 1000):
        (nu, ub, ua), (nt, tb, ta), cpu = run(n)
        rows.append((n, "update", nu, ub, ua, cpu))
        rows.append((n, "full table", nt, tb, ta, None))
    print("| functions | per change | messages | bytes | activator apply | controller CPU |")
    print("|---:|---|---:|---:|---:|---:|")
    for n, kind, cnt, b, a, cpu in rows:
        print("| %d | %s | %d | %.0f B | %.1f µs | %s |" % (
            n, kind, cnt, b, a * 1e6, "%.2f ms" % (cpu * 1e3) if cpu is not None else ""))
    by = {(r[0], r[1]): r for r in rows}
    print()
    print("at 1,000 functions, full table / update: bytes %.0f×, apply time %.0f×" % (
        by[(1000, "full table")][3] / by[(1000, "update")][3],
        by[(1000, "full table")][4] / by[(1000, "update")][4]))
    print("update at 1,000 / at 1 function: bytes %.2f×, apply time %.2f×" % (
        by[(1000, "update")][3] / by[(1, "update")][3],
        by[(1000, "update")][4] / by[(1, "update")][4]))


if __name__ == "__main__":
    main()
