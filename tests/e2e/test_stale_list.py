#!/usr/bin/env python3
"""The controller's periodic list of replicas (every 5 s) against a slow
engine: a list the engine answered late says what was there when it was
asked, and must not fail a replica whose start finished in between.

Found by bench/soak.sh on a loaded engine (starts and lists taking seconds):
a stopped replica woken by a cold request was started, probed and ready,
then a list sent before its start finished arrived, showing it exited, and
the controller failed it ("is no longer running"), replaced it and counted a
replica failure.

Here the engine is reached through a unix-socket proxy (written for this
test) that holds each answer to GET /containers/json for 4.5 s after the
engine gave it, so nearly every cold start finishes while a list is held.
"""

import os
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import DOCKER_SOCK, Stoke, run_tests  # noqa: E402

HOLD_S = 4.5


class ListHoldingProxy:
    """Passes bytes between the controller and the engine, one engine
    connection per client connection; the answer to a request that asks for
    the container list (GET .../containers/json) is held HOLD_S seconds
    before it goes on (libcurl sends one request at a time on a connection)."""

    def __init__(self, path):
        self.path = path
        self.held = 0
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(path)
        self.srv.listen(64)
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            e = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            e.connect(DOCKER_SOCK)
            hold = threading.Event()
            threading.Thread(target=self._up, args=(c, e, hold), daemon=True).start()
            threading.Thread(target=self._down, args=(e, c, hold), daemon=True).start()

    def _up(self, src, dst, hold):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if data.startswith(b"GET ") and b"/containers/json" in data.split(b"\r\n", 1)[0]:
                    hold.set()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            dst.close()

    def _down(self, src, dst, hold):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if hold.is_set():
                    hold.clear()
                    self.held += 1
                    time.sleep(HOLD_S)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            dst.close()

    def close(self):
        self.closed = True
        self.srv.close()


def test_late_list_does_not_fail_a_replica_started_meanwhile():
    s = Stoke("stalelist")
    proxy = ListHoldingProxy(os.path.join(s.tmp, "engine.sock"))
    s.extra += ["--docker-host", "unix://" + proxy.path]
    # The host network: a cold start needs no port on the engine's bridge
    # (which other work on the machine may fill).
    scale = {"min": 0, "initial": 0, "window": "6s", "scaleToZeroGrace": "0s",
             "idle": "stop", "removeAfter": "1h"}
    s.write_spec("slow", scale=scale, extra="  network: host\n")
    s.start()
    s.wait_functions("activator", 1, 30)
    cycles = 6
    for i in range(cycles):
        stopped = s.log("controller").count("stopped (idle)")
        r = s.fn_request("slow", timeout=60)
        assert r.status == 200, (i, r)
        # Ready for a few seconds (a list or two arrive meanwhile), then
        # back to zero: stopped again.
        deadline = time.time() + 60
        while s.log("controller").count("stopped (idle)") <= stopped:
            bad = [x for x in s.log("controller").splitlines() if "is no longer running" in x]
            assert not bad, "cycle %d: %s" % (i, bad)
            assert time.time() < deadline, "cycle %d: not stopped again after 60 s" % i
            time.sleep(0.1)
    log = s.log("controller")
    assert proxy.held >= cycles, proxy.held  # lists were held across the cycles
    assert log.count("cold start from stopped") >= cycles - 1, log[-4000:]
    bad = [line for line in log.splitlines() if "is no longer running" in line]
    assert not bad, "\n".join(bad)
    # One container all along: none failed and replaced.
    cs = s.containers("slow")
    assert len(cs) == 1, [(c["Id"][:12], c["State"]) for c in cs]
    s.stop()
    proxy.close()


if __name__ == "__main__":
    run_tests(globals())
