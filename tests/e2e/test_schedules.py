"""stoke-events on the controller's channel, and schedules (README "Async
invocations", "Schedules"): a controller, activators and stoke-events with
--controller, against the real engine and the example image."""

import calendar
import os
import re
import sqlite3
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import run_tests, terminate, wait_for  # noqa: E402
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


# ---- schedules ----------------------------------------------------------

def fnv(h, s):
    """FNV-1a 64 over s and its NUL, as events/triggers.c's."""
    for b in s.encode() + b"\0":
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def run_id(fn, schedule, at_s):
    """The call id (and ce-id) of a run: events/schedules.c's derivation."""
    a, b = 0xcbf29ce484222325, 0x84222325cbf29ce4
    for part in (fn, schedule, "@schedule", str(at_s)):
        a, b = fnv(a, part), fnv(b, part)
    return "%016x%016x" % (a, b)


def rfc3339(t):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def schedules_yaml(items):
    """A spec's schedules: section from dicts."""
    out = "  schedules:\n"
    for it in items:
        out += "    - { %s }\n" % ", ".join("%s: %s" % kv for kv in it.items())
    return out


def runs(a, fn):
    """The calls of `fn` in the store, oldest scheduled first: dicts with
    the ce-* headers parsed."""
    db = sqlite3.connect(a.db, timeout=30)
    try:
        rows = db.execute("select id, headers, state, created_ms, finished_ms, attempts,"
                          " condition, body, path from calls where fn=?", (fn,)).fetchall()
    finally:
        db.close()
    out = []
    for cid, headers, state, created, finished, attempts, cond, body, path in rows:
        h = {}
        for line in (headers or b"").decode().split("\r\n"):
            if ":" in line:
                k, v = line.split(":", 1)
                h[k.strip().lower()] = v.strip()
        out.append({"id": cid, "h": h, "state": state, "created": created,
                    "finished": finished, "attempts": attempts, "condition": cond,
                    "body": bytes(body or b""), "path": path})
    out.sort(key=lambda r: r["h"].get("ce-time", ""))
    return out


def sched_metric(a, name, fn, schedule, reason=None):
    lab = 'function="%s",schedule="%s"' % (fn, schedule)
    if reason:
        lab += ',reason="%s"' % reason
    m = re.search(r"^%s\{%s\} (\S+)$" % (name, re.escape(lab)), a.metrics(), re.M)
    return float(m.group(1)) if m else None


def at_of(r):
    return calendar.timegm(time.strptime(r["h"]["ce-time"], "%Y-%m-%dT%H:%M:%SZ"))


def sched_stack(name, rate=1, skew=0):
    a = events_stack(name)
    if rate != 1:
        a.events_env["STOKE_EVENTS_TEST_CLOCK_RATE"] = str(rate)
    if skew:
        a.events_env["STOKE_EVENTS_TEST_CLOCK_SKEW"] = str(skew)
    return a


STATE = {0: "queued", 1: "running", 2: "succeeded", 3: "failed", 4: "dead", 5: "cancelled"}


def test_every_minute_once_retries_dead_letters_and_suspend():
    """`*/1 * * * *` on a test clock six times as fast (a scheduled minute
    every 10 s): one call per scheduled minute, none twice, none skipped;
    each a CloudEvent in binary mode (ce-id the call id, derived from the
    function, schedule and time; ce-time the scheduled minute) with the
    schedule's data, delivered through retries like any async call (its
    first attempt fails). A schedule whose calls fail every attempt
    dead-letters them; a suspended one makes none, and once resumed runs
    the latest time it missed once; a removed one stops at once."""
    a = sched_stack("sched-tick", rate=6).start()
    try:
        a.s.wait_log("controller", "events peer events-", 20)
        a.deploy("tick", asyncs={"retries": 2, "backoff": "200ms"}, extra=schedules_yaml([
            {"name": "every", "schedule": '"*/1 * * * *"', "path": "/async/2",
             "data": "'{\"n\": 1}'"}]))
        a.deploy("dl", asyncs={"retries": 1, "backoff": "100ms"}, extra=schedules_yaml([
            {"name": "fail", "schedule": '"* * * * *"', "path": "/status/500"}]))
        a.deploy("off", extra=schedules_yaml([
            {"name": "never", "schedule": '"* * * * *"', "path": "/async/0", "suspend": "true"}]))
        a.s.wait_log("events", 'schedule every: \\"*/1 * * * *\\" in UTC', 30)
        done = wait_for(lambda: [r for r in runs(a, "tick") if r["state"] == 2]
                        if len([r for r in runs(a, "tick") if r["state"] == 2]) >= 4 else None,
                        240, "4 scheduled runs of tick succeeded")
        rs = runs(a, "tick")
        ats = [at_of(r) for r in rs]
        assert all(t % 60 == 0 for t in ats), ats
        # One call per scheduled minute: none twice, none left out.
        assert ats == list(range(ats[0], ats[0] + 60 * len(ats), 60)), ats
        for r in rs:
            assert r["id"] == run_id("tick", "every", at_of(r)), r
            assert r["h"]["ce-id"] == r["id"], r
            assert r["h"]["ce-specversion"] == "1.0", r
            assert r["h"]["ce-source"] == "/stoke/schedules/tick/every", r
            assert r["h"]["ce-type"] == "dev.stoke.schedule.fired", r
            assert r["h"]["ce-time"] == rfc3339(at_of(r)), r
            assert r["h"]["content-type"] == "application/json", r
            assert r["body"] == b'{"n": 1}' and r["path"] == "/async/2", r
        for r in done:
            assert r["attempts"] == 2, r  # the first attempt's 500 was retried
        # The function saw them: its container logged each call id.
        seen = {c for _, c, _, _, _ in a.attempts("tick")}
        assert {r["id"] for r in done} <= seen, (done, seen)
        assert sched_metric(a, "stoke_schedule_runs_total", "tick", "every") >= len(done)
        nxt = sched_metric(a, "stoke_schedule_next_run_timestamp_seconds", "tick", "every")
        assert nxt is not None and nxt % 60 == 0 and nxt > ats[-1] - 60, (nxt, ats)
        # Retries used up: dead letters, as any async call's.
        dead = wait_for(lambda: [r for r in runs(a, "dl") if r["state"] == 4], 120,
                        "a dead-lettered run of dl")
        assert dead[0]["attempts"] == 2 and dead[0]["condition"] == "RetriesExhausted", dead[0]
        st, body = a.admin("GET", "/v1/dlq/dl")
        assert st == 200 and dead[0]["id"] in [c["id"] for c in body["calls"]], body
        # Suspended: nothing ran, each scheduled time counted as missed.
        assert runs(a, "off") == []
        assert sched_metric(a, "stoke_schedule_missed_total", "off", "never", "suspended") >= 2
        assert sched_metric(a, "stoke_schedule_runs_total", "off", "never") == 0
        assert sched_metric(a, "stoke_schedule_next_run_timestamp_seconds", "off",
                            "never") is None
        assert "not made: suspended" in a.s.log("events")
        # Resumed: the latest time it missed runs once, the earlier ones never.
        a.s.write_spec("off", scale={"min": 0, "initial": 0, "scaleToZeroGrace": "2s",
                                     "window": "6s"},
                       extra=schedules_yaml([{"name": "never", "schedule": '"* * * * *"',
                                              "path": "/async/0"}])
                       + "  async: { retries: 2, backoff: 200ms }\n")
        a.s.wait_log("events", "schedule never resumed", 30)
        skipped = [calendar.timegm(time.strptime(m, "%Y-%m-%dT%H:%M:%SZ")) for m in re.findall(
            r"schedule never: run of (\S+) not made: suspended", a.s.log("events"))]
        assert len(skipped) >= 2, skipped
        first = wait_for(lambda: runs(a, "off"), 60, "a run of the resumed schedule")[0]
        assert at_of(first) in (max(skipped), max(skipped) + 60), (first, skipped)
        assert not [r for r in runs(a, "off") if at_of(r) < max(skipped)], runs(a, "off")
        # Removed: no more runs of it, at once.
        a.s.remove_spec("tick.yaml")
        a.s.wait_log("events", "schedule every removed", 30)
        n = len(runs(a, "tick"))
        wait_for(lambda: len(runs(a, "dl")) >= len(dead) + 2, 60, "two more runs of dl")
        assert len(runs(a, "tick")) == n
    finally:
        a.s.stop()


def test_forbid_and_replace():
    """Forbid: while a run's call is still running (the function takes
    25 s; a scheduled minute is 10 s here), the next runs are skipped and
    counted; no call of the schedule starts before the last one ended.
    Replace: the last run's call still waiting (maxInFlight 1 behind a
    40 s call) is cancelled as Superseded when the next run comes."""
    a = sched_stack("sched-policy", rate=6).start()
    try:
        a.s.wait_log("controller", "events peer events-", 20)
        a.deploy("fb", asyncs={"retries": 0}, extra="  timeout: 120s\n" + schedules_yaml([
            {"name": "s", "schedule": '"* * * * *"', "path": "/delay/25000",
             "concurrencyPolicy": "Forbid"}]))
        a.deploy("rp", asyncs={"retries": 0, "maxInFlight": 1},
                 extra="  timeout: 120s\n" + schedules_yaml([
                     {"name": "s", "schedule": '"* * * * *"', "path": "/delay/40000",
                      "concurrencyPolicy": "Replace"}]))
        wait_for(lambda: (sched_metric(a, "stoke_schedule_missed_total", "fb", "s", "forbid")
                          or 0) >= 2, 180, "two runs of fb skipped (Forbid)")
        wait_for(lambda: len([r for r in runs(a, "fb") if r["state"] == 2]) >= 1, 120,
                 "a run of fb succeeded")
        rs = [r for r in runs(a, "fb")]
        ended = [r for r in rs if r["finished"]]
        # Each call was made after the one before it had ended (Forbid
        # judges the stored state, written when an attempt ends).
        for prev, nxt in zip(rs, rs[1:]):
            assert prev["finished"] and nxt["created"] >= prev["finished"] - 1000, (prev, nxt)
        assert ended, rs
        assert "(concurrencyPolicy Forbid)" in a.s.log("events")
        sup = wait_for(lambda: [r for r in runs(a, "rp") if r["condition"] == "Superseded"],
                       180, "a run of rp superseded")
        assert all(r["state"] == 5 for r in sup), sup
        later = [r for r in runs(a, "rp") if at_of(r) > at_of(sup[0])]
        assert later, "the run that replaced it"
        assert "(concurrencyPolicy Replace)" in a.s.log("events")
    finally:
        a.s.stop()


def test_real_minute_then_missed_runs_after_a_restart():
    """A real minute boundary makes a run (the wall clock, no hook). Then
    stoke-events stops and comes back with its schedules' clock moved on by
    more than two scheduled minutes: the schedule with a deadline of an
    hour makes exactly one run, for the latest time it missed; the one
    whose latest missed time is older than its 30 s deadline makes none
    and counts it."""
    a = sched_stack("sched-miss").start()
    try:
        a.s.wait_log("controller", "events peer events-", 20)
        items = [{"name": "m", "schedule": '"* * * * *"', "path": "/async/0",
                  "startingDeadlineSeconds": 3600}]
        a.deploy("miss", extra=schedules_yaml(items))
        a.deploy("late", extra=schedules_yaml([
            {"name": "m", "schedule": '"* * * * *"', "path": "/async/0",
             "startingDeadlineSeconds": 30}]))
        first = wait_for(lambda: runs(a, "miss"), 75, "a run at a real minute boundary")
        t = at_of(first[0])
        assert t % 60 == 0 and t <= time.time() + 1, first
        assert first[0]["h"]["ce-time"] == rfc3339(t)
        wait_for(lambda: runs(a, "late"), 30, "late's first run")
        terminate(a.s.procs["events"])
        assert a.s.procs["events"].returncode == 0, a.s.log("events")
        before = {r["id"] for r in runs(a, "miss")}
        last = max(at_of(r) for r in runs(a, "miss"))
        late_before = len(runs(a, "late"))
        # Back with the clock moved on 3 to 4 minutes, to :40 of a minute:
        # the latest missed time is 40 s (plus the start) old.
        now = time.time()
        skew = 180 + (40 - int(now) % 60) % 60
        a.events_env["STOKE_EVENTS_TEST_CLOCK_SKEW"] = str(skew)
        a.start_events(logname="events2")
        restart_at = now + skew
        late_missed = wait_for(
            lambda: sched_metric(a, "stoke_schedule_missed_total", "late", "m", "deadline"),
            60, "late's missed run counted")
        assert late_missed == 1, late_missed
        new = wait_for(lambda: [r for r in runs(a, "miss") if r["id"] not in before], 60,
                       "the missed run of miss")
        owed = [r for r in new if at_of(r) <= restart_at]
        assert len(owed) == 1, new
        assert at_of(owed[0]) == int(restart_at) // 60 * 60 and at_of(owed[0]) >= last + 120, (
            owed, last, restart_at)
        assert owed[0]["id"] == run_id("miss", "m", at_of(owed[0]))
        assert len([r for r in runs(a, "late") if at_of(r) <= restart_at]) == late_before
        assert "more than startingDeadlineSeconds (30) ago" in a.s.log("events")
    finally:
        a.s.stop()


if __name__ == "__main__":
    run_tests(globals())
