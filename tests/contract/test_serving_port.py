"""The Serving contract, kept by every adapter that can switch production and by the local default.

A cutover needs three things of a serving target: ``switch`` returns what it replaced (the rollback
target), ``production`` then answers the new version, and switching again changes nothing. Before any
of that, ``preflight`` passes a retirement the target can carry and changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from retirement.models import ModelRef, RetirementRequest
from retirement.platforms import get_platform
from retirement.platforms.base import Serving
from retirement.platforms.local import LocalRegistry, LocalServing
from retirement.platforms.mlflow import MlflowServing
from retirement.settings import RetireSettings
from tests.contract.test_registry_port import (
    local_model,
    mlflow_model,
    mlflow_server,
    replicate_server,
    selise_server,
    unique,
    use_replicate,
    use_selise,
    use_vi,
    vi_server,
)
from tests.fakes.datature_vi import FakeVi
from tests.fakes.replicate_api import ReplicateApi
from tests.fakes.selise import SeliseServer

__all__ = ["mlflow_server", "replicate_server", "selise_server", "vi_server"]


@dataclass
class Case:
    """A serving target whose production runs ``old``, and the ``new`` version to switch to."""

    serving: Serving
    old: ModelRef
    new: ModelRef


def _case(platform: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp: Path) -> Case:
    if platform == "local":
        registry = LocalRegistry(tmp / "local")
        local_model(registry, "churn", production="1")
        client = httpx.Client()
        request.addfinalizer(client.close)
        old, new = (ModelRef(platform="local", name="churn", version=v) for v in ("1", "2"))
        return Case(LocalServing(registry, client, "http://127.0.0.1:9"), old, new)
    if platform == "mlflow":
        url = request.getfixturevalue("mlflow_server")
        model = unique("serving")
        mlflow_model(url, model, production="1")
        client = httpx.Client(base_url=url, timeout=30)
        request.addfinalizer(client.close)
        old, new = (ModelRef(platform="mlflow", name=model, version=v) for v in ("1", "2"))
        return Case(MlflowServing(client), old, new)
    if platform == "replicate":
        rep: ReplicateApi = request.getfixturevalue("replicate_server")
        use_replicate(monkeypatch, rep)
        slug = f"acme/{unique('serving')}"
        rep.add_model(slug)
        v1, v2 = rep.add_version(slug), rep.add_version(slug)
        prod, staging = f"acme/{unique('prod')}", f"acme/{unique('staging')}"
        rep.add_deployment(prod, slug, v1)
        rep.add_deployment(staging, slug, v2)
        monkeypatch.setenv("RETIRE_REPLICATE_PRODUCTION_DEPLOYMENT", prod)
        monkeypatch.setenv("RETIRE_REPLICATE_STAGING_DEPLOYMENT", staging)
        monkeypatch.setenv("RETIRE_REPLICATE_SMOKE_INPUT", '{"prompt": "hello"}')
        old, new = (ModelRef(platform="replicate", name=slug, version=v) for v in (v1, v2))
        return Case(_serving("replicate"), old, new)
    if platform == "selise":
        server: SeliseServer = request.getfixturevalue("selise_server")
        use_selise(monkeypatch, server)
        m_old, m_new = unique("m"), unique("m")
        server.state.add_model(m_old, "gpt-4")
        server.state.add_model(m_new, "gpt-4o")
        server.state.add_agent(unique("agent"), "Support", m_old)
        return Case(
            _serving("selise"), ModelRef(platform="selise", name=m_old), ModelRef(platform="selise", name=m_new)
        )
    assert platform == "datature-vi"
    vi: FakeVi = request.getfixturevalue("vi_server")
    dep, r_old, r_new = unique("dep"), unique("run"), unique("run")
    vi.add_run(r_old, {"c1": b"old"})
    vi.add_run(r_new, {"n1": b"new"})
    vi.add_deployment(dep, r_old, "c1")
    staging = unique("staging")
    vi.add_deployment(staging, r_new, "n1")
    use_vi(monkeypatch, vi, production=dep)
    monkeypatch.setenv("RETIRE_DATATURE_VI_STAGING_DEPLOYMENT", staging)
    old, new = (
        ModelRef(platform="datature-vi", name=r_old, version="c1"),
        ModelRef(platform="datature-vi", name=r_new, version="n1"),
    )
    return Case(_serving("datature-vi"), old, new)


def _serving(platform: str) -> Serving:
    serving = get_platform(platform, RetireSettings()).serving
    assert serving is not None, f"{platform} has no serving adapter"
    return serving


@pytest.fixture(params=["local", "mlflow", "replicate", "selise", "datature-vi"])
def case(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Case]:
    built = _case(request.param, request, monkeypatch, tmp_path)
    yield built
    closer = getattr(built.serving, "close", None)
    if callable(closer):
        closer()


def test_adapter_is_a_serving_target(case: Case) -> None:
    assert isinstance(case.serving, Serving)


def test_preflight_passes_a_retirement_the_target_can_carry_and_changes_nothing(case: Case) -> None:
    request = RetirementRequest(
        model=str(case.old),
        platform=case.old.platform,
        replacement=str(case.new),
        requester="alice",
        approvers=["bob"],
        reason="superseded",
    )
    assert case.serving.preflight(request) == []
    assert case.serving.production(case.old.model) == case.old


def test_switch_returns_what_it_replaced_and_production_follows(case: Case) -> None:
    assert case.serving.production(case.old.model) == case.old
    assert case.serving.switch(case.new) == case.old
    assert case.serving.production(case.new.model) == case.new


def test_switching_again_changes_nothing(case: Case) -> None:
    case.serving.production(case.old.model)
    case.serving.switch(case.new)
    again = case.serving.switch(case.new)
    assert again in (case.new, None), f"a repeated switch replaced {again}"
    assert case.serving.production(case.new.model) == case.new


def test_switching_back_restores_the_old_version(case: Case) -> None:
    case.serving.production(case.old.model)
    case.serving.switch(case.new)
    assert case.serving.switch(case.old) == case.new
    assert case.serving.production(case.old.model) == case.old
