"""Console notifier: one readable line per retirement event, through logging and optionally a stream."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TextIO

from retirement.models import Notification, NotificationStatus, NotifyReceipt
from retirement.redact import redact_text

logger = logging.getLogger("retirement.notify")

# Events someone must act on are warnings, so they stand out in a run's log.
_WARNING_STATUSES = frozenset(
    {
        NotificationStatus.FAILED,
        NotificationStatus.HALTED,
        NotificationStatus.ALERT,
        NotificationStatus.AWAITING_APPROVAL,
    }
)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _iso(when: datetime) -> str:
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def format_line(event: Notification) -> str:
    """One line that says what happened to which model, in which phase, and what comes next.

    Args:
        event: the notification to describe.

    Returns:
        e.g. ``[DONE] churn-model@3 backup: Backup verified. Next: delete at 2030-01-01T02:00:00Z``,
        with credential-shaped text redacted.
    """
    status = event.status.value.replace("_", " ").upper()
    phase = event.phase.value.replace("_", " ")
    line = f"[{status}] {event.reference} {phase}: {_one_line(event.text)}"
    if event.next_step or event.next_at:
        line += f" Next: {_one_line(event.next_step or 'next phase')}"
        if event.next_at:
            line += f" at {_iso(event.next_at)}"
    if event.ui_url:
        line += f" ({event.ui_url})"
    return redact_text(line)


class ConsoleNotifier:
    """Writes each event as one line to the ``retirement.notify`` logger, and to ``stream`` when given.

    Used when Slack is not configured, so a run still tells its operator what it does.
    """

    name = "console"

    def __init__(self, stream: TextIO | None = None) -> None:
        """Create the notifier.

        Args:
            stream: where to write the line as well (e.g. ``sys.stderr``); logging only when None.
        """
        self._stream = stream

    def post(self, event: Notification, thread: str | None = None) -> NotifyReceipt:
        """Log ``event`` as one line; ``thread`` is accepted for the port and passed back unchanged."""
        line = format_line(event)
        level = logging.WARNING if event.status in _WARNING_STATUSES else logging.INFO
        logger.log(level, "%s", line)
        if self._stream is not None:
            self._stream.write(line + "\n")
            self._stream.flush()
        return NotifyReceipt(delivered=True, channel="console", thread=thread, attempts=1)


__all__ = ["ConsoleNotifier", "format_line"]
