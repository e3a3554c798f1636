"""stokectl against a running stoke: the real controller (its admin API on a
unix socket in the test's directory), the activator and the Docker engine.

apply (files, directories, stdin, Knative manifests, --wait both ways), get
in its three formats, describe, logs, top, delete; bad specs refused before
anything is sent; usage errors; --help of every command; an unreachable
server; a wrong token over TCP.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(__file__))
from harness import (BUILD, IMAGE, SANITIZER_MARKERS, Stoke, engine, free_port,  # noqa: E402
                     run_tests)

STOKECTL = os.path.join(BUILD, "stokectl")
HERE = os.path.dirname(os.path.abspath(__file__))
KNATIVE = os.path.join(HERE, "..", "knative", "helloworld-go.yaml")
KNATIVE_IMAGE = "ghcr.io/knative/helloworld-go:latest"
COMMANDS = ["apply", "get", "describe", "delete", "logs", "top", "version", "simulate"]


def admin_sock(s):
    return os.path.join(s.tmp, "admin.sock")


def start(name, extra=()):
    """A Stoke whose controller has its admin socket at <tmp>/admin.sock
    (harness.py passes --admin-socket there; passed here too if not)."""
    s = Stoke(name, extra_controller_args=list(extra))
    if "--admin-socket" not in s._controller_argv():
        s.extra += ["--admin-socket", admin_sock(s)]
    s.start()
    deadline = time.time() + 10
    while not os.path.exists(admin_sock(s)):
        assert time.time() < deadline, "no admin socket:\n" + s.log("controller")
        time.sleep(0.05)
    return s


def ctl(s, *args, stdin=None, timeout=120, server=None):
    """Runs stokectl against `s` (or `server`); returns the CompletedProcess."""
    srv = server or ("unix:" + admin_sock(s) if s else "unix:/nonexistent/admin.sock")
    env = dict(os.environ)
    env.pop("STOKE_SERVER", None)
    env.pop("STOKE_TOKEN_FILE", None)
    p = subprocess.run([STOKECTL, "--server", srv] + list(args), input=stdin,
                       capture_output=True, text=True, timeout=timeout, env=env)
    for marker in SANITIZER_MARKERS:
        assert marker not in p.stderr, "stokectl %s:\n%s" % (" ".join(args), p.stderr)
    return p


def follow_logs(s, name):
    """`stokectl logs NAME -f` in the background, killed after 60 s at the
    latest so that a stuck stream fails the test instead of hanging it."""
    env = dict(os.environ, STOKE_SERVER="unix:" + admin_sock(s))
    f = subprocess.Popen([STOKECTL, "logs", name, "-f"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    watchdog = threading.Timer(60, f.kill)
    watchdog.daemon = True
    watchdog.start()
    return f


def stop_process(f):
    if f.poll() is None:
        f.kill()
        f.wait()


def ok(p):
    assert p.returncode == 0, "exit %d\nstdout: %s\nstderr: %s" % (p.returncode, p.stdout, p.stderr)
    return p


def spec_text(name, image=IMAGE, extra=""):
    return ("apiVersion: stoke/v1\nkind: Function\nmetadata:\n  name: %s\nspec:\n"
            "  image: %s\n  readiness: { path: / }\n  env: { GREETING: \"hi from %s\" }\n%s"
            % (name, image, name, extra))


def write(dirname, filename, text):
    path = os.path.join(dirname, filename)
    with open(path, "w") as f:
        f.write(text)
    return path


def apply_wait_fails(s, name, text, *args):
    """`apply --wait` of `text` (written as NAME.yaml) sends it and then
    fails; returns stderr."""
    path = write(s.tmp, name + ".yaml", text)
    p = ctl(s, "apply", "-f", path, "--wait", *args)
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    assert "function/%s created" % name in p.stdout, p.stdout
    return p.stderr


def test_round_trip_apply_get_describe_logs_top_delete():
    s = start("cli")
    path = write(s.tmp, "rt.yaml", spec_text("rt", extra="  scale: { min: 0, initial: 1 }\n"))

    p = ok(ctl(s, "apply", "-f", path, "--wait"))
    assert "function/rt created" in p.stdout, p.stdout
    assert "function/rt ready" in p.stdout, p.stdout
    assert "rt: " in p.stderr, p.stderr  # progress lines
    # Written to the functions directory as sent: the same bytes.
    with open(os.path.join(s.fndir, "rt.yaml")) as f:
        assert f.read() == open(path).read()
    p = ok(ctl(s, "apply", "-f", path))
    assert p.stdout.strip() == "function/rt unchanged", p.stdout

    r = s.fn_request("rt")
    assert r.status == 200 and "hi from rt" in r.body, r

    # get: a table with one row.
    p = ok(ctl(s, "get"))
    lines = p.stdout.splitlines()
    assert lines[0].split() == ["NAME", "READY", "PAUSED", "STOPPED", "MIN", "MAX", "TARGET",
                                "REVISION", "IMAGE"], lines
    row = [ln.split() for ln in lines[1:] if ln.split()[0] == "rt"]
    assert len(row) == 1, lines
    assert row[0][1] == "1/1" and row[0][4] == "0" and row[0][5] == "-", row
    assert row[0][6] == "100" and len(row[0][7]) == 16 and row[0][8] == IMAGE, row

    # -o json: the API's object.
    fn = json.loads(ok(ctl(s, "get", "rt", "-o", "json")).stdout)
    assert fn["name"] == "rt" and fn["spec"]["image"] == IMAGE, fn
    assert fn["spec"]["env"] == {"GREETING": "hi from rt"}, fn["spec"]
    assert fn["status"]["revision"] == row[0][7], (fn["status"], row)
    items = json.loads(ok(ctl(s, "get", "-o", "json")).stdout)["items"]
    assert [i["name"] for i in items] == ["rt"], items

    # -o yaml: the same object; strings that look like numbers quoted.
    y = ok(ctl(s, "get", "rt", "-o", "yaml")).stdout
    assert y.startswith("name: rt\n"), y
    assert "\n  image: %s\n" % IMAGE in y, y
    assert "\n    GREETING: hi from rt\n" in y, y
    assert "\n  revision: %s\n" % json.dumps(fn["status"]["revision"]) in y or \
        "\n  revision: %s\n" % fn["status"]["revision"] in y, y
    assert "\n    memory: \"%s\"\n" % fn["spec"]["resources"]["memory"] in y, y
    assert "\n  ready_condition: true\n" in y, y
    y = ok(ctl(s, "get", "-o", "yaml")).stdout
    assert y.startswith("items:\n- name: rt\n"), y

    d = ok(ctl(s, "describe", "rt")).stdout
    for needle in ["Name:         rt", "Image:        " + IMAGE, "Revision:     " + row[0][7],
                   "Scale:        min 0, max unbounded, initial 1", "Replicas:     1",
                   " ready ", "Cold starts:", "Last error:   none", "Usage:"]:
        assert needle in d, (needle, d)

    # logs: the replica's output (the example logs "listening" on start),
    # prefixed with the replica's name.
    replica = s.containers("rt")[0]["Names"][0].lstrip("/")
    p = ok(ctl(s, "logs", "rt"))
    assert "[%s] " % replica in p.stdout and '"msg":"listening"' in p.stdout, p.stdout
    p = ok(ctl(s, "logs", "function/rt", "--tail", "1", "--timestamps"))
    assert len(p.stdout.splitlines()) == 1, p.stdout
    # -f keeps the answer open until Ctrl-C, which ends it with status 0.
    f = follow_logs(s, "rt")
    try:
        first = f.stdout.readline()
        assert first.startswith("[%s] " % replica), first
        f.send_signal(signal.SIGINT)
        out, err = f.communicate(timeout=30)
        assert f.returncode == 0, (f.returncode, err)
        assert not [m for m in SANITIZER_MARKERS if m in err], err
    finally:
        stop_process(f)

    p = ok(ctl(s, "logs", "rt", "--since", str(int(time.time()) + 3600)))
    assert p.stdout == "", p.stdout
    p = ok(ctl(s, "logs", "rt", "--since", "1h"))
    assert '"msg":"listening"' in p.stdout, p.stdout
    p = ctl(s, "logs", "nosuch")
    assert p.returncode == 1 and "function/nosuch" in p.stderr, (p.returncode, p.stderr)

    t = ok(ctl(s, "top")).stdout.splitlines()
    assert t[0].split()[:3] == ["NAME", "REPLICAS", "REQ/S"], t
    assert any(ln.split()[0] == "rt" and ln.split()[1] == "1/1" for ln in t[1:]), t

    # A follower's answer ends when its function is deleted.
    f = follow_logs(s, "rt")
    try:
        assert f.stdout.readline().startswith("[%s] " % replica)
        p = ok(ctl(s, "delete", "rt"))
        assert p.stdout.strip() == "function/rt deleted", p.stdout
        out, err = f.communicate(timeout=60)
        assert f.returncode == 0, (f.returncode, err)
    finally:
        stop_process(f)
    assert not os.path.exists(os.path.join(s.fndir, "rt.yaml"))
    p = ctl(s, "get", "rt")
    assert p.returncode == 1 and "function/rt" in p.stderr, (p.returncode, p.stderr)
    p = ctl(s, "delete", "rt")
    assert p.returncode == 1 and "function/rt" in p.stderr, (p.returncode, p.stderr)
    p = ok(ctl(s, "get"))
    assert p.stdout == "" and "No functions" in p.stderr, (p.stdout, p.stderr)
    s.wait_containers("rt", 0, 60)
    s.stop()


def image_id(ref):
    st, body = engine("GET", "/images/%s/json" % urllib.parse.quote(ref, safe=""))
    return body["Id"] if st == 200 else None


def test_knative_manifest_unchanged_serves_through_the_activator():
    before = image_id(KNATIVE_IMAGE)
    assert before is None or before == image_id(IMAGE), \
        "%s exists and is not %s: not touching it" % (KNATIVE_IMAGE, IMAGE)
    repo, tag = KNATIVE_IMAGE.rsplit(":", 1)
    st, body = engine("POST", "/images/%s/tag?repo=%s&tag=%s" % (
        urllib.parse.quote(IMAGE, safe=""), urllib.parse.quote(repo, safe=""), tag))
    assert st == 201, (st, body)
    try:
        s = start("knative")
        p = ok(ctl(s, "apply", "-f", KNATIVE, "--wait", "--timeout", "60s"))
        assert p.stdout.splitlines()[0] == "function/hello created", p.stdout
        assert "warning:" not in p.stderr, p.stderr  # nothing in it is ignored
        with open(os.path.join(s.fndir, "hello.yaml"), "rb") as f, open(KNATIVE, "rb") as g:
            assert f.read() == g.read()
        fn = json.loads(ok(ctl(s, "get", "hello", "-o", "json")).stdout)
        assert fn["spec"]["image"] == KNATIVE_IMAGE and fn["spec"]["port"] == 8080, fn["spec"]
        assert fn["spec"]["env"] == {"TARGET": "World"}, fn["spec"]

        r = s.fn_request("hello")
        assert r.status == 200, r
        cs = s.containers("hello")
        assert cs, "no container"
        st, info = engine("GET", "/containers/%s/json" % cs[0]["Id"])
        assert st == 200 and "TARGET=World" in info["Config"]["Env"], info["Config"]["Env"]
        assert info["Config"]["Image"] == KNATIVE_IMAGE, info["Config"]["Image"]
        # The example answers as helloworld-go does: "Hello $TARGET!"
        # (deploy/build-example.sh, which tests/run.sh runs first, builds the
        # image from this tree).
        assert r.body == "Hello World!\n", r
        s.stop()
    finally:
        if before is None:
            engine("DELETE", "/images/%s?noprune=1" % urllib.parse.quote(KNATIVE_IMAGE, safe=""))
    if before is None:
        assert image_id(KNATIVE_IMAGE) is None, "the tag was not removed"
    assert image_id(IMAGE) is not None


def test_wait_fails_on_a_missing_image_with_the_engines_message():
    s = start("cliwait")
    # A short queue timeout is --wait's deadline: if the engine's message did
    # not come through, the failure would say "not ready after" instead.
    err = apply_wait_fails(s, "ghost", spec_text(
        "ghost", image="stoke-no-such-image:0",
        extra="  scale: { initial: 1 }\n  queue: { max: 10, timeout: 30s }\n"))
    assert "function/ghost cannot become ready: " in err, err
    assert "No such image" in err and "stoke-no-such-image" in err, err
    assert "not ready after" not in err, err
    assert "last status:" in err, err
    d = ok(ctl(s, "describe", "ghost")).stdout
    assert "No such image" in d, d
    # The image fixed: the previous revision's error is not taken for the
    # new one's.
    p = ok(ctl(s, "apply", "-f", "-", "--wait", stdin=spec_text(
        "ghost", extra="  scale: { initial: 1 }\n  queue: { max: 10, timeout: 30s }\n")))
    assert p.stdout.splitlines() == ["function/ghost configured", "function/ghost ready"], p.stdout
    s.stop()


def test_wait_fails_on_a_crash_loop_with_the_exit_code():
    s = start("clicrash")
    # The example exits 1 when it cannot listen on BIND_ADDR.
    err = apply_wait_fails(s, "crash", spec_text("crash", extra="  scale: { initial: 1 }\n").replace(
        'env: { GREETING: "hi from crash" }', 'env: { BIND_ADDR: "not-an-address" }'))
    assert "function/crash cannot become ready: " in err, err
    assert "exit status 1" in err, err
    s.stop()


def test_server_refusal_is_shown_with_its_field():
    s = start("clirefused")
    # x.yaml in the functions directory defines another function: the
    # controller refuses to overwrite it with function x (409).
    s.write_file("x.yaml", spec_text("zzz", extra="  scale: { initial: 0 }\n"))
    s.wait_log("controller", "zzz", 10)
    p = ctl(s, "apply", "-f", "-", stdin=spec_text("x"))
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    assert p.stdout == "", p.stdout
    assert "function/x: " in p.stderr and "(field metadata.name)" in p.stderr, p.stderr
    s.stop()


def test_wait_deadline_passes():
    s = start("clideadline")
    # A replica that never answers its readiness path (/status/500) and does
    # not crash: only the deadline ends the wait.
    err = apply_wait_fails(s, "slow", spec_text("slow", extra="  scale: { initial: 1 }\n").replace(
        "readiness: { path: / }", "readiness: { path: /status/500 }"), "--timeout", "3s")
    assert "function/slow is not ready after 3s" in err, err
    assert "slow: last status: 0/1 ready" in err, err
    s.stop()


def test_bad_spec_is_refused_and_nothing_is_sent():
    s = start("clibad")
    d = tempfile.mkdtemp(dir=s.tmp)
    write(d, "a-good.yaml", spec_text("good"))
    bad = write(d, "b-bad.yaml", spec_text("bad", extra="  scale:\n    min: -1\n"))
    # The bad one alone, then a directory holding a good one too: nothing
    # of either reaches the controller.
    for target, where in ((bad, bad), (d, bad)):
        p = ctl(s, "apply", "-f", target)
        assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
        assert p.stdout == "", p.stdout
        assert "%s:10:10: spec.scale.min: " % where in p.stderr, p.stderr
        assert "nothing was sent" in p.stderr, p.stderr
    assert os.listdir(s.fndir) == [], os.listdir(s.fndir)
    assert json.loads(ok(ctl(s, "get", "-o", "json")).stdout)["items"] == []
    # A Knative manifest's unsupported fields are warnings, and it is sent.
    kn = open(KNATIVE).read().replace("  name: hello\n", "  name: warned\n").replace(
        "          ports:\n", "          livenessProbe: {}\n          ports:\n")
    p = ok(ctl(s, "apply", "-f", "-", stdin=kn))
    assert "function/warned created" in p.stdout, p.stdout
    assert "warning: <stdin>:10:11: spec.template.spec.containers[0].livenessProbe: " in \
        p.stderr, p.stderr
    s.stop()


def test_apply_directory_and_stdin():
    s = start("clidir")
    d = tempfile.mkdtemp(dir=s.tmp)
    no_replicas = "  scale: { initial: 0 }\n"
    write(d, "b.yml", spec_text("two", extra=no_replicas))
    write(d, "a.yaml", spec_text("one", extra=no_replicas))
    write(d, "notes.txt", "not a spec")
    write(d, ".hidden.yaml", "not: [a spec")
    os.mkdir(os.path.join(d, "sub.yaml"))
    p = ok(ctl(s, "apply", "-f", d, "--wait"))
    out = [ln for ln in p.stdout.splitlines() if ln.endswith(("created", "configured"))]
    assert out == ["function/one created", "function/two created"], p.stdout
    assert "function/one ready" in p.stdout and "function/two ready" in p.stdout, p.stdout
    p = ok(ctl(s, "apply", "-f", "-", stdin=spec_text("three", extra=no_replicas)))
    assert p.stdout.strip() == "function/three created", p.stdout
    # JSON on stdin too.
    body = json.dumps({"apiVersion": "stoke/v1", "kind": "Function", "metadata": {"name": "four"},
                       "spec": {"image": IMAGE, "scale": {"initial": 0}}})
    p = ok(ctl(s, "apply", "-f", "-", stdin=body))
    assert p.stdout.strip() == "function/four created", p.stdout
    names = [i["name"] for i in json.loads(ok(ctl(s, "get", "-o", "json")).stdout)["items"]]
    assert names == ["four", "one", "three", "two"], names
    assert sorted(os.listdir(s.fndir)) == ["a.yaml", "b.yml", "four.yaml", "three.yaml"] or \
        sorted(os.listdir(s.fndir)) == ["four.yaml", "one.yaml", "three.yaml", "two.yaml"], \
        os.listdir(s.fndir)
    t = ok(ctl(s, "top")).stdout
    assert [ln.split()[0] for ln in t.splitlines()[1:]] == names, t
    p = ok(ctl(s, "delete", "one", "function/two"))
    assert p.stdout.splitlines() == ["function/one deleted", "function/two deleted"], p.stdout
    s.stop()


def test_usage_errors_exit_2():
    cases = [
        [],
        ["frobnicate"],
        ["--bogus", "get"],
        ["apply"],
        ["apply", "-f"],
        ["apply", "-f", "x.yaml", "extra"],
        ["apply", "-f", "-", "-f", "-"],
        ["apply", "-f", "x.yaml", "--timeout", "soon", "--wait"],
        ["apply", "-f", "x.yaml", "--timeout", "5s"],
        ["get", "-o", "xml"],
        ["get", "--nope"],
        ["describe"],
        ["delete"],
        ["logs"],
        ["logs", "a", "b"],
        ["logs", "a", "--tail", "many"],
        ["logs", "a", "--since", "yesterday"],
        ["version", "extra"],
        ["help", "frobnicate"],
        ["simulate"],
    ]
    for args in cases:
        p = ctl(None, *args)
        assert p.returncode == 2, (args, p.returncode, p.stdout, p.stderr)
        assert p.stderr and "stokectl" in p.stderr, (args, p.stderr)
        assert "cannot reach" not in p.stderr, (args, p.stderr)


def test_help_of_every_command():
    p = ok(ctl(None, "--help"))
    for c in COMMANDS:
        assert "\n  %s " % c in p.stdout, (c, p.stdout)
    assert ok(ctl(None, "help")).stdout == p.stdout
    for c in COMMANDS:
        for args in ([c, "--help"], ["help", c], [c, "-h"]):
            p = ok(ctl(None, *args))
            assert p.stdout.startswith("usage: stokectl %s" % c), (args, p.stdout)
            assert p.stderr == "", (args, p.stderr)


def test_unreachable_server_says_where():
    p = ctl(None, "get")
    assert p.returncode == 1, p
    assert "unix:/nonexistent/admin.sock" in p.stderr, p.stderr
    p = ctl(None, "get", server="http://127.0.0.1:%d" % free_port())
    assert p.returncode == 1 and "http://127.0.0.1:" in p.stderr, p.stderr
    p = ok(ctl(None, "version"))
    assert p.stdout.startswith("stokectl "), p.stdout
    assert "not reachable at unix:/nonexistent/admin.sock" in p.stdout, p.stdout
    p = ctl(None, "get", server="ftp://127.0.0.1:1")
    assert p.returncode == 1 and "expected unix:/PATH or http://HOST:PORT" in p.stderr, p.stderr


def test_wrong_token_over_tcp():
    port = free_port()
    tmp = tempfile.mkdtemp(prefix="stoke-cli-token-")
    try:
        tcp_with_tokens(tmp, port)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def tcp_with_tokens(tmp, port):
    good = write(tmp, "token", "0123456789abcdef0123456789abcdef\n")
    bad = write(tmp, "wrong", "fedcba9876543210fedcba9876543210\n")
    s = start("clitcp", extra=["--admin-listen", "127.0.0.1:%d" % port,
                               "--admin-token-file", good])
    server = "http://127.0.0.1:%d" % port
    p = ctl(s, "get", "--token-file", bad, server=server)
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    assert "refused the credentials" in p.stderr and "token" in p.stderr, p.stderr
    p = ctl(s, "get", server=server)
    assert p.returncode == 1 and "give --token-file" in p.stderr, p.stderr
    p = ok(ctl(s, "--token-file", good, "get", server=server))
    assert "No functions" in p.stderr, p.stderr
    p = ok(ctl(s, "version", "--token-file", good, server=server))
    assert "server: " in p.stdout and "api v1" in p.stdout, p.stdout
    s.stop()


if __name__ == "__main__":
    run_tests(globals())
