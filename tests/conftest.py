"""Shared fixtures: every test gets its own RETIRE_HOME, so nothing touches the user's files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from retirement.settings import RetireSettings


@pytest.fixture(autouse=True)
def retire_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty RETIRE_HOME under the test's tmp_path."""
    home = tmp_path / "retire-home"
    monkeypatch.setenv("RETIRE_HOME", str(home))
    for name in (
        "RETIRE_LOCAL_ROOT",
        "RETIRE_BACKUP_ROOT",
        "RETIRE_LEDGER_PATH",
        "RETIRE_SLACK_BOT_TOKEN",
        "RETIRE_SLACK_WEBHOOK_URL",
        "RETIRE_SLACK_CHANNEL",
    ):
        monkeypatch.delenv(name, raising=False)
    yield home


@pytest.fixture
def settings(retire_home: Path) -> RetireSettings:
    """Settings pointing at the test's RETIRE_HOME."""
    return RetireSettings()
