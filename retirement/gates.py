"""Approval gates in the library: what a gate asks, who may answer, and recording the answer."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field

from retirement import protocol
from retirement.bootstrap import Services
from retirement.errors import ApprovalError, RetirementStoppedError, StaleStateError
from retirement.models import Approval, NotificationStatus, utcnow
from retirement.render import gate_markdown
from retirement.state import RetirementState


class GatePrep(BaseModel):
    """What the flow needs to ask a gate."""

    key: str = Field(description="Pause key, unique per gate and attempt.")
    approvers: list[str] = Field(description="Who may answer.")
    confirm: str | None = Field(default=None, description="What must be typed to approve, if anything.")
    description: str = Field(description="Markdown shown above the form.")
    deadline: datetime = Field(description="When the gate fails safe.")
    answered: Approval | None = Field(default=None, description="The decision, if the gate was already answered.")
    asked_on: str | None = Field(
        default=None,
        description="The flow run that first waited at this gate: an answer given to it still counts when it died "
        "before recording it.",
    )


def open_gate(
    svc: Services,
    state: RetirementState,
    gate: str,
    title: str,
    what: str,
    checklist: list[str],
    *,
    run_id: str | None = None,
    ui_url: str | None = None,
) -> GatePrep:
    """Describe the gate and announce it once (a run replayed after the answer does not announce again)."""
    request = state.request
    answered = state.approval(gate)
    key = f"{gate}-{state.gate_attempts.get(gate, 1)}"
    confirm = protocol.confirmation_reference(svc, state.ref) if gate == protocol.GATE_DELETION else None
    approvers = [a for a in request.approvers if not (confirm and a == request.requester)]
    extra = [f"- [ ] {item}" for item in checklist]
    if confirm:
        extra += [
            "",
            f"To approve, type exactly **`{confirm}`** in *typed_reference*. "
            f"The requester ({request.requester}) cannot approve the deletion.",
        ]
    if gate == protocol.GATE_DELETION:
        extra += ["", f"Backup (verified): `{state.backup_location}`"]
        extra += [f"Backup manifest sha256: `{state.backup_manifest_sha256}` (the approval binds to it)"]
        extra += ["", f"**{protocol.drill_summary(state)}**"]
        for bad in state.tampered_backups:
            extra += [
                "",
                f"**An earlier backup failed verification** at `{bad['location']}` "
                f"(manifest `{bad['manifest_sha256']}`): " + "; ".join(bad["mismatches"][:10]),
                "A fresh backup was taken (above); nothing was deleted.",
            ]
        extra += ["", *protocol.deletion_brief(svc, state)]
    description = gate_markdown(title, what, state.dossier, extra)
    if answered is None and state.pending_gate != key:
        if state.stopped:
            raise RetirementStoppedError(state.id, state.status, state.status_reason, f"asking {gate}")
        state.pending_gate, state.gate_run, state.status = key, run_id, "awaiting_approval"
        if gate == protocol.GATE_DELETION:
            state.gate_manifest = state.backup_manifest_sha256
        state.gate_deadline = utcnow() + timedelta(hours=request.gate_timeout_hours)
        protocol.commit(svc, state, "intent", f"gate:{gate}", detail={"key": key, "approvers": approvers})
        protocol.announce(
            svc,
            state,
            NotificationStatus.AWAITING_APPROVAL,
            f"*{title}* - {what} Approvers: {', '.join(approvers)}.",
            next_step=f"answer the gate in the Prefect UI before {state.gate_deadline.isoformat(timespec='minutes')}",
            ui_url=ui_url,
        )
    return GatePrep(
        key=key,
        approvers=approvers,
        confirm=confirm,
        description=description,
        deadline=state.gate_deadline or utcnow(),
        answered=answered,
        asked_on=state.gate_run if state.pending_gate == key else None,
    )


def record_answer(
    svc: Services, state: RetirementState, gate: str, answer: dict[str, Any], confirm: str | None
) -> Approval:
    """Check an answer again (whatever the form enforced) and record it in the state and the ledger.

    Raises:
        ApprovalError: the answer was refused; the gate will be asked again with a new key.
        RetirementStoppedError: the retirement was cancelled or halted (a gate deadline) before the answer.
    """
    if state.stopped:
        raise RetirementStoppedError(state.id, state.status, state.status_reason, f"the answer to {gate}")
    try:
        approval = protocol.check_answer(
            state,
            gate,
            decision=str(answer.get("decision")),
            approver=str(answer.get("approver")),
            comment=str(answer.get("comment") or ""),
            typed_reference=str(answer["typed_reference"]) if answer.get("typed_reference") is not None else None,
            expected_reference=confirm,
        )
    except ApprovalError as exc:
        state.gate_attempts[gate] = state.gate_attempts.get(gate, 1) + 1
        state.pending_gate = None
        _commit_answer(svc, state, gate, str(answer.get("approver")), {"refused": str(exc)})
        raise
    state.gate_expiry_run, state.status = None, "running"
    _commit_answer(svc, state, gate, approval.approver, {"decision": approval.decision, "comment": approval.comment})
    return approval


def _commit_answer(svc: Services, state: RetirementState, gate: str, actor: str, detail: dict[str, Any]) -> None:
    """Record an answer over the state it was given for; an expiry or a cancel that landed first wins."""
    try:
        protocol.commit(svc, state, "decision", f"gate:{gate}", actor=actor, detail=detail)
    except StaleStateError:
        raise protocol.stopped(svc, state, f"the answer to {gate}") or StaleStateError(
            f"retirement {state.id} changed while {gate} was answered; the answer was not recorded"
        ) from None


def gate_expired(state: RetirementState, key: str, now: datetime) -> str | None:
    """Why the gate ``key`` must fail safe now, or None if it was answered or is still open."""
    if state.pending_gate != key or state.stopped:
        return None
    if state.gate_deadline and now < state.gate_deadline:
        return None
    return f"approval gate {key} timed out after {state.request.gate_timeout_hours:g} h"


def expire(svc: Services, state: RetirementState, key: str, now: datetime, *, ui_url: str | None = None) -> str | None:
    """Fail the gate ``key`` safe if it is still unanswered past its deadline, decided under the retirement's
    lock (an answer that landed first wins). Returns why it halted, or None if there was nothing to do."""
    reason = gate_expired(state, key, now)
    if reason is None:
        return None
    halted = protocol.halt(svc, state, reason, ui_url=ui_url, only_if=lambda s: gate_expired(s, key, now) is not None)
    return reason if halted else None
