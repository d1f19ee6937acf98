"""The retirement protocol's phases as plain functions; the safety invariants are checked here.

Each phase re-checks its preconditions first (the world may have changed while it waited),
writes an intent to the ledger before and an outcome after every destructive call, and is
safe to run again after a crash: a completed destructive call is never repeated, an
interrupted one is completed.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import re
import time
import zoneinfo
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from retirement.bootstrap import Services
from retirement.errors import (
    ApprovalError,
    BackupVerifyError,
    ConflictError,
    DeletePendingError,
    DeletionBlockedError,
    InputError,
    NotFoundError,
    RetirementStoppedError,
    SafetyError,
    StaleStateError,
)
from retirement.models import (
    Approval,
    DeletionReceipt,
    Dossier,
    ModelRef,
    Notification,
    NotificationStatus,
    Phase,
    PlanStep,
    RetirementRequest,
    TrafficReport,
    TrafficVerdict,
    utcnow,
)
from retirement.state import DELETION_GATE, Entry, RetirementState, adopt, new_retirement_id
from retirement.traffic.verdict import observe

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]

GATE_PLAN = "approve-plan"
GATE_CUTOVER = "approve-cutover"
GATE_MANUAL_CUTOVER = "confirm-manual-cutover"
GATE_DELETION = DELETION_GATE


# --- opening --------------------------------------------------------------------------------------


def check_limits(request: RetirementRequest, svc: Services) -> None:
    """Refuse what the operator's settings forbid, before any side effect.

    Raises:
        InputError: naming the field and the allowed range.
    """
    settings = svc.settings
    if request.traffic_window_hours < settings.min_traffic_window_hours:
        raise InputError(
            "traffic_window_hours",
            f"{request.traffic_window_hours:g} h is shorter than this server allows",
            f">= {settings.min_traffic_window_hours:g} h (RETIRE_MIN_TRAFFIC_WINDOW_HOURS, set by the operator)",
        )
    if request.backup_retention_days < settings.min_backup_retention_days:
        raise InputError(
            "backup_retention_days",
            f"{request.backup_retention_days} days is shorter than this server allows",
            f">= {settings.min_backup_retention_days} days (RETIRE_MIN_BACKUP_RETENTION_DAYS)",
        )
    try:
        zoneinfo.ZoneInfo(request.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise InputError("timezone", f"unknown timezone {request.timezone!r}", "an IANA name such as 'UTC'") from None
    if request.serving not in (None, "manual", svc.platform.name):
        raise InputError("serving", f"unknown serving target {request.serving!r}", f"{svc.platform.name}, manual")


def open_retirement(svc: Services, request: RetirementRequest, retirement_id: str | None) -> RetirementState:
    """Load the retirement, or open a new one and claim its model (one retirement per model).

    Raises:
        InputError: the request breaks a limit, or differs from the one the retirement was opened with.
        ConflictError: another open retirement holds the model; the message names it.
    """
    check_limits(request, svc)
    if retirement_id:
        state = svc.states.load(retirement_id)
        if state.request != request:
            raise InputError(
                "request", f"differs from the request retirement {retirement_id} was opened with", "the same request"
            )
        return state
    state = RetirementState(id=new_retirement_id(request.ref), request=request)
    svc.states.create(state, Entry("decision", "open", request.requester, {"reason": request.reason}))
    return state


def record(
    svc: Services,
    state: RetirementState,
    kind: Any,
    action: str,
    *,
    actor: str = "system",
    detail: dict[str, Any] | None = None,
) -> None:
    """One ledger entry for this retirement, on its own (a notice or a decision that changes no state)."""
    svc.ledger.append(state.id, kind, action, actor=actor, reference=str(state.ref), detail=detail)


def checkpoint(svc: Services, reason: str) -> None:
    """Anchor the ledger's head outside the database (the end of a phase); never fails a step."""
    if svc.anchor is None:
        return
    try:
        svc.anchor.checkpoint(svc.ledger.head(), reason)
    except Exception as exc:  # recorded, and caught at the next `retire ledger verify` as a missing checkpoint
        logger.warning("ledger checkpoint failed: %s", exc)


def commit(
    svc: Services,
    state: RetirementState,
    kind: Any,
    action: str,
    *,
    actor: str = "system",
    detail: dict[str, Any] | None = None,
) -> None:
    """Save the state and the ledger entry recording its change in one transaction.

    Raises:
        StaleStateError: another writer changed the retirement since it was read; nothing was written.
    """
    svc.states.save(state, Entry(kind, action, actor, detail))


def stopped(svc: Services, state: RetirementState, doing: str) -> RetirementStoppedError | None:
    """After a refused (stale) write: the reason to stop if the retirement was cancelled or halted meanwhile."""
    svc.states.refresh(state)
    if state.stopped:
        return RetirementStoppedError(state.id, state.status, state.status_reason, doing)
    return None


def announce(
    svc: Services,
    state: RetirementState,
    status: NotificationStatus,
    text: str,
    *,
    next_step: str | None = None,
    next_at: datetime | None = None,
    ui_url: str | None = None,
) -> None:
    """Notify people; a failure is recorded in the ledger and never stops the protocol."""
    event = Notification(
        retirement_id=state.id,
        reference=str(state.ref),
        phase=state.phase,
        status=status,
        text=text,
        next_step=next_step,
        next_at=next_at,
        ui_url=ui_url,
    )
    try:
        receipt = svc.notifier.post(event, thread=state.slack_thread)
    except Exception as exc:  # invariant 8: a notifier bug must not block a safety step either
        record(svc, state, "notice", "notify-failed", detail={"status": status.value, "error": repr(exc)})
        return
    if receipt.thread and not state.slack_thread:
        state.slack_thread = receipt.thread
        with contextlib.suppress(StaleStateError):  # a concurrent writer won; the next message keeps the thread
            svc.states.save(state)
    if not receipt.delivered:
        record(
            svc,
            state,
            "notice",
            "notify-failed",
            detail={"status": status.value, "error": receipt.error, "attempts": receipt.attempts},
        )


def halt(
    svc: Services,
    state: RetirementState,
    reason: str,
    *,
    ui_url: str | None = None,
    status: str = "halted",
    actor: str = "system",
    only_if: Callable[[RetirementState], bool] | None = None,
) -> bool:
    """Stop the retirement for good: nothing destructive happens after this; say so everywhere.

    Written over whatever is stored now (never a stale copy); a retirement already halted, cancelled
    or done stays as it is, and so does one for which ``only_if`` (judged on what is stored, under the
    lock) is false. Returns True if this call stopped it.
    """
    action = "cancel" if status == "cancelled" else "halt"
    with svc.states.transaction(state.id) as change:
        current = change.state
        stopped_now = not current.stopped and (only_if is None or only_if(current))
        if stopped_now:
            current.leave(f"{status}: {reason}")
            current.status = status  # type: ignore[assignment]
            current.status_reason = reason
            current.pending_gate = None
            current.next_phase = None
            current.next_run_at = None
            change.record("decision", action, actor=actor, detail={"reason": reason, "phase": current.phase.value})
    runs = state.flow_runs
    adopt(state, change.state)
    state.flow_runs = runs
    checkpoint(svc, f"{state.id} {action}")
    if stopped_now:
        verb = "cancelled" if status == "cancelled" else "halted"
        announce(
            svc,
            state,
            NotificationStatus.HALTED,
            f"Retirement {verb} in phase *{state.phase.value}*: {reason}. Nothing further will be done.",
            ui_url=ui_url,
        )
    return stopped_now


# --- phase 1: document ----------------------------------------------------------------------------


def build_dossier(svc: Services, request: RetirementRequest) -> Dossier:
    """The dossier and plan for ``request``, with no side effect (what `retire plan` prints).

    Its ``refusals`` name everything that would keep this retirement from ever finishing, each with its
    remedy, found by reading only: a platform rule the protocol cannot lift, a dependent it does not
    move (or one only a cutover moves when nothing replaces the model), what the serving target says it
    would stop at (``Serving.preflight``), and a traffic source that cannot observe the reference.
    """
    registry, ref = svc.platform.registry, request.ref
    dossier = registry.describe(ref)
    replacement = request.replacement_ref
    if replacement is not None and not registry.exists(replacement):
        raise InputError(
            "replacement", f"{replacement} does not exist on {replacement.platform}", "an existing version"
        )
    dossier.dependents = registry.dependents(ref)
    dossier.blockers = registry.deletion_blockers(ref)
    dossier.capabilities = registry.capabilities
    serving = svc.platform.serving
    rules = _rule_refusals(dossier, replacement)
    dossier.refusals = rules + _dependent_refusals(dossier, replacement, rules)
    if serving is not None and request.serving != "manual":
        try:
            current = serving.production(ref.model)
        except ConflictError as exc:  # e.g. several deployments and none named production: the cutover would stop
            dossier.refusals.append(str(exc))
        else:
            if current is not None:
                dossier.deployed_at.append(f"production ({serving.name}): {current}")
        dossier.refusals += serving.preflight(request)
    dossier.refusals += _traffic_refusals(svc, ref)
    dossier.plan = make_plan(svc, request)
    return dossier


def _rule_refusals(dossier: Dossier, replacement: ModelRef | None) -> list[str]:
    """The platform's rules that stand for good: those no phase lifts, and those only a cutover lifts
    when nothing replaces the model."""
    found = []
    for blocker in dossier.blockers:
        remedy = blocker.remedy or "none this retirement can apply"
        if not blocker.cleared_by_protocol:
            found.append(f"{blocker.message} (platform rule `{blocker.code}`); remedy: {remedy}")
        elif replacement is None:
            found.append(
                f"{blocker.message} (platform rule `{blocker.code}`): only a cutover to a replacement lifts it, and "
                "this retirement names none; remedy: name a replacement (its cutover lifts it), or lift it yourself "
                "and plan again"
            )
    return found


def _names(text: str, name: str) -> bool:
    """True when ``name`` stands in ``text`` as a whole word (ids, aliases, project names)."""
    return re.search(rf"(?<![\w.:/-]){re.escape(name)}(?![\w.:/-])", text) is not None


def _dependent_refusals(dossier: Dossier, replacement: ModelRef | None, said: list[str]) -> list[str]:
    """Invariant 4 at plan time: every dependent blocks the delete unless this retirement's cutover moves it.

    A dependent a refusal in ``said`` already names (the platform's own rule about it) is not repeated.
    """
    ref = dossier.reference
    found = []
    for dep in dossier.dependents:
        if dep.movable and replacement is not None:
            continue  # the staging or cutover step moves it; re-checked gone before the delete
        if any(_names(text, dep.name) for text in said):
            continue  # the platform's own rule already names it, with its remedy
        what = f"{dep.kind} {dep.name} depends on {ref}" + (f" ({dep.detail})" if dep.detail else "")
        if dep.movable:
            found.append(
                f"{what}: only a cutover moves it, and nothing replaces {ref}; remedy: name a replacement, "
                "or move it off first"
            )
        else:
            found.append(
                f"{what}: this retirement does not move it, and nothing is deleted while a dependent stands; "
                f"remedy: move it off {ref} or remove it, then plan again"
            )
    return found


# How far back the plan asks each traffic source about the reference: a window long past, so a source
# that records what it sees as it is asked (Vi's statistics snapshots) records nothing.
_PROBE_AGO = timedelta(days=1)


def _traffic_refusals(svc: Services, ref: ModelRef) -> list[str]:
    """Sources that can never say IDLE for ``ref``: none configured, or one that answers ERROR about it."""
    if not svc.traffic:
        return [
            f"no traffic source observes {ref.platform}: verify-idle could never see zero requests to {ref}; "
            "remedy: name one in `traffic_sources` (e.g. prometheus)"
        ]
    end = utcnow() - _PROBE_AGO
    report = observe(svc.traffic, ref, end - timedelta(minutes=1), end)
    return [
        f"traffic source {sample.source} cannot observe {ref}: {sample.detail}; remedy: fix the source, or name "
        "sources that can in `traffic_sources`"
        for sample in report.samples
        if sample.verdict is TrafficVerdict.ERROR
    ]


def _standing(svc: Services, ref: ModelRef) -> list[str]:
    """Invariant 4, asked of the platform now: every dependent still there, then every rule that still forbids."""
    registry = svc.platform.registry
    dependents = registry.dependents(ref)
    found = [
        f"{dep.kind} {dep.name} still depends on {ref}" + (f" ({dep.detail})" if dep.detail else "")
        for dep in dependents
    ]
    found += [
        f"blocked: {blocker.message}"
        for blocker in registry.deletion_blockers(ref)
        if not any(_names(blocker.message, dep.name) for dep in dependents)
    ]
    return found


def document(svc: Services, state: RetirementState) -> Dossier:
    """Phase 1: the dossier of the old model and the plan of every action to come (kept for later phases).

    Raises:
        SafetyError: the plan has refusals (the retirement could never finish); nothing was done, and the
            dossier that says why is kept.
    """
    dossier = state.dossier
    if dossier is None:
        dossier = build_dossier(svc, state.request)
        state.dossier = dossier
        commit(
            svc,
            state,
            "outcome",
            "document",
            detail={
                "dependents": len(dossier.dependents),
                "blockers": [b.code for b in dossier.blockers],
                "refusals": dossier.refusals,
            },
        )
    if dossier.refusals:
        raise SafetyError(
            f"the plan is refused, nothing was done ({len(dossier.refusals)} reason(s)): "
            + " | ".join(dossier.refusals)
        )
    return dossier


def uses_manual_serving(svc: Services, request: RetirementRequest) -> bool:
    """True when staging and cutover are checklist gates answered by a person."""
    return request.serving == "manual" or svc.platform.serving is None


def confirmation_reference(svc: Services, ref: ModelRef) -> str:
    """What the approver must type at the deletion gate (the run id where a delete takes a whole run)."""
    custom = getattr(svc.platform.registry, "confirmation_reference", None)
    return str(custom(ref)) if callable(custom) else str(ref)


def duration(hours: float) -> str:
    """Hours in words a person reads at a glance: '48 h', '30 min', '10 s'."""
    if hours >= 1:
        return f"{hours:g} h"
    if hours * 60 >= 1:
        return f"{hours * 60:.3g} min"
    return f"{hours * 3600:.3g} s"


def make_plan(svc: Services, request: RetirementRequest) -> list[PlanStep]:
    """Every action the retirement will take, in order, with its gate and timing."""
    ref = request.ref
    caps = svc.platform.registry.capabilities
    new = request.replacement
    manual = uses_manual_serving(svc, request)
    steps = [PlanStep(phase=Phase.DOCUMENT, action="Dossier and plan (this)", gate=GATE_PLAN, when="now")]
    if new:
        how = "a person deploys it (checklist)" if manual else f"{svc.platform.name} staging target"
        steps.append(PlanStep(phase=Phase.STAGING, action=f"Deploy {new} to staging ({how}) and smoke-test it"))
        steps.append(
            PlanStep(
                phase=Phase.CUTOVER,
                action=f"Switch production to {new}; bake {duration(request.bake_minutes / 60)} "
                f"(error rate <= {request.max_error_rate:g}, p95 <= {request.max_p95_latency_ms:g} ms); "
                "breach rolls back automatically",
                destructive=True,
                gate=GATE_CUTOVER,
                when=f"in the window {request.cutover_window} {request.timezone}"
                if request.cutover_window
                else "on approval",
            )
        )
    steps.append(
        PlanStep(
            phase=Phase.TRAFFIC_WINDOW,
            action=f"Wait {duration(request.traffic_window_hours)} with no process held",
            when="after the cutover",
        )
    )
    sources = ", ".join(s.name for s in svc.traffic) or "NONE CONFIGURED"
    steps.append(
        PlanStep(
            phase=Phase.VERIFY_IDLE,
            action=f"Zero requests to {ref} over the whole window with full coverage ({sources}); "
            "dependents re-scanned",
        )
    )
    lost = f"; NOT captured: {', '.join(caps.not_exportable)}" if caps.not_exportable else ""
    steps.append(
        PlanStep(
            phase=Phase.BACKUP,
            action=f"Back up {', '.join(caps.exports) or 'metadata'}{lost}; verify by re-reading; "
            f"keep {request.backup_retention_days} days",
        )
    )
    if request.soft_delete and caps.soft_delete:
        steps.append(
            PlanStep(
                phase=Phase.DELETE,
                action=f"{caps.soft_delete.capitalize()} first, then wait {duration(request.pending_delete_hours)} "
                "(cancellable; any request cancels the delete)",
                destructive=True,
                gate=GATE_DELETION,
            )
        )
    cascade = f" (also removes: {', '.join(caps.cascade)})" if caps.cascade else ""
    steps.append(
        PlanStep(
            phase=Phase.DELETE,
            action=f"Delete {ref} ({caps.delete_unit}){cascade}; verify it is gone; changelog",
            destructive=True,
            gate=GATE_DELETION,
            when="after the backup verifies again",
        )
    )
    if request.monitor_days:
        steps.append(
            PlanStep(
                phase=Phase.MONITOR,
                action=f"Check errors and requests naming {ref} every {duration(request.monitor_interval_hours)} "
                f"for {duration(request.monitor_days * 24)}; final report",
            )
        )
    return steps


# --- phase 2 and 3: staging, cutover, bake, rollback --------------------------------------------------


def stage(svc: Services, state: RetirementState) -> str:
    """Phase 2: deploy the replacement to staging and smoke-test it. Returns what was done, in words."""
    replacement = state.request.replacement_ref
    if replacement is None:
        return "nothing replaces this model: no staging"
    if uses_manual_serving(svc, state.request):
        return f"manual serving: a person deploys {replacement} to staging (checklist gate)"
    serving = svc.platform.serving
    assert serving is not None
    done = svc.ledger.find(state.id, "staging")
    if done is not None:  # a replay after the cutover gate: staging and its paid smoke requests run once
        return f"{replacement} staged at {done.at:%Y-%m-%d %H:%M:%S} UTC (not repeated)"
    serving.deploy_staging(replacement)
    smoke = serving.smoke_test(replacement)
    record(svc, state, "outcome", "staging", detail=smoke.model_dump(mode="json"))
    if not smoke.ok:
        raise SafetyError(f"smoke test of {replacement} in staging failed: {smoke.detail}")
    if smoke.requests == 0:
        return f"{replacement} staged; the smoke test sent no inference ({smoke.detail or 'no golden requests'})"
    return f"{replacement} staged; smoke test {smoke.requests - smoke.errors}/{smoke.requests} ok"


def next_cutover_time(request: RetirementRequest, now: datetime) -> datetime:
    """The start of the next low-traffic window (``now`` if there is none or we are inside it)."""
    if not request.cutover_window:
        return now
    tz = zoneinfo.ZoneInfo(request.timezone)
    start_s, end_s = request.cutover_window.split("-")
    local = now.astimezone(tz)
    start_t = datetime.strptime(start_s, "%H:%M").time()
    end_t = datetime.strptime(end_s, "%H:%M").time()
    t = local.time()
    inside = start_t <= t < end_t if start_t < end_t else (t >= start_t or t < end_t)
    if inside:
        return now
    candidate = local.replace(hour=start_t.hour, minute=start_t.minute, second=0, microsecond=0)
    if candidate <= local:
        candidate += timedelta(days=1)
    return candidate.astimezone(now.tzinfo)


def _intent_without_outcome(svc: Services, state: RetirementState, action: str) -> dict[str, Any] | None:
    intent = svc.ledger.find(state.id, action, kind="intent")
    if intent is None:
        return None
    outcome = svc.ledger.find(state.id, action, kind="outcome")
    if outcome is not None and outcome.seq > intent.seq:
        return None
    return intent.detail


def cutover(svc: Services, state: RetirementState, now: datetime) -> str:
    """Phase 3: switch production to the replacement (idempotent; records the rollback target first)."""
    replacement = state.request.replacement_ref
    if replacement is None or state.cutover_at is not None:
        return "no cutover needed" if replacement is None else "cutover already done"
    if uses_manual_serving(svc, state.request):
        state.cutover_at = now
        commit(svc, state, "outcome", "cutover", detail={"to": str(replacement), "how": "manual, confirmed at gate"})
        return f"production switched to {replacement} by hand"
    serving = svc.platform.serving
    assert serving is not None
    interrupted = _intent_without_outcome(svc, state, "cutover")
    if interrupted is not None:
        before = ModelRef.model_validate(interrupted["from"]) if interrupted.get("from") else None
    else:
        before = serving.production(state.ref.model)
        if before != state.ref:
            state.cutover_at = now
            commit(svc, state, "outcome", "cutover", detail={"skipped": f"production is {before}, not {state.ref}"})
            return f"{state.ref} does not serve production ({before}): nothing to switch"
    # After a crash the switch may already be done: never send it twice.
    if interrupted is None or serving.production(replacement.model) != replacement:
        state.previous_production = before
        # Re-read under the lock right before the switch: a cancel that landed a moment ago wins.
        svc.states.fence(
            state,
            "cutover",
            detail={"from": before.model_dump(mode="json") if before else None, "to": str(replacement)},
        )
        serving.switch(replacement, replacing=before or state.ref)
    # Asked about the replacement's model: on platforms whose unit is the model (Selise), the old
    # model has no production once its consumers moved.
    current = serving.production(replacement.model)
    if current != replacement:
        raise SafetyError(f"production answers {current} after switching to {replacement}")

    def switched(stored: RetirementState) -> None:
        stored.previous_production = before
        stored.cutover_at = utcnow()

    svc.states.settle(state, "cutover", switched, detail={"from": str(before), "to": str(replacement)})
    if state.stopped:  # cancelled while the switch was under way: `retire cancel` puts production back
        raise RetirementStoppedError(state.id, state.status, state.status_reason, "the bake")
    announce(
        svc,
        state,
        NotificationStatus.DONE,
        f"*Cutover*: production switched from {before} to {replacement}. The bake watches {replacement} for "
        f"{duration(state.request.bake_minutes / 60)}; a breach rolls back automatically.",
        next_step=f"to stop and switch back before the bake ends: `retire cancel {state.id}`",
    )
    return f"production switched from {before} to {replacement}"


def bake_sample(svc: Services, state: RetirementState, start: datetime, end: datetime) -> str | None:
    """One bake sample of the replacement; returns the breach in words, or None."""
    replacement = state.request.replacement_ref
    assert replacement is not None
    report = observe(svc.traffic, replacement, start, end)
    requests = sum(s.requests or 0 for s in report.samples)
    errors = sum(s.errors or 0 for s in report.samples)
    p95s = [s.p95_latency_ms for s in report.samples if s.p95_latency_ms is not None]
    p95 = max(p95s) if p95s else None
    rate = errors / requests if requests else 0.0
    state.bake.append(
        {
            "at": end.isoformat(),
            "requests": requests,
            "errors": errors,
            "error_rate": rate,
            "p95_ms": p95,
            "verdict": report.verdict.value,
        }
    )
    try:
        svc.states.save(state)
    except StaleStateError:
        raise stopped(svc, state, "the bake") or StaleStateError(
            f"retirement {state.id} changed during the bake"
        ) from None
    request = state.request
    if report.verdict in (TrafficVerdict.ERROR, TrafficVerdict.NODATA):
        return f"the bake could not observe {replacement} ({report.verdict.value}: {report.reason}); not a pass"
    if requests and rate > request.max_error_rate:
        return f"error rate {rate:.2%} of {replacement} over {requests} requests exceeds {request.max_error_rate:.2%}"
    if p95 is not None and p95 > request.max_p95_latency_ms:
        return f"p95 latency {p95:.0f} ms of {replacement} exceeds {request.max_p95_latency_ms:.0f} ms"
    return None


def bake(
    svc: Services,
    state: RetirementState,
    *,
    clock: Clock = utcnow,
    sleep: Callable[[float], None] = time.sleep,
    samples: int = 5,
) -> str:
    """Watch the replacement for ``bake_minutes``; a breach rolls back to the old model and halts.

    Raises:
        SafetyError: a threshold was breached (after the rollback completed).
    """
    if state.request.replacement_ref is None or state.request.bake_minutes == 0 or not svc.traffic:
        return "no bake (nothing to observe)" if not svc.traffic else "no bake"
    assert state.cutover_at is not None
    total = state.request.bake_minutes * 60
    start = state.cutover_at
    for i in range(1, samples + 1):
        due = start + timedelta(seconds=total * i / samples)
        wait = (due - clock()).total_seconds()
        if wait > 0:
            sleep(wait)
        svc.states.check_running(state, "the bake")  # a cancel during the bake stops it between samples
        breach = bake_sample(svc, state, start, min(clock(), due))
        if breach and "not a pass" in breach and state.request.bake_unobserved == "halt":
            raise SafetyError(
                f"bake halted: {breach}. Production stays on {state.request.replacement}; {state.ref} is untouched "
                f"(run again with bake_unobserved=rollback to switch back automatically)"
            )
        if breach:
            rollback(svc, state, breach)
            raise SafetyError(f"bake breach, rolled back to {state.previous_production}: {breach}")
    return f"bake passed: {len(state.bake)} samples within thresholds"


def rollback(svc: Services, state: RetirementState, reason: str) -> None:
    """Put production back on the old model (idempotent; completes an interrupted rollback)."""
    target = state.previous_production
    serving = svc.platform.serving
    if target is None or serving is None or uses_manual_serving(svc, state.request):
        record(svc, state, "notice", "rollback-manual", detail={"reason": reason})
        return
    if _intent_without_outcome(svc, state, "rollback") is None:
        # Putting production back goes on after a cancel (undo=True); it is never sent twice.
        svc.states.fence(state, "rollback", detail={"to": str(target), "reason": reason}, undo=True)
    if serving.production(target.model) != target:
        serving.switch(target, replacing=state.request.replacement_ref)
    current = serving.production(target.model)
    if current != target:
        raise SafetyError(f"rollback to {target} did not take: production answers {current}")

    def restored(stored: RetirementState) -> None:
        stored.rolled_back = True

    svc.states.settle(state, "rollback", restored, detail={"to": str(target), "reason": reason})
    announce(svc, state, NotificationStatus.ALERT, f"Rolled back production to {target}: {reason}")


def complete_interrupted_rollback(svc: Services, state: RetirementState) -> bool:
    """If a rollback was started and not finished (a crash), finish it. Returns True if it did."""
    detail = _intent_without_outcome(svc, state, "rollback")
    if detail is None:
        return False
    rollback(svc, state, str(detail.get("reason", "interrupted rollback")))
    return True


# --- phases 4 and 5: traffic window, verify idle ------------------------------------------------------


def open_window(svc: Services, state: RetirementState, now: datetime) -> datetime:
    """Start the traffic window a grace period after the cutover (or now); returns when it ends."""
    if state.window_start is None:
        grace = timedelta(seconds=svc.settings.cutover_grace_seconds)
        state.window_start = state.cutover_at + grace if state.cutover_at else now
        state.window_end = state.window_start + timedelta(hours=state.request.traffic_window_hours)
        commit(
            svc,
            state,
            "outcome",
            "window-open",
            detail={"start": state.window_start.isoformat(), "end": state.window_end.isoformat()},
        )
    assert state.window_end is not None
    return state.window_end


def verify_idle(
    svc: Services,
    state: RetirementState,
    now: datetime,
    sleep: Callable[[float], None] = time.sleep,
) -> TrafficReport:
    """Phase 5: zero requests over the WHOLE window from every source, and no dependent left.

    Raises:
        SafetyError: the verdict is not IDLE, or something still depends on the model.
    """
    if state.window_start is None or state.window_end is None:
        raise SafetyError("verify-idle ran before the traffic window was opened")
    early = (state.window_end - now).total_seconds()
    if early > 120:
        raise SafetyError(f"the traffic window ends at {state.window_end.isoformat()}; it is {now.isoformat()}")
    if early > 0:  # a scheduled run may start a moment before its time: wait for the window to end
        sleep(early)
    report = observe(svc.traffic, state.ref, state.window_start, state.window_end)
    state.traffic.append(report)
    commit(
        svc,
        state,
        "outcome",
        "verify-idle",
        detail={
            "verdict": report.verdict.value,
            "reason": report.reason,
            "requests": sum(s.requests or 0 for s in report.samples),
        },
    )
    if report.verdict is not TrafficVerdict.IDLE:
        raise SafetyError(f"traffic verdict over the window is {report.verdict.value}: {report.reason}")
    standing = _standing(svc, state.ref)  # invariant 4: the dependents re-scanned, not the adapter's word
    if standing:
        raise SafetyError("still depended on: " + "; ".join(standing))
    return report


def traffic_movement(svc: Services, state: RetirementState) -> list[tuple[str, TrafficReport]]:
    """Old and new version over a window before the cutover and the window after it: the move, shown.

    For people only (the traffic table); verdicts here decide nothing.
    """
    new = state.request.replacement_ref
    if state.cutover_at is None or state.window_end is None or new is None:
        return []
    length = state.window_end - state.cutover_at
    spans = [
        ("before cutover", state.cutover_at - length, state.cutover_at),
        ("after cutover", state.cutover_at, state.window_end),
    ]
    return [(label, observe(svc.traffic, ref, start, end)) for label, start, end in spans for ref in (state.ref, new)]


# --- phase 6: backup ------------------------------------------------------------------------------


def manifest_digest(manifest_json: str) -> str:
    """SHA-256 of a manifest's canonical JSON."""
    return hashlib.sha256(manifest_json.encode()).hexdigest()


def tampered_backup(svc: Services, state: RetirementState, mismatches: list[str]) -> None:
    """A verified backup no longer verifies: record how, alert, and make the deletion gate ask again.

    The retirement never deletes against a backup no approver saw: the next backup gets a new gate key,
    and an approval of the old manifest no longer counts (:meth:`RetirementState.approval`).
    """
    tampered = {
        "location": state.backup_location,
        "manifest_sha256": state.backup_manifest_sha256,
        "mismatches": mismatches,
        "found_at": utcnow().isoformat(),
    }
    state.tampered_backups.append(tampered)
    state.gate_attempts[GATE_DELETION] = state.gate_attempts.get(GATE_DELETION, 1) + 1  # a new pause key
    state.gate_manifest = None
    state.pending_gate = None
    location = state.backup_location
    state.backup_location = state.backup_manifest_sha256 = None  # the next backup phase takes a fresh one
    commit(svc, state, "notice", "backup-tampered", detail=tampered)
    announce(
        svc,
        state,
        NotificationStatus.ALERT,
        f"The backup at {location} no longer verifies ({'; '.join(mismatches[:5])}). "
        "A fresh backup is being taken; the deletion will be asked again. Nothing was deleted.",
    )


def backup_still_approved(svc: Services, state: RetirementState) -> bool:
    """Right after the deletion gate: the approved backup still verifies (else the tamper is recorded)."""
    if state.backup_location is None:
        return False
    report = svc.backups.verify(state.backup_location)
    if report.ok:
        return True
    tampered_backup(svc, state, report.mismatches)
    return False


def backup(
    svc: Services,
    state: RetirementState,
    now: datetime,
    progress: Callable[[int, int | None], None] | None = None,
) -> str:
    """Phase 6: export everything the platform lets out, verify it by re-reading. Returns the location."""
    if state.backup_location:
        report = svc.backups.verify(state.backup_location)
        if report.ok:
            return state.backup_location
        tampered_backup(svc, state, report.mismatches)
    registry = svc.platform.registry
    caps = registry.capabilities
    record(svc, state, "intent", "backup", detail={"exports": caps.exports, "not_exportable": caps.not_exportable})
    try:
        items = registry.export(state.ref)
    except NotFoundError as exc:
        raise vanished(svc, state, "backup", exc) from exc
    dossier = state.dossier.model_dump(mode="json") if state.dossier else None
    checked = [time.monotonic()]

    def step(done: int, total: int | None) -> None:
        if time.monotonic() - checked[0] >= 2:  # a cancel stops the backup between chunks
            checked[0] = time.monotonic()
            svc.states.check_running(state, "the backup")
        if progress is not None:
            progress(done, total)

    manifest = svc.backups.write(
        state.ref,
        items,
        retain_until=now + timedelta(days=state.request.backup_retention_days),
        dossier=dossier,
        captures=caps.exports,
        not_captured=caps.not_exportable,
        platform_metadata=state.dossier.metadata if state.dossier else None,
        progress=step,
    )
    report = svc.backups.verify(manifest.location)
    if not report.ok:
        raise BackupVerifyError(manifest.location, report.mismatches)
    state.backup_location = manifest.location
    state.backup_manifest_sha256 = manifest_digest(manifest.model_dump_json())
    commit(
        svc,
        state,
        "outcome",
        "backup",
        detail={
            "location": manifest.location,
            "files": len(manifest.files),
            "bytes": manifest.total_bytes,
            "manifest_sha256": state.backup_manifest_sha256,
            "verified_bytes": report.bytes_checked,
        },
    )
    return manifest.location


def restore_drill(svc: Services, state: RetirementState) -> dict[str, Any]:
    """Restore the verified backup into a scratch place and prove it (once per backup); recorded in the ledger.

    Every file comes back from the store and is compared with the manifest where it landed; on the local
    platform the restored files also become a scratch version that must answer a golden request through
    the gateway, then are removed. A failed drill blocks the delete (:func:`deletion_checks`).
    """
    from retirement.backup.drill import run_drill
    from retirement.platforms.local import LocalRegistry

    if state.backup_location is None:
        raise SafetyError("no backup to drill")
    if state.drill is not None and state.drill.get("manifest_sha256") == state.backup_manifest_sha256:
        return state.drill
    registry = svc.platform.registry
    scratch = svc.settings.home.expanduser() / "drills"
    local = registry if isinstance(registry, LocalRegistry) else None
    scratch_ref = (
        ModelRef(platform=state.ref.platform, name=f"{state.ref.name}-restore-drill", version=state.ref.version)
        if local is not None and state.ref.version
        else None
    )

    def probe(ref: ModelRef) -> str | None:
        import httpx

        from retirement.gateway.app import predict_outputs

        url = f"{svc.settings.gateway_url}/v1/models/{ref}/predict"
        try:
            answer = httpx.post(url, json={"inputs": [1, 2, 3]}, timeout=30)
        except httpx.HTTPError as exc:
            return f"the gateway did not answer ({type(exc).__name__})"
        if answer.status_code != 200:
            return f"the gateway answered {answer.status_code}"
        if answer.json().get("outputs") != predict_outputs([1, 2, 3], str(ref.version)):
            return "its answer differs from the original version's"
        return None

    def remove(ref: ModelRef) -> None:
        assert local is not None
        local.delete(ref)
        with contextlib.suppress(Exception):  # the scratch model goes when empty
            local.delete_model(ref.name)

    if scratch_ref is not None:
        # A drill killed after it imported its scratch version leaves it behind; the intent says it is ours.
        interrupted = _intent_without_outcome(svc, state, "restore-drill") is not None
        if interrupted and local is not None and local.exists(scratch_ref):
            remove(scratch_ref)
        record(svc, state, "intent", "restore-drill", detail={"scratch": str(scratch_ref)})
    report = run_drill(
        svc.backups,  # type: ignore[arg-type]
        state.backup_location,
        scratch,
        importer=local,
        scratch_ref=scratch_ref,
        probe=probe if local is not None else None,
        remove=remove if local is not None else None,
    )
    report.manifest_sha256 = state.backup_manifest_sha256
    state.drill = report.model_dump()
    commit(svc, state, "outcome", "restore-drill", detail={**state.drill, "ok": report.ok})
    if not report.ok:
        announce(
            svc,
            state,
            NotificationStatus.ALERT,
            f"The restore drill of {state.backup_location} failed: {'; '.join(report.problems[:5])}. "
            "The delete is blocked.",
        )
    return state.drill


def drill_summary(state: RetirementState) -> str:
    """The drill's result in one line, for the deletion gate and the report."""
    drill = state.drill
    if drill is None or drill.get("manifest_sha256") != state.backup_manifest_sha256:
        return "restore drill: not run for this backup"
    if drill.get("problems"):
        return "restore drill FAILED: " + "; ".join(drill["problems"][:5])
    served = f"; {drill['served']}" if drill.get("served") else ""
    restored = f"{drill['files']} files, {drill['bytes']} bytes restored and equal to the manifest"
    return f"restore drill passed: {restored}{served}"


# --- gates ----------------------------------------------------------------------------------------


def check_answer(
    state: RetirementState,
    gate: str,
    *,
    decision: str,
    approver: str,
    comment: str = "",
    typed_reference: str | None = None,
    expected_reference: str | None = None,
) -> Approval:
    """Validate a gate answer (again, whatever the form enforced) and record it on the state.

    Raises:
        ApprovalError: the approver is not allowed, is the requester at the deletion gate, or the
            typed reference does not match exactly.
    """
    request = state.request
    if approver not in request.approvers:
        raise ApprovalError(f"{approver!r} is not an approver of this retirement (allowed: {request.approvers})")
    if gate == GATE_DELETION and decision == "approve":
        if approver == request.requester:
            raise ApprovalError(f"the deletion must be approved by someone other than the requester {approver!r}")
        if typed_reference != expected_reference:
            raise ApprovalError(
                f"typed reference {typed_reference!r} does not match {expected_reference!r} exactly; nothing deleted"
            )
    approval = Approval(
        gate=gate, decision="approve" if decision == "approve" else "reject", approver=approver, comment=comment
    )
    if gate == GATE_DELETION:  # the approval says which backup it approved
        approval.backup_manifest_sha256 = state.gate_manifest or state.backup_manifest_sha256
        approval.backup_location = state.backup_location
    state.approvals.append(approval)
    state.pending_gate = None
    state.gate_deadline = None
    return approval


def require_approval(state: RetirementState, gate: str) -> Approval:
    """The approval of ``gate`` that a destructive step needs (invariant 1).

    Raises:
        ApprovalError: no approval, a rejection, or (deletion) an approver equal to the requester.
    """
    approval = state.approval(gate)
    if approval is None:
        raise ApprovalError(f"gate {gate} has no recorded decision")
    if approval.decision != "approve":
        raise ApprovalError(f"gate {gate} was rejected by {approval.approver}")
    if approval.approver not in state.request.approvers:
        raise ApprovalError(f"gate {gate} was answered by {approval.approver!r}, who is not an approver")
    if gate == GATE_DELETION and approval.approver == state.request.requester:
        raise ApprovalError("the deletion gate was approved by the requester")
    if gate == GATE_DELETION and approval.backup_manifest_sha256 != state.backup_manifest_sha256:
        raise ApprovalError(
            f"the deletion was approved for backup manifest {approval.backup_manifest_sha256}, "
            f"not for the backup now recorded ({state.backup_manifest_sha256})"
        )
    return approval


def deletion_brief(svc: Services, state: RetirementState) -> list[str]:
    """What is true now, for the deletion gate (the dossier was written before the cutover)."""
    lines = ["### Now", ""]
    serving = svc.platform.serving
    replacement = state.request.replacement_ref
    if serving is not None and replacement is not None and not uses_manual_serving(svc, state.request):
        lines.append(f"- production serves **{serving.production(replacement.model)}**")
    if state.traffic:
        last = state.traffic[-1]
        lines.append(
            f"- traffic to {state.ref} from {last.start:%Y-%m-%d %H:%M:%S} to {last.end:%H:%M:%S} UTC: "
            f"**{last.verdict.value}** ({last.reason})"
        )
    blockers = svc.platform.registry.deletion_blockers(state.ref)
    lines.append("- deletion blockers: " + ("; ".join(b.message for b in blockers) if blockers else "none"))
    caps = svc.platform.registry.capabilities
    if caps.not_exportable:
        lines.append(f"- **the backup does not hold: {', '.join(caps.not_exportable)}**: deleting loses it for good")
    if caps.cascade:
        lines.append(f"- the delete also removes: {', '.join(caps.cascade)}")
    return lines


# --- phase 7: delete ------------------------------------------------------------------------------


def deletion_checks(svc: Services, state: RetirementState, now: datetime) -> list[str]:
    """Every safety invariant a delete needs, checked now; returns the failures (empty = may delete)."""
    failures: list[str] = []
    try:
        require_approval(state, GATE_DELETION)
    except ApprovalError as exc:
        failures.append(str(exc))
    if not state.backup_location:
        failures.append("no backup was taken")
    else:
        verified = svc.backups.verify(state.backup_location)
        if not verified.ok:
            failures.append("backup does not verify: " + "; ".join(verified.mismatches))
        manifests = [m for m in svc.backups.list(state.ref) if m.location == state.backup_location]
        if not manifests or manifests[0].source != state.ref:
            failures.append(f"the backup at {state.backup_location} is not a backup of {state.ref}")
    summary = drill_summary(state)
    if not summary.startswith("restore drill passed"):
        failures.append(summary)
    if state.window_start is None:
        failures.append("the traffic window never opened")
    else:
        # From the start of the window up to now: the window, the pending delete, and the gap since.
        report = observe(svc.traffic, state.ref, state.window_start, now)
        state.traffic.append(report)
        if report.verdict is not TrafficVerdict.IDLE:
            failures.append(
                f"traffic since {state.window_start.isoformat()} is {report.verdict.value}: {report.reason}"
            )
    failures.extend(_standing(svc, state.ref))  # invariant 4: no dependent left, re-scanned right before the delete
    svc.states.save(state)
    return failures


def soft_delete(svc: Services, state: RetirementState, now: datetime) -> str:
    """The reversible step before the delete, where the platform has one."""
    caps = svc.platform.registry.capabilities
    if not state.request.soft_delete or caps.soft_delete is None:
        return "no soft step"
    if state.soft_deleted_at is not None:
        return "soft step already taken"
    require_approval(state, GATE_DELETION)
    svc.states.fence(state, "soft-delete", detail={"how": caps.soft_delete})
    svc.platform.registry.set_active(state.ref, False)

    def deactivated(stored: RetirementState) -> None:
        stored.soft_deleted_at = now

    svc.states.settle(state, "soft-delete", deactivated, detail={"how": caps.soft_delete})
    if state.stopped:  # cancelled during the call: `retire cancel` reactivates it
        raise RetirementStoppedError(state.id, state.status, state.status_reason, "the pending delete")
    announce(
        svc,
        state,
        NotificationStatus.SCHEDULED,
        f"*Soft delete*: {state.ref} {caps.soft_delete}d. It is deleted after "
        f"{duration(state.request.pending_delete_hours)} unless a request reaches it or someone cancels.",
        next_step=f"to keep it: `retire cancel {state.id}` (reactivates it)",
        next_at=now + timedelta(hours=state.request.pending_delete_hours),
    )
    return f"{caps.soft_delete}d {state.ref}; delete pending {state.request.pending_delete_hours:g} h"


def undo_soft_delete(svc: Services, state: RetirementState) -> None:
    """Undo the soft step (a cancelled pending delete or a tripwire)."""
    if state.soft_deleted_at is None or state.receipt is not None:
        return
    svc.states.fence(state, "reactivate", undo=True)
    svc.platform.registry.set_active(state.ref, True)

    def reactivated(stored: RetirementState) -> None:
        stored.soft_deleted_at = None

    svc.states.settle(state, "reactivate", reactivated)


def delete(svc: Services, state: RetirementState, now: datetime) -> DeletionReceipt:
    """Phase 7: delete the old model once every invariant holds; verify it is gone.

    Raises:
        SafetyError: a check failed; nothing was deleted.
    """
    if state.receipt is not None:
        return state.receipt
    registry = svc.platform.registry
    interrupted = _intent_without_outcome(svc, state, "delete") is not None
    if state.delete_requested_at is not None:
        return _confirm_pending_delete(svc, state, now)
    if not interrupted and not registry.exists(state.ref):
        receipt = DeletionReceipt(
            reference=state.ref, verified_gone=True, removed=[f"{state.ref} (deleted outside this retirement)"]
        )
        record(svc, state, "notice", "deleted-elsewhere", detail={"backup": state.backup_location})
    elif interrupted and not registry.exists(state.ref):
        receipt = DeletionReceipt(
            reference=state.ref, verified_gone=True, removed=[f"{state.ref} (delete completed before an interruption)"]
        )
    else:
        failures = deletion_checks(svc, state, now)
        if failures:
            record(svc, state, "decision", "delete-refused", detail={"failures": failures})
            if state.soft_deleted_at is not None:
                undo_soft_delete(svc, state)
            raise SafetyError("delete refused: " + " | ".join(failures))
        # Re-read under the lock right before the delete: a cancel or halt that landed a moment ago wins.
        svc.states.fence(state, "delete", detail={"backup": state.backup_location})
        try:
            receipt = registry.delete(state.ref)
        except NotFoundError:
            receipt = DeletionReceipt(reference=state.ref, verified_gone=not registry.exists(state.ref))
        except DeletionBlockedError as exc:
            svc.states.settle(state, "delete", lambda _: None, detail={"refused_by_platform": exc.blockers})
            raise SafetyError(f"the platform refused the delete: {exc}") from exc
    receipt.backup_location = state.backup_location
    if registry.exists(state.ref):  # asynchronous deletes: accepted now, gone later; confirmed, never guessed
        accepted = now

        def requested(stored: RetirementState) -> None:
            stored.delete_requested_at = accepted

        svc.states.settle(state, "delete", requested, detail={"accepted": True, "still_listed": True})
        raise DeletePendingError(
            f"the platform accepted the delete of {state.ref}; it is still listed: re-checked shortly",
            now + timedelta(minutes=1),
        )
    receipt.verified_gone = True

    def deleted(stored: RetirementState) -> None:
        stored.receipt = receipt

    svc.states.settle(state, "delete", deleted, detail=receipt.model_dump(mode="json"))
    announce(
        svc,
        state,
        NotificationStatus.DONE,
        f"*Deleted*: {state.ref} is gone from {state.ref.platform} (verified not found). Backup: "
        f"`{state.backup_location}` (manifest sha256 `{state.backup_manifest_sha256}`), kept "
        f"{state.request.backup_retention_days} days.",
        next_step=f"to bring it back: `retire backup restore {state.backup_location}`",
    )
    record(
        svc,
        state,
        "notice",
        "changelog",
        actor=state.request.requester,
        detail={
            "deleted": str(state.ref),
            "reason": state.request.reason,
            "backup": state.backup_location,
            "retain_days": state.request.backup_retention_days,
        },
    )
    return receipt


def _confirm_pending_delete(svc: Services, state: RetirementState, now: datetime) -> DeletionReceipt:
    """A delete the platform accepted earlier: gone now (receipt), still listed (re-check later), or too long."""
    assert state.delete_requested_at is not None
    registry = svc.platform.registry
    waited = now - state.delete_requested_at
    if registry.exists(state.ref):
        budget = timedelta(hours=state.request.delete_confirm_hours)
        if waited > budget:
            raise SafetyError(
                f"the platform accepted the delete of {state.ref} {waited} ago and still lists it (budget "
                f"{state.request.delete_confirm_hours:g} h): check the platform; "
                f"the backup is at {state.backup_location}"
            )
        delay = min(timedelta(minutes=30), max(timedelta(minutes=1), waited))  # back off: 1, 2, 4 ... 30 min
        raise DeletePendingError(f"{state.ref} is still listed {waited} after the delete was accepted", now + delay)
    receipt = DeletionReceipt(
        reference=state.ref,
        verified_gone=True,
        removed=[f"{state.ref} (asynchronous delete, gone after {waited})"],
        backup_location=state.backup_location,
    )

    def gone(stored: RetirementState) -> None:
        stored.receipt = receipt

    svc.states.settle(state, "delete-confirmed", gone, detail=receipt.model_dump(mode="json"))
    record(
        svc,
        state,
        "notice",
        "changelog",
        actor=state.request.requester,
        detail={"deleted": str(state.ref), "reason": state.request.reason, "backup": state.backup_location},
    )
    return receipt


def vanished(svc: Services, state: RetirementState, doing: str, exc: Exception) -> SafetyError:
    """Something the phase needs is gone: say whether the model itself was deleted by someone else."""
    if not svc.platform.registry.exists(state.ref):
        reason = f"{state.ref} was deleted outside this retirement before the {doing}; nothing left to back up"
        record(svc, state, "notice", "deleted-elsewhere", detail={"during": doing, "error": str(exc)})
    else:
        reason = f"something the {doing} needs vanished on {state.ref.platform}: {exc}"
        record(svc, state, "notice", "vanished", detail={"during": doing, "error": str(exc)})
    return SafetyError(reason)


# --- phase 8: monitor -----------------------------------------------------------------------------


def monitor_checks_total(request: RetirementRequest) -> int:
    """How many checks the monitoring week makes."""
    return math.ceil(request.monitor_days * 24 / request.monitor_interval_hours) if request.monitor_days else 0


def monitor_check(svc: Services, state: RetirementState, now: datetime) -> list[str]:
    """Phase 8: one check of requests still naming the old model and of the replacement's errors."""
    assert state.receipt is not None
    last = state.monitor_checks[-1]["at"] if state.monitor_checks else state.receipt.deleted_at.isoformat()
    start = datetime.fromisoformat(str(last))
    alerts: list[str] = []
    old = observe(svc.traffic, state.ref, start, now)
    stale = sum(s.requests or 0 for s in old.samples)
    if stale:
        restore = f"`retire backup restore {state.backup_location}`" if state.backup_location else "no backup"
        alerts.append(f"{stale} requests still name {state.ref} (answered 404/410); remedy: {restore}")
    new = state.request.replacement_ref
    if new is not None:
        rep = observe(svc.traffic, new, start, now)
        requests = sum(s.requests or 0 for s in rep.samples)
        errors = sum(s.errors or 0 for s in rep.samples)
        if requests and errors / requests > state.request.max_error_rate:
            alerts.append(f"{new} error rate {errors / requests:.2%} over {requests} requests")
    state.monitor_checks.append({"at": now.isoformat(), "stale_requests": stale, "alerts": alerts})
    commit(svc, state, "outcome", "monitor-check", detail={"check": len(state.monitor_checks), "alerts": alerts})
    if alerts:
        announce(svc, state, NotificationStatus.ALERT, "Monitoring: " + "; ".join(alerts))
    return alerts


def final_report(svc: Services, state: RetirementState) -> str:
    """The closing report (markdown): timeline, approvals, backup, receipt, ledger hash."""
    count, last_hash = svc.ledger.verify()
    lines = [f"# Retirement of {state.ref} on {state.ref.platform}", "", f"Reason: {state.request.reason}", ""]
    lines += ["## Timeline", "", "| phase | started | ended | outcome |", "|---|---|---|---|"]
    for rec in state.history:
        ended = rec.ended_at.isoformat(timespec="seconds") if rec.ended_at else ""
        lines.append(
            f"| {rec.phase.value} | {rec.started_at.isoformat(timespec='seconds')} | {ended} | {rec.outcome} |"
        )
    lines += ["", "## Approvals", ""]
    lines += [
        f"- {a.gate}: **{a.decision}** by {a.approver} at {a.at.isoformat(timespec='seconds')}"
        + (f" ({a.comment})" if a.comment else "")
        for a in state.approvals
    ]
    lines += [
        "",
        "## Backup",
        "",
        f"- location: `{state.backup_location}`",
        f"- manifest sha256: `{state.backup_manifest_sha256}`",
        f"- kept {state.request.backup_retention_days} days",
    ]
    if state.receipt:
        lines += [
            "",
            "## Deletion receipt",
            "",
            f"- deleted at {state.receipt.deleted_at.isoformat()}",
            f"- verified gone: {state.receipt.verified_gone}",
        ]
        lines += [f"- removed: {item}" for item in state.receipt.removed[:20]]
    alerts = 0
    for check in state.monitor_checks:
        found = check.get("alerts")
        alerts += len(found) if isinstance(found, list) else 0
    lines += ["", "## Monitoring", "", f"- {len(state.monitor_checks)} checks, {alerts} alerts"]
    lines += ["", "## Ledger", "", f"- {count} entries, chain verified; last hash `{last_hash}`"]
    return "\n".join(lines)


# --- cancel ---------------------------------------------------------------------------------------


def compensate(svc: Services, state: RetirementState) -> list[str]:
    """After a cancel, once no run works on the retirement: leave nothing half done. Returns what was done.

    A delete already under way when the cancel landed is recorded as it turned out (the world is checked);
    a soft delete is undone; a cutover that had not finished its bake is rolled back.
    """
    svc.states.refresh(state)
    done: list[str] = []
    registry = svc.platform.registry
    if state.receipt is None and _intent_without_outcome(svc, state, "delete") is not None:
        if not registry.exists(state.ref):
            receipt = DeletionReceipt(
                reference=state.ref,
                verified_gone=True,
                removed=[f"{state.ref} (a delete under way when the cancel landed)"],
                backup_location=state.backup_location,
            )

            def gone(stored: RetirementState) -> None:
                stored.receipt = receipt

            svc.states.settle(state, "delete", gone, detail=receipt.model_dump(mode="json"))
            done.append(
                f"{state.ref} was already being deleted when the cancel landed: it is gone; "
                f"restore with `retire backup restore {state.backup_location}`"
            )
            return done
        svc.states.settle(state, "delete", lambda _: None, detail={"interrupted": "cancelled before the delete took"})
    if state.receipt is not None:
        return [
            f"{state.ref} was deleted before the cancel; restore with `retire backup restore {state.backup_location}`"
        ]
    soft = _intent_without_outcome(svc, state, "soft-delete")
    if soft is not None:
        svc.states.settle(
            state, "soft-delete", lambda s: setattr(s, "soft_deleted_at", utcnow()), detail={"interrupted": "cancelled"}
        )
    if state.soft_deleted_at is not None:
        undo_soft_delete(svc, state)
        done.append(f"{state.ref} reactivated (the soft delete was undone)")
    cut = _intent_without_outcome(svc, state, "cutover")
    if cut is not None and not state.rolled_back:
        before = ModelRef.model_validate(cut["from"]) if cut.get("from") else None

        def switched(stored: RetirementState) -> None:
            stored.previous_production = before
            stored.cutover_at = stored.cutover_at or utcnow()

        svc.states.settle(state, "cutover", switched, detail={"interrupted": "cancelled during the switch"})
    if state.cutover_at is not None and state.window_start is None and not state.rolled_back:
        if state.previous_production is not None:
            rollback(svc, state, "retirement cancelled before the bake finished")
            done.append(
                f"production rolled back to {state.previous_production} (the cutover had not finished its bake)"
            )
    else:
        complete_interrupted_rollback(svc, state)
    return done
