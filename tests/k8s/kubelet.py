#!/usr/bin/env python3
"""A kubelet stand-in for tests: the node side of the test cluster, on the local Docker
engine, talking to the real kube-apiserver. It is NOT a kubelet: no CRI, no cgroups of its
own, of the kubelet API only containerLogs (so kubectl logs works, not exec/port-forward),
no kube-proxy, no DNS. What it does, through the real API (so RBAC, the Node authorizer and
NodeRestriction judge it):

- registers its Node (as system:node:NAME) and keeps it Ready (status heartbeat and a Lease);
- binds unscheduled pods to itself through pods/binding (as system:kube-scheduler: there is
  no scheduler), honouring nodeSelector;
- LISTs then WATCHes the pods bound to it and runs each on the engine: one container per
  container of the pod (init containers first), never pulling an image;
- pod IPs are distinct loopback addresses 127.A.B.x (A.B chosen per node, locked in
  /run/stoke-k8s so concurrent runs do not share them). hostNetwork pods run on the host
  network and must bind their pod IP (env POD_IP, or a status.podIP fieldRef); other pods get
  a sandbox container (a locally built pause image) on the engine's bridge whose every
  declared container port (and probe port) is published on podIP:port, so podIP:port reaches
  the pod from the host and from hostNetwork pods. Bridge pods cannot reach loopback
  addresses of the host (the API server, other pods): what must talk to them runs hostNetwork;
- env (value, $(VAR), fieldRef, resourceFieldRef, secretKeyRef, configMapKeyRef, envFrom),
  command/args, the service account token from the TokenRequest API (bound to the pod,
  rotated at 80% of its life) with ca.crt and namespace (the projected volume the
  ServiceAccount admission plugin adds), secret/configMap/downwardAPI/projected/emptyDir/
  hostPath volumes and persistentVolumeClaims bound to a `local` PersistentVolume (its
  directory), KUBERNETES_SERVICE_HOST/PORT = the API server on 127.0.0.1;
- securityContext: runAsUser/runAsGroup/runAsNonRoot/fsGroup/supplementalGroups,
  readOnlyRootFilesystem, capabilities, allowPrivilegeEscalation, privileged, seccomp;
  resources limits (memory, cpu) and cpu requests;
- readiness, liveness and startup probes (httpGet, tcpSocket, exec);
- restartPolicy with back-off (10s doubling to 300s, like the kubelet's; flags change it);
- status: phase, conditions, container statuses (restarts, exit codes, OOMKilled,
  termination messages), podIP, hostIP, written with strategic merge patches on pods/status;
- graceful deletion: SIGTERM (or the image's stop signal), SIGKILL at the grace period (a
  shorter grace given later wins), then the terminal status and DELETE with grace 0;
- the kubelet's HTTPS port for the API server's pods/log: GET /containerLogs/NS/POD/CONTAINER
  (tailLines, sinceSeconds, sinceTime, timestamps, follow, limitBytes, previous) from the
  engine's logs, with the node's serving certificate, on the node's address (port in
  status.daemonEndpoints); the client must present a certificate of the cluster CA (the API
  server's --kubelet-client-certificate); other kubelet paths answer 404;
- Services: an /etc/hosts file per pod (rewritten in place) naming each Service (name,
  name.ns, name.ns.svc, name.ns.svc.cluster.local) after ONE ready pod's IP that its selector
  matches, or, for a headless Service (clusterIP: None), after EVERY ready pod's IP (one line
  each: what cluster DNS answers for it). A Service whose port differs from its targetPort is
  therefore not reachable on its port: this is a stand-in for kube-proxy and DNS, not either;
- fsGroup: secret, configMap, downwardAPI, projected, emptyDir and claimed `local` volumes
  are chowned to the group and made group-readable (emptyDir and claims group-writable), as
  the kubelet does.

Every container it creates is labelled with its run id, node and owner (pid and start time
of this process); on SIGTERM it removes them all, and a stand-in starting (or any that is
running, every 30 s) removes those whose owner process is gone (kill -9).
"""

import argparse
import base64
import datetime
import fcntl
import http.client
import http.server
import io
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import traceback
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kapi  # noqa: E402

L_OWNER = "io.stoke.k8s.kubelet"  # "<pid>:<start time>" of the stand-in that made it
L_RUN = "io.stoke.k8s.run"
L_NODE = "io.stoke.k8s.node"
L_UID = "io.stoke.k8s.pod-uid"
L_POD = "io.stoke.k8s.pod"
L_CONTAINER = "io.stoke.k8s.container"
L_ATTEMPT = "io.stoke.k8s.attempt"
PAUSE_IMAGE = "stoke-k8s-pause:1"
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"

_log_lock = threading.Lock()


def log(msg):
    with _log_lock:
        sys.stderr.write("%s kubelet: %s\n" % (time.strftime("%H:%M:%S"), msg))
        sys.stderr.flush()


def now_rfc3339(t=None):
    return datetime.datetime.fromtimestamp(t or time.time(), datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


def now_micro():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def docker_time(s):
    """Docker's RFC 3339 nanosecond time -> epoch seconds (None for the zero time)."""
    if not s or s.startswith("0001-"):
        return None
    m = re.match(r"(\d+-\d+-\d+T\d+:\d+:\d+)(\.\d+)?(Z|[+-]\d+:\d+)", s)
    if not m:
        return None
    base = datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S").replace(
        tzinfo=datetime.timezone.utc)
    t = base.timestamp() + float("0" + (m.group(2) or ".0")[:10])
    if m.group(3) != "Z":
        sign = 1 if m.group(3)[0] == "+" else -1
        hh, mm = m.group(3)[1:].split(":")
        t -= sign * (int(hh) * 3600 + int(mm) * 60)
    return t


def proc_start_time(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


_SUFFIX = {"Ki": 2 ** 10, "Mi": 2 ** 20, "Gi": 2 ** 30, "Ti": 2 ** 40, "Pi": 2 ** 50,
           "Ei": 2 ** 60, "n": 1e-9, "u": 1e-6, "m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9,
           "T": 1e12, "P": 1e15, "E": 1e18}


def quantity(q):
    """A Kubernetes resource quantity ("128Mi", "500m", "1e3") as a float."""
    m = re.fullmatch(r"([+-]?[0-9.]+(?:[eE][+-]?\d+)?)([a-zA-Z]*)", str(q).strip())
    if not m or m.group(2) not in _SUFFIX:
        raise ValueError("bad quantity %r" % q)
    return float(m.group(1)) * _SUFFIX[m.group(2)]


class ConfigError(Exception):
    """A pod that cannot be started as specified (reason, message)."""

    def __init__(self, reason, message):
        super().__init__(message)
        self.reason = reason


def post_event(client, pod, component, host, reason, message, typ="Normal"):
    """A core/v1 Event about `pod` (what kubectl describe shows); failures only logged."""
    md = pod["metadata"]
    t = now_rfc3339()
    st, body = client.request("POST", "/api/v1/namespaces/%s/events" % md["namespace"], {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": md["name"] + ".", "namespace": md["namespace"]},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "namespace": md["namespace"],
                           "name": md["name"], "uid": md["uid"]},
        "reason": reason, "message": message[:1024], "type": typ,
        "source": {"component": component, "host": host}, "firstTimestamp": t,
        "lastTimestamp": t, "count": 1, "reportingComponent": component,
        "reportingInstance": host})
    if st != 201:
        log("event %s on %s/%s: %s %s" % (reason, md["namespace"], md["name"], st, body))


# --- the Docker engine ----------------------------------------------------------------------
class _UnixConn(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


class Docker:
    def __init__(self, sock=None):
        self.sock = sock or os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock").replace(
            "unix://", "")

    def request(self, method, path, body=None, timeout=60, ctype="application/json"):
        c = _UnixConn(self.sock, timeout)
        try:
            headers = {}
            data = None
            if body is not None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                headers["Content-Type"] = ctype
            c.request(method, path, body=data, headers=headers)
            r = c.getresponse()
            out = r.read()
        finally:
            c.close()
        try:
            return r.status, json.loads(out) if out else None
        except ValueError:
            return r.status, out.decode(errors="replace")

    def list(self, labels):
        f = json.dumps({"label": ["%s=%s" % kv if kv[1] is not None else kv[0]
                                  for kv in labels.items()]})
        st, body = self.request("GET", "/containers/json?all=1&filters=" + urllib.parse.quote(f))
        if st != 200:
            raise OSError("docker list: %s %s" % (st, body))
        return body

    def remove(self, cid):
        st, body = self.request("DELETE", "/containers/%s?force=1&v=1" % cid)
        if st not in (204, 404, 409):
            log("docker rm %s: %s %s" % (cid[:12], st, body))

    def remove_labelled(self, labels):
        for c in self.list(labels):
            self.remove(c["Id"])

    def inspect(self, cid):
        st, body = self.request("GET", "/containers/%s/json" % cid)
        return body if st == 200 else None

    def image(self, name):
        st, body = self.request("GET", "/images/%s/json" % urllib.parse.quote(name, safe=""))
        return body if st == 200 else None

    def kill(self, cid, sig):
        self.request("POST", "/containers/%s/kill?signal=%s" % (cid, sig))

    def exec(self, cid, cmd, timeout):
        """Runs cmd in the container; its exit code, or None at the timeout."""
        st, ex = self.request("POST", "/containers/%s/exec" % cid,
                              {"Cmd": cmd, "AttachStdout": False, "AttachStderr": False})
        if st != 201:
            return None
        st, _ = self.request("POST", "/exec/%s/start" % ex["Id"], {"Detach": True})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st, info = self.request("GET", "/exec/%s/json" % ex["Id"])
            if st == 200 and not info.get("Running"):
                return info.get("ExitCode")
            time.sleep(0.05)
        return None

    def logs_tail(self, cid, lines=80):
        c = _UnixConn(self.sock, 10)
        try:
            c.request("GET", "/containers/%s/logs?stdout=1&stderr=1&tail=%d" % (cid, lines))
            raw = c.getresponse().read()
        finally:
            c.close()
        out = b""
        while len(raw) >= 8:  # demultiplex the engine's 8-byte frame headers
            n = int.from_bytes(raw[4:8], "big")
            out += raw[8:8 + n]
            raw = raw[8 + n:]
        return out.decode(errors="replace")


class LogHandler(http.server.BaseHTTPRequestHandler):
    """The kubelet API's containerLogs, which the API server's pods/log proxies to."""
    protocol_version = "HTTP/1.1"
    kl = None  # the Kubelet, set by serve_logs()

    def log_message(self, fmt, *args):
        pass

    def reply(self, status, text):
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        u = urllib.parse.urlsplit(self.path)
        parts = u.path.split("/")
        if len(parts) != 5 or parts[1] != "containerLogs":
            return self.reply(404, "404 page not found (the stand-in serves containerLogs only)")
        ns, pod, cname = (urllib.parse.unquote(x) for x in parts[2:])
        q = {k: v[-1] for k, v in urllib.parse.parse_qs(u.query).items()}
        try:
            tail = int(q["tailLines"]) if "tailLines" in q else None
            since = int(q["sinceSeconds"]) if "sinceSeconds" in q else None
            limit = int(q["limitBytes"]) if "limitBytes" in q else None
        except ValueError:
            return self.reply(400, "bad number in %s" % u.query)
        if "sinceTime" in q:
            since_ts = docker_time(q["sinceTime"])
        else:
            since_ts = time.time() - since if since is not None else None
        flag = lambda k: q.get(k, "false").lower() in ("true", "1")  # noqa: E731
        follow, stamps, previous = flag("follow"), flag("timestamps"), flag("previous")
        cs = [c for c in self.kl.docker.list({L_RUN: self.kl.run_id, L_NODE: self.kl.node,
                                              L_POD: ns + "/" + pod, L_CONTAINER: cname})
              if not (previous and c["State"] == "running")]
        if not cs:
            return self.reply(404, 'container "%s" in pod "%s" is not available' % (cname, pod))
        cid = max(cs, key=lambda c: int(c["Labels"][L_ATTEMPT]))["Id"]
        path = "/containers/%s/logs?stdout=1&stderr=1&follow=%d&timestamps=%d&tail=%s" % (
            cid, follow, stamps, "all" if tail is None else tail)
        if since_ts is not None:
            path += "&since=%.3f" % max(since_ts, 0.001)
        conn = _UnixConn(self.kl.docker.sock, None if follow else 60)
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            if r.status != 200:
                return self.reply(404 if r.status == 404 else 500, r.read().decode(
                    errors="replace"))
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            sent = 0
            for chunk in demux_frames(r):
                if limit is not None:
                    chunk = chunk[:max(0, limit - sent)]
                if chunk:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.flush()
                    sent += len(chunk)
                if limit is not None and sent >= limit:
                    break
            self.wfile.write(b"0\r\n\r\n")
        except (OSError, http.client.HTTPException):
            self.close_connection = True  # the client went, or the engine did
        finally:
            conn.close()


def demux_frames(r):
    """The payloads of the engine's multiplexed log stream (8-byte headers), as they come."""
    while True:
        hdr = r.read(8)
        if len(hdr) < 8:
            return
        n = int.from_bytes(hdr[4:8], "big")
        data = r.read(n)
        if not data:
            return
        yield data


def serve_logs(kl, cert, key, ca):
    """The kubelet's HTTPS port on the node's address (a free port: several stand-ins share
    127.0.0.1); the API server's client certificate must be the cluster CA's."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    handler = type("NodeLogHandler", (LogHandler,), {"kl": kl})
    srv = http.server.ThreadingHTTPServer((kl.host_ip, 0), handler)
    srv.daemon_threads = True
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True, name="kubelet-api").start()
    return srv


def reap_orphans(docker):
    """Removes containers of stand-ins whose process is gone (kill -9)."""
    for c in docker.list({L_OWNER: None}):
        owner = c.get("Labels", {}).get(L_OWNER, "")
        pid, _, start = owner.partition(":")
        if pid.isdigit() and proc_start_time(int(pid)) == start:
            continue
        log("removing orphaned container %s (%s)" % (c["Id"][:12], c["Labels"].get(L_POD)))
        docker.remove(c["Id"])


PAUSE_C = r"""
#include <signal.h>
#include <unistd.h>
static void done(int s) { (void)s; _exit(0); }
int main(void) {
    signal(SIGTERM, done);
    signal(SIGINT, done);
    for (;;) pause();
}
"""


def ensure_pause_image(docker):
    """The sandbox image (holds a bridge pod's network namespace), built locally FROM scratch
    with a static pause binary: there is no registry to pull one from."""
    if docker.image(PAUSE_IMAGE):
        return
    d = tempfile.mkdtemp(prefix="stoke-pause-")
    try:
        with open(os.path.join(d, "pause.c"), "w") as f:
            f.write(PAUSE_C)
        subprocess.run([os.environ.get("CC", "cc"), "-static", "-O2", "-o",
                        os.path.join(d, "pause"), os.path.join(d, "pause.c")], check=True)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as t:
            info = t.gettarinfo(os.path.join(d, "pause"), "pause")
            info.mode, info.uid, info.gid = 0o755, 0, 0
            with open(os.path.join(d, "pause"), "rb") as f:
                t.addfile(info, f)
        repo, tag = PAUSE_IMAGE.split(":")
        q = urllib.parse.urlencode([("fromSrc", "-"), ("repo", repo), ("tag", tag),
                                    ("changes", 'ENTRYPOINT ["/pause"]'),
                                    ("changes", "LABEL io.stoke.k8s.pause=1")])
        st, body = docker.request("POST", "/images/create?" + q, buf.getvalue(), timeout=120,
                                  ctype="application/x-tar")
        if st != 200:
            raise OSError("cannot import the pause image: %s %s" % (st, body))
    finally:
        shutil.rmtree(d, ignore_errors=True)


# --- pod IPs --------------------------------------------------------------------------------
class PodNet:
    """127.A.B.2-254 for one node; 127.A.B is held with an flock for the life of the process,
    so two stand-ins (of this run or another) never hand out the same address."""

    def __init__(self, want=None, lockdir="/run/stoke-k8s"):
        os.makedirs(lockdir, exist_ok=True)
        prefixes = [want] if want else ["127.%d.%d" % (a, b) for a, b in random.sample(
            [(a, b) for a in range(100, 250) for b in range(1, 255)], 64)]
        for p in prefixes:
            fd = os.open(os.path.join(lockdir, "podnet-%s.lock" % p), os.O_CREAT | os.O_RDWR,
                         0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            self.fd, self.prefix = fd, p
            break
        else:
            raise OSError("no free pod network prefix")
        self.used = set()
        self.next = 2
        self.lock = threading.Lock()

    def alloc(self, prefer=None):
        with self.lock:
            if prefer and prefer.startswith(self.prefix + ".") and prefer not in self.used:
                self.used.add(prefer)
                return prefer
            for i in range(253):
                n = 2 + (self.next - 2 + i) % 253
                ip = "%s.%d" % (self.prefix, n)
                if ip not in self.used:
                    self.used.add(ip)
                    self.next = n + 1
                    return ip
        raise OSError("pod network %s.0/24 is full" % self.prefix)

    def release(self, ip):
        with self.lock:
            self.used.discard(ip)


# --- the pod ------------------------------------------------------------------------------
def selector_matches(sel, labels):
    return bool(sel) and all(labels.get(k) == v for k, v in sel.items())


def expand(s, env):
    """$(VAR) from env, $$ -> $, an unknown $(VAR) left as it is (the kubelet's rules)."""
    def rep(m):
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", rep, s)


class Probe:
    def __init__(self, spec, kind):
        self.spec = spec or None
        self.kind = kind
        self.ok = kind != "readiness"  # readiness starts false, liveness/startup "not failed"
        self.succ = self.fail = 0
        self.next = 0.0

    def period(self):
        return self.spec.get("periodSeconds", 10)


class CState:
    """What the stand-in knows about one container of a pod."""

    def __init__(self, spec, init=False):
        self.spec = spec
        self.init = init
        self.id = None
        self.prev_id = None
        self.attempt = 0  # containers created so far (restartCount = attempt - 1)
        self.started_at = None
        self.last_term = None  # lastState.terminated
        self.term = None  # state.terminated of the current container once it exited
        self.waiting = ("ContainerCreating", None)
        self.delay = 0.0  # back-off before the next restart
        self.restart_at = None
        self.done = False  # exited and will not be restarted
        self.killed_for = None
        self.image_id = ""
        self.reset_probes()

    def reset_probes(self):
        s = self.spec
        self.readiness = Probe(s.get("readinessProbe"), "readiness")
        self.liveness = Probe(s.get("livenessProbe"), "liveness")
        self.startup = Probe(s.get("startupProbe"), "startup")
        self.startup.ok = not self.startup.spec

    def ready(self):
        if self.id is None or self.term or self.init:
            return False
        return self.startup.ok and (self.readiness.ok if self.readiness.spec else True)


class PodWorker(threading.Thread):
    def __init__(self, kl, pod):
        md = pod["metadata"]
        super().__init__(name="pod-%s/%s" % (md["namespace"], md["name"]), daemon=True)
        self.kl, self.pod = kl, pod
        self.uid, self.ns, self.pname = md["uid"], md["namespace"], md["name"]
        self.wake = threading.Event()
        self.gone = False
        self.dir = os.path.join(kl.root, "pods", self.uid)
        self.host_net = bool(pod["spec"].get("hostNetwork"))
        self.ip = None
        self.sandbox = None
        self.inits = [CState(c, True) for c in pod["spec"].get("initContainers") or []]
        self.ctrs = [CState(c) for c in pod["spec"].get("containers") or []]
        self.start_time = pod.get("status", {}).get("startTime") or now_rfc3339()
        self.volumes = None  # name -> host path once prepared
        self.tokens = []  # [refresh_at, path, source]
        self.conds = {}
        self.last_status = None
        self.hosts_path = os.path.join(self.dir, "etc-hosts")
        self.finished = False
        self.terminating = False
        self.last_event = None

    # -- events from the kubelet
    def update(self, pod):
        self.pod = pod
        self.wake.set()

    def deleted(self):
        self.gone = True
        self.wake.set()

    # -- helpers
    def event(self, reason, message, typ="Normal"):
        """An Event, unless it repeats the last one of this pod."""
        if self.last_event == (reason, message):
            return
        self.last_event = (reason, message)
        post_event(self.kl.api, self.pod, "kubelet", self.kl.node, reason, message, typ)

    def labels(self, cname, attempt):
        return {L_OWNER: self.kl.owner, L_RUN: self.kl.run_id, L_NODE: self.kl.node,
                L_UID: self.uid, L_POD: "%s/%s" % (self.ns, self.pname), L_CONTAINER: cname,
                L_ATTEMPT: str(attempt)}

    def api_path(self, sub=""):
        return "/api/v1/namespaces/%s/pods/%s%s" % (self.ns, self.pname, sub)

    def field(self, path):
        md, spec = self.pod["metadata"], self.pod["spec"]
        m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']*)'\]", path)
        if m:
            return (md.get(m.group(1)) or {}).get(m.group(2), "")
        simple = {"metadata.name": md["name"], "metadata.namespace": md["namespace"],
                  "metadata.uid": md["uid"], "spec.nodeName": spec.get("nodeName", ""),
                  "spec.serviceAccountName": spec.get("serviceAccountName", ""),
                  "status.hostIP": self.kl.host_ip, "status.hostIPs": self.kl.host_ip,
                  "status.podIP": self.ip, "status.podIPs": self.ip}
        if path in simple:
            return simple[path]
        if path in ("metadata.labels", "metadata.annotations"):
            d = md.get(path.split(".")[1]) or {}
            return "\n".join('%s="%s"' % (k, d[k]) for k in sorted(d))
        raise ConfigError("CreateContainerConfigError", "unsupported fieldRef %s" % path)

    def resource_field(self, ref, c):
        res = c.get("resources") or {}
        which, _, name = ref["resource"].partition(".")
        v = (res.get(which) or {}).get(name)
        if v is None:
            v = {"cpu": os.cpu_count(), "memory": self.kl.mem_bytes}.get(name, 0) \
                if which == "limits" else 0
        div = quantity(ref.get("divisor", "1"))
        return str(int(math.ceil(quantity(v) / div)))

    def get_obj(self, kind, name):
        st, obj = self.kl.api.request("GET", "/api/v1/namespaces/%s/%s/%s" % (self.ns, kind, name))
        if st == 404:
            return None
        if st != 200:
            raise ConfigError("CreateContainerConfigError", "cannot get %s %s: %s %s" % (
                kind, name, st, obj.get("message") if isinstance(obj, dict) else obj))
        return obj

    def obj_data(self, kind, name, optional):
        """The data of a secret or configMap as {key: bytes}; None when optional and absent."""
        obj = self.get_obj("secrets" if kind == "secret" else "configmaps", name)
        if obj is None:
            if optional:
                return None
            raise ConfigError("CreateContainerConfigError", '%s "%s" not found' % (kind, name))
        out = {}
        if kind == "secret":
            for k, v in (obj.get("data") or {}).items():
                out[k] = base64.b64decode(v)
        else:
            for k, v in (obj.get("data") or {}).items():
                out[k] = v.encode()
            for k, v in (obj.get("binaryData") or {}).items():
                out[k] = base64.b64decode(v)
        return out

    def key_ref(self, kind, ref):
        data = self.obj_data(kind, ref["name"], ref.get("optional"))
        if data is None:
            return None
        if ref["key"] not in data:
            if ref.get("optional"):
                return None
            raise ConfigError("CreateContainerConfigError", "couldn't find key %s in %s %s/%s" % (
                ref["key"], "Secret" if kind == "secret" else "ConfigMap", self.ns, ref["name"]))
        return data[ref["key"]].decode(errors="replace")

    def build_env(self, c):
        env = {}
        order = []

        def put(k, v):
            if k not in env:
                order.append(k)
            env[k] = v
        port = str(self.kl.api_port)
        for k, v in (("KUBERNETES_SERVICE_HOST", "127.0.0.1"), ("KUBERNETES_SERVICE_PORT", port),
                     ("KUBERNETES_SERVICE_PORT_HTTPS", port),
                     ("KUBERNETES_PORT", "tcp://127.0.0.1:" + port),
                     ("KUBERNETES_PORT_443_TCP", "tcp://127.0.0.1:" + port),
                     ("KUBERNETES_PORT_443_TCP_PROTO", "tcp"),
                     ("KUBERNETES_PORT_443_TCP_PORT", port),
                     ("KUBERNETES_PORT_443_TCP_ADDR", "127.0.0.1")):
            put(k, v)
        for ef in c.get("envFrom") or []:
            for kind, key in (("configmap", "configMapRef"), ("secret", "secretRef")):
                if key in ef:
                    data = self.obj_data(kind, ef[key]["name"], ef[key].get("optional"))
                    for k, v in (data or {}).items():
                        put(ef.get("prefix", "") + k, v.decode(errors="replace"))
        for e in c.get("env") or []:
            if "valueFrom" not in e:
                put(e["name"], expand(e.get("value", ""), env))
                continue
            vf = e["valueFrom"]
            if "fieldRef" in vf:
                v = self.field(vf["fieldRef"]["fieldPath"])
            elif "resourceFieldRef" in vf:
                v = self.resource_field(vf["resourceFieldRef"], c)
            elif "secretKeyRef" in vf:
                v = self.key_ref("secret", vf["secretKeyRef"])
            elif "configMapKeyRef" in vf:
                v = self.key_ref("configmap", vf["configMapKeyRef"])
            else:
                raise ConfigError("CreateContainerConfigError",
                                  "unsupported valueFrom in env %s" % e["name"])
            if v is not None:
                put(e["name"], v)
        if "POD_IP" not in env:
            put("POD_IP", self.ip)  # the stand-in's addition: hostNetwork pods bind it
        return env, order

    # -- volumes
    def write_files(self, base, files, default_mode):
        """files: [(relative path, bytes, mode or None)]"""
        for rel, data, mode in files:
            p = os.path.normpath(os.path.join(base, rel))
            if not p.startswith(base + os.sep):
                raise ConfigError("CreateContainerConfigError", "bad volume path %r" % rel)
            os.makedirs(os.path.dirname(p), exist_ok=True)
            tmp = p + ".tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.chmod(tmp, mode if mode is not None else default_mode)
            os.replace(tmp, p)

    def keyed_files(self, data, items):
        if data is None:
            return []
        if not items:
            return [(k, v, None) for k, v in sorted(data.items())]
        out = []
        for it in items:
            if it["key"] not in data:
                raise ConfigError("CreateContainerConfigError", "key %s not found" % it["key"])
            out.append((it["path"], data[it["key"]], it.get("mode")))
        return out

    def downward_files(self, items):
        return [(it["path"], self.field(it["fieldRef"]["fieldPath"]).encode(), it.get("mode"))
                for it in items if "fieldRef" in it]

    def request_token(self, src):
        sa = self.pod["spec"].get("serviceAccountName") or "default"
        spec = {"expirationSeconds": src.get("expirationSeconds", 3600),
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": self.pname,
                                   "uid": self.uid}}
        if src.get("audience"):
            spec["audiences"] = [src["audience"]]
        tr = self.kl.api.call("POST", "/api/v1/namespaces/%s/serviceaccounts/%s/token" % (
            self.ns, sa), {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                           "spec": spec}, ok=(200, 201))
        return tr["status"]["token"].encode(), spec["expirationSeconds"]

    def prepare_volumes(self):
        vols = {}
        for v in self.pod["spec"].get("volumes") or []:
            name = v["name"]
            path = os.path.join(self.dir, "volumes", name)
            os.makedirs(path, exist_ok=True)
            if "emptyDir" in v:
                os.chmod(path, 0o777)
            elif "hostPath" in v:
                path = v["hostPath"]["path"]
                if v["hostPath"].get("type") == "DirectoryOrCreate":
                    os.makedirs(path, exist_ok=True)
            elif "persistentVolumeClaim" in v:
                path = self.claim_path(v["persistentVolumeClaim"]["claimName"])
            elif "secret" in v:
                s = v["secret"]
                self.write_files(path, self.keyed_files(self.obj_data(
                    "secret", s["secretName"], s.get("optional")), s.get("items")),
                    s.get("defaultMode", 0o644))
            elif "configMap" in v:
                s = v["configMap"]
                self.write_files(path, self.keyed_files(self.obj_data(
                    "configmap", s["name"], s.get("optional")), s.get("items")),
                    s.get("defaultMode", 0o644))
            elif "downwardAPI" in v:
                s = v["downwardAPI"]
                self.write_files(path, self.downward_files(s.get("items") or []),
                                 s.get("defaultMode", 0o644))
            elif "projected" in v:
                mode = v["projected"].get("defaultMode", 0o644)
                for src in v["projected"].get("sources") or []:
                    if "serviceAccountToken" in src:
                        t = src["serviceAccountToken"]
                        tok, exp = self.request_token(t)
                        self.write_files(path, [(t["path"], tok, None)], mode)
                        self.tokens.append([time.time() + self.kl.token_life(exp), path, t,
                                            mode])
                    elif "configMap" in src:
                        s = src["configMap"]
                        self.write_files(path, self.keyed_files(self.obj_data(
                            "configmap", s["name"], s.get("optional")), s.get("items")), mode)
                    elif "secret" in src:
                        s = src["secret"]
                        self.write_files(path, self.keyed_files(self.obj_data(
                            "secret", s["name"], s.get("optional")), s.get("items")), mode)
                    elif "downwardAPI" in src:
                        self.write_files(path, self.downward_files(
                            src["downwardAPI"].get("items") or []), mode)
                    else:
                        raise ConfigError("ContainerCreating",
                                          "projected source %s is not supported by the "
                                          "stand-in kubelet" % list(src))
            else:
                raise ConfigError("ContainerCreating", "volume %s: type %s is not supported by "
                                  "the stand-in kubelet" % (name, [k for k in v if k != "name"]))
            if "hostPath" not in v:
                self.set_ownership(path, readonly="emptyDir" not in v and
                                   "persistentVolumeClaim" not in v)
            vols[name] = path
        self.volumes = vols

    def claim_path(self, claim):
        """The directory of the `local` PersistentVolume that the real PV controller bound
        `claim` to (ContainerCreating until it is bound), as the kubelet's local volume plugin
        mounts it; the Node authorizer lets a node read only the claims of its pods and their
        volumes. Other PV types are not supported."""
        pvc = self.get_obj("persistentvolumeclaims", claim)
        if pvc is None:
            raise ConfigError("ContainerCreating", 'persistentvolumeclaim "%s" not found' % claim)
        pv_name = pvc["spec"].get("volumeName")
        if (pvc.get("status") or {}).get("phase") != "Bound" or not pv_name:
            raise ConfigError("ContainerCreating", 'persistentvolumeclaim "%s" is not bound'
                              % claim)
        st, pv = self.kl.api.request("GET", "/api/v1/persistentvolumes/" + pv_name)
        if st != 200:
            raise ConfigError("ContainerCreating", "cannot get persistentvolume %s: %s"
                              % (pv_name, st))
        path = (pv["spec"].get("local") or {}).get("path")
        if not path or not os.path.isdir(path):
            raise ConfigError("ContainerCreating", "persistentvolume %s: only a `local` volume "
                              "with an existing directory is supported by the stand-in kubelet"
                              % pv_name)
        return path

    def set_ownership(self, path, readonly):
        """The pod's fsGroup owns the volume, as the kubelet's SetVolumeOwnership does: group
        fsGroup, group-readable (read-only volumes) or group-writable (emptyDir), directories
        setgid; hostPath is left alone."""
        gid = (self.pod["spec"].get("securityContext") or {}).get("fsGroup")
        if gid is None:
            return
        mask = 0o440 if readonly else 0o660
        for d, dirs, files in os.walk(path):
            for f in [d] + [os.path.join(d, x) for x in files]:
                st = os.lstat(f)
                os.lchown(f, -1, gid)
                if os.path.islink(f):
                    continue
                m = st.st_mode & 0o7777
                os.chmod(f, m | mask | (0o2110 if os.path.isdir(f) else 0))

    def rotate_tokens(self):
        for t in self.tokens:
            if time.time() >= t[0]:
                tok, exp = self.request_token(t[2])
                self.write_files(t[1], [(t[2]["path"], tok, None)], t[3])
                self.set_ownership(t[1], readonly=True)
                t[0] = time.time() + self.kl.token_life(exp)
                log("%s/%s: service account token rotated" % (self.ns, self.pname))

    def write_hosts(self):
        lines = ["# Written by stoke's kubelet stand-in (tests/k8s/kubelet.py): Services name",
                 "# one ready pod's IP each (a headless one every ready pod's). There is no",
                 "# kube-proxy and no DNS.",
                 "127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        if self.ip:
            lines.append("%s\t%s" % (self.ip, self.pod["spec"].get("hostname") or self.pname))
        lines += self.kl.service_hosts(self.ns)
        text = ("\n".join(lines) + "\n").encode()
        try:
            with open(self.hosts_path, "rb") as f:
                if f.read() == text:
                    return
        except OSError:
            pass
        # In place: the file is bind-mounted, a rename would leave the containers the old one.
        fd = os.open(self.hosts_path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, text)
        finally:
            os.close(fd)

    # -- containers
    def sec(self, c):
        pod = dict(self.pod["spec"].get("securityContext") or {})
        ctr = c.get("securityContext") or {}
        merged = dict(pod)
        merged.update(ctr)
        return merged, pod

    def ports(self):
        """(port, proto) to publish for a bridge pod: declared ports and numeric probe ports."""
        out = set()
        for c in (self.pod["spec"].get("containers") or []) + (
                self.pod["spec"].get("initContainers") or []):
            for p in c.get("ports") or []:
                out.add((int(p["containerPort"]), p.get("protocol", "TCP").lower()))
            for k in ("readinessProbe", "livenessProbe", "startupProbe"):
                pr = c.get(k) or {}
                for h in ("httpGet", "tcpSocket"):
                    port = (pr.get(h) or {}).get("port")
                    if isinstance(port, int) or (isinstance(port, str) and port.isdigit()):
                        out.add((int(port), "tcp"))
        return sorted(out)

    def ensure_sandbox(self):
        if self.host_net:
            return
        if self.sandbox:
            info = self.kl.docker.inspect(self.sandbox)
            if info and info["State"]["Running"]:
                return
            # The network namespace went: every container restarts in a new one.
            log("%s/%s: sandbox gone, recreating" % (self.ns, self.pname))
            for cs in self.inits + self.ctrs:
                if cs.id:
                    self.kl.docker.remove(cs.id)
                    self.record_exit(cs, {"exitCode": 137, "reason": "Error"})
            self.kl.docker.remove(self.sandbox)
            self.sandbox = None
        ensure_pause_image(self.kl.docker)
        ports = self.ports()
        body = {"Image": PAUSE_IMAGE, "Labels": self.labels("POD", 0),
                "Hostname": (self.pod["spec"].get("hostname") or self.pname)[:63],
                "ExposedPorts": {"%d/%s" % p: {} for p in ports},
                "HostConfig": {"NetworkMode": "bridge", "PortBindings": {
                    "%d/%s" % p: [{"HostIp": self.ip, "HostPort": str(p[0])}] for p in ports}}}
        name = "k8s_POD_%s_%s_%s" % (self.pname, self.ns, self.uid[:8])
        cid = self.create_and_start(name, body)
        self.sandbox = cid

    def create_and_start(self, name, body):
        docker = self.kl.docker
        if self.kl.stopping.is_set():
            raise ConfigError("CreateContainerError", "the stand-in is stopping")
        st, out = docker.request("POST", "/containers/create?name=" + urllib.parse.quote(name),
                                 body)
        if st == 409:  # a leftover of ours with the same name
            docker.remove(name)
            st, out = docker.request("POST", "/containers/create?name=" +
                                     urllib.parse.quote(name), body)
        if st != 201:
            raise ConfigError("CreateContainerError", "create: %s %s" % (
                st, out.get("message") if isinstance(out, dict) else out))
        cid = out["Id"]
        st, out = docker.request("POST", "/containers/%s/start" % cid)
        if st not in (204, 304):
            docker.remove(cid)
            raise ConfigError("RunContainerError", "start: %s %s" % (
                st, out.get("message") if isinstance(out, dict) else out))
        return cid

    def start_container(self, cs):
        c = cs.spec
        img = self.kl.docker.image(c["image"])
        if not img:
            raise ConfigError("ErrImageNeverPull", 'Container image "%s" is not present with '
                              'pull policy of Never (the stand-in never pulls)' % c["image"])
        cs.image_id = "docker://" + img["Id"]
        env, order = self.build_env(c)
        sec, podsec = self.sec(c)
        user = None
        if "runAsUser" in sec:
            user = str(sec["runAsUser"])
            if "runAsGroup" in sec:
                user += ":%d" % sec["runAsGroup"]
        if sec.get("runAsNonRoot"):
            u = user if user is not None else (img["Config"].get("User") or "0")
            u = u.split(":")[0]
            if not u.isdigit():
                raise ConfigError("CreateContainerConfigError", "container has runAsNonRoot and "
                                  "image has non-numeric user (%s), cannot verify user is "
                                  "non-root" % u)
            if int(u) == 0:
                raise ConfigError("CreateContainerConfigError",
                                  "container has runAsNonRoot and image will run as root")
        hc = {"RestartPolicy": {"Name": "no"}, "Mounts": [],
              "ReadonlyRootfs": bool(sec.get("readOnlyRootFilesystem")),
              "Privileged": bool(sec.get("privileged")), "SecurityOpt": []}
        caps = sec.get("capabilities") or {}
        if caps.get("drop"):
            hc["CapDrop"] = caps["drop"]
        if caps.get("add"):
            hc["CapAdd"] = caps["add"]
        if sec.get("allowPrivilegeEscalation") is False:
            hc["SecurityOpt"].append("no-new-privileges:true")
        sp = (sec.get("seccompProfile") or {}).get("type")
        if sp == "Unconfined":
            hc["SecurityOpt"].append("seccomp=unconfined")
        groups = [str(g) for g in podsec.get("supplementalGroups") or []]
        if "fsGroup" in podsec:
            groups.append(str(podsec["fsGroup"]))
        if groups:
            hc["GroupAdd"] = groups
        res = c.get("resources") or {}
        lim, req = res.get("limits") or {}, res.get("requests") or {}
        if "memory" in lim:
            hc["Memory"] = hc["MemorySwap"] = int(quantity(lim["memory"]))
        if "cpu" in lim:
            hc["NanoCpus"] = int(quantity(lim["cpu"]) * 1e9)
        if "cpu" in req:
            hc["CpuShares"] = max(2, int(quantity(req["cpu"]) * 1024))
        if self.host_net:
            hc["NetworkMode"] = "host"
        else:
            hc["NetworkMode"] = "container:" + self.sandbox
        for m in c.get("volumeMounts") or []:
            if m["name"] not in self.volumes:
                raise ConfigError("CreateContainerConfigError", "volumeMount %s: no volume of "
                                  "that name" % m["name"])
            src = self.volumes[m["name"]]
            if m.get("subPath"):
                src = os.path.join(src, m["subPath"])
                if not os.path.exists(src):
                    os.makedirs(src, exist_ok=True)
            vol = next(v for v in self.pod["spec"]["volumes"] if v["name"] == m["name"])
            ro = bool(m.get("readOnly")) or any(k in vol for k in (
                "secret", "configMap", "projected", "downwardAPI"))
            hc["Mounts"].append({"Type": "bind", "Source": src, "Target": m["mountPath"],
                                 "ReadOnly": ro})
        hc["Mounts"].append({"Type": "bind", "Source": self.hosts_path, "Target": "/etc/hosts",
                             "ReadOnly": True})
        tlog = os.path.join(self.dir, "termination-%s-%d" % (c["name"], cs.attempt))
        open(tlog, "wb").close()
        os.chmod(tlog, 0o666)
        hc["Mounts"].append({"Type": "bind", "Source": tlog, "Target": c.get(
            "terminationMessagePath", "/dev/termination-log"), "ReadOnly": False})
        body = {"Image": c["image"], "Env": ["%s=%s" % (k, env[k]) for k in order],
                "Labels": self.labels(c["name"], cs.attempt), "HostConfig": hc,
                "Tty": bool(c.get("tty")), "OpenStdin": bool(c.get("stdin"))}
        if c.get("command"):
            body["Entrypoint"] = [expand(a, env) for a in c["command"]]
            body["Cmd"] = [expand(a, env) for a in c.get("args") or []]
        elif c.get("args"):
            body["Cmd"] = [expand(a, env) for a in c["args"]]
        if c.get("workingDir"):
            body["WorkingDir"] = c["workingDir"]
        if user is not None:
            body["User"] = user
        name = "k8s_%s_%s_%s_%s_%d" % (c["name"], self.pname, self.ns, self.uid[:8], cs.attempt)
        cs.tlog = tlog
        cs.id = self.create_and_start(name, body)
        cs.attempt += 1
        cs.started_at = time.time()
        cs.term = None
        cs.waiting = None
        cs.killed_for = None
        cs.reset_probes()
        t = time.monotonic()
        for p in (cs.readiness, cs.liveness, cs.startup):
            if p.spec:
                p.next = t + p.spec.get("initialDelaySeconds", 0)

    def record_exit(self, cs, term):
        cs.last_term = cs.term = term
        cs.id = None

    def container_exited(self, cs, info):
        st = info["State"]
        code = st.get("ExitCode", 0)
        reason = "OOMKilled" if st.get("OOMKilled") else ("Completed" if code == 0 else "Error")
        term = {"exitCode": code, "reason": reason, "containerID": "docker://" + info["Id"],
                "startedAt": now_rfc3339(docker_time(st.get("StartedAt")) or cs.started_at),
                "finishedAt": now_rfc3339(docker_time(st.get("FinishedAt")) or time.time())}
        msg = ""
        try:
            with open(cs.tlog, "rb") as f:
                msg = f.read(4096).decode(errors="replace")
        except (OSError, AttributeError):
            pass
        if not msg and code != 0 and cs.spec.get(
                "terminationMessagePolicy") == "FallbackToLogsOnError":
            msg = self.kl.docker.logs_tail(info["Id"])[-2048:]
        if cs.killed_for:
            msg = msg or cs.killed_for
        if msg:
            term["message"] = msg
        ran = (docker_time(st.get("FinishedAt")) or time.time()) - (cs.started_at or time.time())
        # The exited container stays (for its log, Cluster.pod_logs(previous=True)) until the
        # next one exits, as the kubelet keeps the previous one.
        if cs.prev_id:
            self.kl.docker.remove(cs.prev_id)
        cs.prev_id = info["Id"]
        self.record_exit(cs, term)
        policy = self.pod["spec"].get("restartPolicy", "Always")
        if self.terminating or (cs.init and code == 0):
            cs.done = True
        elif policy == "Always" or (policy == "OnFailure" and code != 0):
            if ran >= 600:
                cs.delay = 0.0
            cs.restart_at = time.monotonic() + cs.delay
            cs.delay = self.kl.backoff_base if cs.delay == 0 else min(
                cs.delay * 2, self.kl.backoff_max)
        else:
            cs.done = True
        log("%s/%s: container %s exited %d%s" % (self.ns, self.pname, cs.spec["name"], code,
                                                 "" if cs.done else ", restarting"))

    def run_probe(self, cs, p):
        spec = p.spec
        timeout = spec.get("timeoutSeconds", 1)
        ports = {pp.get("name"): pp["containerPort"] for pp in cs.spec.get("ports") or []}

        def port_of(v):
            return int(v) if isinstance(v, int) or str(v).isdigit() else ports.get(v)
        try:
            if "httpGet" in spec:
                h = spec["httpGet"]
                port = port_of(h["port"])
                host = h.get("host") or self.ip
                if h.get("scheme", "HTTP").upper() == "HTTPS":
                    conn = http.client.HTTPSConnection(
                        host, port, timeout=timeout, context=ssl._create_unverified_context())
                else:
                    conn = http.client.HTTPConnection(host, port, timeout=timeout)
                try:
                    hdrs = {x["name"]: x["value"] for x in h.get("httpHeaders") or []}
                    hdrs.setdefault("User-Agent", "kube-probe/stoke-standin")
                    conn.request("GET", h.get("path", "/"), headers=hdrs)
                    r = conn.getresponse()
                    r.read(10240)
                    return 200 <= r.status < 400, "HTTP probe failed with statuscode: %d" % r.status
                finally:
                    conn.close()
            if "tcpSocket" in spec:
                t = spec["tcpSocket"]
                socket.create_connection((t.get("host") or self.ip, port_of(t["port"])),
                                         timeout).close()
                return True, ""
            if "exec" in spec:
                code = self.kl.docker.exec(cs.id, spec["exec"]["command"], timeout)
                return code == 0, "exec probe: exit %s" % code
            return False, "probe type not supported by the stand-in kubelet"
        except (OSError, http.client.HTTPException) as e:
            return False, str(e)

    def probes(self, cs):
        """Runs the probes that are due; returns the time of the next one."""
        t = time.monotonic()
        order = [cs.startup] if not cs.startup.ok else [cs.liveness, cs.readiness]
        nxt = t + 60
        for p in order:
            if not p.spec:
                continue
            if t >= p.next:
                ok, msg = self.run_probe(cs, p)
                if ok:
                    p.succ, p.fail = p.succ + 1, 0
                    if p.succ >= p.spec.get("successThreshold", 1):
                        p.ok = True
                else:
                    p.fail, p.succ = p.fail + 1, 0
                    if p.fail >= p.spec.get("failureThreshold", 3):
                        if p.kind == "readiness":
                            if p.ok:
                                self.event("Unhealthy", "Readiness probe failed: " + msg,
                                           "Warning")
                            p.ok = False
                        else:
                            self.event("Unhealthy", "%s probe failed: %s" % (
                                p.kind.capitalize(), msg), "Warning")
                            log("%s/%s: %s %s probe failed: %s; killing it" % (
                                self.ns, self.pname, cs.spec["name"], p.kind, msg))
                            cs.killed_for = "%s probe failed: %s" % (p.kind.capitalize(), msg)
                            grace = spec_grace = p.spec.get("terminationGracePeriodSeconds")
                            if spec_grace is None:
                                grace = self.pod["spec"].get("terminationGracePeriodSeconds", 30)
                            self.stop_one(cs, grace)
                            return time.monotonic()
                p.next = time.monotonic() + p.period()
            nxt = min(nxt, p.next)
        return nxt

    def pre_stop(self, cs, grace):
        """The container's preStop hook (exec, httpGet or sleep), within the grace period."""
        h = ((cs.spec.get("lifecycle") or {}).get("preStop")) or {}
        try:
            if "exec" in h:
                self.kl.docker.exec(cs.id, h["exec"]["command"], grace)
            elif "httpGet" in h:
                g = h["httpGet"]
                ports = {pp.get("name"): pp["containerPort"] for pp in cs.spec.get("ports") or []}
                port = g["port"] if str(g["port"]).isdigit() else ports.get(g["port"])
                conn = http.client.HTTPConnection(g.get("host") or self.ip, int(port),
                                                  timeout=max(grace, 1))
                try:
                    conn.request("GET", g.get("path", "/"))
                    conn.getresponse().read(10240)
                finally:
                    conn.close()
            elif "sleep" in h:
                self.wake.wait(min(grace, h["sleep"].get("seconds", 0)))
        except (OSError, http.client.HTTPException, TypeError, ValueError) as e:
            log("%s/%s: %s preStop hook: %s" % (self.ns, self.pname, cs.spec["name"], e))

    def stop_one(self, cs, grace):
        """The stop signal, then SIGKILL after `grace` s (a shorter grace given meanwhile by a
        second deletion wins)."""
        if not cs.id:
            return
        deadline = time.monotonic() + grace
        self.pre_stop(cs, grace)
        info = self.kl.docker.inspect(cs.id)
        sig = ((info or {}).get("Config") or {}).get("StopSignal") or "SIGTERM"
        self.kl.docker.kill(cs.id, sig)
        while True:
            info = self.kl.docker.inspect(cs.id)
            if not info or not info["State"]["Running"]:
                break
            dl = self.pod["metadata"].get("deletionGracePeriodSeconds")
            if dl is not None:
                deadline = min(deadline, self.term_started + dl)
            if time.monotonic() >= deadline:
                self.kl.docker.kill(cs.id, "SIGKILL")
                deadline = time.monotonic() + 30
            self.wake.wait(0.1)
            self.wake.clear()
        if info:
            self.container_exited(cs, info)

    # -- status
    def cond(self, typ, ok):
        s = "True" if ok else "False"
        old = self.conds.get(typ)
        if not old or old[0] != s:
            self.conds[typ] = (s, now_rfc3339())
        return {"type": typ, "status": s, "lastProbeTime": None,
                "lastTransitionTime": self.conds[typ][1]}

    def cstatus(self, cs):
        c = cs.spec
        st = {"name": c["name"], "image": c["image"], "imageID": cs.image_id,
              "ready": cs.ready(), "restartCount": max(0, cs.attempt - 1),
              "started": bool(cs.id) and cs.startup.ok, "lastState": {}}
        if cs.id:
            st["containerID"] = "docker://" + cs.id
            st["state"] = {"running": {"startedAt": now_rfc3339(cs.started_at)}}
        elif cs.done and cs.term:
            st["containerID"] = cs.term["containerID"]
            st["state"] = {"terminated": cs.term}
        else:
            reason, msg = cs.waiting or ("ContainerCreating", None)
            w = {"reason": reason}
            if msg:
                w["message"] = msg
            st["state"] = {"waiting": w}
        if cs.last_term and not (cs.done and cs.term is cs.last_term):
            st["lastState"] = {"terminated": cs.last_term}
        return st

    def phase(self):
        for cs in self.inits:
            if not cs.done:
                return "Pending"
            if cs.term and cs.term["exitCode"] != 0:
                return "Failed"
        if any(cs.attempt == 0 for cs in self.ctrs):
            return "Pending"
        if all(cs.done for cs in self.ctrs):
            return "Succeeded" if all(cs.term and cs.term["exitCode"] == 0
                                      for cs in self.ctrs) else "Failed"
        return "Running"

    def push_status(self):
        inits_done = all(cs.done and cs.term and cs.term["exitCode"] == 0 for cs in self.inits)
        ready = inits_done and all(cs.ready() for cs in self.ctrs)
        st = {"phase": self.phase(), "hostIP": self.kl.host_ip,
              "hostIPs": [{"ip": self.kl.host_ip}], "startTime": self.start_time,
              "conditions": [self.cond("PodReadyToStartContainers", self.volumes is not None),
                             self.cond("Initialized", inits_done),
                             self.cond("ContainersReady", ready), self.cond("Ready", ready)],
              "containerStatuses": [self.cstatus(cs) for cs in self.ctrs]}
        if self.inits:
            st["initContainerStatuses"] = [self.cstatus(cs) for cs in self.inits]
        if self.ip:
            st["podIP"] = self.ip
            st["podIPs"] = [{"ip": self.ip}]
        if st == self.last_status:
            return
        s, body = self.kl.api.request("PATCH", self.api_path("/status"), {"status": st},
                                      content_type="application/strategic-merge-patch+json")
        if s == 200:
            self.last_status = st
            self.kl.pod_status_changed(body)
        elif s != 404:
            log("%s/%s: status patch: %s %s" % (self.ns, self.pname, s,
                                                 body.get("message") if isinstance(body, dict)
                                                 else body))

    # -- the loop
    def run(self):
        try:
            self.setup()
            while True:
                if self.kl.stopping.is_set():
                    return  # shutdown() removes the containers
                if self.gone:
                    self.teardown()
                    return
                if self.pod["metadata"].get("deletionTimestamp"):
                    self.terminate()
                    return
                try:
                    nxt = self.sync()
                except ConfigError as e:
                    log("%s/%s: %s: %s" % (self.ns, self.pname, e.reason, e))
                    nxt = time.monotonic() + 2
                except (OSError, http.client.HTTPException, kapi.APIError) as e:
                    log("%s/%s: sync: %s" % (self.ns, self.pname, e))
                    nxt = time.monotonic() + 1
                try:
                    self.push_status()
                except (OSError, http.client.HTTPException) as e:
                    log("%s/%s: status: %s" % (self.ns, self.pname, e))
                    nxt = min(nxt, time.monotonic() + 1)
                self.wake.wait(max(0.05, min(nxt - time.monotonic(), 2.0)))
                self.wake.clear()
        except Exception:
            log("%s/%s: worker crashed:\n%s" % (self.ns, self.pname, traceback.format_exc()))
            self.teardown()
        finally:
            self.kl.worker_done(self)

    def setup(self):
        os.makedirs(self.dir, exist_ok=True)
        # The address the pod had (a stand-in restarted with the same --pod-net), if free.
        self.ip = self.kl.podnet.alloc(self.pod.get("status", {}).get("podIP"))
        self.write_hosts()
        log("%s/%s: pod IP %s%s" % (self.ns, self.pname, self.ip,
                                    " (host network)" if self.host_net else ""))

    def sync(self):
        if self.volumes is None:
            try:
                self.prepare_volumes()
            except ConfigError as e:
                for cs in self.inits + self.ctrs:
                    cs.waiting = ("ContainerCreating", str(e))
                raise
        self.rotate_tokens()
        self.ensure_sandbox()
        nxt = time.monotonic() + 2
        todo = self.ctrs
        for cs in self.inits:
            if not cs.done or (cs.term or {}).get("exitCode", 1) != 0:
                todo = [cs] if not cs.done else []
                for c in self.ctrs:
                    c.waiting = ("PodInitializing", None)
                break
        for cs in todo:
            nxt = min(nxt, self.sync_container(cs))
        return nxt

    def sync_container(self, cs):
        t = time.monotonic()
        if cs.id:
            info = self.kl.docker.inspect(cs.id)
            if info and info["State"]["Running"]:
                return self.probes(cs) if not cs.init else t + 2
            if info:
                self.container_exited(cs, info)
            else:
                self.record_exit(cs, {"exitCode": 137, "reason": "Error",
                                      "message": "container removed from the engine"})
                cs.restart_at = t
        if cs.done:
            return t + 60
        if cs.restart_at and t < cs.restart_at:
            cs.waiting = ("CrashLoopBackOff", "back-off %ds restarting failed container=%s pod=%s"
                          % (round(cs.delay), cs.spec["name"], self.pname))
            self.event("BackOff", "Back-off restarting failed container %s" % cs.spec["name"],
                       "Warning")
            return cs.restart_at
        try:
            self.start_container(cs)
            cs.restart_at = None
            self.event("Started", "Started container %s" % cs.spec["name"])
        except ConfigError as e:
            cs.waiting = (e.reason, str(e))
            self.event("Failed", "Error: %s" % e, "Warning")
            if e.reason in ("RunContainerError", "CreateContainerError"):
                cs.restart_at = t + max(cs.delay, 1.0)
                cs.delay = self.kl.backoff_base if cs.delay == 0 else min(
                    cs.delay * 2, self.kl.backoff_max)
            log("%s/%s: container %s: %s: %s" % (self.ns, self.pname, cs.spec["name"], e.reason,
                                                 e))
            return t + 2
        return t + 0.05

    def terminate(self):
        """Graceful deletion: stop the containers within the grace period, report the
        terminal status, then finish the deletion with grace 0."""
        self.term_started = time.monotonic()
        self.terminating = True
        md = self.pod["metadata"]
        grace = md.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = self.pod["spec"].get("terminationGracePeriodSeconds", 30)
        log("%s/%s: deleting (grace %ss)" % (self.ns, self.pname, grace))
        live = [cs for cs in self.inits + self.ctrs if cs.id]
        for cs in live:
            self.event("Killing", "Stopping container %s" % cs.spec["name"])
        threads = [threading.Thread(target=self.stop_one, args=(cs, grace)) for cs in live]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        for cs in self.inits + self.ctrs:
            cs.done = True
            if cs.id:
                self.kl.docker.remove(cs.id)
                self.record_exit(cs, {"exitCode": 137, "reason": "Error"})
        try:
            self.push_status()
        except (OSError, http.client.HTTPException) as e:
            log("%s/%s: status: %s" % (self.ns, self.pname, e))
        st, body = self.kl.api.request("DELETE", self.api_path(), {
            "apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
            "preconditions": {"uid": self.uid}})
        if st not in (200, 404, 409):
            log("%s/%s: final delete: %s %s" % (self.ns, self.pname, st, body))
        self.teardown()

    def teardown(self):
        if self.finished:
            return
        self.finished = True
        for c in self.kl.docker.list({L_UID: self.uid, L_OWNER: self.kl.owner}):
            self.kl.docker.remove(c["Id"])
        if self.ip:
            self.kl.podnet.release(self.ip)
        shutil.rmtree(self.dir, ignore_errors=True)
        log("%s/%s: removed" % (self.ns, self.pname))


# --- the node -------------------------------------------------------------------------------
class Kubelet:
    def __init__(self, a):
        self.node, self.run_id, self.root = a.node_name, a.run_id, a.root_dir
        self.api = kapi.Client(a.server, a.ca, a.cert, a.key)
        self.sched = kapi.Client(a.server, a.ca, a.scheduler_cert, a.scheduler_key)
        self.api_port = self.api.port
        self.host_ip = "127.0.0.1"
        self.docker = Docker()
        self.owner = "%d:%s" % (os.getpid(), proc_start_time(os.getpid()))
        self.podnet = PodNet(a.pod_net)
        self.tls = (a.cert, a.key, a.ca)  # also the kubelet API's serving certificate
        self.kubelet_port = 0
        self.backoff_base, self.backoff_max = a.backoff_base, a.backoff_max
        self.token_rotate = a.token_rotate_after
        with open("/proc/meminfo") as f:
            self.mem_bytes = int(f.readline().split()[1]) * 1024
        self.lock = threading.RLock()
        self.workers = {}
        self.all_pods = {}  # uid -> pod, every pod in the cluster (for Services)
        self.services = {}  # (ns, name) -> service
        self.svc_choice = {}  # (ns, name) -> [pod IP]: one, every ready one when headless
        self.hosts_dirty = threading.Event()
        self.bind_queue = []
        self.ready_nodes = set()
        self.bind_wake = threading.Event()
        self.stopping = threading.Event()
        self.labels = {"kubernetes.io/hostname": self.node, "kubernetes.io/os": "linux",
                       "kubernetes.io/arch": "amd64", "stoke.dev/kubelet-stand-in": "true"}
        os.makedirs(self.root, exist_ok=True)

    def token_life(self, exp):
        """Seconds until a token valid for `exp` s is replaced: 80 % of its life, as the
        kubelet does, or --token-rotate-after."""
        return self.token_rotate if self.token_rotate else 0.8 * exp

    # -- node
    def register(self):
        node = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": self.node, "labels": self.labels}, "spec": {}}
        st, body = self.api.request("POST", "/api/v1/nodes", node)
        if st not in (201, 409):
            raise kapi.APIError(st, body, "register node")
        self.heartbeat()

    def heartbeat(self):
        t = now_rfc3339()
        cpu = str(os.cpu_count())
        mem = "%dKi" % (self.mem_bytes // 1024)
        conds = [{"type": typ, "status": s, "reason": r, "message": m, "lastHeartbeatTime": t,
                  "lastTransitionTime": self.started}
                 for typ, s, r, m in (
                     ("MemoryPressure", "False", "KubeletHasSufficientMemory", "stand-in"),
                     ("DiskPressure", "False", "KubeletHasNoDiskPressure", "stand-in"),
                     ("PIDPressure", "False", "KubeletHasSufficientPID", "stand-in"),
                     ("Ready", "True", "KubeletReady",
                      "stoke's kubelet stand-in is posting ready status"))]
        self.api.call("PATCH", "/api/v1/nodes/%s/status" % self.node, {"status": {
            "capacity": {"cpu": cpu, "memory": mem, "pods": "110"},
            "allocatable": {"cpu": cpu, "memory": mem, "pods": "110"},
            "conditions": conds,
            "addresses": [{"type": "InternalIP", "address": self.host_ip},
                          {"type": "Hostname", "address": self.node}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.kubelet_port}},
            "nodeInfo": {"machineID": "", "systemUUID": "", "bootID": "",
                         "kernelVersion": os.uname().release, "osImage": "stoke test node",
                         "containerRuntimeVersion": "docker://engine",
                         "kubeletVersion": "v0.0.0-stoke-stand-in",
                         "kubeProxyVersion": "", "operatingSystem": "linux",
                         "architecture": "amd64"}}},
            content_type="application/strategic-merge-patch+json")
        lease = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/" + self.node
        st, _ = self.api.request("PATCH", lease, {"spec": {"renewTime": now_micro()}},
                                 content_type="application/merge-patch+json")
        if st == 404:
            self.api.request("POST", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/"
                             "leases", {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                                        "metadata": {"name": self.node},
                                        "spec": {"holderIdentity": self.node,
                                                 "leaseDurationSeconds": 40,
                                                 "renewTime": now_micro()}})

    def heartbeat_loop(self):
        last_reap = time.monotonic()
        while not self.stopping.wait(10):
            try:
                self.heartbeat()
            except (OSError, http.client.HTTPException, kapi.APIError) as e:
                log("heartbeat: %s" % e)
            if time.monotonic() - last_reap > 30:
                last_reap = time.monotonic()
                try:
                    reap_orphans(self.docker)
                except OSError as e:
                    log("reap: %s" % e)

    # -- pods on this node
    def ensure_worker(self, pod):
        uid = pod["metadata"]["uid"]
        with self.lock:
            w = self.workers.get(uid)
            if w:
                w.update(pod)
                return
            if pod.get("status", {}).get("phase") in ("Succeeded", "Failed") and \
                    not pod["metadata"].get("deletionTimestamp"):
                return  # finished before this stand-in started: nothing to run
            w = PodWorker(self, pod)
            self.workers[uid] = w
        w.start()

    def on_node_pods(self, items):
        uids = set()
        for p in items:
            uids.add(p["metadata"]["uid"])
            self.ensure_worker(p)
        with self.lock:
            for uid, w in list(self.workers.items()):
                if uid not in uids:
                    w.deleted()

    def on_node_pod(self, typ, pod):
        if typ == "DELETED":
            with self.lock:
                w = self.workers.get(pod["metadata"]["uid"])
            if w:
                w.deleted()
        else:
            self.ensure_worker(pod)

    def worker_done(self, w):
        with self.lock:
            if self.workers.get(w.uid) is w:
                del self.workers[w.uid]

    # -- every pod (scheduling, Services)
    def on_all_pods(self, items):
        with self.lock:
            self.all_pods = {p["metadata"]["uid"]: p for p in items}
        for p in items:
            self.maybe_bind(p)
        self.hosts_dirty.set()

    def on_all_pod(self, typ, pod):
        uid = pod["metadata"]["uid"]
        with self.lock:
            if typ == "DELETED":
                self.all_pods.pop(uid, None)
            else:
                self.all_pods[uid] = pod
        if typ != "DELETED":
            self.maybe_bind(pod)
        self.hosts_dirty.set()

    def pod_status_changed(self, pod):
        with self.lock:
            if pod["metadata"]["uid"] in self.all_pods:
                self.all_pods[pod["metadata"]["uid"]] = pod
        self.hosts_dirty.set()

    def maybe_bind(self, pod):
        spec, md = pod["spec"], pod["metadata"]
        if spec.get("nodeName") or md.get("deletionTimestamp"):
            return
        if spec.get("schedulerName", "default-scheduler") != "default-scheduler":
            return
        if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            return
        if not all(self.labels.get(k) == v for k, v in (spec.get("nodeSelector") or {}).items()):
            return
        with self.lock:
            self.bind_queue.append((time.monotonic(), pod))
        self.bind_wake.set()

    def on_nodes(self, items):
        with self.lock:
            self.ready_nodes = {n["metadata"]["name"] for n in items if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in n.get("status", {}).get("conditions") or [])}

    def on_node(self, typ, n):
        items = [] if typ == "DELETED" else [n]
        with self.lock:
            others = {x for x in self.ready_nodes if x != n["metadata"]["name"]}
        self.on_nodes(items)
        with self.lock:
            self.ready_nodes |= others

    def least_loaded(self):
        """Whether this node runs no more pods than any other Ready stand-in node (the
        spreading a scheduler would do, roughly)."""
        with self.lock:
            load = {n: 0 for n in self.ready_nodes | {self.node}}
            for p in self.all_pods.values():
                n = p["spec"].get("nodeName")
                if n in load and not p["metadata"].get("deletionTimestamp") and \
                        p.get("status", {}).get("phase") not in ("Succeeded", "Failed"):
                    load[n] += 1
        return load[self.node] <= min(load.values())

    def bind_loop(self):
        while not self.stopping.is_set():
            self.bind_wake.wait(0.2 if self.bind_queue else 1)
            self.bind_wake.clear()
            with self.lock:
                q, self.bind_queue = self.bind_queue, []
            for seen, pod in q:
                md = pod["metadata"]
                with self.lock:
                    cur = self.all_pods.get(md["uid"])
                if cur is None or cur["spec"].get("nodeName"):
                    continue  # gone, or bound meanwhile
                # Another node runs fewer pods: leave it the pod for a second, then take it
                # should that node not have.
                if time.monotonic() - seen < 1.0 and not self.least_loaded():
                    with self.lock:
                        self.bind_queue.append((seen, pod))
                    continue
                st, body = self.sched.request(
                    "POST", "/api/v1/namespaces/%s/pods/%s/binding" % (md["namespace"], md["name"]),
                    {"apiVersion": "v1", "kind": "Binding",
                     "metadata": {"name": md["name"], "uid": md["uid"]},
                     "target": {"apiVersion": "v1", "kind": "Node", "name": self.node}})
                if st == 201:
                    log("bound %s/%s to %s" % (md["namespace"], md["name"], self.node))
                    post_event(self.sched, pod, "default-scheduler", "", "Scheduled",
                               "Successfully assigned %s/%s to %s (stoke's kubelet stand-in)"
                               % (md["namespace"], md["name"], self.node))
                    with self.lock:  # counts for the next one before the watch says so
                        if md["uid"] in self.all_pods:
                            p = dict(self.all_pods[md["uid"]])
                            p["spec"] = dict(p["spec"], nodeName=self.node)
                            self.all_pods[md["uid"]] = p
                elif st not in (409, 404):
                    log("binding %s/%s: %s %s" % (md["namespace"], md["name"], st, body))

    # -- Services -> /etc/hosts
    def on_services(self, items):
        with self.lock:
            self.services = {(s["metadata"]["namespace"], s["metadata"]["name"]): s for s in items}
        self.hosts_dirty.set()

    def on_service(self, typ, svc):
        key = (svc["metadata"]["namespace"], svc["metadata"]["name"])
        with self.lock:
            if typ == "DELETED":
                self.services.pop(key, None)
            else:
                self.services[key] = svc
        self.hosts_dirty.set()

    def compute_choices(self):
        with self.lock:
            ready = {}
            for p in self.all_pods.values():
                st = p.get("status") or {}
                if p["metadata"].get("deletionTimestamp") or not st.get("podIP"):
                    continue
                if not any(c["type"] == "Ready" and c["status"] == "True"
                           for c in st.get("conditions") or []):
                    continue
                ready.setdefault(p["metadata"]["namespace"], []).append(p)
            choice = {}
            for key, svc in self.services.items():
                spec = svc.get("spec") or {}
                if spec.get("type") == "ExternalName":
                    continue
                cands = sorted((p for p in ready.get(key[0], [])
                                if selector_matches(spec.get("selector"), p["metadata"].get(
                                    "labels") or {})),
                               key=lambda p: (p["metadata"]["creationTimestamp"],
                                              p["metadata"]["name"]))
                ips = [p["status"]["podIP"] for p in cands]
                if not ips:
                    continue
                if spec.get("clusterIP") == "None":
                    choice[key] = ips  # headless: its name lists every ready pod
                    continue
                old = self.svc_choice.get(key)
                choice[key] = old if old and old[0] in ips else ips[:1]
            self.svc_choice = choice

    def service_hosts(self, ns):
        with self.lock:
            out = []
            for (sns, name), ips in sorted(self.svc_choice.items()):
                names = ["%s.%s" % (name, sns), "%s.%s.svc" % (name, sns),
                         "%s.%s.svc.cluster.local" % (name, sns)]
                if sns == ns:
                    names.insert(0, name)
                out += ["%s\t%s" % (ip, " ".join(names)) for ip in ips]
            return out

    def hosts_loop(self):
        while not self.stopping.is_set():
            self.hosts_dirty.wait(1)
            if self.stopping.is_set():
                return
            self.hosts_dirty.clear()
            self.compute_choices()
            with self.lock:
                ws = list(self.workers.values())
            for w in ws:
                if w.ip and not w.finished:
                    try:
                        w.write_hosts()
                    except OSError:
                        pass

    # -- engine events
    def events_loop(self):
        f = json.dumps({"type": ["container"], "event": ["die", "oom"],
                        "label": ["%s=%s" % (L_OWNER, self.owner)]})
        while not self.stopping.is_set():
            c = _UnixConn(self.docker.sock, None)
            try:
                c.request("GET", "/events?filters=" + urllib.parse.quote(f))
                r = c.getresponse()
                while not self.stopping.is_set():
                    line = r.readline()
                    if not line:
                        break
                    ev = json.loads(line)
                    uid = ev.get("Actor", {}).get("Attributes", {}).get(L_UID)
                    with self.lock:
                        w = self.workers.get(uid)
                    if w:
                        w.wake.set()
            except (OSError, http.client.HTTPException, ValueError) as e:
                log("engine events: %s" % e)
                self.stopping.wait(1)
            finally:
                c.close()

    def run(self):
        self.started = now_rfc3339()
        reap_orphans(self.docker)
        self.logs_server = serve_logs(self, *self.tls)
        self.kubelet_port = self.logs_server.server_address[1]
        self.register()
        log("node %s registered; pod IPs %s.0/24; API server %s" % (
            self.node, self.podnet.prefix, self.api.server))
        for target in (self.heartbeat_loop, self.bind_loop, self.hosts_loop, self.events_loop):
            threading.Thread(target=target, daemon=True, name=target.__name__).start()
        self.informers = [
            kapi.Informer(self.sched, "/api/v1/pods", self.on_all_pods, self.on_all_pod,
                          "all-pods", log),
            kapi.Informer(self.sched, "/api/v1/nodes?labelSelector=" + urllib.parse.quote(
                "stoke.dev/kubelet-stand-in=true"), self.on_nodes, self.on_node, "nodes", log),
            kapi.Informer(self.api, "/api/v1/services", self.on_services, self.on_service,
                          "services", log),
            kapi.Informer(self.api, "/api/v1/pods?fieldSelector=" + urllib.parse.quote(
                "spec.nodeName=" + self.node), self.on_node_pods, self.on_node_pod,
                "node-pods", log)]
        for i in self.informers:
            i.start()
        self.stopping.wait()

    def shutdown(self):
        """SIGTERM: every container of this stand-in goes (the pods stay in the API, bound to
        a node that will stop heartbeating, as when a node goes away)."""
        self.stopping.set()
        if getattr(self, "logs_server", None):
            self.logs_server.shutdown()
            self.logs_server.server_close()
        for i in getattr(self, "informers", []):
            i.stop()
        # Twice: a worker may be creating a container as the first sweep runs; the workers
        # create none once they see `stopping`, and end.
        for sweep in range(2):
            try:
                self.docker.remove_labelled({L_OWNER: self.owner})
            except OSError as e:
                log("cleanup: %s" % e)
            if sweep == 0:
                deadline = time.monotonic() + 10
                with self.lock:
                    ws = list(self.workers.values())
                for w in ws:
                    w.wake.set()
                    w.join(max(0.0, deadline - time.monotonic()))
        shutil.rmtree(self.root, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--cert", required=True, help="client certificate of system:node:NAME, "
                    "also the serving one of its kubelet API (SANs: the node's address)")
    ap.add_argument("--key", required=True)
    ap.add_argument("--scheduler-cert", required=True,
                    help="client certificate of system:kube-scheduler (for pods/binding)")
    ap.add_argument("--scheduler-key", required=True)
    ap.add_argument("--node-name", required=True)
    ap.add_argument("--run-id", required=True, help="labels every container (cleanup by run)")
    ap.add_argument("--root-dir", required=True, help="volumes and hosts files of the pods")
    ap.add_argument("--pod-net", help="127.A.B to use for pod IPs (default: a free one)")
    ap.add_argument("--backoff-base", type=float, default=10.0)
    ap.add_argument("--backoff-max", type=float, default=300.0)
    ap.add_argument("--token-rotate-after", type=float, default=0,
                    help="replace service account tokens after this many seconds (default: "
                    "80%% of their life), to test clients that must re-read them")
    a = ap.parse_args()
    kl = Kubelet(a)

    def on_term(*_):
        kl.stopping.set()
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    failed = []

    def run():
        try:
            kl.run()
        except Exception:
            log("failed:\n" + traceback.format_exc())
            failed.append(1)
            kl.stopping.set()
    t = threading.Thread(target=run, daemon=True, name="main")
    t.start()
    kl.stopping.wait()
    kl.shutdown()
    log("stopped")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
