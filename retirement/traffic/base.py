"""Port for where requests to a model are observed, and the rule that combines verdicts."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol, runtime_checkable

from retirement.models import ModelRef, TrafficSample


@runtime_checkable
class TrafficSource(Protocol):
    """Requests and errors for one model version over a window.

    A source never turns missing data into zero: when it cannot see the whole window it
    answers NODATA, and when it cannot answer at all it answers ERROR (it does not raise).
    """

    name: str

    def sample(self, ref: ModelRef, start: datetime, end: datetime) -> TrafficSample:
        """Requests, errors and latency for ``ref`` over ``[start, end)``, with a verdict."""
        ...
