#!/usr/bin/env python3
"""The Function CRD and the chart against the real kube-apiserver (ctest label k8s).

A control plane from tests/k8s (etcd, kube-apiserver, kube-controller-manager, built from
source by tests/k8s/build.sh; no node is needed here):
- the CRD is accepted by server-side dry run, then created and Established;
- every document crdcases.py generates from the parser's field tree is sent with
  dryRun=All and fieldValidation=Strict (what `kubectl apply --dry-run=server` sends), and
  the API server's verdict must be the parser's (CEL rules included), naming the parser's field,
  and what it stores of each accepted one parses back to the same spec (env sorted);
- tests/specs/valid/*.yaml and the example apply with `kubectl apply --dry-run=server`
  unchanged, tests/specs/invalid/*.yaml are refused;
- the status subresource takes the status the controller writes, the main resource ignores
  it, and `kubectl get functions` prints the columns;
- the chart: `helm install` into the API server (every object validated by it, the CRD from
  the chart) in a namespace enforcing Pod Security "restricted", where the controller's and
  activators' pods must be admitted; the RBAC each ServiceAccount gets (kubectl auth can-i);
  `helm upgrade` keeps the channel token, `helm uninstall` keeps the CRD.

The binaries must be built (tests/k8s/build.sh): without them this fails, it does not skip.
Run: STOKE_BUILD_DIR=build python3 tests/crd/test_crd_apiserver.py
"""
import json
import os
import subprocess
import sys
import time
import unittest
import urllib.parse

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import crdcases as cc  # noqa: E402

K8S = os.environ.get("STOKE_K8S_LIB") or os.path.join(cc.ROOT, "tests", "k8s")
CHART = os.path.join(cc.ROOT, "charts", "stoke")
NS = "default"
TOOLS = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl", "helm")


def load_cluster_module():
    if not os.path.exists(os.path.join(K8S, "cluster.py")):
        raise AssertionError(f"no {K8S}/cluster.py: the k8s test environment is missing")
    sys.path.insert(0, K8S)
    import cluster
    d = cluster.bindir(build=False)
    missing = [t for t in TOOLS if not os.access(os.path.join(d, t), os.X_OK)]
    if missing:
        raise AssertionError(f"missing in {d}: {', '.join(missing)}; build them first with "
                             f"{K8S}/build.sh (this test does not build or skip)")
    return cluster


class Base(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cluster = load_cluster_module()
        cls.c = cluster.Cluster().start()
        try:
            cls.crd = cc.load_crd()
            cls.apiver = cc.api_version(cls.crd)
            cls.plural = f'/apis/{cls.apiver}/namespaces/{NS}/{cls.crd["spec"]["names"]["plural"]}'
        except BaseException:
            cls.c.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        cls.c.stop()

    def helm(self, *args, check=True):
        r = subprocess.run([os.path.join(self.c.bin, "helm"), *args], env=self.c.env(),
                           capture_output=True, text=True, timeout=300)
        if check and r.returncode != 0:
            self.fail(f"helm {' '.join(args)}: exit {r.returncode}\n{r.stdout}{r.stderr}")
        return r

    def install_crd(self):
        self.c.kubectl("apply", "--server-side", "-f", cc.CRD_FILE)
        self.c.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                       f'crd/{self.crd["metadata"]["name"]}')

    def dry_run(self, doc):
        """(accepted, message) for `doc` created with dryRun=All, strict field validation."""
        q = urllib.parse.urlencode({"dryRun": "All", "fieldValidation": "Strict"})
        status, body = self.c.admin.request("POST", f"{self.plural}?{q}", doc)
        msg = body.get("message", "") if isinstance(body, dict) else str(body)
        if status not in (200, 201, 422, 400):
            self.fail(f"unexpected HTTP {status}: {msg}")
        self.last = body
        return status in (200, 201), msg


class TestCRD(Base):
    def test_1_crd_dry_run_then_established(self):
        r = self.c.kubectl("apply", "--dry-run=server", "-f", cc.CRD_FILE)
        self.assertIn("created (server dry run)", r.stdout)
        self.install_crd()
        got = json.loads(self.c.kubectl("get", "crd", self.crd["metadata"]["name"], "-o",
                                        "json").stdout)
        conds = {c["type"]: c["status"] for c in got["status"]["conditions"]}
        self.assertEqual(conds.get("Established"), "True", conds)
        self.assertEqual(conds.get("NonStructuralSchema", "False"), "False", conds)
        self.assertEqual(got["status"]["acceptedNames"]["shortNames"], ["fn"])

    def test_2_generated_cases(self):
        self.install_crd()
        cases = cc.cases(self.apiver)
        verdicts = cc.parser_verdicts([c.doc for c in cases])
        bad = []
        stored = []
        for c, (ok, field, err) in zip(cases, verdicts):
            sok, smsg = self.dry_run(c.doc)
            if sok:
                stored.append((c, self.last))
            if c.known:
                if (ok, sok) != c.known:
                    bad.append(f"{c.what}: known difference changed: parser {ok} ({err}), "
                               f"server {sok} ({smsg})")
                continue
            if ok != c.valid:
                bad.append(f"{c.what}: the parser says {ok}: {field}: {err}")
            if sok != ok:
                bad.append(f"{c.what}: parser {ok} ({field}: {err}), server {sok} ({smsg})")
            elif not ok and field not in smsg and field.rsplit(".", 1)[0] + ":" not in smsg:
                # The field, or its mapping where a rule judges the whole (env names).
                bad.append(f"{c.what}: the server does not name {field}: {smsg}")
        self.assertEqual(bad, [], "\n" + "\n".join(bad))
        self.assertGreater(len(cases), 250)
        # What the API server keeps, as the controller reads it back (the object's
        # apiVersion, kind, name and spec: its other metadata and status are not stoke/v1's),
        # parses as it was written, but for the order of env (the server keeps maps sorted).
        docs = [{"apiVersion": o["apiVersion"], "kind": o["kind"],
                 "metadata": {"name": o["metadata"]["name"]}, "spec": o["spec"]}
                for _, o in stored]
        self.assertGreater(len(docs), 80)
        for (c, o), (ok, field, err), d in zip(stored, cc.parser_verdicts(docs), docs):
            if c.known and not c.known[0]:
                # Kept by the server, refused by the parser (a schedule that
                # never runs): the controller reports it in the Function's
                # lastError (docs/kubernetes.md). It must stay refused.
                self.assertFalse(ok, f"{c.what}: the stored object parses")
                continue
            self.assertTrue(ok, f"{c.what}: the stored object: {field}: {err}")
            want = c.doc["spec"]
            if "env" in want:
                want = dict(want, env=dict(sorted(want["env"].items())))
                self.assertEqual(list(d["spec"]["env"]), list(want["env"]), c.what)
            if not c.known:
                self.assertEqual(d["spec"], want, c.what)

    def test_3_spec_files_with_kubectl(self):
        self.install_crd()
        files = cc.spec_files() + [(os.path.join(cc.ROOT, "deploy/examples/hello/hello.yaml"),
                                    True)]
        for path, valid in files:
            with self.subTest(file=os.path.relpath(path, cc.ROOT)):
                r = self.c.kubectl("apply", "--dry-run=server", "-n", NS, "-f", path,
                                   check=False)
                if valid:
                    self.assertEqual(r.returncode, 0, r.stderr)
                    self.assertIn("(server dry run)", r.stdout)
                else:
                    self.assertNotEqual(r.returncode, 0, r.stdout)
                    self.assertNotIn("(server dry run)", r.stdout)

    def test_4_status_and_columns(self):
        self.install_crd()
        doc = cc.base_doc(self.apiver, "status-check")
        self.c.kubectl("apply", "-n", NS, "-f", "-", input=json.dumps(doc))
        try:
            obj = self.c.admin.get(f"{self.plural}/status-check")
            status = {
                "observedGeneration": obj["metadata"]["generation"],
                "desiredReplicas": 2, "readyReplicas": 1,
                "url": "http://stoke-activator.default.svc:80/fn/status-check/",
                "lastError": "spec.image: No such image: x",
                "conditions": [{"type": "Ready", "status": "True", "reason": "Ready",
                                "message": "1 of 2 replicas ready",
                                "lastTransitionTime": "2026-12-04T17:00:00Z",
                                "observedGeneration": obj["metadata"]["generation"]}],
            }
            obj["status"] = status
            st, body = self.c.admin.request("PUT", f"{self.plural}/status-check/status", obj)
            self.assertEqual(st, 200, body)
            self.assertEqual(body["status"], status)
            # Status through the main resource is dropped (the subresource owns it).
            body["status"] = dict(status, desiredReplicas=9)
            body["spec"]["port"] = 9000
            st, body = self.c.admin.request("PUT", f"{self.plural}/status-check", body)
            self.assertEqual(st, 200, body)
            self.assertEqual(body["status"]["desiredReplicas"], 2)
            self.assertEqual(body["spec"]["port"], 9000)
            # A status the schema refuses.
            bad = dict(body, status=dict(status, conditions=[{"type": "Ready",
                                                              "status": "Maybe"}]))
            st, _ = self.c.admin.request("PUT", f"{self.plural}/status-check/status", bad)
            self.assertEqual(st, 422)
            out = self.c.kubectl("get", "fn", "-n", NS, "status-check").stdout.split("\n")
            self.assertEqual(out[0].split(), ["NAME", "READY", "DESIRED", "CURRENT", "IMAGE",
                                              "URL", "AGE"])
            self.assertEqual(out[1].split()[:6],
                             ["status-check", "True", "2", "1", "stoke-hello:1",
                              "http://stoke-activator.default.svc:80/fn/status-check/"])
        finally:
            self.c.kubectl("delete", "-n", NS, "function", "status-check", "--wait=false",
                           check=False)


class TestChart(Base):
    def render(self, *sets):
        args = ["template", "t", CHART, "-n", "stoke"]
        for s in sets:
            args += ["--set", s]
        return [d for d in yaml.safe_load_all(self.helm(*args).stdout) if d]

    def test_lint_and_template(self):
        self.helm("lint", CHART, "--strict")
        switches = ["networkPolicy.enabled=true", "serviceMonitor.enabled=true",
                    "activator.ingress.enabled=true", "activator.domain=fn.example.com",
                    "activator.ingress.hosts={fn.example.com}", "crd.keep=false",
                    "hostNetwork=true"]
        self.helm("lint", CHART, "--strict", *sum((["--set", s] for s in switches), []))
        plain = self.render()
        on = self.render(*switches)
        kinds = lambda docs: sorted(d["kind"] for d in docs)  # noqa: E731
        self.assertEqual(kinds(on), sorted(kinds(plain) + ["NetworkPolicy"] * 4 +
                                           ["ServiceMonitor", "Ingress"]))
        # events.enabled=false: no stoke-events object at all, and no activator flag for it.
        off = self.render("events.enabled=false", *switches)
        names = lambda docs: sorted("%s/%s" % (d["kind"], d["metadata"]["name"])  # noqa: E731
                                    for d in docs)
        self.assertEqual(sorted(set(names(on)) - set(names(off))), [
            "NetworkPolicy/t-stoke-events", "Pod/t-stoke-test-async",
            "Secret/t-stoke-events-token", "Service/t-stoke-events", "Service/t-stoke-events-headless",
            "ServiceAccount/t-stoke-events", "StatefulSet/t-stoke-events"])
        self.assertFalse([d for d in off if "events" in d["metadata"]["name"]])
        self.assertNotIn("events", json.dumps([d for d in off if d["kind"] in (
            "Deployment", "ServiceMonitor", "NetworkPolicy")]))
        (crd,) = [d for d in plain if d["kind"] == "CustomResourceDefinition"]
        self.assertEqual(crd["spec"], self.crd["spec"], "the chart's CRD is files/ unchanged")
        self.assertEqual(crd["metadata"]["annotations"], {"helm.sh/resource-policy": "keep"})
        (crd,) = [d for d in on if d["kind"] == "CustomResourceDefinition"]
        self.assertNotIn("annotations", crd["metadata"])
        self.assertNotIn("CustomResourceDefinition",
                         kinds(self.render("crd.install=false")))
        # hostNetwork: every pod of the chart (helm test's too) on the node's network, still
        # resolving cluster names; off by default.
        def pod_specs(docs):
            return [d["spec"]["template"]["spec"] if d["kind"] != "Pod" else d["spec"]
                    for d in docs if d["kind"] in ("Deployment", "StatefulSet", "Pod")]
        # controller, activator, stoke-events, helm test's two pods
        self.assertEqual(len(pod_specs(on)), 5)
        for pod in pod_specs(on):
            self.assertEqual((pod["hostNetwork"], pod["dnsPolicy"]),
                             (True, "ClusterFirstWithHostNet"))
        for pod in pod_specs(plain):
            self.assertNotIn("hostNetwork", pod)
            self.assertNotIn("dnsPolicy", pod)
        for d in plain:
            if d["kind"] not in ("Deployment", "StatefulSet"):
                continue
            pod = d["spec"]["template"]["spec"]
            self.assertTrue(pod["securityContext"]["runAsNonRoot"])
            self.assertEqual(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault")
            for ctr in pod["containers"]:
                sc = ctr["securityContext"]
                self.assertFalse(sc["allowPrivilegeEscalation"])
                self.assertTrue(sc["readOnlyRootFilesystem"])
                self.assertEqual(sc["capabilities"]["drop"], ["ALL"])
                self.assertTrue(any(a.startswith("--listen=$(POD_IP):") for a in ctr["args"]),
                                ctr["args"])
                self.assertEqual(ctr["livenessProbe"]["httpGet"]["path"], "/healthz")

    def test_install_upgrade_uninstall(self):
        self.c.create_namespace("stoke")
        # Pod Security Admission at "restricted": the ReplicaSets' pods (made by
        # kube-controller-manager) and helm test's pod are refused unless the chart's
        # security contexts meet it.
        self.c.kubectl("label", "namespace", "stoke",
                       "pod-security.kubernetes.io/enforce=restricted",
                       "pod-security.kubernetes.io/enforce-version=latest")
        # Everything but the ServiceMonitor (no Prometheus Operator here) on.
        sets = ["--set", "networkPolicy.enabled=true", "--set", "activator.ingress.enabled=true",
                "--set", "activator.ingress.hosts={fn.example.com}"]
        notes = self.helm("install", "s1", CHART, "-n", "stoke", *sets).stdout
        # NOTES.txt: how to apply a Function and call it, with this release's names.
        for line in ("apiVersion: stoke.dev/v1", "kubectl get functions -n stoke",
                     "svc/s1-stoke-activator 8080:80", "helm test s1 -n stoke",
                     "Lease s1-stoke-controller"):
            self.assertIn(line, notes)
        # stoke-events' pod is made too (its claim stays Pending: no PersistentVolume here).
        want = {"controller": 2, "activator": 2, "events": 1}
        pods = {}
        deadline = time.monotonic() + 60
        while pods != want:
            items = self.c.admin.get("/api/v1/namespaces/stoke/pods?labelSelector="
                                     "app.kubernetes.io%2Finstance%3Ds1")["items"]
            pods = {}
            for p in items:
                comp = p["metadata"]["labels"]["app.kubernetes.io/component"]
                pods[comp] = pods.get(comp, 0) + 1
            if time.monotonic() > deadline:
                events = self.c.kubectl("get", "events", "-n", "stoke").stdout
                self.fail(f"pods {pods}, want {want}; events:\n{events}")
            time.sleep(0.2)
        secret = self.c.admin.get("/api/v1/namespaces/stoke/secrets/s1-stoke-channel-token")
        token = secret["data"]["token"]
        self.assertGreaterEqual(len(token), 48)
        # The controller's permissions are what it needs, and no more.
        for verb, res, want in (("create", "pods", "yes"), ("delete", "pods", "yes"),
                                ("watch", "functions.stoke.dev", "yes"),
                                ("patch", "functions.stoke.dev/status", "yes"),
                                ("update", "functions.stoke.dev/status", "no"),
                                ("get", "pods", "no"), ("create", "events", "no"),
                                ("update", "functions.stoke.dev/finalizers", "yes"),
                                ("update", "functions.stoke.dev", "no"),
                                ("get", "pods/log", "yes"), ("create", "leases", "yes"),
                                ("update", "leases/s1-stoke-controller", "yes"),
                                ("update", "leases/other", "no"), ("get", "secrets", "no"),
                                ("create", "deployments.apps", "no"),
                                ("patch", "pods", "no")):
            sub = []
            # leases/NAME is a resource and a name; the others, a subresource.
            if res.count("/") == 1 and not res.startswith("leases/"):
                res, sub = res.split("/")[0], ["--subresource=" + res.split("/")[1]]
            r = self.c.kubectl("auth", "can-i", verb, res, *sub, "-n", "stoke",
                               "--as=system:serviceaccount:stoke:s1-stoke-controller",
                               check=False)
            self.assertEqual(r.stdout.strip(), want, f"controller {verb} {res}")
        for sa in ("activator", "events"):
            for verb, res in (("get", "pods"), ("get", "secrets"),
                              ("list", "functions.stoke.dev")):
                r = self.c.kubectl("auth", "can-i", verb, res, "-n", "stoke",
                                   "--as=system:serviceaccount:stoke:s1-stoke-" + sa,
                                   check=False)
                self.assertEqual(r.stdout.strip(), "no", f"{sa} {verb} {res}")
        ev_token = self.c.admin.get("/api/v1/namespaces/stoke/secrets/s1-stoke-events-token")[
            "data"]["token"]
        # Upgrade: the token is looked up and kept.
        self.helm("upgrade", "s1", CHART, "-n", "stoke", *sets, "--set",
                  "activator.replicas=3")
        secret = self.c.admin.get("/api/v1/namespaces/stoke/secrets/s1-stoke-channel-token")
        self.assertEqual(secret["data"]["token"], token)
        secret = self.c.admin.get("/api/v1/namespaces/stoke/secrets/s1-stoke-events-token")
        self.assertEqual(secret["data"]["token"], ev_token)
        dep = self.c.admin.get("/apis/apps/v1/namespaces/stoke/deployments/s1-stoke-activator")
        self.assertEqual(dep["spec"]["replicas"], 3)
        # `helm test`'s hooks (a Function and the calling pod) pass the server's checks too.
        hooks = self.helm("template", "s1", CHART, "-n", "stoke", "--show-only",
                          "templates/tests/test-call.yaml").stdout
        r = self.c.kubectl("apply", "--dry-run=server", "-n", "stoke", "-f", "-", input=hooks)
        self.assertEqual(r.stdout.count("(server dry run)"), 3, r.stdout)
        # hostNetwork (the test cluster's switch) is what Pod Security "restricted" refuses.
        hooks = self.helm("template", "s1", CHART, "-n", "stoke", "--show-only",
                          "templates/tests/test-call.yaml", "--set", "hostNetwork=true").stdout
        r = self.c.kubectl("apply", "--dry-run=server", "-n", "stoke", "-f", "-", input=hooks,
                           check=False)
        self.assertNotEqual(r.returncode, 0, r.stdout)
        self.assertIn('violates PodSecurity "restricted:latest": host namespaces '
                      '(hostNetwork=true)', r.stderr)
        # Uninstall keeps the CRD (and so the Functions).
        self.helm("uninstall", "s1", "-n", "stoke", "--wait")
        st, _ = self.c.admin.request("GET", "/apis/apiextensions.k8s.io/v1/"
                                     "customresourcedefinitions/functions.stoke.dev")
        self.assertEqual(st, 200)
        st, _ = self.c.admin.request("GET", "/api/v1/namespaces/stoke/secrets/"
                                     "s1-stoke-channel-token")
        self.assertEqual(st, 404)


if __name__ == "__main__":
    unittest.main(verbosity=2)
