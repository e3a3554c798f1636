"""Async invocations (README "Async invocations"): stoke-events behind the
activator, against the real engine. The function is the example image's
/async/<n>[/<ms>] (500 while X-Stoke-Attempt < n; a "call start" and a
"call end" log line per attempt, read from the engine's container logs)."""

import http.server
import json
import os
import re
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import BUILD, DOCKER_SOCK, Stoke, UnixHTTPConnection, free_port, run_tests  # noqa: E402


class Async:
    """A controller, an activator and stoke-events (its store in the test's
    directory) wired together."""

    def __init__(self, name):
        self.events_port = free_port()
        self.s = Stoke(name, activator_args=["--events", "127.0.0.1:%d" % self.events_port])
        self.db = os.path.join(self.s.tmp, "events.db")
        self.sock = os.path.join(self.s.tmp, "events.sock")
        self.ops_port = free_port()

    def start(self):
        self.s.start()
        self.start_events()
        return self

    def start_events(self, logname=None):
        self.s._spawn("events", [
            os.path.join(BUILD, "stoke-events"), "--listen", "127.0.0.1:%d" % self.events_port,
            "--activator", "127.0.0.1:%d" % self.s.port, "--db", self.db,
            "--admin-socket", self.sock, "--ops-listen", "127.0.0.1:%d" % self.ops_port,
            "--log-level", "debug"], logname=logname)
        self.s.wait_log("events", '"listening on', 20)

    def deploy(self, name, scale=None, asyncs=None):
        a = {"retries": 2, "backoff": "200ms", "maxInFlight": 10}
        a.update(asyncs or {})
        extra = "  async: { %s }\n" % ", ".join("%s: %s" % kv for kv in a.items())
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
        c = socket.create_connection(("127.0.0.1", self.ops_port), timeout=10)
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

    def metric(self, name, fn):
        m = re.search(r'^%s\{function="%s"\} (\S+)$' % (name, fn), self.metrics(), re.M)
        return float(m.group(1)) if m else 0.0

    def attempts(self, fn):
        """Every "call start"/"call end" line the function's containers
        logged: (what, call id, attempt, status, t_ms)."""
        out = []
        for c in self.s.containers(fn):
            text = demux(container_log(c["Id"]))
            for line in text.splitlines():
                if '"msg":"call ' not in line:
                    continue
                j = json.loads(line)
                out.append((j["msg"][5:], j["call"], j["attempt"], j["status"], j["t_ms"]))
        return out


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
    # An unknown function: 404, never 202; nothing reaches the store.
    r = a.call("nope", "/")
    assert r.status == 404, r
    # Over the function's async body limit: 413.
    r = a.call("echo", "/async/0", body=b"x" * 2000)
    assert r.status == 413, r
    assert a.metric("stoke_async_accepted_total", "echo") == 0
    commits = a.metrics()
    # Accepted: 202 with the id and where to read it, once stored.
    r = a.call("echo", "/async/0?x=1", body=b"hello body", headers={"X-Mine": "yes"})
    assert r.status == 202, r
    cid = r.headers["X-Call-Id"]
    assert re.fullmatch(r"[0-9a-f]{32}", cid), r.headers
    assert r.headers["Location"] == "/_stoke/calls/" + cid, r.headers
    c0 = int(re.search(r"^stoke_events_store_commits_total (\d+)$", commits, re.M).group(1))
    c1 = int(re.search(r"^stoke_events_store_commits_total (\d+)$", a.metrics(), re.M).group(1))
    assert c1 > c0, (c0, c1)
    # The row is in the SQLite file (read with the sqlite3 module: the
    # commit reached the file before the 202).
    import sqlite3
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
    # An unknown id: 404.
    r = a.s.request("/_stoke/calls/" + "0" * 32)
    assert r.status == 404, r
    assert a.metric("stoke_async_succeeded_total", "echo") == 2
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
    # A non-retryable answer is not retried (and not dead-lettered).
    r = a.s.request("/fn/bad/status/404", method="POST", headers={"Prefer": "respond-async"})
    st = a.wait_state(r.headers["X-Call-Id"], ("failed",), 60)
    assert st["attempts"] == 1 and st["response"]["status"] == 404, st
    # Redrive: it runs again (two more attempts), and is dead again.
    before = len([x for x in a.attempts("bad") if x[1] == cid and x[0] == "end"])
    assert before == 2
    status, out = a.admin("POST", "/v1/dlq/bad/redrive?id=" + cid)
    assert status == 200 and out["redriven"] == 1, out
    deadline = time.time() + 60
    while time.time() < deadline:
        n = len([x for x in a.attempts("bad") if x[1] == cid and x[0] == "end"])
        if n == 4 and a.state(cid)["state"] == "dead":
            break
        time.sleep(0.2)
    assert n == 4, n
    status, out = a.admin("DELETE", "/v1/dlq/bad")
    assert status == 200 and out["purged"] == 1, out
    status, lst = a.admin("GET", "/v1/dlq/bad")
    assert lst["calls"] == [], lst
    a.s.stop()


if __name__ == "__main__":
    run_tests(globals())
