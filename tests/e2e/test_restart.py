"""A controller killed with SIGKILL under load and started again adopts the
replicas it left: the same containers keep serving, none is created, and no
request fails meanwhile (the activator serves the replicas it knows)."""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import Load, Stoke, run_tests  # noqa: E402
from test_faults import EngineProxy  # noqa: E402


def test_kill_9_and_restart_adopts_replicas_without_failures():
    s = Stoke("restart").start()
    before = s.deploy_warm("steady", 2)

    # Bounded load: 4 clients, 20 ms requests, until stopped (<= 60 s).
    load = Load(s, "steady", "/delay/20", 4)
    try:
        load.wait_ok(100)  # the load runs through the replicas
        s.restart_controller("controller-2")
        s.wait_log("controller", "adopted replica", 10, count=2)
        # And goes on with the new controller: it has made decisions.
        s.wait_log("controller", '"autoscale: desired', 10, count=2)
        load.wait_ok(100)
    finally:
        load.stop()
    load.finish()
    after = sorted(c["Id"] for c in s.containers("steady"))
    assert after == before, (before, after)
    log = s.log("controller")
    assert "cold start" not in log and "scaling up" not in log, log
    s.stop()


def test_restart_removes_containers_of_an_old_revision():
    s = Stoke("restart-rev").start()
    s.write_spec("moving", scale={"min": 1})
    s.wait_log("controller", "ready on 127.0.0.1", 30)
    old = [c["Id"] for c in s.containers("moving")]
    s.kill9("controller")
    # The spec changes while no controller runs: a new revision.
    s.write_spec("moving", scale={"min": 1}, env={"GREETING": "v2"})
    s._spawn("controller", s._controller_argv(), logname="controller-2")
    s.wait_log("controller", '"ready: functions from', 30)
    s.wait_log("controller", "ready on 127.0.0.1", 30)
    # The old revision's replica serves until the new one is ready, then
    # goes through the rollout (drained), not at once.
    assert "of earlier revision" in s.log("controller"), s.log("controller")
    s.wait_log("controller", "rollout: 1 ready of revision", 30)
    s.wait_containers("moving", 1, 20)
    assert [c["Id"] for c in s.containers("moving")] != old
    # The activator kept the old table while no controller ran; the new
    # one arrives with the new replica's route.
    deadline = time.time() + 10
    r = s.wait_status(lambda: s.fn_request("moving", timeout=10), 200, 10)
    while "v2" not in r.body and time.time() < deadline:
        time.sleep(0.05)
        r = s.fn_request("moving", timeout=10)
    assert r.status == 200 and "v2" in r.body, r
    s.stop()


def test_restarted_controller_waits_for_the_activator_before_draining():
    """A controller killed with requests in flight, its function changed
    meanwhile: the new controller rolls the old revision's replica over, and
    removes it only once the activator (which reconnects after it started)
    says it has no request in flight to it. Each request takes 400 ms, so
    removing the old replica at once (or while no activator is connected)
    fails the requests in flight on it."""
    s = Stoke("restart-settle", activator_args=["--workers", "1"]).start()
    s.deploy_warm("settle", 1, env={"GREETING": "v1"})
    old = [c["Id"] for c in s.containers("settle")]
    load = Load(s, "settle", "/delay/400", 4, classify=lambda r: r.body.strip()[:40])
    try:
        deadline = time.time() + 20
        while sum(load.counts.values()) < 8 and time.time() < deadline:
            time.sleep(0.05)
        s.kill9("controller")
        s.write_spec("settle", scale={"min": 1}, env={"GREETING": "v2"})
        # The activator's reconnect back-off grows (50 ms doubling, to 2 s):
        # after 6 attempts it comes back up to 2 s after the new controller
        # starts, later than the new replica is ready.
        tries = s.log("activator").count("controller not reachable")
        s.wait_log("activator", "controller not reachable", 20, count=tries + 6)
        s._spawn("controller", s._controller_argv(), logname="controller-2")
        s.wait_log("controller", "of earlier revision", 30)
        s.wait_log("controller", "rollout: 1 ready of revision", 30)
        cs = s.wait_containers("settle", 1, 30)
        assert cs[0]["Id"] not in old, (old, cs)
        n = sum(v for k, v in load.counts.items() if "v2" in k)
        deadline = time.time() + 20
        while sum(v for k, v in load.counts.items() if "v2" in k) < n + 8 and \
                time.time() < deadline:
            time.sleep(0.05)
    finally:
        load.stop()
    load.finish(may_fail=0, min_ok=16)
    assert any("v1" in k for k in load.counts) and any("v2" in k for k in load.counts), load.counts
    s.stop()


def test_activator_connecting_before_adoption_keeps_its_routes():
    """A restarted controller whose engine is slow to answer (the ping and
    the list, 5 s each): the activator connects (and says hello) before the
    controller knows any
    function. It gets no table until adoption is over, and serves on the
    one it has; a table made before adoption would hold no function, and
    every request would get a 404 until the next."""
    s = Stoke("restart-early")
    proxy = EngineProxy(s.tmp)
    s.extra += ["--docker-host", "unix://" + proxy.sock]
    try:
        s.start()
        s.deploy_warm("early", 1)
        load = Load(s, "early", "/delay/20", 4)
        try:
            load.wait_ok(50)
            proxy.faults([{"method": "^GET$", "path": r"^(/v[0-9.]+)?/(_ping|containers/json)",
                           "fault": "delay", "delay_s": 5}])
            tables = s.log("activator").count('"route table')
            s.kill9("controller")
            s._spawn("controller", s._controller_argv(), logname="controller-2")
            s.wait_log("controller", "connected (process", 10)
            # The activator is on the channel, the list not answered yet.
            assert '"ready: functions from' not in s.log("controller"), s.log("controller")
            load.wait_ok(50)
            assert '"ready: functions from' not in s.log("controller"), \
                "the list was answered too soon to show anything"
            assert s.log("activator").count('"route table') == tables, s.log("activator")[-3000:]
            s.wait_log("controller", '"ready: functions from', 30)
            proxy.faults([])
            s.wait_log("activator", '"route table', 10, count=tables + 1)
            load.wait_ok(50)
        finally:
            load.stop()
        load.finish()
        assert proxy.counts().get("delay", 0) >= 1, proxy.log()
    finally:
        proxy.stop()
    s.stop()


if __name__ == "__main__":
    run_tests(globals())
