"""Tasks around an approval gate: prepare it (notify once), record the answer, expire it."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.runtime import flow_run
from prefect.states import Cancelled

from retirement import gates
from retirement.gates import GatePrep
from retirement.models import Approval, RetirementRequest, utcnow
from tasks._context import load


@task(name="prepare-gate", cache_policy=NO_CACHE)
def prepare_gate(
    request: RetirementRequest, retirement_id: str, gate: str, title: str, what: str, checklist: list[str]
) -> GatePrep:
    """Describe the gate, announce it once (a replayed run does not announce again)."""
    svc, state = load(request, retirement_id)
    return gates.open_gate(
        svc, state, gate, title, what, checklist, run_id=flow_run.get_id(), ui_url=flow_run.get_flow_run_ui_url()
    )


@task(name="record-decision", cache_policy=NO_CACHE)
def record_decision(
    request: RetirementRequest, retirement_id: str, gate: str, answer: dict[str, object], confirm: str | None
) -> Approval:
    """Record the answer; the gate's deadline run is cancelled (a refused answer raises ApprovalError)."""
    svc, state = load(request, retirement_id)
    expiry = state.gate_expiry_run
    approval = gates.record_answer(svc, state, gate, dict(answer), confirm)
    if expiry:  # the gate was answered: its deadline run has nothing left to do
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(expiry, Cancelled(message=f"gate {gate} answered"), force=True)
    get_run_logger().info("gate %s: %s by %s", gate, approval.decision, approval.approver)
    return approval


@task(name="expire-gate", cache_policy=NO_CACHE)
def expire_gate(request: RetirementRequest, retirement_id: str, key: str) -> str:
    """Fail a gate safe once its deadline passed unanswered: halt, and cancel the waiting run."""
    svc, state = load(request, retirement_id)
    waiting_run = state.gate_run
    reason = gates.expire(svc, state, key, utcnow(), ui_url=flow_run.get_flow_run_ui_url())
    if reason is None:
        return f"gate {key} was answered or is still open; nothing to do"
    if waiting_run:
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(waiting_run, Cancelled(message=f"gate {key} timed out"), force=True)
    return f"gate {key} timed out; retirement halted"
