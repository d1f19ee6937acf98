"""Ledger checkpoints kept outside the ledger, signed with a key that is not stored with it.

The ledger chains every entry to the one before and its head is a row in the same database, so an
edit or a removed entry is caught; but whoever can write the database could truncate it and its
head together, or rewrite the whole chain with recomputed hashes. A checkpoint records the head
(sequence number and hash) at the end of every phase, in an append-only file outside the database,
signed with Ed25519 (``RETIRE_LEDGER_SIGNING_KEY``, held by the workers, never written anywhere by
the product). ``retire ledger verify`` checks the chain against every checkpoint: a checkpoint past
the ledger's end names a truncation, a hash that differs names a rewrite, a bad signature a forgery.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pydantic import BaseModel, Field

from retirement.errors import ConfigError, LedgerTamperedError
from retirement.models import utcnow


class Checkpoint(BaseModel):
    """The ledger's head at one moment, signed."""

    seq: int = Field(description="Sequence number of the newest entry then.")
    hash: str = Field(description="Hash of that entry.")
    at: datetime = Field(default_factory=utcnow, description="When the checkpoint was taken.")
    reason: str = Field(default="", description="What ended (a phase, a halt).")
    key_id: str | None = Field(default=None, description="The signing key's public part, base64 (None: unsigned).")
    signature: str | None = Field(default=None, description="Ed25519 signature of the canonical body, base64.")

    def body(self) -> bytes:
        """What is signed: sequence, hash and time."""
        return json.dumps({"seq": self.seq, "hash": self.hash, "at": self.at.isoformat()}, sort_keys=True).encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def load_private_key(text: str) -> Ed25519PrivateKey:
    """An Ed25519 private key from base64 of its 32 raw bytes.

    Raises:
        ConfigError: naming RETIRE_LEDGER_SIGNING_KEY and what is allowed.
    """
    try:
        raw = base64.b64decode(text.strip(), validate=True)
        return Ed25519PrivateKey.from_private_bytes(raw)
    except (ValueError, TypeError):
        raise ConfigError(
            "RETIRE_LEDGER_SIGNING_KEY: not an Ed25519 private key (allowed: base64 of 32 bytes, as printed by "
            "`retire ledger keygen`)"
        ) from None


def load_public_key(text: str) -> Ed25519PublicKey:
    """An Ed25519 public key from base64 of its 32 raw bytes.

    Raises:
        ConfigError: naming RETIRE_LEDGER_VERIFY_KEY and what is allowed.
    """
    try:
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(text.strip(), validate=True))
    except (ValueError, TypeError):
        raise ConfigError(
            "RETIRE_LEDGER_VERIFY_KEY: not an Ed25519 public key (allowed: base64 of 32 bytes, as printed by "
            "`retire ledger keygen`)"
        ) from None


def public_id(key: Ed25519PublicKey) -> str:
    """The public key as base64 (it names the key in each checkpoint)."""
    return _b64(key.public_bytes(Encoding.Raw, PublicFormat.Raw))


def keygen() -> tuple[str, str]:
    """A new key pair: (private, public), each base64 of 32 bytes."""
    from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return _b64(private), public_id(key.public_key())


class Anchor:
    """Append-only, signed checkpoints of the ledger's head in a folder outside the database."""

    def __init__(self, folder: Path, signing_key: Ed25519PrivateKey | None = None) -> None:
        self.folder = Path(folder)
        self.signing_key = signing_key

    @property
    def path(self) -> Path:
        """The checkpoint file (JSON lines, appended and fsynced)."""
        return self.folder / "checkpoints.jsonl"

    def checkpoint(self, head: tuple[int, str], reason: str = "") -> Checkpoint:
        """Record ``head`` (signed when a key is set); a head already recorded last is not written again."""
        seq, digest = head
        point = Checkpoint(seq=seq, hash=digest, reason=reason)
        if self.signing_key is not None:
            point.key_id = public_id(self.signing_key.public_key())
            point.signature = _b64(self.signing_key.sign(point.body()))
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+", encoding="utf-8") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                fh.seek(0)
                last = None
                for line in fh:
                    if line.strip():
                        last = line
                if last is not None and json.loads(last).get("seq") == seq and json.loads(last).get("hash") == digest:
                    return Checkpoint.model_validate_json(last)
                fh.seek(0, os.SEEK_END)
                fh.write(point.model_dump_json() + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        return point

    def checkpoints(self) -> Iterator[Checkpoint]:
        """Every checkpoint, oldest first."""
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    yield Checkpoint.model_validate_json(line)

    def verify(
        self,
        head: tuple[int, str],
        hash_at: Callable[[int], str | None],
        verify_key: Ed25519PublicKey | None = None,
    ) -> tuple[int, int]:
        """Check the ledger (its head and the hash of its entry at each checkpointed sequence number).

        Returns:
            (checkpoints checked, sequence number of the newest one).

        Raises:
            LedgerTamperedError: naming the checkpoint and what it proves (truncation, rewrite, forgery).
        """
        count, newest = 0, 0
        source = str(self.path)
        for point in self.checkpoints():
            count += 1
            if verify_key is not None:
                if point.signature is None:
                    raise LedgerTamperedError(source, count, f"checkpoint of entry {point.seq} is not signed")
                try:
                    verify_key.verify(base64.b64decode(point.signature), point.body())
                except (InvalidSignature, ValueError):
                    raise LedgerTamperedError(
                        source, count, f"checkpoint of entry {point.seq} has a bad signature (forged or edited)"
                    ) from None
            if point.seq > head[0]:
                raise LedgerTamperedError(
                    source,
                    count,
                    f"a checkpoint taken at {point.at.isoformat(timespec='seconds')} records entry {point.seq}, but "
                    f"the ledger ends at entry {head[0]}: {point.seq - head[0]} entries were removed (truncated)",
                )
            found = hash_at(point.seq) if point.seq else None
            if point.seq and found != point.hash:
                raise LedgerTamperedError(
                    source,
                    count,
                    f"entry {point.seq} does not have the hash its checkpoint of "
                    f"{point.at.isoformat(timespec='seconds')} recorded: the ledger was rewritten",
                )
            newest = max(newest, point.seq)
        return count, newest
