"""Routing by Host and by path, unknown functions, and what the controller
does with specs added, broken and removed while it runs."""

import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import Stoke, concurrent, run_tests  # noqa: E402
from test_ops import get, parse_exposition, value_or_none  # noqa: E402


def test_host_and_path_routing_and_404():
    s = Stoke("route").start()
    s.write_spec("alpha", scale={"min": 1})
    s.wait_log("controller", "ready on 127.0.0.1", 30)
    s.wait_log("activator", "route table", 10)

    r = s.request("/", host="alpha.localhost")
    assert r.status == 200 and "hi from alpha" in r.body, r
    r = s.request("/x/y?z=1", host="ALPHA.localhost:%d" % s.port)
    assert r.status == 200, r
    r = s.fn_request("alpha", "/deep/path")
    assert r.status == 200, r

    for resp in (s.fn_request("nope"), s.request("/", host="nope.localhost"),
                 s.request("/"), s.request("/fn/")):
        assert resp.status == 404, resp
    s.stop()


def test_route_tables_naming_known_functions():
    """Functions added one by one: each route table names those the
    activator already knows (once, five functions crashed it), and every
    one of them is still routed (a queued request, not a 404)."""
    s = Stoke("manyfns").start()
    names = ["f%d" % i for i in range(5)]
    for i, n in enumerate(names):
        s.write_spec(n, scale={"min": 0, "initial": 0}, queue={"max": 10, "timeout": "1s"})
        s.wait_log("controller", "function added", 10, count=i + 1)
        s.wait_log("activator", ": %d functions" % (i + 1), 10)
    assert s.procs["activator"].poll() is None, s.log("activator")[-3000:]
    for n in names:
        r = s.fn_request(n)  # queued, the function has no replica: 504 after 1 s
        assert r.status in (200, 504), r
    assert s.fn_request("nope").status == 404
    s.write_file("f2.yaml", "")  # refused: f2 keeps its spec
    os.unlink(os.path.join(s.fndir, "f1.yaml"))
    s.wait_log("controller", "function removed", 10)
    deadline = time.time() + 10
    while s.fn_request("f1").status != 404 and time.time() < deadline:
        time.sleep(0.1)
    assert s.fn_request("f1").status == 404
    assert s.procs["activator"].poll() is None, s.log("activator")[-3000:]
    s.stop()


def test_knative_service_manifest_is_served():
    """A Knative serving.knative.dev/v1 Service dropped into the functions
    directory is mapped and served; what stoke does not support is logged
    as a warning with its position."""
    s = Stoke("knative").start()
    s.write_file("kn.yaml", """apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: kn
spec:
  template:
    metadata:
      annotations:
        autoscaling.knative.dev/min-scale: "1"
    spec:
      serviceAccountName: robot
      containers:
        - image: %s
          env:
            - name: GREETING
              value: hello from knative
          readinessProbe:
            httpGet:
              path: /
""" % os.environ.get("STOKE_HELLO_IMAGE", "stoke-hello:1"))
    s.wait_log("controller", "kn.yaml:11:7: spec.template.spec.serviceAccountName: not supported", 10)
    s.wait_log("controller", "ready on 127.0.0.1", 30)
    r = s.fn_request("kn")
    assert r.status == 200 and "hello from knative" in r.body, r
    assert len(s.containers("kn")) == 1
    s.stop()


def test_bad_spec_is_reported_and_running_functions_keep_serving():
    s = Stoke("badspec").start()
    s.write_spec("steady", scale={"min": 1})
    s.wait_log("controller", "ready on 127.0.0.1", 30)
    before = [c["Id"] for c in s.containers("steady")]
    assert len(before) == 1

    # A new file with an error: reported with file:line:column and field.
    s.write_file("broken.yaml", "apiVersion: stoke/v1\nkind: Function\nmetadata:\n"
                 "  name: broken\nspec:\n  image: x\n  scale:\n    min: -1\n")
    s.wait_log("controller", "broken.yaml:8:10: spec.scale.min", 10)

    # The running function's own file broken: it keeps its spec and replica.
    good = open(os.path.join(s.fndir, "steady.yaml")).read()
    s.write_file("steady.yaml", good + "  bogusField: 1\n")
    s.wait_log("controller", "function keeps its current spec", 10)
    for _ in range(5):
        r = s.fn_request("steady")
        assert r.status == 200, r
    assert [c["Id"] for c in s.containers("steady")] == before
    assert s.fn_request("broken").status == 404

    # Fixed again: same revision, nothing restarts.
    s.write_file("steady.yaml", good)
    s.wait_log("controller", "function updated", 10)
    assert [c["Id"] for c in s.containers("steady")] == before
    s.stop()


def test_spec_added_changed_and_removed_without_restart():
    s = Stoke("dir").start()
    s.write_spec("live", scale={"min": 1})
    s.wait_log("controller", "ready on 127.0.0.1", 30)
    r = s.fn_request("live")
    assert r.status == 200 and "hi from live" in r.body, r
    first = [c["Id"] for c in s.containers("live")]

    # A changed env is a new revision: the replica is replaced.
    s.write_spec("live", scale={"min": 1}, env={"GREETING": "changed"})
    s.wait_log("controller", "new revision", 10)
    s.wait_log("controller", "ready on 127.0.0.1", 30, count=2)
    deadline = time.time() + 10
    while True:
        r = s.fn_request("live")
        assert r.status == 200, r
        if "changed" in r.body or time.time() > deadline:
            break
    assert "changed" in r.body, r
    s.wait_containers("live", 1, 20)
    assert [c["Id"] for c in s.containers("live")] != first

    # Removed: its containers go and it is unknown.
    s.remove_spec("live.yaml")
    s.wait_containers("live", 0, 20)
    s.wait_status(lambda: s.fn_request("live", timeout=5), 404, 10)
    s.stop()


def test_replica_leaving_finishes_its_requests_in_flight():
    s = Stoke("drain").start()
    s.write_spec("slow", scale={"min": 1})
    s.wait_log("controller", "ready on 127.0.0.1", 30)
    old = [c["Id"] for c in s.containers("slow")]

    # Requests that take 1.5 s are in flight when a new revision replaces
    # the replica: they finish on it before it is removed.
    results = []
    ts = [threading.Thread(target=lambda: results.append(s.fn_request("slow", "/delay/1500")))
          for _ in range(5)]
    for t in ts:
        t.start()
    # All five in flight on the old replica (the activator's gauge says so)
    # before the new revision comes.
    deadline = time.time() + 20
    while True:
        _, _, body = get(s.ops_port, "/metrics")
        v = value_or_none(parse_exposition(body.decode()), "stoke_activator_requests_in_flight",
                          function="slow")
        if v == 5:
            break
        assert time.time() < deadline, "in flight: %r" % v
        time.sleep(0.05)
    s.write_spec("slow", scale={"min": 1}, env={"GREETING": "v2"})
    s.wait_log("controller", "new revision", 10)
    for t in ts:
        t.join(30)
    assert len(results) == 5 and all(r.status == 200 for r in results), results
    # The controller removes the old replica once the activator reports it
    # drained (just after those responses), not before.
    s.wait_log("controller", "drained", 10)
    assert "still had requests in flight" not in s.log("controller")
    # And the old replica is gone afterwards.
    deadline = time.time() + 20
    while time.time() < deadline and any(c["Id"] in old for c in s.containers("slow")):
        time.sleep(0.1)
    assert not any(c["Id"] in old for c in s.containers("slow"))
    r = s.fn_request("slow")
    assert r.status == 200 and "v2" in r.body, r
    s.stop()


def test_two_workers_share_the_port():
    s = Stoke("workers", activator_args=["--workers", "2", "--id", "act"]).start()
    s.wait_log("controller", "activator act-w1 connected", 10)
    s.wait_log("controller", "activator act-w0 connected", 10)
    s.write_spec("shared", scale={"min": 0, "initial": 0, "target": 1000000})
    s.wait_functions("activator", 1, 10)
    # Cold requests spread over both workers' queues: each pokes, one cold
    # start serves them all.
    results = concurrent(40, lambda i: s.fn_request("shared", "/w/%d" % i))
    assert all(getattr(r, "status", None) == 200 for r in results), results[:5]
    assert len(s.containers("shared")) == 1
    s.stop()


if __name__ == "__main__":
    run_tests(globals())
