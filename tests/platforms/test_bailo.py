"""The Bailo adapter against a recording fake of the v2 API behind httpx.MockTransport."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from retirement.errors import (
    AuthError,
    ConfigError,
    ConflictError,
    DeletionBlockedError,
    InputError,
    NotFoundError,
    PlatformUnavailableError,
)
from retirement.models import ModelRef
from retirement.platforms import get_platform
from retirement.platforms.bailo import CASCADE, BailoRegistry
from retirement.settings import RetireSettings

BASE = "https://bailo.test/api/v2"
MODEL = "yolo-v4-abcdef"
WEIGHTS = b"\x00weights\xff" * 1000


def error(status: int, name: str, message: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"name": name, "message": message, "context": {}}})


class BailoApp:
    """A small Bailo: one model by default, recording every request it gets."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.me: dict[str, Any] = {"dn": "alice", "isAdmin": False}
        self.models: dict[str, dict[str, Any]] = {
            MODEL: {
                "id": MODEL,
                "name": "Yolo v4",
                "kind": "model",
                "description": "You only look once",
                "organisation": "Acme",
                "state": "production",
                "tags": ["vision"],
                "card": {"schemaId": "minimal-v10", "version": 3, "createdBy": "alice", "metadata": {"overview": {}}},
                "collaborators": [{"entity": "user:alice", "roles": ["owner"]}],
                "visibility": "private",
                "deleted": False,
                "createdAt": "2025-01-02T03:04:05.000Z",
                "updatedAt": "2025-06-01T00:00:00.000Z",
            }
        }
        self.releases = [
            {
                "modelId": MODEL,
                "semver": "1.0.0",
                "draft": False,
                "createdAt": "2025-02-01T00:00:00.000Z",
                "files": [{"name": "yolo.bin", "size": len(WEIGHTS)}],
            },
            {"modelId": MODEL, "semver": "1.1.0", "draft": True, "createdAt": "2025-03-01T00:00:00.000Z"},
        ]
        self.files = [{"id": "f1", "modelId": MODEL, "name": "yolo.bin", "size": len(WEIGHTS)}]
        self.inferences: list[dict[str, Any]] | None = []
        self.access_requests: list[dict[str, Any]] = []
        self.webhooks = [
            {"id": "w1", "modelId": MODEL, "name": "ci-hook", "uri": "http://ci/hook", "token": "hook-secret-123"}
        ]
        self.images = [{"repository": MODEL, "name": "yolo", "tags": ["v1-cpu"]}]
        self.fail: dict[tuple[str, str], list[httpx.Response]] = {}

    def paths(self, method: str | None = None) -> list[str]:
        return [f"{r.method} {r.url.path}" for r in self.requests if method is None or r.method == method]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        assert request.headers["authorization"].startswith("Basic ")
        path = request.url.path
        assert path.startswith("/api/v2/"), path
        queued = self.fail.get((request.method, path))
        if queued:
            return queued.pop(0)
        parts = path.removeprefix("/api/v2/").split("/")
        if parts == ["entities", "me"]:
            return httpx.Response(200, json={"user": self.me})
        if parts == ["models", "search"]:
            return httpx.Response(200, json={"models": [{"id": m, "name": m} for m in self.models]})
        if parts[0] != "model":
            return error(404, "NotFound", f"no route {path}")
        model = self.models.get(parts[1])
        if model is None:
            return error(404, "NotFound", "The requested entry was not found.")
        rest = parts[2:]
        if request.method == "DELETE" and not rest:
            del self.models[parts[1]]
            return httpx.Response(200, json={"message": "Successfully removed model."})
        if request.method != "GET":
            return error(405, "MethodNotAllowed", request.method)
        if not rest:
            return httpx.Response(200, json={"model": model})
        if rest == ["releases"]:
            return httpx.Response(200, json={"releases": self.releases})
        if rest == ["files"]:
            return httpx.Response(200, json={"files": self.files})
        if rest == ["inferences"]:
            if self.inferences is None:
                return error(404, "NotFound", "Cannot GET inferences")
            return httpx.Response(200, json={"inferences": self.inferences})
        if rest == ["access-requests"]:
            return httpx.Response(200, json={"accessRequests": self.access_requests})
        if rest == ["webhooks"]:
            return httpx.Response(200, json={"webhooks": self.webhooks})
        if rest == ["images"]:
            return httpx.Response(200, json={"images": self.images})
        if rest == ["model-card-revisions"]:
            return httpx.Response(200, json={"modelCardRevisions": [model["card"]]})
        if rest == ["file", "f1", "download"]:
            return httpx.Response(
                200, content=iter([WEIGHTS[:4000], WEIGHTS[4000:]]), headers={"accept-ranges": "bytes"}
            )
        return error(404, "NotFound", f"no route {path}")


@pytest.fixture
def app() -> BailoApp:
    return BailoApp()


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def registry(app: BailoApp, sleeps: list[float]) -> BailoRegistry:
    client = httpx.Client(base_url=BASE, transport=httpx.MockTransport(app), auth=("AK", "SK"))
    return BailoRegistry(client, sleep=sleeps.append)


REF = ModelRef(platform="bailo", name=MODEL)


def test_describe_gathers_releases_metadata_and_uses(registry: BailoRegistry, app: BailoApp) -> None:
    app.inferences = [{"modelId": MODEL, "image": "yolo", "tag": "v1-cpu", "description": "prod endpoint"}]
    app.access_requests = [
        {"id": "ar-1", "metadata": {"overview": {"name": "Analytics", "entities": ["user:bob"]}}},
        {"id": "ar-2", "metadata": {"overview": {"name": "Old", "entities": ["user:eve"], "endDate": "2001-01-01"}}},
    ]
    dossier = registry.describe(REF)

    assert [v.version for v in dossier.versions] == ["1.0.0", "1.1.0"]
    assert [v.stage for v in dossier.versions] == ["released", "draft"]
    assert dossier.versions[0].size_bytes == len(WEIGHTS)
    assert dossier.description == "You only look once"
    assert dossier.metadata["visibility"] == "private"
    assert dossier.metadata["collaborators"] == [{"entity": "user:alice", "roles": ["owner"]}]
    assert dossier.deployed_at == ["inference service yolo:v1-cpu"]
    # who still uses it: the live service and the open request; the ended request, the webhook and the image
    # tag go with the model, and the dossier says so
    assert {(d.kind, d.name, d.movable) for d in dossier.dependents} == {
        ("deployment", "yolo:v1-cpu", False),
        ("consumer", "ar-1", False),
    }
    issues = " ".join(dossier.known_issues)
    assert "ci-hook" in issues and f"{MODEL}/yolo:v1-cpu" in issues and "ar-2" in issues
    # the live service and the open request block; the ended request does not
    assert sorted(b.code for b in dossier.blockers) == ["access_request", "inference_service"]
    assert "ar-1" in " ".join(b.message for b in dossier.blockers)
    assert "ar-2" not in " ".join(b.message for b in dossier.blockers)
    assert dossier.capabilities is not None and dossier.capabilities.restore is False
    assert set(app.paths()) >= {
        f"GET /api/v2/model/{MODEL}",
        f"GET /api/v2/model/{MODEL}/releases",
        f"GET /api/v2/model/{MODEL}/files",
        f"GET /api/v2/model/{MODEL}/inferences",
        f"GET /api/v2/model/{MODEL}/access-requests",
        f"GET /api/v2/model/{MODEL}/webhooks",
        f"GET /api/v2/model/{MODEL}/images",
        "GET /api/v2/entities/me",
    }
    assert app.paths("DELETE") == []


def test_delete_removes_the_model_and_verifies_404(registry: BailoRegistry, app: BailoApp) -> None:
    receipt = registry.delete(REF)

    assert receipt.verified_gone is True
    assert receipt.platform_response == {"message": "Successfully removed model."}
    assert receipt.removed[0] == f"model {MODEL}" and set(CASCADE) <= set(receipt.removed)
    assert app.paths("DELETE") == [f"DELETE /api/v2/model/{MODEL}"]
    # the last request is the check that it is gone
    assert app.paths()[-1] == f"GET /api/v2/model/{MODEL}"
    assert registry.exists(REF) is False


def test_delete_of_a_gone_model_is_not_found_and_sends_no_delete(registry: BailoRegistry, app: BailoApp) -> None:
    app.models.clear()
    with pytest.raises(NotFoundError, match="The requested entry was not found"):
        registry.delete(REF)
    assert app.paths("DELETE") == []


def _blocked(registry: BailoRegistry, app: BailoApp, *expected: str) -> DeletionBlockedError:
    with pytest.raises(DeletionBlockedError) as caught:
        registry.delete(REF)
    for text in expected:
        assert text in str(caught.value)
    assert app.paths("DELETE") == []
    assert MODEL in app.models
    return caught.value


def test_delete_refused_without_the_delete_permission(registry: BailoRegistry, app: BailoApp) -> None:
    app.me = {"dn": "mallory", "isAdmin": False}
    app.models[MODEL]["collaborators"].append({"entity": "user:mallory", "roles": ["contributor"]})
    _blocked(registry, app, "user:mallory lacks the Delete permission")


def test_admin_may_delete_without_a_role(registry: BailoRegistry, app: BailoApp) -> None:
    app.me = {"dn": "root", "isAdmin": True}
    assert registry.deletion_blockers(REF) == []


def test_delete_refused_while_an_inference_service_is_live(registry: BailoRegistry, app: BailoApp) -> None:
    app.inferences = [{"modelId": MODEL, "image": "yolo", "tag": "v1-gpu", "description": "", "settings": {}}]
    _blocked(registry, app, "inference service yolo:v1-gpu", "is live")


def test_delete_refused_while_an_access_request_is_open(registry: BailoRegistry, app: BailoApp) -> None:
    app.access_requests = [{"id": "ar-9", "metadata": {"overview": {"name": "Team X", "entities": ["group:x"]}}}]
    _blocked(registry, app, "access request ar-9 (Team X)", "is open")


def test_every_blocker_is_listed_at_once(registry: BailoRegistry, app: BailoApp) -> None:
    app.me = {"dn": "mallory", "isAdmin": False}
    app.inferences = [{"image": "yolo", "tag": "a"}]
    app.access_requests = [{"id": "ar-1", "metadata": {"overview": {"name": "n", "entities": []}}}]
    blocked = _blocked(registry, app)
    assert len(blocked.blockers) == 3


def test_a_403_on_delete_says_the_delete_permission_is_needed(registry: BailoRegistry, app: BailoApp) -> None:
    app.fail[("DELETE", f"/api/v2/model/{MODEL}")] = [
        error(403, "Forbidden", "You do not have permission to delete this model.")
    ]
    with pytest.raises(DeletionBlockedError) as caught:
        registry.delete(REF)
    message = str(caught.value)
    assert "Delete permission on the model is needed" in message
    assert "You do not have permission to delete this model." in message
    assert MODEL in app.models


def test_inferencing_disabled_is_a_known_issue_not_a_blocker(registry: BailoRegistry, app: BailoApp) -> None:
    app.inferences = None
    dossier = registry.describe(REF)
    assert dossier.blockers == []
    assert any("inferencing is not enabled" in issue for issue in dossier.known_issues)


def test_errors_keep_bailo_s_own_message(registry: BailoRegistry, app: BailoApp, sleeps: list[float]) -> None:
    app.fail[("GET", f"/api/v2/model/{MODEL}")] = [error(401, "Unauthorised", "Token is not valid.")]
    with pytest.raises(AuthError, match=r"bailo HTTP 401: Unauthorised: Token is not valid\."):
        registry.describe(REF)
    app.fail[("GET", f"/api/v2/model/{MODEL}")] = [error(500, "InternalServerError", "Mongo is down")] * 5
    with pytest.raises(PlatformUnavailableError, match="Mongo is down"):
        registry.describe(REF)
    assert len(sleeps) == 4


def test_429_is_retried_after_retry_after(registry: BailoRegistry, app: BailoApp, sleeps: list[float]) -> None:
    app.fail[("GET", f"/api/v2/model/{MODEL}")] = [
        httpx.Response(429, headers={"Retry-After": "7"}, json={"error": {"message": "slow down"}})
    ]
    assert registry.exists(REF) is True
    assert sleeps == [7.0]
    assert app.paths().count(f"GET /api/v2/model/{MODEL}") == 2


def test_export_streams_every_file_and_writes_metadata(registry: BailoRegistry, app: BailoApp) -> None:
    items = {item.path: item for item in registry.export(REF)}

    assert set(items) == {
        "model.json",
        "model-card.json",
        "model-card-revisions.json",
        "releases.json",
        "files.json",
        "uses.json",
        "files/f1/yolo.bin",
    }
    weights = items["files/f1/yolo.bin"]
    assert weights.size == len(WEIGHTS)
    assert b"".join(weights.open()) == WEIGHTS
    assert f"GET /api/v2/model/{MODEL}/file/f1/download" in app.paths()
    model = json.loads(b"".join(items["model.json"].open()))
    assert model["id"] == MODEL
    uses = b"".join(items["uses.json"].open()).decode()
    assert "hook-secret-123" not in uses  # webhook tokens never reach a backup
    assert json.loads(b"".join(items["releases.json"].open()))[0]["semver"] == "1.0.0"
    assert any("Docker images" in text for text in registry.capabilities.not_exportable)


def test_list_versions_lists_every_model(registry: BailoRegistry, app: BailoApp) -> None:
    second = dict(app.models[MODEL], id="bert-xyz", state="development")
    app.models["bert-xyz"] = second
    entries = list(registry.list_versions())
    assert [(e.reference.name, e.stage) for e in entries] == [(MODEL, "production"), ("bert-xyz", "development")]
    assert entries[0].created_at.year == 2025


def test_no_soft_delete(registry: BailoRegistry, app: BailoApp) -> None:
    with pytest.raises(ConflictError, match="no deactivate"):
        registry.set_active(REF, False)
    assert app.requests == []


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda r: r.describe(ModelRef(platform="bailo", name=MODEL, version="1.0.0")), "model"),
        (lambda r: r.delete(ModelRef(platform="local", name=MODEL)), "platform"),
    ],
)
def test_bad_reference_is_refused_before_any_request(
    registry: BailoRegistry, app: BailoApp, call: Callable[[BailoRegistry], Any], field: str
) -> None:
    with pytest.raises(InputError) as caught:
        call(registry)
    assert caught.value.field == field
    assert app.requests == []


def test_build_reads_its_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RETIRE_BAILO_URL", raising=False)
    monkeypatch.delenv("RETIRE_BAILO_BASE_URL", raising=False)
    with pytest.raises(ConfigError, match="RETIRE_BAILO_URL"):
        get_platform("bailo", RetireSettings())
    monkeypatch.setenv("RETIRE_BAILO_URL", "https://bailo.example.org/")
    monkeypatch.setenv("RETIRE_BAILO_ACCESS_KEY", "AKID")
    with pytest.raises(ConfigError, match="RETIRE_BAILO_SECRET_KEY") as caught:
        get_platform("bailo", RetireSettings())
    assert "AKID" not in str(caught.value)
    monkeypatch.setenv("RETIRE_BAILO_SECRET_KEY", "very-secret-value")
    platform = get_platform("bailo", RetireSettings())
    try:
        assert platform.name == "bailo" and platform.serving is None and platform.traffic is None
        registry = platform.registry
        assert isinstance(registry, BailoRegistry)
        assert str(registry.client.base_url) == "https://bailo.example.org/api/v2/"
        assert isinstance(registry.client.auth, httpx.BasicAuth)
    finally:
        platform.close()
