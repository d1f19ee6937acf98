"""The local registry: versions, aliases, blockers, delete, export, restore, demo; bad input changes nothing."""

from __future__ import annotations

import hashlib
import sqlite3
import time as real_time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from retirement.cli import main
from retirement.errors import ConflictError, DeletionBlockedError, InputError, NotFoundError
from retirement.models import CatalogEntry, Dependent, ModelRef
from retirement.platforms import get_platform
from retirement.platforms import local as local_platform
from retirement.platforms.base import Catalog, Registry
from retirement.platforms.local import LocalRegistry
from retirement.policy import Policy
from retirement.review import run_review


def ref(text: str) -> ModelRef:
    return ModelRef.parse(text, "local")


def snapshot(root: Path) -> dict[str, Any]:
    """Every file under the root (but the catalogue itself) with its hash, and every catalogue row."""
    files = {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith("catalog.db")
    }
    rows: dict[str, list[tuple[Any, ...]]] = {}
    if (root / "catalog.db").exists():
        conn = sqlite3.connect(root / "catalog.db")
        try:
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            for table in tables:
                rows[table] = sorted(conn.execute(f"SELECT * FROM {table}").fetchall(), key=repr)
        finally:
            conn.close()
    return {"files": files, "rows": rows}


@pytest.fixture
def registry(tmp_path: Path) -> LocalRegistry:
    reg = LocalRegistry(tmp_path / "local")
    reg.create_model("churn-model", description="demo", tags={"team": "growth"})
    reg.add_version("churn-model", {"weights.bin": b"old weights" * 100, "config.json": b"{}"}, stage="production")
    reg.add_version("churn-model", {"weights.bin": b"new weights" * 100, "config.json": b'{"v": 2}'})
    reg.set_alias("churn-model", "production", "1")
    return reg


def test_the_local_registry_implements_the_registry_and_catalog_ports(registry: LocalRegistry) -> None:
    assert isinstance(registry, Registry)
    assert isinstance(registry, Catalog)
    caps = registry.capabilities
    assert (caps.soft_delete, caps.restore, caps.delete_unit, caps.weights_exportable) == (
        "deactivate",
        True,
        "version",
        True,
    )


def test_versions_are_numbered_per_model_and_never_reused_after_a_delete(registry: LocalRegistry) -> None:
    registry.delete(ref("churn-model@2"))
    third = registry.add_version("churn-model", {"weights.bin": b"third"})
    assert third.version == "3"
    registry.create_model("other")
    assert registry.add_version("other", {"w.bin": b"x"}).version == "1"


def test_the_catalogue_is_in_wal_mode_so_the_gateway_and_flows_share_it(registry: LocalRegistry) -> None:
    conn = sqlite3.connect(registry.db_path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("Churn", "not a valid local model name"),
        ("team/churn", "path separator"),
        ("..", "'..'"),
        ("../escape", "path separator"),
        ("churn..model", "'..'"),
        ("churn\x00model", "NUL"),
        ("", "is empty"),
        ("-churn", "not a valid local model name"),
        ("c" * 65, "65 characters"),
        ("churn model", "not a valid local model name"),
    ],
)
def test_a_malformed_model_name_is_refused_naming_the_field_and_nothing_changes(
    registry: LocalRegistry, tmp_path: Path, name: str, problem: str
) -> None:
    before = snapshot(registry.root)
    outside = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(InputError) as info:
        registry.create_model(name)
    assert info.value.field == "name"
    assert problem in info.value.problem
    assert "lowercase letters" in str(info.value)
    assert snapshot(registry.root) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == outside


@pytest.mark.parametrize("name", ["../x", "a/b", "x\x00"])
def test_every_entry_point_refuses_a_name_that_would_leave_the_root(registry: LocalRegistry, name: str) -> None:
    before = snapshot(registry.root)
    for call in (
        lambda: registry.add_version(name, {"w.bin": b"x"}),
        lambda: registry.set_alias(name, "production", "1"),
        lambda: registry.resolve(name, "production"),
        lambda: registry.seed_demo(16 * 1024, name=name),
        lambda: registry.delete_model(name),
    ):
        with pytest.raises(InputError, match="allowed"):
            call()
    assert snapshot(registry.root) == before


@pytest.mark.parametrize("path", ["../evil.bin", "/etc/passwd", "a/../../b", "a\x00b", ".hidden", "a//b", "a\\b"])
def test_a_file_path_that_could_escape_the_version_folder_is_refused_before_anything_is_written(
    registry: LocalRegistry, tmp_path: Path, path: str
) -> None:
    before = snapshot(registry.root)
    with pytest.raises(InputError) as info:
        registry.add_version("churn-model", {"ok.bin": b"fine", path: b"evil"})
    assert info.value.field == "files"
    assert "relative path" in str(info.value)
    assert snapshot(registry.root) == before
    assert not (tmp_path / "evil.bin").exists()


def test_a_duplicate_model_is_a_conflict_and_nothing_changes(registry: LocalRegistry) -> None:
    before = snapshot(registry.root)
    with pytest.raises(ConflictError, match="already exists"):
        registry.create_model("churn-model")
    assert snapshot(registry.root) == before


def test_deleting_a_missing_version_says_not_found_and_nothing_changes(registry: LocalRegistry) -> None:
    before = snapshot(registry.root)
    with pytest.raises(NotFoundError, match="churn-model@9 does not exist"):
        registry.delete(ref("churn-model@9"))
    with pytest.raises(NotFoundError, match="'ghost' does not exist"):
        registry.delete(ref("ghost@1"))
    assert snapshot(registry.root) == before


def test_deleting_a_version_an_alias_points_at_is_blocked_and_nothing_changes(registry: LocalRegistry) -> None:
    before = snapshot(registry.root)
    with pytest.raises(DeletionBlockedError) as info:
        registry.delete(ref("churn-model@1"))
    assert "alias 'production' points at churn-model@1" in str(info.value)
    assert "move the alias" in str(info.value)
    assert snapshot(registry.root) == before
    assert registry.exists(ref("churn-model@1"))


def test_a_declared_consumer_blocks_deletion_until_it_is_removed(registry: LocalRegistry) -> None:
    v2 = ref("churn-model@2")
    registry.add_consumer(v2, "billing-service", "scores invoices nightly")
    blockers = registry.deletion_blockers(v2)
    assert [(b.code, b.cleared_by_protocol) for b in blockers] == [("consumer", False)]
    assert [d.kind for d in registry.dependents(v2)] == ["consumer"]
    before = snapshot(registry.root)
    with pytest.raises(DeletionBlockedError, match="billing-service"):
        registry.delete(v2)
    assert snapshot(registry.root) == before
    registry.remove_consumer(v2, "billing-service")
    assert registry.delete(v2).verified_gone


def test_a_delete_removes_the_files_and_the_version_answers_not_found_afterwards(registry: LocalRegistry) -> None:
    v2 = ref("churn-model@2")
    folder = registry.file_path(v2, "weights.bin").parent
    receipt = registry.delete(v2)
    assert receipt.verified_gone
    assert "models/churn-model/2/weights.bin" in receipt.removed
    assert not folder.exists()
    assert not registry.exists(v2)
    with pytest.raises(NotFoundError, match="was deleted"):
        registry.resolve("churn-model", "2")
    with pytest.raises(NotFoundError):
        registry.delete(v2)
    assert [e.reference.version for e in registry.list_versions()] == ["1"]


def test_moving_production_records_promoted_and_superseded_for_the_retention_review(registry: LocalRegistry) -> None:
    assert registry.set_alias("churn-model", "production", "2") == "1"
    assert registry.set_alias("churn-model", "production", "2") == "2"
    entries = {e.reference.version: e for e in registry.list_versions()}
    assert (entries["1"].status, entries["1"].stage, entries["1"].aliases) == ("superseded", "archived", [])
    assert (entries["2"].status, entries["2"].stage, entries["2"].aliases) == ("promoted", "production", ["production"])
    assert entries["1"].status_changed_at is not None
    assert registry.deletion_blockers(ref("churn-model@1")) == []


def test_resolve_follows_aliases_and_refuses_unknown_ones(registry: LocalRegistry) -> None:
    assert registry.resolve("churn-model", "production") == ref("churn-model@1")
    assert registry.resolve("churn-model", "2") == ref("churn-model@2")
    with pytest.raises(NotFoundError, match="no alias 'canary'"):
        registry.resolve("churn-model", "canary")
    with pytest.raises(NotFoundError, match="'ghost' does not exist"):
        registry.resolve("ghost", "production")


def test_deactivation_is_recorded_and_reversible(registry: LocalRegistry) -> None:
    v2 = ref("churn-model@2")
    registry.set_active(v2, False)
    assert not registry.is_active(v2)
    assert any("410" in issue for issue in registry.describe(v2).known_issues)
    with pytest.raises(ConflictError, match="deactivated"):
        registry.set_alias("churn-model", "production", "2")
    registry.set_active(v2, True)
    assert registry.is_active(v2)


def test_export_streams_every_file_with_its_recorded_size_and_sha256(registry: LocalRegistry) -> None:
    items = {i.path: i for i in registry.export(ref("churn-model@1"))}
    assert sorted(items) == ["config.json", "weights.bin"]
    data = b"".join(items["weights.bin"].open())
    assert data == b"old weights" * 100
    assert items["weights.bin"].size == len(data)
    assert items["weights.bin"].sha256 == hashlib.sha256(data).hexdigest()


def test_import_version_restores_a_deleted_version_under_its_own_number(registry: LocalRegistry) -> None:
    v2 = ref("churn-model@2")
    items = registry.export(v2)
    saved = [(i.path, b"".join(i.open())) for i in items]
    registry.delete(v2)
    restored = registry.import_version(
        v2, [(path, lambda data=data: iter([data])) for path, data in saved], metadata={"tags": {"restored": "yes"}}
    )
    assert restored == v2
    assert [(p, registry.file_path(v2, p).read_bytes()) for p, _ in saved] == saved
    assert registry.describe(v2).metadata["tags"] == {"restored": "yes"}
    before = snapshot(registry.root)
    with pytest.raises(ConflictError, match="already exists"):
        registry.import_version(v2, [("weights.bin", lambda: iter([b"other"]))])
    assert snapshot(registry.root) == before
    assert registry.add_version("churn-model", {"w.bin": b"x"}).version == "3"


def test_import_version_recreates_a_model_that_is_gone(tmp_path: Path) -> None:
    reg = LocalRegistry(tmp_path / "fresh")
    restored = reg.import_version(ref("lost-model@7"), [("weights.bin", lambda: iter([b"abc", b"def"]))])
    assert reg.files(restored) == [("weights.bin", 6)]
    assert reg.add_version("lost-model", {"w.bin": b"x"}).version == "8"


def test_a_model_with_versions_cannot_be_removed(registry: LocalRegistry) -> None:
    with pytest.raises(ConflictError, match="still has versions 1, 2"):
        registry.delete_model("churn-model")


def test_the_demo_is_a_production_version_and_its_staged_replacement(tmp_path: Path) -> None:
    reg = LocalRegistry(tmp_path / "demo")
    old, new = reg.seed_demo(total_bytes=256 * 1024)
    assert (str(old), str(new)) == ("churn-model@1", "churn-model@2")
    assert reg.aliases("churn-model") == {"production": "1"}
    for version in (old, new):
        files = dict(reg.files(version))
        assert sorted(files) == ["adapter.safetensors", "config.json", "metadata.json", "weights.bin"]
        assert abs(sum(files.values()) - 256 * 1024) < 1024
        assert files["weights.bin"] > sum(files.values()) / 2
    assert reg.dependents(old)[0].kind == "alias"
    assert [d.kind for d in reg.dependents(new)] == []
    with pytest.raises(ConflictError, match="reset"):
        reg.seed_demo(total_bytes=256 * 1024)
    again = LocalRegistry(tmp_path / "again")
    again.seed_demo(total_bytes=256 * 1024)
    assert reg.file_records(old) == again.file_records(old)
    assert reg.file_records(old) != reg.file_records(new)
    assert reg.seed_demo(total_bytes=64 * 1024, reset=True)[0] == old


def test_the_demo_size_is_checked(tmp_path: Path) -> None:
    reg = LocalRegistry(tmp_path / "demo")
    with pytest.raises(InputError, match="total_bytes"):
        reg.seed_demo(total_bytes=10)


def test_get_platform_local_builds_the_registry_under_retire_home(retire_home: Path) -> None:
    platform = get_platform("local")
    try:
        assert platform.name == "local"
        assert isinstance(platform.registry, LocalRegistry)
        assert platform.registry.root == (retire_home / "local").resolve()
        assert platform.serving is not None and platform.traffic is not None
    finally:
        platform.close()


def test_cli_seed_list_and_delete(retire_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["local", "seed-demo", "--size", "64KiB"]) == 0
    assert "churn-model@1" in capsys.readouterr().out
    assert main(["local", "versions", "churn-model"]) == 0
    out = capsys.readouterr().out
    assert "production" in out and "staging" in out
    root = retire_home / "local"
    before = snapshot(root)
    assert main(["local", "delete", "churn-model@2"]) == 2
    assert "--yes" in capsys.readouterr().err
    assert main(["local", "delete", "churn-model@1", "--yes"]) == 2
    assert "alias 'production'" in capsys.readouterr().err
    assert main(["local", "seed-demo", "--size", "lots"]) == 2
    assert "--size" in capsys.readouterr().err
    assert snapshot(root) == before
    assert main(["local", "delete", "churn-model@2", "--yes"]) == 0
    assert "gone: True" in capsys.readouterr().out


# --- the catalogue the quarterly review reads ---------------------------------------------------

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def day(n: int) -> datetime:
    return T0 + timedelta(days=n)


class Clock:
    """The local platform's clock in these tests: every catalogue write is stamped with ``now``."""

    def __init__(self) -> None:
        self.now = T0.timestamp()

    def at(self, n: int) -> None:
        self.now = day(n).timestamp()

    def time(self) -> float:
        return self.now

    perf_counter = staticmethod(real_time.perf_counter)
    sleep = staticmethod(real_time.sleep)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(local_platform, "time", fake)
    return fake


def seed_catalogue(reg: LocalRegistry, clock: Clock) -> None:
    """alpha: a production lineage 1 -> 2 (1 then deactivated), a staging 3, a deleted 4, a failed 5 and
    experiments 6-11; beta: a reactivated 1 with a consumer and a deleted-then-restored 2; empty; gone."""
    clock.at(0)
    reg.create_model("alpha", tags={"team": "growth"})
    clock.at(1)
    reg.add_version("alpha", {"weights.bin": b"a" * 10, "config.json": b"{}"}, stage="production")
    clock.at(2)
    reg.set_alias("alpha", "production", "1")
    clock.at(10)
    reg.add_version("alpha", {"weights.bin": b"b" * 20}, tags={"framework": "pytorch"})
    clock.at(20)
    reg.set_alias("alpha", "production", "2")
    clock.at(21)
    reg.set_alias("alpha", "champion", "2")
    clock.at(22)
    reg.add_consumer(ref("alpha@2"), "billing-batch", "nightly scoring")
    clock.at(23)
    reg.add_consumer(ref("alpha@2"), "alerts")
    clock.at(30)
    reg.set_active(ref("alpha@1"), False)
    clock.at(40)
    reg.add_version("alpha", {"weights.bin": b"c" * 30}, stage="staging")
    clock.at(41)
    reg.set_alias("alpha", "staging", "3")
    clock.at(50)
    reg.add_version("alpha", {"weights.bin": b"d" * 40}, tags={"keep": "true"})
    clock.at(60)
    reg.delete(ref("alpha@4"))
    clock.at(70)
    reg.add_version("alpha", {"weights.bin": b"e" * 50}, stage="failed")
    clock.at(71)
    reg.set_tag(ref("alpha@5"), "keep", "false")
    for v in range(6, 12):
        clock.at(80 + v)
        reg.add_version("alpha", {"weights.bin": b"f" * v}, stage="experiment")
    clock.at(99)
    reg.set_alias("alpha", "canary", "11")
    clock.at(0)
    reg.create_model("beta")
    clock.at(3)
    reg.add_version("beta", {"model.onnx": b"x" * 5})
    clock.at(4)
    reg.add_consumer(ref("beta@1"), "reporting")
    clock.at(5)
    reg.set_active(ref("beta@1"), False)
    clock.at(6)
    reg.set_active(ref("beta@1"), True)
    clock.at(7)
    reg.add_version("beta", {"model.onnx": b"y" * 6}, stage="archived")
    clock.at(8)
    reg.delete(ref("beta@2"))
    clock.at(9)
    reg.import_version(
        ref("beta@2"), [("model.onnx", lambda: iter([b"y" * 6]))], metadata={"stage": "archived", "tags": {"r": "1"}}
    )
    reg.create_model("empty")
    reg.create_model("gone")
    clock.at(11)
    reg.add_version("gone", {"w.bin": b"z"})
    clock.at(12)
    reg.delete(ref("gone@1"))


def consumer(name: str, detail: str) -> Dependent:
    return Dependent(kind="consumer", name=name, detail=detail, movable=False)


def catalog_entry(text: str, created: int, size: int, **fields: Any) -> CatalogEntry:
    return CatalogEntry(reference=ref(text), created_at=day(created), size_bytes=size, dependents=[], **fields)


def test_the_catalogue_lists_every_live_version_with_what_the_review_needs(tmp_path: Path, clock: Clock) -> None:
    reg = LocalRegistry(tmp_path / "local")
    seed_catalogue(reg, clock)
    expected = [
        catalog_entry(
            "alpha@1",
            1,
            12,
            stage="archived",
            status="superseded",
            status_changed_at=day(20),
            aliases=[],
            tags={},
            active=False,
        ),
        catalog_entry(
            "alpha@2",
            10,
            20,
            stage="production",
            status="promoted",
            status_changed_at=day(20),
            aliases=["champion", "production"],
            tags={"framework": "pytorch"},
            active=True,
        ).model_copy(
            update={
                "dependents": [
                    consumer("alerts", "declared consumer of alpha@2"),
                    consumer("billing-batch", "nightly scoring"),
                ]
            }
        ),
        catalog_entry(
            "alpha@3",
            40,
            30,
            stage="staging",
            status=None,
            status_changed_at=None,
            aliases=["staging"],
            tags={},
            active=True,
        ),
        catalog_entry(
            "alpha@5",
            70,
            50,
            stage="failed",
            status="failed",
            status_changed_at=day(70),
            aliases=[],
            tags={"keep": "false"},
            active=True,
        ),
        *[
            catalog_entry(
                f"alpha@{v}",
                80 + v,
                v,
                stage="experiment",
                status=None,
                status_changed_at=None,
                aliases=["canary"] if v == 11 else [],
                tags={},
                active=True,
            )
            for v in range(6, 12)
        ],
        catalog_entry(
            "beta@1",
            3,
            5,
            stage=None,
            status=None,
            status_changed_at=None,
            aliases=[],
            tags={},
            active=True,
        ).model_copy(update={"dependents": [consumer("reporting", "declared consumer of beta@1")]}),
        catalog_entry(
            "beta@2",
            9,
            6,
            stage="archived",
            status=None,
            status_changed_at=None,
            aliases=[],
            tags={"r": "1"},
            active=True,
        ),
    ]
    listed = list(reg.list_versions())
    assert [str(e.reference) for e in listed] == [str(e.reference) for e in expected]
    assert [e.model_dump(mode="json") for e in listed] == [e.model_dump(mode="json") for e in expected]
    assert listed == expected


def decisions(reg: LocalRegistry, now: datetime) -> dict[str, tuple[str, str | None]]:
    report = run_review({"local": reg}, Policy.default(), now=now)
    return {str(d.reference): (d.outcome, d.rule) for d in report.decisions}


def test_a_deactivated_old_production_version_stays_superseded_and_the_review_selects_it(
    tmp_path: Path, clock: Clock
) -> None:
    reg = LocalRegistry(tmp_path / "local")
    reg.create_model("churn")
    for v in (1, 2, 3):
        clock.at(10 * v)
        reg.add_version("churn", {"weights.bin": b"w" * v})
        reg.set_alias("churn", "production", str(v))
    clock.at(40)
    reg.set_active(ref("churn@1"), False)

    old = next(e for e in reg.list_versions() if e.reference == ref("churn@1"))
    assert (old.status, old.status_changed_at, old.active) == ("superseded", day(20), False)
    assert decisions(reg, day(200)) == {
        "churn@1": ("candidate", "#40 superseded_production"),
        "churn@2": ("protected", "#30 keep_recent_production"),
        "churn@3": ("protected", "#20 protect_in_use"),
    }


def test_a_staging_version_that_leaves_staging_unpromoted_is_rejected(tmp_path: Path, clock: Clock) -> None:
    reg = LocalRegistry(tmp_path / "local")
    reg.create_model("churn")
    clock.at(1)
    for _ in range(3):
        reg.add_version("churn", {"weights.bin": b"w"}, stage="staging")
    clock.at(2)
    reg.set_alias("churn", "staging", "1")
    clock.at(3)
    reg.remove_alias("churn", "staging")  # 1 removed from staging: rejected
    clock.at(4)
    reg.set_alias("churn", "staging", "2")
    clock.at(5)
    reg.set_alias("churn", "staging", "3")  # staging moved off 2: rejected
    clock.at(6)
    reg.set_alias("churn", "production", "3")
    clock.at(7)
    reg.remove_alias("churn", "staging")  # 3 was promoted: not rejected

    statuses = {e.reference.version: (e.stage, e.status, e.status_changed_at) for e in reg.list_versions()}
    assert statuses == {
        "1": ("staging", "rejected", day(3)),
        "2": ("staging", "rejected", day(5)),
        "3": ("production", "promoted", day(6)),
    }
    assert decisions(reg, day(100)) == {
        "churn@1": ("candidate", "#50 staging_resolved"),
        "churn@2": ("candidate", "#50 staging_resolved"),
        "churn@3": ("protected", "#20 protect_in_use"),
    }
    assert decisions(reg, day(20)) == {
        "churn@1": ("kept", None),
        "churn@2": ("kept", None),
        "churn@3": ("protected", "#20 protect_in_use"),
    }


def test_a_version_added_with_stage_failed_has_status_failed(tmp_path: Path, clock: Clock) -> None:
    reg = LocalRegistry(tmp_path / "local")
    reg.create_model("vision")
    clock.at(1)
    reg.add_version("vision", {"weights.bin": b"w"}, stage="failed")
    reg.add_version("vision", {"weights.bin": b"w"}, stage="experiment")

    statuses = {e.reference.version: (e.status, e.status_changed_at) for e in reg.list_versions()}
    assert statuses == {"1": ("failed", day(1)), "2": (None, None)}
    assert decisions(reg, day(40)) == {"vision@1": ("candidate", "#60 failed_experiments"), "vision@2": ("kept", None)}


def test_a_restored_version_is_not_selected_again_for_what_happened_before_it_was_deleted(
    tmp_path: Path, clock: Clock
) -> None:
    reg = LocalRegistry(tmp_path / "local")
    reg.create_model("churn")
    for v in (1, 2, 3):
        clock.at(10 * v)
        reg.add_version("churn", {"weights.bin": b"w" * v})
        reg.set_alias("churn", "production", str(v))
    saved = [(i.path, b"".join(i.open())) for i in reg.export(ref("churn@1"))]
    clock.at(150)
    assert decisions(reg, day(150))["churn@1"] == ("candidate", "#40 superseded_production")
    reg.delete(ref("churn@1"))
    clock.at(160)
    reg.import_version(ref("churn@1"), [(path, lambda data=data: iter([data])) for path, data in saved])

    restored = next(e for e in reg.list_versions() if e.reference == ref("churn@1"))
    assert (restored.status, restored.status_changed_at, restored.active) == (None, None, True)
    assert decisions(reg, day(170))["churn@1"] == ("kept", None)
