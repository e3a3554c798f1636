"""The activator's ops port (issue 4): /healthz, and /metrics in the
Prometheus text format 0.0.4, checked by a strict parser written here; the
counters after a known mix of requests, with one worker and with two
(summed); gauges back to 0 afterwards; bad input on the ops port; and
`--ops-listen none`.

Needs no Docker and no controller: the activator runs with
`--controller none` and static routes to a recording upstream
(tests/e2e/upstream.py). Run it against the ASan+UBSan build
(STOKE_BUILD_DIR) to catch memory errors: sanitizer findings in the
activator's log, or a non-zero exit after SIGTERM, fail the test.
"""

import math
import os
import re
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import SANITIZER_MARKERS, Activator, free_port, run_tests  # noqa: E402
from upstream import Upstream  # noqa: E402

MAX_BODY = 65536
# Sanitized builds are slower; every wait below is a bound, not a timing assert.
WAIT = 10.0

# ---- raw HTTP/1.1 ------------------------------------------------------------

def exchange(port, data, n=1, head=False, check_close=True):
    """Sends `data` on a new connection and reads `n` answers: a list of
    (status, {lower name: value}, body); then whether the server closed the
    connection (within 1 s; None without check_close)."""
    s = socket.create_connection(("127.0.0.1", port), WAIT)
    s.settimeout(WAIT)
    buf = b""
    out = []
    try:
        if data:
            s.sendall(data)

        def more():
            d = s.recv(65536)
            if not d:
                raise EOFError(buf)
            return d

        for _ in range(n):
            while b"\r\n\r\n" not in buf:
                buf += more()
            hd, _, buf = buf.partition(b"\r\n\r\n")
            lines = hd.split(b"\r\n")
            status = int(lines[0].split(b" ")[1])
            headers = {}
            for line in lines[1:]:
                k, _, v = line.partition(b":")
                headers[k.strip().lower().decode()] = v.strip().decode()
            length = 0 if head else int(headers.get("content-length", "0"))
            while len(buf) < length:
                buf += more()
            out.append((status, headers, buf[:length]))
            buf = buf[length:]
        if not check_close:
            return out, None
        s.settimeout(1.0)
        try:
            closed = s.recv(1) == b""
        except socket.timeout:
            closed = False
        return out, closed
    finally:
        s.close()


def get(port, path, host="x", extra=b""):
    ((st, h, body),), _ = exchange(port, b"GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (
        path.encode(), host.encode(), extra), check_close=False)
    return st, h, body


# ---- a strict parser of the Prometheus text format 0.0.4 ---------------------

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r"[a-zA-Z_][a-zA-Z0-9_]*"
TYPES = ("counter", "gauge", "histogram", "summary", "untyped")


def _labels(text, pos, line):
    """Parses `{a="x",b="y"}` from text[pos] == '{'; returns (dict, end)."""
    assert text[pos] == "{"
    pos += 1
    labels = {}
    while text[pos] != "}":
        m = re.compile(LABEL).match(text, pos)
        assert m, "bad label name in %r" % line
        name = m.group(0)
        pos = m.end()
        assert text[pos:pos + 2] == '="', "bad label in %r" % line
        pos += 2
        value = []
        while text[pos] != '"':
            if text[pos] == "\\":
                esc = text[pos + 1]
                assert esc in '\\"n', "bad escape in %r" % line
                value.append({"\\": "\\", '"': '"', "n": "\n"}[esc])
                pos += 2
            else:
                assert text[pos] != "\n"
                value.append(text[pos])
                pos += 1
        pos += 1
        assert name not in labels, "label %s twice in %r" % (name, line)
        labels[name] = "".join(value)
        if text[pos] == ",":
            pos += 1
        else:
            assert text[pos] == "}", "bad label list in %r" % line
    return labels, pos + 1


def _value(s, line):
    if s in ("+Inf", "-Inf", "NaN"):
        return float(s.replace("Inf", "inf").replace("NaN", "nan"))
    assert re.fullmatch(r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?", s), "bad value in %r" % line
    return float(s)


def parse_exposition(text):
    try:
        return _parse_exposition(text)
    except (IndexError, ValueError, KeyError) as e:
        raise AssertionError("bad exposition text: %r" % e) from e


def _parse_exposition(text):
    """Returns {family: {"type", "help", "samples": [(name, labels, value)]}},
    failing on anything format 0.0.4 does not allow: a sample before its
    TYPE, a family split in two, a repeated series, a histogram without
    _sum/_count/+Inf or with decreasing buckets, a bad escape."""
    assert text.endswith("\n"), "the text must end with a line feed"
    families = {}
    order = []
    seen = set()
    current = None
    for line in text[:-1].split("\n"):
        assert line, "empty line"
        if line.startswith("#"):
            m = re.fullmatch(r"# (HELP|TYPE) (%s) (.*)" % NAME, line)
            assert m, "bad comment %r" % line
            kind, name, rest = m.groups()
            fam = families.setdefault(name, {"type": None, "help": None, "samples": []})
            if name not in order:
                order.append(name)
            else:
                assert current == name, "family %s split" % name
            current = name
            if kind == "TYPE":
                assert fam["type"] is None and not fam["samples"], "late or second TYPE %s" % name
                assert rest in TYPES, line
                fam["type"] = rest
            else:
                assert fam["help"] is None, "second HELP %s" % name
                fam["help"] = rest
            continue
        m = re.compile(NAME).match(line)
        assert m, "bad sample %r" % line
        name, pos = m.group(0), m.end()
        labels = {}
        if pos < len(line) and line[pos] == "{":
            labels, pos = _labels(line, pos, line)
        assert line[pos] == " ", "bad sample %r" % line
        parts = line[pos + 1:].split(" ")
        assert len(parts) in (1, 2), "bad sample %r" % line
        value = _value(parts[0], line)
        base = name
        if current and families[current]["type"] == "histogram":
            for suffix in ("_bucket", "_sum", "_count"):
                if name == current + suffix:
                    base = current
        assert base == current, "sample %s outside its family (%s)" % (name, current)
        assert families[base]["type"], "sample %s before its TYPE" % name
        key = (name, tuple(sorted(labels.items())))
        assert key not in seen, "series twice: %r" % line
        seen.add(key)
        families[base]["samples"].append((name, labels, value))
    for name, fam in families.items():
        if fam["type"] == "histogram":
            check_histogram(name, fam["samples"])
        if fam["type"] == "counter":
            assert name.endswith("_total"), name
    return families


def check_histogram(name, samples):
    series = {}
    for n, labels, v in samples:
        rest = tuple(sorted((k, x) for k, x in labels.items() if k != "le"))
        s = series.setdefault(rest, {"buckets": [], "sum": None, "count": None})
        if n == name + "_bucket":
            s["buckets"].append((_value(labels["le"], n), v))
        elif n == name + "_sum":
            s["sum"] = v
        elif n == name + "_count":
            s["count"] = v
    for rest, s in series.items():
        b = s["buckets"]
        assert b and b[-1][0] == math.inf, "%s%r: no +Inf bucket" % (name, rest)
        assert [le for le, _ in b] == sorted(le for le, _ in b), "%s: le out of order" % name
        assert all(b[i][1] <= b[i + 1][1] for i in range(len(b) - 1)), \
            "%s%r: buckets not cumulative: %r" % (name, rest, b)
        assert s["count"] == b[-1][1], "%s%r: _count %r != +Inf %r" % (name, rest, s["count"], b)
        assert s["sum"] is not None and s["sum"] >= 0, "%s%r: _sum" % (name, rest)


def scrape(act):
    st, h, body = get(act.ops, "/metrics")
    assert st == 200, (st, body)
    assert h["content-type"].startswith("text/plain; version=0.0.4"), h
    return parse_exposition(body.decode())


def value_or_none(fams, family, name=None, **labels):
    """The sample's value, None when the series (or its family) is absent:
    absent is not 0."""
    if family not in fams:
        return None
    for n, ls, v in fams[family]["samples"]:
        if n == (name or family) and ls == labels:
            return v
    return None


def value(fams, family, name=None, **labels):
    """The sample's value; fails when the series is absent, so that an
    assertion of 0 cannot pass on a series that went missing."""
    v = value_or_none(fams, family, name, **labels)
    if v is None:
        raise AssertionError("no series %s%r; the family has: %r" % (
            name or family, labels, fams.get(family, {}).get("samples")))
    return v


def wait_value(act, family, want, **labels):
    """Scrapes until the series exists and has the value `want`."""
    deadline = time.time() + WAIT
    while True:
        fams = scrape(act)
        v = value_or_none(fams, family, **labels)
        if v == want:
            return fams
        if time.time() > deadline:
            raise AssertionError("%s%r is %r, wanted %r" % (family, labels, v, want))
        time.sleep(0.05)


# ---- tests -------------------------------------------------------------------

_env = {}


def setup():
    _env["up"] = Upstream()
    # A port nothing listens on: every connect is refused, so 502.
    _env["dead"] = free_port()


def teardown():
    _env["up"].close()


def routes():
    return ["echo=127.0.0.1:%d" % _env["up"].port, "dead=127.0.0.1:%d" % _env["dead"],
            "cold="]


def test_parser_refuses_bad_text():
    """The parser below the other tests is strict (so they mean something)."""
    good = ("# HELP a_total x\n# TYPE a_total counter\na_total{f=\"a\\\"b\\\\c\\n\"} 1\n"
            "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\n"
            "h_sum 0.5\nh_count 2\n")
    fams = parse_exposition(good)
    assert fams["a_total"]["samples"][0][1] == {"f": 'a"b\\c\n'}
    bad = [
        "a_total 1\n",                                          # no TYPE
        "# TYPE a_total counter\na_total 1",                    # no final LF
        "# TYPE a_total counter\na_total{f=\"x} 1\n",           # unterminated
        "# TYPE a_total counter\na_total{f=\"\\x\"} 1\n",       # bad escape
        "# TYPE a_total counter\na_total 1\na_total 2\n",       # series twice
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n",   # no +Inf
        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 2\n",
        "# TYPE a_total counter\n# TYPE b gauge\nb 1\n# HELP a_total x\n",   # split family
    ]
    for text in bad:
        try:
            parse_exposition(text)
        except AssertionError:
            continue
        raise AssertionError("parser accepted %r" % text)


def test_healthz():
    act = Activator(routes(), ["--workers", "2"]).wait_ready()
    try:
        st, h, body = get(act.ops, "/healthz")
        assert (st, body) == (200, b"ok\n"), (st, body)
        (resp,), _ = exchange(act.ops, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n", head=True,
                              check_close=False)
        assert resp[0] == 200 and resp[2] == b"", resp
        assert value(scrape(act), "stoke_activator_workers") == 2
    finally:
        act.stop()


def _request_mix(act, n_ok):
    """n_ok GETs, 3 unknown functions, 2 malformed, a body too large, a 502,
    a POST with a body; each on its own connection, so that SO_REUSEPORT
    spreads them over the workers."""
    for i in range(n_ok):
        st, _, body = get(act.port, "/fn/echo/x%d" % i)
        assert st == 200, (st, body)
    for _ in range(3):
        assert get(act.port, "/fn/nope/")[0] == 404
    (r,), closed = exchange(act.port, b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
    assert r[0] == 400 and closed, r
    (r,), closed = exchange(act.port, b"GET /fn/echo/ HTTP/9.9\r\nHost: x\r\n\r\n")
    assert r[0] == 400 and closed, r
    (r,), closed = exchange(act.port, b"POST /fn/echo/ HTTP/1.1\r\nHost: x\r\n"
                            b"Content-Length: %d\r\n\r\n" % (MAX_BODY + 1))
    assert r[0] == 413 and closed, r
    assert get(act.port, "/fn/dead/")[0] == 502
    (r,), _ = exchange(act.port, b"POST /fn/echo/p HTTP/1.1\r\nHost: x\r\n"
                       b"Content-Length: 5\r\n\r\nhello", check_close=False)
    assert r[0] == 200, r


def _check_mix(act, n_ok, workers):
    fams = wait_value(act, "stoke_activator_connections", 0)
    assert value(fams, "stoke_activator_workers") == workers
    total = "stoke_activator_requests_total"
    assert value(fams, total, function="echo", code="200") == n_ok + 1
    assert value(fams, total, function="dead", code="502") == 1
    assert [s for s in fams[total]["samples"] if s[1]["function"] not in ("echo", "dead")] == []
    rejected = {s[1]["reason"]: s[2] for s in fams["stoke_activator_rejected_total"]["samples"]}
    want = {"no_function": 3, "bad_request": 2, "body_too_large": 1, "upstream_error": 1}
    assert {k: v for k, v in rejected.items() if v} == want, rejected
    hist = "stoke_activator_request_duration_seconds"
    assert value(fams, hist, name=hist + "_count", function="echo") == n_ok + 1
    assert value(fams, hist, name=hist + "_bucket", function="echo", le="+Inf") == n_ok + 1
    assert value(fams, hist, name=hist + "_count", function="dead") == 1
    assert value(fams, hist, name=hist + "_sum", function="echo") > 0
    for g in ("stoke_activator_requests_in_flight", "stoke_activator_queue_depth"):
        for fn in ("echo", "dead", "cold"):
            assert value(fams, g, function=fn) == 0, (g, fn)
    # Each worker keeps its own pool: at least one open connection to echo
    # per worker that served it, none to the dead replica.
    ups = "stoke_activator_upstream_connections"
    assert 1 <= value(fams, ups, function="echo") <= workers * 2, fams[ups]
    assert value(fams, ups, function="dead") == 0
    return fams


def test_counts_one_worker():
    act = Activator(routes(), ["--workers", "1"]).wait_ready()
    try:
        _request_mix(act, 7)
        _check_mix(act, 7, 1)
    finally:
        act.stop()


def test_grafana_dashboard_uses_exported_metrics():
    """Every activator metric deploy/grafana/stoke.json queries is one the
    activator exports (a renamed metric would leave a panel empty); the
    controller's are checked by test_metrics.py."""
    import json
    import re
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../deploy/grafana/stoke.json")
    with open(path) as f:
        dash = json.load(f)
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = set(re.findall(r"\b(stoke_activator_[a-z_]+)", " ".join(exprs)))
    assert len(exprs) >= 6 and used, exprs
    act = Activator(routes(), ["--workers", "1"]).wait_ready()
    try:
        _request_mix(act, 3)
        fams = scrape(act)
    finally:
        act.stop()
    exported = set()
    for fam, f in fams.items():
        exported.add(fam)
        exported.update(n for n, _, _ in f["samples"])
    missing = sorted(used - exported)
    assert not missing, "the dashboard queries metrics nobody exports: %s" % missing


def test_counts_summed_over_two_workers():
    up = _env["up"]
    act = Activator(routes(), ["--workers", "2"]).wait_ready()
    conns = up.conns
    try:
        # 20 fresh connections: all on one worker by chance is 2^-19.
        _request_mix(act, 20)
        # Two pools means both workers served (and were summed above).
        assert up.conns - conns >= 2, up.conns - conns
        fams = _check_mix(act, 20, 2)
        assert value(fams, "stoke_activator_upstream_connections", function="echo") >= 2
    finally:
        act.stop()


def test_gauges_rise_and_return_to_zero():
    """A slow request is in flight, a request for a function with no replica
    is queued; both counted while they last, and 0 after. The queued client
    leaves unanswered: counted with code 499."""
    act = Activator(routes(), ["--workers", "2"]).wait_ready()
    try:
        slow = threading.Thread(target=lambda: get(act.port, "/fn/echo/slow"))
        slow.start()
        wait_value(act, "stoke_activator_requests_in_flight", 1, function="echo")
        s = socket.create_connection(("127.0.0.1", act.port), WAIT)
        s.sendall(b"GET /fn/cold/ HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_value(act, "stoke_activator_queue_depth", 1, function="cold")
        fams = scrape(act)
        assert value(fams, "stoke_activator_connections") >= 1
        s.close()
        slow.join(WAIT)
        wait_value(act, "stoke_activator_queue_depth", 0, function="cold")
        fams = wait_value(act, "stoke_activator_requests_in_flight", 0, function="echo")
        assert value(fams, "stoke_activator_requests_total", function="cold", code="499") == 1
        assert value(fams, "stoke_activator_requests_total", function="echo", code="200") == 1
        wait_value(act, "stoke_activator_connections", 0)
    finally:
        act.stop()


def test_ops_port_bad_input():
    act = Activator(routes(), ["--workers", "2"]).wait_ready()
    try:
        cases = [
            (b"\x16\x03\x01\x02\x00garbage\r\n\r\n", 400),
            (b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 10000 + b"\r\n\r\n", 431),
            (b"GET /" + b"m" * 10000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 431),
            (b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc", 405),
            (b"DELETE /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 405),
            (b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc", 400),
            (b"GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
             400),
            (b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
             400),
        ]
        for data, want in cases:
            (r,), closed = exchange(act.ops, data)
            assert r[0] == want and closed, (data[:40], r, closed)
            if want == 405:
                assert r[1].get("allow") == "GET, HEAD", r
        for path in ("/", "/metricsx", "/healthz/x", "/fn/echo/"):
            (r,), closed = exchange(act.ops, b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
            assert r[0] == 404 and not closed, (path, r)
        # Keep-alive and pipelining: three answers in order on one connection.
        rs, closed = exchange(act.ops, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                              b"GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\n\r\n"
                              b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", n=3)
        assert [r[0] for r in rs] == [200, 200, 404] and closed, ([r[0] for r in rs], closed)
        parse_exposition(rs[1][2].decode())
        # More connections than the cap (64): the excess is closed, and the
        # port serves again once they are gone.
        socks = [socket.create_connection(("127.0.0.1", act.ops), WAIT) for _ in range(80)]
        time.sleep(0.3)
        for s in socks:
            s.close()
        deadline = time.time() + WAIT
        while True:
            try:
                st, _, body = get(act.ops, "/healthz")
                break
            except (OSError, EOFError):
                if time.time() > deadline:
                    raise
                time.sleep(0.1)
        assert (st, body) == (200, b"ok\n"), (st, body)
        # A client that stops mid-head does not stop the others.
        s = socket.create_connection(("127.0.0.1", act.ops), WAIT)
        s.sendall(b"GET /metr")
        assert get(act.ops, "/healthz")[0] == 200
        s.close()
        # The data port was never disturbed.
        assert get(act.port, "/fn/echo/")[0] == 200
    finally:
        act.stop()


def test_ops_port_serves_while_idle_clients_hold_connections():
    """Clients that open connections and send nothing (128, twice the ops
    port's 64) neither cut a client that already made a request nor keep a
    new one out: connections without an accepted request have their own
    smaller budget, oldest closed first, and a short head timeout."""
    act = Activator(routes(), ["--workers", "1"]).wait_ready()
    idle = []
    try:
        kept = socket.create_connection(("127.0.0.1", act.ops), WAIT)
        kept.settimeout(WAIT)

        def ask(s):
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            buf = b""
            while b"\r\n\r\n" not in buf:
                d = s.recv(65536)
                assert d, "connection closed"
                buf += d
            head, _, rest = buf.partition(b"\r\n\r\n")
            n = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
            while len(rest) < n:
                rest += s.recv(65536)
            return int(head.split(b" ")[1])

        assert ask(kept) == 200
        for _ in range(128):
            idle.append(socket.create_connection(("127.0.0.1", act.ops), WAIT))
        time.sleep(0.2)
        assert ask(kept) == 200
        fresh = socket.create_connection(("127.0.0.1", act.ops), WAIT)
        fresh.settimeout(WAIT)
        try:
            assert ask(fresh) == 200
        finally:
            fresh.close()
        kept.close()
    finally:
        for s in idle:
            s.close()
        act.stop()


def test_ops_listen_none():
    act = Activator(routes(), ["--workers", "2"], ops=False).wait_ready()
    try:
        assert get(act.port, "/fn/echo/")[0] == 200
        assert "ops port listening" not in act.log()
        # The data port (once per worker) is all the activator listens on.
        assert _listening_ports(act.proc.pid) == [act.port, act.port], \
            _listening_ports(act.proc.pid)
    finally:
        act.stop()


def _listening_ports(pid):
    """The TCP ports process `pid` listens on (IPv4), sorted."""
    inodes = set()
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            t = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        if t.startswith("socket:["):
            inodes.add(t[8:-1])
    ports = []
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:
                ports.append(int(cols[1].split(":")[1], 16))
    return sorted(ports)


def test_ops_port_in_use_fails_startup():
    """An ops port that cannot be bound is an error at startup (exit 1 with
    the address in the log), not an activator silently without metrics."""
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    act = Activator(routes(), ["--workers", "2", "--ops-listen", "127.0.0.1:%d" % port],
                    ops=False)
    try:
        act.proc.wait(WAIT * 3)
        assert act.proc.returncode == 1, act.proc.returncode
        assert "ops port cannot listen on 127.0.0.1:%d" % port in act.log(), act.log()
        for m in SANITIZER_MARKERS:
            assert m not in act.log(), act.log()
        act.discard()
    finally:
        busy.close()
        if act.alive():
            act.stop()


if __name__ == "__main__":
    run_tests(globals(), setup=setup, teardown=teardown, need_image=False)
