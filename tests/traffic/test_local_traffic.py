"""The local traffic source: IDLE, ACTIVE, NODATA (gateway down, no log, future), ERROR (unreadable log)."""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from retirement.gateway.app import create_app
from retirement.gateway.requestlog import RequestLog, RequestRecord
from retirement.gateway.server import serve_in_thread
from retirement.models import ModelRef, TrafficVerdict
from retirement.platforms.local import LocalRegistry
from retirement.traffic.base import TrafficSource
from retirement.traffic.local import LocalTrafficSource

V1 = ModelRef.parse("churn-model@1")
V2 = ModelRef.parse("churn-model@2")


def write_log(root: Path, heartbeats: list[float], requests: list[tuple[float, str | None, str, int]]) -> None:
    """Heartbeats at epoch seconds; requests as (epoch seconds, resolved version, requested, status)."""
    log = RequestLog(root).start()
    for t, version, requested, status in requests:
        log.record(
            RequestRecord(
                at=datetime.fromtimestamp(t, UTC),
                model="churn-model",
                requested=requested,
                version=version,
                status=status,
                latency_ms=3.0,
            )
        )
    log.close()
    conn = sqlite3.connect(root / "requests.db")
    with conn:
        conn.executemany("INSERT INTO heartbeats (at, session, pid) VALUES (?, 'x', 0)", [(t,) for t in heartbeats])
    conn.close()


def window(seconds: float = 100.0, ago: float = 200.0) -> tuple[datetime, datetime, float]:
    start = time.time() - ago
    return datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(start + seconds, UTC), start


def test_the_source_implements_the_port(tmp_path: Path) -> None:
    assert isinstance(LocalTrafficSource(tmp_path), TrafficSource)


def test_no_request_over_a_fully_observed_window_is_idle(tmp_path: Path) -> None:
    start, end, t0 = window()
    write_log(tmp_path, [t0 + i for i in range(-1, 102)], [(t0 + 5, "2", "production", 200)])
    sample = LocalTrafficSource(tmp_path).sample(V1, start, end)
    assert sample.verdict is TrafficVerdict.IDLE
    assert (sample.requests, sample.coverage) == (0, 1.0)
    assert "no request" in sample.detail


def test_any_request_that_resolved_to_or_named_the_version_is_active(tmp_path: Path) -> None:
    start, end, t0 = window()
    write_log(tmp_path, [t0 + i for i in range(-1, 102)], [(t0 + 50, "1", "1", 410), (t0 + 60, "1", "prod", 503)])
    sample = LocalTrafficSource(tmp_path).sample(V1, start, end)
    assert sample.verdict is TrafficVerdict.ACTIVE
    assert (sample.requests, sample.errors) == (2, 1)
    assert "2 request(s) to churn-model@1" in sample.detail


def test_a_gateway_outage_inside_the_window_is_nodata_not_zero(tmp_path: Path) -> None:
    start, end, t0 = window()
    write_log(tmp_path, [t0 + i for i in range(0, 40)] + [t0 + i for i in range(60, 101)], [])
    sample = LocalTrafficSource(tmp_path, heartbeat_gap_seconds=5).sample(V1, start, end)
    assert sample.verdict is TrafficVerdict.NODATA
    assert sample.requests == 0
    assert 0.7 < sample.coverage < 0.9
    assert "missing data is never zero" in sample.detail


def test_a_window_that_is_not_over_yet_is_nodata(tmp_path: Path) -> None:
    start, end, t0 = window(seconds=100, ago=50)
    write_log(tmp_path, [t0 + i for i in range(0, 51)], [])
    assert LocalTrafficSource(tmp_path).sample(V1, start, end).verdict is TrafficVerdict.NODATA


def test_no_log_at_all_is_nodata_and_an_unreadable_log_is_error(tmp_path: Path) -> None:
    start, end, _ = window()
    missing = LocalTrafficSource(tmp_path / "never-ran").sample(V1, start, end)
    assert missing.verdict is TrafficVerdict.NODATA
    assert "has not run" in missing.detail
    (tmp_path / "requests.db").write_bytes(b"this is not a database" * 100)
    broken = LocalTrafficSource(tmp_path).sample(V1, start, end)
    assert broken.verdict is TrafficVerdict.ERROR
    assert "cannot be read" in broken.detail


def test_a_malformed_window_is_error(tmp_path: Path) -> None:
    start, end, _ = window()
    assert LocalTrafficSource(tmp_path).sample(V1, end, start).verdict is TrafficVerdict.ERROR
    naive = LocalTrafficSource(tmp_path).sample(V1, start.replace(tzinfo=None), end)
    assert naive.verdict is TrafficVerdict.ERROR


def test_through_the_real_gateway_idle_then_active_then_nodata_after_an_outage(tmp_path: Path) -> None:
    registry = LocalRegistry(tmp_path / "local")
    registry.seed_demo(total_bytes=32 * 1024)
    log = RequestLog(registry.root, heartbeat_interval=0.05)
    source = LocalTrafficSource(registry.root, heartbeat_gap_seconds=1.0)
    with serve_in_thread(create_app(registry, log)) as url, httpx.Client(base_url=url) as client:
        first = datetime.now(UTC)
        time.sleep(0.3)
        middle = datetime.now(UTC)
        assert client.post("/v1/models/churn-model@production/predict", json={"inputs": {"x": 1}}).status_code == 200
        time.sleep(0.3)
        served_until = datetime.now(UTC)
        time.sleep(0.2)
    idle = source.sample(V2, first, served_until)
    assert (idle.verdict, idle.requests) == (TrafficVerdict.IDLE, 0)
    active = source.sample(V1, middle, served_until)
    assert (active.verdict, active.requests) == (TrafficVerdict.ACTIVE, 1)
    time.sleep(1.5)  # the gateway is down for longer than the heartbeat gap
    with serve_in_thread(create_app(registry, RequestLog(registry.root, heartbeat_interval=0.05))):
        time.sleep(0.3)
        back = datetime.now(UTC)
        time.sleep(0.2)
    outage = source.sample(V2, first, back)
    assert outage.verdict is TrafficVerdict.NODATA
    assert outage.coverage < 0.99
