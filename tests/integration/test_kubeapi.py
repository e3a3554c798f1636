"""Runs tests/integration/test_kubeapi.c (the C Kubernetes client, stoke/kube.h) against a real
kube-apiserver and etcd built from source (tests/k8s/build.sh), started by tests/k8s/cluster.py.

The C program talks to the API server through a TCP proxy here, so this driver can cut its
connections. The API server keeps no watch cache for configmaps
(--watch-cache-sizes=configmaps#0), so a watch of configmaps from a resourceVersion that etcd
compacted away answers 410 Gone, as it would after a long disconnection; other resources (the
test's Widgets) keep the cache, which sends watch bookmarks. When the program prints "PARTITION <rv>", the driver cuts and blocks the proxy,
deletes/changes/adds configmaps the program's informer watches, compacts etcd to its current
revision, unblocks, and answers "GO". On "BLOCK" it cuts and blocks the proxy and adds a
configmap; on "UNBLOCK" it lets connections through again; each answered "GO".

For pod logs it starts a kubelet stand-in node (tests/k8s/kubelet.py: the API server's
pods/log reaches its containerLogs) running a pod of the example image (deploy/build-example.sh)
whose container logs a "listening" line, and a Node "ghost" whose kubelet port nothing listens
on, with a pod bound to it.

Needs the binaries: it fails (never skips) when they are missing; `tests/k8s/build.sh` builds
them. Environment: STOKE_BUILD_DIR (the build with tests/test_kubeapi), STOKE_K8S_HARNESS (default
tests/k8s of this tree).
"""

import base64
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HARNESS = os.environ.get("STOKE_K8S_HARNESS", os.path.join(ROOT, "tests", "k8s"))
BUILD = os.environ.get("STOKE_BUILD_DIR", os.path.join(ROOT, "build"))


def die(msg):
    print("test_kubeapi.py: FAIL: " + msg, file=sys.stderr, flush=True)
    sys.exit(1)


class Proxy:
    """TCP forwarder 127.0.0.1:port -> target; cut() closes every connection and refuses new
    ones until unblock()."""

    def __init__(self, target_port):
        self.target = target_port
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.port = self.lsock.getsockname()[1]
        self.lock = threading.Lock()
        self.conns = []
        self.blocked = False
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            with self.lock:
                if self.blocked:
                    c.close()
                    continue
                try:
                    u = socket.create_connection(("127.0.0.1", self.target), timeout=5)
                except OSError:
                    c.close()
                    continue
                u.settimeout(None)
                self.conns += [c, u]
            threading.Thread(target=self._pump, args=(c, u), daemon=True).start()
            threading.Thread(target=self._pump, args=(u, c), daemon=True).start()

    @staticmethod
    def _pump(a, b):
        try:
            while True:
                d = a.recv(65536)
                if not d:
                    break
                b.sendall(d)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self):
        with self.lock:
            self.blocked = True
            for s in self.conns:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            n = len(self.conns) // 2
            self.conns = []
        return n

    def unblock(self):
        with self.lock:
            self.blocked = False

    def close(self):
        self.closed = True
        self.cut()
        self.lsock.close()


def etcd_post(cluster, path, body):
    req = urllib.request.Request(cluster.etcd_url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=10).read())


def compact(cluster):
    """Compacts etcd to its current revision: every older resourceVersion is gone."""
    rev = etcd_post(cluster, "/v3/kv/range",
                    {"key": base64.b64encode(b"/").decode()})["header"]["revision"]
    etcd_post(cluster, "/v3/kv/compaction", {"revision": int(rev), "physical": True})
    return rev


def main():
    exe = os.path.join(BUILD, "tests", "test_kubeapi")
    if not os.access(exe, os.X_OK):
        die("%s is not built" % exe)
    if not os.path.exists(os.path.join(HARNESS, "cluster.py")):
        die("no Kubernetes test harness at %s (tests/k8s/cluster.py); set STOKE_K8S_HARNESS"
            % HARNESS)
    bindir = subprocess.run([os.path.join(HARNESS, "build.sh"), "--bindir"], check=True,
                            stdout=subprocess.PIPE, text=True).stdout.strip().splitlines()[-1]
    missing = [b for b in ("etcd", "kube-apiserver", "kube-controller-manager")
               if not os.access(os.path.join(bindir, b), os.X_OK)]
    if missing:
        die("the Kubernetes binaries %s are missing in %s: build them with tests/k8s/build.sh "
            "(from source, about an hour the first time)" % (", ".join(missing), bindir))
    sys.path.insert(0, HARNESS)
    import cluster as k8s  # noqa: E402
    # Checked above; a test never starts an hour-long build.
    k8s.bindir = lambda build=True: bindir

    c = k8s.Cluster(apiserver_args=["--watch-cache-sizes=configmaps#0"])
    proxy = None
    proc = None
    try:
        c.start()
        proxy = Proxy(c.api_port)
        ns = "stoke-kube-%d" % os.getpid()
        c.create_namespace(ns)
        a = c.admin
        # A CRD with a status subresource.
        a.create("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", {
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.test.stoke.dev"},
            "spec": {"group": "test.stoke.dev", "scope": "Namespaced",
                     "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
                     "versions": [{"name": "v1", "served": True, "storage": True,
                                   "subresources": {"status": {}},
                                   "schema": {"openAPIV3Schema": {
                                       "type": "object",
                                       "properties": {
                                           "spec": {"type": "object",
                                                    "x-kubernetes-preserve-unknown-fields": True},
                                           "status": {"type": "object",
                                                      "x-kubernetes-preserve-unknown-fields":
                                                          True}}}}}]}})

        def established():
            crd = a.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"
                        "widgets.test.stoke.dev")
            return any(x["type"] == "Established" and x["status"] == "True"
                       for x in (crd.get("status") or {}).get("conditions") or []) and \
                a.request("GET", "/apis/test.stoke.dev/v1/namespaces/%s/widgets" % ns)[0] == 200
        k8s.kapi.wait_for(established, 60, "the Widget CRD to be served")
        # A service account that may read configmaps, and its token.
        a.create("/api/v1/namespaces/%s/serviceaccounts" % ns,
                 {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader"}})
        a.create("/apis/rbac.authorization.k8s.io/v1/namespaces/%s/roles" % ns, {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "reader"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"],
                       "verbs": ["get", "list", "watch"]}]})
        a.create("/apis/rbac.authorization.k8s.io/v1/namespaces/%s/rolebindings" % ns, {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "reader"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                        "name": "reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": ns}]})
        tr = a.create("/api/v1/namespaces/%s/serviceaccounts/reader/token" % ns, {
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"expirationSeconds": 3600}})
        token = tr["status"]["token"]
        # Pod logs: a pod on a kubelet stand-in, and one on a node without a kubelet.
        c.add_node()
        image = os.environ.get("STOKE_HELLO_IMAGE", "stoke-hello:1")
        a.create("/api/v1/namespaces/%s/pods" % ns, {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "talk"},
            "spec": {"containers": [{"name": "main", "image": image,
                                     "imagePullPolicy": "Never",
                                     "env": [{"name": "PORT", "value": "8080"},
                                             {"name": "BIND_ADDR", "value": "0.0.0.0"}]}]}})
        def listening():
            try:
                return "listening" in c.pod_logs(ns, "talk")
            except AssertionError:  # no container yet
                return False
        k8s.kapi.wait_for(listening, 90, "pod talk to log its listening line")
        with socket.socket() as s:  # a port nothing listens on
            s.bind(("127.0.0.1", 0))
            ghost_port = s.getsockname()[1]
        a.create("/api/v1/nodes", {"apiVersion": "v1", "kind": "Node",
                                   "metadata": {"name": "ghost"}})
        a.request("PATCH", "/api/v1/nodes/ghost/status", {"status": {
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": ghost_port}}}},
            content_type="application/strategic-merge-patch+json")
        a.create("/api/v1/namespaces/%s/pods" % ns, {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ghost"},
            "spec": {"nodeName": "ghost", "containers": [{"name": "main", "image": image}],
                     # Not evicted from the NotReady node while the test runs.
                     "tolerations": [{"operator": "Exists", "effect": "NoExecute"}]}})
        # The admin kubeconfig, through the proxy.
        with open(c.kubeconfig) as f:
            kc = f.read().replace(c.server, "https://127.0.0.1:%d" % proxy.port)
        kcpath = os.path.join(c.dir, "proxy.kubeconfig")
        with open(kcpath, "w") as f:
            f.write(kc)

        env = dict(os.environ, KUBECONFIG=kcpath, STOKE_TEST_NS=ns, STOKE_TEST_TOKEN=token,
                   STOKE_TEST_WIDGETS="1", STOKE_TEST_LOG_POD="talk",
                   STOKE_TEST_GHOST_POD="ghost")
        proc = subprocess.Popen([exe], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                                text=True, bufsize=1)
        deadline = time.monotonic() + 600
        partitioned = False
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            if line.startswith("PARTITION"):
                n = proxy.cut()
                cm = "/api/v1/namespaces/%s/configmaps" % ns
                a.delete(cm + "/w3", ok=(200,))
                a.patch(cm + "/w4", {"data": {"k": "3"}})
                a.create(cm, {"apiVersion": "v1", "kind": "ConfigMap",
                              "metadata": {"name": "w7", "labels": {"stoke-test": "watch"}},
                              "data": {"k": "1"}})
                rev = compact(c)
                # What the API server answers a watch from the client's version now (for the
                # log: a 410 status, or an ERROR event in a 200 stream).
                st, body = a.request("GET", cm + "?watch=1&resourceVersion=%s&timeoutSeconds=1"
                                     % line.split()[1], raw=True)
                print("test_kubeapi.py: a watch from %s now answers HTTP %d: %s"
                      % (line.split()[1], st, body.decode(errors="replace").strip()[:200]),
                      flush=True)
                print("test_kubeapi.py: cut %d connections, compacted etcd to %s (client at %s)"
                      % (n, rev, line.split()[1]), flush=True)
                proxy.unblock()
                proc.stdin.write("GO\n")
                proc.stdin.flush()
                partitioned = True
            if line.strip() == "BLOCK":
                proxy.cut()
                a.create("/api/v1/namespaces/%s/configmaps" % ns, {
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "w8", "labels": {"stoke-test": "watch"}},
                    "data": {"k": "1"}})
                proc.stdin.write("GO\n")
                proc.stdin.flush()
            if line.strip() == "UNBLOCK":
                proxy.unblock()
                proc.stdin.write("GO\n")
                proc.stdin.flush()
            if time.monotonic() > deadline:
                proc.kill()
                die("test_kubeapi did not finish within 600 s")
        rc = proc.wait(60)
        if rc != 0:
            die("test_kubeapi exited with %d" % rc)
        if not partitioned:
            die("test_kubeapi never asked for the partition")
        print("test_kubeapi.py: OK", flush=True)
    finally:
        if proc and proc.poll() is None:
            proc.kill()
            proc.wait()
        if proxy:
            proxy.close()
        c.stop()


if __name__ == "__main__":
    main()
