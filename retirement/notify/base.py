"""Port for telling people what a retirement is doing."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from retirement.models import Notification, NotifyReceipt


@runtime_checkable
class Notifier(Protocol):
    """Posts retirement events; one thread per retirement where the channel has threads.

    ``post`` never raises for a delivery failure: it retries what is worth retrying and
    returns a receipt saying what happened, so a notification never blocks a safety step.
    """

    name: str

    def post(self, event: Notification, thread: str | None = None) -> NotifyReceipt:
        """Post ``event``; reply in ``thread`` when given (the receipt of the first post)."""
        ...
