"""The replica lifecycle against the real engine: each idle tier (paused,
stopped, created, removed) is reached and left by a request, with the
container's state checked through the engine and its freezer cgroup;
adoption of idle replicas by a restarted controller; a replica killed
under load is replaced; a crash-looping image backs off; a stopped engine
does not stop the requests to ready replicas."""

import os
import re
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import Load, Stoke, engine, run_tests  # noqa: E402

# The shortest stable window and a short grace: a function is idle a few
# seconds after its last request.
QUICK = {"min": 0, "initial": 0, "window": "6s", "scaleToZeroGrace": "1s"}


def replica_of(resp):
    for word in resp.body.split():
        if word.startswith("stoke-"):
            return word
    raise AssertionError("no replica name in %r" % resp.body)


def inspect(cid):
    st, body = engine("GET", "/containers/%s/json" % cid)
    assert st == 200, (st, body)
    return body


def freezer_state(cid):
    """The container's v1 freezer state (or v2's, from cgroup.events, as
    FROZEN or THAWED), read from the kernel, not from the engine. On a
    hybrid host (v1 hierarchies with v2 at /sys/fs/cgroup/unified, as this
    one) the v1 freezer is the one that exists for the container."""
    pid = inspect(cid)["State"]["Pid"]
    assert pid > 0, "not running"
    with open("/proc/%d/cgroup" % pid) as f:
        lines = [line.strip().split(":", 2) for line in f]
    for _, ctrls, path in lines:
        if "freezer" in ctrls.split(","):
            with open("/sys/fs/cgroup/freezer%s/freezer.state" % path) as f:
                return f.read().strip()
    for num, ctrls, path in lines:
        if num == "0" and ctrls == "":
            for root in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
                events = "%s%s/cgroup.events" % (root, path)
                if os.path.exists(events):
                    with open(events) as f:
                        return "FROZEN" if "frozen 1" in f.read().split("\n") else "THAWED"
    raise AssertionError("no freezer cgroup for %s" % cid)


def only_container(s, fn):
    cs = s.containers(fn)
    assert len(cs) == 1, cs
    return cs[0]


def test_pause_then_thaw_reuses_the_replica():
    s = Stoke("life-pause").start()
    s.write_spec("napper", scale=dict(QUICK, idle="pause"))
    s.wait_functions("activator", 1, 20)
    r = s.fn_request("napper")
    assert r.status == 200, r
    c = only_container(s, "napper")
    name = replica_of(r)
    # Hardening: read-only root by default.
    assert inspect(c["Id"])["HostConfig"]["ReadonlyRootfs"] is True

    s.wait_log("controller", "paused (idle, cgroup frozen)", 30)
    assert freezer_state(c["Id"]) == "FROZEN"
    # Frozen by stoke, not by the engine: the engine still calls it running,
    # so it never refuses a later unpause or stop.
    state = inspect(c["Id"])["State"]
    assert state["Status"] == "running" and not state["Paused"], state

    r = s.fn_request("napper")
    assert r.status == 200, r
    assert replica_of(r) == name, (r, name)
    assert [x["Id"] for x in s.containers("napper")] == [c["Id"]]
    assert freezer_state(c["Id"]) == "THAWED"
    log = s.log("controller")
    assert "cold start from paused" in log, log
    assert "ready on 127.0.0.1:%s" % c["Labels"]["io.stoke.port"] in log
    assert re.search(r"ready on 127\.0\.0\.1:\d+, \d+ ms after thaw", log), log

    # Shut down while it is frozen: thawed and removed, nothing hangs (the
    # harness fails a controller that does not exit 0 within 30 s).
    s.wait_log("controller", "paused (idle, cgroup frozen)", 30, count=2)
    assert freezer_state(c["Id"]) == "FROZEN"
    s.stop()
    assert s.containers("napper") == []


def test_engine_pause_when_asked():
    # The fallback for hosts where the cgroup cannot be written, forced.
    s = Stoke("life-epause", extra_controller_args=["--pause-with", "engine"]).start()
    s.write_spec("dozer", scale=dict(QUICK, idle="pause"))
    s.wait_functions("activator", 1, 20)
    r = s.fn_request("dozer")
    assert r.status == 200, r
    c = only_container(s, "dozer")
    s.wait_log("controller", "paused (idle, through the engine)", 30)
    state = inspect(c["Id"])["State"]
    assert state["Status"] == "paused" and state["Paused"], state

    r2 = s.fn_request("dozer")
    assert r2.status == 200, r2
    assert replica_of(r2) == replica_of(r)
    state = inspect(c["Id"])["State"]
    assert state["Status"] == "running" and not state["Paused"], state
    log = s.log("controller")
    assert "cold start from paused" in log and "ms after unpause" in log, log
    assert "cgroup frozen" not in log and "cannot freeze" not in log, log
    s.wait_log("controller", "paused (idle, through the engine)", 30, count=2)
    s.stop()
    assert s.containers("dozer") == []


def test_stop_tier_then_start_reuses_the_replica():
    s = Stoke("life-stop").start()
    s.write_spec("sleeper", scale=dict(QUICK, idle="pause", stopAfter="1s", removeAfter="1h"),
                 extra="  readOnlyRootFilesystem: false\n")
    s.wait_functions("activator", 1, 20)
    r = s.fn_request("sleeper")
    assert r.status == 200, r
    c = only_container(s, "sleeper")
    assert inspect(c["Id"])["HostConfig"]["ReadonlyRootfs"] is False
    s.wait_log("controller", "paused (idle, cgroup frozen)", 30)
    s.wait_log("controller", "stopped (idle)", 20)
    state = inspect(c["Id"])["State"]
    assert state["Status"] == "exited", state
    # Thawed before the stop: SIGTERM reached it and it exited 0 at once; a
    # frozen one would have been SIGKILLed (137) after the grace period.
    assert state["ExitCode"] == 0, state

    r = s.fn_request("sleeper")
    assert r.status == 200, r
    assert [x["Id"] for x in s.containers("sleeper")] == [c["Id"]]
    assert inspect(c["Id"])["State"]["Status"] == "running"
    assert "cold start from stopped" in s.log("controller")
    s.stop()


def test_idle_stop_then_removed_then_created_anew():
    s = Stoke("life-remove").start()
    s.write_spec("brief", scale=dict(QUICK, idle="stop", removeAfter="1s"))
    s.wait_functions("activator", 1, 20)
    assert s.fn_request("brief").status == 200
    first = only_container(s, "brief")["Id"]
    s.wait_log("controller", "stopped (idle)", 30)
    assert "paused (idle" not in s.log("controller")
    s.wait_containers("brief", 0, 20)
    assert "stopped for 1000 ms: removing it" in s.log("controller")

    r = s.fn_request("brief")
    assert r.status == 200, r
    again = only_container(s, "brief")["Id"]
    assert again != first
    assert "cold start from new" in s.log("controller")
    s.stop()


def test_precreated_container_is_started_and_replaced():
    s = Stoke("life-created").start()
    s.write_spec("ready", scale=dict(QUICK, idle="remove", precreated=1))
    s.wait_log("controller", "created and kept for a cold start", 20)
    c = only_container(s, "ready")
    assert c["State"] == "created", c

    r = s.fn_request("ready")
    assert r.status == 200, r
    assert "cold start from created" in s.log("controller")
    assert inspect(c["Id"])["State"]["Status"] == "running"
    # The floor is refilled at once: one serving, one created.
    s.wait_log("controller", "created and kept for a cold start", 20, count=2)
    states = sorted(x["State"] for x in s.containers("ready"))
    assert states == ["created", "running"], states
    s.stop()


def test_restarted_controller_adopts_paused_and_stopped_replicas():
    s = Stoke("life-adopt").start()
    s.write_spec("frozen", scale=dict(QUICK, idle="pause", stopAfter="1h"))
    s.write_spec("parked", scale=dict(QUICK, idle="stop", removeAfter="1h"))
    s.wait_functions("activator", 2, 20)
    assert s.fn_request("frozen").status == 200
    assert s.fn_request("parked").status == 200
    frozen = only_container(s, "frozen")["Id"]
    parked = only_container(s, "parked")["Id"]
    s.wait_log("controller", "paused (idle, cgroup frozen)", 30)
    s.wait_log("controller", "stopped (idle)", 30)

    s.restart_controller("controller-2")
    log = s.log("controller")
    assert "adopted paused (frozen) replica %s" % frozen[:12] in log, log
    assert "adopted exited replica %s" % parked[:12] in log, log
    assert "of an earlier run" not in log, log
    assert freezer_state(frozen) == "FROZEN"

    assert s.fn_request("frozen").status == 200
    assert s.fn_request("parked").status == 200
    assert [x["Id"] for x in s.containers("frozen")] == [frozen]
    assert [x["Id"] for x in s.containers("parked")] == [parked]
    log = s.log("controller")
    assert "cold start from paused" in log and "cold start from stopped" in log, log
    assert "cold start from new" not in log, log
    s.stop()


def test_killed_replica_is_replaced_under_load():
    s = Stoke("life-kill").start()
    before = s.deploy_warm("sturdy", 2)
    clients = 4
    load = Load(s, "sturdy", "/delay/20", clients)
    try:
        load.wait_ok(50)
        st, _ = engine("POST", "/containers/%s/kill" % before[0])
        assert st == 204, st
        s.wait_log("controller", "replica %s failed: exited" % before[0][:12], 10)
        s.wait_log("controller", "ready on 127.0.0.1", 30, count=3)
        load.wait_ok(50)
    finally:
        load.stop()
    # Only requests in flight on the killed replica may fail: each client
    # has at most one in flight, and one not yet sent to it is retried.
    load.finish(may_fail=clients)
    after = s.running("sturdy")
    assert len(after) == 2 and before[0] not in [c["Id"] for c in after], after
    assert before[1] in [c["Id"] for c in after]
    s.stop()


def test_crash_loop_backs_off():
    s = Stoke("life-crash").start()
    # The example exits at once when it cannot parse its bind address.
    s.write_spec("crashy", scale={"min": 1}, env={"BIND_ADDR": "not-an-address"})
    s.wait_log("controller", "crash loop: 4 failures in a row", 30)
    log = s.log("controller")
    waits = [int(x) for x in re.findall(r'"msg":"replica \w+ failed: [^"]*; next try in (\d+) ms',
                                        log)]
    assert waits[:4] == [500, 1000, 2000, 4000], waits
    assert "exit status 1" in log, log
    # Backing off, not spinning: a handful of containers, never several at once.
    created = log.count("cold start from new") + log.count("scaling up from new")
    assert 4 <= created <= 6, created
    assert len(s.containers("crashy")) <= 1
    s.stop()


def dockerd_pid():
    out = subprocess.run(["pidof", "dockerd"], capture_output=True, text=True).stdout.split()
    assert len(out) == 1, "want exactly one dockerd, found %r" % out
    return int(out[0])


def test_stopped_engine_fails_no_request_to_ready_replicas():
    s = Stoke("life-sigstop").start()
    ids = s.deploy_warm("steady", 2)
    pid = dockerd_pid()
    load = Load(s, "steady", "/delay/10", 4)
    try:
        load.wait_ok(50)
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(5)  # the fault: an engine stopped for 5 s
            assert s.procs["controller"].poll() is None, "the controller exited"
        finally:
            os.kill(pid, signal.SIGCONT)
        load.wait_ok(50)  # and the load goes on after it
    finally:
        load.stop()
    load.finish()
    # Recovered: the engine's events still arrive and a killed replica is
    # replaced.
    assert sorted(c["Id"] for c in s.running("steady")) == ids
    st, _ = engine("POST", "/containers/%s/kill" % ids[0])
    assert st == 204, st
    s.wait_log("controller", "replica %s failed: exited" % ids[0][:12], 15)
    s.wait_log("controller", "ready on 127.0.0.1", 30, count=3)
    s.stop()


if __name__ == "__main__":
    run_tests(globals())
