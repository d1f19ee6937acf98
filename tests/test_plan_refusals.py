"""A retirement that could never finish is refused when it is planned, before anything is done.

`retire plan` shows each refusal with its remedy and exits non-zero, `retire start` refuses before a run
is started, and the document phase halts on them before the plan gate. Each platform's documented
deletion rules are refused this way, with the rule named and no DELETE sent. Invariant 4 is the
protocol's: it re-scans the dependents itself before the delete, whatever the adapter's blockers say.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

import retirement.cli._prefect
from retirement import protocol
from retirement.cli import main
from retirement.errors import SafetyError
from retirement.models import ModelRef, TrafficVerdict, utcnow
from retirement.platforms.local import LocalRegistry
from retirement.settings import RetireSettings
from tests.contract.test_registry_port import (
    MLFLOW_API,
    bailo_server,
    mlflow_model,
    mlflow_server,
    openai_server,
    replicate_server,
    selise_server,
    unique,
    use_bailo,
    use_mlflow,
    use_openai,
    use_replicate,
    use_selise,
    use_vi,
    vi_server,
)
from tests.fakes.bailo_api import BailoApi
from tests.fakes.datature_vi import FakeVi
from tests.fakes.openai_api import OpenAIApi
from tests.fakes.platform import FakeTraffic, World, make_world
from tests.fakes.replicate_api import ReplicateApi
from tests.fakes.selise import SeliseServer
from tests.test_protocol import _approve, _later, _request, _to_backup

__all__ = ["bailo_server", "mlflow_server", "openai_server", "replicate_server", "selise_server", "vi_server"]

START = ["--requester", "alice", "--approvers", "bob", "--reason", "superseded by v2"]


@pytest.fixture
def world(retire_home: Path) -> World:
    return make_world(retire_home)


def _nothing_done(world: World) -> None:
    """No staging, no switch, no soft step, no delete attempt."""
    assert world.serving.staging == {} and world.serving.switches == []
    assert world.registry.calls == []


# -- the protocol: what is refused, and that nothing is done ----------------------------------------------


def test_a_dependent_the_retirement_does_not_move_halts_the_document_phase_before_the_plan_gate(world: World) -> None:
    world.registry.consumers[world.old] = ["fraud-scoring-job"]
    svc = world.services
    state = protocol.open_retirement(svc, _request(), None)
    with pytest.raises(SafetyError, match=r"the plan is refused, nothing was done \(1 reason\(s\)\)") as refused:
        protocol.document(svc, state)
    assert "consumer fraud-scoring-job" in str(refused.value) and "remedy:" in str(refused.value)
    _nothing_done(world)
    kept = svc.states.load(state.id)
    assert kept.dossier is not None and kept.dossier.refusals == [str(refused.value).split(": ", 1)[1]]
    assert kept.approvals == []  # the plan gate was never asked
    assert [e.kind for e in svc.ledger.entries(state.id) if e.kind == "intent"] == []
    with pytest.raises(SafetyError, match="fraud-scoring-job"):  # a re-run refuses as well
        protocol.document(svc, kept)


def test_a_dependent_only_a_cutover_moves_is_refused_when_nothing_replaces_the_model(world: World) -> None:
    dossier = protocol.build_dossier(world.services, _request(replacement=None))
    assert len(dossier.refusals) == 1
    assert dossier.refusals[0].startswith("alias production points at churn-model@1 (platform rule `alias`)")
    assert "only a cutover to a replacement lifts it, and this retirement names none" in dossier.refusals[0]
    # With the replacement the cutover moves it: nothing is refused.
    assert protocol.build_dossier(world.services, _request()).refusals == []


def test_what_the_serving_target_says_it_would_stop_at_is_refused(world: World) -> None:
    world.serving.missing_settings = ["FAKE_STAGING_TARGET"]
    world.registry.add(ModelRef(platform="local", name="other-model", version="1"))
    dossier = protocol.build_dossier(world.services, _request(replacement="other-model@1"))
    assert dossier.refusals[0] == "FAKE_STAGING_TARGET is not set; remedy: set it"
    assert dossier.refusals[1].startswith("other-model@1 cannot take over production of churn-model@1")
    # A person doing the cutover (serving=manual): the target's own steps are not taken, so not asked.
    manual = protocol.build_dossier(world.services, _request(replacement="other-model@1", serving="manual"))
    assert manual.refusals == []


def test_no_traffic_source_is_refused(world: World) -> None:
    world.services.traffic = []
    dossier = protocol.build_dossier(world.services, _request())
    assert dossier.refusals == [
        "no traffic source observes local: verify-idle could never see zero requests to churn-model@1; "
        "remedy: name one in `traffic_sources` (e.g. prometheus)"
    ]


@pytest.mark.parametrize(("verdict", "refused"), [(TrafficVerdict.ERROR, True), (TrafficVerdict.NODATA, False)])
def test_a_source_that_cannot_observe_the_reference_is_refused_missing_data_is_not(
    world: World, verdict: TrafficVerdict, refused: bool
) -> None:
    blind = FakeTraffic(name="blind")
    blind.verdicts["churn-model@1"] = verdict
    world.services.traffic = [world.traffic, blind]
    dossier = protocol.build_dossier(world.services, _request())
    expected = ["traffic source blind cannot observe churn-model@1: scripted; remedy: fix the source, or name sources"]
    assert [r[: len(expected[0])] for r in dossier.refusals] == (expected if refused else [])
    # The source was asked about a window long past: nothing it records as it is asked is touched.
    key, start, end = blind.asked[-1]
    assert key == "churn-model@1" and end <= utcnow() - timedelta(days=1) and end - start == timedelta(minutes=1)


def test_prometheus_refuses_a_reference_without_a_version_at_plan_time(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from retirement.traffic.prometheus import build as prometheus

    monkeypatch.setenv("RETIRE_PROMETHEUS_URL", "http://127.0.0.1:9")  # never asked: refused before any query
    whole = world.registry.add(ModelRef(platform="local", name="churn-model"))
    world.services.traffic = [prometheus(world.services.settings)]
    try:
        dossier = protocol.build_dossier(world.services, _request(model=str(whole), replacement=None))
    finally:
        world.services.traffic[0].close()  # type: ignore[attr-defined]
    assert any(
        r.startswith("traffic source prometheus cannot observe churn-model: churn-model names no version")
        for r in dossier.refusals
    ), dossier.refusals


@pytest.fixture
def silent(retire_home: Path) -> World:
    """The fake platform, with an adapter whose own blockers never say anything: the protocol must find dependents."""
    built = make_world(retire_home)
    built.registry.deletion_blockers = lambda ref: []  # type: ignore[method-assign]
    return built


def test_a_dependent_that_appears_during_the_window_halts_verify_idle_by_kind_and_name(silent: World) -> None:
    svc = silent.services
    state = protocol.open_retirement(svc, _request(), None)
    protocol.document(svc, state)
    _approve(state, protocol.GATE_PLAN)
    protocol.stage(svc, state)
    _approve(state, protocol.GATE_CUTOVER)
    protocol.cutover(svc, state, utcnow())
    protocol.open_window(svc, state, utcnow())
    silent.registry.consumers[silent.old] = ["nightly-batch"]
    assert state.window_end is not None
    with pytest.raises(SafetyError, match="still depended on: consumer nightly-batch still depends on churn-model@1"):
        protocol.verify_idle(svc, state, state.window_end)
    assert not [c for c in silent.registry.calls if c[0].startswith("delete")]


def test_a_dependent_that_appears_before_the_delete_refuses_it_with_no_delete_sent(silent: World) -> None:
    state = _to_backup(silent)
    _approve(state, protocol.GATE_DELETION)
    silent.registry.consumers[silent.old] = ["late-dashboard"]
    with pytest.raises(SafetyError, match="consumer late-dashboard still depends on churn-model@1"):
        protocol.delete(silent.services, state, _later(state))  # type: ignore[arg-type]
    assert not [c for c in silent.registry.calls if c[0].startswith("delete")]
    assert silent.registry.exists(silent.old)


# -- the command line ----------------------------------------------------------------------------------


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def consumed(retire_home: Path) -> Path:
    """The demo models on the local platform; a batch job declared it uses churn-model@1."""
    registry = LocalRegistry(RetireSettings().local_dir)
    old, _ = registry.seed_demo(64 * 1024)
    registry.add_consumer(old, "billing-batch", "nightly scoring")
    return retire_home


@pytest.fixture
def no_server(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    reached: list[str] = []

    def use_server(settings: RetireSettings) -> str:
        reached.append("use_server")
        raise AssertionError("a refused retirement reached the Prefect server")

    monkeypatch.setattr(retirement.cli._prefect, "use_server", use_server)
    return reached


def test_retire_plan_shows_the_refusals_with_their_remedies_and_exits_non_zero(
    consumed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = tree(consumed)
    assert main(["plan", "--model", "churn-model@1", "--replacement", "churn-model@2"]) == 1
    out, err = capsys.readouterr()
    assert "## Refused: this retirement could never finish as asked" in out
    assert "1. consumer 'billing-batch' declared that it uses churn-model@1 (platform rule `consumer`)" in out
    assert "retire plan: refused (1 reason(s)):" in err
    assert "remedy: move the consumer off it, then withdraw it (`retire local consumer remove" in err
    assert tree(consumed) == before


def test_retire_plan_json_carries_the_refusals(consumed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    assert main(["plan", "--model", "churn-model@1", "--replacement", "churn-model@2", "--json"]) == 1
    refusals = json.loads(capsys.readouterr().out)["refusals"]
    assert len(refusals) == 1 and "billing-batch" in refusals[0]


def test_retire_start_refuses_before_a_run_is_started(
    consumed: Path, no_server: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    before = tree(consumed)
    code = main(["start", "--model", "churn-model@1", "--replacement", "churn-model@2", *START])
    err = capsys.readouterr().err
    assert code == 2
    assert "retire start: error: refused, nothing was started (1 reason(s)" in err
    assert "- consumer 'billing-batch' declared that it uses churn-model@1" in err
    assert no_server == [] and tree(consumed) == before


# -- each platform's documented deletion rules, refused by `retire plan` with no DELETE sent ------------------


@dataclass
class Rule:
    """A model a platform rule forbids deleting, the words that name the rule, and the DELETEs sent so far."""

    arguments: list[str]
    named: list[str]
    deletes: Callable[[], int]


def _openai(rule: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Rule:
    api: OpenAIApi = request.getfixturevalue("openai_server")
    use_openai(monkeypatch, api)
    parent, _ = api.add_fine_tune("gpt-4o-mini-2024-07-18", unique("parent"))
    target, named = parent, [f"platform rule `{rule}`"]
    if rule == "base_model":
        target = unique("gpt-base")
        api.add_base_model(target)
        named.append(f"{target} is a base model")
    elif rule == "not_owner":
        target = f"ft:gpt-4o-mini-2024-07-18:other:{unique('theirs')}:1"
        api.models[target] = {"id": target, "object": "model", "created": 1, "owned_by": "org-other"}
        named.append("does not belong to this organisation")
    elif rule == "fine_tune_parent":
        child, _ = api.add_fine_tune(parent, unique("child"))
        named.append(f"{child} was fine-tuned from {parent}")
    elif rule == "fine_tune_in_progress":
        _, job = api.add_fine_tune(parent, unique("running"), status="running")
        named.append(f"fine-tuning job {job['id']} is training on top of {parent}")
    else:
        assert rule == "shared"
        api.share(parent, "proj_fraud")
        named.append("project proj_fraud may use")
    before = len(api.calls_of("DELETE"))
    return Rule(["--platform", "openai", "--model", target], named, lambda: len(api.calls_of("DELETE")) - before)


def _replicate(rule: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Rule:
    api: ReplicateApi = request.getfixturevalue("replicate_server")
    use_replicate(monkeypatch, api)
    owner = "someone-else" if rule == "not_owner" else "acme"
    slug = f"{owner}/{unique('rule')}"
    api.add_model(slug, visibility="public" if rule == "not_private" else "private")
    version = api.add_version(slug)
    named = [f"platform rule `{rule}`"]
    if rule == "deployment":
        # A deployment that is neither the production nor the staging one: nothing moves it.
        dashboard, elsewhere = f"acme/{unique('dashboard')}", f"acme/{unique('elsewhere')}"
        api.add_deployment(dashboard, slug, version)
        api.add_model(elsewhere)
        production = f"acme/{unique('prod')}"
        api.add_deployment(production, elsewhere, api.add_version(elsewhere))
        monkeypatch.setenv("RETIRE_REPLICATE_PRODUCTION_DEPLOYMENT", production)
        named.append(f"deployment {dashboard} runs version {version}")
    elif rule == "fine_tune_base":
        api.add_training(slug, version, f"acme/{unique('tuned')}")
        named.append(f"version {version} is the base of training")
    elif rule == "not_owner":
        named.append(f"is owned by '{owner}'")
    else:
        named.append("Replicate deletes only private models")
    before = len(api.calls_of("DELETE"))
    arguments = ["--platform", "replicate", "--model", f"{slug}@{version}"]
    return Rule(arguments, named, lambda: len(api.calls_of("DELETE")) - before)


def _bailo(rule: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Rule:
    api: BailoApi = request.getfixturevalue("bailo_server")
    use_bailo(monkeypatch, api)
    model_id = unique("rule")
    api.add_model(
        model_id, {"weights.bin": b"w"}, roles=("contributor",) if rule == "delete_permission" else ("owner",)
    )
    named = [f"platform rule `{rule}`"]
    if rule == "inference_service":
        api.inferences[model_id] = [{"image": "yolo", "tag": "v1", "description": "live"}]
        named.append("inference service yolo:v1")
    elif rule == "access_request":
        api.access_requests[model_id] = [
            {"id": "ar-analytics", "metadata": {"overview": {"name": "Analytics", "entities": ["user:bob"]}}}
        ]
        named.append("access request ar-analytics")
    else:
        named.append("lacks the Delete permission")
    before = len(api.calls_of("DELETE"))
    arguments = ["--platform", "bailo", "--model", model_id]
    return Rule(arguments, named, lambda: len(api.calls_of("DELETE")) - before)


def _selise(rule: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Rule:
    server: SeliseServer = request.getfixturevalue("selise_server")
    use_selise(monkeypatch, server)
    model_id = unique("m-rule")
    server.state.add_model(model_id, "gpt-4")
    named = [f"platform rule `{rule}`"]
    if rule == "agent":
        agent = unique("agent")
        server.state.add_agent(agent, "Support", model_id)
        named += [f"agent Support ({agent}) uses model {model_id}", "this retirement names none"]
    else:
        server = SeliseServer().__enter__()  # a project of its own, whose only model this is
        request.addfinalizer(lambda: server.__exit__(None, None, None))
        use_selise(monkeypatch, server)
        server.state.add_model(model_id, "gpt-4")
        named.append("Selise cannot delete the last model")
    before = len(server.state.calls_of("DELETE"))
    arguments = ["--platform", "selise", "--model", model_id]
    return Rule(arguments, named, lambda: len(server.state.calls_of("DELETE")) - before)


def _vi(rule: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Rule:
    vi: FakeVi = request.getfixturevalue("vi_server")
    use_vi(monkeypatch, vi)
    run, dep = unique("run"), unique("dashboard")
    vi.add_run(run, {"c1": b"one", "c2": b"two"})
    vi.add_deployment(dep, run, "c2")  # another checkpoint of the run: the run's delete takes it too
    named = [f"platform rule `{rule}`", f"deployment {dep}-name serves {run}@c2", "deleting run"]
    before = sum(1 for method, _ in vi.requests if method == "DELETE")
    arguments = ["--platform", "datature-vi", "--model", f"{run}@c1"]
    return Rule(arguments, named, lambda: sum(1 for method, _ in vi.requests if method == "DELETE") - before)


def _mlflow(rule: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Rule:
    url: str = request.getfixturevalue("mlflow_server")
    use_mlflow(monkeypatch, url)
    sent: list[str] = []  # the MLflow server keeps no request log: every request the adapter sends is counted
    send = httpx.Client.send

    def counting(self: httpx.Client, outgoing: httpx.Request, **kwargs: object) -> httpx.Response:
        sent.append(outgoing.method)
        return send(self, outgoing, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(httpx.Client, "send", counting)
    model = unique("rule")
    mlflow_model(url, model)
    if rule == "alias":
        with httpx.Client(base_url=url) as http:
            body = {"name": model, "alias": "champion", "version": "1"}
            assert http.post(f"{MLFLOW_API}/registered-models/alias", json=body).is_success
        named = ["platform rule `alias`", f"alias 'champion' points at {model}@1"]
        return Rule(["--platform", "mlflow", "--model", f"{model}@1"], named, lambda: sent.count("DELETE"))
    named = ["platform rule `has_versions`", f"{model} still has versions 1, 2"]
    return Rule(["--platform", "mlflow", "--model", model], named, lambda: sent.count("DELETE"))


RULES: list[tuple[str, Callable[[str, pytest.FixtureRequest, pytest.MonkeyPatch], Rule], str]] = [
    ("openai", _openai, "base_model"),
    ("openai", _openai, "not_owner"),
    ("openai", _openai, "fine_tune_parent"),
    ("openai", _openai, "fine_tune_in_progress"),
    ("openai", _openai, "shared"),
    ("replicate", _replicate, "not_owner"),
    ("replicate", _replicate, "not_private"),
    ("replicate", _replicate, "deployment"),
    ("replicate", _replicate, "fine_tune_base"),
    ("bailo", _bailo, "delete_permission"),
    ("bailo", _bailo, "inference_service"),
    ("bailo", _bailo, "access_request"),
    ("selise", _selise, "agent"),
    ("selise", _selise, "last_model"),
    ("datature-vi", _vi, "deployment"),
    ("mlflow", _mlflow, "alias"),
    ("mlflow", _mlflow, "has_versions"),
]


@pytest.mark.parametrize(("platform", "make", "rule"), RULES, ids=[f"{p}-{r}" for p, _, r in RULES])
def test_each_documented_deletion_rule_is_refused_by_retire_plan_with_no_delete_sent(
    platform: str,
    make: Callable[[str, pytest.FixtureRequest, pytest.MonkeyPatch], Rule],
    rule: str,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    retire_home: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("RETIRE_PROMETHEUS_URL", "http://127.0.0.1:9")
    case = make(rule, request, monkeypatch)
    assert main(["plan", *case.arguments]) == 1
    out, err = capsys.readouterr()
    assert "## Refused" in out
    for words in case.named:
        assert words in err, f"{words!r} not in {err}"
    assert case.deletes() == 0


def test_a_replicate_staging_deployment_of_another_model_is_refused_by_plan_and_start(
    replicate_server: ReplicateApi,
    monkeypatch: pytest.MonkeyPatch,
    retire_home: Path,
    no_server: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    slug, other = f"acme/{unique('churn')}", f"acme/{unique('images')}"
    staging = f"acme/{unique('staging')}"
    replicate_server.add_model(slug)
    replicate_server.add_model(other)
    old, new = replicate_server.add_version(slug), replicate_server.add_version(slug)
    replicate_server.add_deployment(staging, other, replicate_server.add_version(other))
    use_replicate(monkeypatch, replicate_server)
    monkeypatch.setenv("RETIRE_REPLICATE_STAGING_DEPLOYMENT", staging)
    monkeypatch.delenv("RETIRE_REPLICATE_SMOKE_INPUT", raising=False)
    arguments = ["--platform", "replicate", "--model", f"{slug}@{old}", "--replacement", f"{slug}@{new}"]
    assert main(["plan", *arguments]) == 1
    err = capsys.readouterr().err
    assert f"staging deployment {staging} (RETIRE_REPLICATE_STAGING_DEPLOYMENT) runs {other}, not {slug}" in err
    assert "RETIRE_REPLICATE_SMOKE_INPUT is not set" in err
    assert main(["start", *arguments, *START]) == 2
    assert f"runs {other}, not {slug}" in capsys.readouterr().err
    assert no_server == []
    assert replicate_server.calls_of("PATCH") == [] and replicate_server.calls_of("POST") == []


def test_a_datature_vi_production_deployment_of_another_checkpoint_is_refused(
    vi_server: FakeVi, monkeypatch: pytest.MonkeyPatch, retire_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, new, prod, staging = unique("run"), unique("run"), unique("prod"), unique("staging")
    vi_server.add_run(run, {"c1": b"one", "c2": b"two"})
    vi_server.add_run(new, {"n1": b"new"})
    vi_server.add_deployment(prod, run, "c2")
    vi_server.add_deployment(staging, new, "n1")
    use_vi(monkeypatch, vi_server, production=prod)
    monkeypatch.setenv("RETIRE_DATATURE_VI_STAGING_DEPLOYMENT", staging)
    assert main(["plan", "--platform", "datature-vi", "--model", f"{run}@c1", "--replacement", f"{new}@n1"]) == 1
    err = capsys.readouterr().err
    assert f"production deployment {prod} serves {run}@c2, another checkpoint of run {run}" in err
    assert [m for m, _ in vi_server.requests if m in ("PATCH", "PUT", "DELETE")] == []


def test_a_plan_the_platform_can_carry_is_not_refused(
    replicate_server: ReplicateApi, monkeypatch: pytest.MonkeyPatch, retire_home: Path
) -> None:
    slug = f"acme/{unique('fine')}"
    replicate_server.add_model(slug)
    old, new = replicate_server.add_version(slug), replicate_server.add_version(slug)
    prod, staging = f"acme/{unique('prod')}", f"acme/{unique('staging')}"
    replicate_server.add_deployment(prod, slug, old)
    replicate_server.add_deployment(staging, slug, new)
    use_replicate(monkeypatch, replicate_server)
    monkeypatch.setenv("RETIRE_REPLICATE_PRODUCTION_DEPLOYMENT", prod)
    monkeypatch.setenv("RETIRE_REPLICATE_STAGING_DEPLOYMENT", staging)
    monkeypatch.setenv("RETIRE_REPLICATE_SMOKE_INPUT", '{"prompt": "hello"}')
    assert main(["plan", "--platform", "replicate", "--model", f"{slug}@{old}", "--replacement", f"{slug}@{new}"]) == 0


def test_a_replicate_model_on_several_deployments_with_none_named_production_is_refused(
    replicate_server: ReplicateApi,
    monkeypatch: pytest.MonkeyPatch,
    retire_home: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    slug = f"acme/{unique('twice')}"
    replicate_server.add_model(slug)
    old, new = replicate_server.add_version(slug), replicate_server.add_version(slug)
    first, second = f"acme/{unique('eu')}", f"acme/{unique('us')}"
    replicate_server.add_deployment(first, slug, old)
    replicate_server.add_deployment(second, slug, old)
    use_replicate(monkeypatch, replicate_server)
    monkeypatch.delenv("RETIRE_REPLICATE_PRODUCTION_DEPLOYMENT", raising=False)
    patches = len(replicate_server.calls_of("PATCH"))
    assert main(["plan", "--platform", "replicate", "--model", f"{slug}@{old}", "--replacement", f"{slug}@{new}"]) == 1
    err = capsys.readouterr().err
    assert f"{slug} runs on several deployments ({first}, {second})" in err
    assert "set RETIRE_REPLICATE_PRODUCTION_DEPLOYMENT" in err
    for deployment in (first, second):  # neither is switched by the protocol: each blocks, named
        assert f"deployment {deployment} runs version {old} (platform rule `deployment`)" in err
    assert len(replicate_server.calls_of("PATCH")) == patches
