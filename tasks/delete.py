"""Phase 7: the soft step, then the delete once every invariant holds."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from retirement import protocol
from retirement.models import DeletionReceipt, RetirementRequest, utcnow
from tasks._context import load


@task(cache_policy=NO_CACHE, name="soft-delete")
def soft_delete(request: RetirementRequest, retirement_id: str) -> str:
    """Deactivate or deprecate before the delete, where the platform can."""
    svc, state = load(request, retirement_id)
    outcome = protocol.soft_delete(svc, state, utcnow())
    get_run_logger().info("soft step: %s", outcome)
    return outcome


@task(cache_policy=NO_CACHE, name="delete")
def delete(request: RetirementRequest, retirement_id: str) -> DeletionReceipt:
    """Re-verify backup, traffic, approval and dependents; delete; confirm it is gone."""
    svc, state = load(request, retirement_id)
    receipt = protocol.delete(svc, state, utcnow())
    get_run_logger().info("deleted %s (verified gone: %s)", state.ref, receipt.verified_gone)
    return receipt
