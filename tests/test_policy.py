"""Retention policy: a seeded catalogue with a known answer, rule order, batched traffic, and bad policy files."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from retirement.errors import InputError
from retirement.models import CatalogEntry, Dependent, ModelRef
from retirement.policy import (
    RULE_KINDS,
    Decision,
    Policy,
    PolicyError,
    ProtectInUse,
    SupersededProduction,
    load_policy,
    load_policy_text,
)

NOW = datetime(2026, 11, 15, 12, 0, tzinfo=UTC)
EXAMPLE_POLICY = Path(__file__).resolve().parents[1] / "deployments" / "retention-policy.yaml"


def entry(
    ref: str,
    *,
    platform: str = "local",
    created_days: float = 500,
    stage: str | None = None,
    status: str | None = None,
    status_days: float | None = None,
    aliases: Sequence[str] = (),
    tags: Mapping[str, str] | None = None,
    dependents: Sequence[Dependent] = (),
    size: int | None = None,
) -> CatalogEntry:
    """One catalogue entry, with ages in days before NOW."""
    return CatalogEntry(
        reference=ModelRef.parse(ref, platform),
        created_at=NOW - timedelta(days=created_days),
        stage=stage,
        status=status,
        status_changed_at=None if status_days is None else NOW - timedelta(days=status_days),
        aliases=list(aliases),
        tags=dict(tags or {}),
        dependents=list(dependents),
        size_bytes=size,
    )


def seeded_entries() -> list[CatalogEntry]:
    """The known-answer scenario: every rule decides at least one version; some versions no rule selects."""
    mb = 1_000_000
    return [
        entry("churn@1", stage="archived", status="superseded", status_days=400, tags={"legal-hold": "case-17"}),
        entry("churn@2", stage="archived", status="superseded", status_days=200, size=200 * mb),
        entry(
            "churn@3",
            stage="archived",
            status="superseded",
            status_days=120,
            dependents=[Dependent(kind="consumer", name="billing-batch")],
        ),
        entry("churn@4", stage="archived", status="superseded", status_days=60, size=40 * mb),
        entry("churn@5", stage="archived", status="superseded", status_days=20),
        entry("churn@6", stage="production", status="promoted", status_days=20, aliases=["production"]),
        entry("churn@7", stage="staging", status="promoted", status_days=45, size=7 * mb),
        entry("churn@8", stage="staging", status="rejected", status_days=10),
        entry("churn@9", stage="staging", status="rejected", status_days=100, tags={"keep": "true"}),
        entry("churn@10", stage="staging", status="staged", status_days=3, aliases=["staging"]),
        entry("churn@11", stage="failed", created_days=60, size=11 * mb),
        entry("churn@12", stage="experiment", status="failed", status_days=5),
        entry("churn@13", stage="experiment", status="failed", status_days=40, tags={"keep": "false"}, size=None),
        entry("fraud@1", stage="archived", status="superseded", status_days=300, size=1 * mb),
        entry("fraud@2", stage="archived", status="superseded", status_days=100),
        entry("fraud@3", stage="production", status="promoted", status_days=100),
    ]


# version -> (outcome, deciding rule) under the default policy: the known answer.
EXPECTED: dict[str, tuple[str, str | None]] = {
    "churn@1": ("protected", "#10 protect_tagged"),
    "churn@2": ("candidate", "#40 superseded_production"),
    "churn@3": ("protected", "#20 protect_in_use"),
    "churn@4": ("kept", None),
    "churn@5": ("protected", "#30 keep_recent_production"),
    "churn@6": ("protected", "#20 protect_in_use"),
    "churn@7": ("candidate", "#50 staging_resolved"),
    "churn@8": ("kept", None),
    "churn@9": ("protected", "#10 protect_tagged"),
    "churn@10": ("protected", "#20 protect_in_use"),
    "churn@11": ("candidate", "#60 failed_experiments"),
    "churn@12": ("kept", None),
    "churn@13": ("candidate", "#60 failed_experiments"),
    "fraud@1": ("candidate", "#40 superseded_production"),
    "fraud@2": ("protected", "#30 keep_recent_production"),
    "fraud@3": ("protected", "#20 protect_in_use"),
}


def outcomes(decisions: Sequence[Decision]) -> dict[str, tuple[str, str | None]]:
    return {str(d.reference): (d.outcome, d.rule) for d in decisions}


def test_default_policy_decides_the_seeded_catalogue_exactly() -> None:
    decisions = Policy.default().evaluate(seeded_entries(), now=NOW)

    assert outcomes(decisions) == EXPECTED


def test_every_decision_says_why_in_words() -> None:
    reasons = {str(d.reference): d.reason for d in Policy.default().evaluate(seeded_entries(), now=NOW)}

    assert reasons["churn@1"] == "tagged 'legal-hold'"
    assert reasons["churn@2"] == "previous production version, superseded 200 days ago (more than 90)"
    assert reasons["churn@3"] == "in use: consumer 'billing-batch' depend(s) on it"
    assert reasons["churn@4"] == "kept: no rule selected it"
    assert reasons["churn@5"] == "one of the 2 most recent production versions of churn (#2)"
    assert reasons["churn@6"] == "in use: alias 'production' points at it"
    assert reasons["churn@7"] == "staging version promoted 45 days ago (more than 30)"
    assert reasons["churn@11"] == "failed experiment, failed 60 days ago (more than 30)"
    assert reasons["fraud@3"] == "in use: it is the production version"


def test_the_first_matching_rule_decides_so_order_matters() -> None:
    """Evaluating the 90-day rule before keep_recent_production makes fraud@2 (superseded 100 days ago) a candidate."""
    policy = load_policy_text(
        "rules:\n"
        "  - {priority: 1, kind: superseded_production, min_age_days: 90}\n"
        "  - {priority: 2, kind: keep_recent_production, count: 2}\n"
    )
    decided = outcomes(policy.evaluate(seeded_entries(), now=NOW))

    assert decided["fraud@2"] == ("candidate", "#1 superseded_production")
    # the legal hold is not a rule of this policy: churn@1 is selected too
    assert decided["churn@1"] == ("candidate", "#1 superseded_production")
    assert decided["churn@5"] == ("protected", "#2 keep_recent_production")


def test_keep_recent_production_counts_per_model() -> None:
    policy = load_policy_text("rules:\n  - {priority: 5, kind: keep_recent_production, count: 3}\n")
    protected = {str(d.reference) for d in policy.evaluate(seeded_entries(), now=NOW) if d.outcome == "protected"}

    assert protected == {"churn@6", "churn@5", "churn@4", "fraud@3", "fraud@2", "fraud@1"}


class FakeTraffic:
    """Requests per version; records every call so the test can see lookups were batched."""

    def __init__(self, counts: Mapping[str, int | None]) -> None:
        self.counts = counts
        self.calls: list[tuple[list[str], datetime, datetime]] = []

    def requests(self, refs: Sequence[ModelRef], start: datetime, end: datetime) -> dict[ModelRef, int | None]:
        self.calls.append(([str(r) for r in refs], start, end))
        return {r: self.counts[str(r)] for r in refs if str(r) in self.counts}


def test_traffic_is_looked_up_once_for_all_versions_and_unknown_traffic_protects() -> None:
    rules = [r for r in Policy.default().rules if not isinstance(r, ProtectInUse)]
    policy = Policy(rules=[*rules, ProtectInUse(priority=20, recent_days=14, traffic_source="gw")])
    traffic = FakeTraffic({"churn@2": 5, "churn@7": 0, "churn@11": None})  # churn@13, fraud@1: absent

    decisions = {str(d.reference): d for d in policy.evaluate(seeded_entries(), now=NOW, traffic={"gw": traffic})}

    assert len(traffic.calls) == 1
    asked, start, end = traffic.calls[0]
    assert (start, end) == (NOW - timedelta(days=14), NOW)
    # versions already protected by the tag rule or by an alias/dependent are not asked about
    assert "churn@1" not in asked and "churn@6" not in asked and "churn@3" not in asked
    assert decisions["churn@2"].outcome == "protected"
    assert decisions["churn@2"].reason == "in use: 5 requests in the last 14 days on 'gw'"
    assert decisions["churn@7"].outcome == "candidate"
    for unknown in ("churn@11", "churn@13", "fraud@1"):
        assert decisions[unknown].outcome == "protected", unknown
        assert "missing data is never zero" in decisions[unknown].reason


def test_two_traffic_rules_decide_every_version_and_the_second_source_sees_only_what_the_first_let_through() -> None:
    policy = Policy(
        rules=[
            ProtectInUse(priority=1, recent_days=7, traffic_source="gateway"),
            ProtectInUse(priority=2, recent_days=30, traffic_source="prometheus"),
            SupersededProduction(priority=3),
        ]
    )
    gateway = FakeTraffic({"churn@2": 0, "fraud@1": 0, "churn@4": 3})
    prometheus = FakeTraffic({"churn@2": 0, "fraud@1": 9})
    entries = [e for e in seeded_entries() if str(e.reference) in ("churn@2", "churn@4", "fraud@1", "churn@11")]

    decisions = policy.evaluate(entries, now=NOW, traffic={"gateway": gateway, "prometheus": prometheus})

    assert outcomes(decisions) == {
        "churn@2": ("candidate", "#3 superseded_production"),
        "churn@4": ("protected", "#1 protect_in_use"),
        "fraud@1": ("protected", "#2 protect_in_use"),
        "churn@11": ("protected", "#1 protect_in_use"),  # the gateway could not tell
    }
    assert [sorted(c[0]) for c in gateway.calls] == [["churn@11", "churn@2", "churn@4", "fraud@1"]]
    assert [sorted(c[0]) for c in prometheus.calls] == [["churn@2", "fraud@1"]]


def test_a_traffic_source_the_review_was_not_given_is_refused() -> None:
    policy = Policy(rules=[ProtectInUse(priority=1, traffic_source="prometheus")])

    with pytest.raises(InputError, match="prometheus"):
        policy.evaluate(seeded_entries(), now=NOW, traffic={})


def test_the_example_policy_file_has_every_rule_kind_and_matches_the_default() -> None:
    policy = load_policy(EXAMPLE_POLICY)

    assert sorted(r.kind for r in policy.rules) == sorted(RULE_KINDS)
    assert outcomes(policy.evaluate(seeded_entries(), now=NOW)) == EXPECTED


def problems_of(text: str) -> list[str]:
    with pytest.raises(PolicyError) as info:
        load_policy_text(text, "policy.yaml")
    assert str(info.value).startswith("policy.yaml: ")
    return [str(p) for p in info.value.problems]


def test_unknown_rule_kind_names_the_rule_and_lists_the_kinds() -> None:
    (problem,) = problems_of("rules:\n  - {priority: 10, kind: delete_everything}\n")

    assert problem.startswith("rules[0] (priority 10, delete_everything).kind: unknown rule kind 'delete_everything'")
    for kind in RULE_KINDS:
        assert kind in problem


def test_negative_age_names_rule_and_field() -> None:
    (problem,) = problems_of(
        "rules:\n"
        "  - {priority: 1, kind: protect_tagged}\n"
        "  - {priority: 7, kind: superseded_production, min_age_days: -5}\n"
    )

    assert problem.startswith("rules[1] (priority 7, superseded_production).min_age_days:")
    assert "-5" in problem and ">= 0" in problem


def test_count_below_one_names_rule_and_field() -> None:
    (problem,) = problems_of("rules:\n  - {priority: 3, kind: keep_recent_production, count: 0}\n")

    assert problem.startswith("rules[0] (priority 3, keep_recent_production).count:")
    assert ">= 1" in problem


def test_duplicate_priorities_name_both_rules() -> None:
    (problem,) = problems_of(
        "rules:\n  - {priority: 10, kind: protect_tagged}\n  - {priority: 10, kind: failed_experiments}\n"
    )

    assert problem.startswith("rules[1] (priority 10, failed_experiments).priority: duplicate priority 10")
    assert "rules[0]" in problem


def test_unknown_field_names_rule_field_and_the_allowed_fields() -> None:
    (problem,) = problems_of("rules:\n  - {priority: 2, kind: staging_resolved, min_age: 30}\n")

    assert problem.startswith("rules[0] (priority 2, staging_resolved).min_age: unknown field")
    assert "min_age_days" in problem


def test_every_problem_is_reported_at_once() -> None:
    problems = problems_of(
        "rules:\n"
        "  - {priority: 1, kind: nope}\n"
        "  - {priority: 1, kind: failed_experiments, min_age_days: -1}\n"
        "  - {kind: protect_tagged}\n"
    )

    assert [p.split(":")[0] for p in problems] == [
        "rules[0] (priority 1, nope).kind",
        "rules[1] (priority 1, failed_experiments).min_age_days",
        "rules[1] (priority 1, failed_experiments).priority",
        "rules[2] (priority ?, protect_tagged).priority",
    ]


def test_bad_yaml_gets_line_and_column() -> None:
    (problem,) = problems_of("rules:\n  - priority: 1\n    kind: [protect_tagged\n")

    assert problem.startswith("yaml: invalid YAML at line 4, column 1")


def test_empty_policy_and_unknown_top_level_field() -> None:
    problems = problems_of("rulez: []\n")

    assert problems[0].startswith("rulez: unknown top-level field")
    assert problems[1].startswith("rules: is missing or empty")


def test_missing_policy_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "absent.yaml")


def iter_entries() -> Iterator[CatalogEntry]:
    yield from seeded_entries()


def test_evaluation_accepts_any_iterable_once() -> None:
    assert outcomes(Policy.default().evaluate(iter_entries(), now=NOW)) == EXPECTED
