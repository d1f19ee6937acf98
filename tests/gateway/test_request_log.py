"""The request log: rows written by the background thread, counts per version, heartbeat coverage."""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from retirement.gateway.requestlog import RequestLog, RequestRecord

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def rec(seconds: float, version: str | None, status: int = 200, latency: float = 5.0, requested: str = "production"):
    return RequestRecord(
        at=at(seconds), model="churn-model", requested=requested, version=version, status=status, latency_ms=latency
    )


def beats(log: RequestLog, seconds: list[float]) -> None:
    conn = sqlite3.connect(log.path)
    try:
        with conn:
            conn.executemany(
                "INSERT INTO heartbeats (at, session, pid) VALUES (?, 'test', 0)",
                [(at(s).timestamp(),) for s in seconds],
            )
    finally:
        conn.close()


@pytest.fixture
def log(tmp_path: Path):
    request_log = RequestLog(tmp_path / "local").start()
    yield request_log
    request_log.close()


def test_queued_requests_reach_the_log_and_close_flushes_them(tmp_path: Path) -> None:
    log = RequestLog(tmp_path / "local").start()
    for i in range(50):
        log.record(rec(i, "1"))
    log.close()
    assert not log.running
    assert len(log.recent(100)) == 50
    assert log.recent(1)[0].at == at(49)


def test_counts_include_requests_that_named_the_version_and_errors_are_5xx_only(log: RequestLog) -> None:
    for i, latency in enumerate([10.0, 20.0, 30.0, 40.0, 500.0]):
        log.record(rec(i, "1", latency=latency))
    log.record(rec(5, "1", status=503))
    log.record(rec(6, "1", status=410))
    log.record(rec(7, "1", status=404, requested="1"))
    log.record(rec(8, "2"))
    log.record(rec(100, "1"))  # outside the window
    assert log.flush()
    stats = log.stats("churn-model", "1", at(0), at(50))
    assert (stats.requests, stats.errors) == (8, 1)
    assert stats.p95_latency_ms == 500.0
    assert log.stats("churn-model", "2", at(0), at(50)).requests == 1
    assert log.stats("churn-model", "3", at(0), at(50)).requests == 0
    assert log.stats("churn-model", None, at(0), at(50)).requests == 9
    assert log.stats("churn-model", "1", at(1), at(2)).requests == 1


def test_coverage_counts_spans_between_close_heartbeats_only(log: RequestLog) -> None:
    beats(log, [float(s) for s in range(0, 11)] + [float(s) for s in range(60, 101)])
    assert log.coverage(at(0), at(10), gap_seconds=5) == pytest.approx(1.0)
    assert log.coverage(at(0), at(100), gap_seconds=5) == pytest.approx(0.5)
    assert log.coverage(at(0), at(100), gap_seconds=60) == pytest.approx(1.0)
    assert log.coverage(at(-100), at(0), gap_seconds=5) == 0.0


def test_the_part_of_a_window_in_the_future_is_not_covered(log: RequestLog) -> None:
    now = time.time()
    conn = sqlite3.connect(log.path)
    with conn:
        conn.executemany(
            "INSERT INTO heartbeats (at, session, pid) VALUES (?, 'test', 0)", [(now - 10 + i,) for i in range(11)]
        )
    conn.close()
    start = datetime.fromtimestamp(now - 10, UTC)
    assert log.coverage(start, start + timedelta(seconds=20), gap_seconds=5, now=now) == pytest.approx(0.5, abs=0.01)


def test_a_running_log_writes_heartbeats(tmp_path: Path) -> None:
    log = RequestLog(tmp_path / "local", heartbeat_interval=0.05).start()
    started = datetime.now(UTC)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and log.coverage(started, started + timedelta(seconds=0.2), 1.0) < 1:
        time.sleep(0.05)
    log.close()
    assert log.coverage(started, started + timedelta(seconds=0.2), gap_seconds=1.0) == pytest.approx(1.0)
    assert log.last_heartbeat() is not None


def test_reading_a_log_that_does_not_exist_says_so(tmp_path: Path) -> None:
    log = RequestLog(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="never run"):
        log.stats("churn-model", "1", at(0), at(1))
    assert not (tmp_path / "nothing").exists()
