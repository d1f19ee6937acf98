"""In-memory fakes of every port, recording what was done, for protocol and flow tests."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from retirement.anchor import Anchor
from retirement.backup.filesystem import FilesystemBackupStore
from retirement.bootstrap import Services, stores
from retirement.errors import DeletionBlockedError, NotFoundError
from retirement.models import (
    Capabilities,
    DeletionBlocker,
    DeletionReceipt,
    Dependent,
    Dossier,
    ExportItem,
    ModelRef,
    Notification,
    NotifyReceipt,
    RetirementRequest,
    SmokeResult,
    TrafficSample,
    TrafficVerdict,
    VersionInfo,
)
from retirement.platforms.base import Platform, same_model_refusals
from retirement.settings import RetireSettings


class FakeRegistry:
    """Models and versions in memory; records every destructive call."""

    name = "fake"
    capabilities = Capabilities(
        weights_exportable=True,
        exports=["weights", "config"],
        not_exportable=["serving logs"],
        soft_delete="deactivate",
        restore=True,
        cutover=True,
        traffic=True,
    )

    def __init__(self) -> None:
        self.files: dict[ModelRef, dict[str, bytes]] = {}
        self.active: dict[ModelRef, bool] = {}
        self.consumers: dict[ModelRef, list[str]] = {}
        self.calls: list[tuple[str, str]] = []
        self.serving: FakeServing | None = None
        self.lingering: dict[ModelRef, int] = {}  # deleted, still listed for this many more looks (async deletes)
        self.linger_after_delete = 0

    def add(self, ref: ModelRef, files: dict[str, bytes] | None = None) -> ModelRef:
        self.files[ref] = files or {"weights.bin": b"w" * 1000 + str(ref).encode(), "config.json": b'{"layers": 3}'}
        self.active[ref] = True
        return ref

    def _need(self, ref: ModelRef) -> None:
        if ref not in self.files:
            raise NotFoundError(f"{ref} not found")

    def describe(self, ref: ModelRef) -> Dossier:
        self._need(ref)
        versions = [
            VersionInfo(version=r.version or "", active=self.active[r]) for r in self.files if r.name == ref.name
        ]
        return Dossier(reference=ref, versions=versions, metrics={"auc": 0.91}, metadata={"owner": "ml-team"})

    def dependents(self, ref: ModelRef) -> list[Dependent]:
        found = [Dependent(kind="consumer", name=c) for c in self.consumers.get(ref, [])]
        if self.serving is not None and self.serving.prod.get(ref.name) == ref:
            found.append(Dependent(kind="alias", name="production", movable=True))
        return found

    def deletion_blockers(self, ref: ModelRef) -> list[DeletionBlocker]:
        blockers = []
        for dep in self.dependents(ref):
            blockers.append(
                DeletionBlocker(
                    code=dep.kind, message=f"{dep.kind} {dep.name} points at {ref}", cleared_by_protocol=dep.movable
                )
            )
        return blockers

    def export(self, ref: ModelRef) -> list[ExportItem]:
        self._need(ref)
        return [ExportItem(path=p, size=len(b), open=lambda b=b: iter([b])) for p, b in self.files[ref].items()]

    def set_active(self, ref: ModelRef, active: bool) -> None:
        self._need(ref)
        self.calls.append(("set_active", f"{ref}={active}"))
        self.active[ref] = active

    def delete(self, ref: ModelRef) -> DeletionReceipt:
        self.calls.append(("delete-attempt", str(ref)))
        blockers = self.deletion_blockers(ref)
        if blockers:
            raise DeletionBlockedError(str(ref), [b.message for b in blockers])
        self._need(ref)
        self.calls.append(("delete", str(ref)))
        removed = list(self.files.pop(ref))
        if self.linger_after_delete:
            self.lingering[ref] = self.linger_after_delete
        return DeletionReceipt(reference=ref, removed=removed, verified_gone=not self.exists(ref))

    def exists(self, ref: ModelRef) -> bool:
        if self.lingering.get(ref, 0) > 0:
            self.lingering[ref] -= 1
            return True
        return ref in self.files


class FakeServing:
    """Production and staging pointers per model; records switches."""

    name = "fake"

    def __init__(self) -> None:
        self.prod: dict[str, ModelRef] = {}
        self.staging: dict[str, ModelRef] = {}
        self.switches: list[str] = []
        self.smoke_ok = True
        self.missing_settings: list[str] = []
        """Settings the test says this target lacks: each is a preflight refusal."""

    def preflight(self, request: RetirementRequest) -> list[str]:
        found = [f"{name} is not set; remedy: set it" for name in self.missing_settings]
        return found + same_model_refusals(request, "production and staging are pointers per model")

    def deploy_staging(self, ref: ModelRef) -> None:
        self.staging[ref.name] = ref

    def smoke_test(self, ref: ModelRef, requests: int = 5) -> SmokeResult:
        ok = self.smoke_ok and self.staging.get(ref.name) == ref
        return SmokeResult(
            reference=ref,
            requests=requests,
            errors=0 if ok else requests,
            ok=ok,
            detail="" if ok else "golden requests failed",
        )

    def production(self, model: ModelRef) -> ModelRef | None:
        return self.prod.get(model.name)

    def switch(self, to: ModelRef, *, replacing: ModelRef | None = None) -> ModelRef | None:
        before = self.prod.get(to.name)
        self.prod[to.name] = to
        self.switches.append(str(to))
        return before


@dataclass
class FakeTraffic:
    """Requests per version as the test scripts them; a version may be set to NODATA or ERROR."""

    name: str = "fake-traffic"
    requests: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    p95: dict[str, float] = field(default_factory=dict)
    verdicts: dict[str, TrafficVerdict] = field(default_factory=dict)
    asked: list[tuple[str, datetime, datetime]] = field(default_factory=list)

    def sample(self, ref: ModelRef, start: datetime, end: datetime) -> TrafficSample:
        key = str(ref)
        self.asked.append((key, start, end))
        forced = self.verdicts.get(key)
        if forced in (TrafficVerdict.NODATA, TrafficVerdict.ERROR):
            return TrafficSample(
                source=self.name, reference=ref, start=start, end=end, verdict=forced, detail="scripted"
            )
        count = self.requests.get(key, 0)
        return TrafficSample(
            source=self.name,
            reference=ref,
            start=start,
            end=end,
            requests=count,
            errors=self.errors.get(key, 0),
            p95_latency_ms=self.p95.get(key),
            coverage=1.0,
            verdict=TrafficVerdict.ACTIVE if count else TrafficVerdict.IDLE,
        )


class RecordingNotifier:
    """Keeps every notification; can be told to fail like a Slack outage."""

    name = "recording"

    def __init__(self) -> None:
        self.events: list[Notification] = []
        self.down = False

    def post(self, event: Notification, thread: str | None = None) -> NotifyReceipt:
        self.events.append(event)
        if self.down:
            return NotifyReceipt(delivered=False, error="connection refused", attempts=3)
        return NotifyReceipt(delivered=True, channel="#test", thread=thread or "1700000000.000100")

    def statuses(self) -> list[str]:
        return [f"{e.phase.value}:{e.status.value}" for e in self.events]


@dataclass
class World:
    """One fake platform with an old production version and its replacement."""

    registry: FakeRegistry
    serving: FakeServing
    traffic: FakeTraffic
    notifier: RecordingNotifier
    services: Services
    old: ModelRef
    new: ModelRef

    def factory(self, platform_name: str, traffic_names: list[str]) -> Services:
        return self.services


def make_world(home: Path) -> World:
    """A world where churn-model@1 serves production and churn-model@2 waits to replace it."""
    registry, serving, traffic, notifier = FakeRegistry(), FakeServing(), FakeTraffic(), RecordingNotifier()
    registry.serving = serving
    old = registry.add(ModelRef(platform="local", name="churn-model", version="1"))
    new = registry.add(ModelRef(platform="local", name="churn-model", version="2"))
    serving.prod["churn-model"] = old
    settings = RetireSettings(home=home, min_traffic_window_hours=0, gate_poll_seconds=1, cutover_grace_seconds=0)
    services = Services(
        settings=settings,
        platform=Platform(name="local", registry=registry, serving=serving, traffic=traffic),  # type: ignore[arg-type]
        traffic=[traffic],
        backups=FilesystemBackupStore(settings.backup_dir),
        ledger=stores(settings)[0],
        notifier=notifier,
        states=stores(settings)[1],
        anchor=Anchor(settings.checkpoint_dir),
    )
    return World(registry, serving, traffic, notifier, services, old, new)


def tamper(store_root: Path) -> Iterator[Path]:
    """Every file under a backup root (to flip bytes in)."""
    return (p for p in store_root.rglob("*") if p.is_file() and p.name not in ("manifest.json", "dossier.json"))
