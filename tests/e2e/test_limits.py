"""Per-function limits hold across an activator's workers and across several
activators (README: "Limits across workers and activators").

Each test runs a function whose replica counts the /delay requests it has in
progress at once (the example server's /concurrency: "<now> <max>"), sends
many requests at once, and checks the exact number served, refused with 503
(and Retry-After) and, where an activator has no slot at all, timed out in
the queue with 504; and that the replica never saw more requests at once
than containerConcurrency.
"""

import http.client
import os
import signal
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import Stoke, concurrent, run_tests  # noqa: E402

DELAY_MS = 1500  # long enough for every request to arrive while the first is in flight
BURST = 16  # per activator: over two workers, all on one has odds 2**-15


def get(port, path, timeout=60):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, dict(r.getheaders()), r.read().decode(errors="replace")
    finally:
        c.close()


def deploy(s, fn, cc, queue_max, replicas, queue_timeout="30s"):
    before = s.log("controller").count("ready on 127.0.0.1")
    s.write_spec(fn, scale={"min": replicas, "max": replicas, "containerConcurrency": cc},
                 queue={"max": queue_max, "timeout": queue_timeout})
    s.wait_log("controller", "ready on 127.0.0.1", 60, count=before + replicas)


def wait_routed(port, fn, timeout=30):
    """Until the activator on `port` answers the function (its tables came)."""
    deadline = time.time() + timeout
    while get(port, "/fn/%s/" % fn)[0] != 200:
        assert time.time() < deadline, "%s not routed through port %d" % (fn, port)
        time.sleep(0.1)


def burst(ports, fn):
    """BURST requests to /delay at once through each port; returns the
    statuses and checks that every 503 says Retry-After."""
    targets = [p for p in ports for _ in range(BURST)]
    res = concurrent(len(targets), lambda i: get(targets[i], "/fn/%s/delay/%d" % (fn, DELAY_MS)))
    statuses = []
    for r in res:
        assert not isinstance(r, Exception), r
        status, headers, _ = r
        if status == 503:
            assert headers.get("Retry-After") == "1", headers
        statuses.append(status)
    return sorted(statuses)


def replica_max(s, fn):
    """The most /delay requests each replica of fn had in progress at once,
    asked of every replica directly on its published 127.0.0.1 port."""
    out = []
    for c in s.running(fn):
        port = int(c["Labels"]["io.stoke.port"])
        status, _, body = get(port, "/concurrency", timeout=10)
        assert status == 200, (status, body)
        assert len(body.split()) == 2, (
            "%r: the image has no /concurrency; rebuild it (deploy/build-example.sh)" % body)
        now, most = body.split()
        assert now == "0", body
        out.append(int(most))
    return out


def two_workers(name, cc, queue_max, replicas, served, most):
    """One activator with two workers, BURST requests at once: `served` get
    200, the rest 503, and each replica saw `most` at once."""
    s = Stoke("limits-" + name, activator_args=["--workers", "2"]).start()
    deploy(s, name, cc=cc, queue_max=queue_max, replicas=replicas)
    wait_routed(s.port, name)
    statuses = burst([s.port], name)
    assert statuses.count(200) == served, statuses
    assert statuses.count(503) == BURST - served, statuses
    assert replica_max(s, name) == [most] * replicas
    s.stop()


def test_two_workers_one_slot_queue_two():
    """The issue's case: --workers 2, containerConcurrency 1, queue.max 2, one
    replica: 1 in flight + 2 queued are served, the rest refused."""
    two_workers("one", cc=1, queue_max=2, replicas=1, served=3, most=1)


def test_two_workers_two_replicas():
    """containerConcurrency 2 on two replicas, queue.max 3: 4 in flight (2 per
    replica, never more) + 3 queued are served."""
    two_workers("two", cc=2, queue_max=3, replicas=2, served=7, most=2)


def test_max_connections_across_workers():
    """--max-connections 3 with two workers: a fourth open connection is
    closed at once, whichever worker took it."""
    s = Stoke("limits-c", activator_args=["--workers", "2", "--max-connections", "3"]).start()
    held = []
    try:
        for _ in range(3):
            held.append(socket.create_connection(("127.0.0.1", s.port), timeout=10))
        # The three are served: a request on each gets an answer (404: no function).
        for k in held:
            k.sendall(b"GET /fn/none/ HTTP/1.1\r\nHost: x\r\n\r\n")
            assert k.recv(64).startswith(b"HTTP/1.1 404"), "a held connection was not served"
        for _ in range(8):
            k = socket.create_connection(("127.0.0.1", s.port), timeout=10)
            k.sendall(b"GET /fn/none/ HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                data = k.recv(64)
            except ConnectionResetError:
                data = b""
            k.close()
            assert data == b"", data
    finally:
        for k in held:
            k.close()
    s.stop()


def test_two_activators_divide_slots_and_queue():
    """Two activator processes (two workers each), containerConcurrency 2 on
    one replica, queue.max 2: each activator has 1 slot and 1 queue place, so
    4 requests are served in all, and the replica never sees more than 2."""
    s = Stoke("limits-a", activator_args=["--workers", "2"]).start()
    port2 = s.add_activator("act2")
    deploy(s, "div", cc=2, queue_max=2, replicas=1)
    wait_routed(s.port, "div")
    wait_routed(port2, "div")
    statuses = burst([s.port, port2], "div")
    assert statuses.count(200) == 4, statuses
    assert statuses.count(503) == 2 * BURST - 4, statuses
    assert replica_max(s, "div") == [2]
    s.stop()


def test_two_activators_one_slot():
    """containerConcurrency 1 on one replica over two activators: the replica
    is the one activator's (1 in flight + its 1 queue place served); the other
    has no slot, so its 1 queue place waits out queue.timeout (504) and the
    rest are refused. The replica never sees 2 at once."""
    s = Stoke("limits-a1", activator_args=["--workers", "2"]).start()
    port2 = s.add_activator("act2")
    deploy(s, "solo", cc=1, queue_max=2, replicas=1, queue_timeout="4s")
    # The owner answers (once its table came); the other queues, then 504.
    owners = [p for p in (s.port, port2) if get(p, "/fn/solo/")[0] == 200]
    statuses = burst([s.port, port2], "solo")
    assert len(owners) == 1, owners
    assert statuses.count(200) == 2, statuses
    assert statuses.count(504) == 1, statuses
    assert statuses.count(503) == 2 * BURST - 3, statuses
    assert replica_max(s, "solo") == [1]
    s.stop()


def test_activator_joins_under_load():
    """containerConcurrency 2, one replica, 2 requests in flight through the
    first activator when a second one connects: the first's share drops to 1,
    and the second gets its slot only once the first has no more than 1 in
    flight, so the replica never sees 3 at once; the second's requests wait
    in its queue meanwhile and are all served."""
    s = Stoke("limits-j", activator_args=["--workers", "2"]).start()
    deploy(s, "join", cc=2, queue_max=4, replicas=1)
    wait_routed(s.port, "join")
    first = []
    ts = [threading.Thread(target=lambda: first.append(get(s.port, "/fn/join/delay/3000")))
          for _ in range(2)]
    for t in ts:
        t.start()
    (c,) = s.running("join")
    rport = int(c["Labels"]["io.stoke.port"])
    deadline = time.time() + 10
    while get(rport, "/concurrency")[2].split()[0] != "2":
        assert time.time() < deadline, "the two requests never got in flight"
        time.sleep(0.05)
    port2 = s.add_activator("act2")
    second = concurrent(2, lambda i: get(port2, "/fn/join/delay/200"))
    for t in ts:
        t.join(30)
    assert [r[0] for r in first] == [200, 200], first
    assert [r[0] for r in second] == [200, 200], second
    assert replica_max(s, "join") == [2]
    s.stop()


def test_controller_restart_keeps_the_division():
    """containerConcurrency 2, one replica, two activators with a slot each;
    the second holds a long request while the controller is killed and
    restarted, and is stopped (SIGSTOP) so that the first says hello alone:
    the new controller starts from the slot the first says it has and raises
    no share for a while, so the first's burst still runs one at a time
    beside the second's request (never 3 at once), and every request is
    served."""
    s = Stoke("limits-r", activator_args=["--workers", "2"]).start()
    port2 = s.add_activator("act2")
    deploy(s, "keep", cc=2, queue_max=8, replicas=1)
    wait_routed(s.port, "keep")
    wait_routed(port2, "keep")
    (c,) = s.running("keep")
    rport = int(c["Labels"]["io.stoke.port"])
    long = []
    t = threading.Thread(target=lambda: long.append(get(port2, "/fn/keep/delay/5000")))
    t.start()
    deadline = time.time() + 10
    while get(rport, "/concurrency")[2].split()[0] != "1":
        assert time.time() < deadline, "the long request never got in flight"
        time.sleep(0.05)
    act2 = s.procs["act2"]
    os.kill(act2.pid, signal.SIGSTOP)
    try:
        hellos = s.log("activator").count("connected to the controller")
        s.restart_controller("controller2")
        s.wait_log("activator", "connected to the controller", 30, count=hellos + 2)
        burst_res = concurrent(3, lambda i: get(s.port, "/fn/keep/delay/700"))
    finally:
        os.kill(act2.pid, signal.SIGCONT)
    t.join(30)
    assert [r[0] for r in burst_res] == [200, 200, 200], burst_res
    assert [r[0] for r in long] == [200], long
    assert replica_max(s, "keep") == [2]
    s.stop()


if __name__ == "__main__":
    run_tests(globals())
