"""Traffic observed by the local gateway, read from its request log."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from retirement.gateway.requestlog import RequestLog
from retirement.models import ModelRef, TrafficSample, TrafficVerdict

MIN_COVERAGE = 0.99


class LocalTrafficSource:
    """Requests to a local model version as the gateway logged them.

    Args:
        root: the local platform's root (the request log is ``<root>/requests.db``).
        heartbeat_gap_seconds: two heartbeats further apart than this leave the span between
            them unobserved (the gateway was down or stalled).
    """

    name = "local"

    def __init__(
        self, root: Path, heartbeat_gap_seconds: float = 5.0, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.root = Path(root).expanduser()
        self.heartbeat_gap_seconds = heartbeat_gap_seconds
        self.log = RequestLog(self.root)
        self._sleep = sleep

    def _settle(self, end: datetime) -> None:
        """For a window ending about now, wait (at most one heartbeat gap) for the gateway's first
        heartbeat after ``end``: heartbeats share the writer queue with requests, so once one is
        logged every request before ``end`` is too."""
        now = datetime.now(UTC)
        if not (now - timedelta(seconds=self.heartbeat_gap_seconds) <= end <= now + timedelta(seconds=1)):
            return
        deadline = time.monotonic() + self.heartbeat_gap_seconds
        while time.monotonic() < deadline:
            last = self.log.last_heartbeat()
            if last is None or last >= end:
                return
            self._sleep(0.2)

    def sample(self, ref: ModelRef, start: datetime, end: datetime) -> TrafficSample:
        """Requests, errors (status >= 500) and p95 latency for ``ref`` over ``[start, end)``, with a verdict.

        ERROR when the log cannot be read or the window is malformed, NODATA when the gateway
        observed less than 99% of the window, ACTIVE when any request reached or named the
        version, IDLE otherwise. Never raises.
        """
        base = {"source": self.name, "reference": ref, "start": start, "end": end}
        problem = None
        if start.tzinfo is None or end.tzinfo is None:
            problem = "start and end must be timezone-aware datetimes (UTC)"
        elif end <= start:
            problem = f"the window is empty or reversed (start {start.isoformat()} >= end {end.isoformat()})"
        if problem:
            return TrafficSample(**base, verdict=TrafficVerdict.ERROR, detail=problem)
        try:
            self._settle(end)
            stats = self.log.stats(ref.name, ref.version, start, end)
            coverage = self.log.coverage(start, end, self.heartbeat_gap_seconds)
        except FileNotFoundError:
            return TrafficSample(
                **base,
                coverage=0.0,
                verdict=TrafficVerdict.NODATA,
                detail=f"no request log at {self.log.path}: the gateway has not run here, so nothing was observed",
            )
        except (sqlite3.Error, OSError, ValueError) as exc:
            return TrafficSample(
                **base,
                verdict=TrafficVerdict.ERROR,
                detail=f"the request log {self.log.path} cannot be read: {type(exc).__name__}: {exc}",
            )
        counts = {
            "requests": stats.requests,
            "errors": stats.errors,
            "p95_latency_ms": stats.p95_latency_ms,
            "coverage": coverage,
        }
        seen = f"{stats.requests} request(s) to {ref} ({stats.errors} error(s))"
        if coverage < MIN_COVERAGE:
            return TrafficSample(
                **base,
                **counts,
                verdict=TrafficVerdict.NODATA,
                detail=f"the gateway observed only {coverage:.1%} of the window (heartbeats missing for the rest, "
                f"or the window is not over yet); {seen} in the observed part; missing data is never zero",
            )
        if stats.requests > 0:
            return TrafficSample(
                **base, **counts, verdict=TrafficVerdict.ACTIVE, detail=f"{seen} over {coverage:.1%} of the window"
            )
        return TrafficSample(
            **base,
            **counts,
            verdict=TrafficVerdict.IDLE,
            detail=f"no request to {ref} while the gateway observed {coverage:.1%} of the window",
        )


__all__ = ["MIN_COVERAGE", "LocalTrafficSource"]
