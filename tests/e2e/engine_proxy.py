"""A fault-injecting proxy for the Docker engine's API, for tests: listens on
a unix socket, forwards each call to the engine's socket, and answers a
share of the calls a rule matches (by method and path regex) with a fault
instead:

  error  HTTP 500 with a JSON message, the engine never sees the call
  delay  the call is forwarded after `delay_s` (3 s by default)
  close  the connection is closed at once, the engine never sees the call
  drop   the call is forwarded and done by the engine, then the connection
         is closed before its answer (the caller cannot know it was done)

HTTP/1.1 as the engine speaks it: keep-alive (one engine connection per
client connection), bodies by Content-Length or chunked, passed on as they
arrive (the event stream and followed logs are long chunked answers),
answers that end with the connection, and 101 upgrades (passed through both
ways).

The rules are read from the control file (JSON) whenever it changes, so a
test switches faults on and off while the proxy runs (write it beside and
rename):

  {"seed": 1, "rules": [{"method": "POST", "path": "^/containers/create",
                         "fault": "error", "share": 0.3, "delay_s": 3}]}

The first matching rule whose share draws applies. Each fault is printed on
stdout as "fault KIND METHOD PATH" (flushed), so a test counts them.

    engine_proxy.py --listen PATH --upstream PATH --control FILE
"""

import argparse
import json
import os
import random
import re
import select
import socket
import socketserver
import sys
import threading
import time

ERROR_BODY = b'{"message":"fault injected by engine_proxy"}'


class Rules:
    def __init__(self, path):
        self.path = path
        self.mtime = None
        self.rules = []
        self.rand = random.Random(1)
        self.lock = threading.Lock()

    def _load(self):
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self.rules, self.mtime = [], None
            return
        if st.st_mtime_ns == self.mtime:
            return
        with open(self.path) as f:
            conf = json.load(f)
        self.mtime = st.st_mtime_ns
        self.rand = random.Random(conf.get("seed", 1))
        self.rules = [dict(r, method_re=re.compile(r.get("method", ".")),
                           path_re=re.compile(r.get("path", "."))) for r in conf.get("rules", [])]

    def pick(self, method, path):
        """The rule that applies to this call, or None."""
        with self.lock:
            self._load()
            for r in self.rules:
                if r["method_re"].search(method) and r["path_re"].search(path):
                    if self.rand.random() < r.get("share", 1.0):
                        return r
        return None


class Reader:
    """Buffered reads from a socket: lines, exact sizes, what is there."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError
        self.buf += data

    def line(self):
        while b"\r\n" not in self.buf:
            if len(self.buf) > 1 << 20:
                raise ValueError("line too long")
            self._fill()
        i = self.buf.index(b"\r\n") + 2
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def head(self):
        """Lines up to the empty one: (raw bytes, first line, {lowercase name: value})."""
        first = self.line()
        while first == b"\r\n":  # empty lines before a message
            first = self.line()
        raw = [first]
        headers = {}
        while True:
            ln = self.line()
            raw.append(ln)
            if ln == b"\r\n":
                break
            name, _, value = ln.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        return b"".join(raw), first.decode("latin-1").strip(), headers

    def some(self, limit):
        """Up to `limit` bytes, at least one (what is buffered, else one recv)."""
        if not self.buf:
            self._fill()
        out, self.buf = self.buf[:limit], self.buf[limit:]
        return out

    def exact(self, n, out):
        """Passes n bytes to out(bytes) as they arrive."""
        while n > 0:
            data = self.some(n)
            n -= len(data)
            out(data)


def body(reader, headers, out, to_eof_ok):
    """Passes a message body to out(); returns False when it ended with the
    connection (no length)."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size_line = reader.line()
            out(size_line)
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                while True:  # trailers, then the empty line
                    ln = reader.line()
                    out(ln)
                    if ln == b"\r\n":
                        return True
            reader.exact(size + 2, out)
    if "content-length" in headers:
        reader.exact(int(headers["content-length"]), out)
        return True
    if not to_eof_ok:
        return True  # a request without a length has no body
    try:
        while True:
            out(reader.some(65536))
    except EOFError:
        return False


def pump(a, b):
    """Both ways until either side closes (an upgraded connection)."""
    socks = [a, b]
    while True:
        readable, _, _ = select.select(socks, [], [])
        for s in readable:
            data = s.recv(65536)
            if not data:
                return
            (b if s is a else a).sendall(data)


class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        client = self.request
        creader = Reader(client)
        upstream = None
        ureader = None
        try:
            while True:
                try:
                    raw, first, headers = creader.head()
                except EOFError:
                    return
                method, target = first.split(" ")[:2]
                req = [raw]
                body(creader, headers, req.append, False)
                rule = self.server.rules.pick(method, target)
                kind = rule["fault"] if rule else None
                if kind:
                    print("fault %s %s %s" % (kind, method, target), flush=True)
                if kind == "error":
                    client.sendall(b"HTTP/1.1 500 Internal Server Error\r\n"
                                   b"Content-Type: application/json\r\n"
                                   b"Content-Length: %d\r\n\r\n%s" % (len(ERROR_BODY), ERROR_BODY))
                    continue
                if kind == "close":
                    return
                if kind == "delay":
                    time.sleep(float(rule.get("delay_s", 3)))
                if upstream is None:
                    upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    upstream.connect(self.server.upstream)
                    ureader = Reader(upstream)
                upstream.sendall(b"".join(req))
                sink = (lambda data: None) if kind == "drop" else client.sendall
                uraw, status_line, uheaders = ureader.head()
                status = int(status_line.split(" ")[1])
                sink(uraw)
                if status == 101:
                    client.sendall(ureader.buf)
                    pump(client, upstream)
                    return
                if method != "HEAD" and status not in (204, 304) and not 100 <= status < 200:
                    if not body(ureader, uheaders, sink, True):
                        return  # ended with the connection
                if kind == "drop":
                    return
                if "close" in uheaders.get("connection", "").lower() or \
                        "close" in headers.get("connection", "").lower():
                    return
        except (EOFError, OSError, ValueError):
            return
        finally:
            if upstream is not None:
                upstream.close()


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True)
    ap.add_argument("--upstream", default="/var/run/docker.sock")
    ap.add_argument("--control", required=True)
    args = ap.parse_args()
    if os.path.exists(args.listen):
        os.unlink(args.listen)
    srv = Server(args.listen, Handler)
    srv.rules = Rules(args.control)
    srv.upstream = args.upstream
    print("listening on %s" % args.listen, flush=True)
    try:
        srv.serve_forever()
    finally:
        os.unlink(args.listen)


if __name__ == "__main__":
    sys.exit(main())
