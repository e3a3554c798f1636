"""Smoke test of the k8s test cluster (tests/k8s/README.md): the real kube-apiserver, etcd and
kube-controller-manager built by build.sh, and the kubelet stand-in running pods on the
local Docker engine. Shows that what the stoke tests lean on is real: Deployments become
ReplicaSets and Pods (controller-manager), pods run and answer on their pod IP (bridge pods
through published ports, hostNetwork pods on their own loopback address), ownerReference
cascades delete dependents (garbage collector), and a pod's mounted token is a real,
pod-bound service-account token that RBAC judges.

Run: python3 tests/k8s/test_cluster.py [test_name ...]   (ctest -L k8s)
"""

import http.client
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "e2e"))
import cluster as kcluster  # noqa: E402
import harness  # noqa: E402
import kapi  # noqa: E402
import kubelet  # noqa: E402

IMAGE = harness.IMAGE
NS = "smoke"
C = None  # the cluster
RESTRICTED = {"runAsNonRoot": True, "readOnlyRootFilesystem": True,
              "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
              "seccompProfile": {"type": "RuntimeDefault"}}


def setup():
    global C
    C = kcluster.Cluster().start()
    C.add_node()
    C.create_namespace(NS)


def teardown():
    run = C.run_id
    C.stop()
    left = kubelet.Docker().list({kubelet.L_RUN: run})
    assert not left, "containers left after stop: %s" % [c["Names"] for c in left]


def api(path):
    return "/api/v1/namespaces/%s/%s" % (NS, path)


def pods(selector):
    return C.admin.get(api("pods?labelSelector=" + urllib.parse.quote(selector)))["items"]


def is_ready(p):
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in p.get("status", {}).get("conditions", []))


def wait_ready_pod(selector, timeout=90):
    def ready():
        ps = [p for p in pods(selector) if not p["metadata"].get("deletionTimestamp")]
        return ps[0] if len(ps) == 1 and is_ready(ps[0]) else None
    return kapi.wait_for(ready, timeout, "a ready pod %s" % selector)


def get(ip, port, path="/"):
    c = http.client.HTTPConnection(ip, port, timeout=10)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def engine_containers(uid):
    return kubelet.Docker().list({kubelet.L_UID: uid})


def hello_container(env, port=8080, probe=True):
    c = {"name": "hello", "image": IMAGE, "imagePullPolicy": "Never",
         "env": env, "ports": [{"containerPort": port, "name": "http"}],
         "securityContext": RESTRICTED,
         "resources": {"limits": {"memory": "64Mi", "cpu": "500m"}}}
    if probe:
        c["readinessProbe"] = {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1}
    return c


def test_tools_talk_to_the_api_server():
    nodes = C.kubectl("get", "nodes", "-o", "jsonpath={.items[*].metadata.name}").stdout
    assert nodes.split() == C.nodes, nodes
    v = json.loads(C.kubectl("version", "-o", "json").stdout)
    assert v["serverVersion"]["gitVersion"] == "v1.37.2", v
    r = subprocess.run([os.path.join(C.bin, "helm"), "version", "--short"], env=C.env(),
                       stdout=subprocess.PIPE, text=True, check=True)
    assert r.stdout.startswith("v3.21.4"), r.stdout


def test_deployment_pod_serves_on_its_pod_ip():
    dep = {"apiVersion": "apps/v1", "kind": "Deployment",
           "metadata": {"name": "hello", "labels": {"app": "hello"}},
           "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "hello"}},
                    "template": {"metadata": {"labels": {"app": "hello"}},
                                 "spec": {"containers": [hello_container([
                                     {"name": "PORT", "value": "8080"},
                                     {"name": "BIND_ADDR", "value": "0.0.0.0"}])]}}}}
    C.admin.create("/apis/apps/v1/namespaces/%s/deployments" % NS, dep)
    p = wait_ready_pod("app=hello")
    ip = p["status"]["podIP"]
    assert ip.startswith("127.") and ip != "127.0.0.1", ip
    assert p["status"]["hostIP"] == "127.0.0.1"
    # Created by the ReplicaSet controller, owned by the ReplicaSet the Deployment owns.
    owner = p["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "ReplicaSet" and owner["controller"], owner
    st, body = get(ip, 8080)
    assert st == 200, (st, body)
    cs = p["status"]["containerStatuses"][0]
    assert cs["ready"] and cs["restartCount"] == 0 and "running" in cs["state"], cs
    # The restricted security context reached the engine.
    ids = [c["Id"] for c in engine_containers(p["metadata"]["uid"])
           if c["Labels"][kubelet.L_CONTAINER] == "hello"]
    assert len(ids) == 1, ids
    hc = kubelet.Docker().inspect(ids[0])["HostConfig"]
    assert hc["ReadonlyRootfs"] and hc["CapDrop"] == ["ALL"], hc
    assert "no-new-privileges:true" in hc["SecurityOpt"], hc["SecurityOpt"]
    assert hc["Memory"] == 64 * 2 ** 20 and hc["NanoCpus"] == 5 * 10 ** 8, hc
    kapi.wait_for(lambda: C.admin.get("/apis/apps/v1/namespaces/%s/deployments/hello" % NS)[
        "status"].get("availableReplicas") == 1, 60, "the Deployment to be available")


def test_host_network_pod_binds_its_pod_ip():
    port = harness.free_port()
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "hostnet", "labels": {"app": "hostnet"}},
           "spec": {"hostNetwork": True, "terminationGracePeriodSeconds": 5,
                    "containers": [hello_container([
                        {"name": "PORT", "value": str(port)},
                        {"name": "BIND_ADDR", "valueFrom": {"fieldRef": {
                            "fieldPath": "status.podIP"}}}], port=port)]}}
    C.admin.create(api("pods"), pod)
    p = wait_ready_pod("app=hostnet")
    ip = p["status"]["podIP"]
    st, body = get(ip, port)
    assert st == 200, (st, body)
    # Graceful deletion: the stand-in stops the container and finishes the deletion.
    C.admin.delete(api("pods/hostnet"))
    kapi.wait_for(lambda: C.admin.request("GET", api("pods/hostnet"))[0] == 404, 60,
                  "the pod to be gone")
    kapi.wait_for(lambda: not engine_containers(p["metadata"]["uid"]), 30,
                  "its container to be removed")


def test_owner_deleted_dependents_are_garbage_collected():
    # A ConfigMap owns a Pod: deleting the ConfigMap makes the garbage collector delete it.
    owner = C.admin.create(api("configmaps"), {"apiVersion": "v1", "kind": "ConfigMap",
                                               "metadata": {"name": "owner"}})
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "owned", "labels": {"app": "owned"}, "ownerReferences": [{
               "apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
               "uid": owner["metadata"]["uid"]}]},
           "spec": {"terminationGracePeriodSeconds": 5,
                    "containers": [hello_container([{"name": "BIND_ADDR",
                                                     "value": "0.0.0.0"}])]}}
    C.admin.create(api("pods"), pod)
    p = wait_ready_pod("app=owned")
    C.admin.delete(api("configmaps/owner"))
    kapi.wait_for(lambda: not pods("app=owned"), 90, "the owned pod to be collected")
    kapi.wait_for(lambda: not engine_containers(p["metadata"]["uid"]), 30,
                  "its containers to be removed")
    # The Deployment's cascade: ReplicaSet and pods go with it.
    if C.admin.request("GET", "/apis/apps/v1/namespaces/%s/deployments/hello" % NS)[0] == 200:
        C.admin.delete("/apis/apps/v1/namespaces/%s/deployments/hello" % NS)
        kapi.wait_for(lambda: not C.admin.get("/apis/apps/v1/namespaces/%s/replicasets" % NS)[
            "items"] and not pods("app=hello"), 90, "the Deployment's dependents to go")


def read_in_container(cid, path):
    """A file as the container sees it, through the engine's archive API."""
    st, _ = None, None
    d = kubelet.Docker()
    c = kubelet._UnixConn(d.sock, 30)
    try:
        c.request("GET", "/containers/%s/archive?path=%s" % (cid, urllib.parse.quote(path)))
        r = c.getresponse()
        data = r.read()
        st = r.status
    finally:
        c.close()
    assert st == 200, (st, data[:200])
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        m = t.next()
        if m.issym():  # follow one link inside the same directory
            return read_in_container(cid, os.path.join(os.path.dirname(path), m.linkname))
        return t.extractfile(m).read()


def test_pod_token_is_real_and_rbac_judges_it():
    C.admin.create(api("serviceaccounts"), {"apiVersion": "v1", "kind": "ServiceAccount",
                                            "metadata": {"name": "nobody"}})
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "tok", "labels": {"app": "tok"}},
           "spec": {"serviceAccountName": "nobody", "terminationGracePeriodSeconds": 5,
                    "containers": [hello_container([{"name": "BIND_ADDR",
                                                     "value": "0.0.0.0"}])]}}
    C.admin.create(api("pods"), pod)
    p = wait_ready_pod("app=tok")
    cid = p["status"]["containerStatuses"][0]["containerID"].replace("docker://", "")
    sa = kubelet.SA_DIR
    token = read_in_container(cid, sa + "/token").decode()
    assert read_in_container(cid, sa + "/namespace").decode() == NS
    with open(C.ca, "rb") as f:
        assert read_in_container(cid, sa + "/ca.crt") == f.read()
    as_pod = kapi.Client(C.server, C.ca, token=token)
    st, body = as_pod.request("GET", api("pods"))
    assert st == 403, (st, body)
    assert "system:serviceaccount:%s:nobody" % NS in body["message"], body
    # Granted by RBAC, the same token may.
    C.admin.create("/apis/rbac.authorization.k8s.io/v1/namespaces/%s/roles" % NS, {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "pod-reader"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]})
    C.admin.create("/apis/rbac.authorization.k8s.io/v1/namespaces/%s/rolebindings" % NS, {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "nobody-reads"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                    "name": "pod-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "nobody", "namespace": NS}]})
    kapi.wait_for(lambda: as_pod.request("GET", api("pods"))[0] == 200, 30,
                  "the RoleBinding to take effect")
    # The token is bound to the pod: once the pod is gone it is refused.
    C.admin.delete(api("pods/tok"))
    kapi.wait_for(lambda: C.admin.request("GET", api("pods/tok"))[0] == 404, 60,
                  "the pod to be gone")
    kapi.wait_for(lambda: as_pod.request("GET", api("pods"))[0] == 401, 30,
                  "the pod's token to be refused")


def test_env_volumes_services_and_probes():
    C.admin.create(api("secrets"), {"apiVersion": "v1", "kind": "Secret",
                                    "metadata": {"name": "s"}, "stringData": {"greet": "hi"}})
    C.admin.create(api("configmaps"), {"apiVersion": "v1", "kind": "ConfigMap",
                                       "metadata": {"name": "cm"},
                                       "data": {"who": "world", "file.txt": "content"}})
    C.admin.create(api("services"), {"apiVersion": "v1", "kind": "Service",
                                     "metadata": {"name": "feat"},
                                     "spec": {"selector": {"app": "feat"},
                                              "ports": [{"port": 8080, "targetPort": 8080}]}})
    ctr = hello_container([
        {"name": "PORT", "value": "8080"}, {"name": "BIND_ADDR", "value": "0.0.0.0"},
        {"name": "WHO", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "who"}}},
        {"name": "GREETING", "value": "$(SECRET_greet) $(WHO) in $(NS)"},
        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}])
    # $(NS) is defined after GREETING: left as it is, as the kubelet does.
    ctr["envFrom"] = [{"secretRef": {"name": "s"}, "prefix": "SECRET_"}]
    ctr["volumeMounts"] = [{"name": "cfg", "mountPath": "/cfg"},
                           {"name": "scratch", "mountPath": "/scratch"}]
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "feat", "labels": {"app": "feat"}},
           "spec": {"terminationGracePeriodSeconds": 5, "containers": [ctr],
                    "volumes": [{"name": "cfg", "configMap": {"name": "cm"}},
                                {"name": "scratch", "emptyDir": {}}]}}
    C.admin.create(api("pods"), pod)
    p = wait_ready_pod("app=feat")
    ip = p["status"]["podIP"]
    st, body = get(ip, 8080)
    assert st == 200 and body.startswith(b"hi world in $(NS) from "), (st, body)
    cid = p["status"]["containerStatuses"][0]["containerID"].replace("docker://", "")
    assert read_in_container(cid, "/cfg/file.txt") == b"content"
    # The Service names the ready pod in every pod's /etc/hosts.
    names = "feat feat.%s feat.%s.svc feat.%s.svc.cluster.local" % (NS, NS, NS)

    def hosts_has_service():
        return ("%s\t%s" % (ip, names)) in read_in_container(cid, "/etc/hosts").decode()
    kapi.wait_for(hosts_has_service, 30, "the Service in /etc/hosts")

    # A liveness probe that fails: the container is killed and restarted.
    live = hello_container([{"name": "BIND_ADDR", "value": "0.0.0.0"}], probe=False)
    live["livenessProbe"] = {"tcpSocket": {"port": 9}, "periodSeconds": 1,
                             "failureThreshold": 1}
    C.admin.create(api("pods"), {"apiVersion": "v1", "kind": "Pod",
                                 "metadata": {"name": "live", "labels": {"app": "live"}},
                                 "spec": {"terminationGracePeriodSeconds": 2,
                                          "containers": [live]}})

    def restarted():
        cs = (C.admin.get(api("pods/live"))["status"].get("containerStatuses") or [{}])[0]
        return cs.get("restartCount", 0) >= 1 and "terminated" in cs.get("lastState", {}) \
            and cs
    cs = kapi.wait_for(restarted, 60, "the liveness probe to restart the container")
    assert "liveness probe failed" in cs["lastState"]["terminated"].get("message", ""), cs

    # A container that fails with restartPolicy Never: phase Failed, its exit code and log.
    bad = hello_container([{"name": "PORT", "value": "0"}], probe=False)
    bad["terminationMessagePolicy"] = "FallbackToLogsOnError"
    C.admin.create(api("pods"), {"apiVersion": "v1", "kind": "Pod",
                                 "metadata": {"name": "bad"},
                                 "spec": {"restartPolicy": "Never", "containers": [bad]}})
    p = kapi.wait_for(lambda: (lambda p: p["status"].get("phase") == "Failed" and p)(
        C.admin.get(api("pods/bad"))), 60, "the pod to fail")
    t = p["status"]["containerStatuses"][0]["state"]["terminated"]
    assert t["exitCode"] != 0 and t["reason"] == "Error", t
    assert "PORT must be 1..65535" in t.get("message", ""), t
    for name in ("feat", "live", "bad"):
        C.admin.delete(api("pods/" + name))


def test_kill_9_of_the_test_leaves_nothing():
    # A child test process starts its own cluster, node and pod, and is killed -9: the
    # control plane dies with it (PDEATHSIG) and the stand-in removes its containers.
    script = r"""
import json, os, sys
sys.path.insert(0, %r)
import cluster, kapi
c = cluster.Cluster().start()
c.add_node()
c.admin.create("/api/v1/namespaces/default/pods", {"apiVersion": "v1", "kind": "Pod",
    "metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": %r,
    "env": [{"name": "BIND_ADDR", "value": "0.0.0.0"}], "ports": [{"containerPort": 8080}]}]}})
kapi.wait_for(lambda: c.admin.get("/api/v1/namespaces/default/pods/p")["status"].get("phase")
              == "Running", 90, "running")
print(json.dumps({"run": c.run_id, "dir": c.dir,
                  "pids": [p.pid for p in c.procs.values()]}), flush=True)
sys.stdin.read()
""" % (HERE, IMAGE)
    child = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        info = json.loads(child.stdout.readline())
        assert kubelet.Docker().list({kubelet.L_RUN: info["run"]}), "no containers ran"
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()

    def gone():
        alive = [p for p in info["pids"] if os.path.exists("/proc/%d" % p) and
                 open("/proc/%d/stat" % p).read().split()[2] != "Z"]
        return not alive and not kubelet.Docker().list({kubelet.L_RUN: info["run"]})
    try:
        kapi.wait_for(gone, 60, "the killed test's processes and containers to go")
    finally:
        kcluster.remove_run_containers(info["run"])
        import shutil
        shutil.rmtree(info["dir"], ignore_errors=True)


if __name__ == "__main__":
    harness.run_tests(dict(globals()), setup=setup, teardown=teardown)
