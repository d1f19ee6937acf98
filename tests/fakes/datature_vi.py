"""A stateful fake of the Datature Vi API over real HTTP (stdlib ThreadingHTTPServer on 127.0.0.1).

It speaks the shapes of PLATFORMS.md and answers what vi-sdk 0.1.0b7 sends and decodes: every API
call carries ``Authorization: Bearer`` and ``Organization-Id`` (``SecretKeyAuth.get_headers``);
runs; paginated outputs ({nextPage, prevPage, items} with ``p``/``s``, ``intent=sdkLocalDeploy``);
one checkpoint at ``.../outputs/{ckpt}?intent=sdkLocalDeploy&contents=y`` answered as a page whose
last item is the checkpoint (``Model.get`` decodes ``Pagination[Model]`` and takes ``items[-1]``),
booleans as ``y``/``n`` (the SDK's link builder); signed download URLs that serve the weights and
refuse any Authorization header; deployments (GET/PATCH/DELETE, list), live statistics, and DELETE of
a run (then 404). Errors carry ``{"error": "<ViError>", "message": "..."}``.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

ORG = "org-test"
KEY = "dtvi_" + "fake-secret-key-0123456789".ljust(98, "x")  # vi-sdk accepts only dtvi_ keys of 103 characters


@dataclass
class FakeVi:
    """The fake's state; ``requests`` records (method, path) of every call."""

    runs: dict[str, dict[str, bytes]] = field(default_factory=dict)
    deployments: dict[str, dict[str, Any]] = field(default_factory=dict)
    rps: dict[str, float] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    signed: dict[str, tuple[str, str]] = field(default_factory=dict)
    base_url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_run(self, run_id: str, checkpoints: dict[str, bytes]) -> None:
        self.runs[run_id] = dict(checkpoints)

    def add_deployment(self, dep_id: str, run_id: str, ckpt: str) -> None:
        self.deployments[dep_id] = {"id": dep_id, "name": f"{dep_id}-name", "spec": {"runId": run_id, "ckpt": ckpt}}
        self.rps[dep_id] = 0.0


def _output(run_id: str, ckpt: str, index: int) -> dict[str, Any]:
    """One run output with every field vi-sdk's ``Model`` decodes (camelCase, times in milliseconds)."""
    created = 1_735_689_600_000 + index * 86_400_000  # 2025-01-01 plus a day per checkpoint
    return {
        "kind": "RunOutput",
        "runId": run_id,
        "runOutputId": ckpt,
        "workspaceId": ORG,
        "metadata": {"timeCreated": created, "lastUpdated": created, "generation": 1, "attributes": {}},
        "spec": {"kind": "ModelSpec", "epoch": index + 1, "evaluationMetrics": {"loss": 1.0 / (index + 1)}},
        "status": {
            "observedGeneration": 1,
            "conditions": [{"type": "Ready", "status": "True"}],
            "storageObject": f"objects/{ckpt}",
        },
        "selfLink": f"/workspaces/{ORG}/runs/{run_id}/outputs/{ckpt}",
        "etag": f"etag-{ckpt}",
    }


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, kind: str, message: str) -> None:
        self._send(status, {"error": kind, "message": message})

    def _handle(self, method: str) -> None:
        vi = self.server.vi
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        parts = [p for p in url.path.split("/") if p]
        with vi.lock:
            vi.requests.append((method, url.path))
        if parts[:1] == ["signed"] and method in ("GET", "HEAD"):
            self._download(parts, query, body=method == "GET")
            return
        if self.headers.get("Authorization") != f"Bearer {KEY}":
            self._error(401, "ViAuthenticationError", "Invalid secret key")
            return
        if parts[:2] != ["workspaces", ORG]:
            self._error(403, "ViAuthenticationError", "No access to this organization")
            return
        if self.headers.get("Organization-Id") != ORG:
            self._error(403, "ViAuthenticationError", "Organization-Id header missing or not this organization")
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        with vi.lock:
            self._route(method, parts[2:], query, body)

    def _page(self, items: list[Any], query: dict[str, str]) -> None:
        size = int(query.get("s", "20"))
        start = int(query.get("p", "0"))
        nxt = str(start + size) if start + size < len(items) else None
        self._send(200, {"items": items[start : start + size], "nextPage": nxt, "prevPage": str(start) or None})

    def _route(self, method: str, parts: list[str], query: dict[str, str], body: Any) -> None:
        vi = self.server.vi
        if parts[:1] == ["runs"]:
            if len(parts) == 1 and method == "GET":
                self._page([{"runId": r, "kind": "Run"} for r in vi.runs], query)
                return
            run_id = parts[1]
            if run_id not in vi.runs:
                self._error(404, "ViNotFoundError", f"Run {run_id} not found")
                return
            ckpts = vi.runs[run_id]
            if len(parts) == 2 and method == "GET":
                self._send(200, {"kind": "Run", "runId": run_id, "metadata": {"createTime": "2025-01-01T00:00:00Z"}})
            elif len(parts) == 2 and method == "DELETE":
                del vi.runs[run_id]
                self._send(200, {"data": ""})
            elif len(parts) == 3 and parts[2] == "outputs" and method == "GET":
                # vi-sdk's list sends its page parameters as httpx params, which replace the link's intent.
                if query.get("intent", "sdkLocalDeploy") != "sdkLocalDeploy":
                    self._error(400, "ViValidationError", "intent must be sdkLocalDeploy")
                    return
                self._page([_output(run_id, c, i) for i, c in enumerate(ckpts)], query)
            elif len(parts) == 4 and parts[2] == "outputs" and method == "GET":
                ckpt = parts[3]
                if query.get("intent", "sdkLocalDeploy") != "sdkLocalDeploy" or query.get("contents", "n") not in "yn":
                    self._error(400, "ViValidationError", "intent must be sdkLocalDeploy and contents y or n")
                    return
                if ckpt not in ckpts:
                    self._error(404, "ViNotFoundError", f"Checkpoint {ckpt} not found")
                    return
                doc = _output(run_id, ckpt, list(ckpts).index(ckpt))
                if query.get("contents") == "y":
                    token = secrets.token_hex(8)
                    vi.signed[token] = (run_id, ckpt)
                    url = f"{vi.base_url}/signed/{token}/{ckpt}.zip?X-Signature=sig{token}"
                    expires = 4_102_444_800  # the SDK's ModelDownloadUrl needs url and expiresAt
                    doc["status"]["contents"] = {
                        "downloadUrl": {"url": url, "expiresAt": expires},
                        "fileSize": len(ckpts[ckpt]),
                    }
                self._send(200, {"items": [doc], "nextPage": None, "prevPage": None})
            else:
                self._error(404, "ViNotFoundError", "No such route")
            return
        if parts[:1] == ["deployments"]:
            if len(parts) == 1 and method == "GET":
                self._page(list(vi.deployments.values()), query)
                return
            dep = vi.deployments.get(parts[1])
            if dep is None:
                self._error(404, "ViNotFoundError", f"Deployment {parts[1]} not found")
            elif len(parts) == 2 and method == "GET":
                self._send(200, dep)
            elif len(parts) == 2 and method in ("PATCH", "PUT"):
                spec = (body or {}).get("spec") or {}
                if spec.get("runId") not in vi.runs or spec.get("ckpt") not in vi.runs[spec["runId"]]:
                    self._error(400, "ViValidationError", "spec must name an existing runId and ckpt")
                    return
                dep["spec"] = {"runId": spec["runId"], "ckpt": spec["ckpt"]}
                self._send(200, dep)
            elif len(parts) == 2 and method == "DELETE":
                del vi.deployments[parts[1]]
                self._send(200, {"data": ""})
            elif len(parts) == 3 and parts[2] == "statistics" and method == "GET":
                self._send(200, {"requestsPerSecond": vi.rps.get(parts[1], 0.0), "latency": 12.5, "replicas": 1})
            else:
                self._error(404, "ViNotFoundError", "No such route")
            return
        self._error(404, "ViNotFoundError", "No such route")

    def _download(self, parts: list[str], query: dict[str, str], *, body: bool = True) -> None:
        """A signed URL: GET serves the weights; HEAD (vi-sdk asks it first for the size) their headers."""
        vi = self.server.vi
        if self.headers.get("Authorization"):
            self._error(400, "InvalidArgument", "Only one auth mechanism allowed")
            return
        target = vi.signed.get(parts[1]) if len(parts) > 1 else None
        if target is None or query.get("X-Signature") != f"sig{parts[1]}" or target[0] not in vi.runs:
            self._error(403, "AccessDenied", "Signature does not match")
            return
        data = vi.runs[target[0]][target[1]]
        self.send_response(200)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_HEAD(self) -> None:
        self._handle("HEAD")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, vi: FakeVi) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.vi = vi


@pytest.fixture
def fake_vi() -> Iterator[FakeVi]:
    """A running fake Vi API on 127.0.0.1 (free port), stopped after the test."""
    vi = FakeVi()
    server = _Server(vi)
    vi.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield vi
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
