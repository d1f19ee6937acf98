"""The Selise Blocks adapter against the recording fake project behind httpx.MockTransport."""

from __future__ import annotations

import json
from urllib.parse import quote, quote_plus

import httpx
import pytest
from pydantic import SecretStr

from retirement.errors import (
    AuthError,
    ConfigError,
    ConflictError,
    DeletionBlockedError,
    InputError,
    NotFoundError,
    PlatformError,
    PlatformUnavailableError,
)
from retirement.models import ModelRef, RetirementRequest
from retirement.platforms import get_platform
from retirement.platforms.selise import (
    TOKEN_PATH,
    SeliseClient,
    SeliseRegistry,
    SeliseServing,
    SeliseTokenAuth,
)
from retirement.settings import RetireSettings
from tests.fakes.selise import CLIENT_ID, CLIENT_SECRET, PROJECT_KEY, SeliseState

BASE = "https://selise.test"


class App:
    """The fake project as a MockTransport handler, with queued failures per (method, path)."""

    def __init__(self, state: SeliseState) -> None:
        self.state = state
        self.fail: dict[tuple[str, str], list[httpx.Response]] = {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        queued = self.fail.get((request.method, request.url.path))
        if queued:
            return queued.pop(0)
        status, body, headers = self.state.handle(
            request.method, str(request.url), dict(request.headers), request.read()
        )
        return httpx.Response(status, json=body, headers=headers)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def state() -> SeliseState:
    project = SeliseState()
    project.add_model("m-old", "gpt-4")
    project.add_model("m-new", "gpt-4o")
    project.add_agent("a-1", "Support", "m-old")
    project.add_agent("a-2", "Sales", "m-old")
    project.add_agent("a-3", "Docs", "m-new")
    return project


@pytest.fixture
def app(state: SeliseState) -> App:
    return App(state)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def api(app: App, clock: Clock, sleeps: list[float]) -> SeliseClient:
    auth = SeliseTokenAuth(BASE + TOKEN_PATH, SecretStr(PROJECT_KEY), CLIENT_ID, SecretStr(CLIENT_SECRET), clock=clock)
    client = httpx.Client(base_url=BASE, transport=httpx.MockTransport(app), auth=auth)
    return SeliseClient(client, SecretStr(PROJECT_KEY), sleep=sleeps.append)


@pytest.fixture
def registry(api: SeliseClient) -> SeliseRegistry:
    return SeliseRegistry(api)


OLD = ModelRef(platform="selise", name="m-old")
NEW = ModelRef(platform="selise", name="m-new")


def test_token_is_fetched_once_cached_and_renewed_on_expiry(
    registry: SeliseRegistry, state: SeliseState, clock: Clock
) -> None:
    assert registry.exists(OLD) and registry.exists(NEW)
    token_calls = state.calls_of("POST", TOKEN_PATH)
    assert len(token_calls) == 1
    # As Selise's OAuth Token page shows it: multipart/form-data, grant_type=client_credential.
    assert token_calls[0].headers["content-type"].startswith("multipart/form-data; boundary=")
    assert token_calls[0].body == {
        "grant_type": "client_credential",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
    }
    model_calls = state.calls_of("GET", "/models/")
    assert all(c.headers["x-blocks-key"] == PROJECT_KEY for c in model_calls)
    assert all(c.query["project_key"] == PROJECT_KEY for c in model_calls)
    assert len({c.headers["authorization"] for c in model_calls}) == 1
    clock.now += 3600
    registry.exists(OLD)
    assert len(state.calls_of("POST", TOKEN_PATH)) == 2


@pytest.mark.parametrize(
    ("grant_type", "encoding", "status"),
    [("client_credential", "urlencoded", 415), ("client_credentials", "multipart", 400)],
    ids=["form-urlencoded-body", "plural-grant-type"],
)
def test_the_fake_refuses_a_token_request_the_docs_do_not_show(
    app: App, state: SeliseState, grant_type: str, encoding: str, status: int
) -> None:
    fields = {"grant_type": grant_type, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    with httpx.Client(base_url=BASE, transport=httpx.MockTransport(app)) as http:
        headers = {"x-blocks-key": PROJECT_KEY}
        if encoding == "urlencoded":
            answer = http.post(TOKEN_PATH, data=fields, headers=headers)
        else:
            answer = http.post(TOKEN_PATH, files={k: (None, v) for k, v in fields.items()}, headers=headers)
    assert answer.status_code == status
    assert not state.tokens


def test_a_configured_grant_type_is_sent_for_deployments_that_differ(
    monkeypatch: pytest.MonkeyPatch, settings: RetireSettings
) -> None:
    monkeypatch.setenv("RETIRE_SELISE_PROJECT_KEY", PROJECT_KEY)
    monkeypatch.setenv("RETIRE_SELISE_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("RETIRE_SELISE_CLIENT_SECRET", CLIENT_SECRET)
    monkeypatch.setenv("RETIRE_SELISE_GRANT_TYPE", "client_credentials")
    platform = get_platform("selise", settings)
    try:
        registry = platform.registry
        assert isinstance(registry, SeliseRegistry)
        auth = registry.api.http.auth
        assert isinstance(auth, SeliseTokenAuth)
        request = auth._token_request()
        assert b'name="grant_type"\r\n\r\nclient_credentials\r\n' in request.read()
    finally:
        platform.close()


def test_a_401_renews_the_token_once(registry: SeliseRegistry, state: SeliseState) -> None:
    registry.exists(OLD)
    state.tokens.clear()  # the platform revoked every token
    assert registry.exists(OLD) is True
    assert len(state.calls_of("POST", TOKEN_PATH)) == 2


def test_bad_client_credentials_are_an_auth_error_without_the_secret(
    app: App, state: SeliseState, sleeps: list[float]
) -> None:
    auth = SeliseTokenAuth(BASE + TOKEN_PATH, SecretStr(PROJECT_KEY), CLIENT_ID, SecretStr("wrong-secret-value"))
    client = httpx.Client(base_url=BASE, transport=httpx.MockTransport(app), auth=auth)
    registry = SeliseRegistry(SeliseClient(client, SecretStr(PROJECT_KEY), sleep=sleeps.append))
    with pytest.raises(AuthError, match="invalid client credentials") as caught:
        registry.describe(OLD)
    assert "wrong-secret-value" not in str(caught.value)
    assert state.calls_of("GET") == []


@pytest.mark.parametrize("shape", ["text", "json"])
def test_a_refused_token_request_names_the_settings_and_never_what_was_sent(shape: str, sleeps: list[float]) -> None:
    # A token endpoint (or a proxy in front of it) that answers 401 by echoing the request it got.
    secret = "n0t-the-r1ght+secret/&="

    def echo(request: httpx.Request) -> httpx.Response:
        sent = request.read().decode()
        key = request.headers["x-blocks-key"]
        if shape == "text":
            return httpx.Response(
                401, text=f"invalid_client\n{request.method} {request.url}\nx-blocks-key: {key}\n{sent}"
            )
        detail = f"invalid client credentials in {sent}"
        return httpx.Response(401, json={"is_success": False, "detail": detail, "error": {"form": sent, "key": key}})

    auth = SeliseTokenAuth(BASE + TOKEN_PATH, SecretStr(PROJECT_KEY), CLIENT_ID, SecretStr(secret))
    client = httpx.Client(base_url=BASE, transport=httpx.MockTransport(echo), auth=auth)
    registry = SeliseRegistry(SeliseClient(client, SecretStr(PROJECT_KEY), sleep=sleeps.append))
    with pytest.raises(AuthError) as caught:
        registry.describe(OLD)
    said = f"{caught.value} {caught.value.detail!r}"
    assert str(caught.value).startswith("selise HTTP 401: the token endpoint refused the project's credentials")
    assert "RETIRE_SELISE_CLIENT_SECRET" in said and "invalid" in said
    for sent in (secret, quote_plus(secret), quote(secret, safe=""), PROJECT_KEY):
        assert sent not in said


def test_models_are_paginated_to_the_end(registry: SeliseRegistry, state: SeliseState) -> None:
    for i in range(248):
        state.add_model(f"m-{i:03}", f"model-{i}")
    entries = list(registry.list_versions())
    assert len(entries) == 250
    pages = [(c.query["page"], c.query["page_size"]) for c in state.calls_of("GET", "/models/")]
    assert pages == [("1", "100"), ("2", "100"), ("3", "100")]
    by_name = {e.reference.name: e for e in entries}
    assert {d.name for d in by_name["m-old"].dependents} == {"a-1", "a-2"}


def test_agents_are_paginated_to_the_end(registry: SeliseRegistry, state: SeliseState) -> None:
    for i in range(150):
        state.add_agent(f"x-{i:03}", f"agent {i}", "m-old")
    assert len(registry.dependents(OLD)) == 152
    offsets = [c.body["offset"] for c in state.calls_of("POST", "/agents/queries")]
    assert offsets == [0, 100]
    assert all(
        c.body["limit"] == 100 and c.body["project_key"] == PROJECT_KEY
        for c in state.calls_of("POST", "/agents/queries")
    )


def test_describe_names_the_agents_and_masks_credentials(registry: SeliseRegistry) -> None:
    dossier = registry.describe(OLD)
    assert [(d.kind, d.name, d.movable) for d in dossier.dependents] == [("agent", "a-1", True), ("agent", "a-2", True)]
    assert dossier.deployed_at == ["agent Support (a-1)", "agent Sales (a-2)"]
    assert dossier.versions[0].version == "gpt-4" and dossier.versions[0].active is True
    assert "sk-" not in json.dumps(dossier.metadata)
    assert [b.code for b in dossier.blockers] == ["agent", "agent"]
    assert dossier.capabilities is not None and dossier.capabilities.weights_exportable is False


def test_delete_refused_while_agents_use_the_model(registry: SeliseRegistry, state: SeliseState) -> None:
    with pytest.raises(DeletionBlockedError) as caught:
        registry.delete(OLD)
    assert "agent Support (a-1) uses model m-old" in str(caught.value)
    assert "agent Sales (a-2)" in str(caught.value)
    assert state.calls_of("DELETE") == []
    assert "m-old" in state.models


def test_the_last_model_cannot_be_deleted(registry: SeliseRegistry, state: SeliseState) -> None:
    state.agents.clear()
    del state.models["m-new"]
    with pytest.raises(DeletionBlockedError, match="only model of the project"):
        registry.delete(OLD)
    assert state.calls_of("DELETE") == []


def test_a_409_on_delete_is_blocked_with_selise_s_words(registry: SeliseRegistry, state: SeliseState) -> None:
    state.agents.clear()
    state.busy.add("m-old")
    with pytest.raises(DeletionBlockedError, match="Model is in use by active conversations"):
        registry.delete(OLD)
    assert "m-old" in state.models


def test_delete_after_the_agents_moved_is_verified_gone(registry: SeliseRegistry, state: SeliseState) -> None:
    state.agents.clear()
    receipt = registry.delete(OLD)
    assert receipt.verified_gone is True
    assert receipt.platform_response["detail"] == "AI model deleted successfully"
    assert [(c.path, c.query["project_key"]) for c in state.calls_of("DELETE")] == [("/models/m-old", PROJECT_KEY)]
    assert state.calls[-1].method == "GET" and state.calls[-1].path == "/models/m-old"


def test_delete_of_a_gone_model_is_not_found(registry: SeliseRegistry, state: SeliseState) -> None:
    with pytest.raises(NotFoundError):
        registry.delete(ModelRef(platform="selise", name="m-missing"))
    assert state.calls_of("DELETE") == []


def test_a_422_not_found_on_delete_is_not_found(registry: SeliseRegistry, app: App) -> None:
    app.state.agents.clear()
    app.fail[("DELETE", "/models/m-old")] = [
        httpx.Response(
            422,
            json={"detail": [{"loc": ["path", "model_id"], "msg": "model not found or already deleted", "type": "x"}]},
        )
    ]
    with pytest.raises(NotFoundError, match="model not found or already deleted"):
        registry.delete(OLD)


def test_errors_keep_selise_s_own_message(registry: SeliseRegistry, app: App, sleeps: list[float]) -> None:
    app.fail[("GET", "/models/m-old")] = [
        httpx.Response(
            422, json={"detail": [{"loc": ["query", "project_key"], "msg": "field required", "type": "missing"}]}
        )
    ]
    with pytest.raises(InputError, match=r"query\.project_key: field required"):
        registry.describe(OLD)
    app.fail[("GET", "/models/m-old")] = [
        httpx.Response(500, json={"is_success": False, "detail": "database unavailable", "error": {}})
    ] * 5
    with pytest.raises(PlatformUnavailableError, match="database unavailable"):
        registry.describe(OLD)
    assert len(sleeps) == 4


def test_429_is_retried_after_retry_after(registry: SeliseRegistry, app: App, sleeps: list[float]) -> None:
    app.fail[("GET", "/models/m-old")] = [httpx.Response(429, headers={"Retry-After": "3"}, json={"detail": "slow"})]
    assert registry.exists(OLD) is True
    assert sleeps == [3.0]


def test_no_deactivation_endpoint(registry: SeliseRegistry, state: SeliseState) -> None:
    with pytest.raises(ConflictError, match="no endpoint to update a model"):
        registry.set_active(OLD, False)
    assert state.calls == []


def test_a_version_is_refused_before_any_request(registry: SeliseRegistry, state: SeliseState) -> None:
    with pytest.raises(InputError) as caught:
        registry.delete(ModelRef(platform="selise", name="m-old", version="2"))
    assert caught.value.field == "model"
    assert state.calls == []


def test_export_is_configuration_only(registry: SeliseRegistry) -> None:
    items = {i.path: json.loads(b"".join(i.open())) for i in registry.export(OLD)}
    assert set(items) == {"model.json", "agents.json"}
    assert items["model.json"]["_id"] == "m-old"
    assert [a["id"] for a in items["agents.json"]] == ["a-1", "a-2"]


def test_cutover_moves_the_agents_and_rolls_back(api: SeliseClient, state: SeliseState) -> None:
    serving = SeliseServing(api)
    assert serving.production(OLD) == OLD
    assert serving.switch(NEW) == OLD
    assert {a: state.agents[a]["llm_config"]["ModelId"] for a in state.agents} == {
        "a-1": "m-new",
        "a-2": "m-new",
        "a-3": "m-new",
    }
    moved = state.agents["a-1"]
    assert moved["llm_config"]["ModelName"] == "gpt-4o" and moved["llm_config"]["Temperature"] == 0.2
    assert moved["rag_config"] == {"TopK": 5} and moved["tool_ids"] == ["tool-1"]
    updates = state.calls_of("POST", "/agents/update-ai-configurations")
    assert sorted(c.body["agent_id"] for c in updates) == ["a-1", "a-2"]
    assert serving.production(OLD) is None
    # rollback moves back only the agents the cutover moved
    assert serving.switch(OLD) == NEW
    assert {a: state.agents[a]["llm_config"]["ModelId"] for a in state.agents} == {
        "a-1": "m-old",
        "a-2": "m-old",
        "a-3": "m-new",
    }


def test_switch_without_a_known_source_is_refused(api: SeliseClient, state: SeliseState) -> None:
    with pytest.raises(ConflictError, match="call production"):
        SeliseServing(api).switch(NEW)
    assert state.calls_of("POST", "/agents/update") == []


def test_a_failed_agent_update_is_an_error(api: SeliseClient, app: App) -> None:
    app.fail[("POST", "/agents/update-ai-configurations")] = [
        httpx.Response(200, json={"is_success": False, "item_id": "a-1", "detail": "Agent is locked", "error": {}})
    ]
    serving = SeliseServing(api)
    serving.production(OLD)
    with pytest.raises(PlatformError, match="Agent is locked"):
        serving.switch(NEW)


def test_build_needs_the_project_key_and_a_client_credential(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RETIRE_SELISE_PROJECT_KEY", "RETIRE_SELISE_CLIENT_ID", "RETIRE_SELISE_CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RETIRE_SELISE_CLIENT_SECRET", "top-secret-value")
    with pytest.raises(ConfigError) as caught:
        get_platform("selise", RetireSettings())
    assert "RETIRE_SELISE_PROJECT_KEY" in str(caught.value) and "RETIRE_SELISE_CLIENT_ID" in str(caught.value)
    assert "top-secret-value" not in str(caught.value)


def test_preflight_refuses_a_replacement_the_agents_could_not_use(api: SeliseClient, state: SeliseState) -> None:
    retirement = RetirementRequest(
        model="m-old", platform="selise", replacement="m-new", requester="alice", approvers=["bob"], reason="old"
    )
    serving = SeliseServing(api)
    assert serving.preflight(retirement) == []
    state.models["m-new"]["IsActive"] = False
    [problem] = serving.preflight(retirement)
    assert problem.startswith("replacement m-new cannot serve the agents of m-old: the model is inactive")
    assert "remedy:" in problem
    assert state.calls_of("POST", "/agents/update-ai-configurations") == []
