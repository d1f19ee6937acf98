"""The protocol judges what it observed and confirms what it did: unobserved bakes, async deletes, vanished models."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from retirement import protocol
from retirement.errors import DeletePendingError, SafetyError
from retirement.models import TrafficVerdict, utcnow
from tests.fakes.platform import World, make_world
from tests.test_protocol import _approve, _later, _request, _to_backup


@pytest.fixture
def world(retire_home: Path) -> World:
    return make_world(retire_home)


def _cut_over(world: World, **overrides: object) -> object:
    svc = world.services
    state = protocol.open_retirement(svc, _request(**overrides), None)
    protocol.document(svc, state)
    _approve(state, protocol.GATE_PLAN)
    protocol.stage(svc, state)
    _approve(state, protocol.GATE_CUTOVER)
    protocol.cutover(svc, state, utcnow())
    return state


@pytest.mark.parametrize("verdict", [TrafficVerdict.ERROR, TrafficVerdict.NODATA])
def test_a_bake_that_observed_nothing_is_not_a_pass(world: World, verdict: TrafficVerdict) -> None:
    state = _cut_over(world, bake_minutes=0.001)
    world.traffic.verdicts["churn-model@2"] = verdict
    with pytest.raises(SafetyError, match=f"could not observe churn-model@2 \\({verdict.value}"):
        protocol.bake(world.services, state, sleep=lambda _: None)  # type: ignore[arg-type]
    assert world.serving.prod["churn-model"] == world.new  # halt (the default): production stays, old untouched
    assert world.registry.exists(world.old)


def test_an_unobserved_bake_rolls_back_when_asked(world: World) -> None:
    state = _cut_over(world, bake_minutes=0.001, bake_unobserved="rollback")
    world.traffic.verdicts["churn-model@2"] = TrafficVerdict.ERROR
    with pytest.raises(SafetyError, match="rolled back"):
        protocol.bake(world.services, state, sleep=lambda _: None)  # type: ignore[arg-type]
    assert world.serving.prod["churn-model"] == world.old


def test_staging_runs_once_per_retirement(world: World) -> None:
    state = _cut_over(world)
    deployed: list[str] = []
    world.serving.deploy_staging = lambda ref: deployed.append(str(ref))  # type: ignore[method-assign]
    assert "not repeated" in protocol.stage(world.services, state)  # type: ignore[arg-type]
    assert deployed == []


def test_an_asynchronous_delete_is_confirmed_by_later_checks_not_guessed(world: World) -> None:
    state = _to_backup(world)
    _approve(state, protocol.GATE_DELETION)
    world.registry.linger_after_delete = 3
    now = _later(state)
    with pytest.raises(DeletePendingError) as pending:
        protocol.delete(world.services, state, now)  # type: ignore[arg-type]
    assert pending.value.retry_at > now  # type: ignore[operator]
    assert state.delete_requested_at is not None and state.receipt is None
    later = now + timedelta(minutes=3)  # type: ignore[operator]
    receipt = None
    for _ in range(5):
        try:
            receipt = protocol.delete(world.services, state, later)
            break
        except DeletePendingError:
            later += timedelta(minutes=2)
    assert receipt is not None and receipt.verified_gone
    assert [c for c in world.registry.calls if c[0] == "delete"] == [("delete", "churn-model@1")]  # sent once
    assert world.services.ledger.find(state.id, "delete-confirmed") is not None


def test_an_asynchronous_delete_past_its_budget_halts_with_the_reason(world: World) -> None:
    state = _to_backup(world, delete_confirm_hours=1)
    _approve(state, protocol.GATE_DELETION)
    world.registry.linger_after_delete = 100
    now = _later(state)
    with pytest.raises(DeletePendingError):
        protocol.delete(world.services, state, now)  # type: ignore[arg-type]
    with pytest.raises(SafetyError, match="still lists it"):
        protocol.delete(world.services, state, now + timedelta(hours=2))  # type: ignore[operator]


def test_a_model_deleted_by_someone_else_before_the_backup_halts_with_that_reason(world: World) -> None:
    state = _cut_over(world)
    protocol.open_window(world.services, state, utcnow())  # type: ignore[arg-type]
    world.registry.files.pop(world.old)
    with pytest.raises(SafetyError, match="deleted outside this retirement before the backup"):
        protocol.backup(world.services, state, utcnow())  # type: ignore[arg-type]
    assert world.services.ledger.find(state.id, "deleted-elsewhere", kind="notice") is not None  # type: ignore[attr-defined]


def test_a_model_deleted_by_someone_else_before_the_delete_is_recorded_not_crashed(world: World) -> None:
    state = _to_backup(world)
    _approve(state, protocol.GATE_DELETION)
    world.registry.files.pop(world.old)
    receipt = protocol.delete(world.services, state, _later(state))  # type: ignore[arg-type]
    assert receipt.verified_gone and "deleted outside this retirement" in receipt.removed[0]
    assert [c for c in world.registry.calls if c[0] == "delete"] == []


def test_a_restore_drill_that_fails_blocks_the_delete_with_its_reason(world: World) -> None:
    state = _to_backup(world)
    _approve(state, protocol.GATE_DELETION)
    assert protocol.drill_summary(state).startswith("restore drill passed: 2 files")  # type: ignore[arg-type]
    state.drill = None  # a new drill, of a backup damaged since the last one
    victim = next(p for p in Path(state.backup_location or "").rglob("weights.bin"))
    victim.write_bytes(b"x" + victim.read_bytes()[1:])
    drill = protocol.restore_drill(world.services, state)  # type: ignore[arg-type]
    assert any("weights.bin" in p for p in drill["problems"])
    with pytest.raises(SafetyError, match="restore drill FAILED"):
        protocol.delete(world.services, state, _later(state))  # type: ignore[arg-type]
    assert world.registry.exists(world.old)
    assert world.services.ledger.find(state.id, "restore-drill").detail["ok"] is False  # type: ignore[union-attr]
