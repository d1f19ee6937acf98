"""A platform that refuses everything and echoes what it was sent: the worst case for an error path.

Some servers and proxies answer an error with the request they got (method, URL with its query
string, headers, body). Every request here is answered with the chosen status and that echo:
as plain text for a 4xx, inside every JSON error shape the adapters read for a 5xx (with a short
Retry-After, so retries do not slow the tests down). Binds 127.0.0.1 on a free port.
"""

from __future__ import annotations

import contextlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs


class EchoServer:
    """Answers every request with ``status`` and the request echoed back; records the raw requests."""

    def __init__(self, status: int = 401) -> None:
        self.status = status
        self.received: list[bytes] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("EchoServer is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> EchoServer:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        server.daemon_threads = True
        self._server = server
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def __enter__(self) -> EchoServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def answer(self, raw_request: bytes, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            self.received.append(raw_request + body)
            status = self.status
        echo = raw_request.decode("utf-8", "replace") + body.decode("utf-8", "replace")
        if status < 500:
            return status, {"Content-Type": "text/plain"}, f"request refused\n{echo}".encode()
        sent: Any = body.decode("utf-8", "replace")
        if "form" in headers.get("content-type", ""):
            sent = {k: v[-1] for k, v in parse_qs(sent).items()}
        else:
            with contextlib.suppress(ValueError):
                sent = json.loads(sent) if sent else None
        answer = {
            "error": {"message": echo, "input": sent},
            "message": echo,
            "detail": [{"loc": ["body"], "msg": echo, "input": sent}],
            "request": {"headers": headers, "body": sent},
        }
        return status, {"Content-Type": "application/json", "Retry-After": "0.01"}, json.dumps(answer).encode()


def _handler_for(echo: EchoServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            raw = f"{self.requestline}\r\n{self.headers}".encode()
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, extra, content = echo.answer(raw, body, headers)
            self.send_response(status)
            for name, value in extra.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _any

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the tests read what was received from ``received``."""

    return Handler
