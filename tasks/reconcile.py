"""Tasks of the reconciler: read each open retirement's runs from Prefect, resume what nothing carries."""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID

from prefect import get_run_logger, task
from prefect.automations import Automation
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.deployments import run_deployment
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification
from prefect.states import Crashed

from retirement import bootstrap, protocol
from retirement.models import NotificationStatus, utcnow
from retirement.reconcile import Decision, RunView, decide
from retirement.settings import RetireSettings
from retirement.state import OPEN

RETIRE_DEPLOYMENT = "retire-model/retire-model"
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


def zombie_automation(within_seconds: int) -> Automation:
    """The automation that marks a retirement run Crashed once it stopped beating for ``within_seconds``.

    Armed by each heartbeat and by the run entering Running: a run killed right after it started (a resumed
    gate, say) may die before its first heartbeat reaches the server, and would otherwise stay Running forever.
    Paused and suspended runs stop beating on purpose and are left alone.
    """
    return Automation(
        name=ZOMBIE_AUTOMATION,
        description="A retirement run whose process died is marked Crashed, so the reconciler resumes it.",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat", "prefect.flow-run.Running"},
            expect={
                "prefect.flow-run.heartbeat",
                "prefect.flow-run.Completed",
                "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed",
                "prefect.flow-run.Paused",
                "prefect.flow-run.Suspended",
            },
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=within_seconds),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED, message=f"no heartbeat for {within_seconds} s: its process is gone"
            )
        ],
    )


def _same(found: AutomationCore, wanted: AutomationCore) -> bool:
    """Whether an existing automation already does what ``wanted`` does (ids aside; updating it resets its timers)."""

    def shape(automation: AutomationCore) -> object:
        trigger = automation.trigger.model_dump(mode="json", exclude={"id"})
        actions = [a.model_dump(mode="json", exclude={"id"}) for a in automation.actions]
        return trigger, actions, automation.enabled

    return shape(found) == shape(wanted)


@task(name="ensure-zombie-automation", cache_policy=NO_CACHE)
def ensure_zombie_automation(within_seconds: int | None = None) -> str:
    """Make sure a run whose process died (no heartbeat for ``within_seconds``) is marked Crashed.

    Prefect's documented recipe for zombie runs; a paused or suspended run stops beating on purpose
    and is left alone. Runs beat when PREFECT_FLOWS_HEARTBEAT_FREQUENCY is set (prefect.yaml sets 30 s).
    An automation made by an earlier version (or with another delay) is brought up to date.
    """
    wanted = zombie_automation(within_seconds or RetireSettings().zombie_after_seconds)
    with get_client(sync_client=True) as client:
        found = [a for a in client.read_automations_by_name(ZOMBIE_AUTOMATION) if a.name == ZOMBIE_AUTOMATION]
        if found and _same(found[0], wanted):
            return "exists"
        if found:
            client.update_automation(found[0].id, wanted)
            return "updated"
    wanted.create()
    return "created"


@task(name="judge-retirements", cache_policy=NO_CACHE)
def judge() -> list[tuple[Decision, dict[str, object]]]:
    """Every open retirement judged against its runs; each decision with the request it belongs to.

    A run still Pending twice the zombie delay after a worker took it (at least 2 minutes) was lost with
    that worker: its process never started, so it never beat and the zombie automation cannot see it.
    """
    settings = RetireSettings()
    _, states = bootstrap.stores(settings)
    found = states.by_status(OPEN)
    now = utcnow()
    pending_limit = timedelta(seconds=max(120, 2 * settings.zombie_after_seconds))
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
