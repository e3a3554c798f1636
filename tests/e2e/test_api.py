"""The controller's admin API (docs/admin-api.md) against the real engine:
every endpoint and error over the unix socket, bearer tokens over TCP,
PUTs written to the functions directory atomically and in order, logs."""

import http.client
import json
import os
import select
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import (BUILD, IMAGE, SANITIZER_MARKERS, Stoke, UnixHTTPConnection,  # noqa: E402
                     concurrent, free_port, popen_daemon, run_tests, spec_text)

FN = "/api/v1/functions/"


def spec(name, image=IMAGE, env=None, scale=None, extra=""):
    """A stoke/v1 Function as YAML text."""
    return spec_text(name, scale=scale, extra=extra, env=env, image=image)


def error_of(r, status, field):
    """Asserts an error answer: the status, JSON {"error", "field"}."""
    assert r.status == status, r
    assert r.headers.get("Content-Type") == "application/json", r.headers
    assert isinstance(r.json, dict) and isinstance(r.json.get("error"), str) and r.json["error"], r
    assert "field" in r.json and r.json["field"] == field, r.json
    return r.json


def wait_status(s, name, pred, timeout=60):
    deadline = time.time() + timeout
    st = None
    while time.time() < deadline:
        r = s.api("GET", FN + name + "/status")
        st = r.json
        if r.status == 200 and pred(st):
            return st
        time.sleep(0.1)
    raise AssertionError("status of %s never matched: %r" % (name, st))


def test_put_get_list_status_delete():
    s = Stoke("api-crud").start()
    r = s.api("GET", "/api/v1/version")
    assert r.status == 200 and r.json["api"] == "v1" and r.json["version"], r
    r = s.api("GET", "/api/v1/functions")
    assert r.status == 200 and r.json == {"items": []}, r

    # JSON is YAML too.
    r = s.api("PUT", FN + "json", body=json.dumps({
        "apiVersion": "stoke/v1", "kind": "Function", "metadata": {"name": "json"},
        "spec": {"image": IMAGE, "scale": {"min": 0, "initial": 0}}}))
    assert r.status == 201 and r.json["spec"]["scale"]["initial"] == 0, r
    assert s.api("DELETE", FN + "json").status == 200

    body = spec("hello", env={"GREETING": "hi"}, scale={"min": 1})
    r = s.api("PUT", FN + "hello", body=body)
    assert r.status == 201, r
    assert r.json["result"] == "created" and r.json["warnings"] == [], r.json
    assert r.json["name"] == "hello" and r.json["spec"]["image"] == IMAGE, r.json
    assert r.json["spec"]["env"] == {"GREETING": "hi"}, r.json
    assert r.json["spec"]["scale"]["min"] == 1 and r.json["spec"]["readiness"]["path"] == "/"
    assert r.json["spec"]["scale"]["window"] == "60s", r.json["spec"]
    assert r.json["spec"]["resources"]["memory"] == str(128 << 20), r.json["spec"]
    with open(os.path.join(s.fndir, "hello.yaml")) as f:
        assert f.read() == body
    # Nothing but the file: no temp file left beside it.
    assert sorted(os.listdir(s.fndir)) == ["hello.yaml"], os.listdir(s.fndir)

    r = s.api("PUT", FN + "hello", body=body)
    assert r.status == 200 and r.json["result"] == "unchanged", r
    r = s.api("PUT", FN + "hello", body=spec("hello", env={"GREETING": "hi"},
                                                scale={"min": 1, "max": 3}))
    assert r.status == 200 and r.json["result"] == "configured", r
    assert r.json["spec"]["scale"]["max"] == 3, r.json

    st = wait_status(s, "hello", lambda st: st["ready"] >= 1 and st["ready_condition"])
    assert st["name"] == "hello" and len(st["revision"]) == 16, st
    reps = [x for x in st["replicas"] if x["state"] == "ready"]
    assert len(reps) == 1 and len(reps[0]["id"]) == 64 and reps[0]["port"] > 0, st
    running = s.running("hello")
    assert [c["Id"] for c in running] == [reps[0]["id"]], (running, st)

    r = s.api("GET", FN + "hello")
    assert r.status == 200 and r.json["status"]["revision"] == st["revision"], r
    r = s.api("GET", "/api/v1/functions")
    assert r.status == 200 and [f["name"] for f in r.json["items"]] == ["hello"], r

    s.write_spec("another")  # a file dropped into the directory shows too
    deadline = time.time() + 10
    while time.time() < deadline:
        names = [f["name"] for f in s.api("GET", "/api/v1/functions").json["items"]]
        if names == ["another", "hello"]:
            break
        time.sleep(0.05)
    assert names == ["another", "hello"], names  # sorted by name

    r = s.api("DELETE", FN + "hello")
    assert r.status == 200 and r.json == {"name": "hello", "result": "deleted"}, r
    assert not os.path.exists(os.path.join(s.fndir, "hello.yaml"))
    error_of(s.api("GET", FN + "hello"), 404, "name")
    error_of(s.api("GET", FN + "hello/status"), 404, "name")
    error_of(s.api("DELETE", FN + "hello"), 404, "name")
    s.wait_containers("hello", 0, 60)
    s.stop()


def raw(s, data, timeout=10):
    """Sends `data` as is on a new connection to the admin socket and reads
    until the server closes it (or `timeout`); returns the bytes."""
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.settimeout(timeout)
    c.connect(s.admin_sock)
    try:
        try:
            c.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered and closed before all was sent: the answer is there
        out = b""
        while True:
            try:
                b = c.recv(65536)
            except socket.timeout:
                break
            if not b:
                break
            out += b
        return out
    finally:
        c.close()


def read_answer(f):
    """(status, body) of one answer with a Content-Length, read from `f`."""
    status = int(f.readline().split()[1])
    length = 0
    while True:
        line = f.readline()
        if line in (b"\r\n", b""):
            break
        k, _, v = line.decode().partition(":")
        if k.lower() == "content-length":
            length = int(v)
    return status, f.read(length)


def status_line(data):
    return data.split(b"\r\n", 1)[0].decode()


def body_json(data):
    return json.loads(data.split(b"\r\n\r\n", 1)[1].decode())


def test_errors_over_unix_socket():
    s = Stoke("api-errors").start()
    mode = os.stat(s.admin_sock).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o660, oct(mode)

    error_of(s.api("GET", "/nope"), 404, None)
    error_of(s.api("GET", "/api/v1/functions/a/b/c"), 404, None)
    error_of(s.api("GET", "/api/v1/functions/hello/other"), 404, None)
    error_of(s.api("GET", FN + "nothere"), 404, "name")
    error_of(s.api("GET", FN + "nothere/status"), 404, "name")
    error_of(s.api("GET", FN + "nothere/logs"), 404, "name")
    error_of(s.api("DELETE", FN + "nothere"), 404, "name")
    for method, path, allow in [("POST", "/api/v1/functions", "GET"),
                                ("DELETE", "/api/v1/functions", "GET"),
                                ("POST", FN + "x", "GET, PUT, DELETE"),
                                ("PATCH", FN + "x", "GET, PUT, DELETE"),
                                ("PUT", FN + "x/status", "GET"),
                                ("DELETE", FN + "x/logs", "GET"),
                                ("POST", "/api/v1/version", "GET")]:
        r = s.api(method, path, body="" if method in ("POST", "PATCH") else None)
        error_of(r, 405, None)
        assert r.headers.get("Allow") == allow, (method, path, r.headers)

    # A bad name in the URL, a body naming another function.
    error_of(s.api("PUT", FN + "Bad_Name", body=spec("hello")), 400, "name")
    j = error_of(s.api("PUT", FN + "hello", body=spec("other")), 400, "metadata.name")
    assert "other" in j["error"], j
    assert not os.path.exists(os.path.join(s.fndir, "hello.yaml"))
    # Not YAML at all, and an empty body.
    r = s.api("PUT", FN + "hello", body="{ [ :")
    assert r.status == 400 and r.json["error"].startswith("body:"), r
    r = s.api("PUT", FN + "hello", body="")
    assert r.status == 400, r

    # 411: a PUT with neither Content-Length nor chunked.
    out = raw(s, b"PUT /api/v1/functions/hello HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status_line(out).startswith("HTTP/1.1 411"), out
    assert body_json(out)["field"] == "Content-Length", out
    # 413: a declared body over 1 MiB, and a chunked one that grows past it.
    out = raw(s, b"PUT /api/v1/functions/hello HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
              % (1024 * 1024 + 1))
    assert status_line(out).startswith("HTTP/1.1 413"), out
    chunk = b"x" * 65536
    big = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(17))
    out = raw(s, b"PUT /api/v1/functions/hello HTTP/1.1\r\nHost: x\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n" + big + b"0\r\n\r\n")
    assert status_line(out).startswith("HTTP/1.1 413"), out[:200]
    # A body of exactly 1 MiB is read (and refused as a spec, not for its size).
    r = s.api("PUT", FN + "hello", body="#" * (1024 * 1024))
    assert r.status == 400, r
    # 431: a head over 16 KiB.
    out = raw(s, b"GET /api/v1/functions HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 17000 +
              b"\r\n\r\n")
    assert status_line(out).startswith("HTTP/1.1 431"), out
    # Malformed requests, and request smuggling shapes: 400.
    for bad in [b"GARBAGE\r\n\r\n",
                b"GET /api/v1/functions HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                b"PUT /api/v1/functions/a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
                b"Content-Length: 2\r\n\r\nab",
                b"GET /api/v1/functions HTTP/1.1\r\nHost: x\r\nNo-Colon-Here\r\n\r\n",
                b"GET /api/v1/functions HTTP/1.1\r\nHost: x\r\nBad\x01Name: 1\r\n\r\n"]:
        out = raw(s, bad)
        assert status_line(out).startswith("HTTP/1.1 400"), (bad, out)
        assert body_json(out)["error"], out

    # Keep-alive with pipelining: three requests in one write, three answers
    # in order, the connection still open after them.
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.settimeout(10)
    c.connect(s.admin_sock)
    c.sendall(b"GET /api/v1/version HTTP/1.1\r\nHost: x\r\n\r\n"
              b"DELETE /api/v1/functions/nothere HTTP/1.1\r\nHost: x\r\n\r\n"
              b"GET /api/v1/functions HTTP/1.1\r\nHost: x\r\n\r\n")
    f = c.makefile("rb")
    answers = [read_answer(f) for _ in range(3)]
    assert [a[0] for a in answers] == [200, 404, 200], answers
    assert json.loads(answers[0][1])["api"] == "v1" and json.loads(answers[2][1]) == {"items": []}
    c.sendall(b"GET /api/v1/version HTTP/1.1\r\nHost: x\r\n\r\n")
    st, body = read_answer(f)
    assert st == 200 and json.loads(body)["api"] == "v1", (st, body)
    c.close()

    # Bad query values of logs need a function.
    r = s.api("PUT", FN + "q", body=spec("q", scale={"min": 0, "initial": 0}))
    assert r.status == 201, r
    for q, field in [("tail=x", "tail"), ("tail=-1", "tail"), ("since=yesterday", "since"),
                     ("since=10", None), ("follow=maybe", "follow"), ("timestamps=2", "timestamps"),
                     ("colour=red", "query")]:
        r = s.api("GET", FN + "q/logs?" + q)
        if field is None:
            assert r.status == 200, (q, r)
        else:
            error_of(r, 400, field)
    assert s.log("controller").count('"level":"error"') == 0, s.log("controller")
    s.stop()


def write_token(s, text):
    path = os.path.join(s.tmp, "token")
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)
    return path


def test_tcp_needs_the_bearer_token():
    # Refused at start: TCP without a token file, or with a short token.
    tmp = tempfile.mkdtemp(prefix="stoke-api-")
    base = [os.path.join(BUILD, "stoke-controller"), "--functions-dir", tmp, "--listen", "unix:" + os.path.join(tmp, "c.sock"),
            "--admin-socket", os.path.join(tmp, "a.sock"), "--admin-listen", "127.0.0.1:1"]
    p = subprocess.run(base, capture_output=True, timeout=30)
    assert p.returncode == 2 and b"--admin-token-file" in p.stderr, p
    short = os.path.join(tmp, "short")
    with open(short, "w") as f:
        f.write("tooshort\n")
    p = subprocess.run(base + ["--admin-token-file", short], capture_output=True, timeout=30)
    assert p.returncode == 2 and b"16" in p.stderr, p
    assert not os.path.exists(os.path.join(tmp, "a.sock"))
    shutil.rmtree(tmp, ignore_errors=True)

    port = free_port()
    token = "s3cret-token-0123456789abcdef"
    s = Stoke("api-tcp")
    tfile = write_token(s, token + "\nsecond line is not part of it\n")
    s.extra += ["--admin-listen", "127.0.0.1:%d" % port, "--admin-token-file", tfile]
    s.start()

    def call(headers, path="/api/v1/functions"):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            c.request("GET", path, headers=headers)
            r = c.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            c.close()

    for h in [{}, {"Authorization": "Bearer wrong-token-0123456789abcdef"},
              {"Authorization": "Bearer " + token[:-1]},
              {"Authorization": "Bearer " + token + "x"},
              {"Authorization": "Basic " + token},
              {"Authorization": token},
              {"Authorization": "Bearer"}]:
        st, hd, body = call(h)
        assert st == 401, (h, st, body)
        assert hd.get("WWW-Authenticate") == 'Bearer realm="stoke"', hd
        j = json.loads(body)
        assert j["field"] == "Authorization" and j["error"], j
    st, _, body = call({"Authorization": "Bearer " + token})
    assert st == 200 and json.loads(body) == {"items": []}, (st, body)
    st, _, body = call({"Authorization": "bearer  " + token}, "/api/v1/version")
    assert st == 200, (st, body)
    # The unix socket needs no token.
    assert s.api("GET", "/api/v1/functions").status == 200
    s.stop()


def test_tcp_unauthenticated_clients_cannot_lock_out():
    """300 TCP connections that send no token (nothing at all, or half a
    head) neither cut an authenticated client's keep-alive connection nor
    keep a new authenticated client out: they share a quarter of the 256
    connections, the oldest closed first, with 5 s for a head."""
    port = free_port()
    token = "s3cret-token-0123456789abcdef"
    s = Stoke("api-unauth")
    tfile = write_token(s, token + "\n")
    s.extra += ["--admin-listen", "127.0.0.1:%d" % port, "--admin-token-file", tfile]
    s.start()
    ask = b"GET /api/v1/version HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n" % (
        token.encode())
    hold = []
    try:
        kept = socket.create_connection(("127.0.0.1", port), 30)
        kept.sendall(ask)
        f = kept.makefile("rb")
        assert read_answer(f)[0] == 200
        for i in range(300):
            c = socket.create_connection(("127.0.0.1", port), 30)
            if i % 2:
                c.sendall(b"GET /api/v1/functions HTTP/1.1\r\nHost: x\r\n")
            hold.append(c)
        # The server has taken them all once it closed the oldest: all but
        # the 64 (a quarter of 256) unauthenticated ones it keeps.
        closed, deadline = set(), time.time() + 30
        while len(closed) < 300 - 64:
            assert time.time() < deadline, "the server closed only %d" % len(closed)
            ready, _, _ = select.select([c for c in hold if c not in closed], [], [], 1)
            for c in ready:
                try:
                    if c.recv(4096) == b"":
                        closed.add(c)
                except ConnectionResetError:
                    closed.add(c)
        kept.sendall(ask)
        assert read_answer(f)[0] == 200
        fresh = socket.create_connection(("127.0.0.1", port), 30)
        fresh.sendall(ask)
        assert read_answer(fresh.makefile("rb"))[0] == 200
        fresh.close()
        kept.close()
    finally:
        for c in hold:
            c.close()
    s.stop()


def test_concurrent_puts_leave_one_consistent_spec():
    s = Stoke("api-race").start()
    n = 20
    bodies = [spec("race", env={"GREETING": "v%d" % i, "N": str(i)},
                   scale={"min": 0, "initial": 0, "max": i + 1}) for i in range(n)]
    results = concurrent(n, lambda i: s.api("PUT", FN + "race", body=bodies[i]))
    bad = [r for r in results if not hasattr(r, "status") or r.status not in (200, 201)]
    assert not bad, bad[:3]
    assert sorted(r.status for r in results).count(201) == 1, [r.status for r in results]
    with open(os.path.join(s.fndir, "race.yaml")) as f:
        on_disk = f.read()
    assert on_disk in bodies, on_disk
    i = bodies.index(on_disk)
    r = s.api("GET", FN + "race")
    assert r.status == 200, r
    assert r.json["spec"]["env"] == {"GREETING": "v%d" % i, "N": str(i)}, (i, r.json["spec"])
    assert r.json["spec"]["scale"]["max"] == i + 1, (i, r.json["spec"])
    # The revision in effect is that of the file's spec: the answer to the
    # PUT of that body said so too (the last answer of that body).
    revs = {x.json["status"]["revision"] for x in results
            if x.json["spec"]["env"].get("N") == str(i)}
    assert revs == {r.json["status"]["revision"]}, (revs, r.json["status"]["revision"])
    # The directory holds the one file, and a rescan applies nothing more.
    assert sorted(os.listdir(s.fndir)) == ["race.yaml"], os.listdir(s.fndir)
    # A rescan must find nothing changed: a file written beside makes one
    # (the directory watch rescans the whole directory), and once its
    # function is there the rescan is done.
    s.write_spec("marker", scale={"min": 0, "initial": 0})
    s.wait_status(lambda: s.api("GET", FN + "marker"), 200, 20)
    r2 = s.api("GET", FN + "race")
    assert r2.json["spec"] == r.json["spec"], (r2.json, r.json)
    assert s.log("controller").count("spec refused") == 0
    # Each PUT applied its spec once, and the directory watch none again.
    log = s.log("controller")
    applied = sum(log.count(m) for m in ('"function added', '"function updated',
                                          '"new revision'))
    assert applied == n + 1, (applied, log[-3000:])  # and the marker
    s.stop()


def test_bad_put_changes_nothing():
    s = Stoke("api-bad").start()
    good = spec("steady", env={"GREETING": "steady"}, scale={"min": 1})
    assert s.api("PUT", FN + "steady", body=good).status == 201
    wait_status(s, "steady", lambda st: st["ready"] == 1)
    before = s.api("GET", FN + "steady").json
    ids = sorted(c["Id"] for c in s.running("steady"))
    assert len(ids) == 1, ids

    bad = spec("steady", image="stoke-hello:2", scale={"min": 1, "max": "lots"})
    j = error_of(s.api("PUT", FN + "steady", body=bad), 400, "spec.scale.max")
    lines = bad.split("\n")
    line = next(k for k, t in enumerate(lines, 1) if "max:" in t)
    assert j["line"] == line and j["column"] == lines[line - 1].index("lots") + 1, (j, line)
    assert j["error"].startswith("body:%d:%d: spec.scale.max: " % (j["line"], j["column"])), j
    j = error_of(s.api("PUT", FN + "steady", body=spec("steady", extra="  colour: red\n")), 400,
                 "spec.colour")
    with open(os.path.join(s.fndir, "steady.yaml")) as f:
        assert f.read() == good
    after = s.api("GET", FN + "steady").json
    assert after["spec"] == before["spec"], (before, after)
    assert after["status"]["revision"] == before["status"]["revision"]
    assert sorted(c["Id"] for c in s.running("steady")) == ids
    assert sorted(os.listdir(s.fndir)) == ["steady.yaml"], os.listdir(s.fndir)

    # 409: steady2.yaml already defines another function.
    s.write_spec("elsewhere", filename="steady2.yaml", scale={"min": 0, "initial": 0})
    deadline = time.time() + 10
    while s.api("GET", FN + "elsewhere").status != 200 and time.time() < deadline:
        time.sleep(0.05)
    error_of(s.api("PUT", FN + "steady2", body=spec("steady2")), 409, "metadata.name")
    assert "name: elsewhere" in open(os.path.join(s.fndir, "steady2.yaml")).read()
    error_of(s.api("GET", FN + "steady2"), 404, "name")

    # 500: the file cannot be written (a directory is in its place).
    os.mkdir(os.path.join(s.fndir, "blocked.yaml"))
    j = error_of(s.api("PUT", FN + "blocked", body=spec("blocked")), 500, None)
    assert "blocked.yaml" in j["error"], j
    error_of(s.api("GET", FN + "blocked"), 404, "name")
    assert sorted(os.listdir(s.fndir)) == ["blocked.yaml", "steady.yaml", "steady2.yaml"], \
        os.listdir(s.fndir)
    s.stop()


KNATIVE = """apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: kn
spec:
  template:
    metadata:
      annotations:
        autoscaling.knative.dev/min-scale: "0"
        autoscaling.knative.dev/initial-scale: "0"
    spec:
      serviceAccountName: robot
      containers:
        - image: %s
          env:
            - name: GREETING
              value: "hi from kn"
""" % IMAGE


def test_knative_put_returns_warnings():
    s = Stoke("api-kn").start()
    r = s.api("PUT", FN + "kn", body=KNATIVE)
    assert r.status == 201, r
    w = r.json["warnings"]
    assert len(w) == 1 and w[0].startswith("body:12:7: ") and "serviceAccountName" in w[0], w
    assert r.json["spec"]["env"] == {"GREETING": "hi from kn"}, r.json
    with open(os.path.join(s.fndir, "kn.yaml")) as f:
        assert f.read() == KNATIVE
    r = s.api("PUT", FN + "kn", body=KNATIVE)
    assert r.status == 200 and r.json["result"] == "unchanged" and len(r.json["warnings"]) == 1
    s.stop()


def test_put_survives_restart_and_delete_removes_its_file():
    s = Stoke("api-restart").start()
    # A function defined by a file of another name is rewritten there.
    s.write_spec("kept", filename="custom.yml", scale={"min": 1})
    wait_status(s, "kept", lambda st: st["ready"] == 1)
    body = spec("kept", env={"GREETING": "after put"}, scale={"min": 1})
    r = s.api("PUT", FN + "kept", body=body)
    assert r.status == 200 and r.json["result"] == "configured", r
    assert sorted(os.listdir(s.fndir)) == ["custom.yml"], os.listdir(s.fndir)
    with open(os.path.join(s.fndir, "custom.yml")) as f:
        assert f.read() == body
    st = wait_status(s, "kept", lambda st: st["ready_condition"] and st["ready"] == 1 and
                     all(x["revision"] == st["revision"] for x in st["replicas"]))
    rev = st["revision"]

    s.restart_controller("controller2")
    r = s.api("GET", FN + "kept")
    assert r.status == 200 and r.json["spec"]["env"] == {"GREETING": "after put"}, r
    assert r.json["status"]["revision"] == rev, r.json
    r = s.wait_status(lambda: s.fn_request("kept"), 200, 30)
    assert r.body.startswith("after put"), r

    r = s.api("DELETE", FN + "kept")
    assert r.status == 200 and r.json["result"] == "deleted", r
    assert os.listdir(s.fndir) == [], os.listdir(s.fndir)
    s.wait_containers("kept", 0, 60)
    error_of(s.api("GET", FN + "kept"), 404, "name")
    assert s.api("GET", "/api/v1/functions").json == {"items": []}
    s.stop()


class Follow:
    """GET .../logs?follow=1 read in a thread, lines collected."""

    def __init__(self, s, name, query="follow=1"):
        self.lines = []
        self.done = threading.Event()
        self.error = None
        self.conn = UnixHTTPConnection(s.admin_sock, timeout=120)
        self.conn.request("GET", FN + name + "/logs?" + query)
        self.resp = self.conn.getresponse()
        assert self.resp.status == 200, self.resp.status
        assert self.resp.getheader("Transfer-Encoding") == "chunked"
        self.t = threading.Thread(target=self._read)
        self.t.start()

    def _read(self):
        try:
            for line in self.resp:
                self.lines.append(line.decode())
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.error = e
        self.done.set()

    def wait_for(self, pred, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if any(pred(x) for x in list(self.lines)):
                return
            time.sleep(0.05)
        raise AssertionError("no such line in %r" % self.lines)

    def close(self):
        # A shutdown ends the reader's recv; close() alone would wait for it.
        try:
            self.conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.t.join(10)
        self.conn.close()


def test_logs():
    s = Stoke("api-logs").start()
    assert s.api("PUT", FN + "talk", body=spec("talk", scale={"min": 1})).status == 201
    st = wait_status(s, "talk", lambda st: st["ready"] == 1)
    first = [x["name"] for x in st["replicas"] if x["state"] == "ready"][0]

    def wait_logs(query, pred, timeout=30):
        deadline = time.time() + timeout
        r = None
        while time.time() < deadline:
            r = s.api("GET", FN + "talk/logs" + query)
            if r.status == 200 and pred(r.body):
                return r
            time.sleep(0.1)
        raise AssertionError("logs%s: %r" % (query, r))

    # The example logs one line when it listens.
    r = wait_logs("", lambda b: '"listening"' in b)
    assert r.headers.get("Content-Type", "").startswith("text/plain"), r.headers
    assert r.headers.get("Transfer-Encoding") == "chunked", r.headers
    lines = r.body.splitlines()
    assert lines and all(x.startswith("[%s] " % first) for x in lines), lines
    assert any('"listening"' in x for x in lines), lines
    r = s.api("GET", FN + "talk/logs?tail=0")
    assert r.status == 200 and r.body == "", r
    r = s.api("GET", FN + "talk/logs?timestamps=1&tail=1")
    assert r.status == 200 and len(r.body.splitlines()) == 1, r
    word = r.body.split(" ")[1]
    assert word[:2] == "20" and word.endswith("Z"), r.body  # the engine's RFC 3339 time
    r = s.api("GET", FN + "talk/logs?since=%d" % (int(time.time()) + 3600))
    assert r.status == 200 and r.body == "", r

    # follow=1: a replica started later shows with its own lines.
    f = Follow(s, "talk")
    f.wait_for(lambda x: x.startswith("[%s] " % first))
    r = s.api("PUT", FN + "talk", body=spec("talk", scale={"min": 2}))
    assert r.status == 200, r
    st = wait_status(s, "talk", lambda st: st["ready"] == 2)
    second = [x["name"] for x in st["replicas"] if x["name"] != first][0]
    f.wait_for(lambda x: x.startswith("[%s] " % second) and '"listening"' in x)
    assert not f.done.is_set()
    # Deleting the function ends the stream.
    assert s.api("DELETE", FN + "talk").status == 200
    assert f.done.wait(30), f.lines
    assert f.error is None, f.error
    f.close()
    # A follower whose client goes away is forgotten by the controller.
    assert s.api("PUT", FN + "talk2", body=spec("talk2", scale={"min": 1})).status == 201
    wait_status(s, "talk2", lambda st: st["ready"] == 1)
    for _ in range(5):
        g = Follow(s, "talk2")
        g.wait_for(lambda x: '"listening"' in x)
        g.close()
    assert s.api("GET", "/api/v1/version").status == 200
    # A follower still reading at SIGTERM gets the end of its answer; the
    # controller exits 0 with nothing for the sanitizers (checked by stop).
    h = Follow(s, "talk2")
    h.wait_for(lambda x: '"listening"' in x)
    s.stop()
    assert h.done.wait(30) and h.error is None, (h.lines, h.error)
    h.close()


def test_logs_follow_a_replica_stopped_and_woken():
    s = Stoke("api-wake").start()
    quick = {"min": 0, "initial": 0, "window": "6s", "scaleToZeroGrace": "1s", "idle": "stop",
             "removeAfter": "1h"}
    assert s.api("PUT", FN + "nap", body=spec("nap", scale=quick)).status == 201
    s.wait_functions("activator", 1, 20)
    r = s.fn_request("nap")
    assert r.status == 200, r
    name = [w for w in r.body.split() if w.startswith("stoke-")][0]
    f = Follow(s, "nap")
    f.wait_for(lambda x: x.startswith("[%s] " % name) and '"listening"' in x)
    # Idle: stopped (the example says so on SIGTERM), and the engine's
    # stream of it ends; the answer goes on.
    s.wait_log("controller", "stopped (idle)", 60)
    f.wait_for(lambda x: x.startswith("[%s] " % name) and "signal received" in x)
    assert not f.done.is_set()
    # Woken: the same container's new output, from where it ended, once.
    r = s.fn_request("nap")
    assert r.status == 200 and name in r.body, r
    f.wait_for(lambda x: sum('"listening"' in y for y in f.lines) == 2)
    assert s.api("DELETE", FN + "nap").status == 200
    assert f.done.wait(30), f.lines
    mine = [x for x in f.lines if x.startswith("[%s] " % name)]
    assert sum('"listening"' in x for x in mine) == 2, mine
    assert sum("signal received" in x for x in mine) >= 1, mine
    f.close()
    s.stop()


def test_connection_cap_and_slow_head():
    import select
    s = Stoke("api-conns").start()
    # 300 connections: those past the cap (256) are closed at once, the
    # others still answer.
    conns = []
    for _ in range(300):
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.connect(s.admin_sock)
        conns.append(c)
    closed = set()
    deadline = time.time() + 30
    while len(closed) < 44 and time.time() < deadline:
        ready, _, _ = select.select([c for c in conns if c not in closed], [], [], 1)
        for c in ready:
            if c.recv(1) == b"":
                closed.add(c)
    assert len(closed) == 44, len(closed)
    open_ones = [c for c in conns if c not in closed]
    for c in (open_ones[0], open_ones[-1]):
        c.sendall(b"GET /api/v1/version HTTP/1.1\r\nHost: x\r\n\r\n")
        st, body = read_answer(c.makefile("rb"))
        assert st == 200, (st, body)
    for c in conns:
        c.close()
    assert s.api("GET", "/api/v1/functions").status == 200

    # A head that never ends is dropped (after 10 s), and so is the rest.
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.settimeout(60)
    c.connect(s.admin_sock)
    c.sendall(b"GET /api/v1/version HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    assert c.recv(1) == b""
    c.close()
    assert s.api("GET", "/api/v1/version").status == 200
    s.stop()


def test_503_while_the_controller_starts():
    """An engine that accepts and never answers keeps the controller at its
    start (the ping waits): the functions answer 503 with Retry-After, the
    version 200."""
    tmp = tempfile.mkdtemp(prefix="stoke-api-")
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mute.bind(os.path.join(tmp, "engine.sock"))
    mute.listen(16)
    sock = os.path.join(tmp, "admin.sock")
    os.mkdir(os.path.join(tmp, "fn"))
    log = open(os.path.join(tmp, "controller.log"), "wb")
    p = popen_daemon([os.path.join(BUILD, "stoke-controller"),
                          "--functions-dir", os.path.join(tmp, "fn"),
                          "--listen", "unix:" + os.path.join(tmp, "ctl.sock"),
                          "--docker-host", "unix://" + os.path.join(tmp, "engine.sock"),
                          "--admin-socket", sock, "--instance", "e2e-api-503-%d" % os.getpid()],
                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 20
        while not os.path.exists(sock) and time.time() < deadline:
            time.sleep(0.02)
        s = type("S", (), {"admin_sock": sock})()
        for path in ["/api/v1/functions", FN + "x", FN + "x/status", FN + "x/logs"]:
            r = Stoke.api(s, "GET", path)
            error_of(r, 503, None)
            assert r.headers.get("Retry-After") == "1", r.headers
        r = Stoke.api(s, "PUT", FN + "x", body=spec("x"))
        error_of(r, 503, None)
        assert os.listdir(os.path.join(tmp, "fn")) == []
        r = Stoke.api(s, "GET", "/api/v1/version")
        assert r.status == 200, r
        alive = p.poll() is None
    finally:
        p.kill()
        p.wait()
        log.close()
        mute.close()
        with open(os.path.join(tmp, "controller.log"), "rb") as f:
            text = f.read().decode(errors="replace")
        shutil.rmtree(tmp, ignore_errors=True)
    assert alive, text[-6000:]
    found = [m for m in SANITIZER_MARKERS if m in text]
    assert not found, (found, text[-6000:])


if __name__ == "__main__":
    run_tests(globals())
