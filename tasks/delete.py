"""Phase 7: the soft step, then the delete once every invariant holds."""

from __future__ import annotations

from datetime import datetime

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from retirement import protocol
from retirement.errors import DeletePendingError
from retirement.models import RetirementRequest, utcnow
from tasks._context import load


@task(cache_policy=NO_CACHE, name="soft-delete")
def soft_delete(request: RetirementRequest, retirement_id: str) -> str:
    """Deactivate or deprecate before the delete, where the platform can."""
    svc, state = load(request, retirement_id)
    outcome = protocol.soft_delete(svc, state, utcnow())
    get_run_logger().info("soft step: %s", outcome)
    return outcome


@task(cache_policy=NO_CACHE, name="delete")
def delete(request: RetirementRequest, retirement_id: str) -> datetime | None:
    """Re-verify backup, traffic, approval and dependents; delete; confirm it is gone.

    Returns when to look again if the platform accepted the delete but still lists the model, else None.
    """
    svc, state = load(request, retirement_id)
    try:
        receipt = protocol.delete(svc, state, utcnow())
    except DeletePendingError as exc:
        get_run_logger().warning("%s; next check at %s", exc, exc.retry_at.isoformat(timespec="seconds"))
        return exc.retry_at
    get_run_logger().info("deleted %s (verified gone: %s)", state.ref, receipt.verified_gone)
    return None
