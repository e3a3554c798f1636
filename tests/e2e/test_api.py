"""The controller's admin API (docs/admin-api.md) against the real engine:
every endpoint and error over the unix socket, bearer tokens over TCP,
PUTs written to the functions directory atomically and in order, logs."""

import http.client
import json
import os
import socket
import stat
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import IMAGE, Stoke, concurrent, run_tests  # noqa: E402

FN = "/api/v1/functions/"


def spec(name, image=IMAGE, env=None, scale=None, extra=""):
    """A stoke/v1 Function as YAML text."""
    lines = ["apiVersion: stoke/v1", "kind: Function", "metadata:", "  name: " + name, "spec:",
             "  image: " + image, "  readiness: { path: / }"]
    if env:
        lines.append("  env:")
        for k, v in env.items():
            lines.append("    %s: %s" % (k, json.dumps(v)))
    if scale:
        lines.append("  scale:")
        for k, v in scale.items():
            lines.append("    %s: %s" % (k, v))
    return "\n".join(lines) + "\n" + extra


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


if __name__ == "__main__":
    run_tests(globals())
