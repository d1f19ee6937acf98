"""The OpenAI adapter against a fake OpenAI API behind httpx.MockTransport."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from retirement.errors import (
    AuthError,
    ConfigError,
    ConflictError,
    DeletionBlockedError,
    InputError,
    NotFoundError,
    RateLimitedError,
)
from retirement.models import ModelRef, TrafficVerdict
from retirement.platforms import get_platform
from retirement.platforms.openai import OpenAIRegistry, OpenAIUsageTraffic
from retirement.settings import RetireSettings

FT = "ft:gpt-4o-mini-2024-07-18:acme::abc123"
ORG = "org-acme"


def _err(status: int, message: str, code: str) -> httpx.Response:
    return httpx.Response(
        status, json={"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    )


class App:
    """A fake OpenAI API: models, fine-tuning jobs (paged by ``after``), checkpoints, files, usage."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.models: dict[str, dict[str, Any]] = {
            FT: {"id": FT, "object": "model", "created": 1_700_000_000, "owned_by": ORG},
            "gpt-4o": {"id": "gpt-4o", "object": "model", "created": 1_600_000_000, "owned_by": "system"},
        }
        self.jobs: list[dict[str, Any]] = [
            {"id": f"ftjob-{i}", "model": "gpt-4o-mini", "status": "succeeded", "fine_tuned_model": None}
            for i in range(3)
        ] + [
            {
                "id": "ftjob-src",
                "model": "gpt-4o-mini-2024-07-18",
                "status": "succeeded",
                "fine_tuned_model": FT,
                "organization_id": ORG,
                "training_file": "file-train",
                "validation_file": None,
                "result_files": ["file-result"],
                "trained_tokens": 1234,
            }
        ]
        self.files = {"file-train": b'{"messages": []}\n' * 3, "file-result": b"step,train_loss\n1,0.5\n"}
        self.permissions: dict[str, list[dict[str, Any]]] = {}
        self.page_size = 2
        self.delete_status = 200
        self.usage_buckets: list[dict[str, Any]] | None = None
        self.throttle_once = False

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.throttle_once:
            self.throttle_once = False
            return httpx.Response(429, headers={"Retry-After": "7"}, json={"error": {"message": "slow down"}})
        path, method, q = request.url.path, request.method, request.url.params
        assert path.startswith("/v1/"), path
        path = path[3:]
        if path.startswith("/models/"):
            mid = path.removeprefix("/models/")
            if mid not in self.models:
                return _err(404, f"The model '{mid}' does not exist", "model_not_found")
            if method == "GET":
                return httpx.Response(200, json=self.models[mid])
            if method == "DELETE":
                if self.delete_status != 200:
                    return _err(
                        self.delete_status,
                        "You have insufficient permissions for this operation.",
                        "insufficient_permissions",
                    )
                del self.models[mid]
                return httpx.Response(200, json={"id": mid, "object": "model", "deleted": True})
        if path == "/models" and method == "GET":
            return httpx.Response(200, json={"object": "list", "data": list(self.models.values())})
        if path == "/fine_tuning/jobs" and method == "GET":
            return self._page(self.jobs, q)
        if path == "/fine_tuning/jobs/ftjob-src/checkpoints":
            cps = [
                {
                    "id": f"ftckpt-{n}",
                    "step_number": n,
                    "metrics": {"train_loss": 1.0 / n},
                    "fine_tuned_model_checkpoint": f"{FT}:ckpt-step-{n}",
                }
                for n in (10, 20, 30)
            ]
            return self._page(cps, q)
        if path.startswith("/fine_tuning/jobs/") and path.endswith("/checkpoints"):
            job_id = path.split("/")[3]
            if not any(job["id"] == job_id for job in self.jobs):
                return _err(404, f"Fine-tuning job {job_id} not found", "job_not_found")
            return self._page([], q)
        if path.startswith("/files/"):
            fid, _, rest = path.removeprefix("/files/").partition("/")
            if fid not in self.files:
                return _err(404, f"No such File object: {fid}", "file_not_found")
            if rest == "content":
                return httpx.Response(200, stream=httpx.ByteStream(self.files[fid]))
            return httpx.Response(
                200, json={"id": fid, "bytes": len(self.files[fid]), "filename": f"{fid}.jsonl", "purpose": "fine-tune"}
            )
        if path.startswith("/fine_tuning/checkpoints/") and path.endswith("/permissions") and method == "GET":
            assert request.headers["authorization"] == "Bearer admin-secret-key"  # an admin key, never the API key
            checkpoint = path.removeprefix("/fine_tuning/checkpoints/").removesuffix("/permissions")
            return self._page(self.permissions.get(checkpoint, []), q)
        if path == "/organization/usage/completions":
            assert request.headers["authorization"] == "Bearer admin-secret-key"
            return self._usage(q)
        return _err(404, f"unknown route {method} {path}", "unknown_url")

    def _page(self, items: list[dict[str, Any]], q: httpx.QueryParams) -> httpx.Response:
        assert q["limit"] == "100"
        start = 0
        if "after" in q:
            start = next(i for i, item in enumerate(items) if item["id"] == q["after"]) + 1
        page = items[start : start + self.page_size]
        return httpx.Response(
            200, json={"object": "list", "data": page, "has_more": start + self.page_size < len(items)}
        )

    def _usage(self, q: httpx.QueryParams) -> httpx.Response:
        assert q.get_list("models") == [FT]
        assert q.get_list("group_by") == ["model"]
        s, e, width = int(q["start_time"]), int(q["end_time"]), q["bucket_width"]
        step = {"1d": 86_400, "1h": 3_600, "1m": 60}[width]
        buckets = self.usage_buckets
        if buckets is None:
            buckets = [{"start_time": t, "end_time": t + step, "results": []} for t in range(s, e, step)]
        index = int(q.get("page", "0"))
        chunk = buckets[index : index + 2]
        more = index + 2 < len(buckets)
        return httpx.Response(
            200, json={"object": "page", "data": chunk, "has_more": more, "next_page": str(index + 2) if more else None}
        )

    def sent(self, method: str) -> list[str]:
        return [r.url.path for r in self.requests if r.method == method]


@pytest.fixture
def app() -> App:
    return App()


@pytest.fixture
def client(app: App) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(app), base_url="https://api.openai.test/v1/")


@pytest.fixture
def registry(client: httpx.Client) -> OpenAIRegistry:
    return OpenAIRegistry(client, org_id=ORG, admin_key=SecretStr("admin-secret-key"), sleep=lambda _s: None)


def ref(name: str = FT) -> ModelRef:
    return ModelRef(platform="openai", name=name)


def test_describe_gathers_the_lineage_across_every_page(registry: OpenAIRegistry, app: App) -> None:
    dossier = registry.describe(ref())
    assert dossier.metadata["fine_tuning_job"]["id"] == "ftjob-src"  # on the third page of jobs
    assert [c["step_number"] for c in dossier.metadata["checkpoints"]] == [10, 20, 30]
    assert dossier.metrics["train_loss"] == pytest.approx(1 / 30)
    assert dossier.metrics["trained_tokens"] == 1234
    assert dossier.blockers == []
    assert dossier.capabilities is not None and not dossier.capabilities.weights_exportable
    afters = [r.url.params.get("after") for r in app.requests if r.url.path == "/v1/fine_tuning/jobs"]
    assert afters == [None, "ftjob-1", "ftjob-src"][: len(afters)] and len(afters) == 2


def test_a_version_is_refused_before_any_request(registry: OpenAIRegistry, app: App) -> None:
    with pytest.raises(InputError, match="version"):
        registry.describe(ModelRef(platform="openai", name=FT.replace(":", "-"), version="2"))
    assert app.requests == []


def test_base_model_deletion_is_refused_without_a_delete(registry: OpenAIRegistry, app: App) -> None:
    with pytest.raises(DeletionBlockedError, match="base model"):
        registry.delete(ref("gpt-4o"))
    assert app.sent("DELETE") == []


def test_model_of_another_organisation_is_refused_without_a_delete(registry: OpenAIRegistry, app: App) -> None:
    other = "ft:gpt-4o-mini:other::zzz"
    app.models[other] = {"id": other, "object": "model", "created": 1, "owned_by": "org-other"}
    with pytest.raises(DeletionBlockedError, match="org-other"):
        registry.delete(ref(other))
    assert app.sent("DELETE") == []


def test_without_org_id_ownership_needs_a_producing_job(client: httpx.Client, app: App) -> None:
    other = "ft:gpt-4o-mini:other::zzz"
    app.models[other] = {"id": other, "object": "model", "created": 1, "owned_by": "org-other"}
    registry = OpenAIRegistry(client, admin_key=SecretStr("admin-secret-key"), sleep=lambda _s: None)
    assert [b.code for b in registry.deletion_blockers(ref(other))] == ["not_owner"]
    assert registry.deletion_blockers(ref()) == []


def test_a_fine_tune_training_on_top_blocks_the_delete(registry: OpenAIRegistry, app: App) -> None:
    app.jobs.append({"id": "ftjob-child", "model": FT, "status": "running", "fine_tuned_model": None})
    assert [(d.kind, d.name) for d in registry.dependents(ref())] == [("fine_tune_child", "ftjob-child")]
    with pytest.raises(DeletionBlockedError, match="ftjob-child"):
        registry.delete(ref())
    assert app.sent("DELETE") == []


def test_a_fine_tune_made_from_it_blocks_until_that_child_is_gone(registry: OpenAIRegistry, app: App) -> None:
    child = "ft:gpt-4o-mini-2024-07-18:acme::child1"
    app.models[child] = {"id": child, "object": "model", "created": 1_700_000_100, "owned_by": ORG}
    app.jobs.append({"id": "ftjob-kid", "model": FT, "status": "succeeded", "fine_tuned_model": child})
    assert [(d.kind, d.name) for d in registry.dependents(ref())] == [("fine_tune_child", child)]
    assert [b.code for b in registry.deletion_blockers(ref())] == ["fine_tune_parent"]
    with pytest.raises(DeletionBlockedError, match=f"{child} was fine-tuned from {FT} by job ftjob-kid"):
        registry.delete(ref())
    assert app.sent("DELETE") == []
    registry.delete(ref(child))  # the child first ...
    assert registry.dependents(ref()) == []  # ... and its finished job no longer holds the parent
    assert registry.delete(ref()).verified_gone
    assert app.sent("DELETE") == [f"/v1/models/{child}", f"/v1/models/{FT}"]


def test_a_fine_tune_made_from_one_of_its_checkpoints_is_its_child_too(registry: OpenAIRegistry, app: App) -> None:
    child = "ft:gpt-4o-mini-2024-07-18:acme::fromckpt"
    app.models[child] = {"id": child, "object": "model", "created": 1_700_000_100, "owned_by": ORG}
    app.jobs.append({"id": "ftjob-ck", "model": f"{FT}:ckpt-step-20", "status": "succeeded", "fine_tuned_model": child})
    assert [d.name for d in registry.dependents(ref())] == [child]
    with pytest.raises(DeletionBlockedError, match=f"fine-tuned from {FT}:ckpt-step-20"):
        registry.delete(ref())
    assert app.sent("DELETE") == []


def test_a_failed_child_job_holds_nothing(registry: OpenAIRegistry, app: App) -> None:
    app.jobs.append({"id": "ftjob-bad", "model": FT, "status": "failed", "fine_tuned_model": None})
    assert registry.dependents(ref()) == [] and registry.deletion_blockers(ref()) == []


@pytest.mark.parametrize("shared", [FT, f"{FT}:ckpt-step-10"], ids=["the-model", "a-checkpoint"])
def test_a_share_with_another_project_blocks_and_names_the_project(
    registry: OpenAIRegistry, app: App, shared: str
) -> None:
    app.permissions[shared] = [
        {"object": "checkpoint.permission", "id": "cp_1", "created_at": 1, "project_id": "proj_fraud"},
        {"object": "checkpoint.permission", "id": "cp_2", "created_at": 2, "project_id": "proj_support"},
        {"object": "checkpoint.permission", "id": "cp_3", "created_at": 3, "project_id": "proj_billing"},
    ]
    deps = registry.dependents(ref())
    assert [(d.kind, d.name) for d in deps] == [
        ("consumer", "proj_fraud"),
        ("consumer", "proj_support"),
        ("consumer", "proj_billing"),
    ]  # read across pages of two
    assert all(shared in d.detail for d in deps)
    with pytest.raises(DeletionBlockedError, match="proj_billing"):
        registry.delete(ref())
    assert app.sent("DELETE") == []
    listed = [r.url.path for r in app.requests if r.url.path.endswith("/permissions")]
    assert f"/v1/fine_tuning/checkpoints/{shared}/permissions" in listed


def test_without_an_admin_key_the_shares_are_unknown_and_that_blocks(client: httpx.Client, app: App) -> None:
    registry = OpenAIRegistry(client, org_id=ORG, sleep=lambda _s: None)
    blockers = registry.deletion_blockers(ref())
    assert [b.code for b in blockers] == ["shares_unknown"] and "OPENAI_ADMIN_KEY" in blockers[0].remedy
    with pytest.raises(DeletionBlockedError, match="cannot be read"):
        registry.delete(ref())
    assert app.sent("DELETE") == []
    assert not [r for r in app.requests if r.url.path.endswith("/permissions")]


def test_delete_removes_the_model_and_verifies_it_is_gone(registry: OpenAIRegistry, app: App) -> None:
    receipt = registry.delete(ref())
    assert receipt.verified_gone
    assert app.sent("DELETE") == [f"/v1/models/{FT}"]
    assert not registry.exists(ref())
    with pytest.raises(NotFoundError, match="does not exist"):
        registry.delete(ref())
    assert len(app.sent("DELETE")) == 1


def test_delete_without_owner_role_says_so(registry: OpenAIRegistry, app: App) -> None:
    app.delete_status = 403
    with pytest.raises(AuthError) as info:
        registry.delete(ref())
    assert "Owner role" in str(info.value)
    assert "insufficient permissions" in str(info.value)


def test_errors_carry_openai_message(registry: OpenAIRegistry) -> None:
    with pytest.raises(NotFoundError, match="The model 'ft:nope' does not exist"):
        registry.describe(ref("ft:nope"))


def test_429_is_retried_after_retry_after(client: httpx.Client, app: App) -> None:
    waits: list[float] = []
    registry = OpenAIRegistry(client, org_id=ORG, sleep=waits.append)
    app.throttle_once = True
    assert registry.exists(ref())
    assert waits == [7.0]
    assert len(app.requests) == 2


def test_429_that_persists_is_rate_limited_error(client: httpx.Client) -> None:
    throttled = httpx.Client(
        transport=httpx.MockTransport(lambda r: httpx.Response(429, json={"error": {"message": "Rate limit reached"}})),
        base_url="https://api.openai.test/v1/",
    )
    with pytest.raises(RateLimitedError, match="Rate limit reached"):
        OpenAIRegistry(throttled, sleep=lambda _s: None).exists(ref())


def test_export_streams_files_and_metadata(registry: OpenAIRegistry, app: App) -> None:
    items = {item.path: item for item in registry.export(ref())}
    assert "metadata/model.json" in items and "metadata/checkpoints.json" in items
    train = items["files/training/file-train-file-train.jsonl"]
    assert b"".join(train.open()) == app.files["file-train"]
    assert train.size == len(app.files["file-train"])
    result = items["files/result/file-result-file-result.jsonl"]
    assert b"".join(result.open()) == app.files["file-result"]
    assert json.loads(b"".join(items["metadata/fine_tuning_job.json"].open()))["id"] == "ftjob-src"


def test_no_soft_delete(registry: OpenAIRegistry) -> None:
    with pytest.raises(ConflictError, match="no deactivation"):
        registry.set_active(ref(), False)


def test_catalog_lists_only_the_organisations_fine_tunes(registry: OpenAIRegistry) -> None:
    assert [e.reference.name for e in registry.list_versions()] == [FT]


START = datetime(2025, 1, 1, tzinfo=UTC)


def usage(client: httpx.Client, key: str | None = "admin-secret-key") -> OpenAIUsageTraffic:
    from pydantic import SecretStr

    return OpenAIUsageTraffic(client, SecretStr(key) if key else None, sleep=lambda _s: None)


def test_usage_idle_over_every_page(client: httpx.Client, app: App) -> None:
    sample = usage(client).sample(ref(), START, START + timedelta(hours=5))
    assert sample.verdict is TrafficVerdict.IDLE and sample.requests == 0 and sample.coverage == 1.0
    calls = [r for r in app.requests if r.url.path.endswith("/usage/completions")]
    assert [r.url.params.get("page") for r in calls] == [None, "2", "4"]
    assert calls[0].url.params["bucket_width"] == "1h"
    assert calls[0].url.params["start_time"] == str(int(START.timestamp()))


def test_usage_counts_requests_of_the_model(client: httpx.Client, app: App) -> None:
    s = int(START.timestamp())
    app.usage_buckets = [
        {"start_time": s, "end_time": s + 86_400, "results": [{"model": FT, "num_model_requests": 3}]},
        {"start_time": s + 86_400, "end_time": s + 172_800, "results": [{"model": FT, "num_model_requests": 2}]},
    ]
    sample = usage(client).sample(ref(), START, START + timedelta(days=2))
    assert sample.verdict is TrafficVerdict.ACTIVE and sample.requests == 5


def test_usage_with_missing_buckets_is_nodata_not_zero(client: httpx.Client, app: App) -> None:
    s = int(START.timestamp())
    app.usage_buckets = [{"start_time": s, "end_time": s + 3_600, "results": []}]
    sample = usage(client).sample(ref(), START, START + timedelta(hours=3))
    assert sample.verdict is TrafficVerdict.NODATA and sample.requests is None
    assert sample.coverage == pytest.approx(1 / 3)


def test_usage_without_admin_key_is_nodata(client: httpx.Client, app: App) -> None:
    sample = usage(client, None).sample(ref(), START, START + timedelta(hours=1))
    assert sample.verdict is TrafficVerdict.NODATA and "OPENAI_ADMIN_KEY" in sample.detail
    assert app.requests == []


def test_usage_failure_is_error_without_the_key(app: App) -> None:
    failing = httpx.Client(
        transport=httpx.MockTransport(lambda r: _err(401, "Invalid admin key provided", "invalid_api_key")),
        base_url="https://api.openai.test/v1/",
    )
    sample = usage(failing).sample(ref(), START, START + timedelta(hours=1))
    assert sample.verdict is TrafficVerdict.ERROR and "Invalid admin key" in sample.detail
    assert "admin-secret-key" not in sample.detail


def test_build_reads_openai_env(monkeypatch: pytest.MonkeyPatch, settings: RetireSettings) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("RETIRE_OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        get_platform("openai", settings)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0123456789")
    monkeypatch.setenv("RETIRE_OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    platform = get_platform("openai", settings)
    try:
        assert isinstance(platform.registry, OpenAIRegistry)
        assert str(platform.registry.client.base_url) == "http://127.0.0.1:9/v1/"
        assert platform.serving is None and platform.traffic is not None
    finally:
        platform.close()
