"""Combine what several traffic sources saw into one verdict: IDLE only if every source is IDLE."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from retirement.models import ModelRef, TrafficReport, TrafficSample, TrafficVerdict
from retirement.traffic.base import TrafficSource

# When sources disagree, the most alarming verdict wins.
_SEVERITY = {TrafficVerdict.IDLE: 0, TrafficVerdict.NODATA: 1, TrafficVerdict.ERROR: 2, TrafficVerdict.ACTIVE: 3}


def combine(ref: ModelRef, start: datetime, end: datetime, samples: Sequence[TrafficSample]) -> TrafficReport:
    """One report from every source's sample; no sample at all is NODATA, never IDLE."""
    if not samples:
        return TrafficReport(
            reference=ref,
            start=start,
            end=end,
            verdict=TrafficVerdict.NODATA,
            reason=f"no traffic source observes {ref} on {ref.platform}: configure one in `traffic_sources` "
            "(e.g. prometheus); without data nothing is deleted",
        )
    verdict = max((s.verdict for s in samples), key=_SEVERITY.__getitem__)
    parts = [f"{s.source}: {s.verdict.value}" + (f" ({s.detail})" if s.detail else "") for s in samples]
    reason = "; ".join(parts)
    if len({s.verdict for s in samples}) > 1:
        reason = "sources disagree - " + reason
    return TrafficReport(reference=ref, start=start, end=end, verdict=verdict, samples=list(samples), reason=reason)


def observe(sources: Sequence[TrafficSource], ref: ModelRef, start: datetime, end: datetime) -> TrafficReport:
    """Ask every source about ``ref`` over ``[start, end)`` and combine the answers."""
    samples = []
    for source in sources:
        try:
            samples.append(source.sample(ref, start, end))
        except Exception as exc:  # a source that raises is an ERROR verdict, never a silent zero
            samples.append(
                TrafficSample(
                    source=getattr(source, "name", type(source).__name__),
                    reference=ref,
                    start=start,
                    end=end,
                    verdict=TrafficVerdict.ERROR,
                    detail=f"{type(exc).__name__}: {exc}",
                )
            )
    return combine(ref, start, end, samples)
