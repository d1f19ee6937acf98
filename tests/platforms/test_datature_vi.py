"""Datature Vi adapter over httpx.MockTransport: requests, deletion rules, errors, pages, retries, traffic."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from retirement.errors import (
    AuthError,
    ConfigError,
    ConflictError,
    DeletionBlockedError,
    NotFoundError,
    PlatformUnavailableError,
)
from retirement.models import ModelRef, RetirementRequest, TrafficVerdict
from retirement.platforms import get_platform
from retirement.platforms.datature_vi import DatatureViRegistry, DatatureViServing, DatatureViTraffic

ORG = "org-1"
ROOT = f"/workspaces/{ORG}"
Handler = Callable[[httpx.Request], httpx.Response]


class App:
    """A fake Vi API: answers from ``routes`` keyed by (method, path) and records every request."""

    def __init__(self, routes: dict[tuple[str, str], Handler | Any]) -> None:
        self.routes = routes
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        route = self.routes.get((request.method, request.url.path))
        if route is None:
            return httpx.Response(404, json={"error": "ViNotFoundError", "message": f"{request.url.path} not found"})
        return route(request) if callable(route) else httpx.Response(200, json=route)

    def sent(self, method: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == method]


def _output(run: str, ckpt: str) -> dict[str, Any]:
    return {"kind": "RunOutput", "runId": run, "selfLink": f"{ROOT}/runs/{run}/outputs/{ckpt}", "spec": {"epoch": 1}}


def _pages(items: list[Any]) -> Handler:
    """A paginated list handler: one item per page, ``p`` is the next index."""

    def handler(request: httpx.Request) -> httpx.Response:
        index = int(request.url.params.get("p", "0"))
        nxt = str(index + 1) if index + 1 < len(items) else None
        return httpx.Response(200, json={"items": items[index : index + 1], "nextPage": nxt, "prevPage": None})

    return handler


def _deployment(dep_id: str, run: str, ckpt: str) -> dict[str, Any]:
    return {"id": dep_id, "name": f"{dep_id}-app", "spec": {"runId": run, "ckpt": ckpt}}


def _routes(deployments: list[dict[str, Any]], ckpts: tuple[str, ...] = ("c1", "c2")) -> dict[tuple[str, str], Any]:
    return {
        ("GET", f"{ROOT}/runs/run-a"): {"kind": "Run", "runId": "run-a"},
        ("GET", f"{ROOT}/runs/run-a/outputs"): _pages([_output("run-a", c) for c in ckpts]),
        ("GET", f"{ROOT}/deployments"): _pages(deployments),
    }


def _client(app: App) -> httpx.Client:
    return httpx.Client(base_url="https://vi.test", transport=httpx.MockTransport(app))


def _registry(app: App, sleeps: list[float] | None = None, protocol: tuple[str, ...] = ()) -> DatatureViRegistry:
    return DatatureViRegistry(
        _client(app),
        _client(app),
        ORG,
        protocol_deployments=protocol,
        sleep=(sleeps if sleeps is not None else []).append,
    )


def _ref(ckpt: str | None = "c1", run: str = "run-a") -> ModelRef:
    return ModelRef(platform="datature-vi", name=run, version=ckpt)


@pytest.mark.parametrize(
    ("served", "protocol", "cleared"),
    [("c1", ("prod",), True), ("c2", (), False)],
    ids=["deployment-serves-the-checkpoint", "deployment-serves-another-checkpoint-of-the-run"],
)
def test_a_deployment_on_any_checkpoint_of_the_run_blocks_and_no_delete_is_sent(
    served: str, protocol: tuple[str, ...], cleared: bool
) -> None:
    app = App(_routes([_deployment("other", "run-b", "x"), _deployment("prod", "run-a", served)]))
    registry = _registry(app, protocol=protocol)
    with pytest.raises(DeletionBlockedError) as info:
        registry.delete(_ref("c1"))
    assert info.value.blockers == [
        f"deployment prod-app serves run-a@{served}"
        + (", another checkpoint of the same run: deleting run-a@c1 deletes it too" if served != "c1" else "")
        + " (prod); deleting run run-a removes every checkpoint"
    ]
    assert app.sent("DELETE") == []
    assert [b.cleared_by_protocol for b in registry.deletion_blockers(_ref("c1"))] == [cleared]


def test_delete_removes_the_run_lists_every_checkpoint_and_verifies_not_found() -> None:
    state = {"gone": False}

    def run(request: httpx.Request) -> httpx.Response:
        if request.method == "DELETE":
            state["gone"] = True
            return httpx.Response(200, json={"data": ""})
        if state["gone"]:
            return httpx.Response(404, json={"error": "ViNotFoundError", "message": "Run run-a does not exist"})
        return httpx.Response(200, json={"runId": "run-a"})

    routes = _routes([_deployment("prod", "run-b", "x")], ckpts=("c1", "c2", "c3"))
    routes[("GET", f"{ROOT}/runs/run-a")] = run
    routes[("DELETE", f"{ROOT}/runs/run-a")] = run
    app = App(routes)
    registry = _registry(app)
    assert registry.confirmation_reference(_ref("c2")) == "run-a"
    receipt = registry.delete(_ref("c2"))
    assert receipt.verified_gone
    assert receipt.removed == [
        "training run run-a",
        "checkpoint run-a@c1",
        "checkpoint run-a@c2",
        "checkpoint run-a@c3",
    ]
    assert [r.url.path for r in app.sent("DELETE")] == [f"{ROOT}/runs/run-a"]
    outputs = [r for r in app.requests if r.url.path.endswith("/outputs")]
    assert [(r.url.params["intent"], r.url.params.get("p")) for r in outputs[:3]] == [
        ("sdkLocalDeploy", None),
        ("sdkLocalDeploy", "1"),
        ("sdkLocalDeploy", "2"),
    ]
    with pytest.raises(NotFoundError, match="Run run-a does not exist"):
        registry.delete(_ref("c2"))
    assert len(app.sent("DELETE")) == 1


def test_a_checkpoint_that_does_not_exist_is_not_found_and_nothing_is_deleted() -> None:
    app = App(_routes([]))
    with pytest.raises(NotFoundError, match=r"run run-a has no checkpoint 'c9' \(checkpoints: c1, c2\)"):
        _registry(app).delete(_ref("c9"))
    assert app.sent("DELETE") == []


@pytest.mark.parametrize(
    ("status", "body", "error", "text"),
    [
        (401, {"error": "ViAuthenticationError", "message": "Invalid secret key"}, AuthError, "Invalid secret key"),
        (403, {"error": "Forbidden"}, AuthError, "Forbidden"),
        (409, {"error": "ViConflictError", "message": "Run is training"}, ConflictError, "Run is training"),
        (503, {"message": "Vi is down"}, PlatformUnavailableError, "Vi is down"),
    ],
)
def test_errors_keep_vi_message(status: int, body: dict[str, Any], error: type[Exception], text: str) -> None:
    app = App({("GET", f"{ROOT}/runs/run-a"): lambda request: httpx.Response(status, json=body)})
    with pytest.raises(error, match=text):
        _registry(app).describe(_ref())


def test_429_is_retried_after_the_delay_vi_asked_for() -> None:
    calls: list[int] = []

    def limited(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) == 1:
            return httpx.Response(429, headers={"Retry-After": "3"}, json={"error": "ViRateLimitError"})
        return httpx.Response(200, json={"runId": "run-a"})

    routes = _routes([])
    routes[("GET", f"{ROOT}/runs/run-a")] = limited
    sleeps: list[float] = []
    assert _registry(App(routes), sleeps).exists(_ref("c1"))
    assert sleeps == [3.0]


def test_export_streams_every_checkpoint_without_credentials_and_keeps_signed_urls_out() -> None:
    weights = {"c1": b"weights-one" * 100, "c2": b"weights-two"}

    def contents(request: httpx.Request) -> httpx.Response:
        # As vi-sdk 0.1.0b7 asks (booleans as y/n, the intent it always adds) and reads: a page, items[-1].
        assert dict(request.url.params) == {"intent": "sdkLocalDeploy", "contents": "y"}
        ckpt = request.url.path.rsplit("/", 1)[1]
        url = f"https://storage.test/bucket/{ckpt}.zip?X-Goog-Signature=abc123"
        body = {**_output("run-a", ckpt), "status": {"contents": {"downloadUrl": {"url": url}, "fileSize": 11}}}
        return httpx.Response(200, json={"items": [body], "nextPage": None, "prevPage": None})

    def download(request: httpx.Request) -> httpx.Response:
        assert "authorization" not in request.headers
        return httpx.Response(200, stream=httpx.ByteStream(weights[request.url.path.split("/")[-1][:-4]]))

    routes = _routes([])
    for ckpt in weights:
        routes[("GET", f"{ROOT}/runs/run-a/outputs/{ckpt}")] = contents
        routes[("GET", f"/bucket/{ckpt}.zip")] = download
    app = App(routes)
    api = httpx.Client(base_url="https://vi.test", transport=httpx.MockTransport(app), headers={"Authorization": "B"})
    registry = DatatureViRegistry(api, _client(app), ORG)
    items = {i.path: i for i in registry.export(_ref("c1"))}
    assert sorted(items) == [
        "checkpoints/c1/c1.zip",
        "checkpoints/c2/c2.zip",
        "metadata/outputs.json",
        "metadata/run.json",
    ]
    for ckpt, data in weights.items():
        assert b"".join(items[f"checkpoints/{ckpt}/{ckpt}.zip"].open()) == data
    metadata = b"".join(b"".join(items[p].open()) for p in ("metadata/outputs.json", "metadata/run.json"))
    assert b"Signature" not in metadata
    api_calls = [r for r in app.requests if r.url.host == "vi.test" and r.url.path.startswith(ROOT)]
    assert api_calls and all(r.headers.get("organization-id") == ORG for r in api_calls)
    assert not any("organization-id" in r.headers for r in app.requests if r.url.host == "storage.test")


def test_a_bare_output_object_is_read_as_well_as_a_page() -> None:
    url = "https://storage.test/bucket/c1.zip?X-Goog-Signature=abc123"
    body = {**_output("run-a", "c1"), "status": {"contents": {"downloadUrl": {"url": url}, "fileSize": 3}}}
    routes = _routes([], ckpts=("c1",))
    routes[("GET", f"{ROOT}/runs/run-a/outputs/c1")] = body
    routes[("GET", "/bucket/c1.zip")] = lambda request: httpx.Response(200, stream=httpx.ByteStream(b"abc"))
    items = {i.path: i for i in _registry(App(routes)).export(_ref("c1"))}
    assert b"".join(items["checkpoints/c1/c1.zip"].open()) == b"abc"


def _retirement(replacement: str | None = "run-b@n1") -> RetirementRequest:
    return RetirementRequest(
        model="run-a@c1",
        platform="datature-vi",
        replacement=replacement,
        requester="alice",
        approvers=["bob"],
        reason="superseded",
    )


@pytest.mark.parametrize(
    ("production", "staging", "refused"),
    [
        (("run-a", "c1"), ("run-b", "n1"), []),
        (("run-a", "c1"), None, ["RETIRE_DATATURE_VI_STAGING_DEPLOYMENT is not set"]),
        (("run-z", "z1"), ("run-b", "n1"), ["production deployment prod serves run-z@z1, another model"]),
        (("run-a", "c2"), ("run-b", "n1"), ["production deployment prod serves run-a@c2, another checkpoint"]),
        (("run-a", "c1"), ("run-q", "q1"), ["staging deployment stage serves run-q@q1, another model"]),
    ],
    ids=["carried", "no-staging", "production-of-another-run", "production-of-another-checkpoint", "foreign-staging"],
)
def test_preflight_names_what_staging_or_the_cutover_would_stop_at(
    production: tuple[str, str], staging: tuple[str, str] | None, refused: list[str]
) -> None:
    routes: dict[tuple[str, str], Any] = {("GET", f"{ROOT}/deployments/prod"): _deployment("prod", *production)}
    if staging is not None:
        routes[("GET", f"{ROOT}/deployments/stage")] = _deployment("stage", *staging)
    app = App(routes)
    serving = DatatureViServing(
        _client(app), ORG, production_deployment="prod", staging_deployment="stage" if staging else None
    )
    problems = serving.preflight(_retirement())
    assert [p[: len(r)] for p, r in zip(problems, refused, strict=False)] == refused and len(problems) == len(refused)
    assert all("remedy:" in p for p in problems)
    assert serving.preflight(_retirement(replacement=None)) == []
    assert [r.method for r in app.requests if r.method != "GET"] == []


def test_without_a_production_deployment_nothing_is_known_as_production() -> None:
    app = App({})
    assert DatatureViServing(_client(app), ORG).production(_ref()) is None
    assert app.requests == []


def test_soft_delete_is_refused_because_vi_has_none() -> None:
    app = App({})
    with pytest.raises(ConflictError, match="no deactivate or deprecate"):
        _registry(app).set_active(_ref(), False)
    assert app.requests == []


def test_cutover_patches_the_production_deployment_and_returns_what_it_served() -> None:
    dep = _deployment("prod", "run-a", "c1")

    def patch(request: httpx.Request) -> httpx.Response:
        dep["spec"] = json.loads(request.content)["spec"]
        return httpx.Response(200, json=dep)

    app = App(
        {
            ("GET", f"{ROOT}/runs/run-b"): {"runId": "run-b"},
            ("GET", f"{ROOT}/deployments/prod"): lambda request: httpx.Response(200, json=dep),
            ("PATCH", f"{ROOT}/deployments/prod"): patch,
        }
    )
    serving = DatatureViServing(_client(app), ORG, production_deployment="prod", sleep=lambda _: None)
    new = _ref("n1", run="run-b")
    assert serving.switch(new) == _ref("c1")
    assert [json.loads(r.content) for r in app.sent("PATCH")] == [{"spec": {"runId": "run-b", "ckpt": "n1"}}]
    assert serving.switch(new) == new
    assert len(app.sent("PATCH")) == 1
    with pytest.raises(ConfigError, match="RETIRE_DATATURE_VI_STAGING_DEPLOYMENT is not set"):
        serving.deploy_staging(new)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _traffic(app: App, tmp_path: Path, clock: Clock) -> DatatureViTraffic:
    return DatatureViTraffic(
        _client(app), ORG, tmp_path / "snaps", interval=timedelta(minutes=10), clock=clock, sleep=lambda _: None
    )


def test_traffic_is_idle_only_when_snapshots_cover_the_whole_window(tmp_path: Path) -> None:
    rps = {"value": 0.0}
    app = App(
        {
            ("GET", f"{ROOT}/deployments"): _pages(
                [_deployment("prod", "run-a", "c2"), _deployment("x", "run-b", "1")]
            ),
            ("GET", f"{ROOT}/deployments/prod/statistics"): lambda r: httpx.Response(
                200, json={"requestsPerSecond": rps["value"], "latency": 3, "replicas": 1}
            ),
        }
    )
    start = datetime(2025, 3, 1, tzinfo=UTC)
    clock = Clock(start)
    traffic = _traffic(app, tmp_path, clock)
    for minutes in range(0, 60, 10):
        clock.now = start + timedelta(minutes=minutes)
        traffic.record_snapshot(_ref())
    clock.now = start + timedelta(days=1)
    sample = traffic.sample(_ref(), start, start + timedelta(hours=1))
    assert (sample.verdict, sample.requests, sample.coverage) == (TrafficVerdict.IDLE, 0, 1.0)
    assert not [r for r in app.requests if "/deployments/x/" in r.url.path]

    gap = traffic.sample(_ref(), start, start + timedelta(hours=2))
    assert gap.verdict is TrafficVerdict.NODATA
    assert gap.requests is None
    assert gap.coverage == 0.5

    rps["value"] = 0.25
    clock.now = start + timedelta(minutes=30, seconds=5)
    traffic.record_snapshot(_ref())
    clock.now = start + timedelta(days=1)
    assert traffic.sample(_ref(), start, start + timedelta(hours=1)).verdict is TrafficVerdict.ACTIVE


def test_traffic_error_when_vi_cannot_be_read_and_nodata_for_an_unsampled_past(tmp_path: Path) -> None:
    app = App({("GET", f"{ROOT}/deployments"): lambda r: httpx.Response(500, json={"message": "boom"})})
    now = datetime(2025, 3, 2, tzinfo=UTC)
    traffic = _traffic(app, tmp_path, Clock(now))
    recent = traffic.sample(_ref(), now - timedelta(hours=1), now)
    assert recent.verdict is TrafficVerdict.ERROR
    assert "boom" in recent.detail
    past = traffic.sample(_ref(), now - timedelta(days=3), now - timedelta(days=2))
    assert (past.verdict, past.requests, past.coverage) == (TrafficVerdict.NODATA, None, 0.0)


def test_build_needs_key_and_organization_and_never_shows_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATATURE_VI_ORGANIZATION_ID", raising=False)
    monkeypatch.setenv("DATATURE_VI_SECRET_KEY", "vi-key-do-not-print-1234")
    with pytest.raises(ConfigError, match="DATATURE_VI_ORGANIZATION_ID not set") as info:
        get_platform("datature-vi")
    assert "vi-key-do-not-print" not in str(info.value)
    monkeypatch.setenv("DATATURE_VI_ORGANIZATION_ID", ORG)
    platform = get_platform("datature-vi")
    try:
        assert platform.registry.capabilities.delete_unit == "run"
        assert platform.traffic is not None and platform.serving is not None
    finally:
        platform.close()
