"""The audit ledger: append-only entries in the retirement database, each chained to the previous one by hash.

The chain head (sequence number and hash of the newest entry) is one locked row, so an append
costs the same at ten entries and at ten million, and an entry can be written in the same
transaction as the state change it records. ``retire ledger export`` writes the JSON-lines form;
:func:`verify_lines` checks that form, :meth:`Ledger.verify` the database.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Connection, Engine, insert, select, update

from retirement import db
from retirement.errors import LedgerError, LedgerTamperedError
from retirement.models import AuditEvent, utcnow
from retirement.redact import redact

GENESIS = "0" * 64
Kind = Literal["intent", "outcome", "decision", "notice"]


def _digest(entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _entry_of_row(row: Any) -> dict[str, Any]:
    return {
        "seq": row.seq,
        "at": row.at,
        "retirement_id": row.retirement_id,
        "kind": row.kind,
        "action": row.action,
        "actor": row.actor,
        "reference": row.reference,
        "detail": json.loads(row.detail),
        "prev_hash": row.prev_hash,
        "hash": row.hash,
    }


class Ledger:
    """An append-only, hash-chained record of every decision and action, in the retirement database.

    An edited, removed, reordered or truncated entry is detected by :meth:`verify`.
    """

    def __init__(self, engine: Engine, *, name: str = "ledger") -> None:
        self.engine = engine
        self.name = name

    def append(
        self,
        retirement_id: str,
        kind: Kind,
        action: str,
        *,
        actor: str = "system",
        reference: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> AuditEvent:
        """Record one entry in its own transaction (secrets removed from ``detail``) and return it."""
        try:
            with self.engine.begin() as conn:
                return self.append_in(
                    conn, retirement_id, kind, action, actor=actor, reference=reference, detail=detail
                )
        except LedgerError:
            raise
        except Exception as exc:
            raise LedgerError(f"cannot append to the ledger ({self.name}): {exc}") from exc

    def append_in(
        self,
        conn: Connection,
        retirement_id: str,
        kind: Kind,
        action: str,
        *,
        actor: str = "system",
        reference: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> AuditEvent:
        """Record one entry inside the caller's transaction (it commits or rolls back with it)."""
        head_query = select(db.ledger_head.c.seq, db.ledger_head.c.hash).where(db.ledger_head.c.id == 1)
        if db.is_postgres(self.engine):
            head_query = head_query.with_for_update()
        head = conn.execute(head_query).one()
        entry: dict[str, Any] = {
            "seq": head.seq + 1,
            "at": utcnow().isoformat(),
            "retirement_id": retirement_id,
            "kind": kind,
            "action": action,
            "actor": actor,
            "reference": reference,
            "detail": redact(json.loads(json.dumps(detail or {}, default=str))),
            "prev_hash": head.hash,
        }
        entry["hash"] = _digest(entry)
        row = {**entry, "detail": json.dumps(entry["detail"], sort_keys=True, ensure_ascii=False)}
        conn.execute(insert(db.ledger).values(**row))
        conn.execute(
            update(db.ledger_head).where(db.ledger_head.c.id == 1).values(seq=entry["seq"], hash=entry["hash"])
        )
        return AuditEvent.model_validate(entry)

    def entries(self, retirement_id: str | None = None) -> Iterator[AuditEvent]:
        """Every entry (of one retirement when given), oldest first."""
        for entry in self._rows(retirement_id):
            yield AuditEvent.model_validate(entry)

    def _rows(self, retirement_id: str | None = None, batch: int = 5000) -> Iterator[dict[str, Any]]:
        after = 0
        while True:
            query = select(db.ledger).where(db.ledger.c.seq > after).order_by(db.ledger.c.seq).limit(batch)
            if retirement_id is not None:
                query = query.where(db.ledger.c.retirement_id == retirement_id)
            with db.reading(self.engine) as conn:
                rows = [_entry_of_row(r) for r in conn.execute(query)]
            yield from rows
            if len(rows) < batch:
                return
            after = rows[-1]["seq"]

    def find(self, retirement_id: str, action: str, kind: str = "outcome") -> AuditEvent | None:
        """The latest entry of ``kind`` for ``action`` in a retirement (a receipt), if any."""
        query = (
            select(db.ledger)
            .where(db.ledger.c.retirement_id == retirement_id, db.ledger.c.action == action, db.ledger.c.kind == kind)
            .order_by(db.ledger.c.seq.desc())
            .limit(1)
        )
        with db.reading(self.engine) as conn:
            row = conn.execute(query).first()
        return AuditEvent.model_validate(_entry_of_row(row)) if row is not None else None

    def hash_at(self, seq: int) -> str | None:
        """The hash of entry ``seq``, if there is one."""
        with db.reading(self.engine) as conn:
            return conn.execute(select(db.ledger.c.hash).where(db.ledger.c.seq == seq)).scalar()

    def head(self) -> tuple[int, str]:
        """(sequence number, hash) of the newest entry."""
        with db.reading(self.engine) as conn:
            row = conn.execute(select(db.ledger_head.c.seq, db.ledger_head.c.hash)).one()
        return int(row.seq), str(row.hash)

    def verify(self) -> tuple[int, str]:
        """Check the whole chain, and that it ends at the recorded head.

        Returns:
            (number of entries, hash of the last entry).

        Raises:
            LedgerTamperedError: naming the first entry that was edited, removed, reordered, or the truncation.
        """
        head_seq, head_hash = self.head()
        count, last = verify_lines(self._rows(), source=self.name)
        if count != head_seq or last != head_hash:
            raise LedgerTamperedError(
                self.name,
                count + 1,
                f"the ledger ends at entry {count} but its head records entry {head_seq}: "
                "entries were removed from the end",
            )
        return count, last

    def export(self, path: Path) -> int:
        """Write every entry as JSON lines (the form :func:`verify_file` checks); returns how many."""
        count = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            for entry in self._rows():
                fh.write(json.dumps(entry, sort_keys=True, ensure_ascii=False) + "\n")
                count += 1
        return count

    def import_lines(self, path: Path) -> int:
        """Load a JSON-lines ledger written before the database (verified first) into an empty ledger.

        Raises:
            LedgerTamperedError: the file does not verify.
            LedgerError: the database ledger is not empty.
        """
        count, last = verify_file(path)
        with self.engine.begin() as conn:
            head = conn.execute(select(db.ledger_head.c.seq)).scalar_one()
            if head:
                raise LedgerError(f"cannot import {path}: the ledger already holds {head} entries")
            with open(path, encoding="utf-8") as fh:
                for line in fh:
                    entry = json.loads(line)
                    row = {**entry, "detail": json.dumps(entry["detail"], sort_keys=True, ensure_ascii=False)}
                    conn.execute(insert(db.ledger).values(**row))
            conn.execute(update(db.ledger_head).where(db.ledger_head.c.id == 1).values(seq=count, hash=last))
        return count


def verify_lines(entries: Iterable[dict[str, Any]], *, source: str) -> tuple[int, str]:
    """Check a chain of entries in order; returns (count, last hash).

    Raises:
        LedgerTamperedError: naming the first entry that was edited, removed or reordered.
    """
    prev, count = GENESIS, 0
    for position, entry in enumerate(entries, start=1):
        if entry.get("seq") != position:
            raise LedgerTamperedError(
                source,
                position,
                f"sequence {entry.get('seq')} where {position} was expected (an entry was removed, inserted or moved)",
            )
        if entry.get("prev_hash") != prev:
            raise LedgerTamperedError(source, position, "does not chain to the previous entry (removed or reordered)")
        if _digest(entry) != entry.get("hash"):
            raise LedgerTamperedError(source, position, "content does not match its hash (edited)")
        prev, count = str(entry["hash"]), position
    return count, prev


def verify_file(path: Path) -> tuple[int, str]:
    """Check an exported (JSON lines) ledger.

    Raises:
        LedgerTamperedError: naming the first bad line.
    """

    def parsed() -> Iterator[dict[str, Any]]:
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    raise LedgerTamperedError(str(path), lineno, "empty line")
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise LedgerTamperedError(str(path), lineno, f"not JSON ({exc.msg})") from None
                if not isinstance(entry, dict) or "hash" not in entry:
                    raise LedgerTamperedError(str(path), lineno, "not a ledger entry")
                yield entry

    if not path.exists():
        return 0, GENESIS
    return verify_lines(parsed(), source=str(path))
