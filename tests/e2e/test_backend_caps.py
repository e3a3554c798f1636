"""The reconciler on a backend that lacks capabilities: the Docker backend
with some masked (--backend-without), as a Kubernetes backend will be
without freeze, stopped replicas and pre-creation. The idle tiers degrade
(pause -> stop -> remove), the function's status says what `idle` does
there and why (and `stokectl describe`), and a request after idle still
gets 200 from a new replica."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from harness import Stoke, run_tests  # noqa: E402
from test_cli import ctl  # noqa: E402
from test_lifecycle import QUICK, replica_of  # noqa: E402


def status(s, fn):
    r = s.api("GET", "/api/v1/functions/%s/status" % fn)
    assert r.status == 200 and r.json, r
    return r.json


def test_without_freeze_or_stop_idle_replicas_are_removed():
    s = Stoke("caps-none", extra_controller_args=["--backend-without", "freeze,stop"]).start()
    s.write_spec("bare", scale=dict(QUICK, idle="pause"))
    s.wait_functions("activator", 1, 20)
    st = status(s, "bare")
    assert st["backend"] == "docker" and st["idle"] == "remove", st
    assert "removed" in st["idle_note"], st
    p = ctl(s, "describe", "bare")
    assert p.returncode == 0, p.stderr
    assert "Idle:" in p.stdout and "remove on the docker backend" in p.stdout, p.stdout
    r = s.fn_request("bare")
    assert r.status == 200, r
    first = replica_of(r)
    s.wait_log("controller", "scaled to zero", 30)
    s.wait_containers("bare", 0, 30)
    log = s.log("controller")
    assert "paused (idle" not in log and "stopped (idle)" not in log, log
    r2 = s.fn_request("bare")
    assert r2.status == 200, r2
    assert replica_of(r2) != first
    assert "cold start from new" in s.log("controller").split("scaled to zero", 1)[1]
    s.stop()


def test_without_freeze_idle_replicas_stop():
    s = Stoke("caps-nofreeze", extra_controller_args=["--backend-without", "freeze"]).start()
    s.write_spec("stopper", scale=dict(QUICK, idle="pause", removeAfter="1h"))
    s.wait_functions("activator", 1, 20)
    st = status(s, "stopper")
    assert st["idle"] == "stop" and "freeze" in st["idle_note"], st
    r = s.fn_request("stopper")
    assert r.status == 200, r
    s.wait_log("controller", "stopped (idle)", 30)
    cs = s.containers("stopper")
    assert len(cs) == 1 and cs[0]["State"] == "exited", cs
    assert "paused (idle" not in s.log("controller")
    r2 = s.fn_request("stopper")
    assert r2.status == 200, r2
    assert replica_of(r2) == replica_of(r)
    assert "cold start from stopped" in s.log("controller")
    s.stop()


def test_spec_idle_kept_where_the_backend_can():
    # No note on a backend that can do what the spec asks.
    s = Stoke("caps-all").start()
    s.write_spec("full", scale=dict(QUICK, idle="stop"))
    s.wait_functions("activator", 1, 20)
    st = status(s, "full")
    assert st["idle"] == "stop" and "idle_note" not in st, st
    p = ctl(s, "describe", "full")
    assert p.returncode == 0 and "Idle:" not in p.stdout, (p.stdout, p.stderr)
    s.stop()


if __name__ == "__main__":
    run_tests(globals())
