"""The safety invariants of DESIGN.md, each attacked directly at the library level (no Prefect)."""

from __future__ import annotations

import os
import stat
from datetime import timedelta
from pathlib import Path

import pytest

from retirement import protocol
from retirement.errors import ApprovalError, ConflictError, InputError, SafetyError
from retirement.models import RetirementRequest, TrafficVerdict, utcnow
from retirement.state import RetirementState
from tests.fakes.platform import World, make_world


@pytest.fixture
def world(retire_home: Path) -> World:
    return make_world(retire_home)


def _request(**overrides: object) -> RetirementRequest:
    data: dict[str, object] = {
        "model": "churn-model@1",
        "replacement": "churn-model@2",
        "requester": "alice",
        "approvers": ["alice", "bob"],
        "reason": "superseded by v2",
        "traffic_window_hours": 1,
        "bake_minutes": 0,
    }
    data.update(overrides)
    return RetirementRequest.model_validate(data)


def _approve(state: RetirementState, gate: str, approver: str = "bob", typed: str | None = "churn-model@1") -> None:
    protocol.check_answer(
        state, gate, decision="approve", approver=approver, typed_reference=typed, expected_reference="churn-model@1"
    )


def _to_backup(world: World, **overrides: object) -> RetirementState:
    """Open, document, approve, cut over, wait out the window (clock moved), verify idle, back up."""
    svc = world.services
    state = protocol.open_retirement(svc, _request(**overrides), None)
    protocol.document(svc, state)
    _approve(state, protocol.GATE_PLAN)
    protocol.stage(svc, state)
    _approve(state, protocol.GATE_CUTOVER)
    protocol.cutover(svc, state, utcnow())
    protocol.open_window(svc, state, utcnow())
    assert state.window_end is not None
    protocol.verify_idle(svc, state, state.window_end)
    protocol.backup(svc, state, utcnow())
    protocol.restore_drill(svc, state)
    return state


def _later(state: RetirementState) -> object:
    assert state.window_end is not None
    return state.window_end + timedelta(minutes=1)


def test_happy_path_deletes_only_after_every_check(world: World) -> None:
    state = _to_backup(world)
    _approve(state, protocol.GATE_DELETION)
    receipt = protocol.delete(world.services, state, _later(state))  # type: ignore[arg-type]
    assert receipt.verified_gone and not world.registry.exists(world.old)
    assert world.serving.prod["churn-model"] == world.new
    assert receipt.backup_location == state.backup_location
    assert world.services.ledger.verify()[0] > 5
    actions = [(e.kind, e.action) for e in world.services.ledger.entries(state.id)]
    assert actions.index(("intent", "delete")) < actions.index(("outcome", "delete"))
    assert actions.index(("intent", "cutover")) < actions.index(("outcome", "cutover"))


# Invariant 1: approvals.


def test_no_delete_without_deletion_approval(world: World) -> None:
    state = _to_backup(world)
    with pytest.raises(SafetyError, match="has no recorded decision"):
        protocol.delete(world.services, state, _later(state))  # type: ignore[arg-type]
    assert world.registry.exists(world.old)
    assert ("delete", "churn-model@1") not in world.registry.calls


def test_a_deletion_approval_counts_only_for_the_backup_it_was_shown(world: World) -> None:
    state = _to_backup(world)
    _approve(state, protocol.GATE_DELETION)
    approved = state.backup_manifest_sha256
    assert state.approval(protocol.GATE_DELETION) is not None
    protocol.backup_still_approved(world.services, state)  # verifies: nothing changes
    assert state.backup_manifest_sha256 == approved
    state.backup_manifest_sha256 = "0" * 64  # a backup re-taken after the approval
    assert state.approval(protocol.GATE_DELETION) is None
    with pytest.raises(SafetyError, match="no recorded decision"):
        protocol.delete(world.services, state, _later(state))  # type: ignore[arg-type]
    assert world.registry.exists(world.old)


def test_requester_cannot_approve_deletion(world: World) -> None:
    state = _to_backup(world)
    with pytest.raises(ApprovalError, match="other than the requester"):
        _approve(state, protocol.GATE_DELETION, approver="alice")
    # Even a forged record of such an approval does not let the delete through.
    forged = {
        "gate": protocol.GATE_DELETION,
        "approver": "alice",
        "backup_manifest_sha256": state.backup_manifest_sha256,
    }
    state.approvals.append(state.approvals[-1].model_copy(update=forged))
    with pytest.raises(SafetyError, match="approved by the requester"):
        protocol.delete(world.services, state, _later(state))  # type: ignore[arg-type]
    assert world.registry.exists(world.old)


def test_wrong_typed_reference_is_refused(world: World) -> None:
    state = _to_backup(world)
    for typed in ("churn-model@2", "churn-model", "churn-model@1 ", None):
        with pytest.raises(ApprovalError, match="does not match"):
            _approve(state, protocol.GATE_DELETION, typed=typed)
    assert state.approval(protocol.GATE_DELETION) is None


def test_unknown_approver_is_refused(world: World) -> None:
    state = protocol.open_retirement(world.services, _request(), None)
    with pytest.raises(ApprovalError, match="not an approver"):
        protocol.check_answer(state, protocol.GATE_PLAN, decision="approve", approver="mallory")


def test_rejected_gate_blocks_delete(world: World) -> None:
    state = _to_backup(world)
    protocol.check_answer(state, protocol.GATE_DELETION, decision="reject", approver="bob")
    with pytest.raises(SafetyError, match="rejected"):
        protocol.delete(world.services, state, _later(state))  # type: ignore[arg-type]
    assert world.registry.exists(world.old)


# Invariant 2: a verified backup of that exact version, re-read just before the delete.


def test_backup_altered_between_backup_and_delete_blocks_delete(world: World) -> None:
    state = _to_backup(world)
    _approve(state, protocol.GATE_DELETION)
    assert state.backup_location
    weights = Path(state.backup_location) / "weights.bin"
    os.chmod(weights, stat.S_IWUSR | stat.S_IRUSR)
    data = bytearray(weights.read_bytes())
    data[10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(SafetyError, match="backup does not verify"):
        protocol.delete(world.services, state, _later(state))  # type: ignore[arg-type]
    assert world.registry.exists(world.old)


def test_missing_backup_blocks_delete(world: World) -> None:
    state = _to_backup(world)
    _approve(state, protocol.GATE_DELETION)
    state.backup_location = None
    with pytest.raises(SafetyError, match="no backup was taken"):
        protocol.delete(world.services, state, _later(state))  # type: ignore[arg-type]
    assert world.registry.exists(world.old)


# Invariant 3: IDLE over the whole window.


@pytest.mark.parametrize(
    ("script", "needle"),
    [
        ({"requests": 3}, "ACTIVE"),
        ({"verdict": TrafficVerdict.NODATA}, "NODATA"),
        ({"verdict": TrafficVerdict.ERROR}, "ERROR"),
    ],
)
def test_verify_idle_refuses_anything_but_idle(world: World, script: dict[str, object], needle: str) -> None:
    svc = world.services
    state = protocol.open_retirement(svc, _request(), None)
    protocol.document(svc, state)
    protocol.cutover(svc, state, utcnow())
    protocol.open_window(svc, state, utcnow())
    if "requests" in script:
        world.traffic.requests["churn-model@1"] = int(script["requests"])  # type: ignore[call-overload]
    else:
        world.traffic.verdicts["churn-model@1"] = script["verdict"]  # type: ignore[assignment]
    assert state.window_end is not None
    with pytest.raises(SafetyError, match=needle):
        protocol.verify_idle(svc, state, state.window_end)
    start, end = world.traffic.asked[-1][1:]
    assert (start, end) == (state.window_start, state.window_end)  # the WHOLE window was asked for


def test_verify_idle_refuses_before_the_window_ends(world: World) -> None:
    svc = world.services
    state = protocol.open_retirement(svc, _request(), None)
    protocol.open_window(svc, state, utcnow())
    with pytest.raises(SafetyError, match="window ends at"):
        protocol.verify_idle(svc, state, utcnow())


def test_verify_idle_started_a_moment_early_waits_for_the_end_of_the_window(world: World) -> None:
    svc = world.services
    state = protocol.open_retirement(svc, _request(), None)
    protocol.cutover(svc, state, utcnow())
    end = protocol.open_window(svc, state, utcnow())
    waited: list[float] = []
    protocol.verify_idle(svc, state, end - timedelta(seconds=2), sleep=waited.append)
    assert waited == [2.0]
    assert world.traffic.asked[-1][2] == end  # still asked about the whole window


def test_no_traffic_source_is_nodata_never_idle(world: World) -> None:
    svc = world.services
    svc.traffic = []
    state = protocol.open_retirement(svc, _request(), None)
    protocol.open_window(svc, state, utcnow())
    assert state.window_end is not None
    with pytest.raises(SafetyError, match=r"NODATA.*no traffic source"):
        protocol.verify_idle(svc, state, state.window_end)


def test_request_after_the_window_trips_the_delete(world: World) -> None:
    state = _to_backup(world)
    _approve(state, protocol.GATE_DELETION)
    world.traffic.requests["churn-model@1"] = 1  # a client wakes up during the pending delete
    with pytest.raises(SafetyError, match="ACTIVE"):
        protocol.delete(world.services, state, _later(state))  # type: ignore[arg-type]
    assert world.registry.exists(world.old)
    refused = [e for e in world.services.ledger.entries(state.id) if e.action == "delete-refused"]
    assert refused and "ACTIVE" in str(refused[0].detail)


def test_tripwire_during_soft_delete_reactivates(world: World) -> None:
    state = _to_backup(world, soft_delete=True)
    _approve(state, protocol.GATE_DELETION)
    protocol.soft_delete(world.services, state, utcnow())
    assert world.registry.active[world.old] is False
    world.traffic.requests["churn-model@1"] = 2
    with pytest.raises(SafetyError):
        protocol.delete(world.services, state, _later(state))  # type: ignore[arg-type]
    assert world.registry.active[world.old] is True
    assert world.registry.exists(world.old)


# Invariant 4: no dependents.


def test_dependent_blocks_verify_and_delete(world: World) -> None:
    state = _to_backup(world)
    _approve(state, protocol.GATE_DELETION)
    world.registry.consumers[world.old] = ["fraud-scoring-job"]
    with pytest.raises(SafetyError, match="fraud-scoring-job"):
        protocol.delete(world.services, state, _later(state))  # type: ignore[arg-type]
    assert world.registry.exists(world.old)
    assert not [c for c in world.registry.calls if c[0].startswith("delete")]  # refused before any DELETE


def test_production_alias_still_on_old_blocks_delete(world: World) -> None:
    state = _to_backup(world)
    _approve(state, protocol.GATE_DELETION)
    world.serving.prod["churn-model"] = world.old  # someone moved production back by hand
    with pytest.raises(SafetyError, match="production"):
        protocol.delete(world.services, state, _later(state))  # type: ignore[arg-type]
    assert world.registry.exists(world.old)
    assert not [c for c in world.registry.calls if c[0].startswith("delete")]


# Invariant 5: crash and re-run.


def test_rerun_after_completed_delete_repeats_nothing(world: World) -> None:
    state = _to_backup(world)
    _approve(state, protocol.GATE_DELETION)
    protocol.delete(world.services, state, _later(state))  # type: ignore[arg-type]
    reloaded = world.services.states.load(state.id)
    protocol.delete(world.services, reloaded, _later(state))  # type: ignore[arg-type]
    assert [c for c in world.registry.calls if c[0] == "delete"] == [("delete", "churn-model@1")]


def test_crash_after_delete_before_receipt_is_completed_without_a_second_call(world: World) -> None:
    state = _to_backup(world)
    _approve(state, protocol.GATE_DELETION)
    world.services.states.save(state)
    # The process died right after the platform deleted it: intent in the ledger, no outcome, no receipt.
    protocol.record(world.services, state, "intent", "delete")
    world.registry.files.pop(world.old)
    reloaded = world.services.states.load(state.id)
    receipt = protocol.delete(world.services, reloaded, _later(state))  # type: ignore[arg-type]
    assert receipt.verified_gone
    assert not [c for c in world.registry.calls if c[0].startswith("delete")]


def test_crash_before_delete_call_still_deletes(world: World) -> None:
    state = _to_backup(world)
    _approve(state, protocol.GATE_DELETION)
    world.services.states.save(state)
    protocol.record(world.services, state, "intent", "delete")  # died before the call went out
    reloaded = world.services.states.load(state.id)
    protocol.delete(world.services, reloaded, _later(state))  # type: ignore[arg-type]
    assert [c for c in world.registry.calls if c[0] == "delete"] == [("delete", "churn-model@1")]


def test_crash_during_cutover_keeps_rollback_target(world: World) -> None:
    svc = world.services
    state = protocol.open_retirement(svc, _request(), None)
    protocol.record(svc, state, "intent", "cutover", detail={"from": world.old.model_dump(mode="json"), "to": "x"})
    world.serving.prod["churn-model"] = world.new  # the switch happened, then the crash
    protocol.cutover(svc, svc.states.load(state.id), utcnow())
    assert svc.states.load(state.id).previous_production == world.old


def test_interrupted_rollback_completes_on_rerun(world: World) -> None:
    svc = world.services
    state = protocol.open_retirement(svc, _request(), None)
    protocol.cutover(svc, state, utcnow())
    protocol.record(svc, state, "intent", "rollback", detail={"to": "churn-model@1", "reason": "p95 breach"})
    assert protocol.complete_interrupted_rollback(svc, svc.states.load(state.id))
    assert world.serving.prod["churn-model"] == world.old
    assert not protocol.complete_interrupted_rollback(svc, svc.states.load(state.id))


def test_bake_breach_rolls_back(world: World) -> None:
    svc = world.services
    state = protocol.open_retirement(svc, _request(bake_minutes=0.001), None)
    protocol.cutover(svc, state, utcnow())
    world.traffic.requests["churn-model@2"] = 100
    world.traffic.errors["churn-model@2"] = 9
    with pytest.raises(SafetyError, match="bake breach"):
        protocol.bake(svc, state, sleep=lambda s: None)
    assert world.serving.prod["churn-model"] == world.old
    assert svc.states.load(state.id).rolled_back


# Invariant 6-8: ledger, secrets, notifications.


def test_slack_down_is_recorded_and_does_not_block(world: World) -> None:
    world.notifier.down = True
    state = _to_backup(world)
    protocol.announce(world.services, state, protocol.NotificationStatus.STARTED, "hello")
    _approve(state, protocol.GATE_DELETION)
    protocol.delete(world.services, state, _later(state))  # type: ignore[arg-type]
    failures = [e for e in world.services.ledger.entries(state.id) if e.action == "notify-failed"]
    assert failures and failures[0].detail["error"] == "connection refused"


# Invariant 9 and one retirement per model.


def test_second_retirement_of_same_model_is_refused_naming_the_first(world: World) -> None:
    first = protocol.open_retirement(world.services, _request(), None)
    with pytest.raises(ConflictError, match=first.id):
        protocol.open_retirement(world.services, _request(), None)


def test_halted_retirement_frees_the_model(world: World) -> None:
    first = protocol.open_retirement(world.services, _request(), None)
    protocol.halt(world.services, first, "rejected")
    second = protocol.open_retirement(world.services, _request(), None)
    assert second.id != first.id


def test_traffic_window_below_server_minimum_is_refused_before_anything(world: World) -> None:
    world.services.settings.min_traffic_window_hours = 24
    with pytest.raises(InputError, match=r"traffic_window_hours.*RETIRE_MIN_TRAFFIC_WINDOW_HOURS"):
        protocol.open_retirement(world.services, _request(traffic_window_hours=2), None)
    assert world.services.states.all() == []
    assert list(world.services.ledger.entries()) == []


def test_missing_replacement_is_refused_at_document(world: World) -> None:
    state = protocol.open_retirement(world.services, _request(replacement="churn-model@9"), None)
    with pytest.raises(InputError, match=r"replacement.*does not exist"):
        protocol.document(world.services, state)


def test_plan_says_what_the_backup_cannot_capture(world: World) -> None:
    state = protocol.open_retirement(world.services, _request(), None)
    dossier = protocol.document(world.services, state)
    backup_step = next(s for s in dossier.plan if s.phase.value == "backup")
    assert "NOT captured: serving logs" in backup_step.action
    assert "Backup CANNOT capture: serving logs" in dossier.summary()


def test_cutover_window_waits_for_low_traffic_hours() -> None:
    request = _request(cutover_window="02:00-04:00", timezone="UTC")
    noon = utcnow().replace(hour=12, minute=0, second=0, microsecond=0)
    at = protocol.next_cutover_time(request, noon)
    assert (at - noon) == timedelta(hours=14)
    three = noon.replace(hour=3)
    assert protocol.next_cutover_time(request, three) == three


def test_deletion_gate_shows_what_is_true_now(world: World) -> None:
    state = _to_backup(world)
    brief = "\n".join(protocol.deletion_brief(world.services, state))
    assert "production serves **churn-model@2**" in brief
    assert "**IDLE**" in brief
    assert "deletion blockers: none" in brief
    assert "the backup does not hold: serving logs" in brief


def test_traffic_movement_shows_old_and_new_around_the_cutover(world: World) -> None:
    state = _to_backup(world)
    world.traffic.requests["churn-model@2"] = 7
    moves = protocol.traffic_movement(world.services, state)
    assert [(label, str(r.reference)) for label, r in moves] == [
        ("before cutover", "churn-model@1"),
        ("before cutover", "churn-model@2"),
        ("after cutover", "churn-model@1"),
        ("after cutover", "churn-model@2"),
    ]
    assert moves[0][1].end == state.cutover_at == moves[2][1].start
    assert moves[3][1].verdict.value == "ACTIVE"


def test_traffic_window_starts_a_grace_after_the_cutover_and_stays_whole(world: World) -> None:
    world.services.settings.cutover_grace_seconds = 90
    state = protocol.open_retirement(world.services, _request(traffic_window_hours=2), None)
    protocol.cutover(world.services, state, utcnow())
    end = protocol.open_window(world.services, state, utcnow())
    assert state.cutover_at is not None and state.window_start is not None
    assert state.window_start - state.cutover_at == timedelta(seconds=90)
    assert end - state.window_start == timedelta(hours=2)
