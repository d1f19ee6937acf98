"""Retention policy for the quarterly review: ordered rules that protect versions or select them for retirement.

Like a container registry's lifecycle policy, a policy is a list of rules with unique priorities.
Rules are evaluated from the lowest priority number up; the first rule that matches a version
decides whether it is *protected* or a *candidate* for retirement. A version no rule matches is
*kept* ("no rule selected it"). Evaluation is pure: one pass over the catalogue entries, grouped
per model, and at most one batched traffic lookup per traffic source.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol, runtime_checkable

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from retirement.errors import InputError
from retirement.models import CatalogEntry, ModelRef

Outcome = Literal["candidate", "protected", "kept"]

_FALSE_VALUES = frozenset({"", "0", "false", "no", "off"})
_PRODUCTION = "production"


class PolicyError(InputError):
    """A policy file or document is invalid; ``problems`` lists every problem found.

    Each problem names the rule (index and priority) and the field, and says what is allowed.
    """

    def __init__(self, source: str, problems: Sequence[InputError]) -> None:
        self.source = source
        self.problems = list(problems)
        first = self.problems[0]
        super().__init__(first.field, first.problem, first.allowed)
        lines = [f"{source}: {len(self.problems)} problem(s) in the retention policy:"]
        lines += [f"  - {p}" for p in self.problems]
        self.args = ("\n".join(lines),)

    def __str__(self) -> str:
        return str(self.args[0])


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    priority: int = Field(
        ge=1, description="Evaluation order: the lowest number is evaluated first; unique within the policy."
    )
    description: str = Field(default="", description="Why this rule exists, shown in the review.")

    @property
    def label(self) -> str:
        """E.g. ``#30 keep_recent_production``."""
        return f"#{self.priority} {getattr(self, 'kind', '?')}"


class KeepRecentProduction(_Rule):
    """Protects the N most recent versions ever in production, per model."""

    kind: Literal["keep_recent_production"] = "keep_recent_production"
    count: int = Field(default=2, ge=1, description="How many of the latest production versions to keep per model.")


class ProtectInUse(_Rule):
    """Protects versions something points at (alias, deployment, dependent) or that served requests recently."""

    kind: Literal["protect_in_use"] = "protect_in_use"
    recent_days: int = Field(
        default=30, ge=0, description="Look-back for requests (days), when a traffic source is given."
    )
    traffic_source: str | None = Field(
        default=None,
        description="Traffic source to ask for requests over the last `recent_days` (e.g. `platform` for the "
        "platform's own); none = aliases, stage and dependents only. Unknown traffic protects the version.",
    )


class ProtectTagged(_Rule):
    """Protects versions carrying one of the given tags (a value of false/no/0 does not count)."""

    kind: Literal["protect_tagged"] = "protect_tagged"
    tags: list[str] = Field(
        default_factory=lambda: ["keep", "legal-hold"], min_length=1, description="Tag keys that protect a version."
    )


class SupersededProduction(_Rule):
    """Selects previous production versions superseded more than ``min_age_days`` ago."""

    kind: Literal["superseded_production"] = "superseded_production"
    min_age_days: int = Field(default=90, ge=0, description="Days since the version was superseded in production.")


class StagingResolved(_Rule):
    """Selects staging versions that were promoted or rejected more than ``min_age_days`` ago."""

    kind: Literal["staging_resolved"] = "staging_resolved"
    min_age_days: int = Field(default=30, ge=0, description="Days since the version was promoted or rejected.")


class FailedExperiments(_Rule):
    """Selects versions whose stage or status is ``failed``, older than ``min_age_days``."""

    kind: Literal["failed_experiments"] = "failed_experiments"
    min_age_days: int = Field(default=30, ge=0, description="Days since the version failed (or was created).")


Rule = Annotated[
    KeepRecentProduction | ProtectInUse | ProtectTagged | SupersededProduction | StagingResolved | FailedExperiments,
    Field(discriminator="kind"),
]
_RULE_ADAPTER: TypeAdapter[Rule] = TypeAdapter(Rule)
_RULE_CLASSES: dict[str, type[_Rule]] = {
    cls.model_fields["kind"].default: cls
    for cls in (
        KeepRecentProduction,
        ProtectInUse,
        ProtectTagged,
        SupersededProduction,
        StagingResolved,
        FailedExperiments,
    )
}
RULE_KINDS: tuple[str, ...] = tuple(_RULE_CLASSES)
_PROTECTING = frozenset({"keep_recent_production", "protect_in_use", "protect_tagged"})


class Decision(BaseModel):
    """What the policy decided for one version, and why."""

    reference: ModelRef = Field(description="The version.")
    outcome: Outcome = Field(description="candidate (for retirement), protected, or kept (no rule selected it).")
    rule: str | None = Field(default=None, description="The deciding rule, e.g. '#40 superseded_production'.")
    reason: str = Field(description="Why, in words.")
    size_bytes: int | None = Field(default=None, description="Storage the version takes, when known.")
    stage: str | None = Field(default=None, description="The version's stage when reviewed.")


@runtime_checkable
class TrafficLookup(Protocol):
    """Requests per version over a window, for many versions in one call (the review batches lookups)."""

    def requests(self, refs: Sequence[ModelRef], start: datetime, end: datetime) -> Mapping[ModelRef, int | None]:
        """Requests seen for each ref over ``[start, end)``; None (or absent) when the source cannot tell."""
        ...


@dataclass(frozen=True)
class _Facts:
    """Per-model facts the rules need, computed once per model."""

    recent_production: dict[ModelRef, int]  # ref -> rank (1 = most recent) among versions ever in production


def _truthy_tag(value: str | None) -> bool:
    return value is not None and value.strip().lower() not in _FALSE_VALUES


def _days(delta: timedelta) -> str:
    return f"{delta.total_seconds() / 86400:.0f} days"


def ever_in_production(entry: CatalogEntry) -> bool:
    """True when the version is, or was, production: stage or alias production, or superseded."""
    return entry.stage == _PRODUCTION or _PRODUCTION in entry.aliases or entry.status == "superseded"


def _production_recency(entry: CatalogEntry) -> tuple[int, datetime, datetime]:
    current = entry.stage == _PRODUCTION or _PRODUCTION in entry.aliases
    left = entry.status_changed_at or entry.created_at
    return (1 if current else 0, left, entry.created_at)


def _facts(entries: Sequence[CatalogEntry]) -> _Facts:
    production = sorted((e for e in entries if ever_in_production(e)), key=_production_recency, reverse=True)
    return _Facts(recent_production={e.reference: rank for rank, e in enumerate(production, start=1)})


class Policy(BaseModel):
    """A retention policy: rules with unique priorities; the first matching rule decides."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(default="retention-policy", description="Shown in the review.")
    description: str = Field(default="", description="What the policy is for.")
    rules: list[Rule] = Field(min_length=1, description="The rules; evaluated by ascending priority.")

    @property
    def ordered(self) -> list[Rule]:
        """The rules in evaluation order."""
        return sorted(self.rules, key=lambda r: r.priority)

    def traffic_sources(self) -> set[str]:
        """Names of the traffic sources the rules ask."""
        return {r.traffic_source for r in self.rules if isinstance(r, ProtectInUse) and r.traffic_source}

    @classmethod
    def default(cls) -> Policy:
        """The seed's retention rules: keep/legal-hold tags, in use, 2 latest production; 90/30/30 days."""
        return cls(
            name="default",
            rules=[
                ProtectTagged(priority=10),
                ProtectInUse(priority=20),
                KeepRecentProduction(priority=30),
                SupersededProduction(priority=40),
                StagingResolved(priority=50),
                FailedExperiments(priority=60),
            ],
        )

    def evaluate(
        self,
        entries: Iterable[CatalogEntry],
        *,
        now: datetime,
        traffic: Mapping[str, TrafficLookup] | None = None,
    ) -> list[Decision]:
        """Decide every version: one pass per model, one batched traffic lookup per source.

        Args:
            entries: every version to review (any platforms, any order).
            now: the review's time; ages are measured from it.
            traffic: the traffic lookups named by ``protect_in_use`` rules.

        Returns:
            One decision per entry, in the order of the entries.

        Raises:
            InputError: a rule names a traffic source that is not in ``traffic``.
        """
        entries = list(entries)
        missing = self.traffic_sources() - set(traffic or {})
        if missing:
            raise InputError(
                "traffic_source",
                f"the policy asks traffic source(s) {', '.join(sorted(missing))} but none was given",
                ", ".join(sorted(traffic or {})) or "rules without traffic_source",
            )
        by_model: dict[tuple[str, str], list[CatalogEntry]] = defaultdict(list)
        for entry in entries:
            by_model[(entry.reference.platform, entry.reference.name)].append(entry)
        facts = {key: _facts(group) for key, group in by_model.items()}
        rules = self.ordered

        # Pass 1 decides every version that does not reach a traffic question; the rest wait for
        # one batched lookup per source, then resume at that rule.
        decisions: list[Decision | None] = [None] * len(entries)
        waiting: dict[int, int] = {}  # entry index -> index of the rule waiting for traffic
        for index, entry in enumerate(entries):
            fact = facts[(entry.reference.platform, entry.reference.name)]
            decisions[index], stopped = _decide(rules, 0, entry, fact, now, None)
            if decisions[index] is None:
                waiting[index] = stopped
        # Each round asks every (source, window) once for all the versions waiting on it; a version
        # that reaches a later traffic rule waits for the next round.
        while waiting:
            groups: dict[int, list[int]] = defaultdict(list)
            for index, rule_index in waiting.items():
                groups[rule_index].append(index)
            waiting = {}
            for rule_index, group in groups.items():
                rule = rules[rule_index]
                assert isinstance(rule, ProtectInUse) and rule.traffic_source
                refs = [entries[i].reference for i in group]
                seen = (traffic or {})[rule.traffic_source].requests(refs, now - timedelta(days=rule.recent_days), now)
                for index in group:
                    entry = entries[index]
                    fact = facts[(entry.reference.platform, entry.reference.name)]
                    count = seen.get(entry.reference)
                    decision, stopped = _decide(rules, rule_index, entry, fact, now, (rule.traffic_source, count))
                    decisions[index] = decision
                    if decision is None:
                        waiting[index] = stopped
        return [d for d in decisions if d is not None]


def _decision(entry: CatalogEntry, outcome: Outcome, rule: _Rule | None, reason: str) -> Decision:
    return Decision.model_construct(
        reference=entry.reference,
        outcome=outcome,
        rule=rule.label if rule else None,
        reason=reason,
        size_bytes=entry.size_bytes,
        stage=entry.stage,
    )


def _decide(
    rules: Sequence[Rule],
    start: int,
    entry: CatalogEntry,
    facts: _Facts,
    now: datetime,
    traffic: tuple[str, int | None] | None,
) -> tuple[Decision | None, int]:
    """The first matching rule's decision; ``(None, i)`` when rule ``i`` needs traffic not yet known."""
    for i in range(start, len(rules)):
        rule = rules[i]
        if isinstance(rule, ProtectInUse) and rule.traffic_source and i == start and traffic is not None:
            reason = _in_use(entry) or _traffic_reason(rule, traffic[1])
        elif isinstance(rule, ProtectInUse):
            reason = _in_use(entry)
            if reason is None and rule.traffic_source:
                return None, i
        else:
            reason = _MATCHERS[rule.kind](rule, entry, facts, now)
        if reason is not None:
            outcome: Outcome = "protected" if rule.kind in _PROTECTING else "candidate"
            return _decision(entry, outcome, rule, reason), i
    return _decision(entry, "kept", None, "kept: no rule selected it"), len(rules)


def _in_use(entry: CatalogEntry) -> str | None:
    if entry.aliases:
        return "in use: alias " + ", ".join(repr(a) for a in sorted(entry.aliases)) + " points at it"
    if entry.stage == _PRODUCTION:
        return "in use: it is the production version"
    if entry.dependents:
        named = ", ".join(f"{d.kind} {d.name!r}" for d in entry.dependents[:3])
        more = f" and {len(entry.dependents) - 3} more" if len(entry.dependents) > 3 else ""
        return f"in use: {named}{more} depend(s) on it"
    return None


def _traffic_reason(rule: ProtectInUse, requests: int | None) -> str | None:
    if requests is None:
        source, days = rule.traffic_source, rule.recent_days
        return f"traffic unknown on {source!r} for the last {days} days (missing data is never zero)"
    if requests > 0:
        return f"in use: {requests} requests in the last {rule.recent_days} days on {rule.traffic_source!r}"
    return None


def _keep_recent(rule: Any, entry: CatalogEntry, facts: _Facts, now: datetime) -> str | None:
    rank = facts.recent_production.get(entry.reference)
    if rank is not None and rank <= rule.count:
        return f"one of the {rule.count} most recent production versions of {entry.reference.name} (#{rank})"
    return None


def _tagged(rule: Any, entry: CatalogEntry, facts: _Facts, now: datetime) -> str | None:
    if not entry.tags:
        return None
    hits = [t for t in rule.tags if _truthy_tag(entry.tags.get(t))]
    return f"tagged {', '.join(repr(t) for t in hits)}" if hits else None


def _superseded(rule: Any, entry: CatalogEntry, facts: _Facts, now: datetime) -> str | None:
    when = entry.status_changed_at
    if entry.status != "superseded" or when is None:
        return None
    age = now - when
    if age > timedelta(days=rule.min_age_days):
        return f"previous production version, superseded {_days(age)} ago (more than {rule.min_age_days})"
    return None


def _staging(rule: Any, entry: CatalogEntry, facts: _Facts, now: datetime) -> str | None:
    when = entry.status_changed_at
    if entry.stage != "staging" or entry.status not in ("promoted", "rejected") or when is None:
        return None
    age = now - when
    if age > timedelta(days=rule.min_age_days):
        return f"staging version {entry.status} {_days(age)} ago (more than {rule.min_age_days})"
    return None


def _failed(rule: Any, entry: CatalogEntry, facts: _Facts, now: datetime) -> str | None:
    if entry.stage != "failed" and entry.status != "failed":
        return None
    age = now - (entry.status_changed_at or entry.created_at)
    if age > timedelta(days=rule.min_age_days):
        return f"failed experiment, failed {_days(age)} ago (more than {rule.min_age_days})"
    return None


_MATCHERS = {
    "keep_recent_production": _keep_recent,
    "protect_tagged": _tagged,
    "superseded_production": _superseded,
    "staging_resolved": _staging,
    "failed_experiments": _failed,
}


# --- loading and validation ---------------------------------------------------------------------


def _allowed(kind: str | None, field: str, error: Mapping[str, Any]) -> str:
    cls = _RULE_CLASSES.get(kind or "")
    kind_error = error["type"] in ("union_tag_invalid", "union_tag_not_found")
    if kind_error or field == "kind":
        return "one of " + ", ".join(RULE_KINDS)
    if error["type"] == "extra_forbidden":
        fields = list(cls.model_fields) if cls else ["priority", "kind", "description"]
        return f"the fields of {kind or 'a rule'}: " + ", ".join(fields)
    ctx = error.get("ctx") or {}
    info = cls.model_fields.get(field) if cls else None
    what = info.description if info and info.description else ""
    if "ge" in ctx:
        return f"an integer >= {ctx['ge']}" + (f" ({what})" if what else "")
    return what or error["msg"]


def _rule_problems(index: int, raw: Any) -> tuple[Rule | None, list[InputError]]:
    priority = raw.get("priority") if isinstance(raw, dict) else None
    kind = raw.get("kind") if isinstance(raw, dict) else None
    where = f"rules[{index}] (priority {priority if priority is not None else '?'}"
    where += f", {kind})" if isinstance(kind, str) else ")"
    if not isinstance(raw, dict):
        return None, [InputError(where, f"is {type(raw).__name__}", "a mapping with 'priority', 'kind' and options")]
    try:
        return _RULE_ADAPTER.validate_python(raw), []
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = [str(p) for p in error["loc"] if str(p) != str(kind)]
            field = ".".join(loc) or "kind"
            if error["type"] == "union_tag_invalid":
                problem = f"unknown rule kind {kind!r}"
            elif error["type"] == "union_tag_not_found":
                problem = "has no 'kind'"
            elif error["type"] == "extra_forbidden":
                problem = f"unknown field {field!r}"
            else:
                problem = f"{error['msg']} (got {error.get('input')!r})"
            problems.append(InputError(f"{where}.{field}", problem, _allowed(kind, field.split(".")[0], error)))
        return None, problems


def parse_policy(document: Any, source: str = "policy") -> Policy:
    """Validate a parsed policy document (a mapping with a ``rules`` list).

    Raises:
        PolicyError: listing every problem, each naming the rule (index, priority) and the field.
    """
    if not isinstance(document, dict):
        raise PolicyError(source, [InputError("policy", f"is {type(document).__name__}", "a mapping with 'rules'")])
    problems: list[InputError] = []
    top_fields = set(Policy.model_fields)
    for key in document:
        if key not in top_fields:
            problems.append(InputError(str(key), "unknown top-level field", ", ".join(sorted(top_fields))))
    raw_rules = document.get("rules")
    if not isinstance(raw_rules, list) or not raw_rules:
        problems.append(InputError("rules", "is missing or empty", "a list of at least one rule"))
        raise PolicyError(source, problems)
    rules: list[Rule] = []
    seen: dict[int, int] = {}
    for index, raw in enumerate(raw_rules):
        rule, rule_problems = _rule_problems(index, raw)
        problems += rule_problems
        if rule is not None:
            rules.append(rule)
        priority = raw.get("priority") if isinstance(raw, dict) else None
        if not isinstance(priority, int) or isinstance(priority, bool):
            continue
        if priority in seen:
            problems.append(
                InputError(
                    f"rules[{index}] (priority {priority}, {raw.get('kind')}).priority",
                    f"duplicate priority {priority}, already used by rules[{seen[priority]}]",
                    "a priority no other rule uses",
                )
            )
        else:
            seen[priority] = index
    if problems:
        raise PolicyError(source, problems)
    try:
        return Policy(**{k: v for k, v in document.items() if k != "rules"}, rules=rules)
    except ValidationError as exc:
        raise PolicyError(
            source, [InputError(".".join(str(p) for p in e["loc"]), e["msg"], None) for e in exc.errors()]
        ) from None


def load_policy_text(text: str, source: str = "policy") -> Policy:
    """Parse and validate a YAML policy; bad YAML is reported with its line and column.

    Raises:
        PolicyError: bad YAML (line/column) or an invalid rule (index, priority, field, allowed).
    """
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "unknown position"
        problem = getattr(exc, "problem", None) or str(exc)
        raise PolicyError(source, [InputError("yaml", f"invalid YAML at {at}: {problem}", "a YAML mapping")]) from None
    return parse_policy(document, source)


def load_policy(path: str | Path) -> Policy:
    """Load a YAML policy file.

    Raises:
        PolicyError: the file is missing, is not valid YAML, or has an invalid rule.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        problem = InputError("path", f"cannot read {path}: {exc.strerror}", "a readable YAML file")
        raise PolicyError(str(path), [problem]) from None
    return load_policy_text(text, str(path))


__all__ = [
    "RULE_KINDS",
    "Decision",
    "FailedExperiments",
    "KeepRecentProduction",
    "Policy",
    "PolicyError",
    "ProtectInUse",
    "ProtectTagged",
    "Rule",
    "StagingResolved",
    "SupersededProduction",
    "TrafficLookup",
    "ever_in_production",
    "load_policy",
    "load_policy_text",
    "parse_policy",
]
