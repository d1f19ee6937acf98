"""The durable state of each retirement across its flow runs, kept in the retirement database.

Many writers touch one retirement: the run working on it, a second worker, ``retire cancel``, a gate
answer, a gate deadline, the reconciler. Every write goes through :class:`StateStore`, which makes
the loser fail loudly instead of overwriting:

- each row carries a version; a save over a newer version raises :class:`StaleStateError`;
- ``halted``, ``cancelled`` and ``done`` are terminal: no write moves a retirement out of them;
- the one-retirement-per-model claim is a unique row taken in the transaction that opens the retirement
  and dropped in the transaction that ends it;
- a destructive call is fenced: right before it, the retirement is re-read under its lock, refused if it
  stopped, and the intent is written in that same transaction (:meth:`StateStore.fence`);
- ledger entries are written in the same transaction as the change they record.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlalchemy import Connection, Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from retirement import db
from retirement.errors import (
    ConflictError,
    NotFoundError,
    RetirementStoppedError,
    StaleStateError,
)
from retirement.ledger import Kind, Ledger
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

logger = logging.getLogger(__name__)

DELETION_GATE = "approve-deletion"  # its approval binds to one backup manifest

Status = Literal["running", "waiting", "awaiting_approval", "halted", "cancelled", "done"]
TERMINAL: frozenset[str] = frozenset({"halted", "cancelled", "done"})
OPEN: tuple[str, ...] = ("running", "waiting", "awaiting_approval")


class PhaseRecord(BaseModel):
    """When a phase ran and how it ended."""

    phase: Phase = Field(description="The phase.")
    started_at: datetime = Field(default_factory=utcnow, description="When it started.")
    ended_at: datetime | None = Field(default=None, description="When it ended.")
    outcome: str = Field(default="", description="How it ended, in words.")


class RetirementState(BaseModel):
    """Everything a later run of the same retirement needs to know; one versioned row of the store."""

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
    version: int = Field(
        default=0, description="The row version this copy was read at (a save over a newer one fails)."
    )
    run_id: str | None = Field(default=None, description="The flow run working on this retirement now, if any.")
    inflight: str | None = Field(
        default=None, description="The destructive call under way, between its intent and outcome."
    )
    resumes: list[dict[str, Any]] = Field(
        default_factory=list, description="Each time the reconciler resumed this retirement: when, why, which run."
    )
    drill: dict[str, Any] | None = Field(
        default=None, description="The restore drill of the current backup: what was restored, proved, or wrong."
    )
    delete_requested_at: datetime | None = Field(
        default=None, description="When the platform accepted a delete that had not shown as gone yet."
    )
    gate_manifest: str | None = Field(
        default=None, description="The backup manifest SHA-256 shown at the open deletion gate."
    )
    tampered_backups: list[dict[str, Any]] = Field(
        default_factory=list, description="Backups that failed verification after they were taken: where, how."
    )
    attention: str = Field(
        default="", description="Why a person must look at this retirement, if the system cannot go on."
    )

    @property
    def stopped(self) -> bool:
        """True once the retirement is halted, cancelled or done."""
        return self.status in TERMINAL

    @property
    def ref(self) -> ModelRef:
        """The reference being retired."""
        return self.request.ref

    def approval(self, gate: str) -> Approval | None:
        """The latest decision recorded for ``gate``, if any.

        A deletion approval counts only for the backup it was shown: once the backup is re-taken (the
        first one failed verification), the gate has no answer until someone approves the new one.
        """
        found = [a for a in self.approvals if a.gate == gate]
        if gate == DELETION_GATE:
            found = [
                a for a in found if a.decision == "reject" or a.backup_manifest_sha256 == self.backup_manifest_sha256
            ]
        return found[-1] if found else None

    def enter(self, phase: Phase) -> None:
        """Record that ``phase`` starts (again)."""
        self.phase = phase
        if not self.stopped:
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


def model_key(ref: ModelRef) -> str:
    """The claim key of a model reference: one open retirement per key."""
    return f"{ref.platform}:{ref}"


@dataclass
class Entry:
    """A ledger entry to write in the same transaction as a state change."""

    kind: Kind
    action: str
    actor: str = "system"
    detail: dict[str, Any] | None = None


@dataclass
class Change:
    """A retirement read under its lock inside a transaction; what is recorded commits with it."""

    state: RetirementState
    entries: list[Entry] = field(default_factory=list)

    def record(self, kind: Kind, action: str, *, actor: str = "system", detail: dict[str, Any] | None = None) -> None:
        """Add a ledger entry to this transaction."""
        self.entries.append(Entry(kind, action, actor, detail))


def adopt(target: RetirementState, source: RetirementState) -> None:
    """Make ``target`` (a caller's copy) equal to ``source`` (what is stored)."""
    for name in RetirementState.model_fields:
        setattr(target, name, getattr(source, name))


class StateStore:
    """Retirements as versioned rows, the per-model claim, and the run working on each retirement.

    Backed by SQLite under RETIRE_HOME by default and by PostgreSQL when RETIRE_DATABASE_URL names one
    (many workers on many machines); nothing about a retirement's state lives in files workers share.
    """

    def __init__(self, engine: Engine, ledger: Ledger) -> None:
        self.engine = engine
        self.ledger = ledger

    # --- reading ----------------------------------------------------------------------------------

    def _parse(self, row: Any, run_ids: list[str] | None = None) -> RetirementState:
        state = RetirementState.model_validate_json(row.data)
        state.version = int(row.version)
        if run_ids is not None:
            state.flow_runs = run_ids
        return state

    def _runs(self, conn: Connection, retirement_id: str) -> list[str]:
        query = select(db.flow_runs.c.flow_run_id).where(db.flow_runs.c.retirement_id == retirement_id)
        return [r.flow_run_id for r in conn.execute(query)]

    def load(self, retirement_id: str) -> RetirementState:
        """The state of one retirement, as stored now.

        Raises:
            NotFoundError: no retirement has that id.
        """
        with db.reading(self.engine) as conn:
            row = conn.execute(select(db.retirements).where(db.retirements.c.id == retirement_id)).first()
            if row is None:
                raise NotFoundError(f"no retirement {retirement_id!r} in {db.safe_url(str(self.engine.url))}")
            return self._parse(row, self._runs(conn, retirement_id))

    def by_flow_run(self, flow_run_id: str) -> RetirementState | None:
        """The retirement a flow run belongs to (a run replayed after a suspend finds its own)."""
        with db.reading(self.engine) as conn:
            rid = conn.execute(
                select(db.flow_runs.c.retirement_id).where(db.flow_runs.c.flow_run_id == flow_run_id)
            ).scalar()
        return self.load(rid) if rid else None

    def by_status(self, statuses: Iterable[str] | None = None, limit: int | None = None) -> list[RetirementState]:
        """Retirements (with one of ``statuses`` when given), newest first."""
        query = select(db.retirements).order_by(db.retirements.c.created_at.desc())
        if statuses is not None:
            query = query.where(db.retirements.c.status.in_(list(statuses)))
        if limit is not None:
            query = query.limit(limit)
        with db.reading(self.engine) as conn:
            rows = conn.execute(query).all()
            runs: dict[str, list[str]] = {}
            ids = [r.id for r in rows]
            for chunk in range(0, len(ids), 500):
                for run in conn.execute(
                    select(db.flow_runs).where(db.flow_runs.c.retirement_id.in_(ids[chunk : chunk + 500]))
                ):
                    runs.setdefault(run.retirement_id, []).append(run.flow_run_id)
        return [self._parse(r, runs.get(r.id, [])) for r in rows]

    def all(self) -> list[RetirementState]:
        """Every retirement, newest first."""
        return self.by_status()

    def holder(self, ref: ModelRef) -> str | None:
        """The retirement holding the claim on ``ref``, if any."""
        with db.reading(self.engine) as conn:
            return conn.execute(
                select(db.claims.c.retirement_id).where(db.claims.c.model_key == model_key(ref))
            ).scalar()

    # --- writing ----------------------------------------------------------------------------------

    def _lock(self, conn: Connection, retirement_id: str) -> Any:
        query = select(db.retirements).where(db.retirements.c.id == retirement_id)
        if db.is_postgres(self.engine):
            query = query.with_for_update()
        row = conn.execute(query).first()
        if row is None:
            raise NotFoundError(f"no retirement {retirement_id!r}")
        return row

    def _write(self, conn: Connection, state: RetirementState, stored_status: str, entries: Iterable[Entry]) -> None:
        if stored_status in TERMINAL and state.status != stored_status:
            raise ConflictError(
                f"retirement {state.id} is {stored_status}: it cannot become {state.status} "
                "(halted, cancelled and done are final)"
            )
        version = state.version + 1
        data = state.model_copy(update={"version": version, "flow_runs": []}).model_dump_json()
        conn.execute(
            update(db.retirements)
            .where(db.retirements.c.id == state.id)
            .values(status=state.status, phase=state.phase.value, version=version, updated_at=utcnow(), data=data)
        )
        for entry in entries:
            self.ledger.append_in(
                conn,
                state.id,
                entry.kind,
                entry.action,
                actor=entry.actor,
                reference=str(state.ref),
                detail=entry.detail,
            )
        if state.status in TERMINAL:
            conn.execute(delete(db.claims).where(db.claims.c.retirement_id == state.id))

    def create(self, state: RetirementState, *entries: Entry) -> None:
        """Open a retirement and claim its model in one transaction.

        Raises:
            ConflictError: another open retirement holds the model; the message names it.
        """
        now = utcnow()
        key = model_key(state.ref)
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(db.claims).values(model_key=key, retirement_id=state.id, claimed_at=now))
                state.version = 1
                conn.execute(
                    insert(db.retirements).values(
                        id=state.id,
                        model_key=key,
                        status=state.status,
                        phase=state.phase.value,
                        version=1,
                        created_at=state.created_at,
                        updated_at=now,
                        data=state.model_dump_json(),
                    )
                )
                for entry in entries:
                    self.ledger.append_in(
                        conn,
                        state.id,
                        entry.kind,
                        entry.action,
                        actor=entry.actor,
                        reference=str(state.ref),
                        detail=entry.detail,
                    )
        except IntegrityError:
            state.version = 0
            holder = self.holder(state.ref)
            where = ""
            if holder:
                other = self.load(holder)
                where = f" (phase {other.phase.value}, {other.status}{', run ' + other.run_id if other.run_id else ''})"
            raise ConflictError(
                f"{state.ref} on {state.ref.platform} is already being retired by {holder}{where}; "
                f"one retirement per model at a time: wait for it, or stop it with `retire cancel {holder}`"
            ) from None

    def save(self, state: RetirementState, *entries: Entry) -> None:
        """Write ``state`` (and ``entries`` to the ledger) if nobody wrote it since it was read.

        Raises:
            StaleStateError: the stored row is newer than this copy; nothing was written.
            ConflictError: the change would move a halted, cancelled or done retirement.
        """
        with self.engine.begin() as conn:
            row = self._lock(conn, state.id)
            if int(row.version) != state.version:
                raise StaleStateError(
                    f"retirement {state.id} changed since it was read (read at version {state.version}, "
                    f"stored version {row.version}, {row.status}); this write was refused"
                )
            self._write(conn, state, row.status, entries)
        state.version += 1

    @contextmanager
    def transaction(self, retirement_id: str) -> Iterator[Change]:
        """The retirement as stored now, under its lock; changes and entries commit together on exit."""
        with self.engine.begin() as conn:
            row = self._lock(conn, retirement_id)
            change = Change(self._parse(row))
            yield change
            self._write(conn, change.state, row.status, change.entries)
        change.state.version += 1

    def refresh(self, state: RetirementState) -> RetirementState:
        """Bring ``state`` up to date with the store (in place) and return it."""
        adopt(state, self.load(state.id))
        return state

    def check_running(self, state: RetirementState, doing: str) -> None:
        """Between the steps of a long loop: stop if the retirement was cancelled or halted meanwhile.

        Raises:
            RetirementStoppedError: it was; ``state`` is brought up to date.
        """
        with db.reading(self.engine) as conn:
            row = conn.execute(
                select(db.retirements.c.status, db.retirements.c.version).where(db.retirements.c.id == state.id)
            ).first()
        if row is not None and row.status in TERMINAL:
            self.refresh(state)
            raise RetirementStoppedError(state.id, state.status, state.status_reason, doing)

    def fence(
        self, state: RetirementState, action: str, detail: dict[str, Any] | None = None, *, undo: bool = False
    ) -> None:
        """Right before a destructive call: re-read the retirement under its lock, refuse if it stopped,
        and write the intent and the call in flight in that same transaction.

        ``undo`` marks a call that puts things back (a rollback, a reactivation): it goes on after a cancel.

        Raises:
            RetirementStoppedError: the retirement was cancelled, halted or finished; nothing was written.
            StaleStateError: another writer changed it since ``state`` was read.
        """
        with self.engine.begin() as conn:
            row = self._lock(conn, state.id)
            if row.status in TERMINAL and not undo:
                stored = self._parse(row)
                raise RetirementStoppedError(state.id, stored.status, stored.status_reason, action)
            if int(row.version) != state.version:
                if not undo:
                    raise StaleStateError(
                        f"retirement {state.id} changed since it was read (version {state.version} -> {row.version}); "
                        f"{action} refused"
                    )
                adopt(state, self._parse(row, state.flow_runs))
            state.inflight = action
            self._write(conn, state, row.status, [Entry("intent", action, detail=detail)])
        state.version += 1

    def settle(
        self,
        state: RetirementState,
        action: str,
        apply: Callable[[RetirementState], None],
        detail: dict[str, Any] | None = None,
    ) -> RetirementState:
        """After a destructive call: record its outcome on the stored retirement whatever happened meanwhile
        (a cancel that landed during the call does not lose the fact that the call was made).

        ``state`` is brought up to date with what was stored.
        """
        runs = state.flow_runs
        with self.transaction(state.id) as change:
            apply(change.state)
            change.state.inflight = None
            change.record("outcome", action, detail=detail)
        adopt(state, change.state)
        state.flow_runs = runs
        return state

    def add_flow_run(self, state: RetirementState, flow_run_id: str) -> bool:
        """Link a flow run to the retirement (idempotent; the retirement's row is not touched)."""
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(db.flow_runs).values(flow_run_id=flow_run_id, retirement_id=state.id))
        except IntegrityError:
            return False
        if flow_run_id not in state.flow_runs:
            state.flow_runs.append(flow_run_id)
        return True

    def acquire_run(
        self,
        retirement_id: str,
        run_id: str,
        is_live: Callable[[str], bool],
        *,
        wait_seconds: float = 600,
        poll_seconds: float = 2,
    ) -> None:
        """Make ``run_id`` the one run working on the retirement; wait while another live run holds it.

        Raises:
            ConflictError: another run still works on it after ``wait_seconds``; names that run.
        """
        deadline = time.monotonic() + wait_seconds
        while True:
            holder = self.load(retirement_id).run_id
            if holder in (None, run_id) or not is_live(holder):
                with self.transaction(retirement_id) as change:
                    if change.state.run_id == holder:
                        change.state.run_id = run_id
                        return
                continue  # someone else took it between the read and the lock: look again
            if time.monotonic() >= deadline:
                raise ConflictError(
                    f"retirement {retirement_id} is being worked on by flow run {holder}; this run ({run_id}) waited "
                    f"{wait_seconds:g} s and did nothing. Cancel that run if it is stuck; the reconciler resumes the "
                    "retirement"
                )
            time.sleep(poll_seconds)

    def release_run(self, retirement_id: str, run_id: str) -> None:
        """The run stops working on the retirement (if it held it)."""
        with self.transaction(retirement_id) as change:
            if change.state.run_id == run_id:
                change.state.run_id = None

    # --- before the database ----------------------------------------------------------------------

    def import_files(self, state_dir: Path, ledger_file: Path) -> tuple[int, int]:
        """Import, once, retirements and the ledger kept as files before the database; the files are renamed.

        Returns:
            (retirements imported, ledger entries imported).
        """
        entries = 0
        if ledger_file.is_file() and self.ledger.head()[0] == 0:
            entries = self.ledger.import_lines(ledger_file)
            ledger_file.rename(ledger_file.with_name(ledger_file.name + ".imported"))
        files = sorted(state_dir.glob("ret-*.json")) if state_dir.is_dir() else []
        imported = 0
        for path in files:
            state = RetirementState.model_validate_json(path.read_text(encoding="utf-8"))
            runs = list(state.flow_runs)
            if state.status in TERMINAL:  # a finished retirement holds no claim
                with self.engine.begin() as conn:
                    conn.execute(
                        insert(db.retirements).values(
                            id=state.id,
                            model_key=model_key(state.ref),
                            status=state.status,
                            phase=state.phase.value,
                            version=1,
                            created_at=state.created_at,
                            updated_at=utcnow(),
                            data=state.model_dump_json(),
                        )
                    )
            else:
                self.create(state)
            for run in runs:
                self.add_flow_run(state, run)
            imported += 1
        if files:
            state_dir.rename(state_dir.with_name(state_dir.name + ".imported"))
            logger.info("imported %d retirements and %d ledger entries from files", imported, entries)
        return imported, entries
