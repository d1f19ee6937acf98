"""Phase 2: the replacement in staging."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from retirement import protocol
from retirement.models import RetirementRequest
from tasks._context import load


@task(cache_policy=NO_CACHE, name="stage-replacement")
def stage(request: RetirementRequest, retirement_id: str) -> str:
    """Deploy the replacement to staging and smoke-test it."""
    svc, state = load(request, retirement_id)
    outcome = protocol.stage(svc, state)
    get_run_logger().info("staging: %s", outcome)
    return outcome
