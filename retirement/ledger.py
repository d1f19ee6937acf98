"""The audit ledger: append-only JSON lines, each entry chained to the previous one by hash."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from retirement.errors import LedgerError, LedgerTamperedError
from retirement.models import AuditEvent, utcnow
from retirement.redact import redact

GENESIS = "0" * 64


def _digest(entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


class Ledger:
    """An append-only, hash-chained record of every decision and action.

    Appends take an exclusive lock on the file, so several flow runs on one machine can write
    to the same ledger; each line carries the hash of the previous one, so an edited, removed
    or reordered line is detected by :meth:`verify`.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def append(
        self,
        retirement_id: str,
        kind: Literal["intent", "outcome", "decision", "notice"],
        action: str,
        *,
        actor: str = "system",
        reference: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> AuditEvent:
        """Record one entry (secrets removed from ``detail``) and return it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(self.path, "a+", encoding="utf-8") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                try:
                    seq, prev = self._tail(fh)
                    entry = {
                        "seq": seq + 1,
                        "at": utcnow().isoformat(),
                        "retirement_id": retirement_id,
                        "kind": kind,
                        "action": action,
                        "actor": actor,
                        "reference": reference,
                        "detail": redact(json.loads(json.dumps(detail or {}, default=str))),
                        "prev_hash": prev,
                    }
                    entry["hash"] = _digest(entry)
                    fh.seek(0, os.SEEK_END)
                    fh.write(json.dumps(entry, sort_keys=True, ensure_ascii=False) + "\n")
                    fh.flush()
                    os.fsync(fh.fileno())
                finally:
                    fcntl.flock(fh, fcntl.LOCK_UN)
        except OSError as exc:
            raise LedgerError(f"cannot append to ledger {self.path}: {exc}") from exc
        return AuditEvent.model_validate(entry)

    @staticmethod
    def _tail(fh: Any) -> tuple[int, str]:
        fh.seek(0)
        last = None
        for line in fh:
            if line.strip():
                last = line
        if last is None:
            return 0, GENESIS
        entry = json.loads(last)
        return int(entry["seq"]), str(entry["hash"])

    def entries(self, retirement_id: str | None = None) -> Iterator[AuditEvent]:
        """Every entry (of one retirement when given), oldest first."""
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    continue
                event = AuditEvent.model_validate_json(line)
                if retirement_id is None or event.retirement_id == retirement_id:
                    yield event

    def find(self, retirement_id: str, action: str, kind: str = "outcome") -> AuditEvent | None:
        """The latest entry of ``kind`` for ``action`` in a retirement (a receipt), if any."""
        found = None
        for event in self.entries(retirement_id):
            if event.action == action and event.kind == kind:
                found = event
        return found

    def verify(self) -> tuple[int, str]:
        """Check the whole chain.

        Returns:
            (number of entries, hash of the last entry).

        Raises:
            LedgerTamperedError: naming the first line that was edited, removed or reordered.
        """
        prev, count = GENESIS, 0
        if not self.path.exists():
            return 0, GENESIS
        with open(self.path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    raise LedgerTamperedError(str(self.path), lineno, "empty line")
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise LedgerTamperedError(str(self.path), lineno, f"not JSON ({exc.msg})") from None
                if not isinstance(entry, dict) or "hash" not in entry:
                    raise LedgerTamperedError(str(self.path), lineno, "not a ledger entry")
                if entry.get("seq") != lineno:
                    raise LedgerTamperedError(
                        str(self.path),
                        lineno,
                        f"sequence {entry.get('seq')} where {lineno} was expected "
                        "(a line was removed, inserted or moved)",
                    )
                if entry.get("prev_hash") != prev:
                    raise LedgerTamperedError(
                        str(self.path), lineno, "does not chain to the previous entry (removed or reordered)"
                    )
                if _digest(entry) != entry["hash"]:
                    raise LedgerTamperedError(str(self.path), lineno, "content does not match its hash (edited)")
                prev, count = entry["hash"], lineno
        return count, prev
