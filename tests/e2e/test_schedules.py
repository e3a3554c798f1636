"""stoke-events on the controller's channel, and schedules (README "Async
invocations", "Schedules"): a controller, activators and stoke-events with
--controller, against the real engine and the example image."""

import os
import re
import sys

sys.path.insert(0, os.path.dirname(__file__))
from harness import run_tests, terminate  # noqa: E402
from test_async import Async, ops_metrics  # noqa: E402
from test_limits import BURST, burst, deploy, replica_max, wait_routed  # noqa: E402


def ctl_metric(s, name):
    data = ops_metrics(s.ctl_ops_port)
    m = re.search(r"^%s (\S+)$" % name, data, re.M)
    return float(m.group(1)) if m else None


def events_stack(name, workers=1):
    a = Async(name)
    if workers > 1:
        a.s.activator_args += ["--workers", str(workers)]
    a.events_args = ["--controller", a.s.ctl]
    return a


def test_events_peer_learns_functions_and_holds_no_share():
    """stoke-events joins the channel as an events peer: it gets each
    function's whole entry (undivided: containerConcurrency 2, queue.max 2,
    where each of two activators has 1 and 1), then its change and its
    removal; the two activators still divide the function's slots and queue
    between them alone (4 served of a burst, the replica never sees more
    than 2 at once)."""
    a = events_stack("sched-peer", workers=2).start()
    try:
        port2 = a.s.add_activator("act2")
        a.s.wait_log("controller", "events peer events-", 20)
        assert not re.search(r"activator events-\d+ connected", a.s.log("controller"))
        deploy(a.s, "div", cc=2, queue_max=2, replicas=1)
        a.s.wait_log("events", "function div known: containerConcurrency 2, queue.max 2", 30)
        assert a.metric_total("stoke_events_functions") == 1
        wait_routed(a.s.port, "div")
        wait_routed(port2, "div")
        statuses = burst([a.s.port, port2], "div")
        assert statuses.count(200) == 4, statuses
        assert statuses.count(503) == 2 * BURST - 4, statuses
        assert replica_max(a.s, "div") == [2]
        # The controller's metric counts activator channels (2 workers and
        # 1), not the events peer.
        n = ctl_metric(a.s, "stoke_controller_activators")
        assert n == 2 + a.s.workers("act2"), (n, a.s.workers("act2"))
        # A change of the spec reaches stoke-events as an update.
        a.s.write_spec("div", scale={"min": 1, "max": 1, "containerConcurrency": 2},
                       queue={"max": 2, "timeout": "30s"}, extra="  async: { retries: 5 }\n")
        a.s.wait_log("events", "function div changed: containerConcurrency 2, queue.max 2, "
                     "async.retries 5", 30)
        a.s.remove_spec("div.yaml")
        a.s.wait_log("events", "function div removed", 30)
        assert a.metric_total("stoke_events_functions") == 0
        # stoke-events going away changes no activator's table.
        before = a.s.log("activator").count("route table")
        pid = re.search(r"events peer (events-\d+) connected", a.s.log("controller")).group(1)
        terminate(a.s.procs["events"])  # its channel closes on SIGTERM
        assert a.s.procs["events"].returncode == 0, a.s.log("events")
        a.s.wait_log("controller", "events peer %s disconnected" % pid, 20)
        assert a.s.log("activator").count("route table") == before
    finally:
        a.s.stop()


if __name__ == "__main__":
    run_tests(globals())
