"""A stateful fake of the Replicate HTTP API over real HTTP on 127.0.0.1, plus the small server it runs on.

It speaks the documented shapes (specs/replicate-openapi.json): ``{next, previous, results}`` pages,
models (``GET /models`` lists public models only), versions, deployments with ``current_release``,
predictions and trainings of the token's account, RFC 7807 problem+json errors. It keeps Replicate's
deletion rules: only the owner's private models and versions, no version a deployment runs or a
training started from, no model that still has versions. A version delete answers 202 and the version
is gone at the next read.
"""

from __future__ import annotations

import json
import secrets
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

TOKEN = "r8_fake_token_0123456789"
ACCOUNT = "acme"

Reply = tuple[int, Any]
"""(status, body): a dict or list is sent as JSON, bytes as a file, None as an empty body."""


@dataclass
class Call:
    """One request a fake received."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


class HttpFake:
    """A fake API on 127.0.0.1 at a free port, in a thread; subclasses answer in ``route``.

    Every request is recorded in ``calls`` (under ``lock``, which ``route`` also runs under).
    """

    error_type = "application/json"

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        assert self._server is not None, "the fake is not running"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def route(self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str], body: Any) -> Reply:
        raise NotImplementedError

    def calls_of(self, method: str, prefix: str = "") -> list[Call]:
        """The recorded calls with this method whose path starts with ``prefix``."""
        return [c for c in self.calls if c.method == method and c.path.startswith(prefix)]

    def handle(self, method: str, target: str, headers: dict[str, str], raw: bytes) -> tuple[int, bytes, str]:
        parts = urlsplit(target)
        query = parse_qs(parts.query, keep_blank_values=True)
        lowered = {k.lower(): v for k, v in headers.items()}
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
        with self.lock:
            self.calls.append(Call(method, parts.path, query, lowered, body))
            status, answer = self.route(method, parts.path, query, lowered, body)
        if answer is None:
            return status, b"", "application/json"
        if isinstance(answer, bytes):
            return status, answer, "application/octet-stream"
        return status, json.dumps(answer).encode(), self.error_type if status >= 400 else "application/json"

    def __enter__(self) -> Self:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                status, data, kind = fake.handle(self.command, self.path, dict(self.headers.items()), raw)
                self.send_response(status)
                self.send_header("content-type", kind)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _answer

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: ``calls`` records every request."""

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _problem(status: int, title: str, detail: str) -> Reply:
    return status, {"type": "about:blank", "title": title, "status": status, "detail": detail}


@dataclass
class _Model:
    owner: str
    name: str
    visibility: str
    versions: dict[str, dict[str, Any]] = field(default_factory=dict)

    def document(self) -> dict[str, Any]:
        latest = list(self.versions.values())[-1] if self.versions else None
        return {
            "url": f"https://replicate.com/{self.owner}/{self.name}",
            "owner": self.owner,
            "name": self.name,
            "description": f"{self.name} by {self.owner}",
            "visibility": self.visibility,
            "github_url": None,
            "paper_url": None,
            "license_url": None,
            "run_count": 42,
            "cover_image_url": None,
            "default_example": None,
            "latest_version": latest,
        }


class ReplicateApi(HttpFake):
    """Replicate's API for one account (``ACCOUNT``, token ``TOKEN``), under ``/v1``."""

    error_type = "application/problem+json"

    def __init__(self) -> None:
        super().__init__()
        self.models: dict[str, _Model] = {}
        self.deployments: dict[str, dict[str, Any]] = {}
        self.predictions: list[dict[str, Any]] = []
        self.trainings: list[dict[str, Any]] = []

    # -- seeding ------------------------------------------------------------------------------

    def add_model(self, slug: str, visibility: str = "private") -> None:
        owner, name = slug.split("/")
        self.models[slug] = _Model(owner, name, visibility)

    def add_version(self, slug: str) -> str:
        """A new version of ``slug``; returns its id."""
        vid = secrets.token_hex(32)
        self.models[slug].versions[vid] = {
            "id": vid,
            "created_at": _iso(datetime(2025, 1, 1 + len(self.models[slug].versions), tzinfo=UTC)),
            "cog_version": "0.9.4",
            "openapi_schema": {"openapi": "3.0.2", "components": {"schemas": {"Input": {"type": "object"}}}},
        }
        return vid

    def add_deployment(self, slug: str, model: str, version: str) -> None:
        owner, name = slug.split("/")
        self.deployments[slug] = {
            "owner": owner,
            "name": name,
            "current_release": {
                "number": 1,
                "model": model,
                "version": version,
                "created_at": _iso(datetime(2025, 1, 1, tzinfo=UTC)),
                "created_by": {"type": "organization", "username": owner},
                "configuration": {"hardware": "gpu-t4", "min_instances": 1, "max_instances": 2},
            },
        }

    def add_prediction(self, model: str, version: str, at: datetime, status: str = "succeeded") -> None:
        self.predictions.append(
            {
                "id": secrets.token_hex(10),
                "model": model,
                "version": version,
                "status": status,
                "source": "api",
                "created_at": _iso(at),
            }
        )

    def add_training(self, model: str, version: str, destination: str) -> None:
        self.trainings.append(
            {"id": secrets.token_hex(10), "model": model, "version": version, "status": "succeeded",
             "destination": destination, "created_at": _iso(datetime(2025, 2, 1, tzinfo=UTC))}
        )  # fmt: skip

    # -- answers ------------------------------------------------------------------------------

    def _page(self, items: list[Any]) -> Reply:
        return 200, {"next": None, "previous": None, "results": items}

    def route(self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str], body: Any) -> Reply:
        if headers.get("authorization") != f"Bearer {TOKEN}":
            return _problem(401, "Unauthenticated", "You did not pass a valid authentication token")
        parts = [p for p in path.split("/") if p]
        if parts[:1] != ["v1"]:
            return _problem(404, "Not found", "The requested resource could not be found.")
        parts = parts[1:]
        if parts == ["account"] and method == "GET":
            return 200, {"type": "organization", "username": ACCOUNT, "name": "Acme", "github_url": None}
        if parts == ["models"] and method == "GET":
            return self._page([m.document() for m in self.models.values() if m.visibility == "public"])
        if parts[:1] == ["models"] and len(parts) >= 3:
            return self._models(method, parts[1:])
        if parts[:1] == ["deployments"]:
            return self._deployments(method, parts[1:], body)
        if parts == ["predictions"] and method == "GET":
            after = query.get("created_after", [""])[0]
            before = query.get("created_before", [""])[0]
            found = [p for p in self.predictions if (not after or p["created_at"] >= after)]
            return self._page([p for p in found if not before or p["created_at"] < before])
        if parts == ["trainings"] and method == "GET":
            return self._page(list(self.trainings))
        return _problem(404, "Not found", "The requested resource could not be found.")

    def _models(self, method: str, parts: list[str]) -> Reply:
        slug = f"{parts[0]}/{parts[1]}"
        model = self.models.get(slug)
        if model is None:
            return _problem(404, "Not found", f"Model {slug} does not exist")
        if len(parts) == 2 and method == "GET":
            return 200, model.document()
        if len(parts) == 2 and method == "DELETE":
            if model.owner != ACCOUNT or model.visibility != "private":
                return _problem(403, "Forbidden", "You can only delete private models you own")
            if model.versions:
                return _problem(409, "Conflict", "You can only delete models that have no versions")
            del self.models[slug]
            return 204, None
        if len(parts) == 3 and parts[2] == "versions" and method == "GET":
            return self._page(list(reversed(model.versions.values())))
        if len(parts) == 4 and parts[2] == "versions":
            version = model.versions.get(parts[3])
            if version is None:
                return _problem(404, "Not found", f"Version {parts[3]} of {slug} does not exist")
            if method == "GET":
                return 200, version
            if method == "DELETE":
                return self._delete_version(model, slug, parts[3])
        return _problem(405, "Method not allowed", f"{method} is not allowed here")

    def _delete_version(self, model: _Model, slug: str, vid: str) -> Reply:
        if model.owner != ACCOUNT or model.visibility != "private":
            return _problem(403, "Forbidden", "You can only delete versions of private models you own")
        for dep in self.deployments.values():
            if dep["current_release"]["version"] == vid:
                return _problem(409, "Conflict", f"Version is used by deployment {dep['owner']}/{dep['name']}")
        if any(t["version"] == vid for t in self.trainings):
            return _problem(409, "Conflict", "Version is the base of a fine-tune")
        del model.versions[vid]
        return 202, None

    def _deployments(self, method: str, parts: list[str], body: Any) -> Reply:
        if not parts and method == "GET":
            return self._page(list(self.deployments.values()))
        slug = "/".join(parts[:2])
        dep = self.deployments.get(slug)
        if dep is None or len(parts) < 2:
            return _problem(404, "Not found", f"Deployment {slug} does not exist")
        if len(parts) == 2 and method == "GET":
            return 200, dep
        if len(parts) == 2 and method == "PATCH":
            version = (body or {}).get("version")
            release = dep["current_release"]
            model = self.models.get(release["model"])
            if model is None or version not in model.versions:
                return _problem(422, "Invalid version", f"{version!r} is not a version of {release['model']}")
            release.update(number=release["number"] + 1, version=version)
            return 200, dep
        if len(parts) == 3 and parts[2] == "predictions" and method == "POST":
            release = dep["current_release"]
            now = datetime.now(UTC)
            self.add_prediction(release["model"], release["version"], now)
            return 201, {**self.predictions[-1], "input": (body or {}).get("input"), "output": "ok", "error": None}
        return _problem(405, "Method not allowed", f"{method} is not allowed here")


__all__ = ["ACCOUNT", "TOKEN", "Call", "HttpFake", "ReplicateApi", "Reply"]
