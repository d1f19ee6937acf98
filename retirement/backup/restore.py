"""Restore a verified backup onto a platform that can import a version."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, runtime_checkable

from retirement.backup.filesystem import READ_CHUNK, FilesystemBackupStore
from retirement.errors import BackupVerifyError
from retirement.models import ModelRef

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


def restore(store: FilesystemBackupStore, location: str, registry: VersionImporter) -> ModelRef:
    """Verify the backup at ``location``, then import it into ``registry`` as the version it was taken of.

    Each file is streamed in 1 MiB chunks and hashed again as it is read, so a file changed after
    the verification fails the import instead of going in.

    Args:
        store: the store holding the backup.
        location: the backup's folder.
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


__all__ = ["FileOpener", "VersionImporter", "restore"]
