"""Cancel always wins: during the bake and at the deletion gate, the model is never deleted afterwards."""

from __future__ import annotations

import threading
import time

from retirement import protocol
from retirement.state import RetirementState
from tests.fakes.platform import World
from tests.flows.conftest import Driver
from tests.flows.test_retire_model_flow import APPROVE, DELETE_OK, _answers, _request


def _cancel(world: World, by: str = "carol") -> RetirementState:
    """What `retire cancel` does to the store and the platform (its Prefect part needs deployed runs)."""
    svc = world.services
    (state,) = svc.states.all()
    assert protocol.halt(svc, state, f"cancelled by {by}", status="cancelled", actor=by)
    return state


def _nothing_destructive_after_the_cancel(world: World, rid: str) -> None:
    actions = [(e.kind, e.action) for e in world.services.ledger.entries(rid)]
    after = actions[actions.index(("decision", "cancel")) + 1 :]
    assert ("intent", "delete") not in actions and ("intent", "soft-delete") not in after
    assert ("intent", "cutover") not in after
    assert [c for c in world.registry.calls if c[0] == "delete"] == []
    assert world.registry.exists(world.old)


def test_cancel_during_the_bake_stops_it_and_rolls_production_back(world: World, driver: Driver) -> None:
    world.traffic.requests["churn-model@2"] = 20
    cancelled: list[RetirementState] = []

    def cancel_once_baking() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            states = world.services.states.all()
            if states and states[0].bake:  # the first bake sample is in: the bake is under way
                cancelled.append(_cancel(world))
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=cancel_once_baking, daemon=True)
    watcher.start()
    flow_state, state = driver.run(_request(bake_minutes=0.1), _answers())
    watcher.join(5)
    assert cancelled, "the bake never started"
    assert flow_state.is_cancelled(), flow_state
    assert "cancelled by carol" in (flow_state.message or "")
    undone = protocol.compensate(world.services, state)
    state = world.services.states.load(state.id)
    assert state.status == "cancelled" and state.rolled_back
    assert world.serving.prod["churn-model"] == world.old
    assert any("rolled back" in line for line in undone)
    assert len(state.bake) < 5, "the bake went on after the cancel"
    _nothing_destructive_after_the_cancel(world, state.id)


def test_cancel_while_waiting_at_the_deletion_gate_refuses_the_later_approval(world: World, driver: Driver) -> None:
    def cancel_then_approve() -> dict[str, object]:
        _cancel(world)
        return DELETE_OK  # the approver answers a moment after the cancel, in the UI

    flow_state, state = driver.run(_request(), _answers(**{"approve-deletion": [cancel_then_approve]}))
    assert flow_state.is_cancelled(), flow_state
    state = world.services.states.load(state.id)
    assert state.status == "cancelled"
    assert [a.gate for a in state.approvals] == ["approve-plan", "approve-cutover"]
    _nothing_destructive_after_the_cancel(world, state.id)
    assert world.services.ledger.verify()[0] > 5


def test_a_run_started_after_the_cancel_does_nothing(world: World, driver: Driver) -> None:
    from retirement.models import Phase

    def cancel_then_approve() -> dict[str, object]:
        _cancel(world)
        return APPROVE

    request = _request()
    flow_state, state = driver.run(request, _answers(**{"approve-cutover": [cancel_then_approve]}))
    assert flow_state.is_cancelled(), flow_state
    assert world.serving.switches == []
    for phase in (Phase.CUTOVER, Phase.DELETE):  # a retry by hand, or a stale scheduled run
        assert driver.run_leg(request, phase, state.id, {}).is_cancelled()
    assert world.serving.switches == []
    _nothing_destructive_after_the_cancel(world, state.id)
