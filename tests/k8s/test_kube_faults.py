"""stoke on Kubernetes under faults between the controller and the real kube-apiserver
(tests/k8s/cluster.py; the node side is the kubelet stand-in tests/k8s/kubelet.py), each
under a load of requests through the activator, counting failed requests and pods created:

1. the controller's connections to the API server (its watches among them) cut mid-stream,
   again and again while a Function is applied, changed and scaled from zero, then refused
   for seconds while another is created: the watches come back, no event is lost, no pod
   is created twice, no request fails;
2. a watch resumed after etcd was compacted past its resourceVersion (the API server runs
   with --watch-cache=false, so watches are served from etcd) gets 410 Gone: both informers
   relist, nothing is lost or created twice;
3. 409 Conflict: another writer changes the leader's Lease between its read and its renewal
   (the proxy delays the controller's traffic so the window is wide): the leader reads it
   again and renews, and does not step down;
4. another writer overwrites a Function's status: the controller writes the true one back;
5. the leader is SIGTERMed under load: it sends the activators no route table on its way
   out, the standby takes the Lease and adopts the pod; 0 failed requests.

The controllers reach the API server through the TCP proxy of tests/k8s/faults.py (127.0.0.1;
TLS passes through it); everything else (kubectl, the test's own watches, the kubelet
stand-in, kube-controller-manager) talks to the API server directly.

Run: python3 tests/k8s/test_kube_faults.py [test_name ...]   (ctest -R k8s.kube_faults)
"""

import calendar
import os
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import faults  # noqa: E402
import kapi  # noqa: E402
import stokek8s as k8s  # noqa: E402
from stokek8s import (  # noqa: E402
    NS, RELEASE, S, Load, act_log, apply, call, ctl_log, fn_doc, function, kubectl,
    live_pods, log, steady_pods, wait_log)

harness = k8s.harness
P = {}  # the proxy
_controller_kubeconfig = k8s.controller_kubeconfig


def _kubeconfig_via_proxy():
    """The controllers' kubeconfig, its server the proxy in front of the API server."""
    path = _controller_kubeconfig()
    P["proxy"] = faults.Proxy("127.0.0.1", k8s.C.api_port)
    with open(path) as f:
        text = f.read()
    assert k8s.C.server in text
    with open(path, "w") as f:
        f.write(text.replace(k8s.C.server, P["proxy"].url))
    return path


def setup():
    k8s.controller_kubeconfig = _kubeconfig_via_proxy
    # Watches served from etcd (no watch cache): a compaction makes a resumed watch's
    # resourceVersion too old, and the API server answers 410 Gone.
    k8s.setup(apiserver_args=("--watch-cache=false",))


def teardown():
    try:
        k8s.teardown()
    finally:
        if P.get("proxy"):
            P["proxy"].stop()


def metrics(proc=None):
    """The controller's /metrics as {series: value}."""
    p = proc or S["ctl"]
    addr = p.args[p.args.index("--ops-listen") + 1]
    with urllib.request.urlopen("http://%s/metrics" % addr, timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def informer(m, what):
    return (m.get('stoke_controller_kube_pod_informer_total{what="%s"}' % what, 0),
            m.get('stoke_controller_kube_function_informer_total{what="%s"}' % what, 0))


def observed(name, gen):
    return kapi.wait_for(lambda: (function(name).get("status") or {}).get("observedGeneration")
                         == gen, 60, "%s's status of generation %d" % (name, gen))


class PodWatch:
    """Every pod of the instance ADDED from now on, by function, seen by a watch of the
    test's own (straight to the API server)."""

    def __init__(self):
        self.added, self.error, self.stopped = {}, None, False
        self.rv = k8s.C.admin.get("/api/v1/namespaces/%s/pods?limit=1" % NS)[
            "metadata"]["resourceVersion"]
        self.path = "/api/v1/namespaces/%s/pods?labelSelector=%s" % (
            NS, urllib.parse.quote("stoke.dev/instance=" + RELEASE))
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        try:
            for ev in k8s.C.admin.watch_stream(self.path, self.rv, timeout_seconds=600):
                if self.stopped:
                    return
                if ev["type"] == "ADDED":
                    md = ev["object"]["metadata"]
                    self.added.setdefault(md["labels"]["stoke.dev/function"], []).append(
                        md["name"])
        except Exception as e:  # noqa: BLE001 - reported by stop()
            self.error = e

    def stop(self):
        self.stopped = True
        assert self.error is None, "the test's pod watch broke: %r" % self.error
        return {k: list(v) for k, v in self.added.items()}


def more_requests(load, after, k=5):
    """Waits for `k` more answers to `load` (after the fault `after`)."""
    n = len(load.results)
    kapi.wait_for(lambda: len(load.results) >= n + k, 30, "requests after " + after)


def all_200(results):
    bad = [r for r in results if r[0] != 200]
    assert not bad, "%d of %d failed: %s" % (len(bad), len(results), bad[:3])
    return bad


def lease():
    return k8s.C.admin.get("/apis/coordination.k8s.io/v1/namespaces/%s/leases/%s-controller" %
                           (NS, RELEASE))


def renewed_since(t):
    """The Lease once its holder renewed it at or after wall time `t`."""
    def renewed():
        spec = lease()["spec"]
        r = spec["renewTime"]
        at = calendar.timegm(time.strptime(r[:19], "%Y-%m-%dT%H:%M:%S")) + float(
            "0" + r[19:].rstrip("Z"))
        return spec if at >= t else None
    return kapi.wait_for(renewed, 30, "a renewal of the Lease")


def lasting(name, extra=None):
    """A Function that stays up for the test (no scale to zero within a minute)."""
    spec = {"scale": {"min": 0, "initial": 0, "max": 5, "window": "60s",
                      "scaleToZeroGrace": "60s"}}
    spec.update(extra or {})
    return fn_doc(name, spec)


def test_1_watches_cut_mid_stream():
    apply(fn_doc("hello"))
    observed("hello", 1)
    proxy = P["proxy"]
    load = Load("hello")
    cut_calls = []
    try:
        before = steady_pods(load, "hello")
        m0 = metrics()
        watch = PodWatch()
        # The leader cannot renew its Lease while cut off; each phase starts after a
        # renewal and lasts less than the renewal deadline (10 s) minus a retry (3 s).
        renewed_since(time.time())
        # Every connection cut every 0.2 s for 2 s while a Function is applied, scales
        # from zero on a request (its pod created through connections being cut) and is
        # changed (a rollout).
        apply(lasting("cut1"))
        caller = threading.Thread(target=lambda: cut_calls.append(call("cut1")), daemon=True)
        resets = 0
        for i in range(10):
            resets += proxy.cut()
            if i == 3:
                caller.start()
            if i == 6:
                apply(lasting("cut1", {"env": {"BIND_ADDR": "0.0.0.0", "GREETING": "hej"}}))
            time.sleep(0.2)  # the fault's rhythm
        renewed_since(time.time())
        # Then no connection at all for 3 s while a Function is created: its ADDED event
        # comes after the watch is back.
        resets += proxy.down()
        apply(lasting("cut2"))
        time.sleep(3)  # the fault: the API server unreachable
        proxy.up()
        caller.join(120)
        assert cut_calls and cut_calls[0][0] == 200, cut_calls
        observed("cut2", 1)
        observed("cut1", 2)
        status, body = call("cut2")
        assert status == 200, (status, body)
        kapi.wait_for(lambda: call("cut1")[1].startswith("hej from"), 90,
                      "cut1 answering with its generation 2")
        m1 = metrics()
        more_requests(load, "the cuts")
    finally:
        results = load.stop()
    created = watch.stop()
    bad = all_200(results)
    assert resets > 0 and proxy.cuts >= resets
    # The watches came back: WATCHes started again, on both informers.
    w0, w1 = informer(m0, "watch"), informer(m1, "watch")
    assert w1[0] > w0[0] and w1[1] > w0[1], (w0, w1)
    assert "hello" not in created, created
    assert [p["metadata"]["name"] for p in live_pods("hello")] == before
    assert len(created.get("cut2", [])) == 1, created
    # cut1: a pod for its cold start (of generation 1, or 2 when the change came first),
    # then one of generation 2 when it was 1 (the rollout): never two of one revision.
    revs = [n.split("-")[1] for n in created.get("cut1", [])]
    assert 1 <= len(revs) <= 2 and len(set(revs)) == len(revs), created
    assert len(live_pods("cut1")) == 1, [p["metadata"]["name"] for p in live_pods("cut1")]
    assert S["ctl"].poll() is None and "lost Lease" not in ctl_log(), ctl_log()[-3000:]
    e0, e1 = informer(m0, "error"), informer(m1, "error")
    log("watches cut: %d connections reset (10 cuts at 0.2 s, then 3 s refused); "
        "WATCHes restarted pods %d, functions %d (errors %d, %d); creates without answer %d; "
        "%d requests to hello, %d failed; pods created %s" % (
            resets, w1[0] - w0[0], w1[1] - w0[1], e1[0] - e0[0], e1[1] - e0[1],
            m1.get("stoke_controller_kube_pod_creates_unanswered_total", 0),
            len(results), len(bad), {k: len(v) for k, v in created.items()}))


def test_2_watch_410_gone_relists():
    apply(fn_doc("hello"))  # test_1's (unchanged): each test runs alone as well
    proxy = P["proxy"]
    load = Load("hello")
    try:
        before = steady_pods(load, "hello")
        m0 = metrics()
        renewed_since(time.time())
        # Cut off, then while away: cut1 deleted, gone1 created; etcd compacted past
        # both informers' resourceVersions.
        proxy.down()
        kubectl("delete", "function", "-n", NS, "cut1", "--wait=false")
        apply(fn_doc("gone1"))
        rev = faults.compact(k8s.C.etcd_url)
        watch = PodWatch()  # from after the compaction
        proxy.up()

        def relisted():
            m = metrics()
            g, l0 = informer(m, "gone"), informer(m, "list")
            return m if all(g[i] > informer(m0, "gone")[i] and l0[i] > informer(m0, "list")[i]
                            for i in (0, 1)) else None
        m1 = kapi.wait_for(relisted, 60, "both informers to get 410 and relist")
        wait_log("pods: resourceVersion", 10)
        wait_log("functions: resourceVersion", 10)
        assert "is gone (410 Gone): relisting" in ctl_log()
        # No lost event: the deletion and the creation made while away are acted on.
        wait_log("Function %s/cut1 deleted: scaling to zero" % NS, 30)
        observed("gone1", 1)
        status, body = call("gone1")
        assert status == 200, (status, body)
        kapi.wait_for(lambda: live_pods("cut1") == [], 60, "cut1's pod gone")
        more_requests(load, "the relist")
    finally:
        results = load.stop()
    created = watch.stop()
    bad = all_200(results)
    assert "hello" not in created, created
    assert [p["metadata"]["name"] for p in live_pods("hello")] == before
    assert len(created.get("gone1", [])) == 1, created
    # cut1 was deleted while away and its pod deleted by the garbage collector: when the
    # pods' informer relists before the Functions', the controller sees that pod gone
    # first and replaces it (with back-off) until it learns of the deletion; each such
    # pod is deleted by the garbage collector in turn (its owner is gone).
    assert len(created.get("cut1", [])) <= 2, created
    assert live_pods("cut1") == [], [p["metadata"]["name"] for p in live_pods("cut1")]
    g0, g1 = informer(m0, "gone"), informer(m1, "gone")
    l0, l1 = informer(m0, "list"), informer(m1, "list")
    log("410 Gone: etcd compacted at revision %d; 410s pods %d, functions %d; relists pods "
        "%d, functions %d; %d requests to hello, %d failed; pods created %s" % (
            rev, g1[0] - g0[0], g1[1] - g0[1], l1[0] - l0[0], l1[1] - l0[1], len(results),
            len(bad), {k: len(v) for k, v in created.items()}))


def test_3_lease_409_renewal_read_again_not_stepping_down():
    apply(fn_doc("hello"))  # test_1's (unchanged): each test runs alone as well
    proxy = P["proxy"]
    holder = lease()["spec"]["holderIdentity"]
    c0 = metrics()["stoke_controller_lease_conflicts_total"]
    load = Load("hello")
    writes = 0
    try:
        steady_pods(load, "hello")
        # Every chunk to and from the API server held 0.25 s: between the leader's read
        # of the Lease and its renewal the API server sees 0.5 s or more, in which the
        # other writer below changes the Lease (an annotation, every 0.1 s) until the
        # leader has had two renewals refused with 409.
        proxy.delay(0.25)
        path = "/apis/coordination.k8s.io/v1/namespaces/%s/leases/%s-controller" % (
            NS, RELEASE)
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            k8s.C.admin.patch(path, {"metadata": {"annotations": {
                "stoke.dev/test-writer": str(writes)}}})
            writes += 1
            assert S["ctl"].poll() is None, "the leader stepped down: " + ctl_log()[-2000:]
            if metrics()["stoke_controller_lease_conflicts_total"] >= c0 + 2:
                break
            time.sleep(0.1)
        conflicts = metrics()["stoke_controller_lease_conflicts_total"] - c0
        stopped_writing = time.time()
        proxy.delay(0)
        assert conflicts >= 2, "no renewal got 409 (%d writes)" % writes

        spec = renewed_since(stopped_writing)
        more_requests(load, "the conflicts")
    finally:
        proxy.delay(0)
        results = load.stop()
    bad = all_200(results)
    assert spec["holderIdentity"] == holder, spec
    assert S["ctl"].poll() is None, ctl_log()[-3000:]
    assert "lost Lease" not in ctl_log(), ctl_log()[-3000:]
    assert metrics()["stoke_controller_leader"] == 1
    assert '"leading:' not in ctl_log(S["standby_log"])
    log("Lease 409: %d writes by another writer, %d renewals refused with 409, read again "
        "and renewed by %s (no step-down); %d requests, %d failed" % (
            writes, conflicts, holder, len(results), len(bad)))


def test_4_status_overwritten_is_written_back():
    apply(fn_doc("hello"))  # test_1's (unchanged): each test runs alone as well
    status, _ = call("hello")
    assert status == 200
    ready = len([p for p in live_pods("hello")])
    kapi.wait_for(lambda: (function("hello").get("status") or {}).get("readyReplicas") == ready,
                  30,
                  "hello's status readyReplicas %d" % ready)
    r0 = metrics().get("stoke_controller_kube_status_rewrites_total", 0)
    kubectl("patch", "function", "hello", "-n", NS, "--subresource=status", "--type=merge",
            "-p", '{"status":{"readyReplicas":7,"desiredReplicas":7,"lastError":"bogus"}}')

    def written_back():
        st = function("hello")["status"]
        return st if st["readyReplicas"] == ready and st["lastError"] == "" else None
    st = kapi.wait_for(written_back, 30, "the controller to write hello's status back")
    assert st["desiredReplicas"] in (0, 1), st
    assert metrics()["stoke_controller_kube_status_rewrites_total"] > r0
    assert "was changed by another writer: writing it again" in ctl_log()


def start_activator():
    """A second activator on the channel (its joining makes the leader send every
    activator a new route table)."""
    logpath = os.path.join(S["tmp"], "activator-2.log")
    p = subprocess.Popen(
        [os.path.join(k8s.BUILD, "stoke-activator"), "--listen",
         "127.0.0.1:%d" % harness.free_port(), "--ops-listen",
         "127.0.0.1:%d" % harness.free_port(), "--controller", "127.0.0.1:%d" % S["ctl_port"],
         "--channel-token-file", S["token"], "--workers", "1", "--log-level", "debug"],
        stdout=open(logpath, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    harness.record_pid(p.pid)
    S["killed"].append(p)  # teardown ends it
    return p, logpath


def test_5_leader_sigterm_under_load_standby_takes_over():
    """The leader SIGTERMed while it starts a pod, with a request queued for that pod and
    the load on hello. Its API server connections are refused from just before the signal,
    so it stays stopping (it waits for that pod's start, which waits for the pod to be seen
    by its informer) until the test lets them through again; meanwhile another activator
    joins the channel: a stopping controller must send no route table (its replicas are
    retired: one would fail hello's requests in flight and queued). Then the standby takes
    over with 0 failed requests and the queued request answered."""
    apply(fn_doc("hello"))  # test_1's (unchanged): each test runs alone as well
    apply(lasting("queued"))
    observed("queued", 1)
    proxy = P["proxy"]
    connected = act_log().count("connected to the controller")
    load = Load("hello")
    queued, extra = [], None
    try:
        before = steady_pods(load, "hello")
        threading.Thread(target=lambda: queued.append(call("queued", timeout=150)),
                         daemon=True).start()
        kapi.wait_for(lambda: any('"fn":"queued"' in line and " from new: 0 -> 1" in line
                                  for line in ctl_log().splitlines()), 30,
                      "the leader creating queued's pod")
        proxy.down()
        old, old_log = S["ctl"], S["ctl_log"]
        joined = ctl_log().count("connected (process")
        old.terminate()
        extra, extra_log = start_activator()
        kapi.wait_for(lambda: ctl_log(old_log).count("connected (process") > joined or
                      old.poll() is not None, 30, "the second activator on the channel")
        proxy.up()
        assert old.wait(90) == 0, ctl_log()[-3000:]
        text = ctl_log(old_log)
        stopping = text[text.index('"signal 15'):]
        assert "connected (process" in stopping and "exiting" in stopping, stopping[-3000:]
        # The new activator got no route table from the stopping leader (it logs each
        # one it gets): none before its next connection (to the new leader).
        elog = ctl_log(extra_log)
        first = elog.find("connected to the controller")
        second = elog.find("connected to the controller", first + 1)
        assert first >= 0, elog
        assert "route table" not in elog[:second if second > 0 else len(elog)], elog
        S["killed"].append(old)
        wait_standby = '"leading: holding Lease %s/%s-controller as e2e-2' % (NS, RELEASE)
        kapi.wait_for(lambda: wait_standby in ctl_log(S["standby_log"]), 40,
                      "the standby to take the Lease")
        kapi.wait_for(lambda: '"ready: Functions of namespace' in ctl_log(S["standby_log"]), 60,
                      "the standby ready")
        kapi.wait_for(lambda: act_log().count("connected to the controller") > connected, 30,
                      "the activator on the new leader's channel")
        more_requests(load, "the takeover", 10)
        kapi.wait_for(lambda: queued, 120, "the queued request's answer")
    finally:
        proxy.up()
        results = load.stop()
        if extra:
            extra.terminate()
    S["ctl"], S["ctl_log"] = S.pop("standby"), S.pop("standby_log")
    bad = all_200(results)
    assert queued[0][0] == 200, queued
    assert [p["metadata"]["name"] for p in live_pods("hello")] == before
    assert len(live_pods("queued")) == 1, [p["metadata"]["name"] for p in live_pods("queued")]
    assert lease()["spec"]["holderIdentity"] == "e2e-2"
    log("leader SIGTERM under load, its pod creation in flight and an activator joining: "
        "the standby took the Lease and adopted %s; %d requests to hello, %d failed; the "
        "queued request: %d" % (before[0], len(results), len(bad), queued[0][0]))


if __name__ == "__main__":
    harness.run_tests(dict(globals()), setup=setup, teardown=teardown)
