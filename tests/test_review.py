"""Quarterly review: the report, its store and diff, the renderers, and `retire review` on the local platform."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from retirement.cli import main
from retirement.errors import InputError
from retirement.models import CatalogEntry, ModelRef, TrafficSample, TrafficVerdict
from retirement.platforms.base import Platform
from retirement.platforms.local import LocalRegistry
from retirement.policy import Policy, load_policy_text
from retirement.review import (
    ReviewReport,
    ReviewStore,
    quarter_of,
    render_digest,
    render_markdown,
    render_table,
    retirement_requests,
    run_review,
    traffic_for,
)
from retirement.settings import RetireSettings
from tests.test_policy import EXPECTED, NOW, entry, seeded_entries


class FakeCatalog:
    """An in-memory catalogue; counts how often it was listed."""

    def __init__(self, entries: Iterable[CatalogEntry]) -> None:
        self.entries = list(entries)
        self.listed = 0

    def list_versions(self) -> Iterator[CatalogEntry]:
        self.listed += 1
        yield from self.entries


def review(entries: Iterable[CatalogEntry], previous: ReviewReport | None = None, days: int = 0) -> ReviewReport:
    return run_review(
        {"local": FakeCatalog(entries)}, Policy.default(), now=NOW + timedelta(days=days), previous=previous
    )


def test_report_lists_candidates_and_protected_with_their_rules_and_totals() -> None:
    catalog = FakeCatalog(seeded_entries())
    report = run_review({"local": catalog}, Policy.default(), now=NOW)

    assert catalog.listed == 1
    assert report.quarter == "2026-Q4"
    assert {str(d.reference): (d.outcome, d.rule) for d in report.decisions} == EXPECTED
    assert [str(d.reference) for d in report.candidates] == ["churn@11", "churn@13", "churn@2", "churn@7", "fraud@1"]
    t = report.totals
    assert (t.versions, t.candidates, t.protected, t.kept) == (16, 5, 8, 3)
    # churn@2 200 MB + churn@7 7 MB + churn@11 11 MB + fraud@1 1 MB; churn@13 has no known size
    assert t.bytes_freed == 219_000_000
    assert t.unknown_sizes == 1
    assert t.by_rule["#60 failed_experiments"] == 2
    assert report.diff is None


def test_several_platforms_are_reviewed_together() -> None:
    other = [entry("vision@1", platform="mlflow", stage="failed", created_days=90, size=5)]
    report = run_review(
        {"local": FakeCatalog(seeded_entries()), "mlflow": FakeCatalog(other)}, Policy.default(), now=NOW
    )

    assert report.platforms == ["local", "mlflow"]
    decided = {(d.reference.platform, str(d.reference)): d.rule for d in report.candidates}
    assert decided[("mlflow", "vision@1")] == "#60 failed_experiments"
    assert report.totals.versions == 17


def test_naive_time_is_refused() -> None:
    with pytest.raises(InputError, match="now"):
        run_review({"local": FakeCatalog([])}, Policy.default(), now=NOW.replace(tzinfo=None))


def changed_catalogue() -> list[CatalogEntry]:
    """Later: churn@2 deleted, churn@7 now tagged keep; the rest as before."""
    entries = {str(e.reference): e for e in seeded_entries()}
    del entries["churn@2"]
    entries["churn@7"] = entries["churn@7"].model_copy(update={"tags": {"keep": "yes"}})
    return list(entries.values())


def test_second_review_shows_new_resolved_and_pending() -> None:
    first = review(seeded_entries())
    # 40 days on: churn@4 was superseded 100 days ago, churn@8 rejected 50, churn@12 failed 45
    second = review(changed_catalogue(), previous=first, days=40)

    assert second.quarter == "2026-Q4"
    assert second.diff is not None
    assert second.diff.previous_quarter == "2026-Q4"
    assert second.diff.new == ["local:churn@12", "local:churn@4", "local:churn@8"]
    assert {r.key: r.why for r in second.diff.resolved} == {
        "local:churn@2": "gone",
        "local:churn@7": "protected by #10 protect_tagged: tagged 'keep'",
    }
    assert second.diff.pending == ["local:churn@11", "local:churn@13", "local:fraud@1"]


def test_store_keeps_one_report_per_quarter_and_finds_the_previous(settings: RetireSettings) -> None:
    store = ReviewStore()
    q3 = review(seeded_entries(), days=-60)
    q4 = review(seeded_entries())
    assert (q3.quarter, q4.quarter) == ("2026-Q3", "2026-Q4")

    assert store.previous("2026-Q4") is None
    path = store.save(q3)
    store.save(q4)

    assert path == settings.home / "reviews" / "2026-Q3.json"
    assert store.quarters() == ["2026-Q3", "2026-Q4"]
    assert store.load("2026-Q4") == q4
    previous = store.previous("2026-Q4")
    assert previous is not None and previous.quarter == "2026-Q3"
    assert store.previous("2027-Q1") == q4
    with pytest.raises(InputError, match="quarter"):
        store.path("2026-Q5")


def test_quarter_ids() -> None:
    assert [quarter_of(NOW.replace(month=m)) for m in (1, 3, 4, 6, 7, 10, 12)] == [
        "2026-Q1",
        "2026-Q1",
        "2026-Q2",
        "2026-Q2",
        "2026-Q3",
        "2026-Q4",
        "2026-Q4",
    ]


def test_renderers_show_each_candidate_with_rule_and_reason() -> None:
    report = review(changed_catalogue(), previous=review(seeded_entries()), days=40)
    markdown, table, digest = render_markdown(report), render_table(report), render_digest(report)

    for text in (markdown, table):
        assert "churn@11" in text and "#60 failed_experiments" in text
        assert "previous production version, superseded 100 days ago (more than 90)" in text
        assert "#20 protect_in_use" in text  # protected versions are listed with their rule
    assert "| churn@4 | local | archived | #40 superseded_production |" in markdown
    assert "Since 2026-Q4: 3 new, 2 resolved, 3 still pending." in markdown
    assert digest.splitlines()[0] == "*Retention review 2026-Q4*"
    assert "6 candidates for retirement (49.6 MiB to free, 3 of unknown size)" in digest
    assert len(digest.splitlines()) <= 10


def test_retirement_requests_have_one_key_per_candidate_and_a_reason() -> None:
    report = review(seeded_entries())
    requests = retirement_requests(report, requester="retention-review", approvers=["ml-leads"])

    assert [key for key, _ in requests] == [
        "review-2026-Q4-local-churn@11",
        "review-2026-Q4-local-churn@13",
        "review-2026-Q4-local-churn@2",
        "review-2026-Q4-local-churn@7",
        "review-2026-Q4-local-fraud@1",
    ]
    first = requests[0][1]
    assert first.model == "churn@11" and first.replacement is None
    assert first.reason.startswith("Retention review 2026-Q4: #60 failed_experiments: failed experiment")


def test_retirement_requests_refuse_approvers_who_are_only_the_requester() -> None:
    with pytest.raises(ValidationError, match="approvers: only the requester 'alice' is listed"):
        retirement_requests(review(seeded_entries()), requester="alice", approvers=["alice"])


# --- the CLI over the real local platform ----------------------------------------------------------


def seed_local(settings: RetireSettings) -> LocalRegistry:
    """churn: 1 -> 2 -> 3 -> 4 in production over time, 1 tagged keep, 2 used by a consumer; a failed experiment."""
    registry = LocalRegistry(settings.local_dir)
    registry.create_model("churn")
    refs = [registry.add_version("churn", {"weights.bin": bytes(100 * n)}) for n in range(1, 6)]
    for ref in refs[:4]:
        registry.set_alias("churn", "production", ref.version or "")
    registry.set_tag(refs[0], "keep", "true")
    registry.add_consumer(refs[1], "billing-batch", "nightly scoring")
    registry.create_model("vision")
    registry.add_version("vision", {"weights.bin": b"x" * 7}, stage="failed")
    return registry


def write_policy(tmp_path: Path) -> Path:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "name: immediate\n"
        "rules:\n"
        "  - {priority: 1, kind: protect_tagged}\n"
        "  - {priority: 2, kind: protect_in_use}\n"
        "  - {priority: 3, kind: keep_recent_production, count: 2}\n"
        "  - {priority: 4, kind: superseded_production, min_age_days: 0}\n"
        "  - {priority: 5, kind: failed_experiments, min_age_days: 0}\n"
    )
    return policy


def test_cli_review_of_the_local_platform(
    settings: RetireSettings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = seed_local(settings)
    registry.close()

    assert main(["review", "--policy", str(write_policy(tmp_path)), "--json", "--save"]) == 0
    report = ReviewReport.model_validate_json(capsys.readouterr().out)

    decided = {str(d.reference): (d.outcome, d.rule) for d in report.decisions}
    assert decided == {
        "churn@1": ("protected", "#1 protect_tagged"),
        "churn@2": ("protected", "#2 protect_in_use"),
        "churn@3": ("protected", "#3 keep_recent_production"),
        "churn@4": ("protected", "#2 protect_in_use"),
        "churn@5": ("kept", None),
        "vision@1": ("candidate", "#5 failed_experiments"),
    }
    assert report.totals.bytes_freed == 7
    assert ReviewStore().load(report.quarter) == report

    assert main(["review", "--policy", str(write_policy(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "CANDIDATES (1)" in out and "vision@1" in out and "#5 failed_experiments" in out
    assert "PROTECTED (4)" in out and "in use: consumer 'billing-batch' depend(s) on it" in out


def test_cli_bad_policy_prints_the_problem_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    policy = tmp_path / "bad.yaml"
    policy.write_text("rules:\n  - {priority: 1, kind: superseded_production, min_age_days: -1}\n")

    assert main(["review", "--policy", str(policy)]) == 2
    err = capsys.readouterr().err
    assert "rules[0] (priority 1, superseded_production).min_age_days" in err
    assert capsys.readouterr().out == ""


def test_cli_unknown_platform_lists_the_valid_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["review", "--platform", "nowhere"]) == 2
    assert "local" in capsys.readouterr().err


class FakeTrafficSource:
    """A per-version traffic source with a fixed verdict per version."""

    name = "fake"

    def __init__(self, verdicts: dict[str, tuple[TrafficVerdict, int | None]]) -> None:
        self.verdicts = verdicts

    def sample(self, ref: ModelRef, start: datetime, end: datetime) -> TrafficSample:
        verdict, requests = self.verdicts[str(ref)]
        return TrafficSample(
            source="fake", reference=ref, start=start, end=end, requests=requests, coverage=1, verdict=verdict
        )


def test_platform_traffic_protects_active_and_unanswered_versions_only() -> None:
    source = FakeTrafficSource(
        {
            "churn@2": (TrafficVerdict.ACTIVE, 12),
            "churn@7": (TrafficVerdict.IDLE, 0),
            "churn@11": (TrafficVerdict.NODATA, None),
            "churn@13": (TrafficVerdict.ERROR, None),
            "fraud@1": (TrafficVerdict.IDLE, 0),
        }
    )
    policy = load_policy_text(
        "rules:\n"
        "  - {priority: 1, kind: protect_in_use, recent_days: 30, traffic_source: platform}\n"
        "  - {priority: 2, kind: superseded_production}\n"
        "  - {priority: 3, kind: staging_resolved}\n"
        "  - {priority: 4, kind: failed_experiments}\n"
    )
    entries = [e for e in seeded_entries() if str(e.reference) in source.verdicts]
    platforms = {"local": Platform(name="local", registry=FakeCatalog(entries), traffic=source)}

    report = run_review({"local": FakeCatalog(entries)}, policy, now=NOW, traffic=traffic_for(policy, platforms))

    decided = {str(d.reference): (d.outcome, d.reason) for d in report.decisions}
    assert decided["churn@2"] == ("protected", "in use: 12 requests in the last 30 days on 'platform'")
    assert decided["churn@7"][0] == "candidate"
    assert decided["fraud@1"][0] == "candidate"
    for unknown in ("churn@11", "churn@13"):
        assert decided[unknown][0] == "protected"
        assert "missing data is never zero" in decided[unknown][1]


def test_a_platform_without_a_traffic_source_leaves_its_versions_protected() -> None:
    policy = load_policy_text(
        "rules:\n  - {priority: 1, kind: protect_in_use, traffic_source: platform}\n"
        "  - {priority: 2, kind: superseded_production}\n"
    )
    entries = seeded_entries()
    platforms = {"local": Platform(name="local", registry=FakeCatalog(entries))}

    report = run_review({"local": FakeCatalog(entries)}, policy, now=NOW, traffic=traffic_for(policy, platforms))

    assert report.totals.candidates == 0
