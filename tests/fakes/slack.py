"""A local fake of the Slack Web API and incoming webhooks, for slack-sdk pointed at it over real HTTP.

Speaks the wire protocol slack-sdk uses: ``POST /api/<method>`` with a form or JSON body and an
``Authorization: Bearer`` header, answered with ``{"ok": ...}`` JSON; ``POST /services/...`` for
incoming webhooks, answered with the text ``ok``. Modelled on slackapi/python-slack-sdk's
``tests/mock_web_api_server``. Binds 127.0.0.1 on a free port; every request is recorded.

    with FakeSlack() as slack:
        client = WebClient(token=slack.token, base_url=slack.base_url)
        slack.rate_limit(1, retry_after=1)   # next call answers 429
        ...
        assert slack.calls("chat.postMessage")[0].body["channel"] == "#retire"
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

DEFAULT_TOKEN = "xoxb-111111111111-2222222222222-FakeSlackBotToken0"
WEBHOOK_PATH = "/services/T00000000/B00000000/FakeWebhookSecret0000000"
_FIRST_TS_MICROS = 1_700_000_000_000_100

# Status codes Slack's incoming webhooks answer for an error string.
_WEBHOOK_ERROR_STATUS = {
    "invalid_token": 403,
    "action_prohibited": 403,
    "channel_is_archived": 410,
    "channel_not_found": 404,
    "no_service": 404,
    "no_text": 400,
    "invalid_payload": 400,
}


@dataclass
class Recorded:
    """One request the fake received."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    """The decoded body: a dict for JSON and form bodies (form values as strings), else the text."""

    @property
    def api_method(self) -> str:
        """The Web API method name (``chat.postMessage``), or the path for other requests."""
        return self.path.split("?", 1)[0].removeprefix("/api/")


@dataclass
class _Modes:
    rate_limited: int = 0
    retry_after: int = 1
    failing: int = 0
    fail_status: int = 500
    error: str | None = None
    error_times: int | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)


class FakeSlack:
    """A Slack Web API and incoming webhook server on 127.0.0.1, in a thread.

    Args:
        token: the bot token the server accepts; any other answers ``invalid_auth``.
    """

    def __init__(self, token: str = DEFAULT_TOKEN) -> None:
        self.token = token
        self.requests: list[Recorded] = []
        self._modes = _Modes()
        self._lock = threading.Lock()
        self._ts = _FIRST_TS_MICROS
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> FakeSlack:
        """Bind a free port on 127.0.0.1 and serve in a daemon thread."""
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        server.daemon_threads = True
        self._server = server
        self._port = server.server_address[1]
        # A short poll interval keeps stop() quick; the default 0.5 s adds that much to every test.
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-slack", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket; later connections are refused."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def down(self) -> None:
        """Close the listening socket, as if Slack were unreachable: connections are refused."""
        self.stop()

    def __enter__(self) -> FakeSlack:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """Base URL for ``WebClient(base_url=...)`` and ``RETIRE_SLACK_BASE_URL``."""
        return f"http://127.0.0.1:{self._require_port()}/api/"

    @property
    def webhook_url(self) -> str:
        """The incoming webhook URL this server accepts."""
        return f"http://127.0.0.1:{self._require_port()}{WEBHOOK_PATH}"

    def _require_port(self) -> int:
        if self._port is None:
            raise RuntimeError("FakeSlack is not started")
        return self._port

    # -- modes -----------------------------------------------------------------------------

    def rate_limit(self, n: int, retry_after: int = 1) -> None:
        """The next ``n`` requests answer 429 with ``Retry-After: retry_after``."""
        with self._lock:
            self._modes.rate_limited = n
            self._modes.retry_after = retry_after

    def fail(self, n: int, status: int = 500) -> None:
        """The next ``n`` requests answer ``status`` (a 5xx, as when Slack has an incident)."""
        with self._lock:
            self._modes.failing = n
            self._modes.fail_status = status

    def error(self, code: str, times: int | None = None) -> None:
        """Requests answer Slack error ``code`` (``{"ok": false, "error": code}``), ``times`` times or until clear()."""
        with self._lock:
            self._modes.error = code
            self._modes.error_times = times

    def clear(self) -> None:
        """Back to answering normally; recorded requests are kept."""
        with self._lock:
            messages = self._modes.messages
            self._modes = _Modes(messages=messages)

    # -- what was received -----------------------------------------------------------------

    def calls(self, api_method: str | None = None) -> list[Recorded]:
        """Recorded Web API requests, all or those to ``api_method`` (e.g. ``chat.postMessage``)."""
        with self._lock:
            return [r for r in self.requests if api_method is None or r.api_method == api_method]

    def webhook_calls(self) -> list[Recorded]:
        """Recorded requests to the incoming webhook path."""
        with self._lock:
            return [r for r in self.requests if r.path.startswith("/services/")]

    @property
    def messages(self) -> list[dict[str, Any]]:
        """Messages successfully posted (``chat.postMessage`` arguments plus the ``ts`` given)."""
        with self._lock:
            return list(self._modes.messages)

    # -- request handling (server threads) -------------------------------------------------

    def _record(self, recorded: Recorded) -> None:
        with self._lock:
            self.requests.append(recorded)

    def _next_fault(self) -> tuple[int, dict[str, str], str] | None:
        """The canned failure for this request, if a mode asks for one: (status, headers, error code)."""
        with self._lock:
            modes = self._modes
            if modes.rate_limited > 0:
                modes.rate_limited -= 1
                return 429, {"Retry-After": str(modes.retry_after)}, "ratelimited"
            if modes.failing > 0:
                modes.failing -= 1
                return modes.fail_status, {}, "fatal_error"
            if modes.error is not None:
                code = modes.error
                if modes.error_times is not None:
                    modes.error_times -= 1
                    if modes.error_times <= 0:
                        modes.error, modes.error_times = None, None
                return 200, {}, code
        return None

    def _next_ts(self) -> str:
        with self._lock:
            self._ts += 100
            micros = self._ts
        return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"

    def _save(self, message: dict[str, Any]) -> None:
        with self._lock:
            self._modes.messages.append(message)


def _decode(content_type: str, raw: bytes) -> Any:
    text = raw.decode("utf-8", errors="replace")
    if content_type.startswith("application/json"):
        try:
            return json.loads(text or "{}")
        except json.JSONDecodeError:
            return text
    if content_type.startswith("application/x-www-form-urlencoded"):
        return {k: v[-1] for k, v in parse_qs(text, keep_blank_values=True).items()}
    return text


def _handler_for(fake: FakeSlack) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # keep test output free of access lines
            pass

        def _send(self, status: int, body: str, content_type: str, headers: dict[str, str] | None = None) -> None:
            data = body.encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def _json(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
            self._send(status, json.dumps(payload), "application/json; charset=utf-8", headers)

        def do_GET(self) -> None:
            self._handle()

        def do_POST(self) -> None:
            self._handle()

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            content_type = self.headers.get("Content-Type", "")
            body = _decode(content_type, raw)
            url = urlsplit(self.path)
            if url.query and isinstance(body, dict):
                body = {**{k: v[-1] for k, v in parse_qs(url.query).items()}, **body}
            fake._record(Recorded(self.command, self.path, dict(self.headers.items()), body))
            if url.path.startswith("/services/"):
                self._webhook(url.path, body)
            elif url.path.startswith("/api/"):
                self._api(url.path.removeprefix("/api/"), body)
            else:
                self._send(404, "Not Found", "text/plain")

        def _webhook(self, path: str, body: Any) -> None:
            if path != WEBHOOK_PATH:
                self._send(404, "no_service", "text/plain")
                return
            fault = fake._next_fault()
            if fault is not None:
                status, headers, code = fault
                if status == 200:
                    status = _WEBHOOK_ERROR_STATUS.get(code, 400)
                self._send(status, code, "text/plain", headers)
                return
            if not isinstance(body, dict) or not (body.get("text") or body.get("blocks")):
                self._send(400, "no_text", "text/plain")
                return
            fake._save({**body, "webhook": True})
            self._send(200, "ok", "text/plain")

        def _api(self, method: str, body: Any) -> None:
            args: dict[str, Any] = body if isinstance(body, dict) else {}
            auth = self.headers.get("Authorization", "")
            if not auth.startswith("Bearer "):
                token = str(args.get("token", ""))
                if not token:
                    self._json(200, {"ok": False, "error": "not_authed"})
                    return
            else:
                token = auth.removeprefix("Bearer ")
            if token != fake.token:
                self._json(200, {"ok": False, "error": "invalid_auth"})
                return
            fault = fake._next_fault()
            if fault is not None:
                status, headers, code = fault
                self._json(status, {"ok": False, "error": code}, headers)
                return
            if method == "auth.test":
                self._json(
                    200,
                    {
                        "ok": True,
                        "url": "https://fake-workspace.slack.com/",
                        "team": "Fake Workspace",
                        "user": "retirement-bot",
                        "team_id": "T00000000",
                        "user_id": "U00000000",
                        "bot_id": "B00000000",
                    },
                )
            elif method == "chat.postMessage":
                self._post_message(args)
            else:
                self._json(200, {"ok": False, "error": "unknown_method"})

        def _post_message(self, args: dict[str, Any]) -> None:
            if not args.get("channel"):
                self._json(200, {"ok": False, "error": "channel_not_found"})
                return
            if not (args.get("text") or args.get("blocks")):
                self._json(200, {"ok": False, "error": "no_text"})
                return
            ts = fake._next_ts()
            message = {**args, "ts": ts}
            fake._save(message)
            reply: dict[str, Any] = {"type": "message", "text": args.get("text", ""), "user": "U00000000", "ts": ts}
            if args.get("thread_ts"):
                reply["thread_ts"] = args["thread_ts"]
            self._json(200, {"ok": True, "channel": "C00000000", "ts": ts, "message": reply})

    return Handler


__all__ = ["DEFAULT_TOKEN", "FakeSlack", "Recorded"]
