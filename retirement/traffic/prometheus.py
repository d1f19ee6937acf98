"""Traffic, errors and p95 latency of a model version as Prometheus scraped them from the gateway.

How requests are counted, and why not with ``increase()``
---------------------------------------------------------
Requests are a counter per (model, version, status) that restarts at zero when the gateway
restarts. PromQL's ``increase(m[window])`` survives a reset that happens *between two samples of
one series*, but it extrapolates (fractional results) and, worse, it counts nothing for a series
born inside the window that did not grow afterwards: the gateway creates a series on the first
request, so one stray request to an idle version after a restart shows as samples ``1, 1, 1`` and
``increase()`` says 0. A ``query_range`` of ``increase(m[step])`` summed over steps has the same
hole at every step boundary. For a tripwire that must never read "zero" by mistake, this module
reads the raw samples (an instant query of the range selector ``m[...]``) and does the arithmetic
itself, which is ``increase()`` without extrapolation plus births:

* baseline: the series' last sample at or before ``start``; none (the series did not exist at the
  last scrape before ``start``) means the counter started at 0 inside the window;
* every later sample adds ``v - previous`` when ``v >= previous``, and ``v`` itself when
  ``v < previous`` (a reset: the restarted gateway counted ``v`` from 0);
* a series that was missing at a scrape of its target and then reappears was re-created by a
  restarted gateway: its first value after the gap counts in full, whatever the old value was;
* samples are read up to the first scrape at or after ``end``: that scrape is the one that sees the
  requests of the window's last moments. A request a few seconds outside the window may be counted;
  a request inside it is not missed. When ``end`` is now, ``sample()`` waits (at most
  ``max_scrape_gap_seconds``) for that scrape.

Errors are counted the same way. The p95 latency (for the bake) comes from the latency histogram's
bucket counters, grown by the same exact increments and binned into steps of ``step_seconds``; each
step's p95 is interpolated inside its buckets exactly as ``histogram_quantile`` does, and the worst
step is reported, so a spike is not averaged away. ``histogram_quantile(0.95, rate(bucket[...]))``
was not used: ``rate()`` needs two samples of a series inside its range and loses the observations
of a series born in the window, which is the replacement's case right after a cutover.

Left as a known limit: requests a gateway answered after its last scrape and before it died were
never scraped by anyone; and if it restarts *and* the version is requested again before the next
scrape, with the new count not below the old one, the reset cannot be seen (a start-time gauge on
the gateway would remove this).

Coverage, and when an absent series means zero
----------------------------------------------
Coverage comes from the ``up`` series of the scrape job (``job``): every target of the job must
have answered scrapes (``up == 1``) from at or before ``start`` to at or after ``end`` with no two
answered scrapes further apart than ``max_scrape_gap_seconds`` (a scrape that failed, ``up == 0``,
counts as a gap). Otherwise the verdict is NODATA, naming the gap. No ``up`` series at all is NODATA
(Prometheus does not scrape the gateway under that job).

The local gateway exports a request series from the first request to a (model, version) until it
restarts, so with every scrape answered, no series in the window means no request was served. But
the same silence comes from a wrong metric name, a wrong label or a model this gateway never served.
An absent series is therefore zero only if Prometheus has seen that exact series before the window
(within ``series_lookback_hours``), which proves the name and labels match what the gateway
exports; otherwise the verdict is NODATA. Missing data is never zero.

Verdicts: ERROR (Prometheus unreachable, 5xx, a refused query, a timeout: ``sample()`` returns it,
never raises), NODATA (a gap, no ``up``, a series never seen), ACTIVE (requests > 0), IDLE.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from retirement.models import ModelRef, TrafficSample, TrafficVerdict
from retirement.redact import redact_text
from retirement.settings import RetireSettings

logger = logging.getLogger(__name__)

NAME = "prometheus"
# Raw samples are fetched in slices of this many seconds, so a 48 h window at a 1 s scrape stays small per answer.
SLICE_SECONDS = 6 * 3600

Clock = Callable[[], float]
Sleep = Callable[[float], None]


class PrometheusSettings(BaseSettings):
    """Where Prometheus is, how to ask it, and the PromQL that finds a model version's traffic."""

    model_config = SettingsConfigDict(env_prefix="RETIRE_PROMETHEUS_", extra="ignore")

    url: str = Field(
        default="http://127.0.0.1:9090",
        description="Base URL of the Prometheus HTTP API, e.g. 'http://prometheus.internal:9090'.",
    )
    auth_header: SecretStr | None = Field(
        default=None,
        description="Value of the Authorization header sent to Prometheus (e.g. 'Bearer <token>'); never logged.",
    )
    timeout_seconds: float = Field(default=30.0, gt=0, le=600, description="Timeout of one query (seconds).")
    max_retries: int = Field(
        default=2, ge=0, le=10, description="Retries of a query after a connection error, a timeout or a 5xx."
    )
    step_seconds: float = Field(
        default=60.0,
        gt=0,
        description="Resolution of the p95 latency: the p95 of every step of this length (seconds) is computed "
        "and the worst one reported, so a spike during a bake is not averaged away.",
    )
    max_scrape_gap_seconds: float = Field(
        default=120.0,
        gt=0,
        description="Longest time between two answered scrapes of the gateway (up == 1) that still counts as "
        "observed; a longer gap makes the verdict NODATA. About twice the scrape interval.",
    )
    job: str = Field(
        default="retire-gateway",
        min_length=1,
        description="The Prometheus scrape job of the gateway; its `up` series measure coverage ({job} in queries).",
    )
    series_lookback_hours: float = Field(
        default=24.0 * 30,
        gt=0,
        description="How far before the window to look for the request series, to tell 'never requested since "
        "the gateway restarted' (zero) from 'this series does not exist' (NODATA).",
    )
    requests_selector: str = Field(
        default='retire_gateway_requests_total{job="{job}",model="{model}",version="{version}"}',
        description="Series selector of the request counter(s) of one version; every matching series is summed. "
        "Placeholders {model}, {version}, {job}. Must be a selector (no function): raw samples are read.",
    )
    errors_selector: str = Field(
        default='retire_gateway_request_errors_total{job="{job}",model="{model}",version="{version}"}',
        description="Series selector of the error counter(s) of one version (placeholders as above).",
    )
    latency_buckets_selector: str = Field(
        default='retire_gateway_request_duration_seconds_bucket{job="{job}",model="{model}",version="{version}"}',
        description="Series selector of the latency histogram's buckets (with an `le` label, in SECONDS) of one "
        "version; the p95 is computed from their raw samples as histogram_quantile does (placeholders as above).",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://, e.g. http://127.0.0.1:9090")
        return value.rstrip("/")

    @field_validator("auth_header", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        return value


class QueryError(Exception):
    """Prometheus could not answer a query; the message is safe to show (no credentials)."""


def promql_string(value: str) -> str:
    """``value`` escaped for the inside of a PromQL double-quoted string."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def fill(template: str, **values: str) -> str:
    """``template`` with each ``{name}`` replaced by its (PromQL-escaped) value; other braces stay as they are."""
    for key, value in values.items():
        template = template.replace("{" + key + "}", value)
    return template


def duration(seconds: float) -> str:
    """A PromQL duration in whole milliseconds (at least 1 ms)."""
    return f"{max(1, math.ceil(seconds * 1000))}ms"


Labels = tuple[tuple[str, str], ...]


@dataclass
class Series:
    """One series' raw samples, oldest first."""

    labels: Labels
    points: list[tuple[float, float]] = field(default_factory=list)

    @property
    def instance(self) -> str:
        return dict(self.labels).get("instance", "")


@dataclass
class Count:
    """What the raw samples of some counters add up to over a window."""

    total: float = 0.0
    resets: int = 0
    series: int = 0


def increments(
    one: Series, start: float, cut: float, scrapes: dict[str, list[float]], scrape_gap: float
) -> list[tuple[float, float, bool]]:
    """What one counter series grew by at each of its samples in ``(start, cut]``: (time, increase, was a reset).

    Args:
        one: raw samples, fetched from before ``start`` to after ``cut``.
        start: the window's start (epoch seconds); the baseline is the last sample at or before it.
        cut: the last sample time that counts (the first scrape at or after the window's end).
        scrapes: every scrape time (answered or not) per instance, sorted: a series missing from a scrape
            between two of its samples was re-created by a restarted gateway.
        scrape_gap: a sample older than this before ``start`` is no baseline.
    """
    baseline = [(t, v) for t, v in one.points if start - scrape_gap < t <= start]
    # No baseline: the series did not exist at the last scrape before the window, so it started at 0.
    previous: tuple[float, float] | None = baseline[-1] if baseline else None
    seen = scrapes.get(one.instance, [])
    found: list[tuple[float, float, bool]] = []
    for t, value in one.points:
        if not start < t <= cut:
            continue
        if previous is None:
            found.append((t, value, False))
        else:
            vanished = bisect.bisect_left(seen, t) > bisect.bisect_right(seen, previous[0])
            if value < previous[1] or vanished:
                found.append((t, value, True))
            else:
                found.append((t, value - previous[1], False))
        previous = (t, value)
    return found


def count_increase(
    series: list[Series], start: float, cut: float, scrapes: dict[str, list[float]], scrape_gap: float
) -> Count:
    """Increase of the counters in ``series`` over ``(start, cut]``, reset- and birth-aware (see the module doc)."""
    result = Count()
    for one in series:
        found = increments(one, start, cut, scrapes, scrape_gap)
        if found:
            result.series += 1
            result.total += sum(inc for _, inc, _ in found)
            result.resets += sum(1 for _, _, reset in found if reset)
    return result


def bucket_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """The ``q`` quantile of cumulative histogram ``buckets`` (upper bound -> count), as PromQL's
    ``histogram_quantile`` computes it: linear interpolation inside the bucket that holds the rank.
    None without a +Inf bucket or without observations."""
    ordered = sorted(buckets.items())
    if not ordered or not math.isinf(ordered[-1][0]):
        return None
    counts: list[float] = []
    for _, count in ordered:
        counts.append(max(count, counts[-1]) if counts else count)  # cumulative counts never decrease
    total = counts[-1]
    if total <= 0:
        return None
    rank = q * total
    b = bisect.bisect_left(counts, rank)
    if b == len(ordered) - 1:
        return ordered[-2][0] if len(ordered) > 1 else None
    upper = ordered[b][0]
    if b == 0 and upper <= 0:
        return upper
    lower = 0.0 if b == 0 else ordered[b - 1][0]
    below = 0.0 if b == 0 else counts[b - 1]
    inside = counts[b] - below
    return lower + (upper - lower) * ((rank - below) / inside) if inside > 0 else upper


def worst_p95(
    series: list[Series],
    start: float,
    end: float,
    cut: float,
    scrapes: dict[str, list[float]],
    scrape_gap: float,
    step: float,
) -> float | None:
    """The highest p95 (in the histogram's unit) of any step of ``step`` seconds of the window.

    Bucket counts grow by the exact increments of their raw samples (births and resets included),
    binned by the step their scrape fell in; what the scrape after ``end`` saw belongs to the last step.
    """
    step = max(step, (end - start) / 10_000)  # at most 10,000 steps, whatever the window
    steps = max(1, math.ceil((end - start) / step))
    bins: list[dict[float, float]] = [{} for _ in range(steps)]
    for one in series:
        le = dict(one.labels).get("le")
        if le is None:
            continue
        bound = float(le)
        for t, inc, _ in increments(one, start, cut, scrapes, scrape_gap):
            index = min(steps - 1, int((t - start) // step))
            bins[index][bound] = bins[index].get(bound, 0.0) + inc
    found = [v for v in (bucket_quantile(0.95, b) for b in bins) if v is not None]
    return max(found) if found else None


def requests_int(total: float) -> int:
    """A counter increase as a whole number of requests: never rounds a positive increase down to zero."""
    return math.ceil(total - 1e-9) if total > 0 else 0


def _utc(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _at(epoch: float) -> str:
    return _utc(datetime.fromtimestamp(epoch, UTC))


@dataclass
class Coverage:
    """How well the scrapes of the job cover a window."""

    ok: bool
    cut: float
    coverage: float
    problem: str = ""
    scrapes: dict[str, list[float]] = field(default_factory=dict)


def check_coverage(up: list[Series], start: float, end: float, max_gap: float) -> Coverage:
    """Every target of the job answered a scrape at or before ``start`` and at or after ``end``, and no two
    answered scrapes (``up == 1``) in between are more than ``max_gap`` apart.

    ``up`` is fetched from ``start - max_gap``, so "no answered scrape at or before start" means none
    within ``max_gap`` of it. ``cut`` is the latest first-scrape-at-or-after-``end`` over the targets.
    """
    answered: dict[str, list[float]] = {}
    every: dict[str, list[float]] = {}
    for one in up:
        answered.setdefault(one.instance, []).extend(t for t, v in one.points if v == 1)
        every.setdefault(one.instance, []).extend(t for t, _ in one.points)
    for times in (*answered.values(), *every.values()):
        times.sort()
    span = end - start
    if not answered:
        return Coverage(False, end, 0.0, "no `up` series", every)
    holes: list[tuple[float, str]] = []
    worst_lost = 0.0
    cut = end
    for instance, times in sorted(answered.items()):
        target = f"target {instance}" if instance else "the target"
        before = [t for t in times if t <= start]
        after = [t for t in times if t >= end]
        inner = [t for t in times if start < t < end]
        lost = 0.0
        if after:
            cut = max(cut, after[0])
        if not before:
            opening = min([*inner, *after[:1], end])
            lost += opening - start
            holes.append(
                (
                    max_gap + opening - start,
                    f"{target} answered no scrape in the {max_gap:g} s before the window's start {_at(start)} "
                    f"(first answered scrape {_at(opening) if opening < end else 'none in the window'})",
                )
            )
        if not after:
            closing = max([*before[-1:], *inner, start])
            lost += end - closing
            holes.append(
                (
                    end - closing,
                    f"{target} answered no scrape at or after the window's end {_at(end)} within {max_gap:g} s "
                    f"(last answered scrape {_at(closing) if closing > start or before else 'none'}): the end "
                    "of the window is not observed yet, or the target is down",
                )
            )
        points = [*before[-1:], *inner, *after[:1]]
        for a, b in itertools.pairwise(points):
            if b - a > max_gap:
                lost += min(b, end) - max(a, start)
                holes.append(
                    (
                        b - a,
                        f"{target} answered no scrape for {b - a:.1f} s, from {_at(a)} to {_at(b)} "
                        "(down, restarting or not scraped)",
                    )
                )
        worst_lost = max(worst_lost, lost)
    coverage = max(0.0, min(1.0, 1 - worst_lost / span)) if span > 0 else 0.0
    if holes:
        holes.sort(reverse=True)
        more = f" (and {len(holes) - 1} more gap(s))" if len(holes) > 1 else ""
        problem = f"{holes[0][1]}; longest allowed gap {max_gap:g} s{more}"
        return Coverage(False, cut, coverage, problem, every)
    return Coverage(True, cut, 1.0, "", every)


class PrometheusTrafficSource:
    """Requests, errors and p95 latency of a model version, read from Prometheus.

    Args:
        client: the HTTP client (its base URL is not used: ``settings.url`` is); closed by ``close()``
            only when ``close_client`` is True.
        settings: where Prometheus is and which PromQL to use.
        clock: current time in epoch seconds (tests move it).
        sleep: how to wait between retries and for the scrape after ``end`` (tests make it instant).
        close_client: close ``client`` in ``close()`` (when ``build`` made it).
    """

    name = NAME

    def __init__(
        self,
        client: httpx.Client,
        settings: PrometheusSettings | None = None,
        *,
        clock: Clock = time.time,
        sleep: Sleep = time.sleep,
        close_client: bool = False,
    ) -> None:
        self.client = client
        self.settings = settings or PrometheusSettings()
        self.clock = clock
        self.sleep = sleep
        self._close_client = close_client

    def close(self) -> None:
        """Close the HTTP client if this source owns it."""
        if self._close_client:
            self.client.close()

    # -- HTTP ------------------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        secret = self.settings.auth_header
        return {"Authorization": secret.get_secret_value()} if secret is not None else {}

    def _safe(self, text: str) -> str:
        secret = self.settings.auth_header
        if secret is not None and secret.get_secret_value():
            text = text.replace(secret.get_secret_value(), "[redacted]")
        return redact_text(text)

    def _get(self, path: str, params: dict[str, str]) -> Any:
        """The ``data`` of a Prometheus API answer, retrying transport errors and 5xx.

        Raises:
            QueryError: unreachable, timed out, refused, or an answer with status "error".
        """
        url = f"{self.settings.url}{path}"
        where = f"Prometheus at {self.settings.url}"
        attempts = self.settings.max_retries + 1
        for attempt in range(attempts):
            problem: str
            try:
                response = self.client.get(
                    url, params=params, headers=self._headers(), timeout=self.settings.timeout_seconds
                )
            except httpx.TimeoutException as exc:
                problem = f"{where} did not answer within {self.settings.timeout_seconds:g} s ({type(exc).__name__})"
            except httpx.TransportError as exc:
                problem = f"{where} is unreachable: {type(exc).__name__}: {exc}"
            else:
                body: Any
                try:
                    body = response.json()
                except ValueError:
                    body = None
                message = body.get("error") if isinstance(body, dict) else None
                if response.status_code in (401, 403):
                    raise QueryError(
                        self._safe(
                            f"{where} refused the credentials (HTTP {response.status_code}); "
                            "check RETIRE_PROMETHEUS_AUTH_HEADER"
                        )
                    )
                if response.status_code < 500 or attempt == attempts - 1:
                    if isinstance(body, dict) and body.get("status") == "success":
                        return body.get("data")
                    kind = f" {body.get('errorType')}" if isinstance(body, dict) and body.get("errorType") else ""
                    text = message or (response.text[:300].strip() if response.text else response.reason_phrase)
                    query = params.get("query") or params.get("match[]") or path
                    raise QueryError(
                        self._safe(f"{where} answered HTTP {response.status_code}{kind} to {query!r}: {text}")
                    )
                problem = f"{where} answered HTTP {response.status_code}: {message or response.reason_phrase}"
            if attempt == attempts - 1:
                raise QueryError(self._safe(problem))
            wait = 0.5 * 2**attempt
            logger.info("prometheus query failed (%s); retrying in %.1fs", self._safe(problem), wait)
            self.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    def raw(self, selector: str, start: float, end: float) -> list[Series]:
        """Every raw sample of ``selector`` in ``(start, end]``, by series, fetched in slices.

        Raises:
            QueryError: Prometheus could not answer, or the selector is not a plain series selector.
        """
        found: dict[Labels, Series] = {}
        low = start
        while low < end:
            high = min(end, low + SLICE_SECONDS)
            data = self._get("/api/v1/query", {"query": f"{selector}[{duration(high - low)}]", "time": f"{high:.3f}"})
            if not isinstance(data, dict) or data.get("resultType") != "matrix":
                kind = data.get("resultType") if isinstance(data, dict) else type(data).__name__
                raise QueryError(f"Prometheus answered a {kind} to {selector!r}, not raw samples (a matrix)")
            for item in data.get("result") or []:
                labels: Labels = tuple(sorted((item.get("metric") or {}).items()))
                one = found.setdefault(labels, Series(labels))
                for t, v in item.get("values") or []:
                    point = (float(t), float(v))
                    if low < point[0] <= high and not math.isnan(point[1]):
                        one.points.append(point)
            low = high
        for one in found.values():
            one.points.sort()
        return list(found.values())

    def seen_before(self, selector: str, start: float) -> bool:
        """True when Prometheus knows a series matching ``selector`` in the lookback before ``start``."""
        lookback = self.settings.series_lookback_hours * 3600
        data = self._get(
            "/api/v1/series", {"match[]": selector, "start": f"{start - lookback:.3f}", "end": f"{start:.3f}"}
        )
        return bool(data)

    # -- the port ----------------------------------------------------------------------------------

    def _settle(self, up_selector: str, start: float, end: float) -> list[Series]:
        """The ``up`` samples, waiting (at most the longest allowed gap) for the first scrape at or after ``end``."""
        gap = self.settings.max_scrape_gap_seconds
        deadline = end + gap
        while True:
            now = self.clock()
            up = self.raw(up_selector, start - gap, min(now, deadline))
            instances: dict[str, float] = {}
            for one in up:
                answered = [t for t, v in one.points if v == 1]
                if answered:
                    instances[one.instance] = max(instances.get(one.instance, -math.inf), answered[-1])
            if (instances and all(t >= end for t in instances.values())) or now >= deadline or end > now + 1.0:
                return up
            self.sleep(min(1.0, max(0.05, gap / 10), deadline - now))

    def sample(self, ref: ModelRef, start: datetime, end: datetime) -> TrafficSample:
        """Requests, errors and p95 latency for ``ref`` over ``[start, end)``, with a verdict. Never raises.

        ERROR when Prometheus cannot answer; NODATA when a scrape gap or a missing series leaves part
        of the window unobserved; ACTIVE when any request reached the version; IDLE otherwise.
        """
        base: dict[str, Any] = {"source": self.name, "reference": ref, "start": start, "end": end}
        problem = None
        if start.tzinfo is None or end.tzinfo is None:
            problem = "start and end must be timezone-aware datetimes (UTC)"
        elif end <= start:
            problem = f"the window is empty or reversed (start {_utc(start)} >= end {_utc(end)})"
        elif ref.version is None:
            problem = f"{ref} names no version; the Prometheus source counts requests per version (name@version)"
        if problem:
            return TrafficSample(**base, verdict=TrafficVerdict.ERROR, detail=problem)
        assert ref.version is not None
        s = self.settings
        names = {
            "model": promql_string(ref.name),
            "version": promql_string(ref.version),
            "job": promql_string(s.job),
        }
        t0, t1 = start.timestamp(), end.timestamp()
        gap = s.max_scrape_gap_seconds
        try:
            up = self._settle(f'up{{job="{names["job"]}"}}', t0, t1)
            cover = check_coverage(up, t0, t1, gap)
            requests_sel = fill(s.requests_selector, **names)
            fetch_to = max(cover.cut, t1)
            req = count_increase(self.raw(requests_sel, t0 - gap, fetch_to), t0, cover.cut, cover.scrapes, gap)
            err = count_increase(
                self.raw(fill(s.errors_selector, **names), t0 - gap, fetch_to), t0, cover.cut, cover.scrapes, gap
            )
            requests, errors = requests_int(req.total), requests_int(err.total)
            p95 = None
            if requests:
                buckets = self.raw(fill(s.latency_buckets_selector, **names), t0 - gap, fetch_to)
                worst = worst_p95(buckets, t0, t1, cover.cut, cover.scrapes, gap, s.step_seconds)
                p95 = None if worst is None else worst * 1000
            seen = True if req.series else self.seen_before(requests_sel, t0)
        except QueryError as exc:
            return TrafficSample(**base, verdict=TrafficVerdict.ERROR, detail=str(exc))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            return TrafficSample(
                **base,
                verdict=TrafficVerdict.ERROR,
                detail=self._safe(f"Prometheus at {s.url} answered something unexpected: {type(exc).__name__}: {exc}"),
            )
        window = f"{_utc(start)} - {_utc(end)}"
        counts = {"requests": requests, "errors": errors, "p95_latency_ms": p95, "coverage": cover.coverage}
        p95_text = f", p95 {p95:.0f} ms" if p95 is not None else ""
        resets = f"; {req.resets} counter reset(s) (gateway restarts) counted in" if req.resets else ""
        seen_text = f"{requests} request(s) to {ref} ({errors} error(s){p95_text}) over {window}{resets}"
        if not up:
            return TrafficSample(
                **base,
                coverage=0.0,
                verdict=TrafficVerdict.NODATA,
                detail=f"Prometheus has no `up` series for job {s.job!r} from {window}: it does not scrape the "
                "gateway under that job (check RETIRE_PROMETHEUS_JOB and the scrape config); missing data is "
                "never zero",
            )
        if not cover.ok:
            return TrafficSample(
                **base,
                **counts,
                verdict=TrafficVerdict.NODATA,
                detail=f"{cover.problem}; observed {cover.coverage:.1%} of the window; {seen_text} in the observed "
                "part; missing data is never zero",
            )
        if not seen:
            return TrafficSample(
                **base,
                **{**counts, "requests": None, "errors": None},
                verdict=TrafficVerdict.NODATA,
                detail=f"no series {requests_sel} in Prometheus, in the window or in the {s.series_lookback_hours:g} h "
                f"before it: either {ref} was never requested through this gateway, or the metric name or labels do "
                "not match it; an absent series is never read as zero",
            )
        if requests > 0:
            return TrafficSample(
                **base,
                **counts,
                verdict=TrafficVerdict.ACTIVE,
                detail=f"{seen_text}; every scrape of job {s.job!r} answered (gaps <= {gap:g} s)",
            )
        how = "its request series did not grow" if req.series else "its request series was absent (seen before)"
        return TrafficSample(
            **base,
            **counts,
            verdict=TrafficVerdict.IDLE,
            detail=f"0 requests to {ref} over {window}: {how} while every scrape of job {s.job!r} answered "
            f"(gaps <= {gap:g} s)",
        )


def build(settings: RetireSettings) -> PrometheusTrafficSource:
    """The Prometheus source from RETIRE_PROMETHEUS_* (``settings`` is the library's; unused beyond wiring)."""
    prom = PrometheusSettings()
    client = httpx.Client(timeout=prom.timeout_seconds)
    return PrometheusTrafficSource(client, prom, close_client=True)


__all__ = [
    "NAME",
    "PrometheusSettings",
    "PrometheusTrafficSource",
    "QueryError",
    "build",
    "check_coverage",
    "count_increase",
    "fill",
    "promql_string",
]
