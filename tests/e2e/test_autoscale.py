"""The autoscaler (Knative's KPA) under real load through the activator:
45 concurrent clients for 60 s against a function with target 10 reach the
replica count the algorithm predicts (45 / 7 per replica: 7, with room on
both sides, so observed concurrency wandering by a request or two around 45
never crosses to 6 or 8), without a single failed request, and
the function returns to min once the load stops and the grace passes."""

import datetime
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import Stoke, run_tests  # noqa: E402

CLIENTS = 45
SECONDS = int(os.environ.get("STOKE_LOAD_SECONDS", "60"))
TARGET, UTILIZATION = 10, 70
DECISION = re.compile(r'"ts":"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)Z".*'
                      r'"msg":"autoscale: desired (\d+) '
                      r'\(was (\d+)\), ready (\d+), stable ([\d.]+), panic ([\d.]+), (\w+)'
                      r'(, no data)?')


def decisions(log):
    """The controller's decisions for "load", each with "t" in seconds since
    the epoch: the whole timestamp, date included, so that a run across
    midnight keeps its order."""
    out = []
    for line in log.splitlines():
        m = DECISION.search(line)
        if m and '"fn":"load"' in line:
            t = datetime.datetime.fromisoformat(m.group(1)).replace(
                tzinfo=datetime.timezone.utc).timestamp()
            out.append({"t": t, "desired": int(m.group(2)),
                        "ready": int(m.group(4)), "stable": float(m.group(5)),
                        "panic": float(m.group(6)), "mode": m.group(7),
                        "data": m.group(8) is None})
    assert all(a["t"] <= b["t"] for a, b in zip(out, out[1:])), "decisions out of order"
    return out


def test_load_reaches_predicted_replicas_and_returns_to_min():
    assert shutil.which("wrk"), "wrk is missing: deploy/install-deps.sh installs it"
    s = Stoke("kpa").start()
    s.write_spec("load", scale={"min": 0, "initial": 0, "target": TARGET, "window": "6s",
                                "scaleToZeroGrace": "6s", "max": 20,
                                "idle": "remove"})
    s.wait_functions("activator", 1, 20)

    # Every request is held 100 ms by the function, so each client keeps one
    # request in flight nearly all the time: observed concurrency ~45.
    url = "http://127.0.0.1:%d/fn/load/delay/100" % s.port
    running = []
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            running.append((time.time(), len(s.running("load"))))
            time.sleep(0.5)

    # A daemon: a failed assert below must not leave it keeping the test alive.
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.time()
    try:
        out = subprocess.run(["wrk", "-t2", "-c%d" % CLIENTS, "-d%ds" % SECONDS, "--timeout", "30s",
                              url], capture_output=True, text=True, timeout=SECONDS + 60).stdout
    finally:
        load_end = time.time()
    print(out)
    m = re.search(r"(\d+) requests in", out)
    assert m and int(m.group(1)) > CLIENTS * SECONDS, out
    assert "Non-2xx" not in out, out
    assert "Socket errors" not in out, out

    # Back to min (0) once the stable window is empty and the grace passed.
    s.wait_containers("load", 0, 60)
    stop.set()
    sampler.join()

    ds = decisions(s.log("controller"))
    assert ds, s.log("controller")
    base = ds[0]["t"]
    print("tick  second  desired  ready  stable   panic  mode")
    for i, d in enumerate(ds):
        print("%4d  %6.1f  %7d  %5d  %6.2f  %6.2f  %s" % (
            i, d["t"] - base, d["desired"], d["ready"], d["stable"], d["panic"], d["mode"]))

    # The algorithm's prediction for this load: ceil(observed / goal) with
    # goal = target * utilization / 100, at the peak of the panic window.
    goal = TARGET * UTILIZATION / 100.0
    peak_observed = max(d["panic"] for d in ds)
    predicted = math.ceil(peak_observed / goal - 1e-9)
    assert CLIENTS - 2 <= peak_observed <= CLIENTS + 1, peak_observed
    peak = max(d["desired"] for d in ds)
    assert peak == predicted, (peak, predicted)
    # Reached at once: the burst after zero is seen at its full size (the
    # zeros of the silence are not data), so the peak comes within the
    # first decisions with data (the first second reported may hold only
    # part of the burst: wrk's clients arrive over it). Counted in
    # decisions, not in time: how fast is bench/'s business.
    with_data = [i for i, d in enumerate(ds) if d["data"]]
    reached = next(i for i, d in enumerate(ds) if d["desired"] == peak)
    assert reached in with_data[:3], (reached, with_data[:3])
    # No scale-down while the load lasted.
    during = [d for d in ds[reached:] if d["t"] < ds[reached]["t"] + SECONDS - 10]
    assert all(d["desired"] == peak for d in during), during
    assert max(n for _, n in running) == peak
    # The last decision is 0: min.
    assert ds[-1]["desired"] == 0
    print("load %.0fs, peak %d replicas (predicted %d for %.2f observed), back to 0 %.0fs after"
          % (load_end - t0, peak, predicted, peak_observed, time.time() - load_end))
    s.stop()


def test_two_activators_reports_add_up():
    s = Stoke("kpa2").start()
    second = s.add_activator("activator2")
    s.write_spec("load", scale={"min": 0, "initial": 0, "target": TARGET, "window": "6s",
                                "scaleToZeroGrace": "6s", "idle": "remove"})
    s.wait_functions("activator", 1, 20)
    s.wait_functions("activator2", 1, 20)

    # 20 clients on each activator: neither alone sees more than 20, the
    # controller must see their sum, 40: ceil(40 / 7) = 6 replicas.
    procs = [subprocess.Popen(["wrk", "-t1", "-c20", "-d20s", "--timeout", "30s",
                               "http://127.0.0.1:%d/fn/load/delay/100" % port],
                              stdout=subprocess.PIPE, text=True)
             for port in (s.port, second)]
    outs = [p.communicate(timeout=90)[0] for p in procs]
    for out in outs:
        print(out)
        assert "Non-2xx" not in out and "Socket errors" not in out, out
    s.wait_containers("load", 0, 60)
    ds = decisions(s.log("controller"))
    peak_observed = max(d["panic"] for d in ds)
    assert 38 <= peak_observed <= 41, peak_observed
    peak = max(d["desired"] for d in ds)
    assert peak == math.ceil(peak_observed / (TARGET * UTILIZATION / 100.0) - 1e-9) == 6, (
        peak, peak_observed)
    s.stop()


if __name__ == "__main__":
    run_tests(globals())
