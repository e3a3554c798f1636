"""Faults between a client and the API server, for the Kubernetes fault tests: a TCP proxy
on 127.0.0.1 (stdlib only) that forwards every connection to the API server, bytes as they
are (TLS passes through: the client verifies the API server's own certificate, whose names
include 127.0.0.1), and can

- cut(): reset every open connection at once, mid-stream (watches included);
- down(): cut, then reset each new connection as it comes, until up();
- delay(s): hold every chunk `s` seconds in each direction (0: none), in order.

And etcd's compaction through its v3 HTTP gateway (compact()), to make a watch's
resourceVersion too old: the API server then answers 410 Gone.
"""

import base64
import json
import queue
import socket
import struct
import threading
import time
import urllib.request


def _reset(s):
    """Closes `s` with a TCP RST (SO_LINGER 0): the peer sees the connection cut."""
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass


class Proxy:
    def __init__(self, target_host, target_port):
        self.target = (target_host, target_port)
        self.lock = threading.Lock()
        self.conns = set()  # (client socket, upstream socket)
        self.accepted = 0
        self.cuts = 0  # connections reset by cut() or while down
        self.is_down = False
        self.latency = 0.0
        self.stopping = False
        self.ls = socket.socket()
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(64)
        self.port = self.ls.getsockname()[1]
        self.t = threading.Thread(target=self._accept, daemon=True)
        self.t.start()

    @property
    def url(self):
        return "https://127.0.0.1:%d" % self.port

    def _accept(self):
        while not self.stopping:
            try:
                c, _ = self.ls.accept()
            except OSError:
                return
            with self.lock:
                self.accepted += 1
                if self.is_down:
                    self.cuts += 1
                    _reset(c)
                    continue
            try:
                u = socket.create_connection(self.target, timeout=5)
                u.settimeout(None)
            except OSError:
                _reset(c)
                continue
            pair = (c, u)
            with self.lock:
                self.conns.add(pair)
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pump, args=(a, b, pair), daemon=True).start()

    def _pump(self, src, dst, pair):
        """src -> dst: a reader and a sender thread, so that a delay holds each chunk for
        the latency from its arrival (in order), not the stream's throughput."""
        q = queue.Queue()
        threading.Thread(target=self._send, args=(q, dst, pair), daemon=True).start()
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            q.put((time.monotonic() + self.latency, data))
            if not data:
                return

    def _send(self, q, dst, pair):
        while True:
            due, data = q.get()
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            if not data:
                break
            try:
                dst.sendall(data)
            except OSError:
                break
        self._close(pair)

    def _close(self, pair):
        with self.lock:
            gone = pair in self.conns
            self.conns.discard(pair)
        if gone:  # the first side to end closes both (the other side's threads then end)
            for s in pair:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def open_connections(self):
        with self.lock:
            return len(self.conns)

    def cut(self):
        """Resets every open connection; returns how many there were."""
        with self.lock:
            pairs = list(self.conns)
            self.conns.clear()
            self.cuts += len(pairs)
        for c, u in pairs:
            _reset(c)
            _reset(u)
        return len(pairs)

    def down(self):
        with self.lock:
            self.is_down = True
        return self.cut()

    def up(self):
        with self.lock:
            self.is_down = False

    def delay(self, seconds):
        self.latency = seconds

    def stop(self):
        self.stopping = True
        self.ls.close()
        self.cut()


def _etcd(url, path, body):
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def etcd_revision(url):
    """etcd's current revision (the API server's resourceVersions are etcd revisions)."""
    r = _etcd(url, "/v3/kv/range", {"key": base64.b64encode(b"/registry/").decode(),
                                    "limit": 1})
    return int(r["header"]["revision"])


def compact(url):
    """Compacts etcd at its current revision: every older resourceVersion is gone for a
    watch served from etcd. Returns that revision."""
    rev = etcd_revision(url)
    _etcd(url, "/v3/kv/compaction", {"revision": str(rev), "physical": True})
    return rev
