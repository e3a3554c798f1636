"""A recording upstream for activator tests: a threaded raw-socket HTTP/1.1
server on 127.0.0.1 that keeps the exact bytes of every request it receives
(per connection) and answers each with a fixed valid response, unless the
request's path asks for misbehaviour:

  /close      close the connection without answering
  /malformed  answer with bytes that are not HTTP
  /noclen     answer without Content-Length and close (body read to close)
  /partial    send the head and half the body, then close
  /big        a 4 MiB body, written in 64 KiB pieces
  /slow       wait 0.5 s, then answer normally
  /bigclose   a 4 MiB body without Content-Length, ended by closing
  /early      answered (a 4 MiB body) as soon as the head is in, before
              any of the request body is read; what follows is dropped
  /upgrade    101 Switching Protocols, then every byte is echoed back
  /badchunk   a chunked body whose first chunk's data runs past its size
  /fold       a header folded over two lines
  /badname    a header with a space before its colon
  /connhdr    a header named hop-by-hop by the response's Connection header

Any other path gets 200 with the body "ok <method> <path>\n". The activator
forwards every request with a Content-Length (it reads bodies whole), so
that is all this server needs to delimit requests.
"""

import re
import socket
import threading
import time

BIG = 4 * 1024 * 1024


class ThreadedServer:
    """A listening socket on 127.0.0.1 (an ephemeral port) with one daemon
    thread per connection: subclasses implement _serve(conn, n), n being
    the connection's number from 1. close() stops accepting and closes the
    connections still open."""

    def __init__(self, backlog=128):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(backlog)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.conns = 0  # connections accepted
        self.open = 0  # connections open now
        self.live = set()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self):
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        with self.lock:
            live = list(self.live)
        for c in live:
            try:
                c.close()
            except OSError:
                pass

    def _accept(self):
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.conns += 1
                self.open += 1
                self.live.add(conn)
                n = self.conns
            threading.Thread(target=self._run, args=(conn, n), daemon=True).start()

    def _run(self, conn, n):
        try:
            self._serve(conn, n)
        except OSError:
            pass
        finally:
            try:
                conn.close()
            except OSError:
                pass
            with self.lock:
                self.open -= 1
                self.live.discard(conn)

    def _serve(self, conn, n):
        raise NotImplementedError


def recv_head(conn, buf):
    """Reads from conn until buf holds a whole request or response head.
    Returns (head without its blank line, the bytes after it), or (None,
    the bytes read) when the stream ends first."""
    while b"\r\n\r\n" not in buf:
        d = conn.recv(65536)
        if not d:
            return None, buf
        buf += d
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


class Upstream(ThreadedServer):
    def __init__(self):
        self.requests = []   # (connection number, exact bytes) in arrival order
        self.request_ids = []  # the X-Request-Id of each request, in the same order
        self.leftovers = []  # bytes of connections closed mid-request
        super().__init__()

    def take(self, settle=0.1):
        """Returns (and forgets) the requests received so far, after waiting
        `settle` seconds for stragglers; leftovers are returned as well."""
        time.sleep(settle)
        with self.lock:
            reqs, self.requests = self.requests, []
            left, self.leftovers = self.leftovers, []
        return reqs, left

    # -- server ------------------------------------------------------------
    def _serve(self, conn, n):
        buf = b""
        conn.settimeout(30)
        try:
            while True:
                head, rest = recv_head(conn, buf)
                if head is None:
                    buf = rest
                    return
                buf = head + b"\r\n\r\n" + rest  # a leftover if the body never ends
                if head.split(b" ", 2)[1:2] == [b"/early"]:
                    with self.lock:
                        self.requests.append((n, head + b"\r\n\r\n"))
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BIG +
                                 b"e" * BIG)
                    while conn.recv(65536):  # the body, unread: no reset for it
                        pass
                    buf = b""
                    return
                length, chunked = 0, False
                for line in head.split(b"\r\n")[1:]:
                    k, _, v = line.partition(b":")
                    if k.strip().lower() == b"content-length":
                        length = int(v.strip())
                    elif k.strip().lower() == b"transfer-encoding":
                        chunked = v.strip().lower() == b"chunked"
                if chunked:
                    # Recorded as sent; the end is "0" CRLF CRLF (no trailers
                    # are ever forwarded).
                    while not (rest.startswith(b"0\r\n\r\n") or b"\r\n0\r\n\r\n" in rest):
                        d = conn.recv(65536)
                        if not d:
                            buf = head + b"\r\n\r\n" + rest
                            return
                        rest += d
                    end = 5 if rest.startswith(b"0\r\n\r\n") else rest.index(b"\r\n0\r\n\r\n") + 7
                    length = end
                while len(rest) < length:
                    d = conn.recv(65536)
                    if not d:
                        buf = head + b"\r\n\r\n" + rest
                        return
                    rest += d
                req = head + b"\r\n\r\n" + rest[:length]
                buf = rest[length:]
                # The activator's X-Request-Id differs each time: recorded
                # apart, and as "*" in the request.
                m = re.search(rb"\r\nX-Request-Id: ([^\r]*)", head)
                if m:
                    req = req[:m.start(1)] + b"*" + req[m.end(1):]
                with self.lock:
                    self.requests.append((n, req))
                    self.request_ids.append(m.group(1) if m else None)
                if not self._answer(conn, req):
                    buf = b""
                    return
        finally:
            if buf:
                with self.lock:
                    self.leftovers.append((n, buf))

    def _answer(self, conn, req):
        """Answers one request; False when the connection is to close."""
        line = req.split(b"\r\n", 1)[0].split(b" ")
        method, path = line[0], line[1] if len(line) > 1 else b""
        p = path.split(b"?")[0]
        if p == b"/close":
            return False
        if p == b"/malformed":
            conn.sendall(b"HTTP/1.1 abc\r\n\r\nthis is not http\r\n")
            return False
        if p == b"/noclen":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nread to close\n")
            return False
        if p == b"/bigclose":
            conn.sendall(b"HTTP/1.1 200 OK\r\n\r\n" + b"c" * BIG)
            return False
        bad = {b"/badchunk": b"Transfer-Encoding: chunked\r\n\r\n5\r\nhelloXY5\r\nworld\r\n0\r\n\r\n",
               b"/fold": b"X-A: a\r\n b\r\nContent-Length: 2\r\n\r\nok",
               b"/badname": b"X-A : a\r\nContent-Length: 2\r\n\r\nok",
               b"/connhdr": b"Connection: X-Secret\r\nX-Secret: s\r\nX-Kept: k\r\n"
                            b"Content-Length: 2\r\n\r\nok"}
        if p in bad:
            conn.sendall(b"HTTP/1.1 200 OK\r\n" + bad[p])
            return p == b"/connhdr"
        if p == b"/upgrade":
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n"
                         b"Upgrade: test\r\n\r\n")
            while True:
                d = conn.recv(65536)
                if not d:
                    return False
                conn.sendall(d)
        if p == b"/partial":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 50)
            time.sleep(0.1)
            return False
        if p == b"/big":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BIG)
            piece = b"b" * 65536
            for _ in range(BIG // len(piece)):
                conn.sendall(piece)
            return True
        if p == b"/slow":
            time.sleep(0.5)
        body = b"ok " + method + b" " + path + b"\n"
        resp = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(body)
        conn.sendall(resp if method == b"HEAD" else resp + body)
        return True
