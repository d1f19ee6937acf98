"""The Selise adapters, built from settings, against the fake Selise Blocks server over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from retirement.errors import DeletionBlockedError, InputError, NotFoundError
from retirement.models import ModelRef
from retirement.platforms import Platform, get_platform
from retirement.platforms.selise import SeliseRegistry, SeliseServing
from retirement.settings import RetireSettings
from tests.fakes.selise import CLIENT_ID, CLIENT_SECRET, PROJECT_KEY, SeliseServer

OLD = ModelRef(platform="selise", name="m-old")
NEW = ModelRef(platform="selise", name="m-new")


@pytest.fixture
def server() -> Iterator[SeliseServer]:
    with SeliseServer() as running:
        running.state.add_model("m-old", "gpt-4")
        running.state.add_model("m-new", "gpt-4o", Provider="azure")
        running.state.add_agent("a-1", "Support", "m-old")
        running.state.add_agent("a-2", "Sales", "m-old")
        yield running


@pytest.fixture
def platform(server: SeliseServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Platform]:
    monkeypatch.setenv("RETIRE_SELISE_BASE_URL", server.base_url)
    monkeypatch.setenv("RETIRE_SELISE_PROJECT_KEY", PROJECT_KEY)
    monkeypatch.setenv("RETIRE_SELISE_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("RETIRE_SELISE_CLIENT_SECRET", CLIENT_SECRET)
    built = get_platform("selise", RetireSettings())
    try:
        yield built
    finally:
        built.close()


def test_retire_a_model_used_by_agents_end_to_end(platform: Platform, server: SeliseServer) -> None:
    registry, serving = platform.registry, platform.serving
    assert isinstance(registry, SeliseRegistry) and isinstance(serving, SeliseServing)
    state = server.state

    # 1. the model the agents use is refused before any DELETE
    with pytest.raises(DeletionBlockedError) as caught:
        registry.delete(OLD)
    assert "agent Support (a-1)" in str(caught.value) and "agent Sales (a-2)" in str(caught.value)
    assert state.calls_of("DELETE") == []

    # 2. cutover moves every agent to the replacement
    assert serving.production(OLD) == OLD
    assert serving.switch(NEW) == OLD
    for agent in ("a-1", "a-2"):
        llm = state.agents[agent]["llm_config"]
        assert (llm["ModelId"], llm["ModelName"], llm["Provider"]) == ("m-new", "gpt-4o", "azure")
    assert serving.production(OLD) is None
    assert registry.dependents(OLD) == []

    # 3. now the delete goes through and the model is gone
    receipt = registry.delete(OLD)
    assert receipt.verified_gone is True
    assert [c.path for c in state.calls_of("DELETE")] == ["/models/m-old"]
    assert "m-old" not in state.models
    with pytest.raises(NotFoundError):
        registry.describe(OLD)
    assert registry.exists(OLD) is False
    with pytest.raises(NotFoundError):
        registry.delete(OLD)
    assert len(state.calls_of("DELETE")) == 1

    # the replacement is now the last model of the project: it cannot be deleted
    state.agents.clear()
    with pytest.raises(DeletionBlockedError, match="only model of the project"):
        registry.delete(NEW)
    assert len(state.calls_of("DELETE")) == 1


def test_the_server_answers_bad_query_parameters_with_fastapi_422(platform: Platform, server: SeliseServer) -> None:
    registry = platform.registry
    assert isinstance(registry, SeliseRegistry)
    with pytest.raises(InputError, match=r"query\.page_size: ensure this value is between 1 and 100"):
        registry.api.request("GET", "models/", params={"page_size": 500})
    # the adapter itself only ever asks for pages the server accepts
    assert [e.reference.name for e in registry.list_versions()] == ["m-old", "m-new"]


def test_secrets_travel_only_in_headers_and_the_token_form(platform: Platform, server: SeliseServer) -> None:
    registry = platform.registry
    assert isinstance(registry, SeliseRegistry)
    registry.describe(OLD)
    token_calls = server.state.calls_of("POST", "/authentication/v1/OAuth/Token")
    assert len(token_calls) == 1
    others = [c for c in server.state.calls if c not in token_calls]
    assert others and all(CLIENT_SECRET not in repr(c.query) + repr(c.body) for c in others)
    assert all(c.headers["authorization"].startswith("Bearer ") for c in others)
    with pytest.raises(httpx.HTTPStatusError):
        httpx.get(f"{server.base_url}/models/m-old", params={"project_key": PROJECT_KEY}).raise_for_status()
