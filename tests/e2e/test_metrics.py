"""The metrics of both daemons against the real engine: the controller's
ops port (--ops-listen), its counters moving by the right amounts through
a cold start and a load of N requests (next to the activator's), and the
per-function usage read from cgroups: GB-seconds growing while a replica
runs, flat while it is paused (frozen) and after it is gone, CPU seconds
growing under load and never going back, memory > 0 while running. The
Grafana dashboard may only query metrics one of the daemons exports.

The exposition text is checked by test_ops.py's strict parser (format
0.0.4: TYPE before samples, no split family, no repeated series,
histograms with +Inf, cumulative buckets and _count equal to +Inf), plus,
here, HELP and TYPE for every family and the label names each family may
use. Waits are bounds, not timing asserts: each loop polls until a
condition holds and fails only when it never does.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import BUILD, SANITIZER_MARKERS, Load, Stoke, run_tests  # noqa: E402
from test_lifecycle import freezer_state  # noqa: E402
from test_ops import get, parse_exposition, value, value_or_none  # noqa: E402

WAIT = 20.0  # the ASan build is slower; every wait is a bound
N = 25
TIERS = ("paused", "stopped", "created", "new")
OPS = ("ping", "image_inspect", "create", "start", "inspect", "pause", "unpause", "stop",
       "remove", "list", "events", "logs")
# Label names each family of the controller may carry ("le" is the
# histograms' own).
LABELS = {
    "stoke_controller_functions": set(),
    "stoke_controller_activators": set(),
    "stoke_controller_route_messages_total": {"kind"},
    "stoke_controller_route_bytes_total": {"kind"},
    "stoke_controller_stats_reports_total": set(),
    "stoke_controller_stats_entries_total": set(),
    "stoke_controller_engine_calls_total": {"op"},
    "stoke_controller_engine_errors_total": {"op"},
    "stoke_controller_engine_up": set(),
    "stoke_controller_engine_calls_in_flight": set(),
    "stoke_controller_engine_calls_in_flight_max": set(),
    "stoke_controller_engine_calls_limit": set(),
    "stoke_controller_engine_calls_queued": set(),
    "stoke_controller_engine_event_stream_reopens_total": set(),
    "stoke_controller_untracked_replicas_removed_total": set(),
    "stoke_controller_replica_failures_total": {"function"},
    "stoke_controller_oom_kills_total": {"function"},
    "stoke_controller_replicas": {"function", "state"},
    "stoke_controller_panic": {"function"},
    "stoke_controller_backlog": {"function"},
    "stoke_controller_cold_starts_total": {"function", "tier"},
    "stoke_controller_cold_start_duration_seconds": {"function", "tier"},
    "stoke_function_requests_total": {"function"},
    "stoke_function_requests_per_second": {"function"},
    "stoke_function_concurrency": {"function"},
    "stoke_function_cpu_seconds_total": {"function"},
    "stoke_function_memory_bytes": {"function"},
    "stoke_function_gb_seconds_total": {"function"},
}


def scrape_port(port):
    st, h, body = get(port, "/metrics")
    assert st == 200, (st, body)
    assert h["content-type"].startswith("text/plain; version=0.0.4"), h
    return parse_exposition(body.decode())


def scrape_controller(s):
    fams = scrape_port(s.ctl_ops_port)
    for name, fam in fams.items():
        assert name in LABELS, "unexpected family %s" % name
        assert fam["type"] and fam["help"], "%s: HELP and TYPE" % name
        for n, labels, v in fam["samples"]:
            extra = {"le"} if fam["type"] == "histogram" and n.endswith("_bucket") else set()
            assert set(labels) == LABELS[name] | extra, (n, labels)
            assert v >= 0, (n, labels, v)
    return fams


def scrape_activator(s):
    return scrape_port(s.ops_port)


def hist(fams, family, what, **labels):
    return value(fams, family, family + "_" + what, **labels)


def replicas(fams, fn, state):
    return value(fams, "stoke_controller_replicas", function=fn, state=state)


def live_replicas(fams, fn):
    """Replicas of `fn` in any state (the autoscaler's `desired` aside)."""
    return sum(v for _, ls, v in fams["stoke_controller_replicas"]["samples"]
               if ls["function"] == fn and ls["state"] != "desired")


def wait_scrape(s, what, cond, timeout=WAIT):
    """Scrapes the controller until cond(fams) holds; returns those fams."""
    deadline = time.time() + timeout
    while True:
        fams = scrape_controller(s)
        if cond(fams):
            return fams
        if time.time() > deadline:
            raise AssertionError("controller metrics never showed %s" % what)
        time.sleep(0.2)


def wait_frozen(cid, timeout=WAIT):
    """Waits until the kernel says the container's cgroup is frozen (v1
    FROZEN, not FREEZING; v2 "frozen 1"), found from its process's
    /proc/PID/cgroup as stoke finds it; fails at the deadline, and when the
    container has no freezer cgroup at all."""
    deadline = time.time() + timeout
    while True:
        state = freezer_state(cid)
        if state == "FROZEN":
            return
        assert time.time() < deadline, "freezer of %s is %r, never FROZEN" % (cid, state)
        time.sleep(0.05)


def start(name, scale):
    s = Stoke(name).start()
    s.write_spec("hello", scale=scale)
    s.wait_functions("activator", 1, 20)
    return s


def test_controller_ops_port():
    s = Stoke("ops").start()
    try:
        st, _, body = get(s.ctl_ops_port, "/healthz")
        assert (st, body) == (200, b"ok\n"), (st, body)
        st, _, _ = get(s.ctl_ops_port, "/nothing")
        assert st == 404, st
        # One channel per activator worker thread (the activator may say it
        # is connected before the controller has accepted).
        fams = wait_scrape(s, "an activator", lambda f: value(
            f, "stoke_controller_activators") >= 1)
        assert value(fams, "stoke_controller_engine_up") == 1
        assert value(fams, "stoke_controller_functions") == 0
        # The controller pinged and listed the engine at startup.
        calls = fams["stoke_controller_engine_calls_total"]["samples"]
        assert sorted(ls["op"] for _, ls, _ in calls) == sorted(OPS), calls
        assert value(fams, "stoke_controller_engine_calls_total", op="ping") >= 1
        assert value(fams, "stoke_controller_engine_calls_total", op="list") >= 1
    finally:
        s.stop()


def test_controller_ops_listen_none_and_busy():
    """--ops-listen none opens no port; a port that cannot be bound stops
    the controller at startup (exit 1, the address in its log)."""
    s = Stoke("opsnone", extra_controller_args=["--ops-listen", "none"]).start()
    try:
        try:
            socket.create_connection(("127.0.0.1", s.ctl_ops_port), 2).close()
            raise AssertionError("the controller listens with --ops-listen none")
        except ConnectionRefusedError:
            pass
        assert "ops port listening" not in s.log("controller")
    finally:
        s.stop()
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    tmp = tempfile.mkdtemp(prefix="stoke-e2e-")
    try:
        p = subprocess.run(
            [os.path.join(BUILD, "stoke-controller"), "--functions-dir", tmp,
             "--listen", "unix:" + os.path.join(tmp, "ctl.sock"), "--instance", "e2e-opsbusy",
             "--ops-listen", "127.0.0.1:%d" % port],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        log = p.stdout.decode(errors="replace")
        assert p.returncode == 1, (p.returncode, log)
        assert "ops port cannot listen on 127.0.0.1:%d" % port in log, log
        for m in SANITIZER_MARKERS:
            assert m not in log, log
    finally:
        busy.close()
        shutil.rmtree(tmp, ignore_errors=True)


def test_cold_start_and_load_move_both_daemons_counters():
    s = start("counts", {"min": 0, "initial": 0, "window": "6s", "scaleToZeroGrace": "60s"})
    try:
        c0 = scrape_controller(s)
        a0 = scrape_activator(s)
        assert replicas(c0, "hello", "ready") == 0
        for t in TIERS:
            assert value(c0, "stoke_controller_cold_starts_total", function="hello", tier=t) == 0

        for i in range(N):
            r = s.fn_request("hello")
            assert r.status == 200, (i, r)

        # The activator counts a request once its answer is queued.
        # No request yet, no series (absent is not 0: see value()).
        assert value_or_none(a0, "stoke_activator_requests_total", function="hello",
                             code="200") is None
        deadline = time.time() + WAIT
        while True:
            a1 = scrape_activator(s)
            got = value_or_none(a1, "stoke_activator_requests_total", function="hello", code="200")
            if got == N or time.time() > deadline:
                break
            time.sleep(0.2)
        assert got == N, got

        # The activators report each second; the controller sums them.
        c1 = wait_scrape(s, "%d requests" % N, lambda f: value(
            f, "stoke_function_requests_total", function="hello") >= N)
        assert value(c1, "stoke_function_requests_total", function="hello") == N
        # One cold start, from nothing (a new container), timed once.
        for t in TIERS:
            want = 1 if t == "new" else 0
            assert value(c1, "stoke_controller_cold_starts_total", function="hello",
                         tier=t) == want, t
            name = "stoke_controller_cold_start_duration_seconds"
            assert hist(c1, name, "count", function="hello", tier=t) == want, t
        name = "stoke_controller_cold_start_duration_seconds"
        assert hist(c1, name, "sum", function="hello", tier="new") > 0
        assert replicas(c1, "hello", "ready") == 1
        assert replicas(c1, "hello", "desired") == 1
        assert value(c1, "stoke_controller_panic", function="hello") == 0
        assert value(c1, "stoke_controller_functions") == 1

        def calls(f, op, kind="calls"):
            return value(f, "stoke_controller_engine_%s_total" % kind, op=op)

        assert calls(c1, "create") == calls(c0, "create") + 1, (calls(c0, "create"),
                                                                 calls(c1, "create"))
        assert calls(c1, "start") == calls(c0, "start") + 1
        for op in ("create", "start"):
            assert calls(c1, op, "errors") == calls(c0, op, "errors") == 0, op
        # The replica runs: its cgroup shows memory in use.
        c2 = wait_scrape(s, "memory in use", lambda f: value(
            f, "stoke_function_memory_bytes", function="hello") > 0)
        assert value(c2, "stoke_function_gb_seconds_total", function="hello") > 0
    finally:
        s.stop()


def test_usage_running_paused_gone():
    # Idle after the 6 s window and a 1 s grace: paused (frozen) for 20 s,
    # then stopped, then removed a second later.
    s = start("usage", {"min": 0, "initial": 0, "window": "6s", "scaleToZeroGrace": "1s",
                        "idle": "pause", "stopAfter": "20s", "removeAfter": "1s"})
    fn = "hello"
    try:
        r = s.fn_request(fn)
        assert r.status == 200, r
        c0 = wait_scrape(s, "a ready replica sampled", lambda f: replicas(f, fn, "ready") == 1 and
                         value(f, "stoke_function_memory_bytes", function=fn) > 0)
        cpu0 = value(c0, "stoke_function_cpu_seconds_total", function=fn)
        gb0 = value(c0, "stoke_function_gb_seconds_total", function=fn)

        # Load: CPU grows.
        load = Load(s, fn, "/", 4, max_s=60)
        try:
            c1 = wait_scrape(s, "CPU growing under load", lambda f: value(
                f, "stoke_function_cpu_seconds_total", function=fn) > cpu0)
        finally:
            load.stop()
        assert not load.failed, load.failed[:3]
        assert sum(load.counts.values()) > 0
        # While it runs, GB-seconds grow.
        gb1 = value(c1, "stoke_function_gb_seconds_total", function=fn)
        c2 = wait_scrape(s, "GB-seconds growing while running", lambda f: replicas(
            f, fn, "ready") == 1 and value(f, "stoke_function_gb_seconds_total",
                                          function=fn) > max(gb0, gb1))
        assert value(c2, "stoke_function_memory_bytes", function=fn) > 0

        # Paused (frozen): two scrapes more than two ticks apart agree.
        wait_scrape(s, "the replica paused", lambda f: replicas(f, fn, "paused") == 1, timeout=60)
        # Writing FROZEN starts the freeze (FREEZING); the tasks use a few
        # microseconds of CPU on their way into it, which the next sample may
        # still see. Compare samples taken once the kernel says FROZEN.
        cid = s.containers(fn)[0]["Id"]
        wait_frozen(cid)
        time.sleep(2.5)  # a tick: a sample taken after the freeze completed
        p1 = scrape_controller(s)
        assert replicas(p1, fn, "paused") == 1, "it must still be paused for this check"
        time.sleep(4.5)
        p2 = scrape_controller(s)
        assert replicas(p2, fn, "paused") == 1, "it must still be paused for this check"
        gbp1 = value(p1, "stoke_function_gb_seconds_total", function=fn)
        gbp2 = value(p2, "stoke_function_gb_seconds_total", function=fn)
        assert gbp1 == gbp2, (gbp1, gbp2)
        assert gbp1 >= value(c2, "stoke_function_gb_seconds_total", function=fn)
        cpup1 = value(p1, "stoke_function_cpu_seconds_total", function=fn)
        cpup2 = value(p2, "stoke_function_cpu_seconds_total", function=fn)
        assert cpup2 == cpup1, "a frozen cgroup uses no CPU: %r %r" % (cpup1, cpup2)
        # A paused replica keeps its memory.
        assert value(p2, "stoke_function_memory_bytes", function=fn) > 0
        print("GB-seconds: %.6f running, %.6f and %.6f paused 4.5 s apart; CPU %.6f s" % (
            value(c2, "stoke_function_gb_seconds_total", function=fn), gbp1, gbp2, cpup2))

        # Stopped, then removed: the counters stay where they were.
        g1 = wait_scrape(s, "the replica gone", lambda f: live_replicas(f, fn) == 0, timeout=60)
        s.wait_containers(fn, 0, WAIT)
        cpug1 = value(g1, "stoke_function_cpu_seconds_total", function=fn)
        assert cpug1 >= cpup2, (cpup2, cpug1)
        time.sleep(4.5)
        g2 = scrape_controller(s)
        assert live_replicas(g2, fn) == 0
        assert value(g2, "stoke_function_cpu_seconds_total", function=fn) == cpug1
        gbg1 = value(g1, "stoke_function_gb_seconds_total", function=fn)
        assert value(g2, "stoke_function_gb_seconds_total", function=fn) == gbg1
        assert gbg1 >= gbp2
        assert value(g2, "stoke_function_memory_bytes", function=fn) == 0
        for op in ("pause", "unpause"):
            # Paused through the cgroup, never the engine (the warm tier's
            # fast path): had the freezer failed, these would show it.
            assert value(g2, "stoke_controller_engine_calls_total", op=op) == 0, op
        assert value(g2, "stoke_controller_engine_calls_total", op="stop") >= 1
        assert value(g2, "stoke_controller_engine_calls_total", op="remove") >= 1
        print("after removal: CPU %.6f s, GB-seconds %.6f" % (cpug1, gbg1))
    finally:
        s.stop()


def test_wake_from_pause_counts_in_the_paused_tier():
    """A cold start that thaws a paused replica counts under tier="paused",
    in the counter and the histogram, and takes no engine call to wake."""
    fn = "hello"
    s = start("wake", {"min": 0, "initial": 0, "window": "6s", "scaleToZeroGrace": "1s",
                       "idle": "pause", "stopAfter": "5m"})
    try:
        r = s.fn_request(fn)
        assert r.status == 200, r
        c0 = wait_scrape(s, "the replica paused", lambda f: replicas(f, fn, "paused") == 1,
                         timeout=60)
        name = "stoke_controller_cold_start_duration_seconds"
        assert value(c0, "stoke_controller_cold_starts_total", function=fn, tier="new") == 1
        assert value(c0, "stoke_controller_cold_starts_total", function=fn, tier="paused") == 0
        assert hist(c0, name, "count", function=fn, tier="paused") == 0
        r = s.fn_request(fn)
        assert r.status == 200, r
        c1 = scrape_controller(s)
        assert replicas(c1, fn, "ready") == 1
        assert value(c1, "stoke_controller_cold_starts_total", function=fn, tier="paused") == 1
        assert value(c1, "stoke_controller_cold_starts_total", function=fn, tier="new") == 1
        assert hist(c1, name, "count", function=fn, tier="paused") == 1
        assert hist(c1, name, "count", function=fn, tier="new") == 1
        for op in ("create", "start"):
            assert value(c1, "stoke_controller_engine_calls_total", op=op) == value(
                c0, "stoke_controller_engine_calls_total", op=op), op
        assert value(c1, "stoke_controller_engine_calls_total", op="unpause") == 0
        print("cold start from paused: %.3f s, from new: %.3f s" % (
            hist(c1, name, "sum", function=fn, tier="paused"),
            hist(c1, name, "sum", function=fn, tier="new")))
    finally:
        s.stop()


def test_engine_errors_are_counted():
    """A function whose image is missing: every create fails, and the
    controller counts each failure under op="create"."""
    s = Stoke("errors").start()
    try:
        s.write_file("ghost.yaml", "apiVersion: stoke/v1\nkind: Function\nmetadata:\n"
                     "  name: ghost\nspec:\n  image: stoke-no-such-image:0\n"
                     "  scale: { min: 1 }\n")
        c = wait_scrape(s, "a failed create", lambda f: value(
            f, "stoke_controller_engine_errors_total", op="create") >= 1)
        calls = value(c, "stoke_controller_engine_calls_total", op="create")
        errors = value(c, "stoke_controller_engine_errors_total", op="create")
        assert calls >= errors >= 1, (calls, errors)
        assert value(c, "stoke_controller_engine_errors_total", op="start") == 0
        assert replicas(c, "ghost", "ready") == 0
        assert hist(c, "stoke_controller_cold_start_duration_seconds", "count", function="ghost",
                    tier="new") == 0
    finally:
        s.stop()


def test_grafana_dashboard_uses_exported_metrics():
    """Every metric deploy/grafana/stoke.json queries is exported by the
    activator or the controller (a renamed metric would leave a panel
    empty)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                        "../../deploy/grafana/stoke.json")
    with open(path) as f:
        dash = json.load(f)
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    used = set(re.findall(r"\b(stoke_[a-z_]+)", " ".join(exprs)))
    assert any(u.startswith("stoke_controller_") for u in used), used
    assert any(u.startswith("stoke_function_") for u in used), used
    s = start("dash", {"min": 0, "initial": 0, "window": "6s"})
    try:
        # The activator's per-function series start with its first request.
        r = s.fn_request("hello")
        assert r.status == 200, r
        exported = set()
        for fams in (scrape_activator(s), scrape_controller(s)):
            for fam, f in fams.items():
                exported.add(fam)
                exported.update(n for n, _, _ in f["samples"])
    finally:
        s.stop()
    missing = sorted(used - exported)
    assert not missing, "the dashboard queries metrics nobody exports: %s" % missing


def test_engine_calls_stay_under_the_limit():
    """--engine-concurrency 2: twelve replicas asked for at once (six
    functions of min 2) are made two engine calls at a time, all the same."""
    s = Stoke("engine-limit", extra_controller_args=["--engine-concurrency", "2"]).start()
    try:
        c0 = scrape_controller(s)
        assert value(c0, "stoke_controller_engine_calls_limit") == 2
        for i in range(6):
            s.write_spec("lim%d" % i, scale={"min": 2})
        # (A function's series appear once the controller has its spec.)
        c1 = wait_scrape(s, "12 ready replicas", lambda f: sum(
            value_or_none(f, "stoke_controller_replicas", function="lim%d" % i, state="ready")
            or 0 for i in range(6)) == 12, timeout=120)
        # Twelve creates and starts were wanted at once: the limit was
        # reached, never passed.
        assert value(c1, "stoke_controller_engine_calls_in_flight_max") == 2, c1
        assert value(c1, "stoke_controller_engine_calls_total", op="create") >= 12
        assert value(c1, "stoke_controller_engine_errors_total", op="create") == 0
    finally:
        s.stop()
    assert s.containers() == [], s.containers()


if __name__ == "__main__":
    run_tests(globals())
