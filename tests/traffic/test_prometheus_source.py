"""The Prometheus source against a scripted Prometheus API behind httpx.MockTransport."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from retirement.bootstrap import traffic_sources
from retirement.models import ModelRef, TrafficSample, TrafficVerdict
from retirement.platforms import get_platform
from retirement.settings import RetireSettings
from retirement.traffic.base import TrafficSource
from retirement.traffic.prometheus import (
    PrometheusSettings,
    PrometheusTrafficSource,
    Series,
    bucket_quantile,
    build,
    count_increase,
)

T0 = 1_800_000_000.0  # window start, epoch seconds
V1 = ModelRef.parse("churn-model@1")
TOKEN = "Bearer s3cr3t-prometheus-token-value"
INSTANCE = "127.0.0.1:8765"
REQUESTS = "retire_gateway_requests_total"
ERRORS = "retire_gateway_request_errors_total"
BUCKETS = "retire_gateway_request_duration_seconds_bucket"
_SELECTOR_RE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?P<labels>.*)\})?(\[(?P<ms>\d+)ms\])?$")
_LABEL_RE = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def at(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


@dataclass
class FakePrometheus:
    """Series held in memory, answered as Prometheus's HTTP API does; records every request."""

    series: list[tuple[dict[str, str], list[tuple[float, float]]]] = field(default_factory=list)
    requests: list[httpx.Request] = field(default_factory=list)
    fail: list[httpx.Response | Exception] = field(default_factory=list)

    def add(self, name: str, points: list[tuple[float, float]], **labels: str) -> None:
        metric = {"__name__": name, "job": "retire-gateway", "instance": INSTANCE, **labels}
        self.series.append((metric, sorted(points)))

    def up(self, times: list[float], value: float = 1.0) -> None:
        self.add("up", [(t, value) for t in times])

    def counter(self, name: str, points: list[tuple[float, float]], version: str = "1", **labels: str) -> None:
        self.add(name, points, model="churn-model", version=version, **labels)

    def _match(self, selector: str) -> tuple[list[tuple[dict[str, str], list[tuple[float, float]]]], float | None]:
        found = _SELECTOR_RE.match(selector)
        assert found, f"not a plain selector: {selector}"
        wanted = {k: v.replace('\\"', '"').replace("\\\\", "\\") for k, v in _LABEL_RE.findall(found["labels"] or "")}
        wanted["__name__"] = found["name"]
        matched = [(m, p) for m, p in self.series if all(m.get(k) == v for k, v in wanted.items())]
        return matched, (int(found["ms"]) / 1000 if found["ms"] else None)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.fail:
            failure = self.fail.pop(0)
            if isinstance(failure, Exception):
                raise failure
            return failure
        params = request.url.params
        if request.url.path == "/api/v1/series":
            matched, _ = self._match(params["match[]"])
            start, end = float(params["start"]), float(params["end"])
            data: Any = [m for m, p in matched if any(start <= t <= end for t, _ in p)]
            return httpx.Response(200, json={"status": "success", "data": data})
        assert request.url.path == "/api/v1/query", request.url
        matched, window = self._match(params["query"])
        assert window is not None, "the source reads raw samples of a range selector"
        time = float(params["time"])
        result = []
        for metric, points in matched:
            values = [[t, str(v)] for t, v in points if time - window < t <= time]
            if values:
                result.append({"metric": metric, "values": values})
        return httpx.Response(200, json={"status": "success", "data": {"resultType": "matrix", "result": result}})


@dataclass
class Clock:
    now: float = T0 + 3600
    slept: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def make(
    fake: FakePrometheus, clock: Clock | None = None, **overrides: Any
) -> tuple[PrometheusTrafficSource, httpx.Client]:
    clock = clock or Clock()
    values: dict[str, Any] = {"url": "http://prometheus.test:9090", "max_scrape_gap_seconds": 5.0, "step_seconds": 10}
    values.update(overrides)
    client = httpx.Client(transport=httpx.MockTransport(fake))
    source = PrometheusTrafficSource(client, PrometheusSettings.model_validate(values), clock=clock, sleep=clock.sleep)
    return source, client


def scraped(fake: FakePrometheus, start: float = T0 - 3, end: float = T0 + 63, every: float = 1.0) -> list[float]:
    """Answered scrapes every ``every`` seconds from ``start`` to ``end``; returns their times."""
    times = [start + i * every for i in range(int((end - start) / every) + 1)]
    fake.up(times)
    return times


def held(times: list[float], changes: dict[float, float], until: float | None = None) -> list[tuple[float, float]]:
    """A counter as Prometheus stores it: a sample at every scrape from its first change on, holding its last value."""
    points = []
    for t in times:
        if until is not None and t > until:
            break
        latest = [c for c in changes if c <= t]
        if latest:
            points.append((t, changes[max(latest)]))
    return points


def sample(fake: FakePrometheus, ref: ModelRef = V1, end: float = T0 + 60, **overrides: Any) -> TrafficSample:
    source, client = make(fake, **overrides)
    with client:
        return source.sample(ref, at(T0), at(end))


def test_the_source_implements_the_port() -> None:
    source, client = make(FakePrometheus())
    with client:
        assert isinstance(source, TrafficSource)
        assert source.name == "prometheus"


def test_queries_read_raw_samples_of_the_configured_selectors() -> None:
    fake = FakePrometheus()
    times = scraped(fake)
    fake.counter(REQUESTS, held(times, {T0 - 3: 4, T0 + 30: 6}), status="200")
    result = sample(fake, auth_header=TOKEN)
    assert (result.verdict, result.requests) == (TrafficVerdict.ACTIVE, 2)
    queries = [(r.method, r.url.path, r.url.params.get("query")) for r in fake.requests]
    # Scrapes from max_scrape_gap before the start to max_scrape_gap after the end.
    assert queries[0] == ("GET", "/api/v1/query", 'up{job="retire-gateway"}[70000ms]')
    assert fake.requests[0].url.params["time"] == f"{T0 + 65:.3f}"
    assert ("GET", "/api/v1/query", f'{REQUESTS}{{job="retire-gateway",model="churn-model",version="1"}}[65000ms]') in (
        queries
    )
    assert ("GET", "/api/v1/query", f'{ERRORS}{{job="retire-gateway",model="churn-model",version="1"}}[65000ms]') in (
        queries
    )
    # Counters are read up to the first scrape at or after the window's end (here at the end itself).
    assert {r.url.params["time"] for r in fake.requests[1:]} == {f"{T0 + 60:.3f}"}
    assert all(r.url.host == "prometheus.test" for r in fake.requests)
    assert all(r.headers["authorization"] == TOKEN for r in fake.requests)


def test_label_values_are_escaped_in_promql() -> None:
    fake = FakePrometheus()
    scraped(fake)
    odd = ModelRef(platform="local", name='team"a\\b', version="1")
    sample(fake, odd)
    assert any('model="team\\"a\\\\b"' in (r.url.params.get("query") or "") for r in fake.requests)


def test_counter_resets_and_restarts_never_hide_requests() -> None:
    fake = FakePrometheus()
    times = scraped(fake)
    # 10 before the window; +2; a restart drops it to 3 (3 new); +2 more.
    fake.counter(REQUESTS, held(times, {T0 - 3: 10, T0 + 5: 12, T0 + 7: 3, T0 + 8: 5}), status="200")
    # Another series: 5 until T0+20, then absent from the scrapes of a restarted gateway until it comes
    # back at 9 (more than the old 5: its value alone would hide the reset, its absence shows it).
    fake.counter(REQUESTS, held(times, {T0 - 3: 5}, until=T0 + 20) + held(times, {T0 + 30: 9}), status="404")
    # Born inside the window: its first value is all requests (increase() would say 0).
    fake.counter(REQUESTS, [(t, 4) for t in times if t >= T0 + 40], status="410")
    result = sample(fake)
    assert result.verdict is TrafficVerdict.ACTIVE
    assert result.requests == (2 + 3 + 2) + 9 + 4
    assert "2 counter reset(s)" in result.detail
    assert f"{result.requests} request(s) to churn-model@1" in result.detail


def test_count_arithmetic_without_scrape_information() -> None:
    one = Series((("instance", INSTANCE),), [(T0 - 1, 7.0), (T0 + 1, 7.0), (T0 + 2, 8.0), (T0 + 3, 1.0)])
    count = count_increase([one], T0, T0 + 10, {}, 5.0)
    assert (count.total, count.resets, count.series) == (1.0 + 1.0, 1, 1)
    # Samples after the cut and before the baseline's reach do not count.
    late = Series((), [(T0 - 60, 1.0), (T0 + 20, 50.0)])
    assert count_increase([late], T0, T0 + 10, {}, 5.0).total == 0


def test_no_request_with_full_coverage_is_idle() -> None:
    fake = FakePrometheus()
    times = scraped(fake)
    fake.counter(REQUESTS, [(t, 12) for t in times], status="200")
    fake.counter(REQUESTS, [(t, 40) for t in times], version="2", status="200")
    result = sample(fake)
    assert (result.verdict, result.requests, result.errors, result.coverage) == (TrafficVerdict.IDLE, 0, 0, 1.0)
    assert "0 requests to churn-model@1" in result.detail


def test_absent_series_never_seen_is_nodata_not_zero() -> None:
    fake = FakePrometheus()
    times = scraped(fake)
    fake.counter(REQUESTS, [(t, 40) for t in times], version="2", status="200")  # another version is served
    result = sample(fake)
    assert result.verdict is TrafficVerdict.NODATA
    assert result.requests is None
    assert "never requested" in result.detail and "never read as zero" in result.detail
    series_calls = [r for r in fake.requests if r.url.path == "/api/v1/series"]
    assert len(series_calls) == 1
    assert series_calls[0].url.params["end"] == f"{T0:.3f}"


def test_absent_series_seen_before_the_window_is_zero() -> None:
    fake = FakePrometheus()
    scraped(fake)
    fake.counter(REQUESTS, [(T0 - 7200, 5), (T0 - 3600, 9)], status="200")  # served before a gateway restart
    result = sample(fake)
    assert (result.verdict, result.requests) == (TrafficVerdict.IDLE, 0)
    assert "absent (seen before)" in result.detail


def test_a_scrape_gap_is_nodata_naming_the_gap() -> None:
    fake = FakePrometheus()
    before = [T0 - 1 + i for i in range(12)]  # answered up to T0+10
    after = [T0 + 40 + i for i in range(22)]  # answered again from T0+40
    fake.up(before + after)
    fake.up([T0 + 11 + i for i in range(29)], value=0.0)  # scrapes that failed: the gateway was down
    fake.counter(REQUESTS, [(t, 3.0) for t in before] + [(t, 5.0) for t in after], status="200")
    result = sample(fake)
    assert result.verdict is TrafficVerdict.NODATA
    assert "answered no scrape for 30.0 s" in result.detail
    assert "longest allowed gap 5 s" in result.detail
    assert result.coverage == pytest.approx(0.5)
    assert "5 request(s)" in result.detail  # what was seen is still told; a restart while down counts in full


def test_no_scrape_after_the_end_is_nodata() -> None:
    fake = FakePrometheus()
    scraped(fake, end=T0 + 50)
    fake.counter(REQUESTS, [(T0 - 1, 3), (T0 + 50, 3)], status="200")
    result = sample(fake)
    assert result.verdict is TrafficVerdict.NODATA
    assert "no scrape at or after the window's end" in result.detail


def test_no_up_series_is_nodata() -> None:
    fake = FakePrometheus()
    fake.counter(REQUESTS, [(T0 - 1, 3), (T0 + 50, 9)], status="200")
    result = sample(fake, job="wrong-job")
    assert result.verdict is TrafficVerdict.NODATA
    assert "no `up` series for job 'wrong-job'" in result.detail


def test_a_window_ending_now_waits_for_the_next_scrape() -> None:
    fake = FakePrometheus()
    clock = Clock(now=T0 + 60)
    times = scraped(fake, end=T0 + 59)
    fake.counter(REQUESTS, [*held(times, {T0 - 3: 3}), (T0 + 61, 4)], status="200")  # seen only after the end
    fake.up([T0 + 61])
    source, client = make(fake, clock)
    with client:
        result = source.sample(V1, at(T0), at(T0 + 60))
    assert (result.verdict, result.requests) == (TrafficVerdict.ACTIVE, 1)
    assert clock.slept and sum(clock.slept) <= 5.0


def test_a_scrape_that_never_comes_ends_the_wait_as_nodata() -> None:
    fake = FakePrometheus()
    clock = Clock(now=T0 + 60)
    scraped(fake, end=T0 + 59)
    fake.counter(REQUESTS, [(T0 - 1, 3), (T0 + 59, 3)], status="200")
    source, client = make(fake, clock)
    with client:
        result = source.sample(V1, at(T0), at(T0 + 60))
    assert result.verdict is TrafficVerdict.NODATA
    assert sum(clock.slept) <= 5.0 + 1.0


def test_error_json_is_an_error_with_prometheus_message() -> None:
    fake = FakePrometheus()
    fake.fail.append(
        httpx.Response(400, json={"status": "error", "errorType": "bad_data", "error": 'parse error: unexpected "}"'})
    )
    result = sample(fake)
    assert result.verdict is TrafficVerdict.ERROR
    assert 'HTTP 400 bad_data to \'up{job="retire-gateway"}' in result.detail
    assert 'parse error: unexpected "}"' in result.detail
    assert result.requests is None
    assert len(fake.requests) == 1  # a refused query is not retried


def test_an_unexpected_answer_shape_is_an_error() -> None:
    fake = FakePrometheus()
    fake.fail.append(httpx.Response(200, json={"status": "success", "data": {"resultType": "vector", "result": []}}))
    result = sample(fake)
    assert result.verdict is TrafficVerdict.ERROR
    assert "not raw samples" in result.detail


def test_5xx_is_retried_then_an_error() -> None:
    fake = FakePrometheus()
    fake.fail.extend(httpx.Response(503, text="service unavailable") for _ in range(3))
    clock = Clock()
    source, client = make(fake, clock, max_retries=2)
    with client:
        result = source.sample(V1, at(T0), at(T0 + 60))
    assert result.verdict is TrafficVerdict.ERROR
    assert "HTTP 503" in result.detail
    assert len(fake.requests) == 3 and clock.slept == [0.5, 1.0]


def test_a_5xx_then_an_answer_recovers() -> None:
    fake = FakePrometheus()
    scraped(fake)
    fake.counter(REQUESTS, [(T0 - 1, 3), (T0 + 30, 4)], status="200")
    fake.fail.append(httpx.Response(502))
    assert sample(fake).verdict is TrafficVerdict.ACTIVE


@pytest.mark.parametrize(
    ("failure", "needle"),
    [
        (httpx.ConnectError("[Errno 111] Connection refused"), "is unreachable: ConnectError"),
        (httpx.ReadTimeout("timed out"), "did not answer within 30 s"),
    ],
)
def test_unreachable_or_slow_prometheus_is_an_error(failure: Exception, needle: str) -> None:
    fake = FakePrometheus()
    fake.fail.extend([failure] * 3)
    result = sample(fake, auth_header=TOKEN, url="http://prometheus.test:9090", max_retries=0)
    assert result.verdict is TrafficVerdict.ERROR
    assert "Prometheus at http://prometheus.test:9090" in result.detail and needle in result.detail
    assert "s3cr3t" not in result.detail


def test_the_auth_header_never_reaches_the_detail() -> None:
    echoes = {"status": "error", "errorType": "bad_data", "error": f"rejected header Authorization: {TOKEN}"}
    for response in (httpx.Response(400, json=echoes), httpx.Response(401, text=TOKEN)):
        fake = FakePrometheus()
        fake.fail.append(response)
        result = sample(fake, auth_header=TOKEN)
        assert result.verdict is TrafficVerdict.ERROR
        assert "s3cr3t" not in result.detail and "s3cr3t" not in result.model_dump_json()
        assert fake.requests[0].headers["authorization"] == TOKEN
    fake = FakePrometheus()
    fake.fail.append(httpx.Response(403))
    assert "refused the credentials (HTTP 403)" in sample(fake, auth_header=TOKEN).detail
    assert "s3cr3t" not in repr(PrometheusSettings(auth_header=TOKEN))


def test_errors_and_p95_for_the_bake() -> None:
    fake = FakePrometheus()
    times = scraped(fake)
    fake.counter(REQUESTS, [(T0 - 1, 0), (T0 + 30, 90)], status="200")
    fake.counter(REQUESTS, [(T0 + 30, 10)], status="500")
    fake.counter(ERRORS, [(T0 + 30, 10)])
    # 100 requests at T0+30: 80 under 10 ms, 15 more under 25 ms, 5 under 50 ms.
    for le, count in (("0.01", 80), ("0.025", 95), ("0.05", 100), ("+Inf", 100)):
        fake.counter(BUCKETS, [(T0 - 1, 0), *[(t, count) for t in times if t >= T0 + 30]], le=le)
    result = sample(fake)
    assert (result.verdict, result.requests, result.errors) == (TrafficVerdict.ACTIVE, 100, 10)
    assert result.p95_latency_ms == pytest.approx(25.0)
    assert "100 request(s) to churn-model@1 (10 error(s), p95 25 ms)" in result.detail


def test_bucket_quantile_interpolates_like_histogram_quantile() -> None:
    buckets = {0.1: 50.0, 0.5: 90.0, 1.0: 100.0, float("inf"): 100.0}
    assert bucket_quantile(0.95, buckets) == pytest.approx(0.5 + 0.5 * (95 - 90) / 10)
    assert bucket_quantile(0.5, buckets) == pytest.approx(0.1)
    assert bucket_quantile(0.95, {0.1: 1.0, float("inf"): 10.0}) == pytest.approx(0.1)  # in +Inf: highest bound
    assert bucket_quantile(0.95, {0.1: 0.0, float("inf"): 0.0}) is None
    assert bucket_quantile(0.95, {0.1: 3.0}) is None  # no +Inf bucket


def test_bad_windows_and_versionless_references_are_errors() -> None:
    source, client = make(FakePrometheus())
    with client:
        naive = source.sample(V1, datetime(2027, 1, 1), datetime(2027, 1, 2))
        reversed_window = source.sample(V1, at(T0 + 60), at(T0))
        whole_model = source.sample(ModelRef(platform="local", name="churn-model"), at(T0), at(T0 + 60))
    assert naive.verdict is reversed_window.verdict is whole_model.verdict is TrafficVerdict.ERROR
    assert "timezone-aware" in naive.detail
    assert "empty or reversed" in reversed_window.detail
    assert "names no version" in whole_model.detail


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETIRE_PROMETHEUS_URL", "https://prom.example:9090/")
    monkeypatch.setenv("RETIRE_PROMETHEUS_AUTH_HEADER", TOKEN)
    monkeypatch.setenv("RETIRE_PROMETHEUS_MAX_SCRAPE_GAP_SECONDS", "45")
    monkeypatch.setenv("RETIRE_PROMETHEUS_JOB", "model-gateway")
    settings = PrometheusSettings()
    assert settings.url == "https://prom.example:9090"
    assert settings.auth_header is not None and settings.auth_header.get_secret_value() == TOKEN
    assert (settings.max_scrape_gap_seconds, settings.job) == (45.0, "model-gateway")
    monkeypatch.setenv("RETIRE_PROMETHEUS_URL", "prom.example:9090")
    with pytest.raises(ValueError, match="must start with http"):
        PrometheusSettings()


def test_a_request_naming_prometheus_gets_this_source(settings: RetireSettings, retire_home: Path) -> None:
    platform = get_platform("local", settings)
    try:
        sources = traffic_sources(["prometheus"], platform, settings)
    finally:
        platform.close()
    assert [type(s) for s in sources] == [PrometheusTrafficSource]
    built = build(settings)
    assert built.settings.url == "http://127.0.0.1:9090"
    built.close()
    for source in sources:
        getattr(source, "close", lambda: None)()
