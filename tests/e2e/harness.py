"""End-to-end harness: runs the real stoke-controller and stoke-activator
against the real Docker engine, with specs in a temporary functions
directory, and cleans up every process and container it started, also when
a test fails or the run is interrupted.

All traffic goes to 127.0.0.1 (the activator, and the replicas' ports the
engine publishes there); the engine is reached over its unix socket.
"""

import atexit
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse

BUILD = os.environ.get("STOKE_BUILD_DIR", os.path.join(os.path.dirname(__file__), "../../build"))
IMAGE = os.environ.get("STOKE_HELLO_IMAGE", "stoke-hello:1")
DOCKER_SOCK = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock").replace("unix://", "")

_live = []  # every Stoke started, for cleanup at exit

# Findings of ASan, UBSan and LeakSanitizer in a daemon's log fail the test.
SANITIZER_MARKERS = ("runtime error:", "AddressSanitizer", "LeakSanitizer")


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=30):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.path)
        self.sock = s


def engine(method, path, body=None):
    """One call to the Docker engine API; returns (status, parsed JSON or text)."""
    c = UnixHTTPConnection(DOCKER_SOCK)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        c.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
        r = c.getresponse()
        data = r.read()
        try:
            return r.status, json.loads(data) if data else None
        except ValueError:
            return r.status, data.decode(errors="replace")
    finally:
        c.close()


def containers(labels):
    """Containers (any state) carrying every label of `labels` (a dict)."""
    f = json.dumps({"label": ["%s=%s" % kv for kv in labels.items()]})
    st, body = engine("GET", "/containers/json?all=1&filters=" + urllib.parse.quote(f))
    assert st == 200, (st, body)
    return body


def remove_containers(labels):
    for c in containers(labels):
        engine("DELETE", "/containers/%s?force=1&v=1" % c["Id"])


def terminate(proc):
    """SIGTERM to a process still running, SIGKILL after 30 s; waits."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def stop_checked(proc, logpath, name="activator"):
    """terminate(proc); then fails with the log's tail when it exited
    non-zero or its log at `logpath` has sanitizer findings."""
    terminate(proc)
    with open(logpath, "rb") as f:
        text = f.read().decode(errors="replace")
    problems = ["log has %r" % m for m in SANITIZER_MARKERS if m in text]
    if proc.returncode != 0:
        problems.append("exited with %s" % proc.returncode)
    if problems:
        raise AssertionError("%s: %s\n%s" % (name, "; ".join(problems), text[-6000:]))


# Every daemon a test starts dies with the test: setpriv sets
# PR_SET_PDEATHSIG (kept across its exec of the daemon), so the kernel sends
# SIGKILL when the test's process ends, however it ends (ctest's timeout
# kills it with SIGKILL, which no atexit handler sees). The signal follows
# the thread that started the daemon: start daemons from the main thread.
DIE_WITH_TEST = ["setpriv", "--pdeathsig", "KILL", "--"]


def popen_daemon(argv, **kw):
    """subprocess.Popen(argv, **kw) of a process that dies with the test
    (see DIE_WITH_TEST), listed for tests/run.sh too (record_pid)."""
    p = subprocess.Popen(DIE_WITH_TEST + list(argv), **kw)
    record_pid(p.pid)
    return p


def record_pid(pid):
    """Lists a daemon the test started in $STOKE_TEST_PIDFILE, so tests/run.sh
    kills it should the test itself be killed."""
    pidfile = os.environ.get("STOKE_TEST_PIDFILE")
    if pidfile:
        with open(pidfile, "a") as f:
            f.write("%d\n" % pid)


_given_ports = set()  # what free_port() returned in this process


def free_port():
    """A port free now for a daemon to listen on: from 20000-29999, below
    the kernel's ephemeral range (32768 up, where any outgoing connection
    may take a port between this check and the daemon's bind: that made
    stoke-events fail with EADDRINUSE) and the replicas' ports (30000 up).
    Never the same port twice in one process: nothing holds a port between
    this check and the daemon's bind, so two daemons of one test (stoke-events'
    data and ops ports, say) could otherwise be given the same one."""
    for _ in range(200):
        p = random.randrange(20000, 30000)
        if p in _given_ports:
            continue
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", p))
            _given_ports.add(p)
            return p
        except OSError:
            continue
        finally:
            s.close()
    raise AssertionError("no free port in 20000-29999")


_activators = []  # standalone activators (class Activator) still running


class Activator:
    """stoke-activator alone, for proxy tests that need no engine and no
    controller: --controller none, the given routes ("name=IP:PORT"), then
    `args` (a later flag overrides an earlier one). .port is the data port,
    .ops the ops port (None with ops=False). Killed at exit if a test did not
    stop it."""

    def __init__(self, routes, args=(), ops=True, max_body=65536):
        self.port = free_port()
        self.ops = free_port() if ops else None
        fd, self.logpath = tempfile.mkstemp(prefix="stoke-activator-", suffix=".log")
        os.close(fd)
        self.log_f = open(self.logpath, "wb")
        argv = [os.path.join(BUILD, "stoke-activator"), "--listen", "127.0.0.1:%d" % self.port,
                "--controller", "none", "--max-body-bytes", str(max_body),
                "--ops-listen", "127.0.0.1:%d" % self.ops if ops else "none",
                "--log-level", "debug"]
        for r in routes:
            argv += ["--route", r]
        self.proc = popen_daemon(argv + list(args), stdout=self.log_f, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        _activators.append(self)

    def wait_ready(self, timeout=10.0):
        deadline = time.time() + timeout
        for port in [self.port] + ([self.ops] if self.ops else []):
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), 1).close()
                    break
                except OSError:
                    if self.proc.poll() is not None or time.time() > deadline:
                        raise AssertionError("activator did not start:\n" + self.log())
                    time.sleep(0.02)
        return self

    def log(self):
        with open(self.logpath, "rb") as f:
            return f.read().decode(errors="replace")

    def fds(self):
        return len(os.listdir("/proc/%d/fd" % self.proc.pid))

    def alive(self):
        return self.proc.poll() is None

    def check_alive(self):
        """For run_tests(after_each=...): False (and the log) once it died."""
        if not self.alive():
            print("activator died:\n" + self.log()[-6000:])
            return False
        return True

    def discard(self):
        """Forgets an activator that has exited, with its log."""
        self.log_f.close()
        if self in _activators:
            _activators.remove(self)
        os.unlink(self.logpath)

    def stop(self):
        """SIGTERM, then the exit code and the log's sanitizer findings."""
        try:
            stop_checked(self.proc, self.logpath)
        finally:
            self.log_f.close()
            if self in _activators:
                _activators.remove(self)
        os.unlink(self.logpath)


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def __repr__(self):
        return "<%d %r>" % (self.status, self.body[:80])


def spec_text(name, scale=None, queue=None, extra="", env=None, image=IMAGE):
    """A stoke/v1 Function as YAML text (no env: section when env is empty)."""
    lines = ["apiVersion: stoke/v1", "kind: Function", "metadata:", "  name: " + name,
             "spec:", "  image: " + image, "  readiness: { path: / }"]
    if env:
        lines.append("  env:")
        for k, v in env.items():
            lines.append("    %s: %s" % (k, json.dumps(v)))
    if scale:
        lines.append("  scale:")
        for k, v in scale.items():
            lines.append("    %s: %s" % (k, v))
    if queue:
        lines.append("  queue: { %s }" % ", ".join("%s: %s" % kv for kv in queue.items()))
    return "\n".join(lines) + "\n" + extra


class Stoke:
    """A controller and an activator with their own functions directory,
    channel socket, data port and container label."""

    def __init__(self, name, grace="30s", extra_controller_args=(), activator_args=(),
                 channel_tcp=False):
        # tests/run.sh sets STOKE_E2E_RUN so that its cleanup removes the
        # containers of its own run only, not those of a run beside it.
        run = os.environ.get("STOKE_E2E_RUN", "")
        self.instance = "e2e-%s%s-%d" % (run + "-" if run else "", name, os.getpid())
        self.tmp = tempfile.mkdtemp(prefix="stoke-e2e-")
        self.fndir = os.path.join(self.tmp, "functions")
        os.mkdir(self.fndir)
        self.ctl = "unix:" + os.path.join(self.tmp, "ctl.sock")
        self.channel_args = []  # both daemons'
        self.ctl_port = None
        if channel_tcp:
            # The channel on loopback TCP, with a token file for both daemons.
            self.ctl_port = free_port()
            self.ctl = "127.0.0.1:%d" % self.ctl_port
            self.token_file = os.path.join(self.tmp, "channel.token")
            with open(self.token_file, "w") as f:
                f.write("%032x\n" % random.getrandbits(128))
            self.channel_args = ["--channel-token-file", self.token_file]
        self.admin_sock = os.path.join(self.tmp, "admin.sock")
        self.port = free_port()
        self.ops_port = free_port()  # the activator's ops port (/metrics, /healthz)
        self.ctl_ops_port = free_port()  # the controller's ops port
        # Replica ports: a block of 128 of the controller's default range,
        # picked at random, so that tests running beside each other (two
        # runs on one machine) rarely hand out the same port.
        lo = 30000 + 128 * random.randrange(20)
        self.port_range = "%d-%d" % (lo, lo + 127)
        self.procs = {}
        self.logs = {}
        self.killed = []  # logs of daemons killed by kill9(), checked again at stop()
        self.extra = list(extra_controller_args)
        self.activator_args = list(activator_args)
        _live.append(self)

    # -- processes --------------------------------------------------------
    def _spawn(self, name, argv, logname=None, env=None):
        log = open(os.path.join(self.tmp, (logname or name) + ".log"), "wb")
        self.logs[name] = log.name
        p = popen_daemon(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                         env=dict(os.environ, **env) if env else None)
        self.procs[name] = p
        return p

    def kill9(self, name):
        """SIGKILL to daemon `name`, which must still be running (had it died
        on its own, say of a sanitizer finding, that is the failure); its
        exit status must then be that of the SIGKILL, and its log is checked
        for sanitizer findings now and again at stop()."""
        p = self.procs[name]
        assert p.poll() is None, "%s died before it was killed (%s):\n%s" % (
            name, p.returncode, self.log(name)[-6000:])
        p.kill()
        p.wait()
        assert p.returncode == -signal.SIGKILL, (name, p.returncode)
        self.killed.append(self.logs[name])
        text = self.log(name)
        found = [m for m in SANITIZER_MARKERS if m in text]
        assert not found, "%s log has %s:\n%s" % (name, found, text[-6000:])

    def _controller_argv(self):
        return [os.path.join(BUILD, "stoke-controller"), "--functions-dir", self.fndir,
                "--listen", self.ctl, "--instance", self.instance,
                "--admin-socket", self.admin_sock,
                "--port-range", self.port_range, "--log-level", "debug",
                "--ops-listen", "127.0.0.1:%d" % self.ctl_ops_port] + self.channel_args + self.extra

    def restart_controller(self, logname):
        """kill -9 of the controller, then a new one (logging to
        `logname`.log, which becomes the "controller" log)."""
        self.kill9("controller")
        self._spawn("controller", self._controller_argv(), logname=logname)
        self.wait_log("controller", '"ready: functions from', 30)

    def start(self):
        self._spawn("controller", self._controller_argv())
        self._spawn("activator", [
            os.path.join(BUILD, "stoke-activator"), "--listen", "127.0.0.1:%d" % self.port,
            "--ops-listen", "127.0.0.1:%d" % self.ops_port,
            "--controller", self.ctl, "--log-level", "debug"] + self.channel_args +
            self.activator_args)
        self.wait_log("controller", '"ready: functions from', 30)
        self.wait_routed("activator")
        return self

    def workers(self, name):
        """How many workers activator `name` runs (it says so once listening)."""
        m = re.search(r'"listening on \S+ with (\d+) worker', self.log(name))
        assert m, self.log(name)
        return int(m.group(1))

    def wait_functions(self, name, n, timeout, times=1):
        """Waits until every worker of activator `name` has applied a route
        table or update leaving it `n` functions, for the `times`-th time
        (each worker applies and logs it on its own)."""
        workers = self.workers(name)
        pattern = re.compile(r'"msg":"route (?:table|update) [^"]* for (\S+): %d functions"' % n)

        def done():
            seen = {}
            for w in pattern.findall(self.log(name)):
                seen[w] = seen.get(w, 0) + 1
            return len(seen) >= workers and all(c >= times for c in seen.values())
        self.wait_until(name, done, timeout, "every worker at %d functions (%d times)" % (n, times))

    def wait_routed(self, name, timeout=30):
        """Waits until every worker of activator `name` has its first route
        table (until then a worker answers 503), which each logs."""
        deadline = time.time() + timeout
        self.wait_log(name, '"listening on ', timeout)
        n = self.workers(name)
        # A worker may get two tables before another gets one: count workers,
        # not lines ("route table GEN for ID: N functions").
        self.wait_until(name, lambda: len(set(re.findall(
            r'"msg":"route table \d+ for (\S+):', self.log(name)))) >= n,
            max(1, deadline - time.time()), "a route table at each of %d workers" % n)

    def wait_until(self, name, cond, timeout, what):
        """Waits until cond() holds, failing at the deadline or as soon as
        process `name` exits."""
        deadline = time.time() + timeout
        while not cond():
            p = self.procs[name]
            if p.poll() is not None:
                raise AssertionError("%s exited (%s):\n%s" % (name, p.returncode, self.log(name)))
            if time.time() > deadline:
                raise AssertionError("no %s in the %s log after %ss:\n%s"
                                     % (what, name, timeout, self.log(name)))
            time.sleep(0.02)

    def add_activator(self, name, controller=None):
        """Starts another activator on its own port (and ops port), given
        `controller` as its --controller (default: the controller's channel);
        returns the port."""
        port = free_port()
        self._spawn(name, [
            os.path.join(BUILD, "stoke-activator"), "--listen", "127.0.0.1:%d" % port,
            "--ops-listen", "127.0.0.1:%d" % free_port(),
            "--controller", controller or self.ctl, "--id", name, "--log-level", "debug"] +
            self.channel_args)
        self.wait_routed(name)
        return port

    def log(self, name):
        with open(self.logs[name], "rb") as f:
            return f.read().decode(errors="replace")

    def wait_log(self, name, needle, timeout, count=1):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.log(name).count(needle) >= count:
                return
            p = self.procs[name]
            if p.poll() is not None:
                raise AssertionError("%s exited (%s):\n%s" % (name, p.returncode, self.log(name)))
            time.sleep(0.02)
        raise AssertionError("no %r in the %s log after %ss:\n%s" % (needle, name, timeout, self.log(name)))

    def deploy_warm(self, name, n, **spec):
        """Writes the spec of `name` with scale.min n (other write_spec
        arguments as given), waits for its n replicas to be ready, and
        returns their container ids, sorted."""
        before = self.log("controller").count("ready on 127.0.0.1")
        self.write_spec(name, scale={"min": n}, **spec)
        self.wait_log("controller", "ready on 127.0.0.1", 30, count=before + n)
        ids = sorted(c["Id"] for c in self.running(name))
        assert len(ids) == n, ids
        return ids

    def stop(self):
        # Activators first, then the controller (which removes the replicas).
        names = [n for n in self.procs if n != "controller"] + ["controller"]
        for name in names:
            p = self.procs.get(name)
            if p:
                terminate(p)
        # The controller removes its replicas on SIGTERM; make sure anyway.
        remove_containers({"io.stoke.instance": self.instance})
        problems = []
        for path in self.killed:
            with open(path, "rb") as f:
                text = f.read().decode(errors="replace")
            problems += ["killed daemon's %s has %r" % (os.path.basename(path), m)
                         for m in SANITIZER_MARKERS if m in text]
        for name, p in self.procs.items():
            text = self.log(name)
            for marker in SANITIZER_MARKERS:
                if marker in text:
                    problems.append("%s log has %r" % (name, marker))
            if p.returncode not in (0, None):
                problems.append("%s exited with %s" % (name, p.returncode))
        if problems:
            # Keep the logs for the report; the directory goes at exit.
            self.procs = {}
            raise AssertionError("; ".join(problems) + "\n" + "\n".join(
                "---- %s ----\n%s" % (n, open(f).read()[-4000:]) for n, f in self.logs.items()))
        shutil.rmtree(self.tmp, ignore_errors=True)
        if self in _live:
            _live.remove(self)

    # -- specs ------------------------------------------------------------
    def write_spec(self, name, scale=None, queue=None, extra="", filename=None, env=None):
        env = env if env is not None else {"GREETING": "hi from " + name}
        self.write_file(filename or name + ".yaml", spec_text(name, scale, queue, extra, env))

    def write_file(self, filename, text):
        # Written beside and renamed, as a careful user (or stokectl) would.
        tmp = os.path.join(self.fndir, "." + filename + ".tmp")
        with open(tmp, "w") as f:
            f.write(text)
        os.rename(tmp, os.path.join(self.fndir, filename))

    def remove_spec(self, filename):
        os.unlink(os.path.join(self.fndir, filename))

    # -- traffic ----------------------------------------------------------
    def request(self, path="/", host=None, timeout=60, method="GET", body=None, headers=None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            h = dict(headers or {})
            if host:
                h["Host"] = host
            c.request(method, path, body=body, headers=h)
            r = c.getresponse()
            return Response(r.status, dict(r.getheaders()), r.read().decode(errors="replace"))
        finally:
            c.close()

    def api(self, method, path, body=None, headers=None, timeout=60):
        """One call to the controller's admin API over its unix socket;
        .json is the parsed body (None when it is not JSON)."""
        c = UnixHTTPConnection(self.admin_sock, timeout=timeout)
        try:
            c.request(method, path, body=body, headers=dict(headers or {}))
            r = c.getresponse()
            resp = Response(r.status, dict(r.getheaders()), r.read().decode(errors="replace"))
        finally:
            c.close()
        try:
            resp.json = json.loads(resp.body)
        except ValueError:
            resp.json = None
        return resp

    def fn_request(self, fn, path="/", **kw):
        return self.request("/fn/%s%s" % (fn, path), **kw)

    def wait_status(self, send, status, timeout):
        """Sends requests until one answers `status`; returns it."""
        deadline = time.time() + timeout
        r = None
        while time.time() < deadline:
            r = send()
            if r.status == status:
                return r
            time.sleep(0.1)
        raise AssertionError("wanted %d, last answer %r" % (status, r))

    def containers(self, fn=None):
        labels = {"io.stoke.instance": self.instance}
        if fn:
            labels["io.stoke.function"] = fn
        return containers(labels)

    def running(self, fn=None):
        return [c for c in self.containers(fn) if c["State"] == "running"]

    def wait_containers(self, fn, n, timeout):
        """Waits until `fn` has exactly n containers (any state)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            cs = self.containers(fn)
            if len(cs) == n:
                return cs
            time.sleep(0.1)
        raise AssertionError("%s: wanted %d containers, have %d" % (fn, n, len(self.containers(fn))))


class Load:
    """n clients, each sending requests to function `fn` at `path` one after
    another, until stop() (at most `max_s`). Answers other than 200 and
    errors go to .failed; 200s are counted in .counts by classify(resp)."""

    def __init__(self, stoke, fn, path, n, max_s=60, classify=lambda r: "ok"):
        self.counts = {}
        self.failed = []
        self._stop = threading.Event()
        self._lock = threading.Lock()

        def client():
            deadline = time.time() + max_s
            while not self._stop.is_set() and time.time() < deadline:
                try:
                    r = stoke.fn_request(fn, path, timeout=10)
                    ok = r.status == 200
                except Exception as e:  # noqa: BLE001 - counted as a failure
                    ok, r = False, e
                with self._lock:
                    if ok:
                        k = classify(r)
                        self.counts[k] = self.counts.get(k, 0) + 1
                    else:
                        self.failed.append(r)

        self._threads = [threading.Thread(target=client) for _ in range(n)]
        for t in self._threads:
            t.start()

    def ok(self):
        with self._lock:
            return sum(self.counts.values())

    def wait_ok(self, n, timeout=30):
        """Waits until n more 200s than now were counted (fails on a
        failed request meanwhile, or at the deadline)."""
        want = self.ok() + n
        deadline = time.time() + timeout
        while self.ok() < want:
            assert not self.failed, self.failed[:5]
            assert time.time() < deadline, "only %d of %d answers" % (self.ok(), want)
            time.sleep(0.02)

    def stop(self):
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def finish(self, may_fail=0, min_ok=100):
        """stop(), print the counts, and assert that at most `may_fail`
        requests failed and more than `min_ok` got their 200. Returns the
        number of 200s."""
        self.stop()
        ok = sum(self.counts.values())
        print("requests: %d ok %s, %d failed" % (ok, self.counts, len(self.failed)))
        assert len(self.failed) <= may_fail, self.failed[:5]
        assert ok > min_ok, ok
        return ok


def concurrent(n, fn):
    """Runs fn(i) in n threads at once; returns the results (or exceptions)."""
    results = [None] * n
    start = threading.Barrier(n)

    def run(i):
        try:
            start.wait(10)
            results[i] = fn(i)
        except Exception as e:  # noqa: BLE001 - reported by the caller
            results[i] = e

    ts = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    return results


def _kill_activators():
    """At exit: a standalone activator may live across tests (started in a
    module's setup), so it is not part of the per-test cleanup."""
    for a in list(_activators):
        if a.proc.poll() is None:
            a.proc.kill()
            a.proc.wait()


atexit.register(_kill_activators)


def _cleanup():
    for s in list(_live):
        try:
            s.stop()
        except Exception:  # noqa: BLE001 - best effort at exit
            traceback.print_exc()


atexit.register(_cleanup)
signal.signal(signal.SIGTERM, lambda *a: sys.exit(1))


class Skip(Exception):
    """Raised by a test whose check cannot run under a condition the README
    names (test_image on a sanitizer build): reported as SKIP with its
    reason, never counted as a pass. Any other condition is a failure."""


def run_tests(namespace, setup=None, teardown=None, after_each=None, need_image=True):
    """Runs every test_* function of the module, each with a fresh cleanup,
    and prints 'N passed, N failed'. Exit status 1 on any failure.
    `setup`/`teardown` run around all tests (a failure in either counts);
    `after_each` returning False stops the run."""
    if need_image:
        st, _ = engine("GET", "/images/%s/json" % urllib.parse.quote(IMAGE, safe=""))
        if st != 200:
            print("image %s is missing: run deploy/build-example.sh" % IMAGE)
            sys.exit(1)
    tests = [(k, v) for k, v in namespace.items() if k.startswith("test_") and callable(v)]
    only = sys.argv[1:]
    passed = failed = skipped = 0
    try:
        if setup:
            setup()
        for name, fn in tests:
            if only and name not in only:
                continue
            t0 = time.time()
            try:
                fn()
                passed += 1
                print("PASS %s (%.1fs)" % (name, time.time() - t0), flush=True)
            except Skip as e:
                skipped += 1
                print("SKIP %s: %s" % (name, e), flush=True)
            except Exception:  # noqa: BLE001 - any failure fails the test
                failed += 1
                print("FAIL %s (%.1fs)" % (name, time.time() - t0), flush=True)
                traceback.print_exc()
                for s in list(_live):
                    for log in s.logs:
                        print("---- %s log ----\n%s" % (log, s.log(log)[-6000:]))
            finally:
                _cleanup()
            if after_each and not after_each():
                break
    except Exception:  # noqa: BLE001 - a setup failure fails the run
        failed += 1
        traceback.print_exc()
    finally:
        if teardown:
            try:
                teardown()
            except Exception:  # noqa: BLE001 - sanitizer findings, bad exit
                failed += 1
                print("FAIL teardown")
                traceback.print_exc()
    print("%d passed, %d failed%s" % (passed, failed,
                                      ", %d skipped" % skipped if skipped else ""))
    sys.exit(1 if failed or passed == 0 else 0)


def wait_for(cond, timeout, what, period=0.25):
    """Polls cond() until it returns something true, and returns that;
    fails after `timeout` seconds naming `what`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(period)
    raise AssertionError("not within %ss: %s" % (timeout, what))
