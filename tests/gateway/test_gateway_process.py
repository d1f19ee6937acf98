"""The gateway as a child process: start, serve, log, stop; a busy port; the traffic generator across a cutover."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from retirement.errors import ConflictError, InputError
from retirement.gateway.loadgen import TrafficGenerator
from retirement.gateway.requestlog import RequestLog
from retirement.gateway.server import GatewayProcess
from retirement.platforms.local import LocalRegistry
from retirement.settings import RetireSettings


@pytest.fixture
def registry(settings: RetireSettings) -> LocalRegistry:
    reg = LocalRegistry(settings.local_dir)
    reg.seed_demo(total_bytes=32 * 1024)
    return reg


@pytest.fixture
def gateway(settings: RetireSettings, registry: LocalRegistry) -> Iterator[GatewayProcess]:
    process = GatewayProcess(settings).start()
    try:
        yield process
    finally:
        process.stop()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_child_serves_the_same_root_and_its_log_survives_the_stop(
    settings: RetireSettings, registry: LocalRegistry, gateway: GatewayProcess
) -> None:
    pid = gateway.pid
    assert pid is not None and pid != os.getpid()
    with httpx.Client(base_url=gateway.url) as client:
        assert client.get("/healthz").json()["root"] == str(registry.root)
        answer = client.post("/v1/models/churn-model@production/predict", json={"inputs": {"x": 1}})
        assert answer.json()["version"] == "1"
        assert (
            'retire_gateway_requests_total{model="churn-model",status="200",version="1"} 1.0'
            in client.get("/metrics").text
        )
    gateway.stop()
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid)
    records = RequestLog(settings.local_dir).recent(10)
    assert [(r.requested, r.version, r.status) for r in records] == [("production", "1", 200)]


def test_a_port_already_in_use_gives_a_clear_error(settings: RetireSettings) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        process = GatewayProcess(settings, port=port)
        with pytest.raises(ConflictError, match=f"port {port} on 127.0.0.1 is already in use"):
            process.start()
        assert process.pid is None


def test_traffic_follows_the_production_alias_across_a_cutover(
    registry: LocalRegistry, gateway: GatewayProcess
) -> None:
    generator = TrafficGenerator(gateway.url, "churn-model@production", rate_per_second=50).start()
    try:
        deadline = time.monotonic() + 20
        while generator.stats().get("1", {}).get("ok", 0) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        registry.set_alias("churn-model", "production", "2")
        while generator.stats().get("2", {}).get("ok", 0) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stats = generator.stop()
    assert stats["1"]["ok"] >= 3
    assert stats["2"]["ok"] >= 3
    assert all(counts["errors"] == 0 for counts in stats.values())


def test_the_traffic_generator_refuses_bad_input() -> None:
    with pytest.raises(InputError, match="target"):
        TrafficGenerator("http://127.0.0.1:1", "churn-model")
    with pytest.raises(InputError, match="rate_per_second"):
        TrafficGenerator("http://127.0.0.1:1", "churn-model@production", rate_per_second=0)
