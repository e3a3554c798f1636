#!/usr/bin/env python3
"""Cold start from each tier of stoke's warm tier, beside what the same
engine API gives without stoke, in one run on the same image.

Through the activator (time from sending the request to its response), a
function at zero whose replica is:

  paused     frozen in its cgroup: stoke thaws it (one write), probes, routes;
  stopped    exited: stoke starts it;
  created    created, never started (scale.precreated): stoke starts it;
  absent     nothing: stoke creates and starts one.

Without stoke, through the same engine API (or the kernel), then GET / on the
replica's port until it answers 200:

  create+start      POST /containers/create, POST /start (what tools that
                    start containers on demand do): the reference row;
  docker run        `docker run -d`, the CLI a user would type;
  engine unpause    POST /unpause of a container the engine paused;
  cgroup thaw       THAWED written to the freezer cgroup by hand (the
                    kernel's own limit for the paused tier);
  warm (activator)  one request through the activator to a ready replica;
  warm (direct)     the same request straight to the replica.

Each path runs on each network (STOKE_BENCH_NETWORKS, default "bridge,host"):
bridge, stoke's default, a network namespace per replica with its port
published on 127.0.0.1 (the engine's NAT, or its userland proxy when it keeps
one); host, the opt-in, the host's network. The paused-container baselines
(unpause, thaw) do not depend on it and run once, on the host network.

Each row is N trials (default 20), taken in rounds: the stoke tiers of every
network, then the baselines once the stoke functions are idle again. Prints p50,
p95, min and max per row and each row's p50 over the create+start p50,
then what each tier holds in memory and on disk. Needs the build
(STOKE_BUILD_DIR, default build/) and the example image
(deploy/build-example.sh). All traffic stays on 127.0.0.1; every container
it made is removed.

Usage: bench/coldstart.py [N]
"""

import http.client
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.parse

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../tests/e2e"))
from harness import IMAGE, Stoke, engine, free_port, remove_containers  # noqa: E402

N = int(sys.argv[1]) if len(sys.argv) > 1 else 20
NETWORKS = [n for n in os.environ.get("STOKE_BENCH_NETWORKS", "bridge,host").split(",") if n]
assert NETWORKS and all(n in ("bridge", "host") for n in NETWORKS), NETWORKS
LABEL_KEY, LABEL_VALUE = "io.stoke.bench", "coldstart-%d" % os.getpid()
QUICK = {"min": 0, "initial": 0, "window": "6s", "scaleToZeroGrace": "1s"}
TIERS = [
    ("paused", dict(QUICK, idle="pause", stopAfter="1h")),
    ("stopped", dict(QUICK, idle="stop", removeAfter="1h")),
    ("created", dict(QUICK, idle="remove", precreated=1)),
    ("absent", dict(QUICK, idle="remove")),
]


def get_once(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        c.request("GET", "/")
        r = c.getresponse()
        r.read()
        return r.status
    finally:
        c.close()


def get_until_200(port, deadline_s=30):
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            if get_once(port) == 200:
                return
        except (ConnectionError, socket.timeout, OSError):
            pass
        time.sleep(0.0005)
    raise RuntimeError("no answer on port %d" % port)


def create_body(port, net):
    """What stoke asks for, without stoke: on the host network the replica
    listens on `port` of 127.0.0.1; on the bridge on 8080 of its own
    namespace, published on 127.0.0.1:`port`."""
    hc = {"NetworkMode": net, "CapDrop": ["ALL"], "SecurityOpt": ["no-new-privileges"]}
    body = {"Image": IMAGE, "Labels": {LABEL_KEY: LABEL_VALUE}, "HostConfig": hc}
    if net == "host":
        body["Env"] = ["PORT=%d" % port, "BIND_ADDR=127.0.0.1"]
    else:
        body["Env"] = ["PORT=8080"]
        body["ExposedPorts"] = {"8080/tcp": {}}
        hc["PortBindings"] = {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]}
    return body


def engine_ok(method, path, body=None, want=(200, 201, 204)):
    st, out = engine(method, "/v1.41" + path, body)
    assert st in want, (method, path, st, out)
    return out


def by_create_start(net):
    port = free_port()
    t0 = time.monotonic()
    cid = engine_ok("POST", "/containers/create", create_body(port, net))["Id"]
    engine_ok("POST", "/containers/%s/start" % cid)
    get_until_200(port)
    dt = time.monotonic() - t0
    engine("DELETE", "/v1.41/containers/%s?force=1" % cid)
    return dt


def by_docker_run(net):
    port = free_port()
    where = (["--network", "host", "-e", "PORT=%d" % port, "-e", "BIND_ADDR=127.0.0.1"]
             if net == "host" else ["-p", "127.0.0.1:%d:8080" % port])
    t0 = time.monotonic()
    cid = subprocess.check_output(
        ["docker", "run", "-d"] + where + ["--label", "%s=%s" % (LABEL_KEY, LABEL_VALUE),
                                           "--cap-drop", "ALL", "--security-opt",
                                           "no-new-privileges", IMAGE]).decode().strip()
    get_until_200(port)
    dt = time.monotonic() - t0
    subprocess.run(["docker", "rm", "-f", cid], stdout=subprocess.DEVNULL, check=False)
    return dt


class Paused:
    """One running container for the unpause and thaw baselines."""

    def __init__(self):
        self.port = free_port()
        self.id = engine_ok("POST", "/containers/create", create_body(self.port, "host"))["Id"]
        engine_ok("POST", "/containers/%s/start" % self.id)
        get_until_200(self.port)
        pid = engine_ok("GET", "/containers/%s/json" % self.id)["State"]["Pid"]
        self.freezer = freezer_file(pid)

    def by_unpause(self):
        engine_ok("POST", "/containers/%s/pause" % self.id)
        time.sleep(0.05)
        t0 = time.monotonic()
        engine_ok("POST", "/containers/%s/unpause" % self.id)
        get_until_200(self.port)
        return time.monotonic() - t0

    def by_thaw(self):
        path, frozen, thawed = self.freezer
        with open(path, "w") as f:
            f.write(frozen)
        time.sleep(0.05)
        t0 = time.monotonic()
        with open(path, "w") as f:
            f.write(thawed)
        get_until_200(self.port)
        return time.monotonic() - t0


def cgroup_lines(pid):
    with open("/proc/%d/cgroup" % pid) as f:
        return [line.strip().split(":", 2) for line in f]


def freezer_file(pid):
    """(file, frozen value, thawed value) of the process's freezer cgroup."""
    lines = cgroup_lines(pid)
    for _, ctrls, path in lines:
        if "freezer" in ctrls.split(","):
            return "/sys/fs/cgroup/freezer%s/freezer.state" % path, "FROZEN", "THAWED"
    for num, ctrls, path in lines:
        if num == "0" and ctrls == "":
            return "/sys/fs/cgroup%s/cgroup.freeze" % path, "1", "0"
    raise RuntimeError("no freezer cgroup for pid %d" % pid)


def memory_bytes(pid):
    """The container's memory charge (its cgroup's usage), or None."""
    lines = cgroup_lines(pid)
    for _, ctrls, path in lines:
        if "memory" in ctrls.split(","):
            with open("/sys/fs/cgroup/memory%s/memory.usage_in_bytes" % path) as f:
                return int(f.read())
    for num, ctrls, path in lines:
        if num == "0" and ctrls == "":
            with open("/sys/fs/cgroup%s/memory.current" % path) as f:
                return int(f.read())
    return None


def idle(stokes, fn):
    """True once function `fn` (<tier>-<network>) is back in its tier's idle
    state."""
    s = stokes[fn]
    tier = fn.split("-")[0]
    cs = s.containers(fn)
    states = sorted(c["State"] for c in cs)
    if tier == "paused":
        return s.log("controller").count('paused (idle, cgroup frozen)') >= idle.count
    if tier == "stopped":
        return states == ["exited"]
    if tier == "created":
        return states == ["created"]
    return states == []


idle.count = 1  # of each paused function's stoke


def measure_memory(stokes):
    """Memory charge of a paused and a running replica; container layer
    sizes of each tier's container."""
    out = {}
    net = NETWORKS[0]
    pc = stokes["paused-" + net].containers("paused-" + net)[0]
    out["paused"] = memory_bytes(engine_ok("GET", "/containers/%s/json" % pc["Id"])["State"]["Pid"])
    wc = stokes["warm-" + net].running("warm-" + net)[0]
    out["running"] = memory_bytes(engine_ok("GET", "/containers/%s/json" % wc["Id"])["State"]["Pid"])
    for st in set(stokes.values()):
        f = urllib.parse.quote('{"label":["io.stoke.instance=%s"]}' % st.instance)
        for c in engine_ok("GET", "/containers/json?all=1&size=1&filters=" + f):
            fn = c["Labels"]["io.stoke.function"]
            out.setdefault("disk-" + fn.split("-")[0], c.get("SizeRw", 0))
    return out


def wait_idle(s, fns, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if all(idle(s, fn) for fn in fns):
            return
        time.sleep(0.1)
    raise RuntimeError("functions not idle: %s" % [fn for fn in fns if not idle(s, fn)])


def by_stoke(s, fn):
    t0 = time.monotonic()
    r = s.fn_request(fn)
    dt = time.monotonic() - t0
    assert r.status == 200, r
    return dt


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))]


def spec_args(net):
    """write_spec() arguments for a function on network `net`."""
    if net == "host":
        return {"extra": "  network: host\n", "env": {"BIND_ADDR": "127.0.0.1"}}
    return {}


def main():
    # One function per stoke: the activator of this tree crashes on a route
    # table update naming a second function it knows (its lookup walks
    # entries it has just cleared; reported with issue 6).
    stokes = {}
    rows = {}
    mem = {}
    paused = None
    cold = ["%s-%s" % (t, n) for n in NETWORKS for t, _ in TIERS]
    groups = [[("%s-%s" % (t, n), sc, n)] for n in NETWORKS for t, sc in TIERS]
    groups += [[("warm-" + n, {"min": 1}, n)] for n in NETWORKS]
    warm_port = {}
    try:
        for i, group in enumerate(groups):
            st = Stoke("bench-cold%d" % i).start()
            for fn, scale, net in group:
                st.write_spec(fn, scale=scale, **spec_args(net))
                stokes[fn] = st
            st.wait_log("activator", ": %d functions" % len(group), 20)
        for n in NETWORKS:
            stokes["warm-" + n].wait_log("controller", "ready on 127.0.0.1", 30)
            warm_port[n] = int(stokes["warm-" + n].running("warm-" + n)[0]["Labels"]["io.stoke.port"])
        # Every tier warm once: a first replica for each, then idle.
        for fn in cold:
            by_stoke(stokes[fn], fn)
        wait_idle(stokes, cold)
        paused = Paused()
        for i in range(N):
            for fn in cold:
                rows.setdefault(fn, []).append(by_stoke(stokes[fn], fn))
            idle.count += 1
            wait_idle(stokes, cold)
            if i == 0:
                mem.update(measure_memory(stokes))
            for n in NETWORKS:
                rows.setdefault("create+start-" + n, []).append(by_create_start(n))
                rows.setdefault("docker run-" + n, []).append(by_docker_run(n))
            rows.setdefault("engine unpause", []).append(paused.by_unpause())
            rows.setdefault("cgroup thaw", []).append(paused.by_thaw())
            for n in NETWORKS:
                rows.setdefault("warm (activator)-" + n, []).append(
                    by_stoke(stokes["warm-" + n], "warm-" + n))
                t0 = time.monotonic()
                assert get_once(warm_port[n]) == 200
                rows.setdefault("warm (direct)-" + n, []).append(time.monotonic() - t0)
            print("round %d/%d done" % (i + 1, N), file=sys.stderr, flush=True)
    finally:
        for st in set(stokes.values()):
            st.stop()
        remove_containers({LABEL_KEY: LABEL_VALUE})

    ref_key = "create+start-" + ("host" if "host" in NETWORKS else NETWORKS[0])
    ref = statistics.median(rows[ref_key])
    per_net = [("stoke from paused", "paused-%s"), ("stoke from stopped", "stopped-%s"),
               ("stoke from created", "created-%s"), ("stoke from absent", "absent-%s"),
               ("engine create+start+GET", "create+start-%s"),
               ("docker run -d + GET", "docker run-%s"),
               ("warm, through the activator", "warm (activator)-%s"),
               ("warm, straight to the replica", "warm (direct)-%s")]
    names = [("%s (%s)" % (label, n), key % n) for label, key in per_net for n in NETWORKS]
    names += [("engine unpause + GET", "engine unpause"),
              ("cgroup thaw by hand + GET", "cgroup thaw")]
    print("cold start to the first 200, %d trials each, image %s, networks %s" % (
        N, IMAGE, ", ".join(NETWORKS)))
    print("| %-38s | %8s | %8s | %8s | %8s | %13s |" % (
        "path", "p50 ms", "p95 ms", "min ms", "max ms", "p50 / c+s p50"))
    print("|%s|%s|%s|%s|%s|%s|" % ("-" * 40, "-" * 10, "-" * 10, "-" * 10, "-" * 10, "-" * 15))
    for label, key in names:
        xs = rows[key]
        print("| %-38s | %8.2f | %8.2f | %8.2f | %8.2f | %12.3fx |" % (
            label, statistics.median(xs) * 1000, pct(xs, 95) * 1000, min(xs) * 1000,
            max(xs) * 1000, statistics.median(xs) / ref))
    print("(c+s: %s)" % ref_key.replace("-", ", "))
    if len(NETWORKS) == 2:
        print()
        print("what the bridge costs: p50 on the bridge over p50 on the host network")
        print("| path | bridge p50 ms | host p50 ms | bridge / host |")
        print("|---|---|---|---|")
        for label, key in per_net:
            b, h = statistics.median(rows[key % "bridge"]), statistics.median(rows[key % "host"])
            print("| %s | %.2f | %.2f | %.2fx |" % (label, b * 1000, h * 1000, b / h))
    mib = 1024.0 * 1024.0
    print()
    print("what an idle replica holds (cgroup memory charge; container layer on disk):")
    print("| tier | memory | disk (container layer) |")
    print("|---|---|---|")
    print("| running (ready) | %.2f MiB | %d B |" % ((mem.get("running") or 0) / mib,
                                                    mem.get("disk-warm", 0)))
    print("| paused | %.2f MiB (kept, frozen) | %d B |" % ((mem.get("paused") or 0) / mib,
                                                          mem.get("disk-paused", 0)))
    print("| stopped | 0 (no process) | %d B |" % mem.get("disk-stopped", 0))
    print("| created | 0 (no process) | %d B |" % mem.get("disk-created", 0))
    print("| absent | 0 | 0 |")


if __name__ == "__main__":
    main()
