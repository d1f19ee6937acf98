"""The Replicate adapter against a fake Replicate API behind httpx.MockTransport."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from retirement.errors import ConfigError, ConflictError, DeletionBlockedError, InputError, NotFoundError
from retirement.models import ModelRef, RetirementRequest, TrafficVerdict
from retirement.platforms import get_platform
from retirement.platforms.replicate import (
    ReplicatePredictionsTraffic,
    ReplicateRegistry,
    ReplicateServing,
)
from retirement.settings import RetireSettings

BASE = "https://api.replicate.test/v1/"
V1, V2 = "a" * 64, "b" * 64


def problem(status: int, detail: str, title: str = "Error") -> httpx.Response:
    return httpx.Response(
        status,
        headers={"content-type": "application/problem+json"},
        json={"type": "about:blank", "title": title, "status": status, "detail": detail, "instance": "/x"},
    )


class App:
    """A fake Replicate API: account, models with versions (async delete), deployments, trainings, predictions."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.account = "acme"
        self.model: dict[str, Any] | None = {"owner": "acme", "name": "churn", "visibility": "private", "run_count": 9}
        self.versions: dict[str, dict[str, Any]] = {
            V1: {"id": V1, "created_at": "2024-01-01T00:00:00Z", "cog_version": "0.9", "openapi_schema": {"x": 1}},
            V2: {"id": V2, "created_at": "2024-02-01T00:00:00Z", "cog_version": "0.9", "openapi_schema": {"x": 2}},
        }
        self.deleting: dict[str, int] = {}  # version -> GETs still answered before it is gone
        self.deployments: list[dict[str, Any]] = [
            {"owner": "acme", "name": f"other-{i}", "current_release": {"model": "acme/x", "version": "c" * 64}}
            for i in range(3)
        ]
        self.trainings: list[dict[str, Any]] = []
        self.predictions: list[dict[str, Any]] = []
        self.refuse_version: str | None = None
        self.page_size = 2

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        assert request.headers.get("authorization") == "Bearer r8_testtoken0123"
        method, path = request.method, request.url.path.removeprefix("/v1")
        if path == "/account":
            return httpx.Response(200, json={"type": "organization", "username": self.account})
        if path == "/deployments":
            return self._page(request, self.deployments)
        if path.startswith("/deployments/"):
            owner, name = path.split("/")[2:4]
            dep = next((d for d in self.deployments if (d["owner"], d["name"]) == (owner, name)), None)
            if dep is None:
                return problem(404, "Deployment not found", "Not found")
            if method == "PATCH":
                dep["current_release"] = {**dep["current_release"], "version": json.loads(request.content)["version"]}
            return httpx.Response(200, json=dep)
        if path == "/trainings":
            return self._page(request, self.trainings)
        if path == "/predictions":
            assert request.url.params["created_after"].endswith("Z")
            return self._page(request, self.predictions)
        if path.startswith("/models/acme/churn"):
            return self._model(request, method, path.removeprefix("/models/acme/churn"))
        if path.startswith("/models/"):
            return problem(404, "The requested resource could not be found.", "Not found")
        return problem(404, f"no route {method} {path}")

    def _model(self, request: httpx.Request, method: str, rest: str) -> httpx.Response:
        if self.model is None:
            return problem(404, "Model not found", "Not found")
        if rest == "" and method == "GET":
            return httpx.Response(200, json=self.model)
        if rest == "" and method == "DELETE":
            if self.versions:
                return problem(409, "Cannot delete a model that has versions.", "Conflict")
            self.model = None
            return httpx.Response(204)
        if rest == "/versions":
            return self._page(request, list(self.versions.values()))
        vid = rest.removeprefix("/versions/")
        if vid not in self.versions:
            return problem(404, "Version not found", "Not found")
        if method == "GET":
            left = self.deleting.get(vid)
            if left is not None:
                if left == 0:
                    del self.versions[vid]
                    return problem(404, "Version not found", "Not found")
                self.deleting[vid] = left - 1
            return httpx.Response(200, json=self.versions[vid])
        if method == "DELETE":
            if vid == self.refuse_version:
                return problem(409, "This version has been run by other users and cannot be deleted.", "Conflict")
            self.deleting[vid] = 2
            return httpx.Response(202)
        return problem(405, "method not allowed")

    def _page(self, request: httpx.Request, items: list[dict[str, Any]]) -> httpx.Response:
        start = int(request.url.params.get("cursor", "0"))
        chunk = items[start : start + self.page_size]
        nxt = None
        if start + self.page_size < len(items):
            nxt = str(request.url.copy_set_param("cursor", str(start + self.page_size)))
        return httpx.Response(200, json={"next": nxt, "previous": None, "results": chunk})

    def sent(self, method: str) -> list[str]:
        return [r.url.path for r in self.requests if r.method == method]


@pytest.fixture
def app() -> App:
    return App()


@pytest.fixture
def client(app: App) -> httpx.Client:
    return httpx.Client(
        transport=httpx.MockTransport(app), base_url=BASE, headers={"Authorization": "Bearer r8_testtoken0123"}
    )


@pytest.fixture
def registry(client: httpx.Client) -> ReplicateRegistry:
    return ReplicateRegistry(client, sleep=lambda _s: None, poll_attempts=5)


def ref(version: str | None = V1, name: str = "acme/churn") -> ModelRef:
    return ModelRef(platform="replicate", name=name, version=version)


def test_describe_reads_versions_and_deployments_across_pages(registry: ReplicateRegistry, app: App) -> None:
    app.deployments.append({"owner": "acme", "name": "prod", "current_release": {"model": "acme/churn", "version": V1}})
    dossier = registry.describe(ref(None))
    assert [v.version for v in dossier.versions] == [V1, V2]
    assert dossier.deployed_at == ["deployment acme/prod"]  # on the second page of deployments
    assert [(d.kind, d.name) for d in dossier.dependents] == [("deployment", "acme/prod")]
    assert any("name be created again" in issue for issue in dossier.known_issues)
    assert dossier.capabilities is not None and not dossier.capabilities.weights_exportable


def test_a_malformed_reference_is_refused_before_any_request(registry: ReplicateRegistry, app: App) -> None:
    with pytest.raises(InputError, match="owner/name"):
        registry.delete(ref(name="churn"))
    assert app.requests == []


def test_not_owner_blocks_without_a_delete(registry: ReplicateRegistry, app: App) -> None:
    app.account = "someone-else"
    with pytest.raises(DeletionBlockedError, match="not by this token's account 'someone-else'"):
        registry.delete(ref())
    assert app.sent("DELETE") == []


def test_public_model_blocks_without_a_delete(registry: ReplicateRegistry, app: App) -> None:
    assert app.model is not None
    app.model["visibility"] = "public"
    with pytest.raises(DeletionBlockedError, match="only private"):
        registry.delete(ref(None))
    assert app.sent("DELETE") == []


def test_deployed_version_blocks_without_a_delete(registry: ReplicateRegistry, app: App) -> None:
    app.deployments.append({"owner": "acme", "name": "prod", "current_release": {"model": "acme/churn", "version": V1}})
    with pytest.raises(DeletionBlockedError, match="deployment acme/prod runs version"):
        registry.delete(ref())
    assert app.sent("DELETE") == []


@pytest.mark.parametrize(
    ("configured", "movable"),
    [({}, True), ({"production_deployment": "acme/prod"}, True), ({"production_deployment": "acme/main"}, False)],
    ids=["the-one-deployment-of-the-model", "the-configured-production", "neither-production-nor-staging"],
)
def test_only_the_deployment_the_protocol_switches_is_movable(
    client: httpx.Client, app: App, configured: dict[str, str], movable: bool
) -> None:
    app.deployments.append({"owner": "acme", "name": "prod", "current_release": {"model": "acme/churn", "version": V1}})
    registry = ReplicateRegistry(client, sleep=lambda _s: None, **configured)
    assert [(d.name, d.movable) for d in registry.dependents(ref())] == [("acme/prod", movable)]
    assert [(b.code, b.cleared_by_protocol) for b in registry.deletion_blockers(ref())] == [("deployment", movable)]


def test_two_deployments_of_the_version_are_both_left_to_a_person(client: httpx.Client, app: App) -> None:
    for name in ("prod", "batch"):
        app.deployments.append(
            {"owner": "acme", "name": name, "current_release": {"model": "acme/churn", "version": V1}}
        )
    registry = ReplicateRegistry(client, sleep=lambda _s: None)
    assert [d.movable for d in registry.dependents(ref())] == [False, False]


def _retirement(replacement: str | None = f"acme/churn@{V2}") -> RetirementRequest:
    return RetirementRequest(
        model=f"acme/churn@{V1}",
        platform="replicate",
        replacement=replacement,
        requester="alice",
        approvers=["bob"],
        reason="superseded",
    )


def _staging_app(app: App, model: str) -> None:
    app.deployments.append({"owner": "acme", "name": "prod", "current_release": {"model": "acme/churn", "version": V1}})
    app.deployments.append({"owner": "acme", "name": "staging", "current_release": {"model": model, "version": V2}})


def test_preflight_refuses_a_staging_deployment_of_another_model_and_a_missing_smoke_input(
    client: httpx.Client, app: App
) -> None:
    _staging_app(app, "acme/images")
    serving = ReplicateServing(client, production_deployment="acme/prod", staging_deployment="acme/staging")
    problems = serving.preflight(_retirement())
    assert problems[0].startswith(
        "staging deployment acme/staging (RETIRE_REPLICATE_STAGING_DEPLOYMENT) runs acme/images, not acme/churn"
    )
    assert problems[1].startswith("RETIRE_REPLICATE_SMOKE_INPUT is not set")
    assert len(problems) == 2 and all("remedy:" in p for p in problems)
    assert app.sent("PATCH") == [] and app.sent("POST") == []
    assert serving.preflight(_retirement(replacement=None)) == []  # nothing is staged or switched


def test_preflight_refuses_missing_settings_and_a_production_deployment_of_another_model(
    client: httpx.Client, app: App
) -> None:
    app.deployments.append({"owner": "acme", "name": "prod", "current_release": {"model": "acme/x2", "version": V1}})
    serving = ReplicateServing(client, production_deployment="acme/prod", smoke_input={"prompt": "hi"})
    problems = serving.preflight(_retirement())
    assert problems[0].startswith("RETIRE_REPLICATE_STAGING_DEPLOYMENT is not set")
    assert problems[1].startswith("production deployment acme/prod (RETIRE_REPLICATE_PRODUCTION_DEPLOYMENT) runs")
    assert len(problems) == 2


def test_preflight_accepts_what_staging_and_cutover_can_carry(client: httpx.Client, app: App) -> None:
    _staging_app(app, "acme/churn")
    serving = ReplicateServing(
        client, production_deployment="acme/prod", staging_deployment="acme/staging", smoke_input={"prompt": "hi"}
    )
    assert serving.preflight(_retirement()) == []


def test_staging_is_never_patched_without_a_smoke_input_or_onto_another_model(client: httpx.Client, app: App) -> None:
    _staging_app(app, "acme/images")
    unset = ReplicateServing(client, staging_deployment="acme/staging")
    with pytest.raises(ConfigError, match="RETIRE_REPLICATE_SMOKE_INPUT is not set"):
        unset.deploy_staging(ref(V2))
    other = ReplicateServing(client, staging_deployment="acme/staging", smoke_input={"prompt": "hi"})
    with pytest.raises(ConflictError, match="runs acme/images, not acme/churn"):
        other.deploy_staging(ref(V2))
    assert app.sent("PATCH") == []


def test_fine_tune_base_blocks_without_a_delete(registry: ReplicateRegistry, app: App) -> None:
    app.trainings = [{"id": "t1", "version": V2, "model": "acme/churn-ft", "status": "succeeded"}]
    with pytest.raises(DeletionBlockedError, match="base of training t1"):
        registry.delete(ref(V2))
    assert app.sent("DELETE") == []


def test_every_blocker_is_listed_at_once(registry: ReplicateRegistry, app: App) -> None:
    app.account = "other"
    assert app.model is not None
    app.model["visibility"] = "public"
    with pytest.raises(DeletionBlockedError) as info:
        registry.delete(ref())
    assert len(info.value.blockers) == 2


def test_refusal_by_replicate_is_a_blocker_with_its_words(registry: ReplicateRegistry, app: App) -> None:
    app.refuse_version = V1
    with pytest.raises(DeletionBlockedError, match="run by other users"):
        registry.delete(ref())
    assert V1 in app.versions


def test_version_delete_is_polled_until_gone(registry: ReplicateRegistry, app: App) -> None:
    receipt = registry.delete(ref())
    assert receipt.verified_gone and V1 not in app.versions and V2 in app.versions
    assert app.sent("DELETE") == [f"/v1/models/acme/churn/versions/{V1}"]
    with pytest.raises(NotFoundError, match="Version not found"):
        registry.delete(ref())


def test_poll_is_bounded(client: httpx.Client, app: App) -> None:
    registry = ReplicateRegistry(client, sleep=lambda _s: None, poll_attempts=2)
    receipt = registry.delete(ref())
    assert not receipt.verified_gone


def test_whole_model_deletes_versions_first_then_the_model(registry: ReplicateRegistry, app: App) -> None:
    receipt = registry.delete(ref(None))
    assert receipt.verified_gone and app.model is None
    assert app.sent("DELETE") == [
        f"/v1/models/acme/churn/versions/{V1}",
        f"/v1/models/acme/churn/versions/{V2}",
        "/v1/models/acme/churn",
    ]
    assert any("never be used again" in r for r in receipt.removed)


def test_refusal_midway_names_what_was_already_deleted(registry: ReplicateRegistry, app: App) -> None:
    app.refuse_version = V2
    with pytest.raises(DeletionBlockedError) as info:
        registry.delete(ref(None))
    assert "run by other users" in str(info.value) and V1 in str(info.value)
    assert "/v1/models/acme/churn" not in app.sent("DELETE")


def test_429_is_retried_after_retry_after(client: httpx.Client, app: App) -> None:
    waits: list[float] = []
    calls = {"n": 0}

    def throttled(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] == 1:
            return httpx.Response(429, headers={"Retry-After": "3"}, json={"title": "Too Many Requests", "status": 429})
        return app(request)

    c = httpx.Client(
        transport=httpx.MockTransport(throttled), base_url=BASE, headers={"Authorization": "Bearer r8_testtoken0123"}
    )
    assert ReplicateRegistry(c, sleep=waits.append).exists(ref())
    assert waits == [3.0]


def test_export_holds_metadata_and_schemas(registry: ReplicateRegistry) -> None:
    items = {i.path: json.loads(b"".join(i.open())) for i in registry.export(ref(None))}
    assert items[f"versions/{V2}/openapi_schema.json"] == {"x": 2}
    assert "openapi_schema" not in items[f"versions/{V1}/version.json"]
    assert items["metadata/model.json"]["name"] == "churn"


def test_no_soft_delete(registry: ReplicateRegistry) -> None:
    with pytest.raises(ConflictError, match="no deactivation"):
        registry.set_active(ref(), False)


def test_catalog_lists_versions(client: httpx.Client, app: App) -> None:
    def with_models(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"next": None, "results": [app.model, {"owner": "x", "name": "y"}]})
        return app(request)

    c = httpx.Client(
        transport=httpx.MockTransport(with_models), base_url=BASE, headers={"Authorization": "Bearer r8_testtoken0123"}
    )
    assert [e.reference.version for e in ReplicateRegistry(c).list_versions()] == [V1, V2]


def test_serving_switch_returns_previous_and_patches(client: httpx.Client, app: App) -> None:
    app.deployments.append({"owner": "acme", "name": "prod", "current_release": {"model": "acme/churn", "version": V1}})
    serving = ReplicateServing(client, sleep=lambda _s: None)
    assert serving.production(ref(None)) == ref(V1)
    assert serving.switch(ref(V2)) == ref(V1)
    patch = [r for r in app.requests if r.method == "PATCH"]
    assert [r.url.path for r in patch] == ["/v1/deployments/acme/prod"] and json.loads(patch[0].content) == {
        "version": V2
    }
    assert serving.production(ref(None)) == ref(V2)
    serving.switch(ref(V2))
    assert len([r for r in app.requests if r.method == "PATCH"]) == 1


def test_staging_needs_a_configured_deployment(client: httpx.Client, app: App) -> None:
    with pytest.raises(ConfigError, match="RETIRE_REPLICATE_STAGING_DEPLOYMENT"):
        ReplicateServing(client).deploy_staging(ref(V2))
    assert app.requests == []


def test_traffic_counts_the_version_over_every_page(client: httpx.Client, app: App) -> None:
    t = "2025-01-01T12:00:00Z"
    app.predictions = [{"id": f"p{i}", "version": V2, "created_at": t, "status": "succeeded"} for i in range(3)] + [
        {"id": "p9", "version": V1, "created_at": t, "status": "failed"}
    ]
    source = ReplicatePredictionsTraffic(client, sleep=lambda _s: None)
    start = datetime(2025, 1, 1, tzinfo=UTC)
    sample = source.sample(ref(V1), start, start + timedelta(days=1))
    assert sample.verdict is TrafficVerdict.ACTIVE and sample.requests == 1 and sample.errors == 1
    idle = source.sample(ref("d" * 64), start, start + timedelta(days=1))
    assert idle.verdict is TrafficVerdict.IDLE and idle.requests == 0 and idle.coverage == 1.0
    assert len([r for r in app.requests if r.url.path == "/v1/predictions"]) == 4


def test_traffic_failure_is_error_not_zero(app: App) -> None:
    c = httpx.Client(transport=httpx.MockTransport(lambda r: problem(500, "upstream broke")), base_url=BASE)
    start = datetime(2025, 1, 1, tzinfo=UTC)
    sample = ReplicatePredictionsTraffic(c, sleep=lambda _s: None).sample(ref(), start, start + timedelta(hours=1))
    assert sample.verdict is TrafficVerdict.ERROR and "upstream broke" in sample.detail and sample.requests is None


def test_next_page_on_another_host_is_refused(app: App) -> None:
    def evil(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"next": "https://evil.test/v1/predictions?cursor=1", "results": []})

    c = httpx.Client(transport=httpx.MockTransport(evil), base_url=BASE)
    start = datetime(2025, 1, 1, tzinfo=UTC)
    sample = ReplicatePredictionsTraffic(c).sample(ref(), start, start + timedelta(hours=1))
    assert sample.verdict is TrafficVerdict.ERROR and "another host" in sample.detail


def test_build_reads_replicate_env(monkeypatch: pytest.MonkeyPatch, settings: RetireSettings) -> None:
    monkeypatch.delenv("REPLICATE_API_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="REPLICATE_API_TOKEN"):
        get_platform("replicate", settings)
    monkeypatch.setenv("REPLICATE_API_TOKEN", "r8_testtoken0123")
    monkeypatch.setenv("RETIRE_REPLICATE_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("RETIRE_REPLICATE_STAGING_DEPLOYMENT", "acme/staging")
    platform = get_platform("replicate", settings)
    try:
        assert isinstance(platform.registry, ReplicateRegistry)
        assert str(platform.registry.client.base_url) == "http://127.0.0.1:9/v1/"
        assert isinstance(platform.serving, ReplicateServing) and platform.serving.staging_deployment == "acme/staging"
    finally:
        platform.close()
