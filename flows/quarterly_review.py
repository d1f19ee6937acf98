"""The quarterly retention review: list, evaluate, publish, save, notify; optionally open retirements."""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import flow

from retirement.review import ReviewReport
from tasks.review import (
    evaluate,
    list_platform,
    load_retention_policy,
    post_digest,
    publish_report,
    save_report,
    start_retirements,
)


@flow(name="quarterly-review", log_prints=False)
def quarterly_review(
    policy_path: str = "deployments/retention-policy.yaml",
    platforms: list[str] = ["local"],  # noqa: B006 - Prefect needs a literal default for the UI form; never mutated
    open_retirements: bool = False,
    requester: str = "retention-review",
    approvers: list[str] = ["ml-platform-leads"],  # noqa: B006
    as_of: datetime | None = None,
) -> ReviewReport:
    """Review every model version against the retention policy and explain each decision.

    Args:
        policy_path: Retention policy YAML (rules with unique priorities; the first matching rule decides).
        platforms: Platforms whose versions are reviewed, e.g. local, mlflow, replicate.
        open_retirements: Start one retire-model run per candidate; each waits at its first
            approval gate. Running the review again in the same quarter opens no duplicates.
        requester: Requester recorded on the retirements the review opens.
        approvers: Who may approve those retirements; at least one must differ from the requester.
        as_of: Review as of this time (UTC); empty = now. Ages and the quarter id come from it.
    """
    now = as_of or datetime.now(UTC)
    policy = load_retention_policy(policy_path)
    listing = {name: list_platform.submit(name) for name in platforms}  # platforms are listed concurrently
    catalogs = {name: future.result() for name, future in listing.items()}
    report = evaluate(catalogs, policy, now)
    publish_report(report)
    save_report(report)
    post_digest(report)
    if open_retirements:
        start_retirements(report, requester, approvers)
    return report
