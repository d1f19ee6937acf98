"""A retirement through the retire-model flow on every platform, against its fake (MLflow: a real server).

The adapters are the real ones, built from settings as a deployment builds them; only the traffic is
scripted (FakeTraffic, IDLE) where the platform has no usable traffic history. Each platform gets one
retirement that ends with the model gone, and one that a platform rule refuses when it is planned: the
document phase halts before the plan gate, with nothing staged, switched, backed up or deleted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

import tasks._context
from retirement import bootstrap
from retirement.backup.filesystem import FilesystemBackupStore
from retirement.bootstrap import Services, stores
from retirement.models import Phase, RetirementRequest
from retirement.platforms import Platform, get_platform
from retirement.platforms.mlflow import MlflowRegistry, MlflowServing
from retirement.settings import RetireSettings
from retirement.state import RetirementState
from retirement.traffic.base import TrafficSource
from tests.contract.test_registry_port import (
    MLFLOW_API,
    WEIGHTS,
    bailo_server,
    mlflow_model,
    mlflow_server,
    openai_server,
    replicate_server,
    selise_server,
    unique,
    use_bailo,
    use_openai,
    use_replicate,
    use_selise,
    use_vi,
    vi_server,
)
from tests.fakes import datature_vi as vi_fake
from tests.fakes import openai_api, replicate_api
from tests.fakes.bailo_api import ACCESS_KEY, SECRET_KEY, BailoApi
from tests.fakes.datature_vi import FakeVi
from tests.fakes.openai_api import OpenAIApi, checkpoint_of
from tests.fakes.platform import FakeTraffic, RecordingNotifier, World
from tests.fakes.replicate_api import ReplicateApi
from tests.fakes.selise import CLIENT_ID, CLIENT_SECRET, GRANT_TYPE, PROJECT_KEY, SeliseServer
from tests.flows.conftest import Answer, Driver

__all__ = ["bailo_server", "mlflow_server", "openai_server", "replicate_server", "selise_server", "vi_server"]

APPROVE = {"decision": "approve", "approver": "bob", "comment": "checked"}


@dataclass
class Retiring:
    """Wires a platform's real adapters into the flow's services, and drives the flow."""

    home: Path
    services: Services | None = None
    deletes: Callable[[], int] = field(default=lambda: 0)

    def use(self, platform: Platform, traffic: list[TrafficSource] | None = None) -> Services:
        settings = RetireSettings(home=self.home, min_traffic_window_hours=0, gate_poll_seconds=1)
        own = [platform.traffic] if platform.traffic is not None else []
        self.services = Services(
            settings=settings,
            platform=platform,
            traffic=own if traffic is None else traffic,
            backups=FilesystemBackupStore(settings.backup_dir),
            ledger=stores(settings)[0],
            notifier=RecordingNotifier(),
            states=stores(settings)[1],
        )
        services = self.services
        bootstrap.use_factory(lambda name, sources: services)
        tasks._context.reset()
        return services

    def run(self, request: RetirementRequest, typed: str | None = None) -> tuple[Any, RetirementState]:
        """The whole retirement; every gate approved by bob (the deletion gate with ``typed``)."""
        answers: dict[str, list[Answer]] = {
            "approve-plan": [APPROVE],
            "approve-cutover": [APPROVE],
            "confirm-manual-cutover": [APPROVE],
            "approve-deletion": [{**APPROVE, "typed_reference": typed or request.model}],
        }
        assert self.services is not None
        driver = Driver(cast(World, self))
        flow_state, state = driver.run(request, answers)
        assert not driver.refused, driver.refused
        return flow_state, state

    def assert_retired(self, flow_state: Any, state: RetirementState) -> None:
        """Done, verified gone, a verified backup of that exact model, an intact ledger."""
        assert self.services is not None
        assert flow_state.is_completed(), flow_state
        assert state.status == "done", state.status_reason
        assert state.receipt is not None and state.receipt.verified_gone
        assert state.backup_location is not None
        assert self.services.backups.verify(state.backup_location).ok
        assert [m.source for m in self.services.backups.list(state.ref)] == [state.ref]
        entries, _ = self.services.ledger.verify()
        assert entries > 5
        assert self.deletes() >= 1

    def assert_refused(self, flow_state: Any, state: RetirementState, words: str) -> None:
        """Refused when planned: halted in the document phase before the plan gate, nothing done, no DELETE."""
        assert flow_state.is_failed(), flow_state
        assert state.status == "halted"
        assert words in state.status_reason, state.status_reason
        assert state.status_reason.startswith("the plan is refused, nothing was done"), state.status_reason
        assert state.phase is Phase.DOCUMENT and state.approvals == []
        assert state.cutover_at is None and state.backup_location is None and state.receipt is None
        assert state.dossier is not None and any(words in r for r in state.dossier.refusals)
        assert self.deletes() == 0


@pytest.fixture
def retiring(prefect_server: None, retire_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Retiring]:
    monkeypatch.setenv("RETIRE_GATE_POLL_SECONDS", "1")
    wiring = Retiring(retire_home)
    yield wiring
    bootstrap.use_factory(None)
    tasks._context.reset()


def _request(model: str, platform: str, **overrides: object) -> RetirementRequest:
    data: dict[str, object] = {
        "model": model,
        "platform": platform,
        "requester": "alice",
        "approvers": ["alice", "bob"],
        "reason": "superseded",
        "traffic_window_hours": 2 / 3600,
        "bake_minutes": 0,
        "monitor_days": 0,
    }
    data.update(overrides)
    return RetirementRequest.model_validate(data)


def _idle() -> list[TrafficSource]:
    return [FakeTraffic(name="gateway-logs")]


# -- MLflow (a real server) ------------------------------------------------------------------------


def _mlflow(retiring: Retiring, url: str) -> httpx.Client:
    """The MLflow adapters on a client that counts the DELETEs it sends (the server keeps no such record)."""
    sent: list[str] = []
    client = httpx.Client(base_url=url, timeout=30, event_hooks={"request": [lambda r: sent.append(r.method)]})
    retiring.deletes = lambda: sent.count("DELETE")
    platform = Platform(name="mlflow", registry=MlflowRegistry(client), serving=MlflowServing(client))
    retiring.use(platform, _idle())
    return client


def test_mlflow_version_retired_through_the_flow(retiring: Retiring, mlflow_server: str) -> None:
    model = unique("flow-churn")
    mlflow_model(mlflow_server, model, production="1")
    _mlflow(retiring, mlflow_server)
    flow_state, state = retiring.run(_request(f"{model}@1", "mlflow", replacement=f"{model}@2"))
    retiring.assert_retired(flow_state, state)
    with httpx.Client(base_url=mlflow_server) as http:
        gone = http.get(f"{MLFLOW_API}/model-versions/get", params={"name": model, "version": "1"})
        assert gone.status_code == 404
        alias = http.get(f"{MLFLOW_API}/registered-models/alias", params={"name": model, "alias": "production"})
        assert alias.json()["model_version"]["version"] == "2"
    assert [a.gate for a in state.approvals] == ["approve-plan", "approve-cutover", "approve-deletion"]


def test_mlflow_alias_refuses_the_delete(retiring: Retiring, mlflow_server: str) -> None:
    model = unique("flow-champion")
    mlflow_model(mlflow_server, model)
    with httpx.Client(base_url=mlflow_server) as http:
        body = {"name": model, "alias": "champion", "version": "1"}
        assert http.post(f"{MLFLOW_API}/registered-models/alias", json=body).is_success
    _mlflow(retiring, mlflow_server)
    flow_state, state = retiring.run(_request(f"{model}@1", "mlflow"))
    retiring.assert_refused(flow_state, state, "alias 'champion'")
    with httpx.Client(base_url=mlflow_server) as http:
        assert http.get(f"{MLFLOW_API}/model-versions/get", params={"name": model, "version": "1"}).is_success


# -- Replicate -------------------------------------------------------------------------------------


def _replicate(
    retiring: Retiring, api: ReplicateApi, monkeypatch: pytest.MonkeyPatch, smoke: bool = True, **deployments: str
) -> None:
    use_replicate(monkeypatch, api)
    for name, value in deployments.items():
        monkeypatch.setenv(f"RETIRE_REPLICATE_{name.upper()}_DEPLOYMENT", value)
    if smoke:
        monkeypatch.setenv("RETIRE_REPLICATE_SMOKE_INPUT", '{"prompt": "hello"}')
    else:
        monkeypatch.delenv("RETIRE_REPLICATE_SMOKE_INPUT", raising=False)
    before = len(api.calls_of("DELETE"))
    retiring.deletes = lambda: len(api.calls_of("DELETE")) - before
    retiring.use(get_platform("replicate", RetireSettings()))  # its own predictions listing as traffic


def test_replicate_version_retired_through_the_flow(
    retiring: Retiring, replicate_server: ReplicateApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    slug, prod, staging = f"acme/{unique('flow')}", f"acme/{unique('prod')}", f"acme/{unique('staging')}"
    replicate_server.add_model(slug)
    old, new = replicate_server.add_version(slug), replicate_server.add_version(slug)
    replicate_server.add_deployment(prod, slug, old)
    replicate_server.add_deployment(staging, slug, new)
    _replicate(retiring, replicate_server, monkeypatch, production=prod, staging=staging)
    flow_state, state = retiring.run(_request(f"{slug}@{old}", "replicate", replacement=f"{slug}@{new}"))
    retiring.assert_retired(flow_state, state)
    headers = {"Authorization": f"Bearer {replicate_api.TOKEN}"}
    with httpx.Client(base_url=replicate_server.base_url, headers=headers) as http:
        assert http.get(f"/v1/models/{slug}/versions/{old}").status_code == 404
        assert http.get(f"/v1/deployments/{prod}").json()["current_release"]["version"] == new
    assert [c.path for c in replicate_server.calls_of("DELETE")] == [f"/v1/models/{slug}/versions/{old}"]
    assert any(s.source == "replicate" and s.verdict == "IDLE" for r in state.traffic for s in r.samples)


def test_replicate_version_with_a_deployment_is_refused(
    retiring: Retiring, replicate_server: ReplicateApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    slug, prod = f"acme/{unique('flow')}", f"acme/{unique('prod')}"
    replicate_server.add_model(slug)
    old = replicate_server.add_version(slug)
    replicate_server.add_deployment(prod, slug, old)
    _replicate(retiring, replicate_server, monkeypatch)
    flow_state, state = retiring.run(_request(f"{slug}@{old}", "replicate"))
    retiring.assert_refused(flow_state, state, f"deployment {prod} runs version {old}")
    assert old in replicate_server.models[slug].versions


def test_replicate_without_a_smoke_input_is_refused_before_any_patch(
    retiring: Retiring, replicate_server: ReplicateApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    slug, prod, staging = f"acme/{unique('flow')}", f"acme/{unique('prod')}", f"acme/{unique('staging')}"
    replicate_server.add_model(slug)
    old, new = replicate_server.add_version(slug), replicate_server.add_version(slug)
    replicate_server.add_deployment(prod, slug, old)
    replicate_server.add_deployment(staging, slug, old)
    patches = len(replicate_server.calls_of("PATCH"))
    _replicate(retiring, replicate_server, monkeypatch, smoke=False, production=prod, staging=staging)
    flow_state, state = retiring.run(_request(f"{slug}@{old}", "replicate", replacement=f"{slug}@{new}"))
    retiring.assert_refused(flow_state, state, "RETIRE_REPLICATE_SMOKE_INPUT is not set")
    assert len(replicate_server.calls_of("PATCH")) == patches
    assert replicate_server.deployments[staging]["current_release"]["version"] == old


# -- OpenAI ----------------------------------------------------------------------------------------


def _openai(retiring: Retiring, api: OpenAIApi, monkeypatch: pytest.MonkeyPatch) -> None:
    use_openai(monkeypatch, api)
    before = len(api.calls_of("DELETE"))
    retiring.deletes = lambda: len(api.calls_of("DELETE")) - before
    retiring.use(get_platform("openai", RetireSettings()))  # its own usage API as traffic


def test_openai_fine_tune_retired_with_a_manual_cutover(
    retiring: Retiring, openai_server: OpenAIApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, _ = openai_server.add_fine_tune("gpt-4o-mini-2024-07-18", unique("churn"))
    new, _ = openai_server.add_fine_tune("gpt-4o-mini-2024-07-18", unique("churn"))
    _openai(retiring, openai_server, monkeypatch)
    flow_state, state = retiring.run(_request(old, "openai", replacement=new, serving="manual"))
    retiring.assert_retired(flow_state, state)
    headers = {"Authorization": f"Bearer {openai_api.API_KEY}"}
    with httpx.Client(base_url=openai_server.base_url, headers=headers) as http:
        gone = http.get(f"/v1/models/{old}")
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "model_not_found"
        assert http.get(f"/v1/models/{new}").is_success
    assert [a.gate for a in state.approvals] == [
        "approve-plan",
        "approve-cutover",
        "confirm-manual-cutover",
        "approve-deletion",
    ]
    assert any(s.source == "openai" and s.verdict == "IDLE" for r in state.traffic for s in r.samples)


def test_openai_base_model_is_refused(
    retiring: Retiring, openai_server: OpenAIApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = unique("gpt-4o-base")
    openai_server.add_base_model(base)
    _openai(retiring, openai_server, monkeypatch)
    flow_state, state = retiring.run(_request(base, "openai"))
    retiring.assert_refused(flow_state, state, f"{base} is a base model")
    assert base in openai_server.models


def test_openai_parent_of_a_fine_tune_is_refused_then_retired_after_its_child(
    retiring: Retiring, openai_server: OpenAIApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    parent, _ = openai_server.add_fine_tune("gpt-4o-mini-2024-07-18", unique("parent"))
    child, job = openai_server.add_fine_tune(parent, unique("child"))
    _openai(retiring, openai_server, monkeypatch)
    flow_state, state = retiring.run(_request(parent, "openai"))
    retiring.assert_refused(flow_state, state, f"{child} was fine-tuned from {parent} by job {job['id']}")
    assert "(platform rule `fine_tune_parent`)" in state.status_reason
    assert openai_server.calls_of("DELETE", f"/v1/models/{parent}") == []
    assert parent in openai_server.models

    # The child first, then the parent: both retire.
    for model in (child, parent):
        _openai(retiring, openai_server, monkeypatch)
        flow_state, state = retiring.run(_request(model, "openai"))
        retiring.assert_retired(flow_state, state)
        assert state.ref.name == model and model not in openai_server.models
    assert [c.path for c in openai_server.calls_of("DELETE")][-2:] == [f"/v1/models/{child}", f"/v1/models/{parent}"]


def test_openai_fine_tune_shared_with_another_project_is_refused(
    retiring: Retiring, openai_server: OpenAIApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared, _ = openai_server.add_fine_tune("gpt-4o-mini-2024-07-18", unique("shared"))
    permission = openai_server.share(checkpoint_of(shared), "proj_fraud_team")
    _openai(retiring, openai_server, monkeypatch)
    flow_state, state = retiring.run(_request(shared, "openai"))
    retiring.assert_refused(flow_state, state, f"project proj_fraud_team may use {checkpoint_of(shared)}")
    assert f"checkpoint permission {permission}" in state.status_reason
    assert shared in openai_server.models


# -- Bailo -----------------------------------------------------------------------------------------


def _bailo(retiring: Retiring, api: BailoApi, monkeypatch: pytest.MonkeyPatch) -> None:
    use_bailo(monkeypatch, api)
    before = len(api.calls_of("DELETE"))
    retiring.deletes = lambda: len(api.calls_of("DELETE")) - before
    retiring.use(get_platform("bailo", RetireSettings()), _idle())


def _bailo_get(api: BailoApi, model_id: str) -> httpx.Response:
    with httpx.Client(base_url=api.base_url, auth=(ACCESS_KEY, SECRET_KEY)) as http:
        return http.get(f"/api/v2/model/{model_id}")


def test_bailo_model_retired_through_the_flow(
    retiring: Retiring, bailo_server: BailoApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_id = unique("flow-churn")
    bailo_server.add_model(model_id, {"weights.bin": WEIGHTS, "config.json": b"{}"})
    _bailo(retiring, bailo_server, monkeypatch)
    flow_state, state = retiring.run(_request(model_id, "bailo"))
    retiring.assert_retired(flow_state, state)
    gone = _bailo_get(bailo_server, model_id)
    assert gone.status_code == 404 and gone.json()["error"]["name"] == "NotFound"
    assert state.backup_location is not None
    assert (Path(state.backup_location) / "files" / f"{model_id}-file-0" / "weights.bin").read_bytes() == WEIGHTS


def test_bailo_model_without_delete_permission_is_refused(
    retiring: Retiring, bailo_server: BailoApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_id = unique("flow-shared")
    bailo_server.add_model(model_id, {"weights.bin": b"w"}, roles=("contributor",))
    _bailo(retiring, bailo_server, monkeypatch)
    flow_state, state = retiring.run(_request(model_id, "bailo"))
    retiring.assert_refused(flow_state, state, "lacks the Delete permission")
    assert _bailo_get(bailo_server, model_id).is_success


# -- Selise Blocks ---------------------------------------------------------------------------------


def _selise(retiring: Retiring, server: SeliseServer, monkeypatch: pytest.MonkeyPatch) -> None:
    use_selise(monkeypatch, server)
    before = len(server.state.calls_of("DELETE"))
    retiring.deletes = lambda: len(server.state.calls_of("DELETE")) - before
    retiring.use(get_platform("selise", RetireSettings()), _idle())


def _selise_get(server: SeliseServer, path: str) -> httpx.Response:
    """GET ``path`` from the fake as a client of the project would (token, x-blocks-key, project_key)."""
    with httpx.Client(base_url=server.base_url, headers={"x-blocks-key": PROJECT_KEY}) as http:
        form = {"grant_type": GRANT_TYPE, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
        answer = http.post("/authentication/v1/OAuth/Token", files={k: (None, v) for k, v in form.items()})
        token = answer.json()["access_token"]
        return http.get(path, params={"project_key": PROJECT_KEY}, headers={"Authorization": f"Bearer {token}"})


def test_selise_model_retired_through_the_flow(
    retiring: Retiring, selise_server: SeliseServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_id = unique("m-old")
    selise_server.state.add_model(model_id, "gpt-4")
    _selise(retiring, selise_server, monkeypatch)
    flow_state, state = retiring.run(_request(model_id, "selise"))
    retiring.assert_retired(flow_state, state)
    assert model_id not in selise_server.state.models
    assert _selise_get(selise_server, f"/models/{model_id}").status_code == 404


def test_selise_model_retired_with_its_agent_moved_to_the_replacement(
    retiring: Retiring, selise_server: SeliseServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new, agent = unique("m-old"), unique("m-new"), unique("agent")
    selise_server.state.add_model(old, "gpt-4")
    selise_server.state.add_model(new, "gpt-4o", provider="azure")
    selise_server.state.add_agent(agent, "Support", old)
    _selise(retiring, selise_server, monkeypatch)
    flow_state, state = retiring.run(_request(old, "selise", replacement=new))
    retiring.assert_retired(flow_state, state)
    assert [a.gate for a in state.approvals] == ["approve-plan", "approve-cutover", "approve-deletion"]
    assert state.previous_production is not None and state.previous_production.name == old
    # The cutover moved the agent through update-ai-configurations, keeping its other settings.
    moved = selise_server.state.agents[agent]
    assert moved["llm_config"] == {
        "Provider": "azure",
        "ModelName": "gpt-4o",
        "ModelId": new,
        "ModelType": "chat",
        "Temperature": 0.2,
    }
    assert moved["rag_config"] == {"TopK": 5} and moved["tool_ids"] == ["tool-1"]
    updates = [c.body for c in selise_server.state.calls_of("POST", "/agents/update-ai-configurations")]
    assert [(u["agent_id"], u["llm_config"]["ModelId"]) for u in updates if u["agent_id"] == agent] == [(agent, new)]
    # The old model is gone; the agent still answers with the new one.
    assert old not in selise_server.state.models
    assert _selise_get(selise_server, f"/models/{old}").status_code == 404
    assert _selise_get(selise_server, f"/models/{new}").is_success
    assert _selise_get(selise_server, f"/agents/query/{agent}").json()["agent"]["llm_config"]["ModelId"] == new
    assert [c.path for c in selise_server.state.calls_of("DELETE")][-1:] == [f"/models/{old}"]


def test_selise_model_used_by_an_agent_is_refused(
    retiring: Retiring, selise_server: SeliseServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_id, agent = unique("m-used"), unique("agent")
    selise_server.state.add_model(model_id, "gpt-4")
    selise_server.state.add_agent(agent, "Support", model_id)
    _selise(retiring, selise_server, monkeypatch)
    flow_state, state = retiring.run(_request(model_id, "selise"))
    retiring.assert_refused(flow_state, state, f"agent Support ({agent})")
    assert model_id in selise_server.state.models


# -- Datature Vi ------------------------------------------------------------------------------------


def _vi(retiring: Retiring, vi: FakeVi, monkeypatch: pytest.MonkeyPatch, production: str, staging: str) -> None:
    use_vi(monkeypatch, vi, production=production)
    monkeypatch.setenv("RETIRE_DATATURE_VI_STAGING_DEPLOYMENT", staging)
    before = sum(1 for method, _ in vi.requests if method == "DELETE")
    retiring.deletes = lambda: sum(1 for method, _ in vi.requests if method == "DELETE") - before
    # Vi's own source needs snapshots taken through the window; a two-second window has none.
    retiring.use(get_platform("datature-vi", RetireSettings()), _idle())


def test_datature_vi_run_retired_through_the_flow(
    retiring: Retiring, vi_server: FakeVi, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_old, run_new, prod, staging = unique("run-old"), unique("run-new"), unique("prod"), unique("staging")
    vi_server.add_run(run_old, {"c1": WEIGHTS, "c2": b"second checkpoint"})
    vi_server.add_run(run_new, {"n1": b"new weights"})
    vi_server.add_deployment(prod, run_old, "c1")
    vi_server.add_deployment(staging, run_new, "n1")
    _vi(retiring, vi_server, monkeypatch, prod, staging)
    request = _request(f"{run_old}@c1", "datature-vi", replacement=f"{run_new}@n1")
    flow_state, state = retiring.run(request, typed=run_old)  # the delete takes the whole run
    retiring.assert_retired(flow_state, state)
    headers = {"Authorization": f"Bearer {vi_fake.KEY}", "Organization-Id": vi_fake.ORG}
    with httpx.Client(base_url=vi_server.base_url, headers=headers) as http:
        assert http.get(f"/workspaces/{vi_fake.ORG}/runs/{run_old}").status_code == 404
        assert http.get(f"/workspaces/{vi_fake.ORG}/runs/{run_new}").is_success
    assert vi_server.deployments[prod]["spec"] == {"runId": run_new, "ckpt": "n1"}


def test_datature_vi_deployed_run_is_refused(
    retiring: Retiring, vi_server: FakeVi, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, other = unique("run-deployed"), unique("dep")
    vi_server.add_run(run, {"c1": b"weights"})
    vi_server.add_deployment(other, run, "c1")
    _vi(retiring, vi_server, monkeypatch, production=other, staging=unique("staging"))
    flow_state, state = retiring.run(_request(f"{run}@c1", "datature-vi"), typed=run)
    retiring.assert_refused(flow_state, state, other)
    assert run in vi_server.runs
