"""Port for where backups are written, verified and restored from."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from retirement.models import BackupManifest, ExportItem, ModelRef, VerifyReport

ProgressCallback = Callable[[int, int | None], None]
"""Called with (bytes done, total bytes if known) while a backup is written."""


@runtime_checkable
class BackupStore(Protocol):
    """Write-once backups with a manifest of every file's size and SHA-256."""

    def write(
        self,
        ref: ModelRef,
        items: Sequence[ExportItem],
        *,
        retain_until: datetime,
        dossier: dict[str, Any] | None = None,
        captures: Sequence[str] = (),
        not_captured: Sequence[str] = (),
        platform_metadata: dict[str, Any] | None = None,
        progress: ProgressCallback | None = None,
    ) -> BackupManifest:
        """Stream every item into a new backup (one pass: read, hash, write) and write its manifest.

        Raises:
            BackupError: a download failed or a declared size/hash did not match; the partial
                backup is removed.
            ConflictError: the target location already exists (backups are write-once).
        """
        ...

    def verify(self, location: str) -> VerifyReport:
        """Re-read every file and compare it with the manifest (size, hash, missing, extra)."""
        ...

    def list(self, ref: ModelRef | None = None) -> list[BackupManifest]:
        """Backups of ``ref`` (every backup when None), newest first."""
        ...

    def open(self, location: str, path: str) -> Any:
        """Open one file of a backup for reading (binary)."""
        ...
