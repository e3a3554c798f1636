"""A new revision rolls out under load: the old replicas serve until the
new ones are ready, then drain and go; no request fails."""

import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import Stoke, run_tests  # noqa: E402


def test_rollout_under_load_fails_no_request():
    s = Stoke("rollout").start()
    s.write_spec("web", scale={"min": 2}, env={"GREETING": "v1"})
    s.wait_log("controller", "ready on 127.0.0.1", 30, count=2)
    old = sorted(c["Id"] for c in s.containers("web"))

    stop = threading.Event()
    lock = threading.Lock()
    seen = {"v1": 0, "v2": 0, "failed": []}

    def client():
        deadline = time.time() + 60
        while not stop.is_set() and time.time() < deadline:
            try:
                r = s.fn_request("web", "/delay/50", timeout=10)
                ok = r.status == 200
            except Exception as e:  # noqa: BLE001 - counted as a failure
                ok, r = False, e
            with lock:
                if not ok:
                    seen["failed"].append(r)
                elif "v2" in r.body:
                    seen["v2"] += 1
                else:
                    seen["v1"] += 1

    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    try:
        time.sleep(1)
        s.write_spec("web", scale={"min": 2}, env={"GREETING": "v2"})
        s.wait_log("controller", "rolling out", 10)
        # The old containers go once the new ones serve.
        deadline = time.time() + 30
        while time.time() < deadline and any(c["Id"] in old for c in s.containers("web")):
            time.sleep(0.1)
        time.sleep(1)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    print("v1 %d, v2 %d, failed %d" % (seen["v1"], seen["v2"], len(seen["failed"])))
    assert not seen["failed"], seen["failed"][:5]
    assert seen["v1"] > 0 and seen["v2"] > 0, seen
    now = s.containers("web")
    assert len(now) == 2 and not any(c["Id"] in old for c in now), now
    assert "rollout:" in s.log("controller")
    s.stop()


if __name__ == "__main__":
    run_tests(globals())
