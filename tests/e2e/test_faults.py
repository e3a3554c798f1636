"""Faults under load, each with its counts asserted: a misbehaving engine
(tests/e2e/engine_proxy.py in front of the engine's socket answers a share
of the calls with 500, a 3 s delay or a closed connection), a replica
OOM-killed by the kernel, and a full disk under the functions directory
while a spec is PUT through the admin API."""

import http.client
import json
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import (BUILD, DOCKER_SOCK, Load, Stoke, engine, popen_daemon,  # noqa: E402
                     run_tests, spec_text, terminate)

FN = "/api/v1/functions/"


def metrics(s):
    """The controller's /metrics as {'name{labels}': value}."""
    c = http.client.HTTPConnection("127.0.0.1", s.ctl_ops_port, timeout=10)
    try:
        c.request("GET", "/metrics")
        r = c.getresponse()
        assert r.status == 200, r.status
        samples = [ln.rsplit(" ", 1) for ln in r.read().decode().splitlines()
                   if ln and not ln.startswith("#")]
    finally:
        c.close()
    return {k: float(v) for k, v in samples}


def metric(m, key):
    """A series' value; fails when it is absent (absent is not 0)."""
    assert key in m, "no series %s in %r" % (key, sorted(m)[:80])
    return m[key]


def stoke(name):
    """A Stoke whose replica ports are a block of 128 that nothing holds
    now: the harness's random block may be taken by a benchmark's
    hundreds of replicas beside this test, and every create would then
    fail with EADDRINUSE before any fault is injected."""
    s = Stoke(name)
    blocks = list(range(30000, 32512, 128))
    random.shuffle(blocks)
    for lo in blocks:
        if all(port_free(p) for p in range(lo, lo + 128)):
            s.port_range = "%d-%d" % (lo, lo + 127)
            break
    return s


def port_free(port):
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def status(s, name):
    r = s.api("GET", FN + name + "/status")
    assert r.status == 200, r
    return r.json


# ---- a misbehaving engine ----------------------------------------------------


class EngineProxy:
    """tests/e2e/engine_proxy.py on a socket of its own; faults() sets its
    rules, counts() counts the faults it injected by kind."""

    def __init__(self, tmp):
        self.sock = os.path.join(tmp, "engine.sock")
        self.control = os.path.join(tmp, "faults.json")
        self.logpath = os.path.join(tmp, "engine-proxy.log")
        self.faults([])
        self.log_f = open(self.logpath, "wb")
        self.proc = popen_daemon([sys.executable, os.path.join(os.path.dirname(__file__),
                                                               "engine_proxy.py"),
                                  "--listen", self.sock, "--upstream", DOCKER_SOCK,
                                  "--control", self.control],
                                 stdout=self.log_f, stderr=subprocess.STDOUT)
        deadline = time.time() + 10
        while not os.path.exists(self.sock):
            assert self.proc.poll() is None and time.time() < deadline, self.log()
            time.sleep(0.02)

    def faults(self, rules, seed=1):
        tmp = self.control + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"seed": seed, "rules": rules}, f)
        os.rename(tmp, self.control)

    def log(self):
        with open(self.logpath, "rb") as f:
            return f.read().decode(errors="replace")

    def counts(self):
        out = {}
        for kind, method, path in re.findall(r"^fault (\S+) (\S+) (\S+)$", self.log(), re.M):
            out[kind] = out.get(kind, 0) + 1
        return out

    def stop(self):
        assert self.proc.poll() is None, "the proxy died:\n" + self.log()
        terminate(self.proc)
        self.log_f.close()


# Container calls (create, start, stop, remove, inspect, list); never the
# event stream, the ping or logs.
CONTAINER_CALLS = r"^(/v[0-9.]+)?/containers/(?![^?]*/logs)"


def engine_ids(s):
    return sorted(c["Id"] for c in s.containers())


def controller_ids(s):
    r = s.api("GET", FN)
    assert r.status == 200, r
    ids = []
    for f in r.json["items"]:
        ids += [x["id"] for x in f["status"]["replicas"]]
    return sorted(ids)


def strays(s, st, cs):
    """For a failure: the containers the controller does not track, with
    what its log says of them."""
    tracked = {x["id"] for x in st["replicas"]}
    log = s.log("controller").splitlines()
    out = [st]
    for c in cs:
        if c["Id"] not in tracked:
            name = c["Names"][0].lstrip("/")
            out.append((c["Id"][:12], name, c["State"]))
            out += [ln for ln in log if c["Id"][:12] in ln or name in ln or
                    name.rsplit("-", 1)[1] in ln]
    return "\n".join(map(str, out))


def test_misbehaving_engine():
    s = stoke("faults-engine")
    proxy = EngineProxy(s.tmp)
    s.extra += ["--docker-host", "unix://" + proxy.sock]
    try:
        s.start()
        warm = s.deploy_warm("warm", 2)
        # A function whose replicas the faults hit: a new revision every
        # round (2 replicas created, started, probed; the old 2 stopped and
        # removed).
        s.write_spec("churn", scale={"min": 2}, env={"GREETING": "r0"})
        s.wait_log("controller", "ready on 127.0.0.1", 30, count=4)
        m0 = metrics(s)
        errors0 = sum(v for k, v in m0.items()
                      if k.startswith("stoke_controller_engine_errors_total{"))
        fails0 = metric(m0, 'stoke_controller_replica_failures_total{function="churn"}')
        load = Load(s, "warm", "/delay/20", 4, max_s=120)
        seen_errors = set()
        try:
            load.wait_ok(50)
            proxy.faults([
                # Done by the engine, its answer lost: a create (or a start)
                # the controller cannot know succeeded.
                {"method": "^POST$", "path": CONTAINER_CALLS, "fault": "drop", "share": 0.15},
                {"method": "^(POST|DELETE|GET)$", "path": CONTAINER_CALLS, "fault": "error",
                 "share": 0.3},
                {"method": "^(POST|DELETE|GET)$", "path": CONTAINER_CALLS, "fault": "close",
                 "share": 0.1},
                {"method": "^(POST|DELETE|GET)$", "path": CONTAINER_CALLS, "fault": "delay",
                 "share": 0.1, "delay_s": 3},
            ])
            for rnd in range(1, 6):
                s.write_spec("churn", scale={"min": 2}, env={"GREETING": "r%d" % rnd})
                deadline = time.time() + 6
                while time.time() < deadline:
                    e = status(s, "churn")["last_error"]
                    if e:
                        seen_errors.add(e)
                    time.sleep(0.1)
            injected = proxy.counts()
            proxy.faults([])
            # Converges once the faults stop: the last revision's 2
            # replicas, nothing else.
            deadline = time.time() + 90
            while True:
                st = status(s, "churn")
                cs = s.containers("churn")
                revs = {c["Labels"]["io.stoke.revision"] for c in cs}
                if st["ready"] == 2 and len(st["replicas"]) == 2 and len(cs) == 2 and \
                        revs == {st["revision"]} and all(c["State"] == "running" for c in cs):
                    break
                assert time.time() < deadline, strays(s, st, cs)
                time.sleep(0.2)
            load.wait_ok(50)
        finally:
            load.stop()
            proxy.faults([])
        print("faults injected: %r; last errors seen: %r" % (injected, sorted(seen_errors)[:5]))
        assert injected.get("error", 0) >= 5 and injected.get("close", 0) >= 1 and \
            injected.get("delay", 0) >= 1 and injected.get("drop", 0) >= 1, injected
        # Traffic to the ready replicas is untouched.
        load.finish(may_fail=0)
        assert sorted(c["Id"] for c in s.running("warm")) == warm
        # The controller and the engine agree: every container is tracked,
        # every tracked replica exists; nothing half-made is left.
        assert engine_ids(s) == controller_ids(s), (engine_ids(s), controller_ids(s))
        assert len(engine_ids(s)) == 4, s.containers()
        # Reported: in the status (the engine's message as the last error)
        # and in the metrics.
        assert any("fault injected by engine_proxy" in e for e in seen_errors), seen_errors
        st = status(s, "churn")
        assert st["replica_failures"] >= 1 and st["last_failure"], st
        m1 = metrics(s)
        errors1 = sum(v for k, v in m1.items()
                      if k.startswith("stoke_controller_engine_errors_total{"))
        # Each 500 reached the controller as a failed call (a closed
        # connection may be retried by libcurl on a fresh one).
        assert errors1 - errors0 >= injected["error"], (errors0, errors1, injected)
        assert metric(m1, 'stoke_controller_replica_failures_total{function="churn"}') > fails0
        assert metric(m1, 'stoke_controller_replica_failures_total{function="warm"}') == 0
        # A create done by the engine whose answer was lost leaves a
        # container no replica tracks: the periodic list finds and removes
        # it (libcurl sends a POST cut on a reused connection again: 409).
        removed = metric(m1, "stoke_controller_untracked_replicas_removed_total")
        creates_dropped = len(re.findall(r"^fault drop POST \S*/containers/create", proxy.log(),
                                         re.M))
        print("creates dropped %d, untracked containers removed %d, engine errors %d" % (
            creates_dropped, removed, errors1 - errors0))
        assert removed <= creates_dropped, (removed, creates_dropped)
        # Each removal was said (a removal the faults failed is tried again
        # at the next list, and counted once it is done).
        assert s.log("controller").count("is not tracked (a call's answer was lost)") >= removed
        s.stop()
        assert s.containers() == []
    finally:
        proxy.stop()


# ---- a replica OOM-killed under load -------------------------------------------


def test_oom_killed_replica_under_load():
    """Load in rounds: 4 POSTs of 2 s at once, the next round when all 4
    are answered (POST: a request already sent to a replica is never tried
    again elsewhere). Mid-round, with the 4 in flight, one replica is asked
    directly for more memory than its limit: the kernel kills it, and
    exactly the requests in flight on it (its own /concurrency said how
    many) fail."""
    s = stoke("faults-oom").start()
    ids = s.deploy_warm("hog", 2, extra="  resources: { memory: 32Mi }\n")
    victim = [c for c in s.containers("hog") if c["Id"] == ids[0]][0]
    port = int(victim["Labels"]["io.stoke.port"])
    results = []  # (status or exception text) per request
    lock = threading.Lock()
    killed = threading.Event()
    in_flight_on_victim = []

    def one():
        try:
            r = s.fn_request("hog", "/delay/2000", method="POST", body=b"x", timeout=30)
            out = (r.status, r.body.strip())
        except Exception as e:  # noqa: BLE001 - counted
            out = ("error", repr(e))
        with lock:
            results.append(out)

    def concurrency(p):
        c = http.client.HTTPConnection("127.0.0.1", p, timeout=10)
        try:
            c.request("GET", "/concurrency")
            return int(c.getresponse().read().split()[0])
        finally:
            c.close()

    ports = [int(c["Labels"]["io.stoke.port"]) for c in s.containers("hog")]
    rounds = 0
    while rounds < 8:
        ts = [threading.Thread(target=one) for _ in range(4)]
        for t in ts:
            t.start()
        if rounds == 3:
            # All 4 in flight (none answers before 2 s): then kill.
            deadline = time.time() + 1.2
            while sum(concurrency(p) for p in ports) < 4:
                assert time.time() < deadline, "the round's requests are not all in flight"
                time.sleep(0.01)
            in_flight_on_victim.append(concurrency(port))
            # The image has /alloc (and 1 MiB fits in the limit).
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                c.request("GET", "/alloc/1")
                body = c.getresponse().read()
                assert body == b"allocated 1 MiB\n", \
                    "%r: the image lacks /alloc; run deploy/build-example.sh" % body
            finally:
                c.close()
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                c.request("GET", "/alloc/64")
                c.getresponse().read()
                raise AssertionError("/alloc/64 answered under a 32 MiB limit")
            except (OSError, http.client.HTTPException):
                pass  # the kernel killed it mid-request
            finally:
                c.close()
            killed.set()
        for t in ts:
            t.join(60)
        rounds += 1
        if rounds == 4:
            s.wait_log("controller", "replica %s failed: killed by the kernel's OOM killer"
                       % ids[0][:12], 20)
            # Routes without the dead replica before the next round.
            s.wait_log("controller", "ready on 127.0.0.1", 30, count=3)
            ports = [int(c["Labels"]["io.stoke.port"]) for c in s.running("hog")]
    failed = [r for r in results if r[0] != 200]
    print("requests: %d, failed %r, in flight on the victim %r" % (
        len(results), failed, in_flight_on_victim))
    assert len(results) == 32, len(results)
    assert in_flight_on_victim[0] >= 1, in_flight_on_victim
    assert len(failed) == in_flight_on_victim[0], (failed, in_flight_on_victim)
    assert all(r[0] == 502 for r in failed), failed
    # Replaced and counted.
    after = sorted(c["Id"] for c in s.running("hog"))
    assert len(after) == 2 and ids[0] not in after and ids[1] in after, (ids, after)
    st = status(s, "hog")
    assert st["oom_kills"] == 1 and st["replica_failures"] == 1, st
    assert "OOM" in st["last_failure"], st
    assert st["ready"] == 2 and st["last_error"] == "", st
    out = subprocess.run([os.path.join(BUILD, "stokectl"), "--server", "unix:" + s.admin_sock,
                          "describe", "hog"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out
    assert re.search(r"Failures: +1 \(1 OOM-killed\); last: killed by the kernel's OOM killer",
                     out.stdout), out.stdout
    m = metrics(s)
    assert metric(m, 'stoke_controller_oom_kills_total{function="hog"}') == 1
    assert metric(m, 'stoke_controller_replica_failures_total{function="hog"}') == 1
    st, body = engine("GET", "/containers/%s/json" % ids[0])
    assert st == 404, (st, body)  # the dead one removed
    s.stop()
    assert s.containers() == []


# ---- a full disk under the functions directory ---------------------------------


def fill(path):
    """Writes a file at `path` until the file system is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as e:
        assert e.errno == 28, e  # ENOSPC
    finally:
        os.close(fd)
    return path


def test_disk_full_while_a_spec_is_put():
    s = stoke("faults-disk")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", s.fndir],
                   check=True)
    try:
        old = spec_text("steady", scale={"min": 1}, env={"GREETING": "old"})
        s.write_file("steady.yaml", old)
        s.start()
        s.wait_log("controller", "ready on 127.0.0.1", 30)
        assert s.wait_status(lambda: s.fn_request("steady"), 200, 20).body.startswith("old")
        filler = fill(os.path.join(s.fndir, ".filler"))
        listing = sorted(os.listdir(s.fndir))

        # A change of the spec on a full disk: a clear 500, nothing changed.
        new = spec_text("steady", scale={"min": 1},
                        env={"GREETING": "new", "PAD": "x" * 8000})
        r = s.api("PUT", FN + "steady", body=new)
        assert r.status == 500, r
        assert "no space" in r.json["error"].lower(), r.json
        assert sorted(os.listdir(s.fndir)) == listing, os.listdir(s.fndir)
        with open(os.path.join(s.fndir, "steady.yaml")) as f:
            assert f.read() == old
        r = s.api("GET", FN + "steady")
        assert r.status == 200 and r.json["spec"]["env"] == {"GREETING": "old"}, r.json
        assert s.fn_request("steady").body.startswith("old")

        # A new function on a full disk: no file at all.
        r = s.api("PUT", FN + "fresh", body=spec_text("fresh", env={"GREETING": "f"}))
        assert r.status == 500 and "no space" in r.json["error"].lower(), r
        assert sorted(os.listdir(s.fndir)) == listing, os.listdir(s.fndir)
        assert s.api("GET", FN + "fresh").status == 404

        # Still the old spec a rescan later, and no rollout happened.
        st = status(s, "steady")
        assert len(st["replicas"]) == 1 and st["ready"] == 1, st
        assert "rollout" not in s.log("controller"), s.log("controller")

        # Room again: the same PUT goes through and takes effect.
        os.unlink(filler)
        r = s.api("PUT", FN + "steady", body=new)
        assert r.status == 200, r
        deadline = time.time() + 30
        while not s.fn_request("steady").body.startswith("new"):
            assert time.time() < deadline, "the new spec never served"
            time.sleep(0.1)
        assert sorted(os.listdir(s.fndir)) == ["steady.yaml"], os.listdir(s.fndir)
    finally:
        # The daemons first (the controller removes its replicas), then the
        # file system they used.
        for p in s.procs.values():
            terminate(p)
        subprocess.run(["umount", s.fndir], check=True)
    s.stop()  # exit codes and logs checked
    assert s.containers() == []


if __name__ == "__main__":
    run_tests(globals())
