"""Approval gates in the library: announced once, who may answer, failing safe at the deadline."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from retirement import gates, protocol
from retirement.errors import ApprovalError
from retirement.models import RetirementRequest
from tests.fakes.platform import World, make_world


@pytest.fixture
def world(retire_home: Path) -> World:
    return make_world(retire_home)


def _state(world: World) -> protocol.RetirementState:
    request = RetirementRequest(
        model="churn-model@1",
        replacement="churn-model@2",
        requester="alice",
        approvers=["alice", "bob"],
        reason="superseded",
        gate_timeout_hours=1,
    )
    return protocol.open_retirement(world.services, request, None)


def test_gate_is_announced_once_even_when_the_run_replays(world: World) -> None:
    state = _state(world)
    first = gates.open_gate(world.services, state, protocol.GATE_PLAN, "Approve", "why", [], run_id="r1")
    again = gates.open_gate(world.services, state, protocol.GATE_PLAN, "Approve", "why", [], run_id="r1")
    assert first.key == again.key == "approve-plan-1"
    assert world.notifier.statuses().count("document:awaiting_approval") == 1
    assert first.approvers == ["alice", "bob"]


def test_deletion_gate_excludes_the_requester_and_asks_for_the_reference(world: World) -> None:
    state = _state(world)
    prep = gates.open_gate(world.services, state, protocol.GATE_DELETION, "Approve the deletion", "why", [])
    assert prep.approvers == ["bob"]
    assert prep.confirm == "churn-model@1"
    assert "type exactly **`churn-model@1`**" in prep.description


def test_refused_answer_asks_again_with_a_new_key(world: World) -> None:
    state = _state(world)
    gates.open_gate(world.services, state, protocol.GATE_DELETION, "Approve the deletion", "why", [])
    answer = {"decision": "approve", "approver": "bob", "typed_reference": ""}
    with pytest.raises(ApprovalError):
        gates.record_answer(world.services, state, protocol.GATE_DELETION, answer, "churn-model@1")
    prep = gates.open_gate(world.services, state, protocol.GATE_DELETION, "Approve the deletion", "why", [])
    assert prep.key == "approve-deletion-2"
    refused = [e for e in world.services.ledger.entries(state.id) if e.detail.get("refused")]
    assert refused and "does not match" in refused[0].detail["refused"]


def test_gate_fails_safe_only_after_its_deadline_and_only_if_unanswered(world: World) -> None:
    state = _state(world)
    prep = gates.open_gate(world.services, state, protocol.GATE_PLAN, "Approve", "why", [])
    assert gates.gate_expired(state, prep.key, prep.deadline - timedelta(minutes=1)) is None
    assert "timed out after 1 h" in (gates.gate_expired(state, prep.key, prep.deadline) or "")
    gates.record_answer(world.services, state, protocol.GATE_PLAN, {"decision": "approve", "approver": "bob"}, None)
    assert gates.gate_expired(state, prep.key, prep.deadline + timedelta(hours=1)) is None
