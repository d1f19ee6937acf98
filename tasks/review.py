"""Tasks of the quarterly review: list a whole platform, evaluate, publish, save, notify, open retirements."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.deployments import run_deployment

from retirement.models import CatalogEntry, Notification, NotificationStatus, Phase
from retirement.platforms import get_platform
from retirement.policy import Policy, load_policy
from retirement.review import (
    ReviewReport,
    ReviewStore,
    platform_catalog,
    quarter_of,
    render_digest,
    render_markdown,
    retirement_requests,
    review_entries,
    table_rows,
    traffic_for,
)

RETIRE_DEPLOYMENT = "retire-model/retire-model"


@task(cache_policy=NO_CACHE)
def load_retention_policy(path: str) -> Policy:
    """Load and validate the policy file before anything else runs."""
    policy = load_policy(path)
    get_run_logger().info("policy %s: %s", policy.name, ", ".join(r.label for r in policy.ordered))
    return policy


@task(retries=2, retry_delay_seconds=10, cache_policy=NO_CACHE)
def list_platform(platform: str) -> list[CatalogEntry]:
    """Every version of one platform, in one task (never one task per version)."""
    adapters = get_platform(platform)
    try:
        entries = list(platform_catalog(adapters).list_versions())
    finally:
        adapters.close()
    get_run_logger().info("%s: %d versions", platform, len(entries))
    return entries


@task(cache_policy=NO_CACHE)
def evaluate(catalogs: dict[str, list[CatalogEntry]], policy: Policy, now: datetime) -> ReviewReport:
    """Apply the policy to every version and compare with the previous quarter's review."""
    platforms = {name: get_platform(name) for name in catalogs} if policy.traffic_sources() else {}
    try:
        entries = [e for listed in catalogs.values() for e in listed]
        report = review_entries(
            entries,
            policy,
            now=now,
            platforms=list(catalogs),
            previous=ReviewStore().previous(quarter_of(now)),
            traffic=traffic_for(policy, platforms),
        )
    finally:
        for adapters in platforms.values():
            adapters.close()
    t = report.totals
    get_run_logger().info(
        "%d versions: %d candidates, %d protected, %d kept", t.versions, t.candidates, t.protected, t.kept
    )
    return report


@task(cache_policy=NO_CACHE)
def publish_report(report: ReviewReport) -> None:
    """The report as a markdown artifact and the candidates as a table artifact, in the Prefect UI."""
    key = f"retention-review-{report.quarter.lower()}"
    create_markdown_artifact(
        markdown=render_markdown(report), key=key, description=f"Retention review {report.quarter}"
    )
    create_table_artifact(
        table=table_rows(report), key=f"{key}-candidates", description=f"Candidates for retirement, {report.quarter}"
    )


@task(cache_policy=NO_CACHE)
def save_report(report: ReviewReport) -> str:
    """Keep the report as this quarter's review (the next review's diff starts from it)."""
    path = ReviewStore().save(report)
    get_run_logger().info("saved %s", path)
    return str(path)


@task(cache_policy=NO_CACHE)
def post_digest(report: ReviewReport) -> bool:
    """Post the digest to Slack (console when Slack is not configured); a failure only warns."""
    logger = get_run_logger()
    digest = render_digest(report)
    try:
        from retirement.notify import get_notifier

        notifier = get_notifier()
    except ImportError:
        logger.warning("no notifier available; digest:\n%s", digest)
        return False
    event = Notification(
        retirement_id=f"review-{report.quarter}",
        reference="retention-review",
        phase=Phase.DOCUMENT,
        status=NotificationStatus.DONE,
        text=digest,
    )
    try:
        receipt = notifier.post(event)
    except Exception as exc:  # a notification failure never fails the review
        logger.warning("digest not delivered (%s: %s); digest:\n%s", type(exc).__name__, exc, digest)
        return False
    if not receipt.delivered:
        logger.warning("digest not delivered (%s); digest:\n%s", receipt.error, digest)
    return receipt.delivered


@task(cache_policy=NO_CACHE)
def start_retirements(report: ReviewReport, requester: str, approvers: list[str]) -> list[str]:
    """Start one retire-model run per candidate; each waits at its first approval gate.

    The idempotency key ``review-<quarter>-<platform>-<ref>`` makes a second review in the same
    quarter return the runs already opened instead of opening duplicates.
    """
    requests = retirement_requests(report, requester=requester, approvers=approvers)  # all valid before any run
    logger = get_run_logger()
    opened: list[str] = []
    for key, request in requests:
        parameters: dict[str, Any] = {"request": request.model_dump(mode="json")}
        run = run_deployment(
            RETIRE_DEPLOYMENT,
            parameters=parameters,
            timeout=0,
            idempotency_key=key,
            as_subflow=False,  # a retirement outlives the review; cancelling the review must not cancel it
            tags=["retention-review", report.quarter],
        )
        logger.info("%s -> flow run %s", key, getattr(run, "id", run))
        opened.append(key)
    return opened
