"""Local serving through a real gateway: staging, smoke test, cutover, rollback; export over HTTP."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from retirement.gateway.app import create_app
from retirement.gateway.requestlog import RequestLog
from retirement.gateway.server import serve_in_thread
from retirement.models import ModelRef, RetirementRequest
from retirement.platforms.base import Serving
from retirement.platforms.local import LocalRegistry, LocalServing

V1 = ModelRef.parse("churn-model@1")
V2 = ModelRef.parse("churn-model@2")


@pytest.fixture
def registry(tmp_path: Path) -> LocalRegistry:
    reg = LocalRegistry(tmp_path / "local")
    reg.seed_demo(total_bytes=64 * 1024)
    return reg


@pytest.fixture
def gateway(registry: LocalRegistry) -> Iterator[tuple[str, httpx.Client]]:
    with serve_in_thread(create_app(registry, RequestLog(registry.root))) as url, httpx.Client() as client:
        yield url, client


@pytest.fixture
def serving(registry: LocalRegistry, gateway: tuple[str, httpx.Client]) -> LocalServing:
    url, client = gateway
    return LocalServing(registry, client, url)


def test_local_serving_implements_the_port(serving: LocalServing) -> None:
    assert isinstance(serving, Serving)


def test_staging_then_smoke_test_is_answered_by_the_staged_version(serving: LocalServing) -> None:
    serving.deploy_staging(V2)
    result = serving.smoke_test(V2, requests=4)
    assert (result.ok, result.requests, result.errors) == (True, 4, 0)
    assert result.p95_latency_ms is not None


def test_a_smoke_test_fails_when_staging_answers_with_another_version(serving: LocalServing) -> None:
    serving.deploy_staging(V1)
    result = serving.smoke_test(V2, requests=2)
    assert not result.ok
    assert "answered by version 1, not 2" in result.detail


def test_a_smoke_test_fails_when_the_staged_version_is_deactivated(
    serving: LocalServing, registry: LocalRegistry
) -> None:
    serving.deploy_staging(V2)
    registry.set_active(V2, False)
    result = serving.smoke_test(V2, requests=2)
    assert (result.ok, result.errors) == (False, 2)
    assert "HTTP 410" in result.detail


def test_a_smoke_test_without_a_gateway_fails_and_says_it_is_unreachable(registry: LocalRegistry) -> None:
    with serve_in_thread(create_app(registry, RequestLog(registry.root))) as url:
        pass  # the port is free again: nothing listens there now
    with httpx.Client() as client:
        result = LocalServing(registry, client, url).smoke_test(V1, requests=1)
    assert not result.ok
    assert "unreachable" in result.detail


def test_switch_moves_production_returns_what_it_replaced_and_is_idempotent(
    serving: LocalServing, gateway: tuple[str, httpx.Client]
) -> None:
    url, client = gateway
    assert serving.production(V1.model) == V1
    assert serving.switch(V2) == V1
    assert serving.switch(V2) == V2
    assert serving.production(V1.model) == V2
    answer = client.post(f"{url}/v1/models/churn-model@production/predict", json={"inputs": {"x": 1}})
    assert answer.json()["version"] == "2"
    assert serving.switch(V1) == V2  # rollback


def test_export_through_the_gateway_streams_the_exact_bytes(
    registry: LocalRegistry, gateway: tuple[str, httpx.Client]
) -> None:
    url, client = gateway
    exporting = LocalRegistry(registry.root, client=client, gateway_url=url)
    registry.set_active(V1, False)  # the backup happens after the soft step
    for item in exporting.export(V1):
        data = b"".join(item.open())
        assert data == registry.file_path(V1, item.path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == item.sha256


def test_preflight_refuses_a_replacement_of_another_model(serving: LocalServing) -> None:
    def retirement(replacement: str) -> RetirementRequest:
        return RetirementRequest(
            model="churn@1", replacement=replacement, requester="alice", approvers=["bob"], reason="superseded"
        )

    assert serving.preflight(retirement("churn@2")) == []
    [problem] = serving.preflight(retirement("fraud@1"))
    assert problem.startswith("fraud@1 cannot take over production of churn@1: the local gateway routes each model")
    assert "remedy: name a version of churn as the replacement" in problem
