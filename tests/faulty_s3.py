"""A loopback proxy in front of moto's S3 server that fails requests on a fixed, seeded schedule,
as S3 does under many writers: ``503 SlowDown``, ``500 InternalError`` and connections reset
before an answer. A fault comes before the request reaches the store (a rejected request, not a
lost answer), never more than ``max_in_a_row`` times for one request (the SDK's retries are
bounded), and is counted by kind and by what the request was (read, listing, write)."""

from __future__ import annotations

import http.client
import random
import socket
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

ERRORS = {
    503: b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>",
    500: b"<Error><Code>InternalError</Code><Message>We encountered an internal error.</Message></Error>",
}
KINDS = ("slowdown", "internal", "reset")


def request_kind(method: str, path: str) -> str:
    if method in ("PUT", "POST", "DELETE"):
        return "write"
    query = urlsplit(path).query
    if method == "GET" and ("list-type" in query or urlsplit(path).path.count("/") <= 1):
        return "listing"
    return "read"


class FaultyS3:
    def __init__(self, target: str, rate: float = 0.2, seed: int = 0, max_in_a_row: int = 2):
        self.target = urlsplit(target)
        self.rng = random.Random(seed)
        self.rate, self.max_in_a_row = rate, max_in_a_row
        self.down = False  # every request answered 503: a store that stays down
        self.injected: Counter = Counter()  # (fault kind, request kind) -> count
        self.requests: Counter = Counter()
        self.in_a_row: Counter = Counter()
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                body = self._body()
                key = (self.command, self.path)
                kind = request_kind(self.command, self.path)
                with proxy.lock:
                    proxy.requests[kind] += 1
                    fault = None
                    if proxy.down:
                        fault = "slowdown"
                    elif proxy.in_a_row[key] < proxy.max_in_a_row and proxy.rng.random() < proxy.rate:
                        fault = proxy.rng.choice(KINDS)
                    if fault:
                        proxy.in_a_row[key] += 1
                        proxy.injected[(fault, kind)] += 1
                    else:
                        proxy.in_a_row[key] = 0
                if fault == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    self.connection.close()  # RST: the client sees the connection reset by peer
                    self.close_connection = True
                    return
                if fault:
                    status = 503 if fault == "slowdown" else 500
                    self._answer(status, {"Content-Type": "application/xml"}, ERRORS[status])
                    return
                upstream = http.client.HTTPConnection(proxy.target.hostname, proxy.target.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("transfer-encoding", "connection")}
                if body is not None:
                    headers["Content-Length"] = str(len(body))
                upstream.request(self.command, self.path, body=body, headers=headers)
                resp = upstream.getresponse()
                data = resp.read()
                out = {
                    k: v for k, v in resp.getheaders() if k.lower() not in ("transfer-encoding", "connection", "content-length")
                }
                if self.command == "HEAD":
                    out["Content-Length"] = resp.getheader("Content-Length", "0")
                self._answer(resp.status, out, data, head=self.command == "HEAD")
                upstream.close()

            def _body(self) -> bytes | None:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else (b"" if self.command in ("PUT", "POST") else None)

            def _answer(self, status: int, headers: dict, data: bytes, head: bool = False) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                if not head:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if not head:
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any  # noqa: N815

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def options(self, s3_options: dict) -> dict:
        """``s3_options`` (the moto fixture's) pointed at this proxy."""
        return {**s3_options, "client_kwargs": {**s3_options["client_kwargs"], "endpoint_url": self.url}}

    def close(self) -> None:
        self.server.shutdown()
