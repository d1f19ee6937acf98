"""Ledger checkpoints outside the database: truncation, a removed tail and a full rewrite are each named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import delete, select, update

from retirement import db
from retirement.anchor import Anchor, keygen, load_private_key, load_public_key
from retirement.cli import main
from retirement.errors import ConfigError, LedgerTamperedError
from retirement.ledger import GENESIS, Ledger, _digest


@pytest.fixture
def keys() -> tuple[str, str]:
    return keygen()


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    ledger = Ledger(db.engine_for(f"sqlite:///{tmp_path / 'retire.db'}"))
    for i in range(30):
        ledger.append("r1", "outcome", f"step-{i}", detail={"i": i})
    return ledger


@pytest.fixture
def anchor(tmp_path: Path, ledger: Ledger, keys: tuple[str, str]) -> Anchor:
    anchor = Anchor(tmp_path / "checkpoints", load_private_key(keys[0]))
    anchor.checkpoint(ledger.head(), "phase document done")
    return anchor


def _truncate(ledger: Ledger, keep: int) -> None:
    """What someone with write access to the database does: cut the tail and move the head with it."""
    with ledger.engine.begin() as conn:
        conn.execute(delete(db.ledger).where(db.ledger.c.seq > keep))
        last = conn.execute(select(db.ledger.c.hash).where(db.ledger.c.seq == keep)).scalar_one()
        conn.execute(update(db.ledger_head).values(seq=keep, hash=last))


def _check(ledger: Ledger, anchor: Anchor, public: str) -> tuple[int, int]:
    ledger.verify()
    return anchor.verify(ledger.head(), ledger.hash_at, load_public_key(public))


def test_an_intact_ledger_verifies_against_its_signed_checkpoints(
    ledger: Ledger, anchor: Anchor, keys: tuple[str, str]
) -> None:
    ledger.append("r1", "notice", "later")
    anchor.checkpoint(ledger.head(), "phase staging done")
    anchor.checkpoint(ledger.head(), "written twice: kept once")
    assert _check(ledger, anchor, keys[1]) == (2, 31)


@pytest.mark.parametrize("removed", [1, 10])
def test_a_truncation_with_a_moved_head_is_named(
    ledger: Ledger, anchor: Anchor, keys: tuple[str, str], removed: int
) -> None:
    _truncate(ledger, 30 - removed)
    ledger.verify()  # the chain and its head agree: only the checkpoint can tell
    with pytest.raises(LedgerTamperedError, match=rf"records entry 30, but the ledger ends at entry {30 - removed}"):
        _check(ledger, anchor, keys[1])


def test_a_removed_tail_is_named_by_the_head(ledger: Ledger, anchor: Anchor) -> None:
    with ledger.engine.begin() as conn:
        conn.execute(delete(db.ledger).where(db.ledger.c.seq > 25))
    with pytest.raises(LedgerTamperedError, match="removed from the end"):
        ledger.verify()


def test_a_full_rewrite_with_recomputed_hashes_is_named(ledger: Ledger, anchor: Anchor, keys: tuple[str, str]) -> None:
    entries = list(ledger._rows())  # the stored entries, as hashed
    prev = GENESIS
    with ledger.engine.begin() as conn:
        for entry in entries:
            if entry["action"] == "step-3":
                entry["detail"] = {"i": "forged"}
            entry["prev_hash"] = prev
            entry["hash"] = _digest({k: v for k, v in entry.items() if k != "hash"})
            prev = entry["hash"]
            conn.execute(
                update(db.ledger)
                .where(db.ledger.c.seq == entry["seq"])
                .values(detail=json.dumps(entry["detail"], sort_keys=True), prev_hash=entry["prev_hash"], hash=prev)
            )
        conn.execute(update(db.ledger_head).values(hash=prev))
    assert ledger.verify()[0] == 30  # the rewritten chain is consistent with itself
    with pytest.raises(LedgerTamperedError, match=r"entry 30 does not have the hash its checkpoint .* rewritten"):
        _check(ledger, anchor, keys[1])


def test_an_edited_or_unsigned_checkpoint_is_refused(ledger: Ledger, anchor: Anchor, keys: tuple[str, str]) -> None:
    line = json.loads(anchor.path.read_text())
    anchor.path.write_text(json.dumps({**line, "seq": 12, "hash": ledger.hash_at(12)}) + "\n")
    with pytest.raises(LedgerTamperedError, match="bad signature"):
        _check(ledger, anchor, keys[1])
    unsigned = Anchor(anchor.folder)
    anchor.path.unlink()
    unsigned.checkpoint(ledger.head())
    with pytest.raises(LedgerTamperedError, match="not signed"):
        _check(ledger, unsigned, keys[1])


def test_a_bad_key_names_the_setting() -> None:
    with pytest.raises(ConfigError, match="RETIRE_LEDGER_SIGNING_KEY"):
        load_private_key("not-a-key")
    with pytest.raises(ConfigError, match="RETIRE_LEDGER_VERIFY_KEY"):
        load_public_key("AAAA")


def test_retire_ledger_verify_names_a_truncation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], keys: tuple[str, str]
) -> None:
    monkeypatch.setenv("RETIRE_HOME", str(tmp_path))
    monkeypatch.setenv("RETIRE_LEDGER_SIGNING_KEY", keys[0])
    ledger = Ledger(db.engine_for(f"sqlite:///{tmp_path / 'retire.db'}"))
    for i in range(12):
        ledger.append("r1", "outcome", f"step-{i}")
    assert main(["ledger", "checkpoint"]) == 0
    assert main(["ledger", "verify"]) == 0
    assert "1 checked, signed by" in capsys.readouterr().out
    _truncate(ledger, 11)
    code = main(["ledger", "verify"])
    out = capsys.readouterr()
    assert code != 0
    assert "records entry 12, but the ledger ends at entry 11" in out.out + out.err
    assert keys[0] not in out.out + out.err
