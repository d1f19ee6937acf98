"""The Prometheus source against a real Prometheus scraping a real gateway process every second.

One Prometheus and one gateway serve the whole module; each test seeds its own model, so counts
from one test never leak into another.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from retirement import protocol
from retirement.backup.filesystem import FilesystemBackupStore
from retirement.bootstrap import Services, stores
from retirement.errors import SafetyError
from retirement.gateway.loadgen import TrafficGenerator
from retirement.gateway.server import LOOPBACK, GatewayProcess, free_port
from retirement.models import ModelRef, RetirementRequest, TrafficVerdict, utcnow
from retirement.platforms.base import Platform
from retirement.platforms.local import GOLDEN_INPUTS, LocalRegistry, LocalServing
from retirement.settings import RetireSettings
from retirement.state import RetirementState
from retirement.traffic.prometheus import PrometheusSettings, PrometheusTrafficSource
from tests.fakes.platform import RecordingNotifier
from tests.fakes.prometheus import PrometheusServer

pytestmark = pytest.mark.prometheus

JOB = "retire-gateway"


@dataclass
class Stack:
    settings: RetireSettings
    registry: LocalRegistry
    gateway: GatewayProcess
    prometheus: PrometheusServer
    client: httpx.Client

    def source(self, **overrides: object) -> PrometheusTrafficSource:
        values: dict[str, object] = {
            "url": self.prometheus.url,
            "job": JOB,
            "max_scrape_gap_seconds": 5.0,
            "step_seconds": 2.0,
            "max_retries": 0,
            "timeout_seconds": 5.0,
        }
        values.update(overrides)
        return PrometheusTrafficSource(self.client, PrometheusSettings.model_validate(values))

    def predict(self, target: str, count: int) -> list[int]:
        """Send ``count`` predict requests to ``target``; return their statuses."""
        url = f"{self.gateway.url}/v1/models/{target}/predict"
        return [self.client.post(url, json={"inputs": GOLDEN_INPUTS[i % 3]}).status_code for i in range(count)]

    def settled(self) -> float:
        """Now, once Prometheus holds a scrape taken after every request sent so far."""
        sent = time.time()
        self.prometheus.wait_scraped_after(sent)
        return sent


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("prom-home")
    settings = RetireSettings(home=home, min_traffic_window_hours=0, min_backup_retention_days=1)
    registry = LocalRegistry(settings.local_dir)
    registry.init()
    gateway = GatewayProcess(settings, port=free_port())
    gateway.start()
    prometheus = PrometheusServer(tmp_path_factory.mktemp("prometheus"), JOB, [f"{LOOPBACK}:{gateway.port}"])
    client = httpx.Client(timeout=10.0)
    try:
        prometheus.start()
        prometheus.wait_scraped_after(time.time())
        yield Stack(settings, registry, gateway, prometheus, client)
    finally:
        prometheus.close()
        gateway.stop()
        client.close()


def at(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def test_cutover_moves_the_count_and_a_restart_hides_nothing(stack: Stack) -> None:
    old, new = stack.registry.seed_demo(total_bytes=16 * 1024, name="cut-model")
    source = stack.source()
    t0 = time.time()
    assert stack.predict("cut-model@production", 5) == [200] * 5
    stack.settled()
    stack.registry.set_alias("cut-model", "production", "2")
    switched = time.time()
    assert stack.predict("cut-model@production", 7) == [200] * 7
    t1 = stack.settled()

    before_and_after = source.sample(old, at(t0), at(t1))
    assert (before_and_after.verdict, before_and_after.requests) == (TrafficVerdict.ACTIVE, 5)
    assert "5 request(s) to cut-model@1" in before_and_after.detail
    replacement = source.sample(new, at(t0), at(t1))
    assert (replacement.verdict, replacement.requests, replacement.errors) == (TrafficVerdict.ACTIVE, 7, 0)
    assert replacement.p95_latency_ms is not None and replacement.p95_latency_ms > 0
    after_cutover = source.sample(old, at(switched), at(t1))
    assert (after_cutover.verdict, after_cutover.requests, after_cutover.coverage) == (TrafficVerdict.IDLE, 0, 1.0)

    # A restart resets every counter; 8 requests to the old version afterwards must count 8, not 8 - 5.
    stack.gateway.stop()
    down = stack.prometheus.wait_failed_scrape_after(t1)
    stack.gateway.start()
    stack.prometheus.wait_scraped_after(down)  # a scrape of the new process, before the old version is asked for
    assert stack.predict("cut-model@1", 8) == [200] * 8
    t2 = stack.settled()
    across = source.sample(old, at(switched), at(t2))
    assert (across.verdict, across.requests) == (TrafficVerdict.ACTIVE, 8)
    assert "counter reset" in across.detail
    # The same data, read by someone who allows no gap as long as the restart's: unobserved, not zero.
    strict = stack.source(max_scrape_gap_seconds=1.5).sample(old, at(switched), at(t2))
    assert strict.verdict is TrafficVerdict.NODATA
    assert "answered no scrape for" in strict.detail and strict.coverage < 1.0


def test_a_series_prometheus_never_saw_is_nodata_not_zero(stack: Stack) -> None:
    stack.registry.seed_demo(total_bytes=16 * 1024, name="quiet-model")
    t0 = time.time()
    t1 = stack.settled()
    for ref in (ModelRef.parse("quiet-model@1"), ModelRef.parse("no-such-model@3")):
        sample = stack.source().sample(ref, at(t0), at(t1))
        assert sample.verdict is TrafficVerdict.NODATA, sample.detail
        assert sample.requests is None
        assert "never requested" in sample.detail
    wrong_job = stack.source(job="not-the-gateway").sample(ModelRef.parse("quiet-model@1"), at(t0), at(t1))
    assert wrong_job.verdict is TrafficVerdict.NODATA
    assert "no `up` series for job 'not-the-gateway'" in wrong_job.detail


def test_prometheus_stopped_is_an_error(stack: Stack, tmp_path: Path) -> None:
    prometheus = PrometheusServer(tmp_path / "prom", JOB, [f"{LOOPBACK}:{stack.gateway.port}"]).start()
    try:
        ref = ModelRef.parse("cut-model@1")
        source = stack.source(url=prometheus.url)
        t0 = time.time()
        prometheus.wait_scraped_after(t0)
        answering = source.sample(ref, at(t0 - 60), at(t0))
        assert answering.verdict is not TrafficVerdict.ERROR, answering.detail
    finally:
        prometheus.close()
    stopped = source.sample(ref, at(t0 - 60), at(time.time()))
    assert stopped.verdict is TrafficVerdict.ERROR
    assert f"Prometheus at {prometheus.url} is unreachable" in stopped.detail


def _request(model: str, **overrides: object) -> RetirementRequest:
    data: dict[str, object] = {
        "model": f"{model}@1",
        "replacement": f"{model}@2",
        "requester": "alice",
        "approvers": ["alice", "bob"],
        "reason": "superseded by v2",
        "traffic_window_hours": 3 / 3600,
        "bake_minutes": 0,
        "backup_retention_days": 1,
        "traffic_sources": ["prometheus"],
    }
    data.update(overrides)
    return RetirementRequest.model_validate(data)


def _services(stack: Stack, source: PrometheusTrafficSource) -> Services:
    home = stack.settings.home
    serving = LocalServing(stack.registry, stack.client, stack.gateway.url)
    return Services(
        settings=stack.settings,
        platform=Platform(name="local", registry=stack.registry, serving=serving, traffic=source),
        traffic=[source],
        backups=FilesystemBackupStore(home / "backups"),
        ledger=stores(stack.settings)[0],
        notifier=RecordingNotifier(),
        states=stores(stack.settings)[1],
    )


def _approve(state: RetirementState, gate: str, reference: str) -> None:
    protocol.check_answer(
        state, gate, decision="approve", approver="bob", typed_reference=reference, expected_reference=reference
    )


def test_a_request_during_the_window_trips_the_delete(stack: Stack) -> None:
    old, new = stack.registry.seed_demo(total_bytes=16 * 1024, name="trip-model")
    assert stack.predict("trip-model@production", 3) == [200] * 3  # it served production before
    stack.settled()
    svc = _services(stack, stack.source())
    state = protocol.open_retirement(svc, _request("trip-model"), None)
    protocol.document(svc, state)
    _approve(state, protocol.GATE_PLAN, str(old))
    protocol.stage(svc, state)
    _approve(state, protocol.GATE_CUTOVER, str(old))
    protocol.cutover(svc, state, utcnow())
    window_end = protocol.open_window(svc, state, utcnow())
    while utcnow() < window_end:
        time.sleep(0.2)
    idle = protocol.verify_idle(svc, state, utcnow())
    assert idle.verdict is TrafficVerdict.IDLE, idle.reason
    protocol.backup(svc, state, utcnow())
    _approve(state, protocol.GATE_DELETION, str(old))

    assert stack.predict("trip-model@1", 1) == [200]  # a forgotten client still names the old version
    stack.settled()
    with pytest.raises(SafetyError, match=r"ACTIVE.*1 request\(s\) to trip-model@1"):
        protocol.delete(svc, state, utcnow())
    assert stack.registry.exists(old)
    assert stack.registry.aliases("trip-model")["production"] == new.version


def test_errors_seen_by_prometheus_during_the_bake_roll_back(stack: Stack) -> None:
    old, new = stack.registry.seed_demo(total_bytes=16 * 1024, name="bake-model")
    assert stack.predict("bake-model@production", 3) == [200] * 3
    svc = _services(stack, stack.source())
    state = protocol.open_retirement(svc, _request("bake-model", bake_minutes=0.1, max_error_rate=0.05), None)
    protocol.cutover(svc, state, utcnow())
    assert svc.platform.serving is not None and svc.platform.serving.production(old.model) == new
    stack.registry.set_active(new, False)  # the replacement breaks: the gateway answers 410 for it
    load = TrafficGenerator(stack.gateway.url, "bake-model@production", rate_per_second=10).start()
    try:
        with pytest.raises(SafetyError, match=r"bake breach.*error rate 100\.00% of bake-model@2"):
            protocol.bake(svc, state, samples=2)
    finally:
        stats = load.stop()
    assert stats["2"]["errors"] > 0
    assert svc.platform.serving.production(old.model) == old
    saved = svc.states.load(state.id)
    assert saved.rolled_back
    last = saved.bake[-1]
    assert isinstance(last["requests"], int) and last["requests"] > 0
    assert last["errors"] == last["requests"]  # every answer of the deactivated replacement was a 410
