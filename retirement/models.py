"""The domain of a retirement, in pydantic: references, requests, dossiers, verdicts, backups, receipts."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from retirement.errors import InputError

VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$"
_VERSION_RE = re.compile(VERSION_PATTERN)
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


def check_name(field: str, name: str) -> str:
    """Refuse model names no platform accepts: empty, too long, control characters, '@'.

    Platform-specific rules (the local platform refuses '/' and '..') live in the adapters.
    """
    if not isinstance(name, str) or not name.strip():
        raise InputError(field, "is empty", "a model name such as 'churn-model'")
    if len(name) > 256:
        raise InputError(field, f"is {len(name)} characters long", "at most 256 characters")
    if _CONTROL_RE.search(name):
        raise InputError(field, "contains a control character (NUL, newline, ...)", "printable text")
    if "@" in name:
        raise InputError(field, f"{name!r} contains '@'", "'@' only between name and version")
    if name != name.strip():
        raise InputError(field, f"{name!r} has leading or trailing spaces", "no surrounding spaces")
    return name


def check_version(field: str, version: str) -> str:
    """Refuse version identifiers that are not a plain token."""
    if not _VERSION_RE.match(version or ""):
        raise InputError(
            field,
            f"invalid version {version!r}",
            "letters, digits, '.', '_', '+', '-', starting with a letter or digit, e.g. '3' or '1.2.0'",
        )
    return version


class ModelRef(BaseModel):
    """A model, or one version of it, on one platform."""

    model_config = ConfigDict(frozen=True)

    platform: str = Field(default="local", description="Platform the model lives on, e.g. 'local'.")
    name: str = Field(description="The platform's name or id of the model, e.g. 'churn-model'.")
    version: str | None = Field(
        default=None,
        description="Version, checkpoint or release; None when the platform's unit is the model.",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name("name", value)

    @field_validator("version")
    @classmethod
    def _version(cls, value: str | None) -> str | None:
        return None if value is None else check_version("version", value)

    @classmethod
    def parse(cls, text: str, platform: str = "local", field: str = "model") -> ModelRef:
        """Parse ``name@version`` (or ``name`` alone) into a reference.

        Raises:
            InputError: naming ``field`` when the text is not of that form.
        """
        if not isinstance(text, str) or not text.strip():
            raise InputError(field, "is empty", "'name@version', e.g. 'churn-model@3'")
        if text != text.strip():
            raise InputError(field, f"{text!r} has surrounding spaces", "'name@version' with no spaces")
        name, sep, version = text.partition("@")
        if sep and not version:
            raise InputError(field, f"{text!r} has '@' but no version", "'name@version', e.g. 'churn-model@3'")
        if "@" in version:
            raise InputError(field, f"{text!r} has more than one '@'", "'name@version', e.g. 'churn-model@3'")
        try:
            check_name(field, name)
            if sep:
                check_version(field, version)
        except InputError as exc:
            raise InputError(field, f"{text!r}: {exc.problem}", exc.allowed) from None
        return cls(platform=platform, name=name, version=version if sep else None)

    def __str__(self) -> str:
        return f"{self.name}@{self.version}" if self.version is not None else self.name

    @property
    def model(self) -> ModelRef:
        """The reference to the whole model (no version)."""
        return self.model_copy(update={"version": None})


class Phase(StrEnum):
    """The protocol's phases, in order."""

    DOCUMENT = "document"
    STAGING = "staging"
    CUTOVER = "cutover"
    TRAFFIC_WINDOW = "traffic_window"
    VERIFY_IDLE = "verify_idle"
    BACKUP = "backup"
    DELETE = "delete"
    MONITOR = "monitor"
    DONE = "done"


class RetirementRequest(BaseModel):
    """One retirement: what to retire, what replaces it, who asks, who approves, and the windows.

    This is the form of the ``retire-model`` deployment in the Prefect UI.
    """

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        description="The model version to retire, as `name@version` (e.g. `churn-model@3`); "
        "`name` alone where the platform's unit is the whole model (OpenAI fine-tunes, Selise).",
        min_length=1,
    )
    platform: str = Field(
        default="local",
        description="Platform the model lives on: local, mlflow, replicate, openai, bailo, selise, datature-vi.",
    )
    replacement: str | None = Field(
        default=None,
        description="The version that takes over production (`name@version`). Leave empty when "
        "nothing replaces it (an old superseded or never-deployed version): staging and cutover are skipped.",
    )
    requester: str = Field(description="Who asks for the retirement (user name or email).", min_length=1)
    approvers: list[str] = Field(
        description="Who may approve the gates. The deletion gate needs one of them other than the requester.",
        min_length=1,
    )
    reason: str = Field(description="Why the model is retired; goes into the dossier and the changelog.", min_length=3)
    dry_run: bool = Field(default=False, description="Stop after the dossier and the plan; change nothing.")
    serving: str | None = Field(
        default=None,
        description="Serving target for staging and cutover: the platform's own when empty, or `manual` "
        "for a checklist gate where the platform has no API for it.",
    )
    traffic_sources: list[str] = Field(
        default_factory=list,
        description="Where requests to the old model are observed (e.g. `local`, `prometheus`); "
        "empty = the platform's own. Every source must observe zero requests over the whole window.",
    )
    traffic_window_hours: float = Field(
        default=48.0,
        gt=0,
        description="How long the old model must see zero requests after cutover before it may be deleted "
        "(hours; never below the server's minimum, RETIRE_MIN_TRAFFIC_WINDOW_HOURS).",
    )
    cutover_window: str | None = Field(
        default=None,
        pattern=r"^([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-3]):[0-5]\d$",
        description="Low-traffic window for the cutover as `HH:MM-HH:MM` in `timezone` (e.g. `02:00-04:00`); "
        "empty = now.",
    )
    timezone: str = Field(default="UTC", description="IANA timezone of the cutover window, e.g. `Europe/Berlin`.")
    bake_minutes: float = Field(
        default=30.0, ge=0, description="How long to watch the replacement after cutover before going on (minutes)."
    )
    max_error_rate: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="Bake threshold: error rate of the replacement above this rolls back (0-1).",
    )
    max_p95_latency_ms: float = Field(
        default=1000.0, gt=0, description="Bake threshold: p95 latency of the replacement above this rolls back (ms)."
    )
    bake_unobserved: Literal["halt", "rollback"] = Field(
        default="halt",
        description="What a bake sample the traffic sources could not observe (ERROR or NODATA) does: **halt** stops "
        "the retirement there (production stays on the replacement, the old version untouched); **rollback** puts "
        "production back on the old version first. Never a pass.",
    )
    delete_confirm_hours: float = Field(
        default=24.0,
        gt=0,
        le=720,
        description="How long a delete the platform accepted may take to show as gone (asynchronous deletes) before "
        "the retirement halts and asks a person (hours). Re-checked by scheduled runs, cancellable in the UI.",
    )
    soft_delete: bool = Field(
        default=False,
        description="Deactivate or deprecate first and wait `pending_delete_hours` (cancellable) before deleting.",
    )
    pending_delete_hours: float = Field(
        default=24.0, ge=0, description="Pending window between the soft step and the delete (hours)."
    )
    monitor_days: float = Field(default=7, ge=0, le=90, description="Days of checks after the delete (7 = a week).")
    monitor_interval_hours: float = Field(
        default=24.0, gt=0, description="Time between two monitoring checks (hours; one a day by default)."
    )
    backup_retention_days: int = Field(
        default=30, ge=1, le=3650, description="How long the backup is kept after the delete (days)."
    )
    gate_timeout_hours: float = Field(
        default=72.0, gt=0, description="How long an approval gate waits before it fails safe (hours)."
    )

    @field_validator("platform")
    @classmethod
    def _platform(cls, value: str) -> str:
        from retirement.platforms import PLATFORM_NAMES

        if value not in PLATFORM_NAMES:
            raise InputError("platform", f"unknown platform {value!r}", ", ".join(sorted(PLATFORM_NAMES)))
        return value

    @field_validator("approvers")
    @classmethod
    def _approvers(cls, value: list[str]) -> list[str]:
        cleaned = [a.strip() for a in value]
        if any(not a for a in cleaned):
            raise InputError("approvers", "contains an empty name", "non-empty user names or emails")
        return cleaned

    @model_validator(mode="after")
    def _references(self) -> RetirementRequest:
        old = ModelRef.parse(self.model, self.platform, field="model")
        if self.replacement is not None:
            new = ModelRef.parse(self.replacement, self.platform, field="replacement")
            if new == old:
                raise InputError("replacement", f"{self.replacement!r} is the model being retired", "another version")
        if not [a for a in self.approvers if a != self.requester]:
            raise InputError(
                "approvers",
                f"only the requester {self.requester!r} is listed",
                "at least one approver other than the requester (the deletion gate needs one)",
            )
        return self

    @property
    def ref(self) -> ModelRef:
        """The reference being retired."""
        return ModelRef.parse(self.model, self.platform, field="model")

    @property
    def replacement_ref(self) -> ModelRef | None:
        """The replacement's reference, if any."""
        return None if self.replacement is None else ModelRef.parse(self.replacement, self.platform, "replacement")


class Dependent(BaseModel):
    """Something that points at the model: an alias, a deployment, an agent, a consumer, a child."""

    kind: Literal[
        "alias", "deployment", "consumer", "agent", "fine_tune_child", "version_override", "webhook", "other"
    ] = Field(description="What kind of thing depends on the model.")
    name: str = Field(description="Its name or id on the platform.")
    detail: str = Field(default="", description="Anything a reviewer needs to know about it.")
    movable: bool = Field(
        default=False,
        description="True when the protocol's cutover moves it to the replacement (e.g. the production alias).",
    )


class DeletionBlocker(BaseModel):
    """A reason, from the platform's own rules or from a dependent, why the model cannot be deleted now."""

    code: str = Field(description="Stable code, e.g. 'alias', 'not_owner', 'base_model', 'has_versions'.")
    message: str = Field(description="What blocks the deletion, in plain words.")
    remedy: str = Field(default="", description="What would lift the blocker.")
    cleared_by_protocol: bool = Field(
        default=False, description="True when a phase of this protocol lifts it (e.g. cutover moves the alias)."
    )


class Capabilities(BaseModel):
    """What a platform adapter can do, so the plan says honestly what a deletion loses."""

    weights_exportable: bool = Field(description="Weights and adapters can be downloaded for a backup.")
    exports: list[str] = Field(default_factory=list, description="What a backup captures on this platform.")
    not_exportable: list[str] = Field(default_factory=list, description="What a backup cannot capture here.")
    soft_delete: Literal["deactivate", "deprecate", "rename", None] = Field(
        default=None, description="The reversible step the platform offers before a delete, if any."
    )
    restore: bool = Field(default=False, description="A backup can be restored onto the platform.")
    cutover: bool = Field(default=False, description="The platform has an API to switch production.")
    traffic: bool = Field(default=False, description="The platform reports requests per model over a time window.")
    delete_unit: Literal["version", "model", "run"] = Field(
        default="version", description="What one delete removes: a version, the whole model, or a training run."
    )
    cascade: list[str] = Field(default_factory=list, description="What else a delete removes with it.")


class VersionInfo(BaseModel):
    """One version of a model as the platform describes it."""

    version: str = Field(description="The version identifier.")
    created_at: datetime | None = Field(default=None, description="When it was created.")
    stage: str | None = Field(default=None, description="Lifecycle stage or status, e.g. 'production', 'failed'.")
    aliases: list[str] = Field(default_factory=list, description="Aliases pointing at this version.")
    tags: dict[str, str] = Field(default_factory=dict, description="Tags on this version.")
    size_bytes: int | None = Field(default=None, description="Total size of its files, when known.")
    active: bool = Field(default=True, description="False when deactivated or deprecated.")


class CatalogEntry(BaseModel):
    """One version as listed for a retention review: enough to decide without another call."""

    reference: ModelRef = Field(description="The version.")
    created_at: datetime = Field(description="When the version was created.")
    stage: str | None = Field(
        default=None, description="Where it stands: production, staging, archived, experiment, failed, ..."
    )
    status: str | None = Field(
        default=None, description="Last lifecycle event: promoted, rejected, superseded, failed, ... (None if none)."
    )
    status_changed_at: datetime | None = Field(default=None, description="When that event happened.")
    aliases: list[str] = Field(default_factory=list, description="Aliases pointing at it (production, staging, ...).")
    tags: dict[str, str] = Field(default_factory=dict, description="Tags on the version (keep, legal-hold, ...).")
    dependents: list[Dependent] = Field(default_factory=list, description="Everything else that points at it.")
    size_bytes: int | None = Field(default=None, description="Storage it takes, when known.")
    active: bool = Field(default=True, description="False when deactivated or deprecated.")


class PlanStep(BaseModel):
    """One action the retirement will take, as shown in the plan table."""

    phase: Phase = Field(description="The phase that takes the action.")
    action: str = Field(description="What will be done.")
    destructive: bool = Field(default=False, description="True when it changes production or deletes data.")
    gate: str | None = Field(default=None, description="The approval gate that must pass first, if any.")
    when: str = Field(default="", description="When it happens, in words.")


class Dossier(BaseModel):
    """Everything known about the model before it is retired; written to the backup and the UI."""

    reference: ModelRef = Field(description="The model (version) being retired.")
    description: str = Field(default="", description="The platform's description of the model.")
    versions: list[VersionInfo] = Field(default_factory=list, description="Every version of the model.")
    metrics: dict[str, Any] = Field(default_factory=dict, description="Performance metrics of the version.")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Platform metadata (sanitized).")
    deployed_at: list[str] = Field(default_factory=list, description="Where the version serves traffic.")
    dependents: list[Dependent] = Field(default_factory=list, description="Who or what depends on it.")
    blockers: list[DeletionBlocker] = Field(default_factory=list, description="What forbids deleting it now.")
    refusals: list[str] = Field(
        default_factory=list,
        description="Why this retirement can never finish as asked, each with its remedy (empty = it can). "
        "`retire plan` shows them and exits non-zero, `retire start` refuses, and the document phase halts on them "
        "before the plan gate: nothing is done.",
    )
    known_issues: list[str] = Field(default_factory=list, description="Known issues and limitations.")
    capabilities: Capabilities | None = Field(default=None, description="What the platform allows.")
    plan: list[PlanStep] = Field(default_factory=list, description="Every action to come, in order.")
    created_at: datetime = Field(default_factory=utcnow, description="When the dossier was made.")

    def summary(self) -> str:
        """A few lines for an approval gate or a Slack message."""
        lines = [f"**{self.reference}** on `{self.reference.platform}`"]
        if self.deployed_at:
            lines.append("Serving: " + ", ".join(self.deployed_at))
        if self.dependents:
            lines.append("Dependents: " + ", ".join(f"{d.kind} {d.name}" for d in self.dependents))
        if self.blockers:
            lines.append("Blockers: " + "; ".join(b.message for b in self.blockers))
        if self.capabilities is not None:
            if self.capabilities.exports:
                lines.append("Backup captures: " + ", ".join(self.capabilities.exports))
            if self.capabilities.not_exportable:
                lines.append("Backup CANNOT capture: " + ", ".join(self.capabilities.not_exportable))
        return "\n\n".join(lines)


class TrafficVerdict(StrEnum):
    """The four outcomes of a traffic check. Only IDLE lets a deletion go on."""

    IDLE = "IDLE"
    ACTIVE = "ACTIVE"
    NODATA = "NODATA"
    ERROR = "ERROR"


class TrafficSample(BaseModel):
    """What one source observed for one model over [start, end)."""

    source: str = Field(description="The traffic source, e.g. 'local' or 'prometheus'.")
    reference: ModelRef = Field(description="The model (version) observed.")
    start: datetime = Field(description="Start of the window (inclusive).")
    end: datetime = Field(description="End of the window (exclusive).")
    requests: int | None = Field(default=None, description="Requests in the window; None when unknown.")
    errors: int | None = Field(default=None, description="Error answers in the window; None when unknown.")
    p95_latency_ms: float | None = Field(default=None, description="95th percentile latency, when known.")
    coverage: float = Field(
        default=0.0, ge=0, le=1, description="Share of the window the source has data for (1 = whole window)."
    )
    verdict: TrafficVerdict = Field(description="This source's verdict for the window.")
    detail: str = Field(default="", description="Why this verdict, in words.")


class TrafficReport(BaseModel):
    """The combined verdict of every configured source over one window."""

    reference: ModelRef = Field(description="The model (version) observed.")
    start: datetime = Field(description="Start of the window.")
    end: datetime = Field(description="End of the window.")
    verdict: TrafficVerdict = Field(description="IDLE only if every source is IDLE.")
    samples: list[TrafficSample] = Field(default_factory=list, description="One sample per source.")
    reason: str = Field(default="", description="Why this verdict; names any disagreement between sources.")


class ManifestFile(BaseModel):
    """One file of a backup."""

    path: str = Field(description="Path relative to the backup folder, '/'-separated.")
    size: int = Field(ge=0, description="Size in bytes.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the content, hex.")


class BackupManifest(BaseModel):
    """What a backup holds; written as manifest.json beside the files."""

    source: ModelRef = Field(description="The model (version) backed up.")
    location: str = Field(description="Where the backup is (a folder path for the filesystem store).")
    created_at: datetime = Field(default_factory=utcnow, description="When the backup was written.")
    retain_until: datetime = Field(description="Until when the backup must be kept.")
    files: list[ManifestFile] = Field(default_factory=list, description="Every file with its size and SHA-256.")
    captures: list[str] = Field(default_factory=list, description="What this backup holds, in words.")
    not_captured: list[str] = Field(default_factory=list, description="What the platform would not let out.")
    platform_metadata: dict[str, Any] = Field(default_factory=dict, description="The platform's metadata (sanitized).")

    @property
    def total_bytes(self) -> int:
        """Sum of the file sizes."""
        return sum(f.size for f in self.files)


class VerifyReport(BaseModel):
    """The result of re-reading a backup against its manifest."""

    location: str = Field(description="The backup verified.")
    ok: bool = Field(description="True when every file matched and nothing was missing or extra.")
    files_checked: int = Field(description="Files re-read.")
    bytes_checked: int = Field(description="Bytes re-read.")
    mismatches: list[str] = Field(default_factory=list, description="One line per problem.")
    verified_at: datetime = Field(default_factory=utcnow, description="When it was verified.")


class DeletionReceipt(BaseModel):
    """Proof of a delete: what was removed and that it is gone."""

    reference: ModelRef = Field(description="What was deleted.")
    deleted_at: datetime = Field(default_factory=utcnow, description="When.")
    removed: list[str] = Field(default_factory=list, description="Everything the delete removed.")
    verified_gone: bool = Field(default=False, description="True once the platform answered 'not found'.")
    platform_response: dict[str, Any] = Field(default_factory=dict, description="The platform's answer (sanitized).")
    backup_location: str | None = Field(default=None, description="The verified backup taken before the delete.")


class Approval(BaseModel):
    """A recorded gate decision."""

    gate: str = Field(description="The gate answered, e.g. 'approve-plan'.")
    decision: Literal["approve", "reject"] = Field(description="The decision.")
    approver: str = Field(description="Who answered.")
    comment: str = Field(default="", description="The approver's comment.")
    at: datetime = Field(default_factory=utcnow, description="When.")
    backup_manifest_sha256: str | None = Field(
        default=None, description="Deletion gate: the SHA-256 of the backup manifest the approver was shown."
    )
    backup_location: str | None = Field(default=None, description="Deletion gate: the backup the approver was shown.")


class SmokeResult(BaseModel):
    """The result of smoke-testing a deployed version with golden requests."""

    reference: ModelRef = Field(description="The version tested.")
    requests: int = Field(description="Golden requests sent.")
    errors: int = Field(description="Requests that failed.")
    p95_latency_ms: float | None = Field(default=None, description="95th percentile latency.")
    ok: bool = Field(description="True when every request succeeded within the latency threshold.")
    detail: str = Field(default="", description="What failed, if anything.")


class NotificationStatus(StrEnum):
    """What a notification announces."""

    STARTED = "started"
    AWAITING_APPROVAL = "awaiting_approval"
    DONE = "done"
    FAILED = "failed"
    SCHEDULED = "scheduled"
    HALTED = "halted"
    ALERT = "alert"


class Notification(BaseModel):
    """One event of a retirement, for Slack or the console."""

    retirement_id: str = Field(description="The retirement this belongs to; one thread per retirement.")
    reference: str = Field(description="The model reference, e.g. 'churn-model@3'.")
    phase: Phase = Field(description="The phase the event belongs to.")
    status: NotificationStatus = Field(description="What happened.")
    text: str = Field(description="What and why, in a sentence or two (markdown).")
    next_step: str | None = Field(default=None, description="What comes next.")
    next_at: datetime | None = Field(default=None, description="When the next step is scheduled.")
    ui_url: str | None = Field(default=None, description="Link to the run in the Prefect UI.")


class NotifyReceipt(BaseModel):
    """What a notifier did with a notification."""

    delivered: bool = Field(description="True when the message reached its destination.")
    channel: str | None = Field(default=None, description="Where it went.")
    thread: str | None = Field(default=None, description="Thread id (Slack ts) for replies.")
    error: str | None = Field(default=None, description="Why it was not delivered.")
    attempts: int = Field(default=1, description="Attempts made.")


class AuditEvent(BaseModel):
    """One ledger line: an intent, an outcome or a decision, hash-chained to the previous line."""

    seq: int = Field(description="Position in the ledger, from 1.")
    at: datetime = Field(default_factory=utcnow, description="When it was recorded.")
    retirement_id: str = Field(description="The retirement it belongs to.")
    kind: Literal["intent", "outcome", "decision", "notice"] = Field(description="What kind of entry.")
    action: str = Field(description="What, e.g. 'delete', 'gate:approve-deletion', 'notify'.")
    actor: str = Field(default="system", description="Who or what did it.")
    reference: str | None = Field(default=None, description="The model reference concerned.")
    detail: dict[str, Any] = Field(default_factory=dict, description="Facts, sanitized of secrets.")
    prev_hash: str = Field(description="Hash of the previous entry ('0'*64 for the first).")
    hash: str = Field(description="SHA-256 of this entry without this field.")


@dataclass(frozen=True)
class ExportItem:
    """One file a registry lets out for a backup, opened lazily as a stream of chunks.

    ``open`` returns a fresh iterator of byte chunks each time it is called, so a failed
    download can be retried and nothing is held in memory.
    """

    path: str
    open: Callable[[], Iterator[bytes]]
    size: int | None = None
    sha256: str | None = None


__all__ = [
    "VERSION_PATTERN",
    "Approval",
    "AuditEvent",
    "BackupManifest",
    "Capabilities",
    "CatalogEntry",
    "DeletionBlocker",
    "DeletionReceipt",
    "Dependent",
    "Dossier",
    "ExportItem",
    "ManifestFile",
    "ModelRef",
    "Notification",
    "NotificationStatus",
    "NotifyReceipt",
    "Phase",
    "PlanStep",
    "RetirementRequest",
    "SmokeResult",
    "TrafficReport",
    "TrafficSample",
    "TrafficVerdict",
    "VerifyReport",
    "VersionInfo",
    "check_name",
    "check_version",
    "utcnow",
]
