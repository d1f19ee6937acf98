"""The TrafficSource contract: missing data is never zero, and a source that cannot answer says ERROR.

Only IDLE lets a deletion go on, so a window nobody observed must come back NODATA, and a platform
that cannot be reached must come back ERROR without raising.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from retirement.models import ModelRef, TrafficVerdict
from retirement.platforms import get_platform
from retirement.platforms.datature_vi import DatatureViTraffic
from retirement.platforms.openai import OpenAIUsageTraffic
from retirement.platforms.replicate import ReplicatePredictionsTraffic
from retirement.settings import RetireSettings
from retirement.traffic.base import TrafficSource
from retirement.traffic.local import LocalTrafficSource
from tests.contract.test_registry_port import (
    openai_server,
    replicate_server,
    unique,
    use_openai,
    use_replicate,
    use_vi,
    vi_server,
)
from tests.fakes import datature_vi as vi_fake
from tests.fakes import openai_api
from tests.fakes.datature_vi import FakeVi
from tests.fakes.openai_api import OpenAIApi
from tests.fakes.replicate_api import ReplicateApi

__all__ = ["openai_server", "replicate_server", "vi_server"]

SOURCES = ["local", "openai", "replicate", "datature-vi"]


def _no_wait(seconds: float) -> None:
    """Retries back off without sleeping in these tests."""


def _dead_url() -> str:
    """The URL of a port on 127.0.0.1 where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def _seeded(
    platform: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp: Path
) -> tuple[TrafficSource, ModelRef]:
    """The platform's own source, built from settings against its fake, and a ref that exists there."""
    if platform == "local":
        return LocalTrafficSource(tmp / "local"), ModelRef(platform="local", name="churn", version="1")
    if platform == "openai":
        api: OpenAIApi = request.getfixturevalue("openai_server")
        use_openai(monkeypatch, api)
        mid, _ = api.add_fine_tune("gpt-4o-mini-2024-07-18", unique("traffic"))
        ref = ModelRef(platform="openai", name=mid)
    elif platform == "replicate":
        rep: ReplicateApi = request.getfixturevalue("replicate_server")
        use_replicate(monkeypatch, rep)
        slug = f"acme/{unique('traffic')}"
        rep.add_model(slug)
        ref = ModelRef(platform="replicate", name=slug, version=rep.add_version(slug))
    else:
        vi: FakeVi = request.getfixturevalue("vi_server")
        monkeypatch.setenv("RETIRE_HOME", str(tmp / "home"))
        use_vi(monkeypatch, vi)
        run = unique("run")
        vi.add_run(run, {"c1": b"weights"})
        vi.add_deployment(unique("dep"), run, "c1")
        ref = ModelRef(platform="datature-vi", name=run, version="c1")
    built = get_platform(platform, RetireSettings())
    assert built.traffic is not None, f"{platform} has no traffic source"
    request.addfinalizer(built.close)
    return built.traffic, ref


def _unreachable(platform: str, request: pytest.FixtureRequest, tmp: Path) -> tuple[TrafficSource, ModelRef]:
    """The platform's own source, with its platform out of reach (no server; for local, a broken request log)."""
    if platform == "local":
        (tmp / "local").mkdir()
        (tmp / "local" / "requests.db").write_bytes(b"this is not a database" * 100)
        return LocalTrafficSource(tmp / "local"), ModelRef(platform="local", name="churn", version="1")
    client = httpx.Client(base_url=_dead_url(), timeout=2)
    request.addfinalizer(client.close)
    make: dict[str, Callable[[], tuple[TrafficSource, ModelRef]]] = {
        "openai": lambda: (
            OpenAIUsageTraffic(client, SecretStr(openai_api.ADMIN_KEY), sleep=_no_wait),
            ModelRef(platform="openai", name="ft:gpt-4o-mini-2024-07-18:acme:churn:abcd"),
        ),
        "replicate": lambda: (
            ReplicatePredictionsTraffic(client, sleep=_no_wait),
            ModelRef(platform="replicate", name="acme/churn", version="a" * 64),
        ),
        "datature-vi": lambda: (
            DatatureViTraffic(client, vi_fake.ORG, tmp / "snapshots", sleep=_no_wait),
            ModelRef(platform="datature-vi", name="run-1", version="c1"),
        ),
    }
    return make[platform]()


@pytest.mark.parametrize("platform", SOURCES)
def test_source_is_a_traffic_source(
    platform: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    source, _ = _seeded(platform, request, monkeypatch, tmp_path)
    assert isinstance(source, TrafficSource)


@pytest.mark.parametrize("platform", SOURCES)
def test_a_window_nobody_observed_is_nodata_never_idle(
    platform: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    source, ref = _seeded(platform, request, monkeypatch, tmp_path)
    now = datetime.now(UTC)
    # A window that has not happened yet: no source can have seen it, so zero requests is unknown.
    sample = source.sample(ref, now + timedelta(days=1), now + timedelta(days=2))
    assert sample.verdict is TrafficVerdict.NODATA, sample.detail
    assert sample.requests in (None, 0)
    assert sample.coverage < 1.0


@pytest.mark.parametrize("platform", SOURCES)
def test_an_unreachable_platform_is_error_and_sample_does_not_raise(
    platform: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    source, ref = _unreachable(platform, request, tmp_path)
    now = datetime.now(UTC)
    sample = source.sample(ref, now - timedelta(hours=1), now)
    assert sample.verdict is TrafficVerdict.ERROR, sample.detail
    assert sample.detail
