#!/usr/bin/env python3
"""Async invocations against the synchronous path, in one run on one
function (the example image, one warm replica, async.maxInFlight 50):

  accept        N async calls (Prefer: respond-async) from C clients with
                keep-alive: 202s per second, and each 202's latency (p50,
                p99): each waits for the store's synced commit (group
                commit: calls that arrive together share one sync);
  async e2e     from the first call sent to the last one succeeded
                (stoke-events' counter): calls per second, delivery
                included;
  sync          the same N requests, synchronous, from C clients.

Python clients on the same machine: the numbers bound stoke from below,
and the store's fsyncs depend on the disk. Needs the build
(STOKE_BUILD_DIR, default build/) and the example image. Traffic stays on
127.0.0.1; everything it starts is stopped.

Usage: bench/async.py [N [C]]   (default 2000 calls, 16 clients)
"""

import http.client
import os
import statistics
import sys
import threading
import time

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "tests", "e2e"))
from harness import _cleanup  # noqa: E402
from test_async import Async  # noqa: E402


def run_clients(port, path, n, c, headers, want):
    lat, bad = [], []
    lock = threading.Lock()

    def client(k):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine = []
        for _ in range(k):
            t0 = time.perf_counter()
            conn.request("POST", path, body=b"x", headers=headers)
            r = conn.getresponse()
            r.read()
            mine.append(time.perf_counter() - t0)
            if r.status != want:
                with lock:
                    bad.append(r.status)
        conn.close()
        with lock:
            lat.extend(mine)

    ts = [threading.Thread(target=client, args=(n // c + (1 if i < n % c else 0),))
          for i in range(c)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return time.perf_counter() - t0, lat, bad


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p / 100))] * 1000


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    c = int(sys.argv[2]) if len(sys.argv) > 2 else 16
    a = Async("bench-async").start()
    try:
        a.deploy("b", scale={"min": 1, "initial": 1}, asyncs={"maxInFlight": 50})
        port = a.s.port
        # Warm up both paths.
        run_clients(port, "/fn/b/async/0", 50, 5, {}, 200)
        commits0 = a.metric_total("stoke_events_store_commits_total")
        t_first = time.perf_counter()
        el, lat, bad = run_clients(port, "/fn/b/async/0", n, c, {"Prefer": "respond-async"}, 202)
        assert not bad, bad[:5]
        commits = a.metric_total("stoke_events_store_commits_total") - commits0
        deadline = time.time() + 600
        while a.metric("stoke_async_succeeded_total", "b") < n and time.time() < deadline:
            time.sleep(0.05)
        e2e = time.perf_counter()
        done = a.metric("stoke_async_succeeded_total", "b")
        sel, slat, sbad = run_clients(port, "/fn/b/async/0", n, c, {}, 200)
        assert not sbad, sbad[:5]
        print("%d calls, %d clients, one warm replica, maxInFlight 50" % (n, c))
        print("%-10s %10s %10s %10s" % ("path", "per s", "p50 ms", "p99 ms"))
        print("%-10s %10.0f %10.2f %10.2f" % ("accept", n / el, pct(lat, 50), pct(lat, 99)))
        print("%-10s %10.0f %10s %10s" % ("async e2e", done / (e2e - t_first), "-", "-"))
        print("%-10s %10.0f %10.2f %10.2f" % ("sync", n / sel, pct(slat, 50), pct(slat, 99)))
        print("store: %d commits (synced transactions) for %d accepted calls: %.1f calls a sync"
              % (commits, n, n / max(1, commits)))
        print("(accept mean %.2f ms)" % (statistics.mean(lat) * 1000))
    finally:
        a.s.stop()
        _cleanup()


if __name__ == "__main__":
    main()
