"""A fault-injecting HTTP proxy in front of the lab's SeaweedFS (a test tool, not a mock).

Requests go to the real S3 service; a seeded share of them is sabotaged on the way the way a
flaky network or an overloaded store would: a 503 SlowDown answer, a connection reset before
any answer, a stall longer than the client's read timeout, or a response body cut short.
The Host header is passed through unchanged, so SigV4 signatures stay valid.
"""

from __future__ import annotations

import http.client
import random
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAULTS = ("503", "reset", "stall", "truncate")


class FaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int, *, rate: float = 0.2, seed: int = 1,
                 faults: tuple[str, ...] = FAULTS, stall_s: float = 3.0):
        self.upstream = (upstream_host, upstream_port)
        self.rate, self.faults, self.stall_s = rate, faults, stall_s
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.injected: dict[str, int] = {f: 0 for f in FAULTS}
        self.requests = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                fault = proxy._pick()
                if fault == "503":
                    msg = b"<Error><Code>SlowDown</Code><Message>injected</Message></Error>"
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(msg)))
                    self.end_headers()
                    if self.command != "HEAD":  # a body after a HEAD answer would poison the next response
                        self.wfile.write(msg)
                    return
                if fault == "reset":
                    self._reset()
                    return
                if fault == "stall":
                    time.sleep(proxy.stall_s)
                    self._reset()
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("expect", "connection")}
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("content-length", "connection", "transfer-encoding"):
                        self.send_header(k, v)
                # A HEAD answer keeps upstream's length (of the body it does not send).
                length = resp.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(data))
                self.send_header("Content-Length", length)
                self.end_headers()
                if fault == "truncate" and len(data) > 16 and self.command == "GET":
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self._reset()
                    return
                self.wfile.write(data)

            def _reset(self) -> None:
                self.close_connection = True
                try:
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address) -> None:
                pass  # clients hang up on purpose here (timeouts); not worth a traceback

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _pick(self) -> str | None:
        with self.lock:
            self.requests += 1
            if self.rng.random() >= self.rate:
                return None
            fault = self.rng.choice(self.faults)
            self.injected[fault] += 1
            return fault

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
