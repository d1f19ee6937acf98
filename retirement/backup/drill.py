"""The restore drill: before a delete, prove the backup restores (and, where the platform allows, serves).

Verification re-reads a backup where it lies; the drill goes further, as a person restoring it one day
would: every file is restored from the store into a scratch folder and compared with the manifest on
the disk it landed on. Where the registry can import a version (the local platform), the restored
files become a scratch version that must answer a golden request through the gateway, and are removed
again. A failed drill blocks the delete with its reason.
"""

from __future__ import annotations

import functools
import hashlib
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from retirement.backup.filesystem import READ_CHUNK
from retirement.backup.restore import FileOpener, RestorableStore, VersionImporter
from retirement.models import ModelRef, utcnow

Probe = Callable[[ModelRef], str | None]
"""Sends a golden request to a restored scratch version; returns what was wrong, or None."""


class DrillReport(BaseModel):
    """What the drill restored and proved."""

    location: str = Field(description="The backup drilled.")
    manifest_sha256: str | None = Field(default=None, description="Its manifest's SHA-256.")
    at: str = Field(default_factory=lambda: utcnow().isoformat(), description="When.")
    files: int = Field(default=0, description="Files restored and compared.")
    bytes: int = Field(default=0, description="Bytes restored.")
    problems: list[str] = Field(default_factory=list, description="Every mismatch or failure, named.")
    served: str = Field(default="", description="How the restored version was proved usable, if it was.")

    @property
    def ok(self) -> bool:
        """True when every file came back equal and, where tried, the restored version answered."""
        return not self.problems


def run_drill(
    store: RestorableStore,
    location: str,
    scratch_root: Path,
    *,
    importer: VersionImporter | None = None,
    scratch_ref: ModelRef | None = None,
    probe: Probe | None = None,
    remove: Callable[[ModelRef], Any] | None = None,
) -> DrillReport:
    """Restore the backup at ``location`` into a scratch folder, compare, and prove it serves where possible."""
    report = DrillReport(location=location)
    manifest = store.manifest(location)
    scratch_root.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="drill-", dir=scratch_root))
    try:
        for entry in manifest.files:
            target = folder / entry.path
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with open(target, "wb") as out:
                    for chunk in store.iter_file(manifest.location, entry.path, READ_CHUNK):
                        out.write(chunk)
            except Exception as exc:  # a read error is a failed drill, named, never a crash
                report.problems.append(f"{entry.path}: cannot be restored ({exc})")
                continue
            digest, size = hashlib.sha256(), 0
            with open(target, "rb") as back:
                while chunk := back.read(READ_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
            if size != entry.size:
                report.problems.append(f"{entry.path}: restored {size} bytes, the manifest says {entry.size}")
            elif digest.hexdigest() != entry.sha256:
                report.problems.append(f"{entry.path}: restored bytes do not match the manifest's sha256")
            report.files += 1
            report.bytes += size
        if report.problems or importer is None or scratch_ref is None:
            return report
        files: list[tuple[str, FileOpener]] = [
            (entry.path, functools.partial(_chunks, folder / entry.path)) for entry in manifest.files
        ]
        try:
            restored = importer.import_version(scratch_ref, files, metadata=manifest.platform_metadata)
        except Exception as exc:
            report.problems.append(f"the platform refused the restored files as a version: {exc}")
            return report
        try:
            wrong = probe(restored) if probe is not None else None
            if wrong:
                report.problems.append(f"the restored version {restored} does not serve: {wrong}")
            else:
                report.served = f"restored as {restored}" + (", answered a golden request" if probe else "")
        finally:
            if remove is not None:
                remove(restored)
        return report
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _chunks(path: Path) -> Any:
    with open(path, "rb") as fh:
        while chunk := fh.read(READ_CHUNK):
            yield chunk
