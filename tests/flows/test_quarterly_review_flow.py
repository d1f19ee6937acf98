"""The quarterly-review flow on a seeded fake catalogue: exact decisions, the later diff, no duplicate retirements."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from pydantic import ValidationError

import tasks.review
from flows.quarterly_review import quarterly_review
from retirement.models import RetirementRequest
from retirement.platforms.base import Platform
from retirement.review import ReviewStore
from tests.test_policy import EXAMPLE_POLICY, EXPECTED, NOW, seeded_entries
from tests.test_review import FakeCatalog, changed_catalogue


@pytest.fixture(autouse=True)
def prefect_harness(prefect_server: None) -> None:
    """The one Prefect test harness of the session, started by tests/flows/conftest.py."""


@dataclass
class FakeDeployments:
    """Stands in for run_deployment: one flow run per idempotency key, as the Prefect server does."""

    calls: list[dict[str, Any]] = field(default_factory=list)
    runs: dict[str, UUID] = field(default_factory=dict)

    def __call__(self, name: str, **kwargs: Any) -> Any:
        self.calls.append({"name": name, **kwargs})
        run_id = self.runs.setdefault(kwargs["idempotency_key"], uuid4())
        return type("FlowRun", (), {"id": run_id})()


@pytest.fixture
def catalog(monkeypatch: pytest.MonkeyPatch) -> FakeCatalog:
    fake = FakeCatalog(seeded_entries())
    monkeypatch.setattr(tasks.review, "get_platform", lambda name: Platform(name=name, registry=fake))
    return fake


@pytest.fixture
def deployments(monkeypatch: pytest.MonkeyPatch) -> FakeDeployments:
    fake = FakeDeployments()
    monkeypatch.setattr(tasks.review, "run_deployment", fake)
    return fake


def run(**kwargs: Any) -> Any:
    return quarterly_review(policy_path=str(EXAMPLE_POLICY), platforms=["local"], **kwargs)


def test_review_flow_decides_saves_publishes_and_opens_no_duplicates(
    catalog: FakeCatalog, deployments: FakeDeployments
) -> None:
    first = run(open_retirements=True, approvers=["ml-leads"], as_of=NOW)

    assert {str(d.reference): (d.outcome, d.rule) for d in first.decisions} == EXPECTED
    assert ReviewStore().load("2026-Q4") == first
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["retention-review-2026-q4", "retention-review-2026-q4-candidates"])
            )
        )
    assert {a.type for a in artifacts} == {"markdown", "table"}
    markdown = next(a for a in artifacts if a.type == "markdown")
    assert "| churn@2 | local | archived | #40 superseded_production |" in str(markdown.data)

    expected_keys = [f"review-2026-Q4-local-{ref}" for ref in ("churn@11", "churn@13", "churn@2", "churn@7", "fraud@1")]
    assert [c["idempotency_key"] for c in deployments.calls] == expected_keys
    call = deployments.calls[2]
    assert call["name"] == "retire-model/retire-model" and call["timeout"] == 0
    request = RetirementRequest.model_validate(call["parameters"]["request"])
    assert (request.model, request.requester, request.approvers) == ("churn@2", "retention-review", ["ml-leads"])

    # the same review again in the same quarter: the same keys, so the server opens nothing new
    run(open_retirements=True, approvers=["ml-leads"], as_of=NOW + timedelta(days=1))
    assert [c["idempotency_key"] for c in deployments.calls[5:]] == expected_keys
    assert len(deployments.runs) == 5


def test_next_quarter_review_shows_what_changed_and_opens_nothing_by_default(
    catalog: FakeCatalog, deployments: FakeDeployments
) -> None:
    run(as_of=NOW)
    catalog.entries = changed_catalogue()  # churn@2 deleted, churn@7 tagged keep

    later = run(as_of=NOW + timedelta(days=100))

    assert later.quarter == "2027-Q1"
    assert later.diff is not None and later.diff.previous_quarter == "2026-Q4"
    assert later.diff.new == ["local:churn@12", "local:churn@4", "local:churn@8"]
    assert {r.key: r.why for r in later.diff.resolved} == {
        "local:churn@2": "gone",
        "local:churn@7": "protected by #10 protect_tagged: tagged 'keep'",
    }
    assert later.diff.pending == ["local:churn@11", "local:churn@13", "local:fraud@1"]
    assert deployments.calls == []
    assert ReviewStore().quarters() == ["2026-Q4", "2027-Q1"]


def test_invalid_approvers_open_no_retirement(catalog: FakeCatalog, deployments: FakeDeployments) -> None:
    with pytest.raises(ValidationError, match="approvers"):
        run(open_retirements=True, requester="alice", approvers=["alice"], as_of=NOW)

    assert deployments.calls == []
