"""Streaming through stoke-activator (issue 4): bodies of 1 GiB up and down
in constant memory, chunked bodies both ways, WebSocket (Upgrade) tunnels,
interim responses, X-Request-Id and traceparent.

Needs no Docker: the activator runs with `--controller none --route` to a
Python server started here. The activator's peak RSS (VmHWM) is read from
/proc after the transfers and asserted loosely; the numbers are printed.
"""

import os
import re
import socket
import sys
import threading
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import run_tests  # noqa: E402
from test_hostile import start_activator  # noqa: E402
from upstream import ThreadedServer, recv_head  # noqa: E402

GIB = 1 << 30
PIECE = bytes(range(256)) * 4096  # 1 MiB
# The README's bound: a 1 GiB transfer peaks near 4 MiB of RSS (3.9 MiB
# measured, the activator's own idle 2.4 MiB included); 8 MiB fails any
# buffering of a few MiB of the stream.
RSS_LIMIT = 8 << 20
# Under ASan, shadow memory and the quarantine of freed blocks count too;
# the quarantine is made small below so that what stays is the activator's.
RSS_LIMIT_SANITIZED = 128 << 20
TIMEOUT = 120.0

_env = {}


def send_body(sock, n, chunked):
    """Sends n bytes of PIECE, in 1 MiB chunks when `chunked` (then the last
    chunk too), else as they are."""
    left = n
    while left > 0:
        piece = PIECE[:min(left, len(PIECE))]
        sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
        left -= len(piece)
    if chunked:
        sock.sendall(b"0\r\n\r\n")


class Backend(ThreadedServer):
    """A threaded HTTP/1.1 server for big transfers:
    POST /sink          reads the body (Content-Length or chunked) and
                        answers "<bytes> <crc32> <framing>"
    GET /source?n=N     answers N bytes (Content-Length; &chunked=1: chunked)
    GET /ws             answers 101, then echoes bytes until the client's
                        end of stream, then ends its side
    GET /early          answers 103 Early Hints, then 200
    GET /head           answers the request head it got, as the body
    """

    def __init__(self):
        super().__init__(backlog=64)

    def _serve(self, conn, n):
        conn.settimeout(TIMEOUT)
        buf = b""
        while True:
            head, buf = recv_head(conn, buf)
            if head is None:
                return
            lines = head.split(b"\r\n")
            method, target = lines[0].split(b" ")[:2]
            hdrs = {}
            for line in lines[1:]:
                k, _, v = line.partition(b":")
                hdrs[k.strip().lower()] = v.strip()
            path, _, query = target.partition(b"?")
            if path == b"/sink":
                buf = self._sink(conn, hdrs, buf)
            elif path == b"/source":
                q = dict(kv.split(b"=") for kv in query.split(b"&") if b"=" in kv)
                self._source(conn, int(q[b"n"]), q.get(b"chunked") == b"1")
            elif path == b"/ws":
                self._ws(conn, hdrs, buf)
                return
            elif path == b"/early":
                conn.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
                             b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
            else:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(head), head))

    def _read(self, conn, buf, n):
        """Reads exactly n bytes (buf first); returns (data, rest)."""
        while len(buf) < n:
            d = conn.recv(1 << 20)
            if not d:
                raise OSError("eof")
            buf += d
        return buf[:n], buf[n:]

    def _sink(self, conn, hdrs, buf):
        total, crc = 0, 0
        if hdrs.get(b"transfer-encoding", b"").lower() == b"chunked":
            framing = b"chunked"
            while True:
                while b"\r\n" not in buf:
                    d = conn.recv(65536)
                    if not d:
                        raise OSError("eof")
                    buf += d
                line, _, buf = buf.partition(b"\r\n")
                size = int(line.split(b";")[0], 16)
                data, buf = self._read(conn, buf, size + 2)
                if size == 0:
                    break
                crc = zlib.crc32(data[:-2], crc)
                total += size
        else:
            framing = b"length"
            left = int(hdrs.get(b"content-length", b"0"))
            take = min(left, len(buf))
            crc = zlib.crc32(buf[:take], crc)
            total, left, buf = take, left - take, buf[take:]
            mv = bytearray(1 << 20)
            while left > 0:
                n = conn.recv_into(mv, min(left, len(mv)))
                if n == 0:
                    raise OSError("eof")
                crc = zlib.crc32(memoryview(mv)[:n], crc)
                total += n
                left -= n
        body = b"%d %d %s" % (total, crc, framing)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        return buf

    def _source(self, conn, n, chunked):
        if chunked:
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        else:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % n)
        send_body(conn, n, chunked)

    def _ws(self, conn, hdrs, buf):
        if hdrs.get(b"upgrade", b"").lower() != b"websocket":
            conn.sendall(b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\n\r\n")
            return
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Accept: test\r\n\r\nhello from the tunnel\n")
        if buf:
            conn.sendall(buf)
        while True:
            d = conn.recv(1 << 20)
            if not d:
                break
            conn.sendall(d)
        conn.shutdown(socket.SHUT_WR)


def read_head(s, buf=b""):
    """Reads one response head; returns (status, headers dict, rest)."""
    while b"\r\n\r\n" not in buf:
        d = s.recv(65536)
        if not d:
            raise AssertionError("connection closed before a response head: %r" % buf[:200])
        buf += d
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    hdrs = {}
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        hdrs[k.strip().lower().decode()] = v.strip().decode()
    return int(lines[0].split(b" ")[1]), hdrs, rest


def read_body(s, hdrs, rest, consume):
    """Reads the body of a response with the given headers, passing it to
    consume(bytes) piece by piece; returns the bytes after it."""
    if hdrs.get("transfer-encoding", "").lower() == "chunked":
        buf = rest
        while True:
            while b"\r\n" not in buf:
                buf += s.recv(65536)
            line, _, buf = buf.partition(b"\r\n")
            size = int(line.split(b";")[0], 16)
            while len(buf) < size + 2:
                d = s.recv(1 << 20)
                if not d:
                    raise AssertionError("chunked body cut")
                buf += d
            if size == 0:
                return buf[2:]
            consume(buf[:size])
            buf = buf[size + 2:]
    left = int(hdrs["content-length"])
    consume(rest[:left])
    after = rest[left:]
    left -= min(left, len(rest))
    while left > 0:
        d = s.recv(min(left, 1 << 20))
        if not d:
            raise AssertionError("body cut with %d bytes to go" % left)
        consume(d)
        left -= len(d)
    return after


def connect():
    s = socket.create_connection(("127.0.0.1", _env["act"].port), 10)
    s.settimeout(TIMEOUT)
    return s


def expected_crc(n):
    crc, left = 0, n
    while left > 0:
        crc = zlib.crc32(PIECE[:min(left, len(PIECE))], crc)
        left -= min(left, len(PIECE))
    return crc


def peak_rss():
    with open("/proc/%d/status" % _env["act"].proc.pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def sanitized():
    with open("/proc/%d/maps" % _env["act"].proc.pid) as f:
        return "asan" in f.read()


def rss_limit():
    return RSS_LIMIT_SANITIZED if sanitized() else RSS_LIMIT


def setup():
    # Only read by a sanitized build (ASan keeps freed memory for a while to
    # catch use-after-free; its default 256 MiB would hide our own use).
    opts = os.environ.get("ASAN_OPTIONS", "")
    os.environ["ASAN_OPTIONS"] = (opts + ":" if opts else "") + \
        "quarantine_size_mb=4:thread_local_quarantine_size_kb=256"
    be = Backend()
    act = start_activator(be.port, extra=["--max-body-bytes", "0"])
    _env.update(be=be, act=act)


def teardown():
    act, be = _env.pop("act", None), _env.pop("be", None)
    try:
        if act:
            act.stop()
    finally:
        if be:
            be.close()


def upload(n, chunked):
    s = connect()
    try:
        framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % n
        s.sendall(b"POST /fn/echo/sink HTTP/1.1\r\nHost: x\r\n%s\r\n\r\n" % framing)
        send_body(s, n, chunked)
        st, hdrs, rest = read_head(s)
        got = []
        read_body(s, hdrs, rest, got.append)
        return st, b"".join(got)
    finally:
        s.close()


def download(n, chunked):
    s = connect()
    try:
        s.sendall(b"GET /fn/echo/source?n=%d%s HTTP/1.1\r\nHost: x\r\n\r\n"
                  % (n, b"&chunked=1" if chunked else b""))
        st, hdrs, rest = read_head(s)
        state = {"n": 0, "crc": 0}

        def consume(d):
            state["n"] += len(d)
            state["crc"] = zlib.crc32(d, state["crc"])
        read_body(s, hdrs, rest, consume)
        return st, hdrs, state["n"], state["crc"]
    finally:
        s.close()


def test_upload_1gib():
    t = time.time()
    st, body = upload(GIB, chunked=False)
    took = time.time() - t
    assert st == 200, st
    assert body == b"%d %d length" % (GIB, expected_crc(GIB)), body
    rss = peak_rss()
    print("  1 GiB upload in %.1f s; activator peak RSS %.1f MiB" % (took, rss / 2**20))
    assert rss < rss_limit(), "peak RSS %d" % rss


def test_download_1gib():
    t = time.time()
    st, hdrs, n, crc = download(GIB, chunked=False)
    took = time.time() - t
    assert st == 200 and n == GIB and crc == expected_crc(GIB), (st, n)
    assert hdrs.get("content-length") == str(GIB), hdrs
    rss = peak_rss()
    print("  1 GiB download in %.1f s; activator peak RSS %.1f MiB" % (took, rss / 2**20))
    assert rss < rss_limit(), "peak RSS %d" % rss


def test_chunked_both_ways():
    """A chunked upload past the hold size streams on chunked; a small one
    goes on with a Content-Length; a chunked response stays chunked."""
    n = 64 << 20
    st, body = upload(n, chunked=True)
    assert st == 200 and body == b"%d %d chunked" % (n, expected_crc(n)), body
    st, body = upload(1000, chunked=True)
    assert st == 200 and body == b"1000 %d length" % expected_crc(1000), body
    st, hdrs, got, crc = download(n, chunked=True)
    assert st == 200 and got == n and crc == expected_crc(n), (st, got)
    assert hdrs.get("transfer-encoding") == "chunked", hdrs
    assert peak_rss() < rss_limit()


def test_slow_reader_download():
    """A client that reads slowly holds the replica back instead of making
    the activator buffer the response."""
    before = peak_rss()
    s = connect()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.sendall(b"GET /fn/echo/source?n=%d HTTP/1.1\r\nHost: x\r\n\r\n" % (256 << 20))
        time.sleep(2.0)  # nothing read: the activator must stop reading too
        rss = peak_rss()
        st, hdrs, rest = read_head(s)
        state = {"n": 0}
        read_body(s, hdrs, rest, lambda d: state.update(n=state["n"] + len(d)))
        assert st == 200 and state["n"] == 256 << 20, state
    finally:
        s.close()
    print("  slow reader: peak RSS %.1f MiB before, %.1f MiB while stalled"
          % (before / 2**20, rss / 2**20))
    assert rss < rss_limit()


def test_websocket_tunnel():
    s = connect()
    try:
        s.sendall(b"GET /fn/echo/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                  b"Upgrade: websocket\r\nSec-WebSocket-Key: dGVzdA==\r\n"
                  b"Sec-WebSocket-Version: 13\r\n\r\nearly bytes|")
        st, hdrs, rest = read_head(s)
        assert st == 101, (st, hdrs)
        assert hdrs.get("upgrade") == "websocket" and hdrs.get("connection", "").lower() == "upgrade"
        assert hdrs.get("sec-websocket-accept") == "test", hdrs
        want = b"hello from the tunnel\nearly bytes|"
        while len(rest) < len(want):
            rest += s.recv(65536)
        assert rest == want, rest
        # 32 MiB through the echo, sent while reading (backpressure both ways).
        total = 32 << 20
        got = {"n": 0, "crc": 0}

        def reader():
            while got["n"] < total:
                d = s.recv(1 << 20)
                if not d:
                    break
                got["n"] += len(d)
                got["crc"] = zlib.crc32(d, got["crc"])
        t = threading.Thread(target=reader)
        t.start()
        for _ in range(total // len(PIECE)):
            s.sendall(PIECE)
        t.join(TIMEOUT)
        assert got["n"] == total and got["crc"] == expected_crc(total), got
        # Half-close: our end of stream reaches the replica, which ends its
        # side; the activator then closes.
        s.shutdown(socket.SHUT_WR)
        assert s.recv(10) == b""
    finally:
        s.close()
    assert peak_rss() < rss_limit()


def test_websocket_declined():
    """A replica that does not switch protocols answers as usual and the
    connection stays HTTP."""
    s = connect()
    try:
        s.sendall(b"GET /fn/echo/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                  b"Upgrade: h2c\r\n\r\nGET /fn/echo/head HTTP/1.1\r\nHost: x\r\n\r\n")
        st, hdrs, rest = read_head(s)
        assert st == 426, st
        rest = read_body(s, hdrs, rest, lambda d: None)
        st, hdrs, rest = read_head(s, rest)
        assert st == 200, st
    finally:
        s.close()


def test_early_hints():
    s = connect()
    try:
        s.sendall(b"GET /fn/echo/early HTTP/1.1\r\nHost: x\r\n\r\n")
        st, hdrs, rest = read_head(s)
        assert st == 103 and "preload" in hdrs.get("link", ""), (st, hdrs)
        st, hdrs, rest = read_head(s, rest)
        assert st == 200, st
        # An HTTP/1.0 client is not sent interim answers.
        s2 = connect()
        s2.sendall(b"GET /fn/echo/early HTTP/1.0\r\nHost: x\r\n\r\n")
        st, hdrs, rest = read_head(s2)
        assert st == 200, st
        s2.close()
    finally:
        s.close()


def head_of(extra=b""):
    s = connect()
    try:
        s.sendall(b"GET /fn/echo/head HTTP/1.1\r\nHost: x\r\n%s\r\n" % extra)
        st, hdrs, rest = read_head(s)
        got = []
        read_body(s, hdrs, rest, got.append)
        assert st == 200, st
        return hdrs, b"".join(got).decode()
    finally:
        s.close()


def test_request_id_and_traceparent():
    hdrs, head = head_of()
    rid = hdrs.get("x-request-id", "")
    assert re.fullmatch(r"[0-9a-f]{32}", rid), hdrs
    assert ("\r\nX-Request-Id: %s" % rid) in head, head
    hdrs2, _ = head_of()
    assert hdrs2["x-request-id"] != rid
    # The client's own id is kept, and traceparent passes unchanged.
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    hdrs, head = head_of(b"X-Request-Id: abc-123\r\ntraceparent: %s\r\n" % tp.encode())
    assert hdrs["x-request-id"] == "abc-123", hdrs
    assert head.count("X-Request-Id") == 1 and "\r\nX-Request-Id: abc-123" in head, head
    assert ("\r\ntraceparent: %s" % tp) in head, head
    # One that is not a plain token is replaced.
    hdrs, head = head_of(b"X-Request-Id: a b\"c\r\n")
    assert re.fullmatch(r"[0-9a-f]{32}", hdrs["x-request-id"]), hdrs
    assert "a b" not in head, head
    # An error answered by the activator itself carries one too.
    s = connect()
    try:
        s.sendall(b"GET /fn/nosuch/ HTTP/1.1\r\nHost: x\r\nX-Request-Id: r-404\r\n\r\n")
        st, hdrs, _ = read_head(s)
        assert st == 404 and hdrs.get("x-request-id") == "r-404", (st, hdrs)
    finally:
        s.close()


def test_access_log():
    """--access-log writes one JSON line per request; without it, none."""
    import json
    act = start_activator(_env["be"].port, extra=["--access-log", "--log-level", "info"])
    try:
        s = socket.create_connection(("127.0.0.1", act.port), 10)
        s.settimeout(TIMEOUT)
        s.sendall(b"GET /fn/echo/head?q=1 HTTP/1.1\r\nHost: x\r\nX-Request-Id: log-1\r\n\r\n"
                  b"GET /fn/nosuch/ HTTP/1.1\r\nHost: x\r\nX-Request-Id: log-2\r\n\r\n")
        st, hdrs, rest = read_head(s)
        rest = read_body(s, hdrs, rest, lambda d: None)
        st2, _, _ = read_head(s, rest)
        s.close()
        assert (st, st2) == (200, 404), (st, st2)
        deadline = time.time() + 10
        while time.time() < deadline:
            lines = [json.loads(x) for x in act.log().splitlines() if '"msg":"request"' in x]
            if len(lines) >= 2:
                break
            time.sleep(0.05)
        by_id = {x["request_id"]: x for x in lines}
        a, b = by_id["log-1"], by_id["log-2"]
        assert a["fn"] == "echo" and a["method"] == "GET" and a["target"] == "/fn/echo/head?q=1"
        assert a["status"] == 200 and a["duration_ms"] >= 0 and a["client"] == "127.0.0.1", a
        assert b["status"] == 404 and "fn" not in b, b
    finally:
        act.stop()
    assert '"msg":"request"' not in _env["act"].log()


def _activator_alive():
    act = _env.get("act")
    return not act or act.check_alive()


if __name__ == "__main__":
    run_tests(globals(), setup=setup, teardown=teardown, after_each=_activator_alive,
              need_image=False)
