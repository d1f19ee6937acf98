"""Phase 3: cutover at the low-traffic window, bake, rollback on breach."""

from __future__ import annotations

from datetime import datetime

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from retirement import protocol
from retirement.models import RetirementRequest, utcnow
from tasks._context import load, services_for


@task(cache_policy=NO_CACHE, name="manual-serving")
def manual_serving(request: RetirementRequest) -> bool:
    """True when a person switches production (the platform has no API for it, or the request says so)."""
    return protocol.uses_manual_serving(services_for(request), request)


@task(cache_policy=NO_CACHE, name="cutover-time")
def cutover_time(request: RetirementRequest) -> datetime:
    """When the cutover may happen: now, or the start of the next low-traffic window."""
    return protocol.next_cutover_time(request, utcnow())


@task(cache_policy=NO_CACHE, name="cutover")
def cutover(request: RetirementRequest, retirement_id: str) -> str:
    """Switch production to the replacement (finishing an interrupted rollback first, if any)."""
    svc, state = load(request, retirement_id)
    if protocol.complete_interrupted_rollback(svc, state):
        raise protocol.SafetyError(f"an interrupted rollback to {state.previous_production} was completed")
    outcome = protocol.cutover(svc, state, utcnow())
    get_run_logger().info("cutover: %s", outcome)
    return outcome


@task(cache_policy=NO_CACHE, name="bake")
def bake(request: RetirementRequest, retirement_id: str) -> str:
    """Watch the replacement; a breach rolls back and halts."""
    svc, state = load(request, retirement_id)
    try:
        return protocol.bake(svc, state)
    finally:
        if state.bake:
            create_table_artifact(state.bake, key=f"{retirement_id}-bake", description=f"Bake of {request.replacement}")


@task(cache_policy=NO_CACHE, name="open-traffic-window")
def open_window(request: RetirementRequest, retirement_id: str) -> datetime:
    """Start the traffic window; returns when it ends."""
    svc, state = load(request, retirement_id)
    return protocol.open_window(svc, state, utcnow())
