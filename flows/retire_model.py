"""The retirement protocol as a Prefect flow: one phase after another, a gate before each risk.

A run carries the retirement as far as it can without waiting; a long wait (the low-traffic
window, the traffic window, the pending delete, the next monitoring check) ends the run and
schedules the next phase as a new run of the same deployment, visible and cancellable in the UI.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from prefect import flow
from prefect.runtime import flow_run
from prefect.states import Cancelled, Failed, State

from flows.gates import ask
from flows.guard import working_on
from retirement.errors import ApprovalError, RetirementError, RetirementStoppedError, SafetyError
from retirement.models import NotificationStatus, Phase, RetirementRequest
from retirement.models import utcnow as now
from retirement.protocol import GATE_CUTOVER, GATE_DELETION, GATE_MANUAL_CUTOVER, GATE_PLAN
from tasks import backup, cutover, delete, document, lifecycle, monitor, staging, verify
from tasks.gates import expire_gate as expire_gate_task

Next = tuple[Phase, datetime] | None


def document_leg(request: RetirementRequest, rid: str) -> Next:
    """1. Dossier and plan; the plan is approved."""
    document.document(request, rid)
    if request.dry_run:
        return None
    ask(request, rid, GATE_PLAN, "Approve the retirement plan", f"Retire {request.model}: {request.reason}.")
    return Phase.STAGING, now()


def staging_leg(request: RetirementRequest, rid: str) -> Next:
    """2. Replacement deployed to staging and smoke-tested; the cutover is approved."""
    outcome = staging.stage(request, rid)
    if request.replacement:
        ask(
            request,
            rid,
            GATE_CUTOVER,
            "Approve the production cutover",
            f"{outcome}. Production switches from {request.model} to {request.replacement}.",
        )
    return Phase.CUTOVER, cutover.cutover_time(request)


def cutover_leg(request: RetirementRequest, rid: str) -> Next:
    """3. Production switched, inference verified, bake watched (a breach rolls back)."""
    if request.replacement and cutover.manual_serving(request):
        ask(
            request,
            rid,
            GATE_MANUAL_CUTOVER,
            "Confirm the manual cutover",
            f"Switch production from {request.model} to {request.replacement} by hand, then confirm.",
            checklist=[
                f"{request.replacement} deployed and answering",
                "every client config points at it",
                f"no client names {request.model} any more",
            ],
        )
    cutover.cutover(request, rid)
    cutover.bake(request, rid)
    return Phase.VERIFY_IDLE, cutover.open_window(request, rid)  # 4. the traffic window, no process held


def verify_leg(request: RetirementRequest, rid: str) -> Next:
    """5. Zero requests over the whole window, full coverage, no dependents."""
    verify.verify_idle(request, rid)
    return Phase.BACKUP, now()


def backup_leg(request: RetirementRequest, rid: str) -> Next:
    """6. Backup written and verified; the deletion is approved with the typed reference."""
    for _ in range(3):  # a backup that fails verification at the gate is re-taken and the gate asked again
        backup.backup(request, rid)
        ask(request, rid, GATE_DELETION, "Approve the deletion", f"{request.model} will be deleted permanently.")
        if backup.approved_backup_verifies(request, rid):
            break
    else:
        raise SafetyError("the backup failed verification three times after it was approved; nothing deleted")
    if request.soft_delete and delete.soft_delete(request, rid) != "no soft step":
        return Phase.DELETE, now() + timedelta(hours=request.pending_delete_hours)
    return Phase.DELETE, now()


def delete_leg(request: RetirementRequest, rid: str) -> Next:
    """7. Backup re-verified, traffic re-checked, deleted, gone (an asynchronous delete is re-checked later)."""
    pending = delete.delete(request, rid)
    if pending is not None:
        return Phase.DELETE, pending
    return (Phase.MONITOR, now() + timedelta(hours=request.monitor_interval_hours)) if request.monitor_days else None


def monitor_leg(request: RetirementRequest, rid: str) -> Next:
    """8. One daily check of errors and of requests still naming the old model."""
    remaining = monitor.monitor_check(request, rid)
    return (Phase.MONITOR, now() + timedelta(hours=request.monitor_interval_hours)) if remaining else None


LEGS = {
    Phase.DOCUMENT: document_leg,
    Phase.STAGING: staging_leg,
    Phase.CUTOVER: cutover_leg,
    Phase.VERIFY_IDLE: verify_leg,
    Phase.BACKUP: backup_leg,
    Phase.DELETE: delete_leg,
    Phase.MONITOR: monitor_leg,
}


def _run_name() -> str:
    params = flow_run.get_parameters()
    request, phase = params.get("request"), params.get("phase", Phase.DOCUMENT)
    model = request.model if isinstance(request, RetirementRequest) else (request or {}).get("model", "?")
    return f"retire {model} · {getattr(phase, 'value', phase)}"


@flow(name="retire-model", flow_run_name=_run_name, persist_result=True, log_prints=False)
def retire_model(
    request: RetirementRequest,
    phase: Phase = Phase.DOCUMENT,
    retirement_id: str | None = None,
    expire_gate: str | None = None,
) -> State | str:
    """Retire one model safely: document, staging, cutover, traffic window, verify idle, backup, delete, monitor.

    Args:
        request: What to retire, what replaces it, who asks and approves, and the windows.
        phase: The phase this run starts at; later phases are scheduled by the retirement itself.
        retirement_id: The retirement this run continues (empty to open a new one).
        expire_gate: Set by the retirement itself: fail this gate safe if still unanswered.
    """
    rid, phase = lifecycle.open_retirement(request, retirement_id, phase)
    if expire_gate:
        return expire_gate_task(request, rid, expire_gate)
    with working_on(request, rid):
        step: Phase | None = phase
        while step is not None:
            if lifecycle.enter_phase(request, rid, step) in ("halted", "cancelled", "done"):
                return Cancelled(message=f"retirement {rid} is no longer running")
            try:
                nxt = LEGS[step](request, rid)
            except RetirementStoppedError as exc:  # cancelled or halted by someone else: it wins, nothing more
                return Cancelled(message=str(exc))
            except (SafetyError, ApprovalError) as exc:
                lifecycle.halt(request, rid, str(exc))
                state = Cancelled if isinstance(exc, ApprovalError) else Failed
                return state(message=f"retirement {rid} halted: {exc}")
            except RetirementError as exc:  # not a verdict: the run fails; the reconciler resumes it where it stopped
                status, reason = lifecycle.status(request, rid)
                if status in ("halted", "cancelled", "done"):
                    return Cancelled(message=f"retirement {rid} is {status}: {reason}")
                lifecycle.announce(
                    request,
                    rid,
                    NotificationStatus.FAILED,
                    f"Phase *{step.value}* failed: {exc}",
                    next_step="the reconciler resumes it at this phase; if it keeps failing, fix the cause",
                )
                raise
            lifecycle.leave_phase(request, rid, f"{step.value} done")
            if nxt is None:
                return lifecycle.finish(request, rid, "dry run: plan only" if request.dry_run else "retired")
            step, at = nxt
            if at > now() + timedelta(seconds=1):
                lifecycle.schedule(request, rid, step, at)
                return f"{rid}: next phase {step.value} at {at.isoformat()}"
    return rid
