"""The audit ledger in the database: an edited, removed, moved or truncated entry is named; no secret is stored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import delete, text, update

from retirement import db
from retirement.errors import LedgerTamperedError
from retirement.ledger import Ledger, _digest, verify_file


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    ledger = Ledger(db.engine_for(f"sqlite:///{tmp_path / 'retire.db'}"))
    for i in range(5):
        ledger.append("r1", "intent", f"step-{i}", reference="churn-model@3", detail={"i": i})
    return ledger


@pytest.fixture
def exported(ledger: Ledger, tmp_path: Path) -> Path:
    path = tmp_path / "ledger.jsonl"
    assert ledger.export(path) == 5
    return path


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def test_intact_ledger_verifies_in_the_database_and_exported(ledger: Ledger, exported: Path) -> None:
    count, last = ledger.verify()
    assert count == 5
    assert verify_file(exported) == (5, last)
    assert last == json.loads(_lines(exported)[-1])["hash"]
    assert [e.action for e in ledger.entries("r1")] == [f"step-{i}" for i in range(5)]
    assert ledger.find("r1", "step-3", kind="intent").detail == {"i": 3}  # type: ignore[union-attr]


def test_edited_row_is_named(ledger: Ledger) -> None:
    with ledger.engine.begin() as conn:
        conn.execute(update(db.ledger).where(db.ledger.c.seq == 3).values(action="step-X"))
    with pytest.raises(LedgerTamperedError) as info:
        ledger.verify()
    assert info.value.line == 3
    assert "edited" in str(info.value)


def test_removed_row_is_named(ledger: Ledger) -> None:
    with ledger.engine.begin() as conn:
        conn.execute(delete(db.ledger).where(db.ledger.c.seq == 2))
    with pytest.raises(LedgerTamperedError) as info:
        ledger.verify()
    assert info.value.line == 2


def test_removed_tail_is_caught_by_the_head(ledger: Ledger) -> None:
    with ledger.engine.begin() as conn:
        conn.execute(delete(db.ledger).where(db.ledger.c.seq >= 4))
    with pytest.raises(LedgerTamperedError) as info:
        ledger.verify()
    assert "removed from the end" in str(info.value)
    assert info.value.line == 4


def test_edited_line_of_an_export_is_named(exported: Path) -> None:
    lines = _lines(exported)
    lines[2] = lines[2].replace('"step-2"', '"step-X"')
    exported.write_text("".join(lines))
    with pytest.raises(LedgerTamperedError) as info:
        verify_file(exported)
    assert info.value.line == 3
    assert "edited" in str(info.value)


def test_deleted_and_swapped_lines_of_an_export_are_named(exported: Path) -> None:
    lines = _lines(exported)
    swapped = lines.copy()
    swapped[3], swapped[4] = swapped[4], swapped[3]
    exported.write_text("".join(swapped))
    with pytest.raises(LedgerTamperedError) as info:
        verify_file(exported)
    assert info.value.line == 4
    del lines[1]
    exported.write_text("".join(lines))
    with pytest.raises(LedgerTamperedError) as info:
        verify_file(exported)
    assert info.value.line == 2


def test_rehashed_edit_breaks_the_next_link(exported: Path) -> None:
    # Editing a line and recomputing its own hash still breaks the next line's chain.
    lines = _lines(exported)
    entry = json.loads(lines[1])
    entry["action"] = "forged"
    entry["hash"] = _digest(entry)
    lines[1] = json.dumps(entry, sort_keys=True) + "\n"
    exported.write_text("".join(lines))
    with pytest.raises(LedgerTamperedError) as info:
        verify_file(exported)
    assert info.value.line == 3


def test_an_export_imports_into_an_empty_ledger_and_continues_its_chain(exported: Path, tmp_path: Path) -> None:
    other = Ledger(db.engine_for(f"sqlite:///{tmp_path / 'other.db'}"))
    assert other.import_lines(exported) == 5
    other.append("r2", "notice", "after-import")
    assert other.verify()[0] == 6


def test_an_entry_rolls_back_with_its_transaction(ledger: Ledger) -> None:
    with pytest.raises(RuntimeError), ledger.engine.begin() as conn:
        ledger.append_in(conn, "r1", "outcome", "never")
        raise RuntimeError("the state change failed")
    assert ledger.find("r1", "never") is None
    assert ledger.verify()[0] == 5
    with ledger.engine.connect() as conn:
        assert conn.execute(text("SELECT seq FROM ledger_head")).scalar() == 5


def test_secrets_never_reach_the_ledger(tmp_path: Path) -> None:
    path = tmp_path / "secrets.db"
    ledger = Ledger(db.engine_for(f"sqlite:///{path}"))
    ledger.append(
        "r1",
        "outcome",
        "notify",
        detail={
            "api_key": "sk-live-abcdefgh12345",
            "headers": {"Authorization": "Bearer r8_abcdefghijk"},
            "note": "token r8_Zyxwvut98765 and https://user:pw@example.invalid/x",
        },
    )
    db.dispose_all()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("secrets.db*"))
    ledger.export(tmp_path / "out.jsonl")
    exported = (tmp_path / "out.jsonl").read_text()
    for secret in ("sk-live-abcdefgh12345", "r8_abcdefghijk", "r8_Zyxwvut98765", "user:pw"):
        assert secret.encode() not in raw
        assert secret not in exported
    assert ledger.verify()[0] == 1
