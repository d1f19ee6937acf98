"""Restore: verified first, then streamed into a registry that imports versions."""

from __future__ import annotations

import stat
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from retirement.backup.filesystem import FilesystemBackupStore
from retirement.backup.restore import VersionImporter, restore
from retirement.errors import BackupVerifyError, NotFoundError
from retirement.models import ExportItem, ModelRef
from retirement.platforms.local import LocalRegistry
from retirement.settings import RetireSettings

REF = ModelRef(platform="local", name="churn-model", version="3")
FILES = {"MLmodel": b"flavor: sklearn\n", "weights/model.bin": bytes(range(256)) * 9000}
RETAIN = datetime(2030, 1, 1, tzinfo=UTC)


class FakeRegistry:
    """Records what it was asked to import, reading every stream to the end like a real importer."""

    def __init__(self, before_read: Callable[[], None] | None = None) -> None:
        self.imported: list[tuple[ModelRef, dict[str, bytes], dict[str, Any] | None, list[int]]] = []
        self.before_read = before_read

    def import_version(
        self,
        ref: ModelRef,
        files: Iterable[tuple[str, Callable[[], Iterator[bytes]]]],
        *,
        metadata: dict[str, Any] | None = None,
    ) -> ModelRef:
        if self.before_read is not None:
            self.before_read()
        contents: dict[str, bytes] = {}
        sizes: list[int] = []
        for path, opener in files:
            parts = list(opener())
            sizes.extend(len(p) for p in parts)
            contents[path] = b"".join(parts)
        self.imported.append((ref, contents, metadata, sizes))
        return ref


def write_backup(tmp_path: Path) -> tuple[FilesystemBackupStore, Path]:
    store = FilesystemBackupStore(tmp_path / "backups", fsync=False)
    items = [ExportItem(path=p, open=lambda d=d: iter([d]), size=len(d)) for p, d in FILES.items()]
    manifest = store.write(REF, items, retain_until=RETAIN, platform_metadata={"framework": "sklearn"})
    return store, Path(manifest.location)


def test_restore_imports_every_file_in_mib_chunks_with_the_metadata(tmp_path: Path) -> None:
    store, folder = write_backup(tmp_path)
    registry = FakeRegistry()
    assert isinstance(registry, VersionImporter)
    assert restore(store, str(folder), registry) == REF
    [(ref, contents, metadata, sizes)] = registry.imported
    assert ref == REF
    assert contents == FILES
    assert metadata == {"framework": "sklearn"}
    assert max(sizes) == 1 << 20


def test_restore_refuses_a_tampered_backup_and_imports_nothing(tmp_path: Path) -> None:
    store, folder = write_backup(tmp_path)
    target = folder / "weights" / "model.bin"
    target.chmod(stat.S_IRUSR | stat.S_IWUSR)
    data = bytearray(target.read_bytes())
    data[100] ^= 0xFF
    target.write_bytes(bytes(data))
    registry = FakeRegistry()
    with pytest.raises(BackupVerifyError, match=r"weights/model.bin: sha256 differs") as info:
        restore(store, str(folder), registry)
    assert info.value.mismatches == [m for m in info.value.mismatches if m.startswith("weights/model.bin")]
    assert registry.imported == []


def test_a_file_changed_after_verification_fails_the_import(tmp_path: Path) -> None:
    store, folder = write_backup(tmp_path)
    target = folder / "MLmodel"

    def tamper() -> None:
        target.chmod(stat.S_IRUSR | stat.S_IWUSR)
        target.write_bytes(b"flavor: pytorch\n")

    registry = FakeRegistry(before_read=tamper)
    with pytest.raises(BackupVerifyError, match="MLmodel: changed since it was verified"):
        restore(store, str(folder), registry)
    assert registry.imported == []


def test_restore_of_something_that_is_not_a_backup_is_not_found(tmp_path: Path) -> None:
    store = FilesystemBackupStore(tmp_path / "backups")
    with pytest.raises(NotFoundError):
        restore(store, str(tmp_path), FakeRegistry())


def test_a_deleted_local_version_comes_back_from_its_backup(settings: RetireSettings) -> None:
    registry = LocalRegistry(settings.local_dir)
    old, new = registry.seed_demo(total_bytes=64 * 1024)
    registry.set_alias(old.name, "production", new.version or "2")
    store = FilesystemBackupStore(settings.backup_dir, fsync=False)
    dossier = registry.describe(old)
    manifest = store.write(old, registry.export(old), retain_until=RETAIN, platform_metadata=dossier.metadata)
    before = {path: registry.file_path(old, path).read_bytes() for path, _ in registry.files(old)}
    registry.delete(old)
    assert not registry.exists(old)

    assert restore(store, manifest.location, registry) == old

    assert registry.exists(old)
    assert {path: registry.file_path(old, path).read_bytes() for path, _ in registry.files(old)} == before


def test_a_tampered_backup_is_not_restored_onto_the_local_platform(settings: RetireSettings) -> None:
    registry = LocalRegistry(settings.local_dir)
    old, new = registry.seed_demo(total_bytes=64 * 1024)
    registry.set_alias(old.name, "production", new.version or "2")
    store = FilesystemBackupStore(settings.backup_dir, fsync=False)
    folder = Path(store.write(old, registry.export(old), retain_until=RETAIN).location)
    registry.delete(old)
    (folder / "config.json").chmod(stat.S_IRUSR | stat.S_IWUSR)
    (folder / "config.json").write_text("{}")

    with pytest.raises(BackupVerifyError, match=r"config\.json: size differs"):
        restore(store, str(folder), registry)
    assert not registry.exists(old)
