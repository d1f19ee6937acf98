"""Phase 5: zero requests over the whole window, from every source."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from retirement import protocol
from retirement.models import RetirementRequest, TrafficReport, utcnow
from tasks._context import load


@task(cache_policy=NO_CACHE, name="verify-idle")
def verify_idle(request: RetirementRequest, retirement_id: str) -> TrafficReport:
    """The traffic verdict over the window; anything but IDLE halts the retirement."""
    svc, state = load(request, retirement_id)
    try:
        report = protocol.verify_idle(svc, state, utcnow())
    finally:
        state = svc.states.load(retirement_id)
        publish_traffic(retirement_id, [("verdict", r) for r in state.traffic] + protocol.traffic_movement(svc, state))
    get_run_logger().info("verify-idle: %s (%s)", report.verdict.value, report.reason)
    return report


def publish_traffic(retirement_id: str, reports: list[tuple[str, TrafficReport]]) -> None:
    """Traffic samples as a table in the UI: the verdicts taken, and the move from old to new."""
    rows = [
        {
            "what": label,
            "model": str(s.reference),
            "source": s.source,
            "start": s.start.isoformat(timespec="seconds"),
            "end": s.end.isoformat(timespec="seconds"),
            "requests": s.requests,
            "errors": s.errors,
            "coverage": round(s.coverage, 3),
            "verdict": s.verdict.value,
            "detail": s.detail,
        }
        for label, report in reports
        for s in report.samples
    ]
    if rows:
        create_table_artifact(rows, key=f"{retirement_id}-traffic", description="Traffic samples")
