"""Tasks of the reconciler: read each open retirement's runs from Prefect, resume what nothing carries."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import FlowRun, State, StateType
from prefect.deployments import run_deployment
from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventResourceFilter
from prefect.states import Cancelled, Crashed

from retirement import bootstrap, protocol
from retirement.models import NotificationStatus, utcnow
from retirement.reconcile import Decision, RunView, decide, silent
from retirement.settings import RetireSettings
from retirement.state import OPEN

RETIRE_DEPLOYMENT = "retire-model/retire-model"
RETIRE_FLOW = "retire-model"
ZOMBIE_AUTOMATION = "model-retirement: crash runs that stopped beating"


def _view(run: FlowRun) -> RunView:
    state = run.state
    return RunView(
        id=str(run.id),
        name=run.name,
        state_type=state.type.value if state else "UNKNOWN",
        state_name=(state.name or state.type.value) if state else "unknown",
        message=(state.message or "") if state else "",
        started=run.start_time or run.expected_start_time or run.created,
        since=state.timestamp if state else None,
        deadline=bool((run.parameters or {}).get("expire_gate")),
    )


@task(name="drop-zombie-automation", cache_policy=NO_CACHE)
def drop_zombie_automation() -> str:
    """Delete the automation an earlier version made to mark runs that stopped beating Crashed.

    It matched every flow run of the server, and it marked runs waiting at a gate Crashed: a run that
    suspends can send one last heartbeat after its Suspended state (the heartbeat thread stops only when
    the process unwinds), which armed the automation again with no heartbeat ever to follow. The
    reconciler now judges the heartbeats itself (:func:`crash_silent_runs`), on retire-model runs only,
    in their current state.
    """
    with get_client(sync_client=True) as client:
        found = [a for a in client.read_automations_by_name(ZOMBIE_AUTOMATION) if a.name == ZOMBIE_AUTOMATION]
        for automation in found:
            client.delete_automation(automation.id)
    return f"{len(found)} deleted" if found else "none"


def _last_beat(client: SyncPrefectClient, run: FlowRun) -> datetime | None:
    """The latest heartbeat a running run sent since it entered Running (None: none yet)."""
    since = run.state.timestamp if run.state else None
    if since is None:
        return None
    page = client.read_events(
        filter=EventFilter(
            occurred=EventOccurredFilter(since=since),
            event=EventNameFilter(name=["prefect.flow-run.heartbeat"]),
            resource=EventResourceFilter(id=[f"prefect.flow-run.{run.id}"]),
        ),
        limit=1,
    )
    return max((e.occurred for e in page.events), default=None)


@task(name="crash-silent-runs", cache_policy=NO_CACHE)
def crash_silent_runs() -> list[str]:
    """Mark Crashed every retire-model run still Running that sent no heartbeat for RETIRE_ZOMBIE_AFTER_SECONDS.

    Its process is gone (its worker was killed, the machine died); the retirement it carried is then judged
    by :func:`judge` like any other whose run crashed. Deployed retire-model runs beat every 30 s
    (prefect.yaml, `retire serve`); a run outside a deployment counts only once it has beaten. A run being
    cancelled whose process is gone is marked Cancelled. Only the current state
    counts: a run waiting at a gate does not beat and is never touched (a heartbeat sent just after it
    suspended would have made Prefect's zombie automation crash it). Returns one line per run marked.
    """
    zombie_after = timedelta(seconds=RetireSettings().zombie_after_seconds)
    marked = []
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[RETIRE_FLOW])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.CANCELLING]))
            ),
        )
        for run in runs:
            state = run.state
            if state is None or str(run.id) == _self_id():
                continue
            beat = _last_beat(client, run)
            if run.deployment_id is None and beat is None:
                continue  # not a deployment's run: it may run without heartbeats, silence proves nothing
            if not silent(state.timestamp, beat, utcnow(), zombie_after):
                continue
            why = f"no heartbeat for {zombie_after.total_seconds():g} s: its process is gone"
            new: State[Any] = Cancelled(message=why) if state.type == StateType.CANCELLING else Crashed(message=why)
            # Only if it is still in the state judged: a run that moved on meanwhile (to a gate, say) is left alone.
            current = client.read_flow_run(run.id).state
            if current is None or current.id != state.id:
                continue
            client.set_flow_run_state(run.id, new, force=True)
            marked.append(f"{run.name} ({state.name}): {why}")
    if marked:
        get_run_logger().warning("marked %d silent run(s): %s", len(marked), "; ".join(marked))
    return marked


@task(name="judge-retirements", cache_policy=NO_CACHE)
def judge() -> list[tuple[Decision, dict[str, object]]]:
    """Every open retirement judged against its runs; each decision with the request it belongs to.

    A run still Pending twice RETIRE_ZOMBIE_AFTER_SECONDS (at least 3 minutes: on a loaded machine a run
    takes over a minute from Pending to Running) after a worker took it was lost with that worker: its
    process never started, so it never beat.
    """
    settings = RetireSettings()
    _, states = bootstrap.stores(settings)
    found = states.by_status(OPEN)
    now = utcnow()
    pending_limit = timedelta(seconds=max(180, 2 * settings.zombie_after_seconds))
    decisions: list[tuple[Decision, dict[str, object]]] = []
    with get_client(sync_client=True) as client:
        for state in found:
            runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[state.id])))
            views = [_view(r) for r in runs if str(r.id) != _self_id()]
            decision = decide(state, views, now, pending_limit=pending_limit)
            decisions.append((decision, state.request.model_dump(mode="json")))
    return decisions


def _services(request: dict[str, object]) -> bootstrap.Services:
    sources = request.get("traffic_sources") or []
    return bootstrap.services(str(request.get("platform", "local")), [str(s) for s in sources])  # type: ignore[attr-defined]


def _self_id() -> str:
    from prefect.runtime import flow_run

    return flow_run.get_id() or ""


@task(name="resume-retirement", cache_policy=NO_CACHE)
def resume(decision: Decision, request: dict[str, object]) -> str:
    """Start the run that carries the retirement on from the phase it reached; recorded and announced."""
    assert decision.phase is not None and decision.at is not None
    svc = _services(request)
    try:
        state = svc.states.load(decision.retirement_id)
        if state.stopped:
            return f"{decision.retirement_id} stopped meanwhile"
        if decision.lost:
            with get_client(sync_client=True) as client:
                for run_id in decision.lost:
                    current = client.read_flow_run(UUID(run_id)).state
                    if current is None or current.type != StateType.PENDING:  # it started after all
                        return f"{decision.retirement_id}: run {run_id} left Pending meanwhile; looking again next time"
                    client.set_flow_run_state(
                        UUID(run_id), Crashed(message="stuck Pending: lost with its worker"), force=True
                    )
        # Two reconcilers judging at once compute the same key and get the same run.
        count = len(state.resumes) + 1
        run: FlowRun = run_deployment(  # type: ignore[assignment]
            name=RETIRE_DEPLOYMENT,
            parameters={"request": request, "phase": decision.phase.value, "retirement_id": decision.retirement_id},
            scheduled_time=decision.at,
            timeout=0,
            as_subflow=False,
            idempotency_key=f"{decision.retirement_id}:resume:{count}",
            tags=[decision.retirement_id],
            flow_run_name=f"retire {state.ref} · {decision.phase.value}",
        )
        with svc.states.transaction(decision.retirement_id) as change:
            if all(r.get("run") != str(run.id) for r in change.state.resumes):
                change.state.resumes.append(
                    {
                        "at": utcnow().isoformat(),
                        "phase": decision.phase.value,
                        "run": str(run.id),
                        "why": decision.reason,
                    }
                )
                change.state.attention = ""
                change.record(
                    "notice",
                    "resume",
                    detail={"phase": decision.phase.value, "flow_run": str(run.id), "why": decision.reason},
                )
        state = svc.states.load(decision.retirement_id)
        protocol.announce(
            svc,
            state,
            NotificationStatus.SCHEDULED,
            f"Resumed at phase *{decision.phase.value}*: {decision.reason}.",
            next_step=decision.phase.value,
            next_at=decision.at,
        )
    finally:
        svc.close()
    get_run_logger().warning("resumed %s at %s: %s", decision.retirement_id, decision.phase.value, decision.reason)
    return str(run.id)


@task(name="flag-retirement", cache_policy=NO_CACHE)
def flag(decision: Decision, request: dict[str, object]) -> None:
    """Say once, in the state, the ledger and the notifications, why a person must look at a retirement."""
    svc = _services(request)
    try:
        with svc.states.transaction(decision.retirement_id) as change:
            if change.state.attention == decision.reason:
                return
            change.state.attention = decision.reason
            change.record("notice", "needs-attention", detail={"why": decision.reason})
        protocol.announce(
            svc,
            svc.states.load(decision.retirement_id),
            NotificationStatus.ALERT,
            f"Needs attention: {decision.reason}",
        )
    finally:
        svc.close()
    get_run_logger().error("%s needs attention: %s", decision.retirement_id, decision.reason)
