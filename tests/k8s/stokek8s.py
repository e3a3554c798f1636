"""What the Kubernetes end-to-end tests share: a real kube-apiserver (tests/k8s/cluster.py)
with one node of the kubelet stand-in, the Function CRD, the chart's ServiceAccounts and
Role (rendered with helm), stoke-controller as a host process with `--backend kubernetes`
under the chart's controller ServiceAccount, leader-elected on the chart's Lease, a standby
controller following it, and one stoke-activator on the token-authenticated channel.

Test files import this module, call setup() (with their own API server flags when they need
them) and teardown(), and reach the cluster as stokek8s.C.
"""

import http.client
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
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

BUILD = harness.BUILD
IMAGE = harness.IMAGE
NS = "stoke-e2e"
RELEASE = "stoke"  # the chart's names: stoke-controller (SA, Role, Lease), stoke-function
CRD_FILE = os.path.join(ROOT, "charts", "stoke", "files", "functions.stoke.dev.yaml")
C = None
S = {"killed": []}  # processes, ports, files


def log(m):
    print("test: " + m, file=sys.stderr, flush=True)


def fn_doc(name, extra_spec=None):
    spec = {"image": IMAGE,
            # The pod's own network namespace (a bridge pod): listen on every address.
            "env": {"BIND_ADDR": "0.0.0.0"},
            "scale": {"min": 0, "initial": 0, "max": 5, "window": "6s",
                      "scaleToZeroGrace": "5s"},
            "readiness": {"path": "/"}}
    spec.update(extra_spec or {})
    return {"apiVersion": "stoke.dev/v1", "kind": "Function",
            "metadata": {"name": name, "namespace": NS}, "spec": spec}


def kubectl(*args, check=True, input=None):
    return C.kubectl(*args, check=check, input=input)


def apply(doc, check=True):
    return kubectl("apply", "-f", "-", input=json.dumps(doc), check=check)


def pods(fn=None):
    sel = "stoke.dev/managed=true,stoke.dev/instance=%s" % RELEASE
    if fn:
        sel += ",stoke.dev/function=" + fn
    path = "/api/v1/namespaces/%s/pods?labelSelector=%s" % (NS, urllib.parse.quote(sel))
    return C.admin.get(path)["items"]


def live_pods(fn):
    return [p for p in pods(fn) if not p["metadata"].get("deletionTimestamp")]


def function(name):
    return C.admin.get("/apis/stoke.dev/v1/namespaces/%s/functions/%s" % (NS, name))


def call(fn, timeout=90):
    c = http.client.HTTPConnection("127.0.0.1", S["port"], timeout=timeout)
    try:
        c.request("GET", "/fn/%s/" % fn)
        r = c.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        c.close()


def ctl_log(path=None):
    with open(path or S["ctl_log"], "rb") as f:
        return f.read().decode(errors="replace")


def act_log():
    return ctl_log(S["act_log"])


def wait_log(needle, timeout):
    def seen():
        if S["ctl"].poll() is not None:
            raise AssertionError("controller exited %s:\n%s" % (S["ctl"].returncode,
                                                                ctl_log()[-6000:]))
        return needle in ctl_log()
    try:
        kapi.wait_for(seen, timeout, "controller log: " + needle)
    except AssertionError:
        print("---- controller log ----\n" + ctl_log()[-6000:], flush=True)
        raise


def controller_kubeconfig():
    """A kubeconfig with a token of the chart's controller ServiceAccount: the controller
    has exactly the chart's Role."""
    r = kubectl("create", "token", "-n", NS, "%s-controller" % RELEASE, "--duration=2h")
    token = r.stdout.strip()
    path = os.path.join(S["tmp"], "controller.kubeconfig")
    with open(path, "w") as f:
        f.write("""apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {server: "%s", certificate-authority: "%s"}
users:
- name: u
  user: {token: "%s"}
contexts:
- name: x
  context: {cluster: c, user: u, namespace: %s}
current-context: x
""" % (C.server, C.ca, token, NS))
    return path


def start_controller(identity):
    """A controller as `identity`, its admin API (read-only on Kubernetes) on a unix socket
    of its own: admin_api(p, ...)."""
    S["starts"] = S.get("starts", 0) + 1
    logpath = os.path.join(S["tmp"], "controller-%d-%s.log" % (S["starts"], identity))
    sock = os.path.join(S["tmp"], "admin-%d.sock" % S["starts"])
    argv = [os.path.join(BUILD, "stoke-controller"), "--backend", "kubernetes",
            "--kubeconfig", S["kubeconfig"], "--namespace", NS,
            "--instance", RELEASE, "--listen", "127.0.0.1:%d" % S["ctl_port"],
            "--ops-listen", "127.0.0.1:%d" % harness.free_port(), "--admin-socket", sock,
            "--pod-service-account", "%s-function" % RELEASE,
            "--url-prefix", "http://%s-activator.%s.svc:80/fn/" % (RELEASE, NS),
            "--ready-timeout", "60s", "--leader-elect", "--lease-name",
            "%s-controller" % RELEASE, "--lease-duration", "15s", "--identity", identity,
            "--channel-token-file", S["token"], "--log-level", "debug"]
    p = subprocess.Popen(argv, stdout=open(logpath, "wb"), stderr=subprocess.STDOUT,
                         start_new_session=True)
    harness.record_pid(p.pid)
    S.setdefault("admin", {})[p.pid] = sock
    return p, logpath


def admin_api(p, method, path, body=None, timeout=60):
    """One call to controller `p`'s admin API: (status, headers, text)."""
    c = harness.UnixHTTPConnection(S["admin"][p.pid], timeout=timeout)
    try:
        c.request(method, path, body=body)
        r = c.getresponse()
        return r.status, dict(r.getheaders()), r.read().decode(errors="replace")
    finally:
        c.close()


def setup(apiserver_args=(), standby=True):
    """The cluster and both daemons; `apiserver_args` go to kube-apiserver; without
    `standby` only the leader runs."""
    global C
    C = kcluster.Cluster(apiserver_args=apiserver_args).start()
    C.add_node()
    C.create_namespace(NS)
    S["tmp"] = tempfile.mkdtemp(prefix="stoke-kube-e2e-")
    kubectl("apply", "--server-side", "-f", CRD_FILE)
    kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/functions.stoke.dev")
    # The chart's ServiceAccounts and the controller's Role, as helm renders them.
    r = subprocess.run([os.path.join(C.bin, "helm"), "template", RELEASE,
                        os.path.join(ROOT, "charts", "stoke"), "-n", NS,
                        "--show-only", "templates/serviceaccounts.yaml",
                        "--show-only", "templates/rbac.yaml"],
                       env=C.env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    kubectl("apply", "-n", NS, "-f", "-", input=r.stdout)
    S["ctl_port"] = harness.free_port()
    S["port"] = harness.free_port()
    S["act_log"] = os.path.join(S["tmp"], "activator.log")
    S["kubeconfig"] = controller_kubeconfig()
    # The channel is TCP, as between pods: both daemons need its token.
    S["token"] = os.path.join(S["tmp"], "channel-token")
    with open(S["token"], "w") as f:
        f.write(secrets.token_hex(24) + "\n")
    S["ctl"], S["ctl_log"] = start_controller("e2e-1")
    S["act"] = subprocess.Popen(
        [os.path.join(BUILD, "stoke-activator"), "--listen", "127.0.0.1:%d" % S["port"],
         "--ops-listen", "127.0.0.1:%d" % harness.free_port(),
         "--controller", "127.0.0.1:%d" % S["ctl_port"], "--channel-token-file", S["token"],
         "--workers", "1"],  # one channel: test_7 waits for it to come back
        stdout=open(S["act_log"], "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    wait_log('"ready: Functions of namespace %s' % NS, 60)
    if not standby:
        return
    # A second controller on the same channel address: it follows (and does not
    # listen) until the leader's Lease is gone.
    S["standby"], S["standby_log"] = start_controller("e2e-2")
    kapi.wait_for(lambda: '"following: waiting for Lease' in ctl_log(S["standby_log"]), 30,
                  "the standby to follow")


def teardown():
    problems = []
    for p in [S.get(n) for n in ("act", "ctl", "standby")] + S["killed"]:
        if not p:
            continue
        name = p.args[0] if isinstance(p.args, list) else str(p.args)
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                problems.append("%s did not stop on SIGTERM" % name)
        if p.returncode != 0 and p not in S["killed"]:
            problems.append("%s exited %s" % (name, p.returncode))
    # Sanitizer builds (STOKE_BUILD_DIR=build-asan) report into the daemons' logs.
    for f in sorted(os.listdir(S.get("tmp", "/nonexistent"))) if S.get("tmp") else []:
        if f.endswith(".log"):
            text = ctl_log(os.path.join(S["tmp"], f))
            if "Sanitizer" in text or "runtime error:" in text:
                problems.append("%s:\n%s" % (f, text[-4000:]))
    problems += stop_cluster(C)
    if S.get("tmp") and not os.environ.get("STOKE_K8S_KEEP"):
        shutil.rmtree(S["tmp"], ignore_errors=True)  # it holds a token
    assert not problems, "\n".join(problems)


def stop_cluster(c):
    """Stops cluster `c` (None: nothing to do); what it left behind, as problems."""
    if not c:
        return []
    c.stop()
    left = kubelet.Docker().list({kubelet.L_RUN: c.run_id})
    return ["containers left: %s" % [x["Names"] for x in left]] if left else []


def pods_added(c, ns, fn, rv, seconds=2):
    """The names of `fn`'s pods created in `ns` since resourceVersion `rv` (a watch of
    `seconds`)."""
    path = "/api/v1/namespaces/%s/pods?labelSelector=%s" % (
        ns, urllib.parse.quote("stoke.dev/function=" + fn))
    return [ev["object"]["metadata"]["name"] for ev in c.admin.watch_stream(
        path, rv, timeout_seconds=seconds) if ev["type"] == "ADDED"]


class Load:
    """Requests to `fn` through the activator in a loop, in a thread, until stopped."""

    def __init__(self, fn):
        import threading
        self.fn, self.results, self.stopping = fn, [], threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.stopping.is_set():
            try:
                self.results.append(call(self.fn, timeout=60))
            except OSError as e:
                self.results.append((0, str(e)))
            time.sleep(0.05)

    def stop(self):
        self.stopping.set()
        self.t.join(90)
        return self.results


def steady_pods(load, fn, live=None):
    """The names of `fn`'s one live pod (`live(fn)`, default live_pods) once `load` has had
    answers from it for 2 s or more (a pod the autoscaler scaled to zero as the load came,
    its deletion maybe not through yet, does not count: the autoscaler sees the load a
    second later)."""
    def steady():
        ps = [p["metadata"]["name"] for p in (live or live_pods)(fn)]
        return ps if len(ps) == 1 and len(load.results) >= 40 and all(
            r[0] == 200 and ps[0] in r[1] for r in load.results[-3:]) else None
    return kapi.wait_for(steady, 60, "one steady pod of %s under load" % fn)


def cold_name(i):
    """Names of the longest kind (63 characters): the pod's name is cut to fit."""
    return ("cold-%d-" % i).ljust(63, "x")
