"""A fault-injecting HTTP reverse proxy for tests: put it between a client and an S3 endpoint (moto's
server) and make the endpoint throttle, error or vanish on demand.

Every request (method, path and query, headers, body) is forwarded to the upstream endpoint and its
response relayed, unless a fault is armed::

    with FaultProxy(s3_endpoint) as proxy:
        proxy.fail(5, status=503, code="SlowDown")  # the next 5 requests get an S3 error
        proxy.down()  # every request fails until proxy.up() (or proxy.outage(seconds))
        proxy.down_after(3)  # forward 3 more requests, then fail everything
        proxy.failed, proxy.forwarded, proxy.log  # what happened

The original ``Host`` header is forwarded unchanged: SigV4 signs it, and moto (which does not check
signatures unless told to) answers path-style requests whatever their host. Bound to 127.0.0.1 only.
"""

from __future__ import annotations

import http.client
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}
MESSAGES = {
    "SlowDown": "Please reduce your request rate.",
    "ServiceUnavailable": "Service is unable to handle request.",
    "InternalError": "We encountered an internal error. Please try again.",
}


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # with the query string
    outcome: str  # "forwarded", "failed" or "reset"
    status: int | None  # what the client got (None: connection closed without an answer)
    at: float  # time.monotonic() when it was answered


Match = Callable[[str, str], bool]


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up (a killed process) is not an error of the proxy's."""
        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            super().handle_error(request, client_address)  # (method, path) -> whether a fault applies to this request


class FaultProxy:
    """A reverse proxy in front of ``upstream`` (``http://host:port``) on 127.0.0.1, in a thread."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"upstream must be http://host:port, got {upstream}")
        self.upstream = (parts.hostname, parts.port)
        self._lock = threading.Lock()
        self._burst: list[list[Any]] = []  # [remaining, status, code, match] of each armed burst
        self._down: tuple[int, str, bool] | None = None  # (status, code, reset) while down
        self._down_until: float | None = None
        self._down_after: list[Any] | None = None  # [remaining forwards, match, status, code]
        self.log: list[Request] = []
        self._server = _Server(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="s3-fault-proxy", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ control
    def fail(self, count: int, status: int = 503, code: str = "SlowDown", match: Match | None = None) -> None:
        """The next ``count`` requests (those ``match(method, path)`` accepts) get an S3 error."""
        with self._lock:
            self._burst.append([count, status, code, match])

    def down(self, status: int = 503, code: str = "ServiceUnavailable", reset: bool = False) -> None:
        """Every request fails until :meth:`up`: with an S3 error, or (``reset``) the connection is
        closed without an answer, as when the endpoint's process is gone mid-request."""
        with self._lock:
            self._down, self._down_until, self._down_after = (status, code, reset), None, None

    def outage(self, seconds: float, status: int = 503, code: str = "ServiceUnavailable") -> None:
        """Down for ``seconds`` from now, then up again by itself."""
        with self._lock:
            self._down, self._down_until = (status, code, False), time.monotonic() + seconds

    def down_after(
        self, forwards: int, match: Match | None = None, status: int = 503, code: str = "ServiceUnavailable"
    ) -> None:
        """Forward ``forwards`` more requests (counting those ``match`` accepts), then go down."""
        with self._lock:
            self._down_after = [forwards, match, status, code]

    def up(self) -> None:
        with self._lock:
            self._down, self._down_until, self._down_after, self._burst = None, None, None, []

    def reset_counts(self) -> None:
        with self._lock:
            self.log = []

    @property
    def failed(self) -> int:
        return sum(1 for r in self.log if r.outcome != "forwarded")

    @property
    def forwarded(self) -> int:
        return sum(1 for r in self.log if r.outcome == "forwarded")

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ decisions
    def _decide(self, method: str, path: str) -> tuple[int, str, bool] | None:
        """The fault for this request (status, code, reset), or None to forward it."""
        with self._lock:
            if self._down_until is not None and time.monotonic() >= self._down_until:
                self._down, self._down_until = None, None
            if self._down is not None:
                return self._down
            for burst in self._burst:
                remaining, status, code, match = burst
                if remaining > 0 and (match is None or match(method, path)):
                    burst[0] -= 1
                    return status, code, False
            if self._down_after is not None:
                remaining, match, status, code = self._down_after
                if match is None or match(method, path):
                    if remaining <= 0:
                        self._down, self._down_after = (status, code, False), None
                        return self._down
                    self._down_after[0] -= 1
            return None

    def _record(self, method: str, path: str, outcome: str, status: int | None) -> None:
        with self._lock:
            self.log.append(Request(method, path, outcome, status, time.monotonic()))


def _error_body(code: str, path: str) -> bytes:
    message = MESSAGES.get(code, code)
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
        f"<Resource>{path.split('?', 1)[0]}</Resource><RequestId>{uuid.uuid4().hex[:16]}</RequestId></Error>"
    ).encode()


def _handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, and "Expect: 100-continue" answered before the body

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _body(self) -> bytes:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                chunks: list[bytes] = []
                while True:
                    size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                            pass
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _handle(self) -> None:
            # The body is always read whole, even for a request that fails: the connection stays usable.
            body = self._body()
            fault = proxy._decide(self.command, self.path)
            if fault is not None:
                status, code, reset = fault
                if reset:
                    proxy._record(self.command, self.path, "reset", None)
                    self.close_connection = True
                    return
                data = b"" if self.command == "HEAD" else _error_body(code, self.path)
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if data:
                    self.wfile.write(data)
                proxy._record(self.command, self.path, "failed", status)
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            headers.pop("Expect", None)  # already answered by this server
            if body or self.command in ("PUT", "POST"):
                headers["Content-Length"] = str(len(body))
            conn = http.client.HTTPConnection(*proxy.upstream, timeout=120)
            try:
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for key, value in headers.items():
                    conn.putheader(key, value)
                conn.endheaders(body or None)
                response = conn.getresponse()
                data = response.read()
                self.send_response_only(response.status, response.reason)
                for key, value in response.getheaders():
                    if key.lower() not in HOP_BY_HOP:
                        self.send_header(key, value)
                if response.getheader("Content-Length") is None and self.command != "HEAD":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD" and data:
                    self.wfile.write(data)
            finally:
                conn.close()
            proxy._record(self.command, self.path, "forwarded", response.status)

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

    return Handler
