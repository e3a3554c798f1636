"""stoke's own image (deploy/k8s/build-image.sh), as the Helm chart runs it:
built from the CMake build under a name of this run, then run by the real
engine the way the chart's security context does (user 65532, read-only root,
every capability dropped, no new privileges, no network): each program starts
(so every library it loads is in the image), the activator serves its ops
port and routes, curl (helm test's client) works, there is no shell, and a
second build with nothing changed rebuilds nothing.

A sanitizer build (the ASan run of tests/run.sh) cannot make a shippable
image: there the test checks the script refuses it, with the reason.
"""

import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import BUILD, Skip, run_tests  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "deploy", "k8s", "build-image.sh")
RUN = "image-%d" % os.getpid()
IMAGE = "stoke-e2e-%s:1" % RUN
LABEL = "io.stoke.test=" + RUN
# What the chart's securityContext and podSecurityContext amount to on the engine.
RESTRICTED = ["--user", "65532:65532", "--read-only", "--cap-drop", "ALL",
              "--security-opt", "no-new-privileges", "--network", "none", "--label", LABEL]


def sanitized():
    with open(os.path.join(BUILD, "CMakeCache.txt")) as f:
        return "STOKE_SANITIZE:BOOL=ON" in f.read()


def docker(*args, check=True, timeout=120):
    r = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError("docker %s: exit %d\n%s%s" % (" ".join(args), r.returncode,
                                                           r.stdout, r.stderr))
    return r


SANITIZED = "a sanitizer build makes no image (README: e2e.test_image)"


def build():
    return subprocess.run([SCRIPT, IMAGE], env=dict(os.environ, STOKE_BUILD_DIR=BUILD),
                          capture_output=True, text=True, timeout=600)


def setup():
    if sanitized():
        return  # nothing to build: the image tests are skipped
    r = build()
    assert r.returncode == 0, r.stdout + r.stderr
    assert "built " + IMAGE in r.stdout, r.stdout


def teardown():
    ids = docker("ps", "-aq", "--filter", "label=" + LABEL).stdout.split()
    if ids:
        docker("rm", "-f", *ids)
    docker("image", "rm", "-f", IMAGE, check=False)


def test_sanitizer_build_refused():
    if not sanitized():
        raise Skip("a plain build: the image tests run instead")
    r = build()
    assert r.returncode != 0, r.stdout
    assert "is a sanitizer build; use a plain one" in r.stderr, r.stderr
    assert docker("image", "inspect", IMAGE, check=False).returncode != 0


def test_config():
    if sanitized():
        raise Skip(SANITIZED)
    out = docker("image", "inspect", "-f", "{{.Config.User}} {{.Os}}", IMAGE).stdout.split()
    assert out == ["65532:65532", "linux"], out


def test_programs_start():
    if sanitized():
        raise Skip(SANITIZED)
    for prog in ("stoke-controller", "stoke-activator", "stoke-events", "stokectl"):
        r = docker("run", "--rm", *RESTRICTED, IMAGE, "/usr/bin/" + prog, "--help",
                   check=False)
        assert r.returncode == 0, (prog, r.returncode, r.stderr)
        assert "usage: " + prog in r.stdout + r.stderr, (prog, r.stdout, r.stderr)
    r = docker("run", "--rm", *RESTRICTED, IMAGE, "/usr/bin/curl", "--version")
    assert r.stdout.startswith("curl "), r.stdout
    # No shell to exec into.
    r = docker("run", "--rm", *RESTRICTED, IMAGE, "/bin/sh", "-c", "true", check=False)
    assert r.returncode != 0


def test_activator_serves():
    if sanitized():
        raise Skip(SANITIZED)
    cid = docker("run", "-d", *RESTRICTED, IMAGE, "/usr/bin/stoke-activator",
                 "--listen", "127.0.0.1:8080", "--ops-listen", "127.0.0.1:9091",
                 "--controller", "none", "--route", "gone=127.0.0.1:1").stdout.strip()

    def get(url):
        return docker("exec", cid, "/usr/bin/curl", "-s", "-o", "/dev/null", "-w",
                      "%{http_code}", "--max-time", "10", url, check=False).stdout

    deadline = time.monotonic() + 30
    while get("http://127.0.0.1:9091/healthz") != "200":
        running = docker("inspect", "-f", "{{.State.Running}}", cid).stdout.strip()
        assert running == "true", docker("logs", cid).stderr
        assert time.monotonic() < deadline, docker("logs", cid).stderr
        time.sleep(0.1)
    assert get("http://127.0.0.1:8080/fn/gone/") == "502"
    assert get("http://127.0.0.1:8080/fn/unknown/") == "404"
    docker("stop", "-t", "10", cid)
    code = docker("inspect", "-f", "{{.State.ExitCode}}", cid).stdout.strip()
    assert code == "0", (code, docker("logs", cid).stderr)


def test_rebuild_is_a_no_op():
    if sanitized():
        raise Skip(SANITIZED)
    before = docker("image", "inspect", "-f", "{{.Id}}", IMAGE).stdout
    r = build()
    assert r.returncode == 0, r.stderr
    assert IMAGE + " is up to date" in r.stdout, r.stdout
    assert docker("image", "inspect", "-f", "{{.Id}}", IMAGE).stdout == before


if __name__ == "__main__":
    run_tests(globals(), setup=setup, teardown=teardown, need_image=False)
