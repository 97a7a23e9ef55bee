"""A local webhook receiver for the approval notification tests: a real HTTP server
(http.server, HTTP/1.1) on a free loopback port, in a thread. It records every POST it gets
and answers the first `fail_first` of them with `fail_status` (500 by default), the rest
with 200. Nothing is mocked on the gateway's side: it talks to this server over TCP."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Delivery:
    """One POST as received: path, headers (lower-case names), raw body, parsed JSON (or
    None), the status we answered, and when it arrived (time.monotonic())."""

    def __init__(self, path, headers, body, status, at):
        self.path, self.headers, self.body, self.status, self.at = path, headers, body, status, at
        try:
            self.json = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            self.json = None

    def __repr__(self):
        return f"Delivery({self.status}, {self.path}, {self.body[:200]!r})"


class Receiver:
    def __init__(self, fail_first=0, fail_status=500):
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.deliveries = []
        self.cond = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # keep pytest output clean
                pass

            def _body(self):
                if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                    out = b""
                    while True:
                        line = self.rfile.readline()
                        n = int(line.split(b";")[0].strip() or b"0", 16)
                        if n == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return out
                        out += self.rfile.read(n)
                        self.rfile.readline()
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def do_POST(self):
                body = self._body()
                with outer.cond:
                    status = outer.fail_status if len(outer.deliveries) < outer.fail_first else 200
                    outer.deliveries.append(Delivery(
                        self.path, {k.lower(): v for k, v in self.headers.items()}, body, status,
                        time.monotonic()))
                    outer.cond.notify_all()
                reply = b"ok" if status == 200 else b"try again later"
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/services/T0/B0/hook"

    def snapshot(self):
        with self.cond:
            return list(self.deliveries)

    def wait_for(self, pred, timeout=10.0, what="a webhook delivery"):
        """The first delivery for which pred(delivery) is true (waits up to timeout)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for d in self.deliveries:
                    if pred(d):
                        return d
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"timed out after {timeout}s waiting for {what}; received: "
                        f"{self.deliveries!r}")
                self.cond.wait(left)

    def close(self):
        self.server.shutdown()
        self.server.server_close()
