"""The durable state of each retirement across its flow runs, and the one-retirement-per-model claim."""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from pydantic import BaseModel, Field

from retirement.errors import ConflictError, InputError, NotFoundError
from retirement.models import (
    Approval,
    DeletionReceipt,
    Dossier,
    ModelRef,
    Phase,
    RetirementRequest,
    TrafficReport,
    utcnow,
)

Status = Literal["running", "waiting", "awaiting_approval", "halted", "done"]


class PhaseRecord(BaseModel):
    """When a phase ran and how it ended."""

    phase: Phase = Field(description="The phase.")
    started_at: datetime = Field(default_factory=utcnow, description="When it started.")
    ended_at: datetime | None = Field(default=None, description="When it ended.")
    outcome: str = Field(default="", description="How it ended, in words.")


class RetirementState(BaseModel):
    """Everything a later run of the same retirement needs to know; kept as JSON under RETIRE_HOME."""

    id: str = Field(description="The retirement id; also the tag of every flow run of it.")
    request: RetirementRequest = Field(description="The request as submitted.")
    created_at: datetime = Field(default_factory=utcnow, description="When the retirement was opened.")
    status: Status = Field(default="running", description="Where the retirement stands.")
    status_reason: str = Field(default="", description="Why, for halted or waiting retirements.")
    phase: Phase = Field(default=Phase.DOCUMENT, description="The current (or next) phase.")
    history: list[PhaseRecord] = Field(default_factory=list, description="Every phase run, in order.")
    approvals: list[Approval] = Field(default_factory=list, description="Every gate decision.")
    dossier: Dossier | None = Field(default=None, description="The dossier made in phase 1.")
    previous_production: ModelRef | None = Field(
        default=None, description="What production served before the cutover (the rollback target)."
    )
    cutover_at: datetime | None = Field(default=None, description="When production switched to the replacement.")
    rolled_back: bool = Field(default=False, description="True once a rollback restored the old model.")
    window_start: datetime | None = Field(default=None, description="Start of the traffic window.")
    window_end: datetime | None = Field(default=None, description="End of the traffic window.")
    traffic: list[TrafficReport] = Field(default_factory=list, description="Every traffic verdict taken.")
    backup_location: str | None = Field(default=None, description="The backup of the old model.")
    backup_manifest_sha256: str | None = Field(default=None, description="SHA-256 of its manifest.json.")
    soft_deleted_at: datetime | None = Field(default=None, description="When the soft step was taken.")
    receipt: DeletionReceipt | None = Field(default=None, description="The deletion receipt.")
    monitor_checks: list[dict[str, object]] = Field(default_factory=list, description="Daily checks after delete.")
    next_run_at: datetime | None = Field(default=None, description="When the next phase is scheduled.")
    next_phase: Phase | None = Field(default=None, description="The phase scheduled next.")
    slack_thread: str | None = Field(default=None, description="The notification thread of this retirement.")
    pending_gate: str | None = Field(default=None, description="The gate key waiting for an answer, if any.")
    gate_deadline: datetime | None = Field(default=None, description="When the pending gate fails safe.")
    gate_run: str | None = Field(default=None, description="The flow run waiting at the pending gate.")
    gate_expiry_run: str | None = Field(default=None, description="The scheduled run that expires the pending gate.")
    gate_attempts: dict[str, int] = Field(default_factory=dict, description="How often each gate was asked.")
    scheduled: dict[str, int] = Field(default_factory=dict, description="How often each phase was scheduled.")
    bake: list[dict[str, object]] = Field(default_factory=list, description="Samples taken during the bake.")
    flow_runs: list[str] = Field(default_factory=list, description="Ids of the flow runs of this retirement.")

    @property
    def ref(self) -> ModelRef:
        """The reference being retired."""
        return self.request.ref

    def approval(self, gate: str) -> Approval | None:
        """The latest decision recorded for ``gate``, if any."""
        found = [a for a in self.approvals if a.gate == gate]
        return found[-1] if found else None

    def enter(self, phase: Phase) -> None:
        """Record that ``phase`` starts (again)."""
        self.phase = phase
        self.status = "running"
        self.history.append(PhaseRecord(phase=phase))

    def leave(self, outcome: str) -> None:
        """Record how the current phase ended."""
        if self.history and self.history[-1].ended_at is None:
            self.history[-1].ended_at = utcnow()
            self.history[-1].outcome = outcome


def new_retirement_id(ref: ModelRef) -> str:
    """A readable, unique id: ``ret-<name>-<version>-<random>`` with unsafe characters replaced."""
    stem = "".join(c if c.isascii() and c.isalnum() else "-" for c in str(ref).lower())[:40].strip("-")
    while "--" in stem:
        stem = stem.replace("--", "-")
    return f"ret-{stem}-{secrets.token_hex(3)}"


class StateStore:
    """Retirement states as JSON files, written atomically; claims so one retirement runs per model.

    The folder must be shared by every worker that runs retirements (RETIRE_HOME on shared storage).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, retirement_id: str) -> Path:
        if not retirement_id or "/" in retirement_id or retirement_id.startswith(".") or "\x00" in retirement_id:
            raise InputError(
                "retirement_id", f"invalid id {retirement_id!r}", "an id such as 'ret-churn-model-3-a1b2c3'"
            )
        return self.root / f"{retirement_id}.json"

    def load(self, retirement_id: str) -> RetirementState:
        """The state of one retirement.

        Raises:
            NotFoundError: no retirement has that id.
        """
        path = self._path(retirement_id)
        if not path.exists():
            raise NotFoundError(f"no retirement {retirement_id!r} under {self.root}")
        return RetirementState.model_validate_json(path.read_text(encoding="utf-8"))

    def save(self, state: RetirementState) -> None:
        """Write the state atomically (a crash never leaves half a file)."""
        path = self._path(state.id)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{state.id}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(state.model_dump_json(indent=2))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def by_flow_run(self, flow_run_id: str) -> RetirementState | None:
        """The retirement a flow run belongs to (a run replayed after a suspend finds its own)."""
        for state in self.all():
            if flow_run_id in state.flow_runs:
                return state
        return None

    def all(self) -> list[RetirementState]:
        """Every retirement, newest first."""
        if not self.root.exists():
            return []
        states = [RetirementState.model_validate_json(p.read_text()) for p in self.root.glob("ret-*.json")]
        return sorted(states, key=lambda s: s.created_at, reverse=True)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".claims.lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _claim_path(self, ref: ModelRef) -> Path:
        return self.root / "claims" / quote(f"{ref.platform}:{ref}", safe="")

    def claim(self, ref: ModelRef, retirement_id: str) -> None:
        """Mark ``ref`` as being retired by ``retirement_id``.

        Raises:
            ConflictError: another open retirement holds it; the message names that retirement.
        """
        with self._locked():
            path = self._claim_path(ref)
            if path.exists():
                holder = json.loads(path.read_text())["retirement_id"]
                if holder != retirement_id:
                    try:
                        other = self.load(holder)
                        where = f"phase {other.phase.value}, {other.status}"
                        if other.status in ("halted", "done"):
                            path.unlink()
                            holder = ""
                    except NotFoundError:
                        path.unlink()
                        holder = ""
                    if holder:
                        raise ConflictError(
                            f"{ref} on {ref.platform} is already being retired by {holder} ({where}); "
                            "one retirement per model at a time: wait for it, or halt it with "
                            f"`retire status {holder}`"
                        )
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"retirement_id": retirement_id}))

    def release(self, ref: ModelRef, retirement_id: str) -> None:
        """Drop the claim on ``ref`` if ``retirement_id`` holds it."""
        with self._locked():
            path = self._claim_path(ref)
            if path.exists() and json.loads(path.read_text())["retirement_id"] == retirement_id:
                path.unlink()
