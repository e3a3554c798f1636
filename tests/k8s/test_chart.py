"""The Helm chart's own pods, end to end, on the real kube-apiserver of tests/k8s (with
kube-controller-manager: Deployments, ReplicaSets, garbage collection) and the kubelet
stand-in (pods as containers on the local Docker engine, 127.0.0.x pod IPs).

stoke's image is built locally (deploy/k8s/build-image.sh, under a name of this run; no
registry) and `helm install` of charts/stoke runs the controller (two pods, a Lease), the
activators (two pods) and stoke-events (a StatefulSet's pod, its store on a PersistentVolumeClaim)
from it, under the chart's own ServiceAccounts, Role and token Secrets: a permission the chart
lacks, a flag a daemon refuses, a volume it cannot read fail here. The one value set for the
test cluster is `hostNetwork=true` (the stand-in's bridge pods cannot reach loopback addresses:
the API server, pod IPs), plus the image's name, `activator.service.port=8080` (the stand-in's
Services reach a pod only on its targetPort) and `events.persistence.storageClass` naming the
`local` PersistentVolume this test makes (no dynamic provisioner here: the real PV controller
binds the StatefulSet's claim to it, and the stand-in mounts its directory).

Then: the README's example Function applied with kubectl has 0 pods, its first request
through an activator pod gets 200 from a pod the controller created; 100 concurrent requests
at zero (over both activator pods) all get 200 from one cold start; load scales the example
up and idle scales it back to 0 pods with no failed request; `helm test` passes (with an
async call); async calls through the activator pods (202, then their state through the
Location) are still there, ended or queued, after stoke-events' pod is deleted and made again
on the same claim, and the queued one is delivered by the new pod; the
leader's container killed with SIGKILL (the stand-in restarts it, as a kubelet would) and
then the leader's pod deleted hand the Lease over with no failed request and no duplicate
pod; `kubectl delete function` removes its pods; no daemon logged a 403; `helm uninstall`
leaves no pod and no container (and the claim, as documented). Prints the cold start from zero through the chart's pods (median of 10).

Needs the binaries of tests/k8s/build.sh (built when missing) and stoke-hello:1
(deploy/build-example.sh); fails, never skips, without them.
Run: STOKE_BUILD_DIR=build python3 tests/k8s/test_chart.py [test_name ...]   (ctest k8s.chart)
"""

import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "e2e"))
import cluster as kcluster  # noqa: E402
import harness  # noqa: E402
import kapi  # noqa: E402
import kubelet  # noqa: E402
import stokek8s  # noqa: E402

CHART = os.path.join(ROOT, "charts", "stoke")
EXAMPLE = os.path.join(ROOT, "deploy", "examples", "hello", "hello.yaml")  # the README's
NS = "stoke-chart"
RELEASE = "stoke"  # fullname "stoke": stoke-controller, stoke-activator, ...
STOKE_IMAGE = ("stoke-chart-%d" % os.getpid(), "1")
STORAGE_CLASS = "stoke-chart-local"  # the class of the PersistentVolume made for the test
EVENTS_PVC = "data-%s-events-0" % RELEASE
C = None
S = {}


def log(m):
    print("test: " + m, file=sys.stderr, flush=True)


def helm(*args, check=True, timeout=600):
    r = subprocess.run([os.path.join(C.bin, "helm")] + list(args), env=C.env(),
                       capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError("helm %s: exit %d\n%s%s" % (" ".join(args), r.returncode,
                                                         r.stdout, r.stderr))
    return r


def kubectl(*args, check=True, input=None):
    return C.kubectl(*args, check=check, input=input)


def sel_pods(selector):
    return C.admin.get("/api/v1/namespaces/%s/pods?labelSelector=%s" % (
        NS, urllib.parse.quote(selector)))["items"]


def component(name):
    """The chart's live pods of one component (controller, activator)."""
    return [p for p in sel_pods("app.kubernetes.io/instance=%s,app.kubernetes.io/component=%s"
                                % (RELEASE, name)) if not p["metadata"].get("deletionTimestamp")]


def is_ready(p):
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in p.get("status", {}).get("conditions") or [])


def fn_pods(fn):
    return sel_pods("stoke.dev/managed=true,stoke.dev/instance=%s,stoke.dev/function=%s"
                    % (RELEASE, fn))


def live(fn):
    return [p for p in fn_pods(fn) if not p["metadata"].get("deletionTimestamp")]


def function(name):
    return C.admin.get("/apis/stoke.dev/v1/namespaces/%s/functions/%s" % (NS, name))


def applied(name):
    return kapi.wait_for(lambda: (lambda f: f if (f.get("status") or {}).get(
        "observedGeneration") == f["metadata"]["generation"] else None)(function(name)), 60,
        "the controller to take %s" % name)


def lease_holder():
    return C.admin.get("/apis/coordination.k8s.io/v1/namespaces/%s/leases/%s-controller"
                       % (NS, RELEASE))["spec"].get("holderIdentity")


def activators():
    ips = sorted(p["status"]["podIP"] for p in component("activator") if is_ready(p))
    assert len(ips) == 2, ips
    return ips


def call(fn, path="", i=0, timeout=90):
    """GET /fn/<fn>/<path> through activator pod i % 2 (what the activator Service does)."""
    ip = S["activators"][i % len(S["activators"])]
    c = http.client.HTTPConnection(ip, 8080, timeout=timeout)
    try:
        c.request("GET", "/fn/%s/%s" % (fn, path))
        r = c.getresponse()
        return r.status, r.read().decode(errors="replace")
    except (OSError, http.client.HTTPException) as e:
        return 0, "%s: %s" % (type(e).__name__, e)
    finally:
        c.close()


def request(method, path, i=0, headers=None, body=None, timeout=60):
    """`method` `path` through activator pod i % 2: (status, headers, body)."""
    ip = S["activators"][i % len(S["activators"])]
    c = http.client.HTTPConnection(ip, 8080, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, dict(r.getheaders()), r.read().decode(errors="replace")
    except (OSError, http.client.HTTPException) as e:
        return 0, {}, "%s: %s" % (type(e).__name__, e)
    finally:
        c.close()


def containers(pod, name):
    """The engine's containers of one container of a pod (every attempt)."""
    return kubelet.Docker().list({kubelet.L_RUN: C.run_id, kubelet.L_POD: NS + "/" + pod,
                                  kubelet.L_CONTAINER: name})


def daemon_logs(name):
    """The logs of every container (each attempt) of the chart's `name` pods."""
    d = kubelet.Docker()
    out = {}
    for c in d.list({kubelet.L_RUN: C.run_id, kubelet.L_CONTAINER: name}):
        out["%s#%s" % (c["Labels"][kubelet.L_POD], c["Labels"][kubelet.L_ATTEMPT])] = \
            d.logs_tail(c["Id"], lines=100000)
    return out


def channels_on(leader):
    """{activator pod: channels the controller pod `leader` took from it}."""
    text = C.pod_logs(NS, leader, "controller")
    return {p["metadata"]["name"]: text.count("connected (process %s)" % p["metadata"]["name"])
            for p in component("activator")}


def wait_channels(leader):
    """Until every channel of both activators (one per worker) is on `leader`."""
    def all_on():
        have = channels_on(leader)
        return have if all(have.get(a, 0) >= n for a, n in S["workers"].items()) else None
    try:
        return kapi.wait_for(all_on, 60, "the activators' channels on " + leader)
    except AssertionError:
        dump()
        raise


def dump():
    for name in ("controller", "activator", "events"):
        for k, v in sorted(daemon_logs(name).items()):
            print("---- %s ----\n%s" % (k, v[-4000:]), flush=True)
    print(kubectl("get", "pods,fn,lease,pvc,pv", "-n", NS, "-o", "wide", check=False).stdout)


class Load:
    """Requests to `fn` (`path`) from `clients` threads over both activator pods, until
    stopped."""

    def __init__(self, fn, path="", clients=1):
        self.fn, self.path, self.results = fn, path, []
        self.stopping = threading.Event()
        self.ts = [threading.Thread(target=self.run, args=(i,), daemon=True)
                   for i in range(clients)]
        for t in self.ts:
            t.start()

    def run(self, i):
        n = i
        while not self.stopping.is_set():
            self.results.append(call(self.fn, self.path, n, timeout=60))
            n += 1
            if len(self.ts) == 1:
                time.sleep(0.05)

    def stop(self):
        self.stopping.set()
        for t in self.ts:
            t.join(90)
        return self.results


def fast_doc(name, extra=None):
    """A Function the autoscaler keeps at one pod (a target no test reaches) and that idles
    to zero quickly."""
    scale = {"min": 0, "initial": 0, "max": 5, "target": 1000000, "window": "6s",
             "scaleToZeroGrace": "5s"}
    scale.update(extra or {})
    return {"apiVersion": "stoke.dev/v1", "kind": "Function",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"image": harness.IMAGE, "scale": scale, "readiness": {"path": "/"}}}


def apply(doc):
    return kubectl("apply", "-f", "-", input=json.dumps(doc))


def step(fn):
    """A test after which the next ones may run (each builds on the one before)."""
    def run():
        fn()
        S["passed"] = fn.__name__
    run.__name__ = fn.__name__
    return run


def passed():
    return S.pop("passed", None) is not None


def setup():
    global C
    r = subprocess.run([os.path.join(ROOT, "deploy", "k8s", "build-image.sh"),
                        "%s:%s" % STOKE_IMAGE], env=dict(os.environ, STOKE_BUILD_DIR=harness.BUILD),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    S["image_built"] = True
    C = kcluster.Cluster().start()
    C.add_node()
    C.create_namespace(NS)
    # stoke-events' volume: a `local` PersistentVolume on the node (a directory), which the
    # real PV controller binds to the StatefulSet's claim (by its class; no StorageClass
    # object, so binding is immediate).
    path = os.path.join(C.dir, "pv-events")
    os.makedirs(path)
    C.admin.call("POST", "/api/v1/persistentvolumes", {
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "stoke-events"},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                 "persistentVolumeReclaimPolicy": "Retain", "storageClassName": STORAGE_CLASS,
                 "local": {"path": path},
                 "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                     {"key": "kubernetes.io/hostname", "operator": "In",
                      "values": [C.nodes[0]]}]}]}}}}, ok=(201,))


def teardown():
    problems = stokek8s.stop_cluster(C)
    if S.get("image_built"):
        subprocess.run(["docker", "image", "rm", "-f", "%s:%s" % STOKE_IMAGE],
                       capture_output=True, timeout=120)
    assert not problems, "\n".join(problems)


@step
def test_1_install_runs_the_chart_pods_from_the_local_image():
    t0 = time.monotonic()
    r = helm("install", RELEASE, CHART, "-n", NS, "--wait", "--timeout", "5m",
             "--set", "hostNetwork=true",
             "--set", "image.repository=%s" % STOKE_IMAGE[0], "--set-string",
             "image.tag=%s" % STOKE_IMAGE[1], "--set", "image.pullPolicy=Never",
             "--set", "activator.service.port=8080",
             "--set", "events.persistence.storageClass=" + STORAGE_CLASS, check=False)
    if r.returncode != 0:
        dump()
        raise AssertionError("helm install: %s%s" % (r.stdout, r.stderr))
    log("helm install --wait: %.1f s" % (time.monotonic() - t0))
    image = "%s:%s" % STOKE_IMAGE
    for comp, sa in (("controller", "stoke-controller"), ("activator", "stoke-activator")):
        ps = component(comp)
        assert len(ps) == 2 and all(is_ready(p) for p in ps), [
            (p["metadata"]["name"], p.get("status")) for p in ps]
        for p in ps:
            assert p["spec"]["serviceAccountName"] == sa, p["spec"]
            assert p["spec"]["hostNetwork"] is True
            # Made by the ReplicaSet controller from the chart's Deployment.
            assert p["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"
            cs = p["status"]["containerStatuses"][0]
            assert cs["image"] == image and cs["ready"], cs
            # The engine ran the image built here, as the chart's user, read-only.
            (c,) = [c for c in containers(p["metadata"]["name"], comp) if c["State"] == "running"]
            info = kubelet.Docker().inspect(c["Id"])
            assert info["Config"]["Image"] == image, info["Config"]["Image"]
            assert info["Config"]["User"] == "65532:65532", info["Config"]["User"]
            assert info["HostConfig"]["ReadonlyRootfs"], info["HostConfig"]
    # stoke-events: the StatefulSet's one pod, its own ServiceAccount, its store on the claim
    # bound to the test's PersistentVolume, owned by the chart's user (fsGroup).
    (ev,) = component("events")
    assert is_ready(ev) and ev["spec"]["serviceAccountName"] == "stoke-events", ev["spec"]
    assert ev["metadata"]["ownerReferences"][0]["kind"] == "StatefulSet", ev["metadata"]
    assert ev["metadata"]["name"] == "%s-events-0" % RELEASE
    (c,) = [c for c in containers(ev["metadata"]["name"], "events") if c["State"] == "running"]
    info = kubelet.Docker().inspect(c["Id"])
    assert info["Config"]["User"] == "65532:65532" and info["HostConfig"]["ReadonlyRootfs"], info
    pvc = C.admin.get("/api/v1/namespaces/%s/persistentvolumeclaims/%s" % (NS, EVENTS_PVC))
    assert pvc["status"]["phase"] == "Bound" and pvc["spec"]["volumeName"] == "stoke-events", pvc
    db = os.path.join(C.dir, "pv-events", "events.db")
    assert os.path.exists(db) and os.stat(db).st_uid == 65532, db
    S["events_pod"] = ev["metadata"]["uid"]
    # Only the controller's ServiceAccount token is mounted.
    ctl = component("controller")[0]
    assert any(v.get("projected") for v in ctl["spec"]["volumes"]), ctl["spec"]["volumes"]
    for p in (component("activator")[0], ev):
        assert not any(v.get("projected") for v in p["spec"]["volumes"]), p["spec"]["volumes"]
    # One leader, the other follows; both activators on the leader's channel, found
    # through the controllers' headless Service.
    names = {p["metadata"]["name"] for p in component("controller")}
    holder = kapi.wait_for(lambda: (lambda h: h if h in names else None)(lease_holder()), 60,
                           "a controller pod to hold the Lease")
    S["activators"] = activators()

    def connected():
        w = {p["metadata"]["name"]: C.pod_logs(NS, p["metadata"]["name"], "activator").count(
            "connected to the controller") for p in component("activator")}
        return w if len(w) == 2 and all(w.values()) else None
    try:
        S["workers"] = kapi.wait_for(connected, 60, "both activators on the channel")
    except AssertionError:
        dump()
        raise
    wait_channels(holder)
    # The headless Service names both controller pods in the activators' /etc/hosts (the
    # stand-in's DNS): a follower may come first, and the activator passes over it.
    ips = sorted(p["status"]["podIP"] for p in component("controller"))

    def named(a):
        with open(os.path.join(C.dir, "kubelet-%s" % C.nodes[0], "pods", a["metadata"]["uid"],
                               "etc-hosts")) as f:
            return sorted(ln.split()[0] for ln in f if " stoke-controller.%s.svc " % NS in ln)
    for a in component("activator"):
        kapi.wait_for(lambda: named(a) == ips, 10, "both controllers in %s's /etc/hosts (%s)"
                      % (a["metadata"]["name"], ips))
    follower = (names - {holder}).pop()
    assert '"following: waiting for Lease' in C.pod_logs(NS, follower, "controller")
    log("leader %s, follower %s; activators %s, channels %s" % (
        holder, follower, S["activators"], S["workers"]))


@step
def test_2_readme_function_scales_from_zero_to_a_controller_pod():
    kubectl("apply", "-n", NS, "-f", EXAMPLE)
    fn = applied("hello")
    ready = [c for c in fn["status"]["conditions"] if c["type"] == "Ready"][0]
    assert ready["reason"] == "ScaledToZero", fn["status"]
    assert fn_pods("hello") == [], "pods before any request"
    t0 = time.monotonic()
    status, body = call("hello")
    took = time.monotonic() - t0
    assert status == 200, (status, body)
    (p,) = live("hello")
    assert body.strip() == "hello from %s" % p["metadata"]["name"], body
    owner = p["metadata"]["ownerReferences"]
    assert owner == [{"apiVersion": "stoke.dev/v1", "kind": "Function", "name": "hello",
                      "uid": fn["metadata"]["uid"], "controller": True,
                      "blockOwnerDeletion": True}], owner
    assert p["spec"]["serviceAccountName"] == "stoke-function", p["spec"]
    assert not p["spec"].get("hostNetwork"), "function pods stay off the host network"
    log("README's hello: first request 200 in %.0f ms from %s" % (took * 1000,
                                                                 p["metadata"]["name"]))


@step
def test_3_hundred_concurrent_requests_at_zero_one_cold_start():
    apply(fast_doc("burst"))
    applied("burst")
    assert fn_pods("burst") == []
    rv = C.admin.get("/api/v1/namespaces/%s/pods?limit=1" % NS)["metadata"]["resourceVersion"]
    n = 100
    results = harness.concurrent(n, lambda i: call("burst", "req/%d" % i, i))
    bad = [r for r in results if r[0] != 200]
    assert not bad, "%d of %d failed: %s" % (len(bad), n, bad[:3])
    names = {r[1].strip() for r in results}
    assert len(names) == 1, names
    created = stokek8s.pods_added(C, NS, "burst", rv)
    assert len(created) == 1, "pods created for %d requests at zero: %s" % (n, created)
    log("100 concurrent requests at zero over 2 activators: all 200, one pod %s" % created[0])


@step
def test_4_load_scales_up_idle_scales_to_zero():
    # The README's spec: target 100 in flight, 70 % of it: 100 clients holding a request
    # each want 2 pods.
    load = Load("hello", "delay/500", clients=100)
    try:
        most = kapi.wait_for(lambda: (lambda n: n if n >= 2 else None)(len(live("hello"))),
                             120, "load to scale hello up")
    finally:
        results = load.stop()
    bad = [r for r in results if r[0] != 200]
    assert not bad, "%d of %d failed: %s" % (len(bad), len(results), bad[:3])
    t0 = time.monotonic()
    kapi.wait_for(lambda: fn_pods("hello") == [], 300, "hello back to 0 pods")
    kapi.wait_for(lambda: function("hello")["status"].get("readyReplicas") == 0, 30,
                  "status readyReplicas 0")
    log("load: %d requests, all 200, %d pods; idle to 0 pods in %.0f s" % (
        len(results), most, time.monotonic() - t0))


@step
def test_5_helm_test_passes():
    r = helm("test", RELEASE, "-n", NS, "--timeout", "5m", check=False)
    if r.returncode != 0:
        dump()
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Phase:          Succeeded" in r.stdout, r.stdout
    assert "stoke-test-async" in r.stdout, r.stdout
    # Its hooks are gone (hook-succeeded), its Function's pods with them.
    kapi.wait_for(lambda: not [p for p in sel_pods("app.kubernetes.io/component=test")] and
                  not fn_pods("test-stoke"), 120, "helm test's pods gone")


def call_state(location, i=0, timeout=60):
    """The state of an async call, read through activator pod i (retried while stoke-events
    is not there: a new pod, the activators' next look-up of its Service)."""
    def get():
        st, _, body = request("GET", location, i)
        return json.loads(body) if st == 200 else None
    return kapi.wait_for(get, timeout, "the state of " + location)


def wait_call(location, states, timeout):
    return kapi.wait_for(lambda: (lambda st: st if st["state"] in states else None)(
        call_state(location)), timeout, "%s to be %s" % (location, states))


def events_metric(name, fn):
    """A stoke-events metric on its pod's ops port (what the ServiceMonitor scrapes)."""
    (ev,) = [p for p in component("events") if is_ready(p)]
    c = http.client.HTTPConnection(ev["status"]["podIP"], 9093, timeout=10)
    try:
        c.request("GET", "/metrics")
        text = c.getresponse().read().decode()
    finally:
        c.close()
    m = re.search(r'^%s\{function="%s"\} (\S+)$' % (name, fn), text, re.M)
    return float(m.group(1)) if m else 0.0


@step
def test_5b_async_calls_survive_the_events_pod():
    # retries 1, 24 to 36 s after the first attempt: a call failing once is still queued
    # when the pod goes and when the new one is ready (in seconds; the margin is for a
    # busy machine).
    doc = fast_doc("asy")
    doc["spec"]["async"] = {"retries": 1, "backoff": "30s"}
    apply(doc)
    applied("asy")
    loc = {}
    for i, (k, path) in enumerate((("ok", "async/0"), ("dead", "async/9"),
                                   ("later", "async/2"))):
        st, h, body = request("POST", "/fn/asy/" + path, i, {"Prefer": "respond-async"}, b"x")
        assert st == 202 and h["Location"].startswith("/_stoke/calls/"), (st, h, body)
        loc[k] = h["Location"]
    ok = wait_call(loc["ok"], ("succeeded",), 120)
    assert ok["attempts"] == 1 and ok["response"]["status"] == 200, ok
    for k in ("dead", "later"):
        st = kapi.wait_for(lambda: (lambda st: st if st["attempts"] == 1 and st["state"] ==
                                    "queued" else None)(call_state(loc[k])), 60,
                           "%s's first attempt" % k)
        assert st["response"]["status"] == 500, st
    assert events_metric("stoke_async_accepted_total", "asy") == 3
    # The pod deleted: the StatefulSet makes stoke-events-0 again, on the same claim.
    old = component("events")[0]
    t0 = time.monotonic()
    kubectl("delete", "pod", "-n", NS, old["metadata"]["name"], "--wait=false")
    new = kapi.wait_for(lambda: (lambda ps: ps[0] if len(ps) == 1 and is_ready(ps[0]) and ps[0][
        "metadata"]["uid"] != old["metadata"]["uid"] else None)(component("events")), 120,
        "a new stoke-events pod")
    took = time.monotonic() - t0
    # The store survived: the ended call reads as before, the queued ones are still queued
    # (their retry is due 24 to 36 s after their first attempt).
    after = call_state(loc["ok"], 1)
    assert after == ok, (ok, after)
    for k in ("dead", "later"):
        st = call_state(loc[k])
        assert st["state"] == "queued" and st["attempts"] == 1, (k, st, took)
    # ... and the new pod delivers them: one succeeds on its second attempt, one is dead.
    later = wait_call(loc["later"], ("succeeded",), 120)
    assert later["attempts"] == 2 and later["response"]["status"] == 200, later
    dead = wait_call(loc["dead"], ("dead",), 120)
    assert dead["attempts"] == 2 and dead["condition"] == "RetriesExhausted", dead
    assert events_metric("stoke_async_succeeded_total", "asy") == 1
    assert events_metric("stoke_async_accepted_total", "asy") == 0
    log("async: 3 calls 202; stoke-events' pod deleted, %s back in %.1f s on claim %s: the "
        "ended call read the same, the queued ones delivered by it (succeeded, dead)" % (
            new["metadata"]["name"], took, EVENTS_PVC))


@step
def test_6_leader_container_killed_then_leader_pod_deleted():
    load = Load("burst")
    try:
        before = stokek8s.steady_pods(load, "burst", live)
        # SIGKILL of the leader's container: the node restarts it (restartPolicy Always,
        # at once the first time, as a kubelet does), with the same pod name, so the same
        # identity; the Lease is its own (the process never released it).
        old = lease_holder()
        (c,) = [c for c in containers(old, "controller") if c["State"] == "running"]
        kubelet.Docker().kill(c["Id"], "SIGKILL")
        n = len(load.results)

        def back():
            p = C.admin.get("/api/v1/namespaces/%s/pods/%s" % (NS, old))
            cs = p["status"]["containerStatuses"][0]
            return p if cs["restartCount"] >= 1 and cs["ready"] else None
        kapi.wait_for(back, 60, "the killed leader's container restarted")
        holder1 = kapi.wait_for(lambda: (lambda h: h if h in {
            p["metadata"]["name"] for p in component("controller")} else None)(lease_holder()),
            40, "a controller to hold the Lease")
        kapi.wait_for(lambda: len(load.results) >= n + 20, 60, "requests after the kill")
        wait_channels(holder1)
        # The leader's pod deleted: it releases the Lease on SIGTERM; the other pod takes it
        # (the ReplicaSet's replacement may win the race; either is not the deleted one).
        t0 = time.monotonic()
        kubectl("delete", "pod", "-n", NS, holder1, "--wait=false")
        holder2 = kapi.wait_for(lambda: (lambda h: h if h and h != holder1 and h in {
            p["metadata"]["name"] for p in component("controller")} else None)(lease_holder()),
            60, "another controller pod to hold the Lease")
        took = time.monotonic() - t0
        n = len(load.results)
        kapi.wait_for(lambda: len(load.results) >= n + 20, 60, "requests after the takeover")
        wait_channels(holder2)
        kapi.wait_for(lambda: len(component("controller")) == 2 and all(
            is_ready(p) for p in component("controller")), 90, "two ready controllers again")
    finally:
        results = load.stop()
    bad = [r for r in results if r[0] != 200]
    if bad:
        dump()
    assert not bad, "%d of %d failed: %s" % (len(bad), len(results), bad[:3])
    after = [p["metadata"]["name"] for p in live("burst")]
    assert after == before, (before, after)
    log("leader %s SIGKILLed: restarted in place, Lease held by %s; leader pod %s deleted: "
        "Lease taken by %s %.1f s later; %d requests, all 200, burst's pod %s kept" % (
            old, holder1, holder1, holder2, took, len(results), before[0]))


@step
def test_7_cold_start_median_of_10():
    times = []
    for i in range(10):
        name = "cold-%d" % i
        apply(fast_doc(name))
        applied(name)
        assert fn_pods(name) == []
        t0 = time.monotonic()
        status, body = call(name, i=i)
        times.append(time.monotonic() - t0)
        assert status == 200, (status, body)
    times.sort()
    print("cold start from zero through the chart's pods (activator pod -> controller pod -> "
          "function pod, kubelet stand-in), first request to 200, 10 functions: median %.0f ms,"
          " min %.0f ms, max %.0f ms" % (statistics.median(times) * 1000, times[0] * 1000,
                                         times[-1] * 1000), flush=True)


@step
def test_8_delete_function_removes_its_pods():
    status, body = call("hello")
    assert status == 200, (status, body)
    (pod,) = [p["metadata"]["name"] for p in live("hello")]
    kubectl("delete", "function", "-n", NS, "hello", "--wait=false")
    # The garbage collector deletes the pods the Function owns.
    kapi.wait_for(lambda: C.admin.request("GET", "/api/v1/namespaces/%s/pods/%s" % (
        NS, pod))[0] == 404 and fn_pods("hello") == [], 90, "hello's pod %s gone" % pod)
    kubectl("delete", "function", "-n", NS, "--all", "--wait=false")
    kapi.wait_for(lambda: sel_pods("stoke.dev/managed=true") == [], 120,
                  "every function pod gone")


@step
def test_9_no_forbidden_then_uninstall_leaves_nothing():
    # A permission the chart lacks shows as a 403 in the daemons' logs: the
    # API server's Status says "... is forbidden: ...", the client maps it
    # to EPERM, and an answer without JSON is logged "HTTP 403". (Not any
    # " 403": a cold start of 403 ms is no refusal.)
    for name in ("controller", "activator", "events"):
        for k, v in daemon_logs(name).items():
            bad = [x for x in v.splitlines() if "forbidden" in x.lower() or
                   '"err":"EPERM"' in x or "HTTP 403" in x]
            assert not bad, "%s:\n%s" % (k, "\n".join(bad[:10]))
    helm("uninstall", RELEASE, "-n", NS, "--wait", "--timeout", "3m")
    kapi.wait_for(lambda: C.admin.get("/api/v1/namespaces/%s/pods" % NS)["items"] == [], 90,
                  "no pods in %s" % NS)
    kapi.wait_for(lambda: not kubelet.Docker().list({kubelet.L_RUN: C.run_id}), 60,
                  "no containers of the run")
    # The StatefulSet's claim is kept (its calls with it), as the chart says; deleting it frees
    # the volume.
    pvc = C.admin.get("/api/v1/namespaces/%s/persistentvolumeclaims/%s" % (NS, EVENTS_PVC))
    assert pvc["status"]["phase"] == "Bound", pvc
    kubectl("delete", "pvc", "-n", NS, EVENTS_PVC)
    kubectl("delete", "pv", "stoke-events")


if __name__ == "__main__":
    harness.run_tests(dict(globals()), setup=setup, teardown=teardown, after_each=passed)
