"""Many replicas against the real engine: the periodic list is rare while
the engine's event stream is open and comes at once when it reopens
(through a small forwarding proxy on the engine's socket, which can cut
the stream); a controller with 60 replicas, some of them frozen, removes
them all on SIGTERM and says how far it got; a second SIGTERM stops it
waiting and leaves no container paused."""

import os
import re
import signal
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
from enginepump import EnginePump  # noqa: E402
from harness import Stoke, containers, engine, run_tests  # noqa: E402
from test_lifecycle import freezer_state  # noqa: E402

QUICK = {"min": 0, "initial": 0, "window": "6s", "scaleToZeroGrace": "1s"}


class EngineProxy(EnginePump):
    """Remembers the request lines it saw and can cut the event streams
    (connections whose first request is GET .../events)."""

    def __init__(self, path):
        self.lock = threading.Lock()
        self.requests = []  # request lines, in order
        self.streams = []  # Conns of event streams
        super().__init__(path)

    def on_up(self, conn, data):
        for line in re.findall(rb"(?:GET|POST|DELETE) \S+", data):
            text = line.decode(errors="replace")
            with self.lock:
                self.requests.append(text)
                if "/events" in text:
                    self.streams.append(conn)
        return data

    def count(self, needle):
        with self.lock:
            return sum(1 for r in self.requests if needle in r)

    def cut_streams(self):
        with self.lock:
            streams, self.streams = self.streams, []
        for conn in streams:
            conn.shutdown()
        return len(streams)


def metric(s, name, labels):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % s.ctl_ops_port, timeout=10) as r:
        text = r.read().decode()
    m = re.search(r"^%s\{%s\} (\d+)$" % (re.escape(name), re.escape(labels)), text, re.M)
    assert m, text
    return int(m.group(1))


def lists(s):
    return metric(s, "stoke_controller_engine_calls_total", 'op="list"')


def wait_for(cond, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError("not within %ss: %s" % (timeout, what))


def test_list_rare_while_the_stream_is_open_and_at_once_when_it_reopens():
    s = Stoke("scale-list")
    proxy = EngineProxy(os.path.join(s.tmp, "engine.sock"))
    try:
        s.extra += ["--docker-host", "unix://" + proxy.path]
        s.start()
        s.deploy_warm("listed", 1)
        wait_for(lambda: proxy.count("/events") == 1, 30, "the event stream opens")
        # The lists of the startup (adoption, the stream's first opening)
        # are done once the count holds still for a tick or two.
        before = lists(s)
        wait_for(lambda: lists(s) == before, 10, "no list in flight")
        # 16 s with the stream open: every 5 s would be 3 lists or more;
        # every 60 s is at most one.
        deadline = time.time() + 16
        while time.time() < deadline:
            assert lists(s) <= before + 1, (before, lists(s))
            time.sleep(0.5)
        assert proxy.count("/events") == 1
        mid = lists(s)
        listed_before = proxy.count("/containers/json")
        # Cut the stream: the controller reopens it and lists at once.
        assert proxy.cut_streams() == 1
        wait_for(lambda: proxy.count("/events") == 2, 30, "the event stream reopens")
        wait_for(lambda: lists(s) > mid, 30, "a list after the stream reopened")
        assert proxy.count("/containers/json") > listed_before
        s.wait_log("controller", "watch ended", 10)
        s.stop()
    finally:
        proxy.close()


def sigterm_and_wait(s, timeout):
    p = s.procs["controller"]
    p.send_signal(signal.SIGTERM)
    p.wait(timeout)
    return p.returncode


def paused_or_frozen(instance):
    """Containers of `instance` the engine calls paused, or whose freezer
    cgroup is frozen (stoke's own pause)."""
    found = []
    for c in containers({"io.stoke.instance": instance}):
        st, body = engine("GET", "/containers/%s/json" % c["Id"])
        if st != 200:
            continue
        state = body["State"]
        if state["Paused"]:
            found.append((c["Id"][:12], "paused"))
        elif state["Running"] and freezer_state(c["Id"]) == "FROZEN":
            found.append((c["Id"][:12], "frozen"))
    return found


def sixty_replicas(s, paused_msg):
    """40 running replicas (two functions of 20) and 20 idle paused ones."""
    s.deploy_warm("warm-a", 20)
    s.deploy_warm("warm-b", 20)
    s.deploy_warm("napper", 20)
    before = s.log("controller").count(paused_msg)
    s.write_spec("napper", scale=dict(QUICK, idle="pause"))
    s.wait_log("controller", paused_msg, 120, count=before + 20)
    assert len(s.containers()) == 60


def test_shutdown_removes_sixty_replicas_and_says_so():
    s = Stoke("scale-stop").start()
    sixty_replicas(s, "paused (idle, cgroup frozen)")
    assert len(paused_or_frozen(s.instance)) == 20
    assert sigterm_and_wait(s, 120) == 0
    log = s.log("controller")
    assert "all 60 replicas removed (60 by this shutdown); exiting" in log, log[-3000:]
    for m in re.finditer(r"removed (\d+) of (\d+) replicas", log):
        assert int(m.group(2)) == 60 and int(m.group(1)) <= 60, m.group(0)
    assert s.containers() == []
    s.stop()


def test_second_sigterm_leaves_no_paused_container():
    # The engine's own pause (its unpause must come before a removal that
    # is cut) and one engine call at a time, so that removals still wait
    # when the second signal comes.
    s = Stoke("scale-cut", extra_controller_args=[
        "--pause-with", "engine", "--engine-concurrency", "1"]).start()
    sixty_replicas(s, "paused (idle, through the engine)")
    assert len([c for c in s.containers() if c["State"] == "paused"]) == 20
    p = s.procs["controller"]
    p.send_signal(signal.SIGTERM)
    s.wait_log("controller", "removing replicas", 10)
    p.send_signal(signal.SIGTERM)
    p.wait(120)
    assert p.returncode == 0, s.log("controller")[-3000:]
    log = s.log("controller")
    m = re.search(r"removed (\d+) of 60 replicas; the others left for the next controller", log)
    assert m, log[-3000:]
    assert "not waiting for the other removals" in log
    left = s.containers()
    assert len(left) == 60 - int(m.group(1)), (len(left), m.group(0))
    assert paused_or_frozen(s.instance) == []
    s.stop()  # removes what is left
    assert s.containers() == []


if __name__ == "__main__":
    run_tests(globals())
