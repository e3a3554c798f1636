#!/usr/bin/env python3
"""Cold start, measured side by side in one run on the same image:

  stoke      a request through the activator to a function at zero replicas,
             until its 200 (create + start + probe + route + proxy);
  engine API the same steps by hand: POST /containers/create, POST /start,
             then GET / on the replica's port until it answers 200;
  docker run the CLI a user would type: `docker run -d --network host ...`,
             then the same GET loop.

Each is repeated N times (default 10); the table gives the median and the
spread, and the ratios to stoke. Needs the build (STOKE_BUILD_DIR, default
build/) and the example image (deploy/build-example.sh). All traffic is on
127.0.0.1; every container is removed.

Usage: bench/coldstart.py [N]
"""

import http.client
import os
import socket
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../tests/e2e"))
from harness import IMAGE, Stoke, engine, free_port, remove_containers  # noqa: E402

N = int(sys.argv[1]) if len(sys.argv) > 1 else 10
LABEL = "io.stoke.bench=coldstart-%d" % os.getpid()


def get_until_200(port, deadline_s=30):
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/")
            r = c.getresponse()
            r.read()
            c.close()
            if r.status == 200:
                return
        except (ConnectionError, socket.timeout, OSError):
            pass
        time.sleep(0.001)
    raise RuntimeError("no answer on port %d" % port)


def by_engine_api():
    port = free_port()
    k, v = LABEL.split("=")
    t0 = time.monotonic()
    st, body = engine("POST", "/v1.41/containers/create", {
        "Image": IMAGE, "Env": ["PORT=%d" % port], "Labels": {k: v},
        "HostConfig": {"NetworkMode": "host", "CapDrop": ["ALL"],
                       "SecurityOpt": ["no-new-privileges"]}})
    assert st == 201, body
    st, _ = engine("POST", "/v1.41/containers/%s/start" % body["Id"])
    assert st == 204, st
    get_until_200(port)
    dt = time.monotonic() - t0
    engine("DELETE", "/v1.41/containers/%s?force=1" % body["Id"])
    return dt


def by_docker_run():
    port = free_port()
    t0 = time.monotonic()
    cid = subprocess.check_output(
        ["docker", "run", "-d", "--network", "host", "--label", LABEL, "-e", "PORT=%d" % port,
         "--cap-drop", "ALL", "--security-opt", "no-new-privileges", IMAGE]).decode().strip()
    get_until_200(port)
    dt = time.monotonic() - t0
    subprocess.run(["docker", "rm", "-f", cid], stdout=subprocess.DEVNULL, check=False)
    return dt


def by_stoke(s):
    s.wait_containers("cold", 0, 60)
    t0 = time.monotonic()
    r = s.fn_request("cold")
    dt = time.monotonic() - t0
    assert r.status == 200, r
    return dt


def row(name, xs, ref):
    xs = sorted(xs)
    med = statistics.median(xs)
    return "| %-28s | %9.1f | %9.1f | %9.1f | %6.2f |" % (
        name, med * 1000, xs[0] * 1000, xs[-1] * 1000, med / ref)


def main():
    s = Stoke("bench-cold").start()
    try:
        # The shortest stable window and a 1 s grace: the function is back at
        # zero a few seconds after each sample.
        s.write_spec("cold", scale={"min": 0, "initial": 0, "scaleToZeroGrace": "1s",
                                    "window": "6s"})
        s.wait_log("activator", ": 1 functions", 20)
        stoke, api, run = [], [], []
        for _ in range(N):
            stoke.append(by_stoke(s))
            api.append(by_engine_api())
            run.append(by_docker_run())
    finally:
        s.stop()
        k, v = LABEL.split("=")
        remove_containers({k: v})
    ref = statistics.median(stoke)
    print("cold start to first 200, %d runs each, image %s" % (N, IMAGE))
    print("| %-28s | %9s | %9s | %9s | %6s |" % ("path", "median ms", "min ms", "max ms", "×stoke"))
    print("|%s|%s|%s|%s|%s|" % ("-" * 30, "-" * 11, "-" * 11, "-" * 11, "-" * 8))
    print(row("stoke (activator, from zero)", stoke, ref))
    print(row("engine API create+start+GET", api, ref))
    print(row("docker run -d + GET", run, ref))


if __name__ == "__main__":
    main()
