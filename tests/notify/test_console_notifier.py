"""ConsoleNotifier: one readable line per event, through logging and an optional stream."""

from __future__ import annotations

import io
import logging
from datetime import UTC, datetime

import pytest

from retirement.models import Notification, NotificationStatus, Phase
from retirement.notify import ConsoleNotifier, Notifier


def event(status: NotificationStatus, **overrides: object) -> Notification:
    values: dict[str, object] = {
        "retirement_id": "ret-churn-model-3",
        "reference": "churn-model@3",
        "phase": Phase.TRAFFIC_WINDOW,
        "status": status,
        "text": "Cutover done.\nWaiting for the old model to go quiet.",
        "next_step": "verify idle",
        "next_at": datetime(2030, 1, 3, 2, 0, tzinfo=UTC),
        "ui_url": "http://127.0.0.1:4200/flow-runs/flow-run/abc",
    }
    values.update(overrides)
    return Notification(**values)


def test_one_line_to_the_stream_and_the_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="retirement.notify")
    stream = io.StringIO()
    console = ConsoleNotifier(stream)

    receipt = console.post(event(NotificationStatus.SCHEDULED), thread="t-1")

    assert isinstance(console, Notifier) and console.name == "console"
    assert receipt.delivered and receipt.channel == "console" and receipt.thread == "t-1"
    expected = (
        "[SCHEDULED] churn-model@3 traffic window: Cutover done. Waiting for the old model to go quiet. "
        "Next: verify idle at 2030-01-03T02:00:00Z (http://127.0.0.1:4200/flow-runs/flow-run/abc)"
    )
    assert stream.getvalue() == expected + "\n"
    [record] = [r for r in caplog.records if r.name == "retirement.notify"]
    assert record.getMessage() == expected and record.levelno == logging.INFO


@pytest.mark.parametrize(
    ("status", "level"),
    [
        (NotificationStatus.DONE, logging.INFO),
        (NotificationStatus.FAILED, logging.WARNING),
        (NotificationStatus.AWAITING_APPROVAL, logging.WARNING),
    ],
)
def test_events_needing_action_are_warnings(caplog: pytest.LogCaptureFixture, status: str, level: int) -> None:
    caplog.set_level(logging.INFO, logger="retirement.notify")

    ConsoleNotifier().post(event(NotificationStatus(status), next_step=None, next_at=None, ui_url=None))

    [record] = [r for r in caplog.records if r.name == "retirement.notify"]
    assert record.levelno == level
    assert record.getMessage().startswith(f"[{status.replace('_', ' ').upper()}] churn-model@3 traffic window:")
    assert "Next:" not in record.getMessage()


def test_secrets_in_the_text_are_redacted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="retirement.notify")
    stream = io.StringIO()
    token = "xoxb-123456789012-abcdefghijkl"

    ConsoleNotifier(stream).post(event(NotificationStatus.FAILED, text=f"Slack said no to {token}"))

    assert token not in stream.getvalue() and token not in caplog.text
    assert "[redacted]" in stream.getvalue()
