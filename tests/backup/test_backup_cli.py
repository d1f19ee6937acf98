"""`retire backup create|verify|list|restore` as a user runs them."""

from __future__ import annotations

import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from retirement.backup.filesystem import FilesystemBackupStore
from retirement.cli import backup as backup_cli
from retirement.cli import main
from retirement.errors import NotFoundError
from retirement.gateway.server import GatewayProcess
from retirement.models import Capabilities, Dossier, ExportItem, ModelRef
from retirement.platforms.base import Platform
from retirement.platforms.local import LocalRegistry
from retirement.settings import RetireSettings

FILES = {"MLmodel": b"flavor: sklearn\n", "weights/model.bin": bytes(range(256)) * 64}


class FakeRegistry:
    """An in-memory registry with one version, churn-model@1, that can also import versions."""

    name = "local"
    capabilities = Capabilities(weights_exportable=True, exports=["weights", "MLmodel"], restore=True)

    def __init__(self) -> None:
        self.imported: dict[ModelRef, dict[str, bytes]] = {}
        self.closed = False

    def _check(self, ref: ModelRef) -> None:
        if (ref.name, ref.version) != ("churn-model", "1"):
            raise NotFoundError(f"local: {ref} does not exist")

    def describe(self, ref: ModelRef) -> Dossier:
        self._check(ref)
        return Dossier(reference=ref, metadata={"framework": "sklearn"})

    def export(self, ref: ModelRef) -> list[ExportItem]:
        self._check(ref)
        return [ExportItem(path=p, open=lambda d=d: iter([d]), size=len(d)) for p, d in FILES.items()]

    def import_version(
        self,
        ref: ModelRef,
        files: Iterable[tuple[str, Callable[[], Iterator[bytes]]]],
        *,
        metadata: dict[str, Any] | None = None,
    ) -> ModelRef:
        self.imported[ref] = {path: b"".join(opener()) for path, opener in files}
        return ref

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> FakeRegistry:
    fake = FakeRegistry()

    def get_platform(name: str, settings: RetireSettings | None = None) -> Platform:
        assert name == "local"
        return Platform(name="local", registry=fake)  # type: ignore[arg-type]

    monkeypatch.setattr(backup_cli, "get_platform", get_platform)
    return fake


def create(capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["backup", "create", "churn-model@1", "--quiet"])
    return code, capsys.readouterr().out


def test_create_prints_location_counts_and_verification(
    registry: FakeRegistry, capsys: pytest.CaptureFixture[str], retire_home: Path
) -> None:
    code, out = create(capsys)
    assert code == 0
    [location] = [line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("backup of churn-model@1: ")]
    assert Path(location).is_relative_to(retire_home / "backups" / "local" / "churn-model" / "1")
    assert f"2 files, {sum(len(d) for d in FILES.values())} bytes" in out
    assert "verified: 2 files" in out
    assert (Path(location) / "weights" / "model.bin").read_bytes() == FILES["weights/model.bin"]
    assert registry.closed


def test_create_of_an_unknown_version_fails_with_one_line_and_writes_nothing(
    registry: FakeRegistry, capsys: pytest.CaptureFixture[str], retire_home: Path
) -> None:
    assert main(["backup", "create", "churn-model@9"]) == 2
    assert "churn-model@9 does not exist" in capsys.readouterr().err
    assert not (retire_home / "backups").exists() or not any((retire_home / "backups").rglob("*.bin"))


def test_create_refuses_a_retention_below_the_operators_minimum(
    registry: FakeRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["backup", "create", "churn-model@1", "--retain-days", "7"]) == 2
    assert "--retain-days: is 7 (allowed: at least 30" in capsys.readouterr().err


def test_verify_exits_1_with_one_line_per_mismatch(registry: FakeRegistry, capsys: pytest.CaptureFixture[str]) -> None:
    _, out = create(capsys)
    location = Path(out.splitlines()[0].split(": ", 1)[1])
    assert main(["backup", "verify", str(location)]) == 0
    assert "OK, 2 files" in capsys.readouterr().out

    (location / "MLmodel").chmod(stat.S_IRUSR | stat.S_IWUSR)
    (location / "MLmodel").write_bytes(b"flavor: pytorch\n")
    (location / "notes.txt").write_text("extra")
    assert main(["backup", "verify", str(location)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert "FAILED, 2 mismatches" in lines[0]
    assert lines[1].startswith("MLmodel: sha256 differs")
    assert lines[2].startswith("notes.txt: extra file")


def test_list_shows_backups_newest_first(registry: FakeRegistry, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["backup", "list"]) == 0
    assert capsys.readouterr().out.strip() == "no backups"
    _, first = create(capsys)
    _, second = create(capsys)
    assert main(["backup", "list", "churn-model@1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    locations = [line.split()[-1] for line in lines]
    assert locations == [second.splitlines()[0].split(": ", 1)[1], first.splitlines()[0].split(": ", 1)[1]]
    assert all("churn-model@1  2 files" in line for line in lines)


def test_restore_imports_the_version_back(registry: FakeRegistry, capsys: pytest.CaptureFixture[str]) -> None:
    _, out = create(capsys)
    location = out.splitlines()[0].split(": ", 1)[1]
    assert main(["backup", "restore", location]) == 0
    assert "restored churn-model@1 on local" in capsys.readouterr().out
    assert registry.imported == {ModelRef(name="churn-model", version="1"): FILES}


def test_verify_of_a_folder_that_is_not_a_backup_fails(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["backup", "verify", str(tmp_path)]) == 2
    assert "is not a backup" in capsys.readouterr().err


def test_create_through_the_gateway_then_restore_on_the_local_platform(
    settings: RetireSettings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = LocalRegistry(settings.local_dir)
    old, new = registry.seed_demo(total_bytes=64 * 1024)
    with GatewayProcess(settings) as gateway:
        monkeypatch.setenv("RETIRE_GATEWAY_PORT", str(gateway.port))
        code, out = create(capsys)
    assert code == 0, out
    location = out.splitlines()[0].split(": ", 1)[1]
    manifest = FilesystemBackupStore(settings.backup_dir).manifest(location)
    assert {(f.path, f.size, f.sha256) for f in manifest.files} == {
        (r.path, r.size, r.sha256) for r in registry.file_records(old)
    }
    assert "verified: 4 files" in out

    # The gateway is gone: the export goes through it, so the backup fails and leaves nothing.
    assert main(["backup", "create", "churn-model@1", "--quiet"]) == 2
    assert "retire backup: error:" in capsys.readouterr().err
    assert len(FilesystemBackupStore(settings.backup_dir).list()) == 1

    registry.set_alias(old.name, "production", new.version or "2")
    registry.delete(old)
    assert main(["backup", "restore", location]) == 0
    assert "restored churn-model@1 on local" in capsys.readouterr().out
    assert {(r.path, r.sha256) for r in registry.file_records(old)} == {(f.path, f.sha256) for f in manifest.files}
