#!/usr/bin/env python3
"""The controller's periodic list of replicas (every 5 s) against a slow
engine: a list the engine answered late says what was there when it was
asked, and must not fail a replica whose start finished in between.

Found by bench/soak.sh on a loaded engine (creates, starts and lists taking
seconds): a stopped replica woken by a cold request was started, probed and
ready, then a list sent before its start finished arrived, showing it
exited, and the controller failed it ("is no longer running"), replaced it
and counted a replica failure; a pre-created replica whose create finished
after a list was sent was not in that list, and the controller took it as
gone ("idle replica ... is gone") and forgot it, its container left behind.

Here the engine is reached through a unix-socket proxy (written for this
test) that holds each answer to GET /containers/json for 4.5 s after the
engine gave it, so nearly every cold start finishes while a list is held.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from enginepump import EnginePump  # noqa: E402
from harness import Stoke, run_tests, terminate  # noqa: E402

HOLD_S = 4.5


class ListHoldingProxy(EnginePump):
    """The answer to a request that asks for the container list (GET
    .../containers/json) is held HOLD_S seconds before it goes on (libcurl
    sends one request at a time on a connection), and a create (POST
    .../containers/create) reaches the engine `create_delay_s` late. The
    event stream is refused (cut at its request), so that the controller
    lists every 5 s."""

    def __init__(self, path, create_delay_s=0.0):
        self.create_delay_s = create_delay_s
        self.held = 0
        super().__init__(path)

    def on_up(self, conn, data):
        line = data.split(b"\r\n", 1)[0]
        if data.startswith(b"GET ") and b"/events" in line:
            # No event stream: the controller then lists every 5 s (every
            # 60 s while a stream is open), which this test needs to meet
            # late lists in every cycle.
            return None
        if data.startswith(b"GET ") and b"/containers/json" in line:
            conn.state["hold"] = True
        if data.startswith(b"POST ") and b"/containers/create" in line:
            time.sleep(self.create_delay_s)
        return data

    def on_down(self, conn, data):
        if conn.state.pop("hold", False):
            self.held += 1
            time.sleep(HOLD_S)
        return data


def stoke_behind_proxy(name, create_delay_s=0.0):
    s = Stoke(name)
    proxy = ListHoldingProxy(os.path.join(s.tmp, "engine.sock"), create_delay_s)
    s.extra += ["--docker-host", "unix://" + proxy.path]
    return s, proxy


# The host network: a cold start needs no port on the engine's bridge (which
# other work on the machine may fill).
SCALE = {"min": 0, "initial": 0, "window": "6s", "scaleToZeroGrace": "0s"}
CYCLES = 6
BAD = ("is no longer running", "is gone")


def cycles(s, fn, needles):
    """CYCLES times: a cold request, then waits until the controller has
    logged each of `needles` once more (the function back at its idle state);
    fails at once on a replica the controller took for dead or gone."""
    for i in range(CYCLES):
        before = [s.log("controller").count(n) for n in needles]
        r = s.fn_request(fn, timeout=60)
        assert r.status == 200, (i, r)
        deadline = time.time() + 60
        while any(s.log("controller").count(n) <= b for n, b in zip(needles, before)):
            bad = [x for x in s.log("controller").splitlines() if any(b in x for b in BAD)]
            assert not bad, "cycle %d: %s" % (i, bad)
            assert time.time() < deadline, "cycle %d: not all of %r after 60 s" % (i, needles)
            time.sleep(0.1)


def test_late_list_does_not_fail_a_replica_started_meanwhile():
    s, proxy = stoke_behind_proxy("stalelist")
    s.write_spec("slow", scale=dict(SCALE, idle="stop", removeAfter="1h"),
                 extra="  network: host\n")
    s.start()
    s.wait_functions("activator", 1, 30)
    cycles(s, "slow", ["stopped (idle)"])
    log = s.log("controller")
    assert proxy.held >= CYCLES, proxy.held  # lists were held across the cycles
    assert log.count("cold start from stopped") >= CYCLES - 1, log[-4000:]
    bad = [line for line in log.splitlines() if any(b in line for b in BAD)]
    assert not bad, "\n".join(bad)
    # One container all along: none failed and replaced.
    cs = s.containers("slow")
    assert len(cs) == 1, [(c["Id"][:12], c["State"]) for c in cs]
    s.stop()
    proxy.close()


def test_late_list_does_not_forget_a_replica_created_meanwhile():
    """A pre-created replica whose create finished while a list was held
    was taken as gone and forgotten, its container left behind. The engine
    makes each container 3 s after the create was sent (a list sent meanwhile
    does not show it; the engine of the soak took seconds)."""
    s, proxy = stoke_behind_proxy("stalecreate", create_delay_s=3.0)
    s.write_spec("pre", scale=dict(SCALE, idle="remove", precreated=1),
                 extra="  network: host\n")
    s.start()
    s.wait_functions("activator", 1, 30)
    s.wait_log("controller", "kept for a cold start", 60)
    cycles(s, "pre", ["kept for a cold start", "scaled to zero"])  # used, refilled
    log = s.log("controller")
    assert proxy.held >= CYCLES, proxy.held
    assert log.count("cold start from created") >= CYCLES - 1, log[-4000:]
    bad = [line for line in log.splitlines() if any(b in line for b in BAD)]
    assert not bad, "\n".join(bad)
    # Once idle: the one pre-created container, which the controller knows
    # (it removes it at SIGTERM: none is left).
    s.wait_containers("pre", 1, 60)
    terminate(s.procs["activator"])
    terminate(s.procs["controller"])
    left = s.containers("pre")
    assert not left, [(c["Id"][:12], c["State"]) for c in left]
    s.stop()
    proxy.close()


if __name__ == "__main__":
    run_tests(globals())
