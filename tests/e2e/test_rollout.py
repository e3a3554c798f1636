"""A new revision rolls out under load: the old replicas serve until the
new ones are ready, then drain and go; no request fails."""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from harness import Load, Stoke, run_tests  # noqa: E402


def test_rollout_under_load_fails_no_request():
    s = Stoke("rollout").start()
    old = s.deploy_warm("web", 2, env={"GREETING": "v1"})

    load = Load(s, "web", "/delay/50", 6, classify=lambda r: "v2" if "v2" in r.body else "v1")
    try:
        load.wait_ok(30)  # v1 serves
        s.write_spec("web", scale={"min": 2}, env={"GREETING": "v2"})
        s.wait_log("controller", "rolling out", 10)
        # The old containers go once the new ones serve.
        deadline = time.time() + 30
        while any(c["Id"] in old for c in s.containers("web")):
            assert time.time() < deadline, "the old replicas are still there"
            time.sleep(0.1)
        load.wait_ok(30)  # and the new ones serve alone
    finally:
        load.stop()
    load.finish(min_ok=0)
    assert load.counts.get("v1", 0) > 0 and load.counts.get("v2", 0) > 0, load.counts
    now = s.containers("web")
    assert len(now) == 2 and not any(c["Id"] in old for c in now), now
    assert "rollout:" in s.log("controller")
    s.stop()


if __name__ == "__main__":
    run_tests(globals())
