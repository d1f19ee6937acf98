"""The deletion approval binds to the backup it was shown: a backup that fails verification after it is asked again."""

from __future__ import annotations

from pathlib import Path

from retirement.models import Phase
from tests.fakes.platform import World, tamper
from tests.flows.conftest import Driver
from tests.flows.test_retire_model_flow import DELETE_OK, _answers, _request


def test_a_backup_tampered_at_the_deletion_gate_is_retaken_and_the_gate_asked_again(
    world: World, driver: Driver
) -> None:
    shown: list[str | None] = []

    def tamper_then_approve() -> dict[str, object]:
        (state,) = world.services.states.all()
        shown.append(state.backup_manifest_sha256)
        victim = next(tamper(Path(state.backup_location or "")))
        data = bytearray(victim.read_bytes())
        data[0] ^= 0x01  # one bit flipped while the approver looks at the form
        victim.write_bytes(bytes(data))
        return DELETE_OK

    def approve_again() -> dict[str, object]:
        (state,) = world.services.states.all()
        shown.append(state.backup_manifest_sha256)
        return DELETE_OK

    answers = _answers(**{"approve-deletion": [tamper_then_approve, approve_again]})
    flow_state, state = driver.run(_request(), answers)

    assert flow_state.is_completed(), flow_state
    assert state.status == "done" and not world.registry.exists(world.old)
    first, second = shown
    assert first and second and first != second
    assert state.backup_manifest_sha256 == second
    assert world.services.backups.verify(state.backup_location or "").ok
    deletion = [a for a in state.approvals if a.gate == "approve-deletion"]
    assert [a.backup_manifest_sha256 for a in deletion] == [first, second]
    assert driver.answered.count("approve-deletion") == 2

    ledger = list(world.services.ledger.entries(state.id))
    tampered = [e for e in ledger if e.action == "backup-tampered"]
    assert len(tampered) == 1 and tampered[0].detail["manifest_sha256"] == first
    assert any("weights" in m or "sha256" in m or "size" in m for m in tampered[0].detail["mismatches"])
    gate_keys = [e.detail["key"] for e in ledger if e.action == "gate:approve-deletion" and e.kind == "intent"]
    assert gate_keys == ["approve-deletion-1", "approve-deletion-2"]
    (intent,) = [e for e in ledger if e.action == "delete" and e.kind == "intent"]
    assert intent.detail["backup"] == state.backup_location
    assert any("no longer verifies" in e.text for e in world.notifier.events)
    assert state.phase is Phase.DELETE or state.receipt is not None
