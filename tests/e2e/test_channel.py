"""The controller <-> activator channel at 1,000 functions (issue 13):
a change of one function reaches the activators as an update of that
function alone, the whole table going only at connect (or when activators
come or go); an activator that misses an update sees the gap in the
generations, asks for the table again and gets it, alone.

Real controller and activators on a unix channel; 1,000 specs in the
functions directory, each scale min 0 and initial 0: no container is
started (nothing sends them a request). What goes over the channel is read
from the activators' counters (stoke_activator_route_*), which count every
message and function entry they apply."""
import http.client
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import BUILD, Stoke, free_port, run_tests, spec_text  # noqa: E402

N = 1000


def metrics(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", "/metrics")
        r = c.getresponse()
        assert r.status == 200, r.status
        return r.read().decode()
    finally:
        c.close()


def ctl_counters(s):
    """The controller's channel counters."""
    text = metrics(s.ctl_ops_port)
    out = {}
    for m in re.finditer(r'^(stoke_controller_(?:route|stats)_\w+)(?:\{kind="(\w+)"\})? (\S+)$',
                         text, re.M):
        out[m.group(1) + ("." + m.group(2) if m.group(2) else "")] = float(m.group(3))
    return out


def counters(port):
    """The route counters of the activator whose ops port is `port`."""
    text = metrics(port)
    out = {}
    for m in re.finditer(r'^(stoke_activator_route_\w+)(?:\{kind="(\w+)"\})? (\S+)$', text,
                         re.M):
        key = m.group(1) + ("." + m.group(2) if m.group(2) else "")
        out[key] = float(m.group(3))
    out["fns"] = set(re.findall(r'^stoke_activator_requests_in_flight\{function="([^"]+)"\}',
                                text, re.M))
    return out


def wait_for(what, check, timeout=60):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError("timed out waiting for %s (last: %r)" % (what, last))


def write_many(s, n):
    """n specs, min 0 and initial 0 (no container), written straight into
    the functions directory before the controller starts."""
    for i in range(n):
        name = "fn-%04d" % i
        with open(os.path.join(s.fndir, name + ".yaml"), "w") as f:
            f.write(spec_text(name, scale={"min": 0, "initial": 0}, env={}))


def add_fn(s, name, **queue):
    s.write_spec(name, scale={"min": 0, "initial": 0}, queue=queue or None, env={})


def start_activator(s, name, env=None):
    """Another activator process (one worker), returning its ops port."""
    ops = free_port()
    argv = [os.path.join(BUILD, "stoke-activator"), "--listen", "127.0.0.1:%d" % free_port(),
            "--ops-listen", "127.0.0.1:%d" % ops, "--controller", s.ctl, "--id", name,
            "--workers", "1", "--log-level", "debug"]
    old = dict(os.environ)
    os.environ.update(env or {})
    try:
        s._spawn(name, argv)
    finally:
        os.environ.clear()
        os.environ.update(old)
    s.wait_log(name, "connected to the controller", 30)
    return ops


def table_with(port, n):
    return wait_for("a table of %d functions" % n,
                    lambda: (lambda c: c if c.get("stoke_activator_route_functions") == n else
                             None)(counters(port)))


def test_one_change_sends_one_entry():
    s = Stoke("chan1", activator_args=["--workers", "1"])
    write_many(s, N)
    s.start()
    c0 = table_with(s.ops_port, N)
    assert c0["stoke_activator_route_messages_total.table"] >= 1, c0
    assert c0["stoke_activator_route_entries_total.table"] >= N, c0
    table_bytes = (c0["stoke_activator_route_bytes_total.table"] /
                   c0["stoke_activator_route_messages_total.table"])

    # One function changes (its queue bound), one comes, one goes.
    k0 = ctl_counters(s)
    assert k0["stoke_controller_route_messages_total.table"] >= 1, k0
    add_fn(s, "fn-0500", max=7, timeout="1s")
    c1 = wait_for("the update of fn-0500", lambda: (lambda c: c if c[
        "stoke_activator_route_messages_total.update"] >=
        c0["stoke_activator_route_messages_total.update"] + 1 else None)(counters(s.ops_port)))
    add_fn(s, "newcomer")
    c2 = table_with(s.ops_port, N + 1)
    assert "newcomer" in c2["fns"], sorted(c2["fns"])[-3:]
    s.remove_spec("fn-0001.yaml")
    c3 = table_with(s.ops_port, N)

    # No table went: three updates (at least; each is one function's), one
    # entry each, and each a small fraction of the table's bytes.
    assert (c3["stoke_activator_route_messages_total.table"] ==
            c0["stoke_activator_route_messages_total.table"]), (c0, c3)
    updates = (c3["stoke_activator_route_messages_total.update"] -
               c0["stoke_activator_route_messages_total.update"])
    entries = (c3["stoke_activator_route_entries_total.update"] -
               c0["stoke_activator_route_entries_total.update"])
    ubytes = (c3["stoke_activator_route_bytes_total.update"] -
              c0["stoke_activator_route_bytes_total.update"])
    assert updates == 3, (c0, c3)
    assert entries == 3, (c0, c3)
    assert c1["stoke_activator_route_entries_total.update"] - \
        c0["stoke_activator_route_entries_total.update"] == 1, (c0, c1)
    assert table_bytes > 100 * (ubytes / updates), (table_bytes, ubytes, updates)
    # The controller's side of the wire: three updates, as many bytes as
    # the activator got, no table.
    k1 = ctl_counters(s)
    assert (k1["stoke_controller_route_messages_total.update"] -
            k0["stoke_controller_route_messages_total.update"] == 3), (k0, k1)
    assert (k1["stoke_controller_route_messages_total.table"] ==
            k0["stoke_controller_route_messages_total.table"]), (k0, k1)
    assert (k1["stoke_controller_route_bytes_total.update"] -
            k0["stoke_controller_route_bytes_total.update"] == ubytes), (k0, k1, ubytes)
    # Stats name only functions with traffic: none had any, so the
    # activator's reports (one a second) name none of the 1,000.
    k2 = wait_for("two stats reports", lambda: (lambda k: k if k[
        "stoke_controller_stats_reports_total"] >= 2 else None)(ctl_counters(s)))
    assert k2["stoke_controller_stats_entries_total"] == 0, k2
    # The function that went is gone from the activator's table: 404.
    r = s.fn_request("fn-0001", timeout=10)
    assert r.status == 404, r
    print("table %d B; update %.0f B per change" % (table_bytes, ubytes / updates))
    s.stop()


def test_missed_update_recovers_table():
    s = Stoke("chan2", activator_args=["--workers", "1"])
    write_many(s, N)
    s.start()
    before = table_with(s.ops_port, N)["stoke_activator_route_messages_total.table"]
    # A second activator process whose channel drops the first update it
    # receives (test hook), as a message lost on the way would be.
    lossy = start_activator(s, "lossy", env={"STOKE_TEST_DROP_ROUTE_UPDATE": "1"})
    # Activators came: every one gets its table again (limits are divided
    # among them).
    a0 = wait_for("the first activator's new table", lambda: (lambda c: c if c[
        "stoke_activator_route_messages_total.table"] > before else None)(counters(s.ops_port)))
    l0 = table_with(lossy, N)

    k0 = ctl_counters(s)
    add_fn(s, "missed")
    s.wait_log("lossy", "test hook: dropping route update 1", 30)
    wait_for("the first activator's update",
             lambda: "missed" in counters(s.ops_port)["fns"])
    lm = counters(lossy)
    assert "missed" not in lm["fns"] and lm["stoke_activator_route_functions"] == N, lm
    assert lm["stoke_activator_route_resyncs_total"] == 0, lm

    # The next update does not follow its table: it asks, and gets the
    # whole table (with both functions); the other activator gets no table.
    add_fn(s, "next")
    l1 = table_with(lossy, N + 2)
    assert {"missed", "next"} <= l1["fns"], l1
    assert l1["stoke_activator_route_resyncs_total"] == 1, l1
    assert (l1["stoke_activator_route_messages_total.table"] ==
            l0["stoke_activator_route_messages_total.table"] + 1), (l0, l1)
    assert (l1["stoke_activator_route_entries_total.table"] -
            l0["stoke_activator_route_entries_total.table"] == N + 2), (l0, l1)
    s.wait_log("controller", "activator lossy missed a route update", 10)
    s.wait_log("lossy", "does not follow table", 10)
    a1 = table_with(s.ops_port, N + 2)
    assert (a1["stoke_activator_route_messages_total.table"] ==
            a0["stoke_activator_route_messages_total.table"]), (a0, a1)
    # The controller sent one table (to the lossy one's channel) and two
    # updates to each of the two channels.
    k1 = ctl_counters(s)
    assert (k1["stoke_controller_route_messages_total.table"] -
            k0["stoke_controller_route_messages_total.table"] == 1), (k0, k1)
    assert (k1["stoke_controller_route_messages_total.update"] -
            k0["stoke_controller_route_messages_total.update"] == 4), (k0, k1)

    # Back in step: the next change is an update again, applied.
    add_fn(s, "after")
    l2 = table_with(lossy, N + 3)
    assert (l2["stoke_activator_route_messages_total.table"] ==
            l1["stoke_activator_route_messages_total.table"]), (l1, l2)
    assert (l2["stoke_activator_route_messages_total.update"] >
            l1["stoke_activator_route_messages_total.update"]), (l1, l2)
    assert l2["stoke_activator_route_resyncs_total"] == 1, l2
    k2 = ctl_counters(s)
    assert (k2["stoke_controller_route_messages_total.table"] ==
            k1["stoke_controller_route_messages_total.table"]), (k1, k2)
    s.stop()


if __name__ == "__main__":
    run_tests(globals(), need_image=False)
