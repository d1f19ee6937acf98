"""The audit ledger detects an edited, a deleted and a swapped line, and never stores secrets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retirement.errors import LedgerTamperedError
from retirement.ledger import Ledger


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    ledger = Ledger(tmp_path / "ledger.jsonl")
    for i in range(5):
        ledger.append("r1", "intent", f"step-{i}", reference="churn-model@3", detail={"i": i})
    return ledger


def _lines(ledger: Ledger) -> list[str]:
    return ledger.path.read_text().splitlines(keepends=True)


def test_intact_ledger_verifies(ledger: Ledger) -> None:
    count, last = ledger.verify()
    assert count == 5
    assert last == json.loads(_lines(ledger)[-1])["hash"]


def test_edited_line_is_named(ledger: Ledger) -> None:
    lines = _lines(ledger)
    lines[2] = lines[2].replace('"step-2"', '"step-X"')
    ledger.path.write_text("".join(lines))
    with pytest.raises(LedgerTamperedError) as info:
        ledger.verify()
    assert info.value.line == 3
    assert "edited" in str(info.value)


def test_deleted_line_is_named(ledger: Ledger) -> None:
    lines = _lines(ledger)
    del lines[1]
    ledger.path.write_text("".join(lines))
    with pytest.raises(LedgerTamperedError) as info:
        ledger.verify()
    assert info.value.line == 2


def test_swapped_lines_are_named(ledger: Ledger) -> None:
    lines = _lines(ledger)
    lines[3], lines[4] = lines[4], lines[3]
    ledger.path.write_text("".join(lines))
    with pytest.raises(LedgerTamperedError) as info:
        ledger.verify()
    assert info.value.line == 4


def test_deleted_last_line_and_rehashed_edit_are_caught(ledger: Ledger) -> None:
    # Editing a line and recomputing its own hash still breaks the next line's chain.
    lines = _lines(ledger)
    entry = json.loads(lines[1])
    entry["action"] = "forged"
    from retirement.ledger import _digest

    entry["hash"] = _digest(entry)
    lines[1] = json.dumps(entry, sort_keys=True) + "\n"
    ledger.path.write_text("".join(lines))
    with pytest.raises(LedgerTamperedError) as info:
        ledger.verify()
    assert info.value.line == 3


def test_secrets_never_reach_the_ledger(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.jsonl")
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
    text = ledger.path.read_text()
    for secret in ("sk-live-abcdefgh12345", "r8_abcdefghijk", "r8_Zyxwvut98765", "user:pw"):
        assert secret not in text
    assert ledger.verify()[0] == 1


def test_receipts_are_found_per_retirement(ledger: Ledger) -> None:
    ledger.append("r2", "outcome", "delete", detail={"ok": True})
    assert ledger.find("r2", "delete") is not None
    assert ledger.find("r1", "delete") is None
