"""Tasks around an approval gate: prepare it (notify once), record the answer, expire it."""

from __future__ import annotations

from datetime import datetime, timedelta

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.runtime import flow_run
from prefect.states import Cancelled
from pydantic import BaseModel, Field

from retirement import protocol
from retirement.errors import ApprovalError
from retirement.models import Approval, NotificationStatus, RetirementRequest, utcnow
from retirement.render import gate_markdown
from tasks._context import load


class GatePrep(BaseModel):
    """What the flow needs to ask a gate."""

    key: str = Field(description="Pause key, unique per gate and attempt.")
    approvers: list[str] = Field(description="Who may answer.")
    confirm: str | None = Field(default=None, description="What must be typed to approve, if anything.")
    description: str = Field(description="Markdown shown above the form.")
    deadline: datetime = Field(description="When the gate fails safe.")
    answered: Approval | None = Field(default=None, description="The decision, if the gate was already answered.")


@task(name="prepare-gate", cache_policy=NO_CACHE)
def prepare_gate(
    request: RetirementRequest, retirement_id: str, gate: str, title: str, what: str, checklist: list[str]
) -> GatePrep:
    """Describe the gate, announce it once (a replayed run does not announce again)."""
    svc, state = load(request, retirement_id)
    answered = state.approval(gate)
    attempt = state.gate_attempts.get(gate, 1)
    key = f"{gate}-{attempt}"
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
        extra += ["", f"Backup (verified): `{state.backup_location}`", "", *protocol.deletion_brief(svc, state)]
    description = gate_markdown(title, what, state.dossier, extra)
    if answered is None and state.pending_gate != key:
        state.pending_gate, state.gate_run, state.status = key, flow_run.get_id(), "awaiting_approval"
        state.gate_deadline = utcnow() + timedelta(hours=request.gate_timeout_hours)
        svc.states.save(state)
        protocol.record(svc, state, "intent", f"gate:{gate}", detail={"key": key, "approvers": approvers})
        protocol.announce(
            svc,
            state,
            NotificationStatus.AWAITING_APPROVAL,
            f"*{title}* - {what} Approvers: {', '.join(approvers)}.",
            next_step=f"answer the gate in the Prefect UI before {state.gate_deadline.isoformat(timespec='minutes')}",
            ui_url=flow_run.get_flow_run_ui_url(),
        )
    assert state.gate_deadline is not None or answered is not None
    return GatePrep(
        key=key,
        approvers=approvers,
        confirm=confirm,
        description=description,
        deadline=state.gate_deadline or utcnow(),
        answered=answered,
    )


@task(name="record-decision", cache_policy=NO_CACHE)
def record_decision(
    request: RetirementRequest, retirement_id: str, gate: str, answer: dict[str, object], confirm: str | None
) -> Approval:
    """Check the answer again and record it; a refused answer re-asks the gate with a new key.

    Raises:
        ApprovalError: the answer was refused (the gate will be asked again).
    """
    svc, state = load(request, retirement_id)
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
        svc.states.save(state)
        protocol.record(
            svc, state, "decision", f"gate:{gate}", actor=str(answer.get("approver")), detail={"refused": str(exc)}
        )
        raise
    expiry, state.gate_expiry_run, state.status = state.gate_expiry_run, None, "running"
    svc.states.save(state)
    if expiry:  # the gate was answered: its deadline run has nothing left to do
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(expiry, Cancelled(message=f"gate {gate} answered"), force=True)
    protocol.record(
        svc,
        state,
        "decision",
        f"gate:{gate}",
        actor=approval.approver,
        detail={"decision": approval.decision, "comment": approval.comment},
    )
    get_run_logger().info("gate %s: %s by %s", gate, approval.decision, approval.approver)
    return approval


@task(name="expire-gate", cache_policy=NO_CACHE)
def expire_gate(request: RetirementRequest, retirement_id: str, key: str) -> str:
    """Fail a gate safe once its deadline passed unanswered: halt, and cancel the waiting run."""
    svc, state = load(request, retirement_id)
    if state.pending_gate != key or state.status == "halted":
        return f"gate {key} was answered or withdrawn; nothing to do"
    if state.gate_deadline and utcnow() < state.gate_deadline:
        return f"gate {key} is still open until {state.gate_deadline.isoformat()}"
    waiting_run = state.gate_run
    protocol.halt(
        svc,
        state,
        f"approval gate {key} timed out after {request.gate_timeout_hours:g} h",
        ui_url=flow_run.get_flow_run_ui_url(),
    )
    if waiting_run:
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(waiting_run, Cancelled(message=f"gate {key} timed out"), force=True)
    return f"gate {key} timed out; retirement halted"
