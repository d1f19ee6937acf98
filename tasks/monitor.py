"""Phase 8: the week of monitoring after the delete."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from retirement import protocol
from retirement.models import RetirementRequest, utcnow
from tasks._context import load


@task(cache_policy=NO_CACHE, name="monitor-check")
def monitor_check(request: RetirementRequest, retirement_id: str) -> int:
    """One check; returns how many checks remain."""
    svc, state = load(request, retirement_id)
    alerts = protocol.monitor_check(svc, state, utcnow())
    remaining = protocol.monitor_checks_total(request) - len(state.monitor_checks)
    get_run_logger().info("monitor check %d: %s", len(state.monitor_checks), "; ".join(alerts) or "no alerts")
    return max(0, remaining)
