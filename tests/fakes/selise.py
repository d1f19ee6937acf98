"""A stateful fake of the Selise Blocks API (token, models, agents), over real HTTP or a MockTransport.

It speaks the documented shapes: the token endpoint as Selise's OAuth Token page shows it (a
``multipart/form-data`` body, which the page says it "Must be", with ``grant_type=client_credential``,
``client_id`` and ``client_secret``; anything else is refused), ``GET /models/`` with its
filters and pages (at most 100 a page), ``GET``/``DELETE /models/{id}?project_key=``, ``POST
/agents/queries``, ``GET /agents/query/{id}``, ``POST /agents/update-ai-configurations``; FastAPI 422
``{"detail": [{loc, msg, type}]}`` for bad parameters, 409 when the model is in use, and the rule that
the last model of a project cannot be deleted.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

PROJECT_KEY = "pk-test-project"
CLIENT_ID = "client-1"
CLIENT_SECRET = "client-secret-xyz"
PROVIDERS = {"openai", "azure", "anthropic", "google", "mistral", "deepseek", "custom"}
MODEL_TYPES = {"chat", "embedding", "completion"}
STATUSES = {"valid", "invalid"}
GRANT_TYPE = "client_credential"  # the OAuth Token page's example and table: singular


def multipart_fields(content_type: str, raw: bytes) -> dict[str, str] | None:
    """The text fields of a multipart/form-data body, or None when the body is not multipart/form-data."""
    if not content_type.lower().startswith("multipart/form-data"):
        return None
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + raw
    )
    if not message.is_multipart():
        return None
    fields: dict[str, str] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str):
            payload = part.get_payload(decode=True)
            fields[name] = payload.decode() if isinstance(payload, bytes) else ""
    return fields


def invalid(where: str, name: str, msg: str, kind: str) -> tuple[int, Any]:
    """A FastAPI validation error."""
    return 422, {"detail": [{"loc": [where, name], "msg": msg, "type": kind}]}


@dataclass
class Call:
    """One request the fake received."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


@dataclass
class SeliseState:
    """The project: models, agents, issued tokens, and every request received."""

    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    agents: dict[str, dict[str, Any]] = field(default_factory=dict)
    tokens: set[str] = field(default_factory=set)
    calls: list[Call] = field(default_factory=list)
    busy: set[str] = field(default_factory=set)
    """Models Selise itself considers in use (e.g. by running conversations): DELETE answers 409."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_model(self, model_id: str, name: str, provider: str = "openai", **extra: Any) -> dict[str, Any]:
        record = {
            "_id": model_id,
            "DisplayName": name,
            "ModelName": name,
            "Provider": provider,
            "ModelType": "chat",
            "IsActive": True,
            "Status": "valid",
            "ApiKey": "sk-provider-key-should-be-masked",
            "CreatedDate": "2025-01-01T10:00:00Z",
            "LastUpdatedDate": "2025-02-01T10:00:00Z",
            **extra,
        }
        self.models[model_id] = record
        return record

    def add_agent(self, agent_id: str, name: str, model_id: str) -> dict[str, Any]:
        model = self.models[model_id]
        record = {
            "id": agent_id,
            "name": name,
            "is_disabled": False,
            "is_archived": False,
            "enable_rag": True,
            "rag_config": {"TopK": 5},
            "enable_tools": True,
            "tool_ids": ["tool-1"],
            "llm_config": {
                "Provider": model["Provider"],
                "ModelName": model["ModelName"],
                "ModelId": model_id,
                "Temperature": 0.2,
            },
        }
        self.agents[agent_id] = record
        return record

    def calls_of(self, method: str, prefix: str = "") -> list[Call]:
        return [c for c in self.calls if c.method == method and c.path.startswith(prefix)]

    # -- request handling ---------------------------------------------------------------------

    def handle(self, method: str, url: str, headers: dict[str, str], raw: bytes) -> tuple[int, Any, dict[str, str]]:
        """Answer one request: (status, JSON body, extra headers)."""
        parts = urlsplit(url)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        headers = {k.lower(): v for k, v in headers.items()}
        body: Any = None
        content_type = headers.get("content-type", "")
        if raw:
            if content_type.startswith("multipart/form-data"):
                body = multipart_fields(content_type, raw)
            elif content_type.startswith("application/x-www-form-urlencoded"):
                body = {k: v[-1] for k, v in parse_qs(raw.decode()).items()}
            else:
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = raw.decode("utf-8", "replace")
        with self.lock:
            self.calls.append(Call(method, parts.path, query, headers, body))
            status, answer = self._route(method, parts.path, query, headers, body)
        return status, answer, {}

    def _route(
        self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: Any
    ) -> tuple[int, Any]:
        if headers.get("x-blocks-key") != PROJECT_KEY:
            return 403, {"is_success": False, "detail": "invalid x-blocks-key", "error": {}}
        if path == "/authentication/v1/OAuth/Token" and method == "POST":
            if not headers.get("content-type", "").startswith("multipart/form-data"):
                return 415, {
                    "is_success": False,
                    "detail": f"Content-Type must be multipart/form-data, not {headers.get('content-type')!r}",
                    "error": {},
                }
            form = body if isinstance(body, dict) else {}
            if form.get("grant_type") != GRANT_TYPE:
                return 400, {"error": "unsupported_grant_type", "error_description": f"{form.get('grant_type')!r}"}
            if form.get("client_id") != CLIENT_ID or form.get("client_secret") != CLIENT_SECRET:
                return 401, {"is_success": False, "detail": "invalid client credentials", "error": {}}
            token = secrets.token_hex(8)
            self.tokens.add(token)
            return 200, {"access_token": token, "token_type": "Bearer", "expires_in": 3600}
        bearer = headers.get("authorization", "").removeprefix("Bearer ")
        if bearer not in self.tokens:
            return 401, {"detail": "Not authenticated"}
        if path.startswith(("/models", "/agents/query/")) and query.get("project_key") != PROJECT_KEY:
            return 403, {"is_success": False, "detail": "project_key does not match the project", "error": {}}
        if path == "/models/" and method == "GET":
            return self._list_models(query)
        if path.startswith("/models/") and method in ("GET", "DELETE"):
            model_id = path.removeprefix("/models/")
            return self._get_model(model_id) if method == "GET" else self._delete_model(model_id)
        if path == "/agents/queries" and method == "POST":
            return self._query_agents(body if isinstance(body, dict) else {})
        if path.startswith("/agents/query/") and method == "GET":
            agent = self.agents.get(path.removeprefix("/agents/query/"))
            return (200, {"agent": agent}) if agent else (404, {"detail": "Agent not found"})
        if path == "/agents/update-ai-configurations" and method == "POST":
            return self._update_agent(body if isinstance(body, dict) else {})
        return 404, {"detail": "Not Found"}

    def _list_models(self, query: dict[str, str]) -> tuple[int, Any]:
        try:
            page = int(query.get("page", "1"))
        except ValueError:
            return invalid("query", "page", "value is not a valid integer", "type_error.integer")
        try:
            size = int(query.get("page_size", "20"))
        except ValueError:
            return invalid("query", "page_size", "value is not a valid integer", "type_error.integer")
        if page < 1:
            return invalid("query", "page", "ensure this value is greater than or equal to 1", "value_error.number")
        if not 1 <= size <= 100:
            return invalid("query", "page_size", "ensure this value is between 1 and 100", "value_error.number")
        for name, allowed in (("provider", PROVIDERS), ("model_type", MODEL_TYPES), ("status", STATUSES)):
            if name in query and query[name] not in allowed:
                return invalid("query", name, f"value is not a valid enumeration member: {query[name]}", "enum")
        if "is_active" in query and query["is_active"] not in ("true", "false"):
            return invalid("query", "is_active", "value could not be parsed to a boolean", "type_error.bool")
        models = list(self.models.values())
        if "is_active" in query:
            models = [m for m in models if m["IsActive"] == (query["is_active"] == "true")]
        start = (page - 1) * size
        return 200, {"models": models[start : start + size], "total_count": len(models), "page": page}

    def _get_model(self, model_id: str) -> tuple[int, Any]:
        model = self.models.get(model_id)
        if model is None:
            return 404, {"detail": "Model not found"}
        return 200, {**model, "ApiKey": "sk-****"}

    def _users(self, model_id: str) -> list[str]:
        return [a["id"] for a in self.agents.values() if a["llm_config"].get("ModelId") == model_id]

    def _delete_model(self, model_id: str) -> tuple[int, Any]:
        if model_id not in self.models:
            return invalid("path", "model_id", "model not found or already deleted", "value_error.notfound")
        users = self._users(model_id)
        if users or model_id in self.busy:
            why = f"agents {', '.join(users)}" if users else "active conversations"
            return 409, {"is_success": False, "detail": f"Model is in use by {why}", "error": {}}
        if len(self.models) == 1:
            return 409, {"is_success": False, "detail": "Cannot delete the only model in the project", "error": {}}
        del self.models[model_id]
        return 200, {"is_success": True, "item_id": model_id, "detail": "AI model deleted successfully", "error": {}}

    def _query_agents(self, body: dict[str, Any]) -> tuple[int, Any]:
        if body.get("project_key") != PROJECT_KEY:
            return invalid("body", "project_key", "field required", "value_error.missing")
        limit, offset = body.get("limit", 10), body.get("offset", 0)
        if not isinstance(limit, int) or not 1 <= limit <= 100:
            return invalid("body", "limit", "ensure this value is between 1 and 100", "value_error.number")
        agents = [{k: v for k, v in a.items() if k != "llm_config"} for a in self.agents.values()]
        return 200, {"agents": agents[offset : offset + limit], "total_count": len(agents)}

    def _update_agent(self, body: dict[str, Any]) -> tuple[int, Any]:
        for name in ("agent_id", "project_key", "llm_config"):
            if name not in body:
                return invalid("body", name, "field required", "value_error.missing")
        agent = self.agents.get(body["agent_id"])
        if agent is None:
            return 200, {"is_success": False, "item_id": body["agent_id"], "detail": "Agent not found", "error": {}}
        model_id = body["llm_config"].get("ModelId")
        if model_id not in self.models:
            return 200, {
                "is_success": False,
                "item_id": agent["id"],
                "detail": f"Unknown model {model_id}",
                "error": {},
            }
        for key, value in body.items():
            if key not in ("agent_id", "project_key"):
                agent[key] = value
        return 200, {"is_success": True, "item_id": agent["id"], "detail": "Agent updated successfully", "error": {}}


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        status, body, extra = self.server.state.handle(self.command, self.path, dict(self.headers.items()), raw)
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for key, value in extra.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = _answer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the state records every call."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: SeliseState) -> None:
        self.state = state
        super().__init__(("127.0.0.1", 0), _Handler)


class SeliseServer:
    """The fake on 127.0.0.1 at a free port, in a thread; stopped and closed on exit."""

    def __init__(self, state: SeliseState | None = None) -> None:
        self.state = state or SeliseState()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> SeliseServer:
        self._server = _Server(self.state)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
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


__all__ = [
    "CLIENT_ID",
    "CLIENT_SECRET",
    "GRANT_TYPE",
    "PROJECT_KEY",
    "Call",
    "SeliseServer",
    "SeliseState",
    "multipart_fields",
]
