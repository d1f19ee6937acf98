"""A stateful fake of the Bailo v2 API over real HTTP on 127.0.0.1: models, releases, files, uses, delete.

It speaks the shapes of gchq/Bailo's v2 routes (specs/bailo-openapi-v2.json): ``{model: {...}}``,
``{releases}``, ``{files}``, ``{inferences}``, ``{accessRequests}``, ``{webhooks}``, ``{images}``,
``{modelCardRevisions}``, ``/entities/me``, file downloads, and ``DELETE /model/{id}`` answering
``{message: "Successfully removed model."}`` for a caller holding the owner role (403 otherwise); a
deleted model answers 404. Errors are ``{"error": {name, message, context}}``. Auth is HTTP Basic
with a personal access token.
"""

from __future__ import annotations

import base64
from typing import Any

from tests.fakes.replicate_api import HttpFake, Reply

ACCESS_KEY = "bailo-access-key"
SECRET_KEY = "bailo-secret-key-0123456789"
USER = "alice"


def _error(status: int, name: str, message: str) -> Reply:
    return status, {"error": {"name": name, "message": message, "context": {}}}


class BailoApi(HttpFake):
    """One Bailo instance as seen by ``USER`` (token ``ACCESS_KEY:SECRET_KEY``), under ``/api/v2``."""

    def __init__(self) -> None:
        super().__init__()
        self.models: dict[str, dict[str, Any]] = {}
        self.files: dict[str, dict[str, tuple[dict[str, Any], bytes]]] = {}
        self.releases: dict[str, list[dict[str, Any]]] = {}
        self.inferences: dict[str, list[dict[str, Any]]] = {}
        self.access_requests: dict[str, list[dict[str, Any]]] = {}

    def add_model(self, model_id: str, files: dict[str, bytes], roles: tuple[str, ...] = ("owner",)) -> None:
        """A model with one release carrying ``files``; ``USER`` holds ``roles`` on it."""
        self.models[model_id] = {
            "id": model_id,
            "name": model_id.rsplit("-", 1)[0],
            "kind": "model",
            "description": f"{model_id} for the tests",
            "organisation": "Example",
            "state": "production",
            "tags": ["nlp"],
            "card": {"schemaId": "minimal-general-v10", "version": 1, "createdBy": USER, "metadata": {}},
            "collaborators": [{"entity": f"user:{USER}", "roles": list(roles)}],
            "visibility": "private",
            "deleted": False,
            "createdAt": "2025-01-01T10:00:00.000Z",
            "updatedAt": "2025-02-01T10:00:00.000Z",
        }
        listing: dict[str, tuple[dict[str, Any], bytes]] = {}
        for index, (name, data) in enumerate(files.items()):
            fid = f"{model_id}-file-{index}"
            listing[fid] = ({"id": fid, "modelId": model_id, "name": name, "size": len(data), "mime": "x"}, data)
        self.files[model_id] = listing
        self.releases[model_id] = [
            {
                "modelId": model_id,
                "semver": "1.0.0",
                "notes": "first release",
                "draft": False,
                "files": [meta for meta, _ in listing.values()],
                "images": [],
                "createdAt": "2025-01-02T10:00:00.000Z",
            }
        ]
        self.inferences[model_id] = []
        self.access_requests[model_id] = []

    def route(self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str], body: Any) -> Reply:
        token = base64.b64encode(f"{ACCESS_KEY}:{SECRET_KEY}".encode()).decode()
        if headers.get("authorization") != f"Basic {token}":
            return _error(401, "Unauthorised", "No valid authentication method found")
        parts = [p for p in path.split("/") if p]
        if parts[:2] != ["api", "v2"]:
            return _error(404, "NotFound", f"Route {path} not found")
        parts = parts[2:]
        if parts == ["entities", "me"] and method == "GET":
            return 200, {"user": {"dn": USER}}
        if parts == ["models", "search"] and method == "GET":
            live = [m for m in self.models.values() if not m["deleted"]]
            return 200, {"models": [{"id": m["id"], "name": m["name"], "kind": m["kind"]} for m in live]}
        if parts[:1] != ["model"] or len(parts) < 2:
            return _error(404, "NotFound", f"Route {path} not found")
        model = self.models.get(parts[1])
        if model is None or model["deleted"]:
            return _error(404, "NotFound", "The requested entry was not found.")
        rest = parts[2:]
        if not rest and method == "GET":
            return 200, {"model": model}
        if not rest and method == "DELETE":
            roles: list[str] = next((c["roles"] for c in model["collaborators"] if c["entity"] == f"user:{USER}"), [])
            if "owner" not in roles:
                return _error(403, "Forbidden", "You do not have permission to delete this model.")
            model["deleted"] = True
            return 200, {"message": "Successfully removed model."}
        if method != "GET":
            return _error(404, "NotFound", f"Route {path} not found")
        model_id = parts[1]
        simple: dict[tuple[str, ...], tuple[str, list[Any]]] = {
            ("releases",): ("releases", self.releases[model_id]),
            ("files",): ("files", [meta for meta, _ in self.files[model_id].values()]),
            ("inferences",): ("inferences", self.inferences[model_id]),
            ("access-requests",): ("accessRequests", self.access_requests[model_id]),
            ("webhooks",): ("webhooks", []),
            ("images",): ("images", []),
            ("model-card-revisions",): ("modelCardRevisions", [model["card"]]),
        }
        if tuple(rest) in simple:
            key, items = simple[tuple(rest)]
            return 200, {key: items}
        if len(rest) == 3 and rest[0] == "file" and rest[2] == "download":
            found = self.files[model_id].get(rest[1])
            return (200, found[1]) if found else _error(404, "NotFound", f"File {rest[1]} not found")
        return _error(404, "NotFound", f"Route {path} not found")


__all__ = ["ACCESS_KEY", "SECRET_KEY", "USER", "BailoApi"]
