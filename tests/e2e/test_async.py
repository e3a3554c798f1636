"""Async invocations (README "Async invocations"): stoke-events behind the
activator, against the real engine. The function is the example image's
/async/<n>[/<ms>] (500 while X-Stoke-Attempt < n; a "call start" and a
"call end" log line per attempt, read from the engine's container logs)."""

import http.server
import json
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import BUILD, DOCKER_SOCK, Stoke, UnixHTTPConnection, free_port, run_tests  # noqa: E402


def ops_metrics(port):
    """The text of GET /metrics on an ops port."""
    c = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        c.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            b = c.recv(65536)
            if not b:
                break
            data += b
    finally:
        c.close()
    return data.decode()


class Async:
    """A controller, an activator and stoke-events (its store in the test's
    directory) wired together."""

    def __init__(self, name):
        self.events_port = free_port()
        self.s = Stoke(name)
        # The token the activator sends with each call, in the test's directory.
        self.token_file = os.path.join(self.s.tmp, "events.token")
        with open(self.token_file, "w") as f:
            f.write("%032x\n" % random.getrandbits(128))
        self.s.activator_args += ["--events", "127.0.0.1:%d" % self.events_port,
                                  "--events-token-file", self.token_file]
        self.db = os.path.join(self.s.tmp, "events.db")
        self.sock = os.path.join(self.s.tmp, "events.sock")
        self.ops_port = free_port()
        self.events_args = []  # more of stoke-events' flags (e.g. --controller)
        self.events_env = {}  # more of its environment (e.g. the schedules' test clock)

    def start(self):
        self.s.start()
        self.start_events()
        return self

    def start_events(self, logname=None):
        self.s._spawn("events", [
            os.path.join(BUILD, "stoke-events"), "--listen", "127.0.0.1:%d" % self.events_port,
            "--activator", "127.0.0.1:%d" % self.s.port, "--db", self.db,
            "--admin-socket", self.sock, "--ops-listen", "127.0.0.1:%d" % self.ops_port,
            "--token-file", self.token_file,
            "--lease-margin", "2s", "--log-level", "debug"] + self.events_args, logname=logname,
            env=self.events_env)
        self.s.wait_log("events", '"listening on', 20)

    def deploy(self, name, scale=None, asyncs=None, extra=""):
        a = {"retries": 2, "backoff": "200ms", "maxInFlight": 10}
        a.update(asyncs or {})
        extra += "  async: { %s }\n" % ", ".join("%s: %s" % kv for kv in a.items())
        sc = {"min": 0, "initial": 0, "scaleToZeroGrace": "2s", "window": "6s"}
        sc.update(scale or {})
        n = len([f for f in os.listdir(self.s.fndir) if f.endswith(".yaml")])
        self.s.write_spec(name, scale=sc, extra=extra)
        self.s.wait_functions("activator", n + 1, 20)

    def call(self, fn, path, body=b"", headers=None, prefer=True):
        h = {"Prefer": "respond-async"} if prefer else {}
        h.update(headers or {})
        return self.s.request("/fn/%s%s" % (fn, path), method="POST", body=body, headers=h)

    def admin(self, method, path):
        c = UnixHTTPConnection(self.sock, timeout=30)
        try:
            c.request(method, path)
            r = c.getresponse()
            return r.status, json.loads(r.read() or b"null")
        finally:
            c.close()

    def ctl(self, *args):
        """stokectl with this stoke-events' admin socket and activator."""
        env = dict(os.environ, STOKE_EVENTS="unix:" + self.sock,
                   STOKE_ACTIVATOR="http://127.0.0.1:%d" % self.s.port)
        p = subprocess.run([os.path.join(BUILD, "stokectl")] + list(args), env=env,
                           capture_output=True, timeout=60)
        assert p.returncode == 0, (args, p.returncode, p.stderr)
        return p.stdout.decode()

    def ready(self, fn):
        """(desired, ready) replicas of `fn`, as the controller says."""
        st = self.s.api("GET", "/api/v1/functions/" + fn).json["status"]
        return st["desired"], st["ready"]

    def state(self, call_id):
        r = self.s.request("/_stoke/calls/" + call_id)
        assert r.status == 200, r
        return json.loads(r.body)

    def wait_state(self, call_id, states, timeout):
        deadline = time.time() + timeout
        st = None
        while time.time() < deadline:
            st = self.state(call_id)
            if st["state"] in states:
                return st
            time.sleep(0.1)
        raise AssertionError("call %s: %s, not %s after %ss" % (call_id, st, states, timeout))

    def metrics(self):
        return ops_metrics(self.ops_port)

    def _series(self, series, absent):
        """A series' value. An absent one fails (absent is not 0), unless
        `absent` is given: a wait that polls before the first event."""
        text = self.metrics()
        m = re.search(r"^%s (\S+)$" % re.escape(series), text, re.M)
        if m:
            return float(m.group(1))
        assert absent is not None, "no series %s in:\n%s" % (series, text[-3000:])
        return absent

    def metric_total(self, name, absent=None):
        return self._series(name, absent)

    def metric(self, name, fn, absent=None):
        return self._series('%s{function="%s"}' % (name, fn), absent)

    def call_lines(self, fn):
        """Every "call start"/"call end" line the function's containers
        logged, parsed."""
        for c in self.s.containers(fn):
            for line in demux(container_log(c["Id"])).splitlines():
                if '"msg":"call ' in line:
                    yield json.loads(line)

    def attempts(self, fn):
        """(what, call id, attempt, status, t_ms) of each call line."""
        return [(j["msg"][5:], j["call"], j["attempt"], j["status"], j["t_ms"])
                for j in self.call_lines(fn)]

    def traces(self, fn):
        """The traceparent each attempt came with: {(call id, attempt): value}."""
        return {(j["call"], j["attempt"]): j["trace"] for j in self.call_lines(fn)
                if j["msg"] == "call start"}


def container_log(cid):
    """A container's log stream, raw bytes, from the engine."""
    c = UnixHTTPConnection(DOCKER_SOCK, timeout=30)
    try:
        c.request("GET", "/containers/%s/logs?stdout=1&stderr=1" % cid)
        r = c.getresponse()
        data = r.read()
        assert r.status == 200, (r.status, data[:200])
        return data
    finally:
        c.close()


def demux(raw):
    """The text of a non-TTY container's log stream (8-byte frame heads)."""
    out, i = [], 0
    while i + 8 <= len(raw):
        n = int.from_bytes(raw[i + 4:i + 8], "big")
        out.append(raw[i + 8:i + 8 + n])
        i += 8 + n
    return b"".join(out).decode(errors="replace")


def test_accept_after_commit_404_413_and_state():
    a = Async("async-a").start()
    a.deploy("echo", asyncs={"maxBody": 1024})
    spec = a.s.api("GET", "/api/v1/functions/echo").json["spec"]
    assert spec["async"] == {"retries": 2, "backoff": "200ms", "maxEventAge": "21600s",
                             "maxInFlight": 10, "maxBody": 1024}, spec
    # An unknown function: 404, never 202; nothing reaches the store.
    r = a.call("nope", "/")
    assert r.status == 404, r
    # Over the function's async body limit: 413.
    r = a.call("echo", "/async/0", body=b"x" * 2000)
    assert r.status == 413, r
    # Nothing accepted: stoke-events has no series for echo yet (it reads
    # as 0 here only because the 202 below must make it 1).
    assert a.metric("stoke_async_accepted_total", "echo", absent=0) == 0
    commits = a.metrics()
    # Accepted: 202 with the id and where to read it, once stored.
    r = a.call("echo", "/async/0?x=1", body=b"hello body", headers={"X-Mine": "yes"})
    assert r.status == 202, r
    cid = r.headers["X-Call-Id"]
    assert re.fullmatch(r"[0-9a-f]{32}", cid), r.headers
    assert r.headers["Location"] == "/_stoke/calls/" + cid, r.headers
    assert a.metric("stoke_async_accepted_total", "echo") == 1
    c0 = int(re.search(r"^stoke_events_store_commits_total (\d+)$", commits, re.M).group(1))
    c1 = int(re.search(r"^stoke_events_store_commits_total (\d+)$", a.metrics(), re.M).group(1))
    assert c1 > c0, (c0, c1)
    # The row is in the SQLite file (read with the sqlite3 module: the
    # commit reached the file before the 202).
    import sqlite3
    assert os.stat(a.db).st_mode & 0o077 == 0, oct(os.stat(a.db).st_mode)
    db = sqlite3.connect(a.db)
    assert db.execute("select fn, method, path from calls where id=?", (cid,)).fetchone() == (
        "echo", "POST", "/async/0?x=1")
    db.close()
    st = a.wait_state(cid, ("succeeded",), 60)
    assert st["attempts"] == 1, st
    assert st["response"]["status"] == 200, st
    assert "hi from echo" in st["response"]["body"], st
    # /async-function/<name>/ is the same as the Prefer header.
    r = a.s.request("/async-function/echo/async/0", method="POST", body=b"")
    assert r.status == 202, r
    a.wait_state(r.headers["X-Call-Id"], ("succeeded",), 60)
    # A plain request is still synchronous.
    r = a.s.request("/fn/echo/async/0", method="POST", body=b"")
    assert r.status == 200, r
    # stokectl invoke, both ways.
    assert "hi from echo" in a.ctl("invoke", "echo", "--path", "/async/0")
    cid2 = a.ctl("invoke", "echo", "--async", "--path", "/async/0", "-d", "x").strip()
    assert a.wait_state(cid2, ("succeeded",), 60)["method"] == "POST"
    # stoke-events' ingest takes calls from the activator only: its token.
    import http.client
    for token in (None, "wrong-token-0123456789"):
        c = http.client.HTTPConnection("127.0.0.1", a.events_port, timeout=10)
        h = {"X-Stoke-Function": "echo"}
        if token:
            h["X-Stoke-Events-Token"] = token
        c.request("POST", "/async/0", body=b"", headers=h)
        r = c.getresponse()
        assert r.status == 401, (token, r.status, r.read())
        c.close()
    # A client's own token header does not get through the activator either.
    r = a.call("echo", "/async/0", headers={"X-Stoke-Events-Token": "x" * 32})
    assert r.status == 202, r
    a.wait_state(r.headers["X-Call-Id"], ("succeeded",), 60)
    # An unknown id: 404.
    r = a.s.request("/_stoke/calls/" + "0" * 32)
    assert r.status == 404, r
    assert a.metric("stoke_async_succeeded_total", "echo") == 4
    a.s.stop()


def test_retries_then_success_with_the_same_id():
    a = Async("async-b").start()
    a.deploy("flaky", scale={"min": 1, "initial": 1})
    r = a.call("flaky", "/async/3")  # 500 on attempts 1 and 2, 200 on 3
    assert r.status == 202, r
    cid = r.headers["X-Call-Id"]
    st = a.wait_state(cid, ("succeeded", "dead", "failed"), 60)
    assert st["state"] == "succeeded" and st["attempts"] == 3, st
    runs = [x for x in a.attempts("flaky") if x[0] == "end" and x[1] == cid]
    assert sorted((x[2], x[3]) for x in runs) == [(1, 500), (2, 500), (3, 200)], runs
    assert a.metric("stoke_async_retried_total", "flaky") == 2
    # Every attempt carries a traceparent whose trace id is the call id (a
    # new span each time); one the client sent goes on unchanged.
    traces = a.traces("flaky")
    spans = set()
    for n in (1, 2, 3):
        m = re.fullmatch(r"00-([0-9a-f]{32})-([0-9a-f]{16})-01", traces.get((cid, n), ""))
        assert m and m.group(1) == cid, (n, traces)
        spans.add(m.group(2))
    assert len(spans) == 3, traces
    theirs = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    r = a.call("flaky", "/async/2", headers={"traceparent": theirs})
    own = r.headers["X-Call-Id"]
    assert a.wait_state(own, ("succeeded", "dead", "failed"), 60)["state"] == "succeeded"
    traces = a.traces("flaky")
    assert traces.get((own, 1)) == theirs and traces.get((own, 2)) == theirs, traces
    a.s.stop()


def test_retry_after_is_honoured():
    """A 500 with Retry-After: 2 is tried again no sooner than 2 s later,
    though the back-off is 200 ms (a call without it is printed beside)."""
    a = Async("async-ra").start()
    a.deploy("later", scale={"min": 1, "initial": 1})
    ids = {}
    for path in ("/async/2/0/2", "/async/2"):
        r = a.call("later", path)
        assert r.status == 202, r
        ids[path] = r.headers["X-Call-Id"]
    gaps = {}
    for path, cid in ids.items():
        st = a.wait_state(cid, ("succeeded", "dead", "failed"), 60)
        assert st["state"] == "succeeded" and st["attempts"] == 2, st
        runs = a.attempts("later")
        end1 = [x[4] for x in runs if x[:3] == ("end", cid, 1)]
        start2 = [x[4] for x in runs if x[:3] == ("start", cid, 2)]
        assert len(end1) == 1 and len(start2) == 1, runs
        gaps[path] = start2[0] - end1[0]
    assert gaps["/async/2/0/2"] >= 2000, gaps
    print("Retry-After: attempt 2 came %d ms after attempt 1 (with Retry-After: 2), %d ms "
          "(without: the back-off, 200 ms)" % (gaps["/async/2/0/2"], gaps["/async/2"]))
    a.s.stop()


def test_cancel_a_queued_call():
    a = Async("async-g").start()
    a.deploy("slow", scale={"min": 1, "initial": 1}, asyncs={"maxInFlight": 1})
    first = a.call("slow", "/async/0/3000").headers["X-Call-Id"]
    a.wait_state(first, ("running",), 30)
    second = a.call("slow", "/async/0").headers["X-Call-Id"]
    assert a.state(second)["state"] == "queued"
    # The running one cannot be cancelled; the queued one can.
    r = a.s.request("/_stoke/calls/" + first, method="DELETE")
    assert r.status == 409, r
    r = a.s.request("/_stoke/calls/" + second, method="DELETE")
    assert r.status == 200 and json.loads(r.body)["state"] == "cancelled", r
    assert a.wait_state(first, ("succeeded",), 30)["attempts"] == 1
    assert a.state(second)["state"] == "cancelled"
    assert [x for x in a.attempts("slow") if x[1] == second] == []
    a.s.stop()


def test_throttling_spends_no_retry_and_age_ends_it():
    a = Async("async-h").start()
    a.deploy("busy", scale={"min": 1, "initial": 1},
             asyncs={"retries": 0, "maxEventAge": "4s"})
    # 429 every time: tried again (1 s, 2 s, ...) though retries is 0, until
    # the call is older than maxEventAge.
    r = a.call("busy", "/status/429")
    cid = r.headers["X-Call-Id"]
    st = a.wait_state(cid, ("dead",), 30)
    assert st["condition"] == "EventAgeExceeded", st
    assert st["throttled"] >= 2 and st["attempts"] == 0, st
    assert st["response"]["status"] == 429, st
    assert a.metric("stoke_async_throttled_total", "busy") == st["throttled"]
    # A 500 with retries 0: dead at once, after one attempt.
    r = a.call("busy", "/async/9")
    st = a.wait_state(r.headers["X-Call-Id"], ("dead",), 30)
    assert st["condition"] == "RetriesExhausted" and st["attempts"] == 1, st
    a.s.stop()


def test_dead_letter_then_redrive():
    a = Async("async-c").start()
    a.deploy("bad", scale={"min": 1, "initial": 1}, asyncs={"retries": 1})
    r = a.call("bad", "/async/1000000", body=b"payload-1")
    assert r.status == 202, r
    cid = r.headers["X-Call-Id"]
    st = a.wait_state(cid, ("dead",), 60)
    assert st["attempts"] == 2, st
    rec = st["record"]
    assert rec["requestContext"]["requestId"] == cid, rec
    assert rec["requestContext"]["condition"] == "RetriesExhausted", rec
    assert rec["requestContext"]["approximateInvokeCount"] == 2, rec
    assert rec["responseContext"]["statusCode"] == 500, rec
    assert rec["requestPayload"] == "payload-1", rec
    status, lst = a.admin("GET", "/v1/dlq/bad")
    assert status == 200 and [c["id"] for c in lst["calls"]] == [cid], lst
    # The same through stokectl.
    out = a.ctl("dlq", "list", "bad")
    assert cid in out and "RetriesExhausted" in out, out
    rec2 = json.loads(a.ctl("dlq", "show", cid))
    assert rec2 == rec, (rec2, rec)
    assert json.loads(a.ctl("calls", "get", cid))["state"] == "dead"
    # A non-retryable answer is not retried (and not dead-lettered).
    r = a.s.request("/fn/bad/status/404", method="POST", headers={"Prefer": "respond-async"})
    st = a.wait_state(r.headers["X-Call-Id"], ("failed",), 60)
    assert st["attempts"] == 1 and st["response"]["status"] == 404, st
    # Redrive: it runs again (two more attempts), and is dead again.
    before = len([x for x in a.attempts("bad") if x[1] == cid and x[0] == "end"])
    assert before == 2
    assert a.ctl("dlq", "redrive", cid).strip() == "call/%s redriven" % cid
    deadline = time.time() + 60
    while time.time() < deadline:
        n = len([x for x in a.attempts("bad") if x[1] == cid and x[0] == "end"])
        if n == 4 and a.state(cid)["state"] == "dead":
            break
        time.sleep(0.2)
    assert n == 4, n
    assert a.ctl("dlq", "purge", "bad").strip() == "bad: 1 dead calls purged"
    status, lst = a.admin("GET", "/v1/dlq/bad")
    assert lst["calls"] == [], lst
    a.s.stop()


def send_many(a, fn, path, n, headers=None):
    """n async calls from 8 clients; returns their ids (all 202)."""
    ids, bad = [], []
    lock = threading.Lock()

    def client(k):
        import http.client
        c = http.client.HTTPConnection("127.0.0.1", a.s.port, timeout=60)
        try:
            for _ in range(k):
                h = {"Prefer": "respond-async"}
                h.update(headers or {})
                c.request("POST", "/fn/%s%s" % (fn, path), body=b"", headers=h)
                r = c.getresponse()
                r.read()
                with lock:
                    if r.status == 202:
                        ids.append(r.getheader("X-Call-Id"))
                    else:
                        bad.append(r.status)
        finally:
            c.close()

    ts = [threading.Thread(target=client, args=(n // 8 + (1 if i < n % 8 else 0),))
          for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not bad and len(ids) == n and len(set(ids)) == n, (len(ids), bad[:10])
    return ids


def db_states(a):
    import sqlite3
    db = sqlite3.connect("file:%s?mode=ro" % a.db, uri=True)
    try:
        return dict(db.execute("select id, state from calls").fetchall())
    finally:
        db.close()


def assert_never_twice_at_once(runs):
    """No call's attempts overlap in time (start..end per attempt)."""
    by = {}
    for what, cid, attempt, status, t in runs:
        by.setdefault((cid, attempt), {})[what] = t
    spans = {}
    for (cid, attempt), d in by.items():
        assert "start" in d and "end" in d, (cid, attempt, d)
        spans.setdefault(cid, []).append((d["start"], d["end"], attempt))
    for cid, ss in spans.items():
        ss.sort()
        for x, y in zip(ss, ss[1:]):
            assert x[1] <= y[0], ("call ran twice at once", cid, ss)


def test_thousand_calls_from_zero_exactly_once():
    a = Async("async-d").start()
    a.deploy("many", scale={"max": 4, "target": 10}, asyncs={"maxInFlight": 40})
    assert a.s.containers("many") == []
    ids = send_many(a, "many", "/async/0/20", 1000)
    # It scales up from zero (the backlog comes as requests) ...
    deadline = time.time() + 240
    while time.time() < deadline and a.metric("stoke_async_succeeded_total", "many", absent=0) < 1000:
        time.sleep(0.5)
    assert a.metric("stoke_async_succeeded_total", "many") == 1000, a.metrics()
    assert a.metric("stoke_async_retried_total", "many") == 0
    # ... every call ran exactly once ...
    runs = a.attempts("many")
    ends = {}
    for what, cid, attempt, status, t in runs:
        if what == "end":
            ends[cid] = ends.get(cid, 0) + 1
    assert set(ends) == set(ids), (len(ends), len(ids))
    assert all(n == 1 for n in ends.values()), [k for k, n in ends.items() if n != 1][:5]
    assert len({c["Id"] for c in a.s.containers("many")}) >= 1
    states = db_states(a)
    assert all(states[i] == 2 for i in ids)
    # ... and it goes back to zero (idle replicas are frozen: none ready).
    assert a.s.log("controller").count("ready on 127.0.0.1") >= 1
    deadline = time.time() + 90
    while time.time() < deadline and a.ready("many") != (0, 0):
        time.sleep(0.5)
    assert a.ready("many") == (0, 0), a.s.api("GET", "/api/v1/functions/many").json
    a.s.stop()


def test_kill9_of_stoke_events_loses_none_runs_none_twice_at_once():
    a = Async("async-e").start()
    a.deploy("steady", scale={"min": 1, "initial": 1, "max": 2},
             asyncs={"maxInFlight": 20}, extra="  timeout: 2s\n  queue: { timeout: 2s }\n")
    ids = send_many(a, "steady", "/async/0/100", 500)
    deadline = time.time() + 60
    while time.time() < deadline and a.metric("stoke_async_succeeded_total", "steady", absent=0) < 100:
        time.sleep(0.05)
    assert 100 <= a.metric("stoke_async_succeeded_total", "steady") < 500
    a.s.kill9("events")
    held = [i for i, st in db_states(a).items() if st in (0, 1)]
    assert held, "nothing left to deliver after the kill"
    # With the store's owner down, no 202.
    r = a.call("steady", "/async/0")
    assert r.status == 502, r
    a.start_events(logname="events2")
    assert "%d calls pending" % len(held) in a.s.log("events"), a.s.log("events")
    deadline = time.time() + 180
    while time.time() < deadline:
        states = db_states(a)
        if all(states.get(i) == 2 for i in ids):
            break
        time.sleep(0.5)
    states = db_states(a)
    assert all(states.get(i) == 2 for i in ids), sorted(set(states.values()))
    runs = a.attempts("steady")
    ok = {cid for what, cid, attempt, status, t in runs if what == "end" and status == 200}
    assert ok >= set(ids), len(set(ids) - ok)
    assert_never_twice_at_once(runs)
    a.s.stop()


def test_callback_url_gets_each_result():
    got = []
    lock = threading.Lock()

    class H(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            n = int(self.headers.get("Content-Length", 0))
            body = self.rfile.read(n)
            with lock:
                got.append((self.headers["X-Call-Id"], self.headers["X-Stoke-Call-State"],
                            self.headers["X-Stoke-Status"], body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        a = Async("async-f").start()
        a.deploy("cb", scale={"min": 1, "initial": 1}, asyncs={"retries": 0})
        url = "http://127.0.0.1:%d/done" % srv.server_address[1]
        ok = send_many(a, "cb", "/async/0", 5, headers={"X-Callback-Url": url})
        bad = send_many(a, "cb", "/async/9", 3, headers={"X-Callback-Url": url})
        deadline = time.time() + 60
        while time.time() < deadline and len(got) < 8:
            time.sleep(0.1)
        with lock:
            res = {g[0]: g for g in got}
        assert len(got) == 8 and set(res) == set(ok) | set(bad), got
        for i in ok:
            assert res[i][1:3] == ("succeeded", "200") and b"hi from cb" in res[i][3], res[i]
        for i in bad:
            assert res[i][1:3] == ("dead", "500"), res[i]
        # A callback URL that is not http(s): 400, nothing stored.
        r = a.call("cb", "/async/0", headers={"X-Callback-Url": "file:///etc/passwd"})
        assert r.status == 400, r
        a.s.stop()
    finally:
        srv.shutdown()
        srv.server_close()


def test_callback_owed_survives_a_kill_9():
    """A callback not yet taken is owed in the store: stoke-events killed
    while its receiver refuses sends it after the restart, once taken."""
    tries, got = [], []
    lock = threading.Lock()
    taking = threading.Event()

    class H(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with lock:
                tries.append(self.headers["X-Call-Id"])
                if taking.is_set():
                    got.append((self.headers["X-Call-Id"], self.headers["X-Stoke-Call-State"],
                                body))
            self.send_response(204 if taking.is_set() else 503)
            self.end_headers()

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        a = Async("async-g").start()
        a.deploy("owed", scale={"min": 1, "initial": 1}, asyncs={"retries": 0})
        url = "http://127.0.0.1:%d/done" % srv.server_address[1]
        r = a.call("owed", "/async/0", headers={"X-Callback-Url": url})
        assert r.status == 202, r
        cid = r.headers["X-Call-Id"]
        deadline = time.time() + 60
        while time.time() < deadline and not tries:
            time.sleep(0.05)
        assert tries == [cid], tries  # refused once; the next try is 2 s later
        a.s.kill9("events")
        taking.set()
        a.start_events(logname="events2")
        assert "1 callbacks owed" in a.s.log("events"), a.s.log("events")
        deadline = time.time() + 30
        while time.time() < deadline and not got:
            time.sleep(0.05)
        assert [g[:2] for g in got] == [(cid, "succeeded")] and b"hi from owed" in got[0][2], got
        # Taken: no longer owed, so a third start sends nothing.
        deadline = time.time() + 10
        while time.time() < deadline and a.metric_total("stoke_events_store_commits_total", absent=0) < 1:
            time.sleep(0.05)
        a.s.kill9("events")
        a.start_events(logname="events3")
        assert "callbacks owed" not in a.s.log("events"), a.s.log("events")
        with lock:
            assert len(got) == 1, got
        a.s.stop()
    finally:
        srv.shutdown()
        srv.server_close()


def test_ingest_on_any_address_with_the_token_and_names():
    """As in a pod (the Helm chart): --listen on 0.0.0.0 (allowed: the token
    protects it; without --token-file stoke-events refuses to start), the
    activator's --events and stoke-events' --activator as names (a
    Service's there; localhost here)."""
    port = free_port()
    p = subprocess.run([os.path.join(BUILD, "stoke-events"), "--listen", "0.0.0.0:%d" % port,
                        "--db", "/nonexistent/events.db"], capture_output=True, timeout=30)
    assert p.returncode == 2 and b"--token-file is required" in p.stderr, p
    a = Async("async-g")
    i = a.s.activator_args.index("--events")
    a.s.activator_args[i + 1] = "localhost:%d" % a.events_port
    a.s.start()
    a.s._spawn("events", [
        os.path.join(BUILD, "stoke-events"), "--listen", "0.0.0.0:%d" % a.events_port,
        "--activator", "localhost:%d" % a.s.port, "--db", a.db, "--admin-socket", a.sock,
        "--ops-listen", "127.0.0.1:%d" % a.ops_port, "--token-file", a.token_file])
    a.s.wait_log("events", '"listening on 0.0.0.0:%d' % a.events_port, 20)
    assert "delivering to http://localhost:%d" % a.s.port in a.s.log("events")
    a.deploy("any", scale={"min": 1, "initial": 1})
    a.s.wait_log("activator", "stoke-events localhost is at", 20)
    r = a.call("any", "/async/0")
    assert r.status == 202, r
    st = a.wait_state(r.headers["X-Call-Id"], ("succeeded",), 60)
    assert st["response"]["status"] == 200 and "hi from any" in st["response"]["body"], st
    # Without the token, the ingest on every address refuses the call.
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", a.events_port, timeout=10)
    c.request("POST", "/async/0", body=b"", headers={"X-Stoke-Function": "any"})
    r = c.getresponse()
    assert r.status == 401, (r.status, r.read())
    c.close()
    a.s.stop()


if __name__ == "__main__":
    run_tests(globals())
