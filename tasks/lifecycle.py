"""Tasks that open, announce, schedule, and close a retirement's flow runs."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.runtime import deployment, flow_run

from retirement import protocol
from retirement.errors import StaleStateError
from retirement.models import NotificationStatus, Phase, RetirementRequest
from tasks._context import load, services_for


@task(cache_policy=NO_CACHE, name="open-retirement")
def open_retirement(request: RetirementRequest, retirement_id: str | None, phase: Phase) -> tuple[str, Phase]:
    """Load the retirement or open a new one (claims the model); returns its id and the phase to run.

    A run replayed from the top after a suspended gate was answered goes on at the phase it had
    reached, not at the phase it was started with.
    """
    svc = services_for(request)
    run_id = flow_run.get_id()
    replayed = svc.states.by_flow_run(run_id) if run_id else None
    if replayed is not None:
        retirement_id, phase = replayed.id, replayed.phase
    state = protocol.open_retirement(svc, request, retirement_id)
    if run_id and svc.states.add_flow_run(state, run_id):
        with get_client(sync_client=True) as client:  # every run of a retirement carries its id as a tag
            client.update_flow_run(UUID(run_id), tags=sorted({*flow_run.get_tags(), state.id}))
    get_run_logger().info("retirement %s of %s: phase %s", state.id, state.ref, phase.value)
    return state.id, phase


@task(cache_policy=NO_CACHE, name="announce")
def announce(
    request: RetirementRequest,
    retirement_id: str,
    status: NotificationStatus,
    text: str,
    next_step: str | None = None,
    next_at: datetime | None = None,
) -> None:
    """Post a notification for the retirement (never fails the run)."""
    svc, state = load(request, retirement_id)
    protocol.announce(
        svc, state, status, text, next_step=next_step, next_at=next_at, ui_url=flow_run.get_flow_run_ui_url()
    )


@task(cache_policy=NO_CACHE, name="halt")
def halt(request: RetirementRequest, retirement_id: str, reason: str) -> None:
    """Stop the retirement for good and say so in the ledger, Slack and the UI."""
    svc, state = load(request, retirement_id)
    get_run_logger().error("retirement %s halted: %s", retirement_id, reason)
    protocol.halt(svc, state, reason, ui_url=flow_run.get_flow_run_ui_url())
    create_markdown_artifact(
        f"# Retirement of {state.ref} halted\n\nPhase: **{state.phase.value}**\n\nReason: {reason}\n\n"
        "Nothing destructive happens after this point.",
        key=f"{retirement_id}-report",
        description=f"Retirement of {state.ref}: halted",
    )


@task(cache_policy=NO_CACHE, name="enter-phase")
def enter_phase(request: RetirementRequest, retirement_id: str, phase: Phase) -> str:
    """Record that a phase starts; returns the retirement's status (a halted one does nothing more)."""
    svc, state = load(request, retirement_id)
    if state.stopped:
        return state.status
    if state.phase != phase or not state.history or state.history[-1].ended_at is not None:
        state.enter(phase)
        try:
            svc.states.save(state)
        except StaleStateError:  # a cancel or a gate deadline landed a moment ago: it wins
            if svc.states.refresh(state).stopped:
                return state.status
            raise
        run_id = flow_run.get_id()
        if run_id:  # the run's name says which phase it is in now
            with get_client(sync_client=True) as client:
                client.update_flow_run(UUID(run_id), name=f"retire {request.model} · {phase.value}")
    return state.status


@task(cache_policy=NO_CACHE, name="leave-phase")
def leave_phase(request: RetirementRequest, retirement_id: str, outcome: str) -> None:
    """Record how the current phase ended."""
    svc, state = load(request, retirement_id)
    state.leave(outcome)
    svc.states.save(state)  # a stale copy fails loudly: the run stops and the reconciler looks again
    protocol.checkpoint(svc, f"{retirement_id} {outcome}")
    get_run_logger().info("%s: %s", state.phase.value, outcome)


@task(cache_policy=NO_CACHE, name="schedule-next-phase")
def schedule(request: RetirementRequest, retirement_id: str, phase: Phase, at: datetime) -> str | None:
    """End this run and schedule ``phase`` as a new run of this deployment at ``at`` (no process waits).

    Outside a deployment (tests, local runs) it only records when the phase is due.
    Returns the id of the scheduled flow run, if one was created.
    """
    svc, state = load(request, retirement_id)
    count = state.scheduled.get(phase.value, 0) + 1
    state.scheduled[phase.value] = count
    if state.stopped:
        return None
    state.next_phase, state.next_run_at, state.status = phase, at, "waiting"
    svc.states.save(state)
    deployment_id = deployment.get_id()
    scheduled_id = None
    if deployment_id:
        run: FlowRun = run_deployment(  # type: ignore[assignment]
            name=deployment_id,
            parameters={
                "request": request.model_dump(mode="json"),
                "phase": phase.value,
                "retirement_id": retirement_id,
            },
            scheduled_time=at,
            timeout=0,
            as_subflow=False,
            idempotency_key=f"{retirement_id}:{phase.value}:{count}",
            tags=[retirement_id],
            flow_run_name=f"retire {request.model} · {phase.value}",
        )
        scheduled_id = str(run.id)
    protocol.record(
        svc, state, "outcome", "schedule", detail={"phase": phase.value, "at": at.isoformat(), "flow_run": scheduled_id}
    )
    protocol.announce(
        svc,
        state,
        NotificationStatus.SCHEDULED,
        f"Next phase *{phase.value}* scheduled.",
        next_step=phase.value,
        next_at=at,
        ui_url=flow_run.get_flow_run_ui_url(),
    )
    return scheduled_id


@task(cache_policy=NO_CACHE, name="schedule-gate-expiry")
def schedule_gate_expiry(request: RetirementRequest, retirement_id: str, key: str, deadline: datetime) -> str | None:
    """Schedule the run that fails a suspended gate safe at its deadline (deployed runs only)."""
    deployment_id = deployment.get_id()
    if not deployment_id:
        return None
    run: FlowRun = run_deployment(  # type: ignore[assignment]
        name=deployment_id,
        parameters={"request": request.model_dump(mode="json"), "retirement_id": retirement_id, "expire_gate": key},
        scheduled_time=deadline,
        timeout=0,
        as_subflow=False,
        idempotency_key=f"{retirement_id}:expire:{key}",
        tags=[retirement_id],
        flow_run_name=f"retire {request.model} · gate deadline {key}",
    )
    with services_for(request).states.transaction(retirement_id) as change:
        change.state.gate_expiry_run = str(run.id)
    return str(run.id)


@task(cache_policy=NO_CACHE, name="finish-retirement")
def finish(request: RetirementRequest, retirement_id: str, summary: str) -> str:
    """Close the retirement: final report artifact, notification, claim released."""
    svc, state = load(request, retirement_id)
    if state.stopped:
        return state.status_reason
    state.leave(summary)
    state.status, state.status_reason, state.next_phase, state.next_run_at = "done", summary, None, None
    protocol.commit(svc, state, "outcome", "finish", detail={"summary": summary})  # the claim goes with it
    protocol.checkpoint(svc, f"{retirement_id} finished")
    report = protocol.final_report(svc, state)
    create_markdown_artifact(report, key=f"{retirement_id}-report", description=f"Retirement of {state.ref}")
    backup = (
        f" Backup `{state.backup_location}` kept {state.request.backup_retention_days} days; restore with "
        f"`retire backup restore {state.backup_location}`."
        if state.backup_location
        else ""
    )
    protocol.announce(
        svc,
        state,
        NotificationStatus.DONE,
        f"Retirement finished: {summary}.{backup} The report is the run's `{retirement_id}-report` artifact.",
        ui_url=flow_run.get_flow_run_ui_url(),
    )
    return summary


@task(cache_policy=NO_CACHE, name="retirement-status")
def status(request: RetirementRequest, retirement_id: str) -> tuple[str, str]:
    """The retirement's status and its reason, as stored now."""
    state = services_for(request).states.load(retirement_id)
    return state.status, state.status_reason
