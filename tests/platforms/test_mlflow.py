"""MLflow adapter over httpx.MockTransport: requests sent, deletion rules, errors, pages, retries, settings."""

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
)
from retirement.models import ModelRef
from retirement.platforms import get_platform
from retirement.platforms.mlflow import MlflowRegistry, MlflowServing

API = "/api/2.0/mlflow"
Handler = Callable[[httpx.Request], httpx.Response]


class App:
    """A fake MLflow: answers from ``routes`` keyed by (method, path) and records every request."""

    def __init__(self, routes: dict[tuple[str, str], Handler | dict[str, Any]]) -> None:
        self.routes = routes
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        route = self.routes.get((request.method, request.url.path))
        if route is None:
            return httpx.Response(404, json={"error_code": "ENDPOINT_NOT_FOUND", "message": "no route"})
        return route(request) if callable(route) else httpx.Response(200, json=route)

    def sent(self, method: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == method]


def _client(app: App) -> httpx.Client:
    return httpx.Client(base_url="http://mlflow.test", transport=httpx.MockTransport(app))


def _registry(app: App, sleeps: list[float] | None = None) -> MlflowRegistry:
    return MlflowRegistry(_client(app), sleep=(sleeps if sleeps is not None else []).append)


def _model(aliases: dict[str, str]) -> dict[str, Any]:
    return {"registered_model": {"name": "churn", "aliases": [{"alias": a, "version": v} for a, v in aliases.items()]}}


def _version(v: str, **extra: Any) -> dict[str, Any]:
    return {"name": "churn", "version": v, "creation_timestamp": 1700000000000, "source": "s", **extra}


def _ref(version: str | None = None) -> ModelRef:
    return ModelRef(platform="mlflow", name="churn", version=version)


def test_alias_on_the_version_blocks_the_delete_and_nothing_is_deleted() -> None:
    app = App(
        {
            ("GET", f"{API}/registered-models/get"): _model({"production": "1", "champion": "1", "staging": "2"}),
            ("GET", f"{API}/model-versions/get"): {"model_version": _version("1")},
        }
    )
    registry = _registry(app)
    with pytest.raises(DeletionBlockedError) as info:
        registry.delete(_ref("1"))
    assert info.value.blockers == ["alias 'champion' points at churn@1", "alias 'production' points at churn@1"]
    assert app.sent("DELETE") == []
    blockers = registry.deletion_blockers(_ref("1"))
    assert {b.message: b.cleared_by_protocol for b in blockers} == {
        "alias 'champion' points at churn@1": False,
        "alias 'production' points at churn@1": True,
    }
    assert app.requests[0].url.params["name"] == "churn"


def test_the_whole_model_is_not_deleted_while_versions_exist() -> None:
    pages = {None: ([_version("1")], "tok-2"), "tok-2": ([_version("3")], None)}

    def search(request: httpx.Request) -> httpx.Response:
        versions, token = pages[request.url.params.get("page_token")]
        assert request.url.params["filter"] == "name='churn'"
        return httpx.Response(200, json={"model_versions": versions, "next_page_token": token})

    app = App(
        {
            ("GET", f"{API}/registered-models/get"): _model({}),
            ("GET", f"{API}/model-versions/search"): search,
        }
    )
    with pytest.raises(DeletionBlockedError, match="still has versions 1, 3"):
        _registry(app).delete(_ref())
    assert app.sent("DELETE") == []
    assert [r.url.params.get("page_token") for r in app.sent("GET") if r.url.path.endswith("/search")] == [
        None,
        "tok-2",
    ]


def test_delete_sends_the_version_and_verifies_not_found() -> None:
    state = {"gone": False}

    def get_version(request: httpx.Request) -> httpx.Response:
        if state["gone"]:
            message = "Model Version (name=churn, version=4) not found"
            return httpx.Response(404, json={"error_code": "RESOURCE_DOES_NOT_EXIST", "message": message})
        return httpx.Response(200, json={"model_version": _version("4")})

    def delete(request: httpx.Request) -> httpx.Response:
        assert json.loads(request.content) == {"name": "churn", "version": "4"}
        state["gone"] = True
        return httpx.Response(200, json={})

    app = App(
        {
            ("GET", f"{API}/registered-models/get"): _model({"production": "5"}),
            ("GET", f"{API}/model-versions/get"): get_version,
            ("DELETE", f"{API}/model-versions/delete"): delete,
        }
    )
    registry = _registry(app)
    receipt = registry.delete(_ref("4"))
    assert receipt.verified_gone
    assert len(app.sent("DELETE")) == 1
    with pytest.raises(NotFoundError, match=r"RESOURCE_DOES_NOT_EXIST: Model Version \(name=churn, version=4\)"):
        registry.delete(_ref("4"))
    assert len(app.sent("DELETE")) == 1


def test_errors_keep_mlflow_message_and_code() -> None:
    def denied(request: httpx.Request) -> httpx.Response:
        return httpx.Response(403, json={"error_code": "PERMISSION_DENIED", "message": "User lacks READ on churn"})

    app = App({("GET", f"{API}/registered-models/get"): denied})
    with pytest.raises(AuthError, match="PERMISSION_DENIED: User lacks READ on churn") as info:
        _registry(app).describe(_ref("1"))
    assert info.value.status == 403


def test_429_is_retried_after_the_delay_mlflow_asked_for() -> None:
    calls: list[int] = []

    def limited(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) == 1:
            return httpx.Response(429, headers={"Retry-After": "7"}, json={"error_code": "REQUEST_LIMIT_EXCEEDED"})
        return httpx.Response(200, json=_model({}))

    sleeps: list[float] = []
    app = App({("GET", f"{API}/registered-models/get"): limited, ("GET", f"{API}/model-versions/get"): _version("1")})
    assert _registry(app, sleeps).dependents(_ref("1")) == []
    assert sleeps == [7.0]
    assert len(calls) == 2


def test_catalog_pages_through_models_and_versions_to_the_end() -> None:
    def models(request: httpx.Request) -> httpx.Response:
        token = request.url.params.get("page_token")
        if token is None:
            body = {"registered_models": [{"name": "churn", "aliases": [{"alias": "production", "version": "2"}]}]}
            return httpx.Response(200, json={**body, "next_page_token": "m2"})
        assert token == "m2"
        return httpx.Response(200, json={"registered_models": [{"name": "fraud"}]})

    def versions(request: httpx.Request) -> httpx.Response:
        assert "filter" not in request.url.params
        token = request.url.params.get("page_token")
        page = {
            None: ([_version("1"), _version("2")], "v2"),
            "v2": (
                [{**_version("1"), "name": "fraud", "tags": [{"key": "retirement.status", "value": "deprecated"}]}],
                None,
            ),
        }[token]
        return httpx.Response(200, json={"model_versions": page[0], "next_page_token": page[1]})

    app = App({("GET", f"{API}/registered-models/search"): models, ("GET", f"{API}/model-versions/search"): versions})
    entries = list(_registry(app).list_versions())
    assert [str(e.reference) for e in entries] == ["churn@1", "churn@2", "fraud@1"]
    assert entries[1].aliases == ["production"]
    assert [d.name for d in entries[1].dependents] == ["production"]
    assert entries[2].active is False


def test_export_lists_recursively_and_streams_through_the_artifact_proxy() -> None:
    files = {"run/artifacts/model/MLmodel": b"flavors", "run/artifacts/model/data/w.bin": b"\x00" * 10}

    def listing(request: httpx.Request) -> httpx.Response:
        path = request.url.params["path"]
        entries = {
            "run/artifacts/model": [
                {"path": "MLmodel", "is_dir": False, "file_size": 7},
                {"path": "data", "is_dir": True},
            ],
            "run/artifacts/model/data": [{"path": "w.bin", "is_dir": False, "file_size": 10}],
        }[path]
        return httpx.Response(200, json={"files": entries})

    def download(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=httpx.ByteStream(files[request.url.path.split("/artifacts/", 1)[1]]))

    routes: dict[tuple[str, str], Any] = {
        ("GET", f"{API}/registered-models/get"): _model({}),
        ("GET", f"{API}/model-versions/get"): {"model_version": _version("1")},
        ("GET", f"{API}/model-versions/get-download-uri"): {"artifact_uri": "mlflow-artifacts:/run/artifacts/model"},
        ("GET", "/api/2.0/mlflow-artifacts/artifacts"): listing,
    }
    for rel in files:
        routes[("GET", f"/api/2.0/mlflow-artifacts/artifacts/{rel}")] = download
    app = App(routes)
    items = {i.path: i for i in _registry(app).export(_ref("1"))}
    assert sorted(items) == [
        "artifacts/MLmodel",
        "artifacts/data/w.bin",
        "metadata/model_version.json",
        "metadata/registered_model.json",
    ]
    assert b"".join(items["artifacts/data/w.bin"].open()) == b"\x00" * 10
    assert items["artifacts/MLmodel"].size == 7


def test_artifacts_outside_the_proxy_are_refused_clearly() -> None:
    app = App(
        {
            ("GET", f"{API}/registered-models/get"): _model({}),
            ("GET", f"{API}/model-versions/get"): {"model_version": _version("1")},
            ("GET", f"{API}/model-versions/get-download-uri"): {"artifact_uri": "s3://bucket/model"},
        }
    )
    with pytest.raises(ConflictError, match="'s3' location"):
        _registry(app).export(_ref("1"))


def test_soft_step_is_a_tag_and_undo_removes_it() -> None:
    app = App(
        {
            ("POST", f"{API}/model-versions/set-tag"): {},
            ("DELETE", f"{API}/model-versions/delete-tag"): {},
        }
    )
    registry = _registry(app)
    registry.set_active(_ref("2"), False)
    registry.set_active(_ref("2"), True)
    bodies = [(r.method, json.loads(r.content)) for r in app.requests]
    assert bodies == [
        ("POST", {"name": "churn", "version": "2", "key": "retirement.status", "value": "deprecated"}),
        ("DELETE", {"name": "churn", "version": "2", "key": "retirement.status"}),
    ]


def test_switch_moves_the_production_alias_and_returns_the_previous_version() -> None:
    app = App(
        {
            ("GET", f"{API}/model-versions/get"): {"model_version": _version("2")},
            ("GET", f"{API}/registered-models/alias"): {"model_version": _version("1")},
            ("POST", f"{API}/registered-models/alias"): {},
        }
    )
    serving = MlflowServing(_client(app), production_alias="prod", sleep=lambda _: None)
    assert serving.switch(_ref("2")) == _ref("1")
    assert [json.loads(r.content) for r in app.sent("POST")] == [{"name": "churn", "alias": "prod", "version": "2"}]
    assert app.sent("GET")[1].url.params["alias"] == "prod"


def test_bad_references_are_refused_before_any_request() -> None:
    app = App({})
    registry = _registry(app)
    with pytest.raises(InputError, match=r"model: churn@v1\.2: MLflow version 'v1\.2' is not a number"):
        registry.delete(ModelRef(platform="mlflow", name="churn", version="v1.2"))
    with pytest.raises(InputError, match="names no version"):
        registry.export(_ref())
    assert app.requests == []


def test_build_needs_an_http_tracking_uri_and_keeps_the_token_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MLFLOW_TRACKING_URI", "RETIRE_MLFLOW_BASE_URL", "MLFLOW_TRACKING_USERNAME"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_URI is not set"):
        get_platform("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "file:///tmp/mlruns")
    with pytest.raises(ConfigError, match="scheme 'file'"):
        get_platform("mlflow")
    monkeypatch.setenv("RETIRE_MLFLOW_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "tok-very-secret-value")
    platform = get_platform("mlflow")
    try:
        assert isinstance(platform.registry, MlflowRegistry)
        assert "tok-very-secret-value" not in repr(platform.registry.__dict__)
    finally:
        platform.close()
