"""Restore a verified backup onto a platform that can import a version; purge a backup past its retain-until date."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from retirement.backup.filesystem import MANIFEST, READ_CHUNK, FilesystemBackupStore
from retirement.errors import BackupVerifyError, ConfigError, ConflictError, InputError
from retirement.models import BackupManifest, ModelRef, VerifyReport

logger = logging.getLogger(__name__)

FileOpener = Callable[[], Iterator[bytes]]
"""Returns a fresh iterator over one file's bytes each time it is called."""


@runtime_checkable
class VersionImporter(Protocol):
    """A registry that can take a version back from a backup (the local platform's LocalRegistry)."""

    def import_version(
        self,
        ref: ModelRef,
        files: Iterable[tuple[str, FileOpener]],
        *,
        metadata: dict[str, Any] | None = None,
    ) -> ModelRef:
        """Create ``ref`` from ``files`` (path, opener) and ``metadata``; return what was created.

        Raises:
            ConflictError: ``ref`` already exists on the platform.
        """
        ...


class RestorableStore(Protocol):
    """What a restore reads from a store: both the filesystem and the S3 store are one."""

    def verify(self, location: str) -> VerifyReport:
        """Re-read every file of the backup and compare it with its manifest."""
        ...

    def manifest(self, location: str) -> BackupManifest:
        """The backup's manifest.

        Raises:
            NotFoundError: there is no backup at ``location``.
        """
        ...

    def iter_file(self, location: str, path: str, chunk_size: int = READ_CHUNK) -> Iterator[bytes]:
        """One file's bytes in chunks, hashed as read: BackupVerifyError at the end if they do not match."""
        ...


@runtime_checkable
class DeletingStore(Protocol):
    """A store that deletes a whole backup itself (the S3 store: every object version, its manifest last)."""

    def delete(self, location: str) -> int:
        """Delete the backup at ``location``; return how many objects went."""
        ...


def restore(store: RestorableStore, location: str, registry: VersionImporter) -> ModelRef:
    """Verify the backup at ``location``, then import it into ``registry`` as the version it was taken of.

    Each file is streamed in 1 MiB chunks and hashed again as it is read, so a file changed after
    the verification fails the import instead of going in.

    Args:
        store: the store holding the backup (filesystem or S3).
        location: the backup's folder, or its ``s3://`` location.
        registry: where to restore it.

    Returns:
        The reference the registry restored.

    Raises:
        NotFoundError: there is no backup at ``location``.
        BackupVerifyError: the backup does not match its manifest; nothing was restored.
    """
    report = store.verify(location)
    if not report.ok:
        raise BackupVerifyError(report.location, report.mismatches)
    manifest = store.manifest(location)
    files: list[tuple[str, FileOpener]] = [
        (entry.path, functools.partial(store.iter_file, manifest.location, entry.path, READ_CHUNK))
        for entry in manifest.files
    ]
    restored = registry.import_version(manifest.source, files, metadata=manifest.platform_metadata)
    logger.info("restored %s from %s (%d files)", restored, manifest.location, len(files))
    return restored


def purge(store: RestorableStore, location: str, *, now: datetime) -> BackupManifest:
    """Delete the backup at ``location`` for good, only when its retain-until date has passed.

    On S3 the server enforces the same date (Object Lock) whatever this function is told.

    Args:
        store: the store holding the backup.
        location: the backup's folder, or its ``s3://`` location.
        now: the time compared with retain-until (timezone-aware).

    Returns:
        The manifest of the backup that was deleted.

    Raises:
        NotFoundError: there is no backup at ``location``.
        ConflictError: its retain-until date is in the future; nothing was deleted. On S3, also when
            the server refused to delete an object still under Object Lock.
    """
    if now.tzinfo is None:
        raise InputError("now", "has no timezone", "a timezone-aware datetime, e.g. datetime.now(UTC)")
    manifest = store.manifest(location)
    if manifest.retain_until > now:
        raise ConflictError(
            f"the backup at {manifest.location} must be kept until {manifest.retain_until.isoformat()}: not purged"
        )
    if isinstance(store, DeletingStore):
        store.delete(manifest.location)
    elif isinstance(store, FilesystemBackupStore):
        _delete_folder(store, Path(manifest.location))
    else:
        raise ConfigError(f"{type(store).__name__} cannot delete backups")
    logger.info(
        "purged the backup of %s at %s (kept until %s)", manifest.source, manifest.location, manifest.retain_until
    )
    return manifest


def _delete_folder(store: FilesystemBackupStore, folder: Path) -> None:
    """Remove a backup folder of ``store``: its files, then its manifest, then the folders left empty."""
    root = store.root.resolve()
    if folder.is_symlink() or not folder.resolve().is_relative_to(root) or folder.resolve() == root:
        raise InputError("location", f"{folder} is not a backup folder under {store.root}", f"a folder under {root}")
    for dirpath, dirnames, filenames in os.walk(folder, topdown=False):
        here = Path(dirpath)
        for name in filenames:
            if here != folder or name != MANIFEST:
                (here / name).unlink()
        for name in dirnames:
            target = here / name
            if target.is_symlink():
                target.unlink()
            else:
                target.rmdir()
    (folder / MANIFEST).unlink()  # last: until here the backup still lists, and verify says what is gone
    folder.rmdir()
    current = folder.parent
    while current.resolve() != root and current.resolve().is_relative_to(root):
        try:
            current.rmdir()
        except OSError:
            break
        current = current.parent


__all__ = ["DeletingStore", "FileOpener", "RestorableStore", "VersionImporter", "purge", "restore"]
