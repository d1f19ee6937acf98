"""The quarterly retention review: list every version, apply the policy, explain, compare with the last review."""

from __future__ import annotations

import json
import logging
import re
import shlex
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from retirement.backup.base import BackupStore
from retirement.errors import ConfigError, InputError, NotFoundError, RetirementError
from retirement.models import BackupManifest, CatalogEntry, ModelRef, RetirementRequest, TrafficVerdict
from retirement.platforms.base import Catalog
from retirement.policy import Decision, Policy, TrafficLookup
from retirement.redact import redact_text
from retirement.settings import RetireSettings
from retirement.traffic.base import TrafficSource

logger = logging.getLogger(__name__)

QUARTER_RE = re.compile(r"^(\d{4})-Q([1-4])$")
MAX_ROWS = 200  # rows per table in rendered reports; the JSON keeps every version


def quarter_of(when: datetime) -> str:
    """The quarter id of a date, e.g. ``2026-Q4``."""
    return f"{when.year}-Q{(when.month - 1) // 3 + 1}"


def _quarter_key(quarter: str) -> tuple[int, int]:
    match = QUARTER_RE.match(quarter)
    if not match:
        raise InputError("quarter", f"{quarter!r} is not a quarter id", "'YYYY-QN', e.g. '2026-Q4'")
    return int(match.group(1)), int(match.group(2))


def version_key(ref: ModelRef) -> str:
    """The identity of a version across reviews: ``platform:name@version``."""
    return f"{ref.platform}:{ref}"


class Resolved(BaseModel):
    """A previous candidate that is no longer one."""

    key: str = Field(description="platform:name@version")
    why: str = Field(description="gone, or what decides it now.")


class ReviewDiff(BaseModel):
    """What changed since the previous review."""

    previous_quarter: str = Field(description="The review compared with.")
    new: list[str] = Field(default_factory=list, description="Candidates now that were not candidates then.")
    resolved: list[Resolved] = Field(default_factory=list, description="Candidates then, no longer (or gone).")
    pending: list[str] = Field(default_factory=list, description="Candidates then and still candidates.")


class ReviewTotals(BaseModel):
    """Counts of the review."""

    versions: int = Field(description="Versions reviewed.")
    candidates: int = Field(description="Versions selected for retirement.")
    protected: int = Field(description="Versions a rule protected.")
    kept: int = Field(description="Versions no rule selected.")
    bytes_freed: int = Field(description="Storage the candidates take (known sizes only).")
    unknown_sizes: int = Field(default=0, description="Candidates whose size the platform did not report.")
    by_rule: dict[str, int] = Field(default_factory=dict, description="Versions decided per rule.")


class BackupRow(BaseModel):
    """One backup, as the review lists it."""

    reference: ModelRef = Field(description="The model (version) backed up.")
    location: str = Field(description="Where the backup is (a folder, or an s3:// location).")
    created_at: datetime = Field(description="When it was written.")
    retain_until: datetime = Field(description="Until when it must be kept.")
    size_bytes: int = Field(description="Sum of its files' sizes.")
    purge_command: str | None = Field(default=None, description="The command that deletes it, once it may go.")


class BackupReview(BaseModel):
    """The backups of the store in force: those past retain-until, and those whose model still exists."""

    store: str = Field(description="The backup store listed (RETIRE_BACKUP_URL, or the backup folder).")
    backups: int = Field(default=0, description="Backups in the store.")
    expired: list[BackupRow] = Field(
        default_factory=list, description="Past their retain-until date: ready to purge (`retire backup purge`)."
    )
    model_exists: list[BackupRow] = Field(
        default_factory=list,
        description="Backups whose model (version) still exists on a reviewed platform: not retired, or restored.",
    )
    unchecked: int = Field(
        default=0, description="Backups of platforms not in this review: whether their model still exists is unknown."
    )
    error: str | None = Field(default=None, description="Why the store could not be listed, when it could not.")


class ReviewReport(BaseModel):
    """One quarterly review: every decision with its rule and reason, totals, and the diff."""

    quarter: str = Field(description="Quarter id, e.g. 2026-Q4.")
    generated_at: datetime = Field(description="The review's time; ages are measured from it.")
    platforms: list[str] = Field(description="Platforms reviewed.")
    policy: str = Field(description="Name of the policy applied.")
    rules: list[str] = Field(description="The policy's rules in evaluation order.")
    decisions: list[Decision] = Field(description="One per version reviewed.")
    totals: ReviewTotals = Field(description="Counts and storage.")
    diff: ReviewDiff | None = Field(default=None, description="Compared with the previous review, when there is one.")
    backups: BackupReview | None = Field(default=None, description="The backups past retain-until or still needed.")

    def by_outcome(self, outcome: str) -> list[Decision]:
        """Decisions with this outcome (candidate, protected, kept), sorted by reference."""
        chosen = [d for d in self.decisions if d.outcome == outcome]
        return sorted(chosen, key=lambda d: version_key(d.reference))

    @property
    def candidates(self) -> list[Decision]:
        """The versions selected for retirement."""
        return self.by_outcome("candidate")


def _diff(decisions: Sequence[Decision], previous: ReviewReport) -> ReviewDiff:
    now = {version_key(d.reference): d for d in decisions}
    before = {version_key(d.reference) for d in previous.decisions if d.outcome == "candidate"}
    current = {k for k, d in now.items() if d.outcome == "candidate"}
    resolved = []
    for key in sorted(before - current):
        decision = now.get(key)
        if decision is None:
            why = "gone"
        elif decision.rule is None:
            why = decision.reason
        else:
            why = f"{decision.outcome} by {decision.rule}: {decision.reason}"
        resolved.append(Resolved(key=key, why=why))
    return ReviewDiff(
        previous_quarter=previous.quarter,
        new=sorted(current - before),
        resolved=resolved,
        pending=sorted(current & before),
    )


def run_review(
    catalogs: Mapping[str, Catalog],
    policy: Policy,
    *,
    now: datetime,
    previous: ReviewReport | None = None,
    traffic: Mapping[str, TrafficLookup] | None = None,
    backups: BackupStore | None = None,
) -> ReviewReport:
    """List every version of every platform, apply ``policy`` and explain each decision.

    Args:
        catalogs: platform name -> its catalogue.
        policy: the retention policy.
        now: the review's time (timezone-aware); ages and the quarter come from it.
        previous: the last earlier review, to report new, resolved and still-pending candidates.
        traffic: traffic lookups named by the policy's ``protect_in_use`` rules.
        backups: the backup store whose backups are reviewed (default: the one RETIRE_BACKUP_URL names).

    Returns:
        The report; nothing is changed anywhere.
    """
    entries: list[CatalogEntry] = []
    for catalog in catalogs.values():
        entries.extend(catalog.list_versions())
    return review_entries(
        entries, policy, now=now, platforms=list(catalogs), previous=previous, traffic=traffic, backups=backups
    )


def review_entries(
    entries: Iterable[CatalogEntry],
    policy: Policy,
    *,
    now: datetime,
    platforms: Sequence[str],
    previous: ReviewReport | None = None,
    traffic: Mapping[str, TrafficLookup] | None = None,
    backups: BackupStore | None = None,
) -> ReviewReport:
    """Like :func:`run_review`, over entries already listed (the flow lists each platform in its own task)."""
    if now.tzinfo is None:
        raise InputError("now", "has no timezone", "a timezone-aware datetime, e.g. datetime.now(UTC)")
    entries = list(entries)
    decisions = policy.evaluate(entries, now=now, traffic=traffic)
    outcomes = Counter(d.outcome for d in decisions)
    candidates = [d for d in decisions if d.outcome == "candidate"]
    totals = ReviewTotals(
        versions=len(decisions),
        candidates=outcomes["candidate"],
        protected=outcomes["protected"],
        kept=outcomes["kept"],
        bytes_freed=sum(d.size_bytes or 0 for d in candidates),
        unknown_sizes=sum(1 for d in candidates if d.size_bytes is None),
        by_rule=dict(sorted(Counter(d.rule or "no rule" for d in decisions).items())),
    )
    return ReviewReport(
        quarter=quarter_of(now),
        generated_at=now,
        platforms=list(platforms),
        policy=policy.name,
        rules=[r.label for r in policy.ordered],
        decisions=decisions,
        totals=totals,
        diff=_diff(decisions, previous) if previous is not None else None,
        backups=review_backups(backups, entries, platforms=platforms, now=now),
    )


# --- backups --------------------------------------------------------------------------------------


def purge_command(location: str) -> str:
    """The command that deletes the backup at ``location`` once its retain-until date has passed."""
    return f"retire backup purge {shlex.quote(location)}"


def _store_name(store: Any) -> str:
    url = getattr(store, "url", None)
    if isinstance(url, str):
        return url
    root = getattr(store, "root", None)
    return str(root) if root is not None else type(store).__name__


def _row(manifest: BackupManifest, expired: bool) -> BackupRow:
    return BackupRow(
        reference=manifest.source,
        location=manifest.location,
        created_at=manifest.created_at,
        retain_until=manifest.retain_until,
        size_bytes=manifest.total_bytes,
        purge_command=purge_command(manifest.location) if expired else None,
    )


def review_backups(
    store: BackupStore | None,
    entries: Iterable[CatalogEntry],
    *,
    platforms: Sequence[str],
    now: datetime,
) -> BackupReview:
    """Every backup of ``store`` past its retain-until date (with the command that purges it), and every backup
    whose model still exists among ``entries`` (the versions the review listed).

    A store that cannot be listed is reported in ``error``: the rest of the review stands.

    Args:
        store: the store to list; None: the one RETIRE_BACKUP_URL names.
        entries: every version listed on ``platforms``.
        platforms: the platforms reviewed; backups of other platforms are counted as unchecked.
        now: the review's time.
    """
    name = "RETIRE_BACKUP_URL"
    try:
        if store is None:
            from retirement.bootstrap import backup_store

            store = backup_store(RetireSettings())
        name = _store_name(store)
        manifests = store.list()
    except (RetirementError, ImportError) as exc:
        logger.warning("the backup review could not list %s: %s", name, exc)
        return BackupReview(store=name, error=redact_text(f"{type(exc).__name__}: {exc}"))
    versions = {(e.reference.platform, e.reference.name, e.reference.version) for e in entries}
    models = {(platform, model) for platform, model, _ in versions}
    reviewed = set(platforms)
    expired: list[BackupRow] = []
    exists: list[BackupRow] = []
    unchecked = 0
    for manifest in sorted(manifests, key=lambda m: (m.retain_until, m.location)):
        source = manifest.source
        if manifest.retain_until <= now:
            expired.append(_row(manifest, expired=True))
        if source.platform not in reviewed:
            unchecked += 1
        elif (source.platform, source.name, source.version) in versions or (
            source.version is None and (source.platform, source.name) in models
        ):
            exists.append(_row(manifest, expired=manifest.retain_until <= now))
    return BackupReview(store=name, backups=len(manifests), expired=expired, model_exists=exists, unchecked=unchecked)


# --- storing reviews ----------------------------------------------------------------------------


class ReviewStore:
    """Reports as JSON files, one per quarter: ``<root>/<quarter>.json`` (default RETIRE_HOME/reviews)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else RetireSettings().home.expanduser() / "reviews"

    def path(self, quarter: str) -> Path:
        """Where the review of ``quarter`` is kept."""
        _quarter_key(quarter)
        return self.root / f"{quarter}.json"

    def save(self, report: ReviewReport) -> Path:
        """Write (or replace) the report of its quarter, atomically."""
        path = self.path(report.quarter)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(report.model_dump_json(), encoding="utf-8")
        tmp.replace(path)
        return path

    def load(self, quarter: str) -> ReviewReport:
        """The review of ``quarter``.

        Raises:
            NotFoundError: there is none.
        """
        path = self.path(quarter)
        try:
            return ReviewReport.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            raise NotFoundError(f"no review for {quarter} in {self.root}") from None

    def quarters(self) -> list[str]:
        """Quarters with a saved review, oldest first."""
        if not self.root.is_dir():
            return []
        found = [p.stem for p in self.root.glob("*.json") if QUARTER_RE.match(p.stem)]
        return sorted(found, key=_quarter_key)

    def previous(self, quarter: str) -> ReviewReport | None:
        """The latest review of a quarter before ``quarter``, if any."""
        key = _quarter_key(quarter)
        earlier = [q for q in self.quarters() if _quarter_key(q) < key]
        return self.load(earlier[-1]) if earlier else None


# --- catalogues and traffic of named platforms --------------------------------------------------


def platform_catalog(platform: Any) -> Catalog:
    """The catalogue of a platform's adapters (its registry must list versions).

    Raises:
        ConfigError: the platform's registry cannot list its versions.
    """
    registry = platform.registry
    if not isinstance(registry, Catalog):
        raise ConfigError(f"platform {platform.name!r} cannot list its versions for a review (no list_versions)")
    return registry


class SampledTraffic:
    """A :class:`TrafficLookup` over a per-version :class:`TrafficSource`, asking it concurrently.

    Only IDLE (0) and ACTIVE (the count) are answers; NODATA and ERROR give None, which the
    policy treats as "in use": missing data is never zero.
    """

    def __init__(self, source: TrafficSource, workers: int = 8) -> None:
        self.source = source
        self.workers = workers

    def requests(self, refs: Sequence[ModelRef], start: datetime, end: datetime) -> dict[ModelRef, int | None]:
        """Requests per ref over ``[start, end)``."""

        def one(ref: ModelRef) -> int | None:
            sample = self.source.sample(ref, start, end)
            if sample.verdict == TrafficVerdict.IDLE:
                return 0
            if sample.verdict == TrafficVerdict.ACTIVE:
                return sample.requests if sample.requests else 1
            return None

        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            return dict(zip(refs, pool.map(one, refs), strict=True))


class _PerPlatformTraffic:
    """Routes each ref to the traffic lookup of its own platform."""

    def __init__(self, lookups: Mapping[str, TrafficLookup]) -> None:
        self.lookups = lookups

    def requests(self, refs: Sequence[ModelRef], start: datetime, end: datetime) -> dict[ModelRef, int | None]:
        result: dict[ModelRef, int | None] = {}
        for name, lookup in self.lookups.items():
            mine = [r for r in refs if r.platform == name]
            if mine:
                result.update(lookup.requests(mine, start, end))
        return result  # refs of a platform without a source stay absent: unknown, so protected


def traffic_for(policy: Policy, platforms: Mapping[str, Any]) -> dict[str, TrafficLookup]:
    """The traffic lookups a policy names; ``platform`` means each platform's own source.

    Raises:
        ConfigError: a named source does not exist here.
    """
    lookups: dict[str, TrafficLookup] = {}
    for name in policy.traffic_sources():
        if name == "platform":
            own = {p: SampledTraffic(pl.traffic) for p, pl in platforms.items() if pl.traffic is not None}
            lookups[name] = _PerPlatformTraffic(own)
            continue
        import retirement.traffic as traffic_module

        factory: Callable[[str], TrafficSource] | None = getattr(traffic_module, "get_traffic_source", None)
        if factory is None:
            raise ConfigError(f"traffic source {name!r} is not available; use traffic_source: platform")
        lookups[name] = SampledTraffic(factory(name))
    return lookups


# --- rendering ----------------------------------------------------------------------------------


def human_bytes(size: int) -> str:
    """E.g. ``1.5 GiB``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table_rows(report: ReviewReport, outcome: str = "candidate", limit: int = MAX_ROWS) -> list[dict[str, str]]:
    """Rows for a table artifact or the terminal: reference, platform, stage, rule, reason, size."""
    return [
        {
            "version": str(d.reference),
            "platform": d.reference.platform,
            "stage": d.stage or "",
            "rule": d.rule or "",
            "reason": d.reason,
            "size": human_bytes(d.size_bytes) if d.size_bytes is not None else "unknown",
        }
        for d in report.by_outcome(outcome)[:limit]
    ]


def _summary_lines(report: ReviewReport) -> list[str]:
    t = report.totals
    lines = [
        f"{t.versions} versions on {', '.join(report.platforms)}: {t.candidates} candidates for retirement "
        f"({human_bytes(t.bytes_freed)} to free"
        + (f", {t.unknown_sizes} of unknown size" if t.unknown_sizes else "")
        + f"), {t.protected} protected, {t.kept} kept (no rule selected them).",
    ]
    if report.diff is not None:
        d = report.diff
        lines.append(
            f"Since {d.previous_quarter}: {len(d.new)} new, {len(d.resolved)} resolved, {len(d.pending)} still pending."
        )
    return lines


def _backup_summary(backups: BackupReview) -> str:
    if backups.error is not None:
        return f"Backups in {backups.store}: could not be listed ({backups.error})."
    line = (
        f"Backups in {backups.store}: {backups.backups}, {len(backups.expired)} past their retain-until date "
        f"(ready to purge), {len(backups.model_exists)} of models that still exist"
    )
    return line + (f", {backups.unchecked} of platforms not reviewed." if backups.unchecked else ".")


def _backup_lines(backups: BackupReview, limit: int) -> list[str]:
    """The backup section of the terminal report."""
    out = ["BACKUPS", f"  {_backup_summary(backups)}"]
    if backups.error is not None:
        return out
    out.append(f"  PAST RETAIN-UNTIL, READY TO PURGE ({len(backups.expired)})")
    if not backups.expired:
        out.append("    none")
    for row in backups.expired[:limit]:
        out.append(
            f"    {row.reference.platform}:{row.reference}  kept until {row.retain_until:%Y-%m-%d}  "
            f"{human_bytes(row.size_bytes)}  {row.location}"
        )
        out.append(f"      {row.purge_command}")
    out.append(f"  MODEL STILL EXISTS ({len(backups.model_exists)})")
    if not backups.model_exists:
        out.append("    none")
    for row in backups.model_exists[:limit]:
        out.append(
            f"    {row.reference.platform}:{row.reference}  taken {row.created_at:%Y-%m-%d}  "
            f"kept until {row.retain_until:%Y-%m-%d}  {human_bytes(row.size_bytes)}  {row.location}"
        )
    return out


def render_markdown(report: ReviewReport, limit: int = MAX_ROWS) -> str:
    """The report as markdown, for a Prefect artifact."""
    out = [f"# Retention review {report.quarter}", "", *_summary_lines(report), ""]
    out += [f"Policy `{report.policy}`: " + ", ".join(f"`{r}`" for r in report.rules), ""]
    for outcome, title in (("candidate", "Candidates for retirement"), ("protected", "Protected")):
        rows = table_rows(report, outcome, limit)
        total = getattr(report.totals, "candidates" if outcome == "candidate" else "protected")
        out += [f"## {title} ({total})", ""]
        if not rows:
            out += ["None.", ""]
            continue
        out += ["| version | platform | stage | rule | why | size |", "|---|---|---|---|---|---|"]
        out += [
            "| " + " | ".join(_md_cell(r[k]) for k in ("version", "platform", "stage", "rule", "reason", "size")) + " |"
            for r in rows
        ]
        if total > len(rows):
            out.append(f"\n... and {total - len(rows)} more (see the JSON report).")
        out.append("")
    out += [f"## Kept ({report.totals.kept})", "", "No rule selected them; nothing is proposed.", ""]
    if report.diff is not None:
        d = report.diff
        out += [f"## Since {d.previous_quarter}", ""]
        out += [f"- new: {', '.join(d.new[:limit]) or 'none'}"]
        out += ["- resolved: " + (", ".join(f"{r.key} ({r.why})" for r in d.resolved[:limit]) or "none")]
        out += [f"- still pending: {', '.join(d.pending[:limit]) or 'none'}", ""]
    if report.backups is not None:
        b = report.backups
        out += ["## Backups", "", _backup_summary(b), ""]
        if b.expired:
            out += ["| backup of | kept until | size | purge |", "|---|---|---|---|"]
            out += [
                f"| {_md_cell(f'{r.reference.platform}:{r.reference}')} | {r.retain_until:%Y-%m-%d} | "
                f"{human_bytes(r.size_bytes)} | `{_md_cell(r.purge_command or '')}` |"
                for r in b.expired[:limit]
            ]
            out.append("")
        if b.model_exists:
            out += ["Backups of models that still exist:", ""]
            out += [f"- {_md_cell(f'{r.reference.platform}:{r.reference}')}: `{r.location}`" for r in b.model_exists]
            out.append("")
    return "\n".join(out)


def render_table(report: ReviewReport, limit: int = MAX_ROWS) -> str:
    """The report as plain-text tables, for the terminal."""
    out = [f"Retention review {report.quarter} (policy {report.policy})", *_summary_lines(report), ""]
    for outcome, title in (("candidate", "CANDIDATES"), ("protected", "PROTECTED")):
        rows = table_rows(report, outcome, limit)
        out.append(f"{title} ({len(report.by_outcome(outcome))})")
        if not rows:
            out += ["  none", ""]
            continue
        cols = ("version", "platform", "stage", "rule", "size", "reason")
        widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols[:-1]}
        out.append("  " + "  ".join(c.upper().ljust(widths.get(c, 0)) for c in cols).rstrip())
        out += ["  " + "  ".join(r[c].ljust(widths.get(c, 0)) for c in cols).rstrip() for r in rows]
        out.append("")
    if report.diff is not None:
        d = report.diff
        out.append(f"SINCE {d.previous_quarter}")
        out.append(f"  new: {', '.join(d.new) or 'none'}")
        out.append("  resolved: " + (", ".join(f"{r.key} ({r.why})" for r in d.resolved) or "none"))
        out.append(f"  still pending: {', '.join(d.pending) or 'none'}")
        out.append("")
    if report.backups is not None:
        out += _backup_lines(report.backups, limit)
    return "\n".join(out).rstrip() + "\n"


def render_digest(report: ReviewReport, top: int = 5) -> str:
    """A few lines for Slack: totals, the diff, the largest candidates."""
    lines = [f"*Retention review {report.quarter}*", *_summary_lines(report)]
    biggest = sorted(report.candidates, key=lambda d: d.size_bytes or 0, reverse=True)[:top]
    for d in biggest:
        size = human_bytes(d.size_bytes) if d.size_bytes is not None else "size unknown"
        lines.append(f"- {d.reference.platform}:{d.reference} ({size}): {d.rule}, {d.reason}")
    if len(report.candidates) > top:
        lines.append(f"... and {len(report.candidates) - top} more.")
    return "\n".join(lines)


def report_json(report: ReviewReport) -> str:
    """The report as indented JSON."""
    return json.dumps(report.model_dump(mode="json"), indent=2)


# --- opening retirements ------------------------------------------------------------------------


def retirement_requests(
    report: ReviewReport, *, requester: str, approvers: Sequence[str]
) -> list[tuple[str, RetirementRequest]]:
    """One retirement request per candidate, with its idempotency key ``review-<quarter>-<platform>-<ref>``.

    Raises:
        pydantic.ValidationError: the requester or approvers are not valid (checked before any is opened).
    """
    result = []
    for d in report.candidates:
        request = RetirementRequest(
            model=str(d.reference),
            platform=d.reference.platform,
            requester=requester,
            approvers=list(approvers),
            reason=f"Retention review {report.quarter}: {d.rule}: {d.reason}",
        )
        result.append((f"review-{report.quarter}-{d.reference.platform}-{d.reference}", request))
    return result


__all__ = [
    "BackupReview",
    "BackupRow",
    "ReviewDiff",
    "ReviewReport",
    "ReviewStore",
    "ReviewTotals",
    "SampledTraffic",
    "human_bytes",
    "platform_catalog",
    "purge_command",
    "quarter_of",
    "render_digest",
    "render_markdown",
    "render_table",
    "report_json",
    "retirement_requests",
    "review_backups",
    "review_entries",
    "run_review",
    "table_rows",
    "traffic_for",
    "version_key",
]
