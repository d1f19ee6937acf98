"""The retire-model flow end to end on a Prefect server: gates answered through the API, phases scheduled."""

from __future__ import annotations

from typing import Any

import pytest
from prefect.client.orchestration import get_client

from retirement.errors import ConflictError
from retirement.models import RetirementRequest
from tests.fakes.platform import World
from tests.flows.conftest import Answer, Driver

APPROVE = {"decision": "approve", "approver": "bob", "comment": "looks right"}
DELETE_OK = {**APPROVE, "typed_reference": "churn-model@1"}


def _request(**overrides: object) -> RetirementRequest:
    data: dict[str, object] = {
        "model": "churn-model@1",
        "replacement": "churn-model@2",
        "requester": "alice",
        "approvers": ["alice", "bob"],
        "reason": "superseded by v2",
        "traffic_window_hours": 2 / 3600,
        "bake_minutes": 0,
        "monitor_days": 0,
    }
    data.update(overrides)
    return RetirementRequest.model_validate(data)


def _answers(**overrides: list[Answer]) -> dict[str, list[Answer]]:
    answers: dict[str, list[Answer]] = {
        "approve-plan": [APPROVE],
        "approve-cutover": [APPROVE],
        "approve-deletion": [DELETE_OK],
    }
    answers.update(overrides)
    return answers


def _artifact_keys(rid: str) -> set[str]:
    with get_client(sync_client=True) as client:
        return {a.key for a in client.read_artifacts() if a.key and a.key.startswith(rid)}


def test_full_protocol_retires_the_model(world: World, driver: Driver) -> None:
    flow_state, state = driver.run(_request(monitor_days=2 / 86400, monitor_interval_hours=1 / 3600), _answers())
    assert flow_state.is_completed(), flow_state
    assert state.status == "done"
    assert not world.registry.exists(world.old)
    assert world.serving.prod["churn-model"] == world.new
    assert state.receipt is not None and state.receipt.verified_gone
    assert world.services.backups.verify(state.backup_location or "").ok
    assert world.services.ledger.verify()[0] > 10
    anchor, ledger = world.services.anchor, world.services.ledger
    assert anchor is not None
    checked, newest = anchor.verify(ledger.head(), ledger.hash_at)  # one checkpoint per phase, the last at the end
    assert checked >= 7 and newest == ledger.head()[0]
    assert [a.gate for a in state.approvals] == ["approve-plan", "approve-cutover", "approve-deletion"]
    assert len(state.monitor_checks) == 2
    statuses = world.notifier.statuses()
    assert statuses.count("document:awaiting_approval") == 1
    assert "backup:awaiting_approval" in statuses
    assert statuses[-1] == "monitor:done"
    texts = [e.text for e in world.notifier.events]
    assert any(t.startswith("*Cutover*: production switched from churn-model@1 to churn-model@2") for t in texts)
    deleted = next(t for t in texts if t.startswith("*Deleted*: churn-model@1 is gone"))
    assert state.backup_location in deleted
    final = texts[-1]
    assert (
        final.startswith("Retirement finished: retired.") and f"retire backup restore {state.backup_location}" in final
    )
    assert {f"{state.id}-{k}" for k in ("dossier", "plan", "traffic", "manifest", "report")} <= _artifact_keys(state.id)


def test_server_refuses_wrong_typed_reference_and_requester_as_approver(world: World, driver: Driver) -> None:
    wrong: list[Answer] = [
        {**APPROVE, "typed_reference": "churn-model@2"},
        {**DELETE_OK, "approver": "alice"},
        DELETE_OK,
    ]
    flow_state, state = driver.run(_request(), _answers(**{"approve-deletion": wrong}))
    assert len(driver.refused) == 2, driver.refused
    assert all("approve-deletion" in r for r in driver.refused)
    assert flow_state.is_completed()
    assert state.approval("approve-deletion").approver == "bob"  # type: ignore[union-attr]


@pytest.mark.parametrize("gate", ["approve-plan", "approve-cutover", "approve-deletion"])
def test_reject_at_any_gate_halts_with_nothing_destructive_after(world: World, driver: Driver, gate: str) -> None:
    reject: dict[str, Any] = {"decision": "reject", "approver": "bob", "comment": "not now"}
    flow_state, state = driver.run(_request(), _answers(**{gate: [reject]}))
    assert flow_state.is_cancelled()
    assert "rejected by bob: not now" in (flow_state.message or "")
    assert state.status == "halted"
    assert world.registry.exists(world.old)
    assert not [c for c in world.registry.calls if c[0].startswith("delete")]
    if gate != "approve-deletion":
        assert world.serving.prod["churn-model"] == world.old  # no cutover after a rejection before it
    assert world.notifier.statuses()[-1].endswith(":halted")
    assert any(e.action == "halt" for e in world.services.ledger.entries(state.id))


def test_requests_during_the_window_stop_the_retirement(world: World, driver: Driver) -> None:
    world.traffic.requests["churn-model@1"] = 4
    flow_state, state = driver.run(_request(), _answers())
    assert flow_state.is_failed()
    assert "ACTIVE" in state.status_reason
    assert world.registry.exists(world.old)


def test_bake_breach_rolls_back_and_halts(world: World, driver: Driver) -> None:
    world.traffic.requests["churn-model@2"] = 50
    world.traffic.errors["churn-model@2"] = 10
    flow_state, state = driver.run(_request(bake_minutes=0.02), _answers())
    assert flow_state.is_failed()
    assert world.serving.prod["churn-model"] == world.old
    assert state.rolled_back
    assert world.registry.exists(world.old)


def test_rerunning_a_finished_phase_repeats_no_destructive_call(world: World, driver: Driver) -> None:
    request = _request()
    _, state = driver.run(request, _answers())
    from retirement.models import Phase

    for phase in (Phase.CUTOVER, Phase.DELETE):
        driver.run_leg(request, phase, state.id, {})
    assert [c for c in world.registry.calls if c[0] == "delete"] == [("delete", "churn-model@1")]
    assert world.serving.switches == ["churn-model@2"]


def test_slack_down_does_not_block_and_is_recorded(world: World, driver: Driver) -> None:
    world.notifier.down = True
    flow_state, state = driver.run(_request(), _answers())
    assert flow_state.is_completed()
    assert not world.registry.exists(world.old)
    assert any(e.action == "notify-failed" for e in world.services.ledger.entries(state.id))


def test_second_retirement_of_the_same_model_is_refused(world: World, driver: Driver) -> None:
    from retirement.models import Phase

    first = driver.run_leg(
        _request(), Phase.DOCUMENT, None, {"approve-plan": [{"decision": "reject", "approver": "bob"}]}
    )
    assert first.is_cancelled()  # halted: frees the model
    waiting = driver.run_leg(_request(traffic_window_hours=1), Phase.DOCUMENT, None, _answers())
    assert waiting.is_completed()
    second = driver.run_leg(_request(), Phase.DOCUMENT, None, _answers())
    assert second.is_failed()
    with pytest.raises(ConflictError, match="already being retired by ret-churn-model-1-"):
        second.result()


def test_unanswered_gate_times_out_and_halts(world: World, driver: Driver) -> None:
    from retirement.models import Phase

    state = driver.run_leg(_request(gate_timeout_hours=2 / 3600), Phase.DOCUMENT, None, {"approve-plan": []})
    assert state.is_failed()  # Prefect fails a run whose pause timed out, whatever the flow returns
    (retirement,) = world.services.states.all()
    assert retirement.status == "halted"
    assert "approval gate approve-plan timed out" in retirement.status_reason
    assert world.serving.prod["churn-model"] == world.old
    assert world.notifier.statuses()[-1] == "document:halted"


class Killed(BaseException):
    """The process dies: nothing after this point of the run happens."""


def test_killed_right_after_the_delete_call_resumes_without_a_second_delete(world: World, driver: Driver) -> None:
    from retirement.models import Phase

    real_delete = world.registry.delete

    def delete_then_die(ref: Any) -> Any:
        real_delete(ref)
        raise Killed

    world.registry.delete = delete_then_die  # type: ignore[method-assign]
    request = _request()
    crashed, state = driver.run(request, _answers())
    assert isinstance(crashed, Killed)
    assert state.receipt is None and not world.registry.exists(world.old)
    world.registry.delete = real_delete  # type: ignore[method-assign]
    resumed = driver.run_leg(request, Phase.DELETE, state.id, {})
    assert resumed.is_completed()
    assert [c for c in world.registry.calls if c[0] == "delete"] == [("delete", "churn-model@1")]
    final = world.services.states.load(state.id)
    assert final.receipt is not None and final.receipt.verified_gone and final.status == "done"


def test_killed_right_after_the_switch_resumes_without_a_second_switch(world: World, driver: Driver) -> None:
    from retirement.models import Phase

    real_switch = world.serving.switch

    def switch_then_die(to: Any, *, replacing: Any = None) -> Any:
        real_switch(to, replacing=replacing)
        raise Killed

    world.serving.switch = switch_then_die  # type: ignore[method-assign]
    request = _request()
    crashed, state = driver.run(request, _answers())
    assert isinstance(crashed, Killed)
    assert state.cutover_at is None and world.serving.prod["churn-model"] == world.new
    world.serving.switch = real_switch  # type: ignore[method-assign]
    _, final = driver.run(
        request, _answers(**{"approve-plan": [], "approve-cutover": []}), start=(Phase.CUTOVER, state.id)
    )
    assert world.serving.switches == ["churn-model@2"]
    assert final.previous_production == world.old  # the rollback target survived the crash
    assert final.status == "done" and not world.registry.exists(world.old)
