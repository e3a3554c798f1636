"""An in-process forwarder on a unix socket in front of the Docker engine's,
for tests that watch or bend the controller's engine calls: one engine
connection per client connection, a thread each way, bytes passed as they
come. A subclass sees every chunk on its way (on_up: controller -> engine,
on_down: engine -> controller) and returns what to pass on, or None to cut
the connection. libcurl sends a request head in one write, so a chunk that
starts with a method is a request line. (tests/e2e/engine_proxy.py is the
HTTP-aware fault injector run as a process of its own.)"""

import socket
import threading

from harness import DOCKER_SOCK


class Conn:
    """One client connection and its engine connection; `state` is the
    subclass's, per connection."""

    def __init__(self, client, upstream):
        self.client = client
        self.upstream = upstream
        self.state = {}

    def shutdown(self):
        for s in (self.client, self.upstream):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class EnginePump:
    def __init__(self, path, upstream=DOCKER_SOCK):
        self.path = path
        self.upstream = upstream
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(path)
        self.srv.listen(64)
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def on_up(self, conn, data):
        return data

    def on_down(self, conn, data):
        return data

    def _accept(self):
        while not self.closed:
            try:
                client, _ = self.srv.accept()
            except OSError:
                return
            up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                up.connect(self.upstream)
            except OSError:
                client.close()
                up.close()
                continue
            conn = Conn(client, up)
            threading.Thread(target=self._pump, args=(conn, client, up, self.on_up),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(conn, up, client, self.on_down),
                             daemon=True).start()

    def _pump(self, conn, src, dst, hook):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                data = hook(conn, data)
                if data is None:
                    break
                dst.sendall(data)
        except OSError:
            pass
        conn.shutdown()

    def close(self):
        self.closed = True
        self.srv.close()
