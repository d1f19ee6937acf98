"""Every call of the Replicate adapter, sent to Prism serving Replicate's official OpenAPI spec, is valid."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from retirement.models import ModelRef, RetirementRequest
from retirement.platforms.replicate import ReplicatePredictionsTraffic, ReplicateRegistry, ReplicateServing
from tests.fakes.prism import PrismServer, RecordingHook, assert_no_violations, attempt, bearer_client, prism_fixture

pytestmark = pytest.mark.prism

prism_replicate = prism_fixture("replicate-openapi.json")
VERSION = "5c7d5dc6dd8bf75c1acaa8565735e7986bc5b66206b55cca93cb72c9bf15ccaa"
MODEL = ModelRef(platform="replicate", name="acme/churn")


@pytest.fixture
def hook() -> RecordingHook:
    return RecordingHook()


@pytest.fixture
def client(prism_replicate: PrismServer, hook: RecordingHook) -> Iterator[httpx.Client]:
    with bearer_client(prism_replicate, "r8_contracttest0123", hook) as c:
        yield c


def test_prism_flags_an_invalid_request(client: httpx.Client) -> None:
    response = client.get("predictions", params={"created_after": "yesterday"})
    with pytest.raises(AssertionError, match="422"):
        assert_no_violations(response)


def test_registry_calls_match_the_spec(client: httpx.Client, hook: RecordingHook) -> None:
    registry = ReplicateRegistry(client, sleep=lambda _s: None, poll_attempts=1)
    version = MODEL.model_copy(update={"version": VERSION})
    attempt(lambda: registry.describe(MODEL))
    attempt(lambda: registry.deletion_blockers(version))
    attempt(lambda: registry.dependents(version))
    attempt(lambda: registry.export(version))
    attempt(lambda: registry.exists(version))
    attempt(lambda: registry.list_versions())
    attempt(lambda: registry._delete_version(version, "acme", "churn", VERSION))
    attempt(lambda: registry._send("DELETE", "models/acme/churn"))
    # Prism's listings end with next="string", which the adapter refuses to follow; read first pages only.
    registry._pages = lambda url, params=None: iter(registry._get(url, params=params)["results"])  # type: ignore[method-assign]
    attempt(lambda: registry.describe(MODEL))
    attempt(lambda: registry.list_versions())
    hook.assert_clean()
    calls = set(hook.calls())
    for expected in (
        "GET /account",
        "GET /models",
        "GET /models/acme/churn",
        "GET /models/acme/churn/versions",
        f"GET /models/acme/churn/versions/{VERSION}",
        f"DELETE /models/acme/churn/versions/{VERSION}",
        "DELETE /models/acme/churn",
        "GET /deployments",
        "GET /trainings",
    ):
        assert expected in calls, f"{expected} was never sent; sent: {sorted(calls)}"


def test_serving_calls_match_the_spec(client: httpx.Client, hook: RecordingHook) -> None:
    serving = ReplicateServing(
        client,
        production_deployment="acme/prod",
        staging_deployment="acme/staging",
        smoke_input={"prompt": "hello"},
        sleep=lambda _s: None,
    )
    target = MODEL.model_copy(update={"version": VERSION})
    request = RetirementRequest(
        model=f"{MODEL.name}@{'a' * 64}",
        platform="replicate",
        replacement=f"{MODEL.name}@{VERSION}",
        requester="alice",
        approvers=["bob"],
        reason="contract",
    )
    attempt(lambda: serving.preflight(request))
    attempt(lambda: serving.production(MODEL))
    attempt(lambda: serving.deploy_staging(target))  # checks which model staging runs before any PATCH
    attempt(lambda: serving._patch({"owner": "acme", "name": "staging"}, VERSION))
    attempt(lambda: serving.smoke_test(target, requests=1))
    attempt(lambda: serving._patch({"owner": "acme", "name": "prod"}, VERSION))
    hook.assert_clean()
    calls = set(hook.calls())
    for expected in (
        "GET /deployments/acme/prod",
        "GET /deployments/acme/staging",
        "PATCH /deployments/acme/staging",
        "PATCH /deployments/acme/prod",
        "POST /deployments/acme/staging/predictions",
    ):
        assert expected in calls, f"{expected} was never sent; sent: {sorted(calls)}"


def test_traffic_calls_match_the_spec(client: httpx.Client, hook: RecordingHook) -> None:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    ReplicatePredictionsTraffic(client, sleep=lambda _s: None).sample(
        MODEL.model_copy(update={"version": VERSION}), start, start + timedelta(days=2)
    )
    hook.assert_clean()
    assert "GET /predictions" in hook.calls()
