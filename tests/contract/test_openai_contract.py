"""Every call of the OpenAI adapter, sent to Prism serving OpenAI's official OpenAPI spec, is valid."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from pydantic import SecretStr

from retirement.models import ModelRef
from retirement.platforms.openai import OpenAIRegistry, OpenAIUsageTraffic, _Lineage
from tests.fakes.prism import PrismServer, RecordingHook, attempt, bearer_client, prism_fixture

pytestmark = pytest.mark.prism

prism_openai = prism_fixture("openai-openapi.yaml")
FT = ModelRef(platform="openai", name="ft:gpt-4o-mini-2024-07-18:acme::abc123")
JOB = {
    "id": "ftjob-abc123",
    "model": "gpt-4o-mini-2024-07-18",
    "fine_tuned_model": FT.name,
    "organization_id": "org-acme",
    "status": "succeeded",
    "training_file": "file-train",
    "validation_file": "file-valid",
    "result_files": ["file-result"],
}


@pytest.fixture
def hook() -> RecordingHook:
    return RecordingHook()


@pytest.fixture
def client(prism_openai: PrismServer, hook: RecordingHook) -> Iterator[httpx.Client]:
    with bearer_client(prism_openai, "sk-contracttest0123", hook) as c:
        yield c


def test_registry_calls_match_the_spec(client: httpx.Client, hook: RecordingHook) -> None:
    registry = OpenAIRegistry(client, org_id="org-acme", sleep=lambda _s: None, poll_attempts=1)
    attempt(lambda: registry.dependents(FT))  # lists jobs with limit/after until Prism repeats its cursor
    attempt(lambda: registry.list_versions())
    attempt(lambda: registry.exists(FT))
    # Prism's job list never ends (has_more is always true), so drive the rest with one known job.
    registry._jobs = lambda: [JOB]  # type: ignore[method-assign]
    attempt(lambda: registry.describe(FT))  # lists the job's checkpoints until Prism repeats its cursor
    registry._checkpoints = lambda job_id: []  # type: ignore[method-assign]
    items = registry.export(FT)
    for item in items:
        if item.path.startswith("files/"):
            b"".join(item.open())
    registry.deletion_blockers = lambda ref: []  # type: ignore[method-assign]
    registry.delete(FT)
    hook.assert_clean()
    calls = set(hook.calls())
    for expected in (
        "GET /models",
        f"GET /models/{FT.name}",
        f"DELETE /models/{FT.name}",
        "GET /fine_tuning/jobs",
        "GET /fine_tuning/jobs/ftjob-abc123/checkpoints",
        "GET /files/file-train",
        "GET /files/file-train/content",
        "GET /files/file-result/content",
    ):
        assert expected in calls, f"{expected} was never sent; sent: {sorted(calls)}"
    afters = [r.request.url.params.get("after") for r in hook.responses if r.request.url.path == "/fine_tuning/jobs"]
    assert afters[0] is None and len(afters) >= 2 and afters[1]


def test_checkpoint_permissions_call_matches_the_spec(client: httpx.Client, hook: RecordingHook) -> None:
    registry = OpenAIRegistry(client, admin_key=SecretStr("sk-admin-contracttest"), sleep=lambda _s: None)
    # One share listing at a time: Prism's placeholder cursor may never end a listing.
    alone = _Lineage(model={"id": FT.name}, jobs=[JOB], job=JOB, checkpoints=[])
    attempt(lambda: registry._shares(FT.name, alone))
    attempt(lambda: registry._shares(f"{FT.name}:ckpt-step-10", alone))
    hook.assert_clean(at_least=2)
    calls = set(hook.calls())
    for shared in (FT.name, f"{FT.name}:ckpt-step-10"):
        assert f"GET /fine_tuning/checkpoints/{shared}/permissions" in calls, sorted(calls)
    sent = [r.request for r in hook.responses]
    assert all(r.headers["authorization"] == "Bearer sk-admin-contracttest" for r in sent)


def test_usage_call_matches_the_spec(client: httpx.Client, hook: RecordingHook) -> None:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    source = OpenAIUsageTraffic(client, SecretStr("sk-admin-contracttest"), sleep=lambda _s: None)
    for hours in (1, 30, 24 * 3):
        source.sample(FT, start, start + timedelta(hours=hours))
    source.sample(FT, start + timedelta(seconds=30), start + timedelta(minutes=7))
    hook.assert_clean(at_least=4)
    widths = {r.request.url.params["bucket_width"] for r in hook.responses}
    assert widths == {"1m", "1h", "1d"}
