"""Queue triggers (README "Queue triggers"): Redis streams consumed by
stoke-events (--controller: it learns each function's triggers over the
controller's channel) and delivered as async calls through the activator,
against the real engine, the example image (its /async/<n>[/<ms>] logs a
"call start" and a "call end" line per attempt with the call id) and a real
redis-server (Debian's) started here on a free loopback port without
persistence, killed at the end of each test, also on failure (and with the
test's process: DIE_WITH_TEST).

The call ids are derived from the function, the trigger, the stream and the
message id (events/triggers.c); the test derives them the same way and
looks for them in the store, the dead-letter list and the function's log."""

import atexit
import contextlib
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import DIE_WITH_TEST, free_port, run_tests, wait_for  # noqa: E402
from test_async import Async, ops_metrics  # noqa: E402

_redises = []


class Redis:
    """redis-server on 127.0.0.1:<free port>, no persistence, and a minimal
    RESP client (one connection, pipelined commands)."""

    def __init__(self):
        self.port = free_port()
        self.proc = subprocess.Popen(
            DIE_WITH_TEST + [shutil.which("redis-server") or "redis-server", "--port", str(self.port),
             "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        _redises.append(self)
        deadline = time.time() + 20
        while True:
            try:
                self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
                break
            except OSError:
                if time.time() > deadline or self.proc.poll() is not None:
                    raise
                time.sleep(0.05)
        self.buf = b""
        assert self.cmd("PING") == "PONG"

    @property
    def address(self):
        return "127.0.0.1:%d" % self.port

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        try:
            self.sock.close()
        except OSError:
            pass

    def _line(self):
        while b"\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("redis closed the connection")
            self.buf += data
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _reply(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                self.buf += self.sock.recv(65536)
            data, self.buf = self.buf[:n], self.buf[n + 2:]
            return data.decode()
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._reply() for _ in range(n)]
        raise RuntimeError("bad reply %r" % line)

    @staticmethod
    def _encode(args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            a = str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        return b"".join(out)

    def cmd(self, *args):
        self.sock.sendall(self._encode(args))
        return self._reply()

    def pipeline(self, cmds):
        self.sock.sendall(b"".join(self._encode(c) for c in cmds))
        return [self._reply() for _ in cmds]

    def xadd(self, stream, n, start=0):
        """n messages {"n": i, "kind": "order"}; their ids, in order."""
        return self.pipeline([("XADD", stream, "*", "n", start + i, "kind", "order")
                              for i in range(n)])

    def group(self, stream, group):
        """(lag, pending) of the group, as XINFO GROUPS says."""
        for g in self.cmd("XINFO", "GROUPS", stream):
            d = dict(zip(g[::2], g[1::2]))
            if d["name"] == group:
                return d.get("lag"), d["pending"]
        return None


@atexit.register
def _kill_redises():
    for r in _redises:
        r.stop()


def fnv(h, s):
    for b in s.encode() + b"\0":
        h ^= b
        h = (h * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def call_id(fn, trigger, stream, msg_id):
    """events/triggers.c's triggers_call_id()."""
    a, b = 0xcbf29ce484222325, 0x84222325cbf29ce4
    for p in (fn, trigger, stream, msg_id):
        a, b = fnv(a, p), fnv(b, p)
    return "%016x%016x" % (a, b)


def stack(name):
    a = Async(name)
    a.events_args = ["--controller", a.s.ctl, "--consumer", "events-test"]
    return a.start()


def deploy(a, fn, redis, triggers, scale=None, asyncs=None, extra=""):
    """`triggers`: (name, stream, path, targetBacklog) each."""
    text = extra + "  triggers:\n"
    for name, stream, path, target in triggers:
        text += ("    - name: %s\n      redis: { address: \"%s\", stream: %s, startFrom: \"0\" }\n"
                 "      path: %s\n      targetBacklog: %d\n" % (name, redis.address, stream, path,
                                                               target))
    a.deploy(fn, scale=scale, asyncs=asyncs, extra=text)
    a.s.wait_log("events", "function %s known" % fn, 30)
    for name, stream, _, _ in triggers:
        a.s.wait_log("events", "trigger %s: reading stream %s" % (name, stream), 30)


def db_states(a, ids):
    db = sqlite3.connect("file:%s?mode=ro" % a.db, uri=True, timeout=30)
    try:
        rows = db.execute("select id, state, attempts from calls").fetchall()
    finally:
        db.close()
    want = set(ids)
    return {i: (st, n) for i, st, n in rows if i in want}


def trigger_metric(a, name, fn, trigger, result=None):
    labels = 'function="%s",trigger="%s"' % (fn, trigger)
    if result:
        labels += ',result="%s"' % result
    m = re.search(r"^%s\{%s\} (\S+)$" % (name, re.escape(labels)), a.metrics(), re.M)
    return float(m.group(1)) if m else None


def events_log_on_failure(a, r):
    """On a failure, the tail of stoke-events' log(s) and the groups of the
    streams in Redis, with the traceback."""
    try:
        for key in r.cmd("KEYS", "*"):
            print("---- stream %s: XLEN %s, groups %s" % (key, r.cmd("XLEN", key),
                                                         r.cmd("XINFO", "GROUPS", key)),
                  file=sys.stderr)
    except Exception as e:  # noqa: BLE001 - a report only
        print("---- redis: %r" % e, file=sys.stderr)
    for name in ("events", "events2"):
        if name in a.s.logs:
            lines = [ln for ln in a.s.log(name).splitlines() if '"level":"debug"' not in ln]
            print("---- %s log (last 40 lines but debug) ----" % name, file=sys.stderr)
            print("\n".join(lines[-40:]), file=sys.stderr)


@contextlib.contextmanager
def triggers_stack(name):
    """A redis-server and a stack with stoke-events on the channel; both
    stopped at the end, the logs printed on a failure."""
    r = Redis()
    a = None
    try:
        a = stack(name)
        yield a, r
    except BaseException:
        if a:
            events_log_on_failure(a, r)
        raise
    finally:
        if a:
            a.s.stop()
        r.stop()


def ctl_backlog(a, fn):
    m = re.search(r'^stoke_controller_backlog\{function="%s"\} (\S+)$' % fn,
                  ops_metrics(a.s.ctl_ops_port), re.M)
    return float(m.group(1)) if m else None


def test_stream_scales_from_zero_every_message_once_acked_back_to_zero():
    """500 messages on the stream of a function at zero: it scales from zero
    (the test sends no HTTP request), every message is
    delivered and succeeds once, all are acknowledged, the backlog goes
    back to 0 and the function back to zero replicas."""
    with triggers_stack("trig-a") as (a, r):
        deploy(a, "orders", r, [("orders", "orders", "/async/0", 10)],
               scale={"max": 5, "initial": 0, "scaleToZeroGrace": "2s"},
               asyncs={"maxInFlight": 10})
        assert a.ready("orders") == (0, 0)
        msg_ids = r.xadd("orders", 500)
        ids = [call_id("orders", "orders", "orders", m) for m in msg_ids]
        # No client request: stoke-events' first deliveries (the activator's
        # poke) or its first backlog report, whichever comes first, start it.
        wait_for(lambda: a.ready("orders")[1] >= 1, 60, "scaled from zero")
        wait_for(lambda: all(st == 2 for st, _ in db_states(a, ids).values())
                 and len(db_states(a, ids)) == 500, 300, "500 calls succeeded")
        # Acknowledged, each after its success: nothing pending, no lag.
        wait_for(lambda: r.group("orders", "stoke-orders") == (0, 0), 30, "acks")
        assert r.cmd("XPENDING", "orders", "stoke-orders")[0] == 0
        # The function saw each message once, as one successful attempt.
        ends = {}
        for what, cid, attempt, status, _ in a.attempts("orders"):
            if what == "end":
                ends[cid] = ends.get(cid, 0) + 1
                assert status == 200 and attempt == 1, (cid, attempt, status)
        assert set(ends) == set(ids), len(set(ids) ^ set(ends))
        assert all(n == 1 for n in ends.values())
        st = a.state(ids[0])
        assert st["method"] == "POST" and st["state"] == "succeeded", st
        assert trigger_metric(a, "stoke_trigger_messages_total", "orders", "orders",
                              "accepted") == 500
        wait_for(lambda: trigger_metric(a, "stoke_trigger_messages_total", "orders", "orders",
                                        "succeeded") == 500, 10, "succeeded metric")
        wait_for(lambda: trigger_metric(a, "stoke_trigger_backlog", "orders", "orders") == 0,
                 10, "backlog 0 at stoke-events")
        wait_for(lambda: ctl_backlog(a, "orders") == 0, 10, "backlog 0 at the controller")
        wait_for(lambda: a.ready("orders") == (0, 0), 120, "back to zero")


def test_body_headers_failures_dead_lettered_and_acked():
    """A message's fields are the JSON body; a call that keeps failing (500)
    is dead-lettered after its retries and its message acknowledged; one
    answered 404 (not retryable) is dead-lettered at once: none is lost."""
    with triggers_stack("trig-b") as (a, r):
        deploy(a, "bad", r, [("boom", "boom", "/status/500", 10),
                             ("gone", "gone", "/status/404", 10)],
               scale={"min": 1, "initial": 1, "max": 1},
               asyncs={"retries": 1, "backoff": "200ms"})
        (m1,) = r.pipeline([("XADD", "boom", "*", "order", "42", "note", "a \"quoted\" value")])
        (m2,) = r.pipeline([("XADD", "gone", "*", "x", "1")])
        c1, c2 = call_id("bad", "boom", "boom", m1), call_id("bad", "gone", "gone", m2)
        st1 = a.wait_state(c1, ("dead",), 60)
        assert st1["attempts"] == 2 and st1["condition"] == "RetriesExhausted", st1
        assert st1["record"]["requestPayload"] == \
            '{"order":"42","note":"a \\"quoted\\" value"}', st1["record"]
        db = sqlite3.connect("file:%s?mode=ro" % a.db, uri=True, timeout=30)
        hdrs = db.execute("select headers from calls where id=?", (c1,)).fetchone()[0]
        db.close()
        hdrs = hdrs.decode() if isinstance(hdrs, bytes) else hdrs
        assert "Content-Type: application/json\r\n" in hdrs, hdrs
        assert "X-Stoke-Stream: boom\r\nX-Stoke-Message-Id: %s\r\n" % m1 in hdrs, hdrs
        st2 = a.wait_state(c2, ("dead",), 60)
        assert st2["attempts"] == 1 and st2["condition"] == "NotRetryable", st2
        status, dlq = a.admin("GET", "/v1/dlq/bad")
        assert status == 200 and {c["id"] for c in dlq["calls"]} == {c1, c2}, dlq
        wait_for(lambda: r.group("boom", "stoke-bad") == (0, 0)
                 and r.group("gone", "stoke-bad") == (0, 0), 30, "acks of dead calls")
        assert trigger_metric(a, "stoke_trigger_messages_total", "bad", "boom", "dead") == 1
        # Redrive: it runs again (and fails again: dead once more).
        status, out = a.admin("POST", "/v1/dlq/bad/redrive?id=" + c1)
        assert status == 200 and out["redriven"] == 1, out
        a.wait_state(c1, ("dead",), 60)


def test_kill9_of_stoke_events_loses_no_message_reruns_none_that_succeeded():
    """kill -9 of stoke-events while messages are being delivered: after
    its restart every message is delivered, the calls stored as succeeded
    before the kill are not run again, and all are acknowledged."""
    with triggers_stack("trig-c") as (a, r):
        # A short timeout: the leases of the calls running at the kill end soon.
        deploy(a, "steady", r, [("in", "in", "/async/0/100", 100)],
               scale={"min": 1, "initial": 1, "max": 1}, asyncs={"maxInFlight": 10},
               extra="  timeout: 2s\n  queue: { timeout: 2s }\n")
        msg_ids = r.xadd("in", 300)
        ids = [call_id("steady", "in", "in", m) for m in msg_ids]
        wait_for(lambda: sum(1 for st, _ in db_states(a, ids).values() if st == 2) >= 50, 120,
                 "50 succeeded")
        a.s.kill9("events")
        done_before = {i for i, (st, _) in db_states(a, ids).items() if st == 2}
        assert 50 <= len(done_before) < 300, len(done_before)
        starts_before = {cid for what, cid, *_ in a.attempts("steady") if what == "start"}
        a.start_events(logname="events2")
        wait_for(lambda: len(db_states(a, ids)) == 300
                 and all(st == 2 for st, _ in db_states(a, ids).values()), 180,
                 "all 300 succeeded after the restart")
        wait_for(lambda: r.group("in", "stoke-steady") == (0, 0), 30, "all acknowledged")
        runs = a.attempts("steady")
        ok = {cid for what, cid, attempt, status, _ in runs if what == "end" and status == 200}
        assert ok >= set(ids), len(set(ids) - ok)
        starts = {}
        for what, cid, *_ in runs:
            if what == "start":
                starts[cid] = starts.get(cid, 0) + 1
        twice = [i for i in done_before if starts.get(i) != 1]
        assert not twice, twice[:5]
        assert done_before <= starts_before
        # Read again after the restart and found in the store: duplicates.
        assert "events-test" in str(r.cmd("XINFO", "CONSUMERS", "in", "stoke-steady"))


def test_backlog_drives_replicas_to_max():
    """1000 messages at targetBacklog 10 and scale.max 3: the backlog asks
    for 100 replicas, bounded by max; the controller runs 3 (counted by the
    engine and the controller's status), then goes back to zero."""
    with triggers_stack("trig-d") as (a, r):
        deploy(a, "wide", r, [("w", "w", "/async/0/50", 10)],
               scale={"max": 3, "initial": 0, "scaleToZeroGrace": "2s"},
               asyncs={"maxInFlight": 10})
        msg_ids = r.xadd("w", 1000)
        ids = [call_id("wide", "w", "w", m) for m in msg_ids]
        wait_for(lambda: a.ready("wide")[1] == 3, 120, "3 replicas ready")
        assert len(a.s.running("wide")) == 3, a.s.running("wide")
        assert a.ready("wide")[0] == 3
        # The 3 is the backlog's decision (requests alone, 10 in flight at a
        # target of 100, would ask for 1).
        assert re.search(r"desired 3 for a backlog of \d+ \(target 10\)",
                         a.s.log("controller")), "no backlog decision in the controller's log"
        wait_for(lambda: ctl_backlog(a, "wide") is not None and ctl_backlog(a, "wide") > 30, 10,
                 "the controller's backlog metric")
        wait_for(lambda: len(db_states(a, ids)) == 1000
                 and all(st == 2 for st, _ in db_states(a, ids).values()), 300,
                 "1000 succeeded")
        wait_for(lambda: r.group("w", "stoke-wide") == (0, 0), 30, "all acknowledged")
        wait_for(lambda: a.ready("wide") == (0, 0), 120, "back to zero")


if __name__ == "__main__":
    run_tests(globals())
