"""A small Kubernetes API client in Python 3's standard library, for the k8s test harness
(cluster.py, kubelet.py and the tests): HTTPS to the real kube-apiserver on loopback with a
client certificate or a bearer token, JSON in and out, and LIST-then-WATCH with relist on
410 Gone. Only what the harness needs; it is not the client stoke ships (that one is C).
"""

import http.client
import json
import ssl
import threading
import time
import urllib.parse


class APIError(Exception):
    def __init__(self, status, body, what=""):
        self.status = status
        self.body = body
        msg = body.get("message") if isinstance(body, dict) else body
        super().__init__("%s: HTTP %s: %s" % (what, status, msg))


class Client:
    """One identity on one API server. `server` is "https://127.0.0.1:PORT"."""

    def __init__(self, server, ca, cert=None, key=None, token=None, timeout=30):
        u = urllib.parse.urlsplit(server)
        self.host, self.port = u.hostname, u.port or 443
        self.server = server
        self.ctx = ssl.create_default_context(cafile=ca)
        if cert:
            self.ctx.load_cert_chain(cert, key)
        self.token = token
        self.timeout = timeout
        self._local = threading.local()

    def _conn(self, timeout):
        return http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=timeout)

    def request(self, method, path, body=None, content_type="application/json", timeout=None,
                raw=False):
        """Returns (status, parsed JSON or text). Never raises for an HTTP status."""
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = "Bearer " + self.token
        data = None
        if body is not None:
            data = body if isinstance(body, (bytes, str)) else json.dumps(body)
            headers["Content-Type"] = content_type
        c = self._conn(timeout or self.timeout)
        try:
            c.request(method, path, body=data, headers=headers)
            r = c.getresponse()
            out = r.read()
        finally:
            c.close()
        if raw:
            return r.status, out
        try:
            return r.status, json.loads(out) if out else None
        except ValueError:
            return r.status, out.decode(errors="replace")

    def call(self, method, path, body=None, ok=(200, 201, 202), **kw):
        """request(), raising APIError unless the status is in `ok`."""
        st, obj = self.request(method, path, body, **kw)
        if st not in ok:
            raise APIError(st, obj, "%s %s" % (method, path))
        return obj

    def get(self, path):
        return self.call("GET", path)

    def create(self, path, obj):
        return self.call("POST", path, obj)

    def delete(self, path, body=None, ok=(200, 202, 404)):
        return self.call("DELETE", path, body, ok=ok)

    def patch(self, path, obj, kind="merge"):
        ct = {"merge": "application/merge-patch+json",
              "strategic": "application/strategic-merge-patch+json",
              "json": "application/json-patch+json"}[kind]
        return self.call("PATCH", path, obj, content_type=ct)

    def watch_stream(self, path, resource_version, timeout_seconds=300):
        """Yields watch events (dicts with type and object) of one WATCH request from
        `resource_version`, with bookmarks. Returns at the server's end of the stream; raises
        APIError(410) when the version is too old (as the status or as an ERROR event)."""
        sep = "&" if "?" in path else "?"
        q = "%swatch=1&allowWatchBookmarks=true&resourceVersion=%s&timeoutSeconds=%d" % (
            sep, urllib.parse.quote(resource_version), timeout_seconds)
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = "Bearer " + self.token
        c = self._conn(timeout_seconds + 30)
        try:
            c.request("GET", path + q, headers=headers)
            r = c.getresponse()
            if r.status != 200:
                body = r.read()
                try:
                    body = json.loads(body)
                except ValueError:
                    pass
                raise APIError(r.status, body, "WATCH " + path)
            while True:
                line = r.readline()
                if not line:
                    return
                if not line.strip():
                    continue
                ev = json.loads(line)
                if ev.get("type") == "ERROR":
                    st = ev.get("object", {})
                    raise APIError(st.get("code", 500), st, "WATCH " + path)
                yield ev
        finally:
            c.close()


class Informer(threading.Thread):
    """LIST then WATCH of one collection, forever: calls on_list(items) after each (re)list
    and on_event(type, obj) for every ADDED/MODIFIED/DELETED event. Relists on 410 Gone,
    reconnects with back-off on any other error, resumes from the last resourceVersion seen
    (bookmarks included) when a watch ends normally. stop() ends it."""

    def __init__(self, client, path, on_list, on_event, name="informer", log=print):
        super().__init__(name=name, daemon=True)
        self.client, self.path = client, path
        self.on_list, self.on_event = on_list, on_event
        self.log = log
        self.stopped = threading.Event()
        self.synced = threading.Event()

    def stop(self):
        self.stopped.set()

    def run(self):
        delay = 0.2
        rv = None
        while not self.stopped.is_set():
            try:
                if rv is None:
                    lst = self.client.call("GET", self.path)
                    rv = lst["metadata"]["resourceVersion"]
                    self.on_list(lst.get("items") or [])
                    self.synced.set()
                for ev in self.client.watch_stream(self.path, rv):
                    if self.stopped.is_set():
                        return
                    obj = ev.get("object") or {}
                    rv = obj.get("metadata", {}).get("resourceVersion", rv)
                    if ev["type"] in ("ADDED", "MODIFIED", "DELETED"):
                        self.on_event(ev["type"], obj)
                delay = 0.2
            except APIError as e:
                if e.status == 410:
                    rv = None  # too old: relist
                    continue
                self.log("%s: %s (retrying in %.1fs)" % (self.name, e, delay))
                self.stopped.wait(delay)
                delay = min(delay * 2, 5.0)
            except (OSError, http.client.HTTPException, ValueError) as e:
                if self.stopped.is_set():
                    return
                self.log("%s: %s: %s (retrying in %.1fs)" % (self.name, type(e).__name__, e, delay))
                self.stopped.wait(delay)
                delay = min(delay * 2, 5.0)


def wait_for(cond, timeout, what, interval=0.05):
    """Calls cond() until it returns something true (returned), or fails after `timeout` s."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            v = cond()
            if v:
                return v
        except (OSError, APIError, http.client.HTTPException) as e:
            last = e
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %ss waiting for %s%s" % (
                timeout, what, " (last error: %s)" % last if last else ""))
        time.sleep(interval)
        interval = min(interval * 1.5, 0.5)
