"""stoke on Kubernetes, end to end, against the real kube-apiserver of tests/k8s (with
kube-controller-manager's garbage collector) and the kubelet stand-in (pods on the local
Docker engine, 127.0.0.x pod IPs).

stoke-controller runs as a host process with `--backend kubernetes`, under the chart's own
ServiceAccount and Role (rendered from charts/stoke with helm, token from the TokenRequest
API), so a permission the chart lacks fails here; with `--leader-elect` on the chart's
Lease. stoke-activator runs as a host process beside it. A Function applied with kubectl
scales from zero on the first request through the activator, to a pod the controller
created (owned by the Function), back to zero when idle; deleting the Function removes its
pods; a bad Function is refused by the API server's schema while the running one serves;
a pod's log reads through the controller's read-only admin API and `kubectl logs` (the
kubelet stand-in's containerLogs behind the API server's pods/log).
Prints the cold start (first request to 200) from zero, median of 10.

Needs the binaries of tests/k8s/build.sh (fails, never skips, without them: the cluster
builds them when missing) and the image stoke-hello:1 (deploy/build-example.sh).
Run: python3 tests/k8s/test_kube_backend.py [test_name ...]   (ctest -L k8s)
"""

import concurrent.futures
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kapi  # noqa: E402
import stokek8s as k8s  # noqa: E402
from stokek8s import (  # noqa: E402
    IMAGE, NS, RELEASE, S, Load, act_log, apply, call, cold_name, ctl_log, fn_doc,
    function, kubectl, live_pods, log, pods, start_controller, steady_pods, wait_log)

harness = k8s.harness



def test_1_scale_from_zero_to_an_owned_pod():
    apply(fn_doc("hello"))
    fn = kapi.wait_for(lambda: (lambda f: f if f.get("status", {}).get("observedGeneration")
                                == 1 else None)(function("hello")), 30, "status written")
    st = fn["status"]
    ready = [c for c in st["conditions"] if c["type"] == "Ready"][0]
    assert ready["status"] == "True" and ready["reason"] == "ScaledToZero", st
    assert st["url"] == "http://%s-activator.%s.svc:80/fn/hello/" % (RELEASE, NS), st
    assert st["desiredReplicas"] == 0 and st["readyReplicas"] == 0, st
    assert "idle: remove" in ready["message"], ready  # what idle does on this backend
    assert pods("hello") == [], "pods before any request"

    status, body = call("hello")
    assert status == 200, (status, body)
    ps = live_pods("hello")
    assert len(ps) == 1, [p["metadata"]["name"] for p in ps]
    p = ps[0]
    assert body.strip() == "hello from %s" % p["metadata"]["name"], body
    md = p["metadata"]
    assert md["ownerReferences"] == [{
        "apiVersion": "stoke.dev/v1", "kind": "Function", "name": "hello",
        "uid": fn["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}], md
    assert md["labels"]["stoke.dev/function"] == "hello"
    assert md["labels"]["stoke.dev/instance"] == RELEASE
    assert md["annotations"]["stoke.dev/spec-hash"] == md["labels"]["stoke.dev/revision"]
    spec = p["spec"]
    assert spec["serviceAccountName"] == "%s-function" % RELEASE
    assert spec["automountServiceAccountToken"] is False
    assert spec["terminationGracePeriodSeconds"] >= 300  # the default request timeout
    ctr = spec["containers"][0]
    assert ctr["securityContext"] == {
        "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True, "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"}}, ctr["securityContext"]
    assert ctr["resources"]["limits"] == {"cpu": "500m", "memory": "128Mi"}, ctr["resources"]
    assert {"name": "PORT", "value": "8080"} in ctr["env"]
    assert ctr["ports"][0]["containerPort"] == 8080
    assert ctr["readinessProbe"]["httpGet"]["path"] == "/"

    def ready_status():
        st = function("hello").get("status", {})
        return st if st.get("readyReplicas") == 1 else None
    kapi.wait_for(ready_status, 30, "status readyReplicas 1")


def test_2_idle_back_to_zero_pods():
    kapi.wait_for(lambda: pods("hello") == [], 90, "hello back to 0 pods")
    st = function("hello")["status"]
    kapi.wait_for(lambda: function("hello")["status"].get("readyReplicas") == 0, 30,
                  "status readyReplicas 0")
    assert st["lastError"] == "", st


def test_3_concurrent_requests_at_zero_one_pod():
    kapi.wait_for(lambda: pods("hello") == [], 90, "hello at 0 pods")
    # Every pod of the function from now on, seen by a watch of our own.
    rv = k8s.C.admin.get("/api/v1/namespaces/%s/pods?limit=1" % NS)["metadata"]["resourceVersion"]
    n = 30
    with concurrent.futures.ThreadPoolExecutor(n) as ex:
        results = list(ex.map(lambda i: call("hello"), range(n)))
    bad = [r for r in results if r[0] != 200]
    assert not bad, "%d of %d failed: %s" % (len(bad), n, bad[:3])
    names = {r[1].strip() for r in results}
    assert len(names) == 1, names
    created = k8s.pods_added(k8s.C, NS, "hello", rv)
    assert len(created) == 1, "pods created for %d requests at zero: %s" % (n, created)
    assert len(live_pods("hello")) == 1, [p["metadata"]["name"] for p in live_pods("hello")]


def test_4_pod_deleted_outside_is_replaced():
    status, body = call("hello")
    assert status == 200, (status, body)
    old = live_pods("hello")
    assert len(old) == 1, old
    old = old[0]["metadata"]["name"]
    load = Load("hello")
    try:
        k8s.C.admin.delete("/api/v1/namespaces/%s/pods/%s" % (NS, old))
        wait_log("was removed outside stoke", 30)

        def replaced():
            ps = live_pods("hello")
            return ps if len(ps) == 1 and ps[0]["metadata"]["name"] != old else None
        new = kapi.wait_for(replaced, 60, "a new pod for hello")[0]["metadata"]["name"]
        kapi.wait_for(lambda: any(r[0] == 200 and new in r[1] for r in load.results[-5:]),
                      60, "answers from the new pod %s" % new)
    finally:
        results = load.stop()
    assert len(live_pods("hello")) == 1, [p["metadata"]["name"] for p in live_pods("hello")]
    log("pod %s deleted outside stoke: replaced by %s; %d requests, %d not 200 (in flight to "
        "the deleted pod)" % (old, new, len(results), sum(r[0] != 200 for r in results)))


def test_5_leader_killed_standby_takes_over_and_adopts():
    connected = act_log().count("connected to the controller")
    load = Load("hello")
    try:
        before = steady_pods(load, "hello")
        S["ctl"].kill()
        S["ctl"].wait()
        S["killed"].append(S["ctl"])
        t0 = time.monotonic()
        wait_standby = '"leading: holding Lease %s/%s-controller as e2e-2' % (NS, RELEASE)
        kapi.wait_for(lambda: wait_standby in ctl_log(S["standby_log"]), 40,
                      "the standby to take the Lease")
        took = time.monotonic() - t0
        kapi.wait_for(lambda: '"adopted replica %s' % before[0][:12] in
                      ctl_log(S["standby_log"]), 30, "the standby to adopt " + before[0])
        kapi.wait_for(lambda: '"ready: Functions of namespace' in ctl_log(S["standby_log"]), 30,
                      "the standby ready")
        n = len(load.results)
        kapi.wait_for(lambda: len(load.results) >= n + 5, 30, "requests after the takeover")
        # Until the activator is back on the channel, the new leader's drains cannot
        # count its requests (it routes to what it knew): test_6 drains.
        kapi.wait_for(lambda: act_log().count("connected to the controller") > connected, 30,
                      "the activator back on the channel")
    finally:
        results = load.stop()
    S["ctl"], S["ctl_log"] = S.pop("standby"), S.pop("standby_log")

    bad = [r for r in results if r[0] != 200]
    assert not bad, "%d of %d failed: %s" % (len(bad), len(results), bad[:3])
    after = [p["metadata"]["name"] for p in live_pods("hello")]
    assert after == before, (before, after)
    lease = k8s.C.admin.get("/apis/coordination.k8s.io/v1/namespaces/%s/leases/%s-controller" %
                        (NS, RELEASE))
    assert lease["spec"]["holderIdentity"] == "e2e-2", lease["spec"]
    print("leader kill -9: the standby held the Lease %.1f s later (lease 15 s), adopted %s; "
          "%d requests meanwhile, all 200" % (took, before[0], len(results)), flush=True)


def test_6_spec_change_rolls_the_pod_over_without_a_failed_request():
    load = Load("hello")
    try:
        old = [p for p in live_pods("hello") if p["metadata"]["name"] in
               steady_pods(load, "hello")]
        old_rev = old[0]["metadata"]["labels"]["stoke.dev/revision"]
        apply(fn_doc("hello", {"env": {"BIND_ADDR": "0.0.0.0", "GREETING": "bonjour"}}))

        def rolled():
            ps = pods("hello")
            return ps if ps and all(p["metadata"]["labels"]["stoke.dev/revision"] != old_rev
                                    for p in ps) else None
        new = kapi.wait_for(rolled, 90, "only pods of the new revision")
        kapi.wait_for(lambda: any(r[1].startswith("bonjour from") for r in load.results[-3:]),
                      30, "answers of the new revision")
    finally:
        results = load.stop()
    bad = [r for r in results if r[0] != 200]
    assert not bad, "%d of %d failed: %s" % (len(bad), len(results), bad[:3])
    assert len(new) == 1, [p["metadata"]["name"] for p in new]
    kapi.wait_for(lambda: function("hello")["status"].get("observedGeneration") == 2, 30,
                  "status of generation 2")
    log("rollout: %s -> %s, %d requests, all 200" % (
        old[0]["metadata"]["name"], new[0]["metadata"]["name"], len(results)))


def test_7_restarted_controller_rolls_the_stale_revision_over():
    status, body = call("hello")
    assert status == 200, (status, body)
    old = live_pods("hello")
    assert len(old) == 1
    old_name = old[0]["metadata"]["name"]
    old_rev = old[0]["metadata"]["labels"]["stoke.dev/revision"]
    connected = act_log().count("connected to the controller")
    S["ctl"].kill()
    S["ctl"].wait()
    S["killed"].append(S["ctl"])
    # Changed while no controller runs; the same identity restarts (a container
    # restart keeps its pod's name) and holds the Lease again at once.
    apply(fn_doc("hello", {"env": {"BIND_ADDR": "0.0.0.0", "GREETING": "hallo"}}))
    S["ctl"], S["ctl_log"] = start_controller("e2e-2")
    wait_log('"ready: Functions of namespace %s' % NS, 60)
    # The stale pod is adopted and serves until a pod of the new revision is
    # ready; then it is drained (the activator, back on the channel, says it
    # has nothing in flight to it) and deleted: a rollout, as on Docker.
    assert "adopted replica %s on" % old_name[:12] in ctl_log() and \
        "of earlier revision %s" % old_rev in ctl_log(), ctl_log()[-3000:]
    wait_log("rollout: 1 ready of revision", 60)
    kapi.wait_for(lambda: old_name not in [p["metadata"]["name"] for p in pods("hello")], 60,
                  "the stale pod gone")
    kapi.wait_for(lambda: act_log().count("connected to the controller") > connected, 30,
                  "the activator back on the channel")
    status, body = call("hello")
    assert status == 200 and body.startswith("hallo from"), (status, body)
    new = live_pods("hello")
    assert len(new) == 1 and new[0]["metadata"]["labels"]["stoke.dev/revision"] != old_rev, new


def test_8_cold_start_median_of_10():
    times = []
    for i in range(10):
        name = cold_name(i)
        apply(fn_doc(name))
        wait_log('"function added (image %s' % IMAGE, 30)
        kapi.wait_for(lambda: (function(name).get("status") or {}).get("observedGeneration")
                      == 1, 30, "%s applied" % name)
        assert pods(name) == []
        t0 = time.monotonic()
        status, body = call(name)
        times.append(time.monotonic() - t0)
        assert status == 200, (status, body)
    for i in range(10):
        kubectl("delete", "function", "-n", NS, cold_name(i), "--wait=false")
    # The Docker backend's beside it, in the same run: the same image and spec, a
    # controller with its functions directory.
    docker = []
    d = harness.Stoke("kcold").start()
    try:
        for i in range(10):
            name = "cold%d" % i
            d.write_spec(name, scale={"min": 0, "initial": 0, "max": 5, "idle": "remove"})
            d.wait_log("controller", '"function added', 30, count=i + 1)
            t0 = time.monotonic()
            r = d.fn_request(name)
            docker.append(time.monotonic() - t0)
            assert r.status == 200, r
    finally:
        d.stop()
    for what, ts in (("Kubernetes (pod, kubelet stand-in)", times),
                     ("Docker (container)", docker)):
        ts.sort()
        print("cold start from zero, %s, first request to 200, 10 functions: median %.0f ms, "
              "min %.0f ms, max %.0f ms" % (what, statistics.median(ts) * 1000, ts[0] * 1000,
                                            ts[-1] * 1000), flush=True)


def test_9_bad_function_refused_running_one_serves():
    r = apply(fn_doc("bad", {"scale": {"min": -1}}), check=False)
    assert r.returncode != 0, r.stdout
    assert "spec.scale.min" in r.stderr, r.stderr
    bad = fn_doc("hello", {"timeout": "forever"})
    r = apply(bad, check=False)
    assert r.returncode != 0 and "spec.timeout" in r.stderr, r.stderr
    # What the schema cannot judge (a day that never comes) the API server
    # keeps: the controller refuses it in the status, naming the field, and
    # starts nothing for it.
    apply(fn_doc("never", {"schedules": [{"name": "feb30", "schedule": "0 0 30 2 *"}]}))

    def refused():
        st = function("never").get("status") or {}
        ready = [c for c in st.get("conditions", []) if c["type"] == "Ready"]
        return st if ready and ready[0]["status"] == "False" and \
            ready[0]["reason"] == "InvalidSpec" else None
    st = kapi.wait_for(refused, 30, "never's status InvalidSpec")
    assert "schedule" in st["lastError"] and "never runs" in st["lastError"], st
    assert pods("never") == [], pods("never")
    status, body = call("hello")
    assert status == 200, (status, body)
    assert function("hello")["metadata"]["generation"] == 3  # test_7's
    kubectl("delete", "function", "-n", NS, "never")
    log("a Function the schema keeps and the parser refuses: %s" % st["lastError"])


def test_10_unstartable_pod_is_reported_and_retried_with_back_off():
    apply(fn_doc("noimage", {"image": "stoke-no-such-image:1", "queue": {"timeout": "3s"}}))
    kapi.wait_for(lambda: (function("noimage").get("status") or {}).get("observedGeneration")
                  == 1, 30, "noimage applied")
    rv = k8s.C.admin.get("/api/v1/namespaces/%s/pods?limit=1" % NS)["metadata"]["resourceVersion"]
    status, body = call("noimage", timeout=30)
    assert status in (502, 503, 504), (status, body)

    def failed():
        st = function("noimage")["status"]
        ready = [c for c in st["conditions"] if c["type"] == "Ready"][0]
        return st if ready["status"] == "False" and ready["reason"] == "ReplicaFailed" else None
    st = kapi.wait_for(failed, 60, "noimage's status ReplicaFailed")
    assert "ErrImageNeverPull" in st["lastError"], st
    # Back-off (0.5 s doubling), not a pod a moment: the pods created in 8 s.
    path = "/api/v1/namespaces/%s/pods?labelSelector=%s" % (
        NS, urllib.parse.quote("stoke.dev/function=noimage"))
    created = {ev["object"]["metadata"]["name"] for ev in
               k8s.C.admin.watch_stream(path, rv, timeout_seconds=8) if ev["type"] == "ADDED"}
    assert 1 <= len(created) <= 6, created
    kubectl("delete", "function", "-n", NS, "noimage")
    kapi.wait_for(lambda: pods("noimage") == [], 60, "noimage's pods gone")
    log("unstartable pod: %s; %d pods created in 8 s" % (st["lastError"], len(created)))


def test_11_api_server_stopped_10s_under_load():
    connected = act_log().count("connected to the controller")
    api = k8s.C.procs["kube-apiserver"]
    load = Load("hello")
    try:
        before = steady_pods(load, "hello")
        os.kill(api.pid, signal.SIGSTOP)
        try:
            time.sleep(10)  # the fault: the API server does not answer for 10 s
        finally:
            os.kill(api.pid, signal.SIGCONT)
        n = len(load.results)
        kapi.wait_for(lambda: len(load.results) >= n + 5, 30, "requests after the stop")
    finally:
        results = load.stop()
    bad = [r for r in results if r[0] != 200]
    assert not bad, "%d of %d failed: %s" % (len(bad), len(results), bad[:3])
    # A leader that could not renew its Lease for 10 s steps down and exits 1, leaving
    # the pods; its pod's container restarts (here: the test) and takes the Lease again.
    stepped_down = False
    if S["ctl"].poll() is not None or "lost Lease" in ctl_log():
        S["ctl"].wait(30)
        assert S["ctl"].returncode == 1, (S["ctl"].returncode, ctl_log()[-3000:])
        stepped_down = True
        S["killed"].append(S["ctl"])
        S["ctl"], S["ctl_log"] = start_controller("e2e-2")
        wait_log('"ready: Functions of namespace %s' % NS, 60)
        kapi.wait_for(lambda: act_log().count("connected to the controller") > connected, 30,
                      "the activator back on the channel")
    # The controller acts again: a new function scales from zero; no duplicate of hello.
    apply(fn_doc("after"))
    kapi.wait_for(lambda: (function("after").get("status") or {}).get("observedGeneration")
                  == 1, 30, "after applied")
    status, body = call("after")
    assert status == 200, (status, body)
    # No duplicate. (The same pod unless a new leader, its activators not back on the
    # channel yet, saw no traffic for the grace and scaled hello to zero meanwhile.)
    after = sorted(p["metadata"]["name"] for p in live_pods("hello"))
    assert len(after) <= 1, (before, after)
    kubectl("delete", "function", "-n", NS, "after", "--wait=false")
    log("API server stopped 10 s: %d requests, all 200; the leader %s; hello's pod %s" % (
        len(results), "stepped down and its restart adopted the pods" if stepped_down
        else "kept its Lease", "kept" if after == before else "%s -> %s" % (before, after)))


def test_12_delete_function_removes_its_pods():
    status, _ = call("hello")
    assert status == 200
    assert len(live_pods("hello")) == 1
    kubectl("delete", "function", "-n", NS, "hello", "--wait=false")
    kapi.wait_for(lambda: pods("hello") == [], 90, "hello's pods gone")
    kapi.wait_for(lambda: all(pods(cold_name(i)) == [] for i in range(10)), 120,
                  "the cold-* functions' pods gone")
    assert S["ctl"].poll() is None, ctl_log()[-4000:]


def test_13_pod_logs():
    """A function pod's log through the leader's admin API (what `stokectl logs` reads: the
    controller's pods/log call, which the API server proxies to the kubelet stand-in's
    containerLogs) and through `kubectl logs`; the admin API is read-only on Kubernetes and
    a follower names the leader; CPU and memory say they are not measured; with the node's
    kubelet gone, 502 with the API server's words."""
    scale = {"min": 1, "initial": 1, "max": 2, "window": "6s", "scaleToZeroGrace": "5s"}
    apply(fn_doc("talk", {"scale": scale}))

    def one_ready():
        st = function("talk").get("status") or {}
        ps = live_pods("talk")
        return ps if st.get("readyReplicas") == 1 and len(ps) == 1 else None
    pod = kapi.wait_for(one_ready, 90, "talk's pod ready")[0]["metadata"]["name"]
    ctl = S["ctl"]
    fn = "/api/v1/functions/talk"

    def logs(query=""):
        return k8s.admin_api(ctl, "GET", fn + "/logs" + query)

    # The example logs one line when it listens (stderr).
    def listening():
        st, h, text = logs()
        return (st, h, text) if st == 200 and '"listening"' in text else None
    st, h, text = kapi.wait_for(listening, 30, "the pod's log through the admin API")
    assert h.get("Content-Type", "").startswith("text/plain"), h
    assert h.get("Transfer-Encoding") == "chunked", h
    lines = text.splitlines()
    assert lines and all(x.startswith("[%s] " % pod) for x in lines), lines
    st, _, text = logs("?tail=0")
    assert (st, text) == (200, ""), (st, text)
    st, _, text = logs("?timestamps=1&tail=1")
    assert st == 200 and len(text.splitlines()) == 1, (st, text)
    word = text.split(" ")[1]
    assert word[:2] == "20" and word.endswith("Z"), text  # RFC 3339, from the kubelet side
    st, _, text = logs("?since=1h")
    assert st == 200 and '"listening"' in text, (st, text)
    st, _, text = logs("?tail=x")
    assert st == 400 and "tail" in text, (st, text)

    # follow=1: the stream stays open; the client closing it ends the controller's call.
    c = harness.UnixHTTPConnection(S["admin"][ctl.pid], timeout=30)
    c.request("GET", fn + "/logs?follow=1")
    r = c.getresponse()
    assert r.status == 200, r.status
    first = r.fp.readline()  # a chunk-size line, then the first line of the log
    first += r.fp.readline()
    assert b"[%s] " % pod.encode() in first, first
    c.close()

    # stokectl logs, as a user runs it against the controller's socket.
    out = subprocess.run([os.path.join(k8s.BUILD, "stokectl"), "--server",
                          "unix:" + S["admin"][ctl.pid], "logs", "talk", "--tail", "1"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("[%s] " % pod), out

    # kubectl logs: the same log through the API server and the kubelet stand-in.
    out = kubectl("logs", "-n", NS, pod, "-c", "function").stdout
    assert '"listening"' in out, out
    out = kubectl("logs", "-n", NS, pod, "--tail=1", "--timestamps").stdout
    assert len(out.splitlines()) == 1 and out[:2] == "20", out

    # Read-only: the Function objects are the specs.
    st, _, text = k8s.admin_api(ctl, "PUT", fn, body=b"{}")
    assert st == 405 and "kubectl" in text, (st, text)
    st, _, text = k8s.admin_api(ctl, "DELETE", fn)
    assert st == 405 and "kubectl" in text, (st, text)
    st, _, text = k8s.admin_api(ctl, "GET", "/api/v1/functions")
    assert st == 200 and "talk" in [f["name"] for f in json.loads(text)["items"]], (st, text)
    st, _, text = k8s.admin_api(ctl, "GET", fn + "/status")
    status = json.loads(text)
    assert st == 200 and status["backend"] == "kubernetes", (st, text)
    # Not measured: null and a note, not zeros.
    assert status["cpu_seconds"] is None and status["memory_bytes"] is None, status
    assert "not measured" in status["usage_note"], status
    out = subprocess.run([os.path.join(k8s.BUILD, "stokectl"), "--server",
                          "unix:" + S["admin"][ctl.pid], "describe", "talk"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "not measured" in out.stdout, out
    # A follower knows no functions: 503 naming the Lease holder.
    standby = S.get("standby")
    if standby and standby.poll() is None:
        lease = k8s.C.admin.get("/apis/coordination.k8s.io/v1/namespaces/%s/leases/%s-controller"
                                % (NS, RELEASE))
        holder = lease["spec"]["holderIdentity"]
        st, _, text = k8s.admin_api(standby, "GET", fn + "/logs")
        assert st == 503 and holder in text, (st, text, holder)
        st, _, text = k8s.admin_api(standby, "PUT", fn, body=b"{}")
        assert st == 405, (st, text)

    # The node's kubelet goes away (its containers with it): the API server cannot dial it,
    # and says so; the controller answers 502 with those words, kubectl shows the same.
    node = k8s.C.nodes[0]
    k8s.C.stop_node(node)
    st, _, text = logs()
    assert st == 502, (st, text)
    err = json.loads(text)["error"]
    assert pod in err and "the Kubernetes API server" in err, err
    out = kubectl("logs", "-n", NS, pod, check=False)
    assert out.returncode != 0, out
    log("pod logs: admin API, stokectl and kubectl read %s; without its kubelet: 502 %s; "
        "kubectl: %s" % (pod, err, out.stderr.strip()))


if __name__ == "__main__":
    harness.run_tests(dict(globals()), setup=k8s.setup, teardown=k8s.teardown)
