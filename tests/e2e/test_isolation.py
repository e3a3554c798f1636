"""One function cannot reach or impersonate another (issue 11, item 4).

Each replica has its own network namespace (the engine's bridge) and its port
published on 127.0.0.1 only; a hostile function (tests/e2e/hostile/hostile.c,
packed FROM scratch by deploy/build-example.sh) that binds the controller's
whole replica port range and tries stoke's ports reaches nothing and catches
nothing of another function's cold starts. Host networking is an opt-in that
still works. The TCP activator channel refuses connections without the
token; the admin socket takes its own group; specs PUT through the API are
written 0600.

All traffic stays on 127.0.0.0/8: the tests connect to 127.0.0.1 only, and the
hostile function to its own namespace's 127.0.0.1."""

import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import (  # noqa: E402
    BUILD, Activator, Stoke, engine, free_port, run_tests, spec_text)

HERE = os.path.dirname(os.path.abspath(__file__))
HOSTILE_IMAGE = os.environ.get("STOKE_HOSTILE_IMAGE", "stoke-hostile:test")
RANGE = (30000, 32767)  # the controller's default replica port range
QUICK = {"min": 0, "initial": 0, "window": "6s", "scaleToZeroGrace": "1s"}


def inspect(cid):
    st, body = engine("GET", "/containers/%s/json" % cid)
    assert st == 200, (st, body)
    return body


def netns(pid):
    return os.readlink("/proc/%d/ns/net" % pid)


def listeners(port):
    """Local addresses of the host namespace's TCP sockets listening on
    `port` (from /proc/net/tcp and tcp6, as seen by this process)."""
    found = []
    for path, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        with open(path) as f:
            next(f)
            for line in f:
                fields = line.split()
                addr, hexport = fields[1].split(":")
                if fields[3] != "0A" or int(hexport, 16) != port:
                    continue
                raw = bytes.fromhex(addr)
                if v6:
                    # Four little-endian 32-bit words.
                    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                    found.append(socket.inet_ntop(socket.AF_INET6, raw))
                else:
                    found.append(socket.inet_ntop(socket.AF_INET, raw[::-1]))
    return found


def only_container(s, fn):
    cs = s.containers(fn)
    assert len(cs) == 1, cs
    return cs[0]


def hostile_json(s):
    r = s.fn_request("hostile")
    assert r.status == 200, r
    j = json.loads(r.body)
    assert j["hostile"] is True, j
    return j


def build_hostile_image():
    binary = os.path.join(BUILD, "tests", "stoke-hostile")
    assert os.path.exists(binary), "no %s: build the stoke-hostile target" % binary
    subprocess.run([os.path.join(HERE, "..", "..", "deploy", "build-example.sh"), HOSTILE_IMAGE,
                    binary], check=True, stdout=subprocess.DEVNULL)


def test_replica_in_its_own_namespace_port_on_loopback_only():
    s = Stoke("iso-ns").start()
    s.deploy_warm("boxed", 1)
    c = only_container(s, "boxed")
    info = inspect(c["Id"])
    pid = info["State"]["Pid"]
    assert pid > 0
    assert netns(pid) != netns(os.getpid()), "the replica shares the host's network namespace"
    assert info["HostConfig"]["NetworkMode"] == "bridge", info["HostConfig"]["NetworkMode"]
    port = c["Labels"]["io.stoke.port"]
    want = {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": port}]}
    assert info["HostConfig"]["PortBindings"] == want, info["HostConfig"]["PortBindings"]
    assert info["NetworkSettings"]["Ports"] == want, info["NetworkSettings"]["Ports"]
    # $PORT inside is the spec's port; the host port is the engine's business.
    assert "PORT=8080" in info["Config"]["Env"], info["Config"]["Env"]
    # On the host, the port is bound on 127.0.0.1 alone (the engine holds
    # it there for the replica), never on 0.0.0.0 or ::.
    assert listeners(int(port)) == ["127.0.0.1"], listeners(int(port))
    r = s.fn_request("boxed")
    assert r.status == 200 and r.body.startswith("hi from boxed"), r
    assert s.api("GET", "/api/v1/functions/boxed").json["spec"]["network"] == "bridge"
    s.stop()


def test_host_network_is_an_opt_in_that_works():
    s = Stoke("iso-host").start()
    s.write_spec("hosted", scale={"min": 1}, extra="  network: host\n",
                 env={"GREETING": "hi from hosted", "BIND_ADDR": "127.0.0.1"})
    s.wait_log("controller", "ready on 127.0.0.1", 30)
    c = only_container(s, "hosted")
    info = inspect(c["Id"])
    assert info["HostConfig"]["NetworkMode"] == "host", info["HostConfig"]
    assert not info["HostConfig"]["PortBindings"], info["HostConfig"]["PortBindings"]
    assert netns(info["State"]["Pid"]) == netns(os.getpid())
    # On the host network it listens on the host port itself.
    assert "PORT=%s" % c["Labels"]["io.stoke.port"] in info["Config"]["Env"]
    assert listeners(int(c["Labels"]["io.stoke.port"])) == ["127.0.0.1"]
    r = s.fn_request("hosted")
    assert r.status == 200 and r.body.startswith("hi from hosted"), r
    assert s.api("GET", "/api/v1/functions/hosted").json["spec"]["network"] == "host"
    s.stop()


def test_hostile_function_reaches_nothing_and_captures_nothing():
    build_hostile_image()
    s = Stoke("iso-hostile", channel_tcp=True).start()
    probes = [s.port, s.ops_port, s.ctl_ops_port, s.ctl_port]
    s.write_file("hostile.yaml", spec_text(
        "hostile", scale={"min": 1}, image=HOSTILE_IMAGE,
        env={"BIND_FROM": str(RANGE[0]), "BIND_TO": str(RANGE[1]),
             "PROBE_PORTS": ",".join(map(str, probes))}))
    s.wait_log("controller", "ready on 127.0.0.1", 30)
    j = hostile_json(s)
    # It holds every port of the range in its namespace, and none of
    # stoke's ports answers it.
    assert j["bound"] == RANGE[1] - RANGE[0] + 1 and j["bind_errors"] == 0, j
    assert j["reached"] == [] and j["refused"] == len(probes), j
    # Had it shared the host's network, these are the ports it would have
    # reached: they do answer here.
    for p in probes:
        socket.create_connection(("127.0.0.1", p), 5).close()

    # Another function's cold starts, from a pre-created container and from
    # a stopped one: both succeed, and the answers are its own.
    s.write_spec("victim", scale=dict(QUICK, idle="stop", removeAfter="1h", precreated=1))
    s.wait_log("controller", "created and kept for a cold start", 30)
    port = int(only_container(s, "victim")["Labels"]["io.stoke.port"])
    assert RANGE[0] <= port <= RANGE[1], port
    r = s.fn_request("victim")
    assert r.status == 200 and r.body.startswith("hi from victim"), r
    assert "cold start from created" in s.log("controller")
    s.wait_log("controller", "stopped (idle)", 30)
    r = s.fn_request("victim")
    assert r.status == 200 and r.body.startswith("hi from victim"), r
    assert "cold start from stopped" in s.log("controller")
    for _ in range(20):
        r = s.fn_request("victim")
        assert r.status == 200 and r.body.startswith("hi from victim"), r

    j = hostile_json(s)
    assert j["captured"] == 0 and j["reached"] == [], j
    s.stop()


def read_all(sock, timeout):
    sock.settimeout(timeout)
    data = b""
    deadline = time.time() + timeout
    while time.time() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            return data, True
        data += chunk
    return data, False


def test_tcp_channel_needs_the_token():
    s = Stoke("iso-chan", channel_tcp=True).start()
    s.write_spec("quiet", scale={"min": 0, "initial": 0})
    s.wait_functions("activator", 1, 20)
    assert "connected (token checked)" in s.log("controller")

    cases = [
        (b'{"op":"hello","activator":"x","token":"not-the-token-at-all"}\n', b"wrong channel token"),
        (b'{"op":"hello","activator":"x"}\n', b"--channel-token-file"),
        (b'{"op":"poke","fn":"quiet"}\n', b"--channel-token-file"),
        (b"x" * 20000 + b"\n", b"first line must be the hello"),
    ]
    for send, why in cases:
        with socket.create_connection(("127.0.0.1", s.ctl_port), 5) as c:
            c.sendall(send)
            data, closed = read_all(c, 10)
        assert closed, data
        assert b'"op":"error"' in data and why in data, data
        assert b'"gen"' not in data, data  # no route table
    # Saying nothing: closed after the hello's deadline, sent nothing, not
    # even the route table broadcast meanwhile.
    with socket.create_connection(("127.0.0.1", s.ctl_port), 5) as c:
        s.write_spec("other", scale={"min": 0, "initial": 0})
        s.wait_functions("activator", 2, 20)
        data, closed = read_all(c, 15)
    assert closed and data == b"", data
    assert "sent no token in 5 s" in s.log("controller")
    # The poke above changed nothing: quiet has no replica.
    assert s.containers("quiet") == []
    s.stop()

    # Neither daemon starts with a TCP channel and no token.
    p = subprocess.run([os.path.join(BUILD, "stoke-controller"), "--listen",
                        "127.0.0.1:%d" % free_port(), "--admin-socket", "none",
                        "--ops-listen", "none"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "--channel-token-file" in p.stderr, (p.returncode, p.stderr)
    p = subprocess.run([os.path.join(BUILD, "stoke-activator"), "--controller",
                        "127.0.0.1:%d" % free_port(), "--ops-listen", "none"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "--channel-token-file" in p.stderr, (p.returncode, p.stderr)


def test_channel_addresses_tried_in_turn_and_names_resolved():
    """--controller host:port[,...]: names resolve (as a headless Service's
    do, to every controller pod), and each address is tried in turn until one
    takes the channel; one that refuses, or accepts and closes before any
    route table (a controller that does not lead), is passed over."""
    s = Stoke("iso-addrs", channel_tcp=True).start()
    s.write_spec("quiet", scale={"min": 0, "initial": 0})
    s.wait_functions("activator", 1, 20)
    refused = free_port()
    closer = socket.socket()
    closer.bind(("127.0.0.1", 0))
    closer.listen(8)
    accepted = []

    def close_each():
        while True:
            try:
                c, _ = closer.accept()
            except OSError:
                return
            accepted.append(c)
            c.close()

    threading.Thread(target=close_each, daemon=True).start()
    try:
        s.add_activator("a2", controller="127.0.0.1:%d,127.0.0.1:%d,localhost:%d" % (
            refused, closer.getsockname()[1], s.ctl_port))
        s.wait_log("a2", "connected to the controller at 127.0.0.1:%d" % s.ctl_port, 20)
        s.wait_functions("a2", 1, 20)
        assert accepted, "the closing address was never tried"
        # The controller restarts: the activator goes round again and finds it.
        s.restart_controller("controller2")
        s.wait_log("a2", "connected to the controller at 127.0.0.1:%d" % s.ctl_port, 30, count=2)
        s.wait_functions("a2", 1, 30, times=2)
    finally:
        closer.close()
        s.stop()

    for bad in ("bad_name:80", "nohost", "h:0", "h:65536", "h:", ":80", "-h:80", "h-:80",
                "a:1,", "[::1:80", "[nothex]:80", ",".join(["h:1"] * 9)):
        p = subprocess.run([os.path.join(BUILD, "stoke-activator"), "--controller", bad,
                            "--ops-listen", "none", "--channel-token-file", "/dev/null"],
                           capture_output=True, text=True, timeout=30)
        assert p.returncode == 2 and "bad value for --controller" in p.stderr, (bad, p.stderr)


def test_admin_socket_group_and_spec_files_0600():
    s = Stoke("iso-files", extra_controller_args=["--admin-socket-group", "65534"]).start()
    st = os.stat(s.admin_sock)
    assert st.st_gid == 65534 and stat.S_IMODE(st.st_mode) == 0o660, (st.st_gid, oct(st.st_mode))
    # The channel socket keeps the process's group (the activator's, with
    # systemd), so the two are apart.
    st = os.stat(s.ctl[len("unix:"):])
    assert st.st_gid == os.getegid() and stat.S_IMODE(st.st_mode) == 0o660, st

    body = spec_text("secret", scale={"min": 0, "initial": 0}, env={"API_KEY": "s3cr3t"})
    r = s.api("PUT", "/api/v1/functions/secret", body=body)
    assert r.status == 201, r
    st = os.stat(os.path.join(s.fndir, "secret.yaml"))
    assert stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)
    s.stop()


def test_activator_before_its_first_route_table_answers_503():
    """An activator whose controller has not answered yet knows no function:
    it says 503 with Retry-After (try again), not 404 (there is no such
    function), and counts it as no_routes."""
    import http.client
    import tempfile
    with tempfile.NamedTemporaryFile("w", prefix="stoke-token-") as tok:
        tok.write("0123456789abcdef0123456789abcdef\n")
        tok.flush()
        act = Activator([], args=["--controller", "127.0.0.1:%d" % free_port(),
                                  "--channel-token-file", tok.name, "--workers", "1"])
        try:
            act.wait_ready()
            c = http.client.HTTPConnection("127.0.0.1", act.port, timeout=10)
            c.request("GET", "/fn/anything/")
            r = c.getresponse()
            r.read()
            assert r.status == 503 and r.getheader("Retry-After") == "1", (
                r.status, r.getheaders())
            c.close()
            c = http.client.HTTPConnection("127.0.0.1", act.ops, timeout=10)
            c.request("GET", "/metrics")
            text = c.getresponse().read().decode()
            c.close()
            assert 'stoke_activator_rejected_total{reason="no_routes"} 1' in text, text
            assert 'stoke_activator_rejected_total{reason="no_function"} 0' in text, text
        finally:
            act.stop()


if __name__ == "__main__":
    run_tests(globals())
