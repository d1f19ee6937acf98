"""The filesystem backup store: write-once folders of files, a manifest of their SHA-256, verify by re-reading."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

from pydantic import ValidationError

from retirement.backup.base import ProgressCallback
from retirement.errors import BackupError, BackupVerifyError, ConflictError, InputError, NotFoundError, RetirementError
from retirement.models import BackupManifest, ExportItem, ManifestFile, ModelRef, VerifyReport, utcnow
from retirement.redact import redact, redact_text

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
DOSSIER = "dossier.json"
RESERVED = frozenset({MANIFEST, DOSSIER})
PARTIAL_SUFFIX = ".partial"
MODEL_DIR = "_model"
"""Folder name used in place of the version when the platform's unit is the whole model."""

READ_CHUNK = 1 << 20
PROGRESS_EVERY = 64 << 20
"""The progress callback hears from a write at least this often (bytes)."""

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_BINARY = getattr(os, "O_BINARY", 0)
_READ_ONLY = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH


def _component(field: str, value: str) -> str:
    """One path component of a backup location: percent-encoded, never '.', '..' or empty."""
    if not value or value in (".", ".."):
        raise InputError(field, f"{value!r} cannot name a backup folder", "a non-empty name other than '.' and '..'")
    return quote(value, safe="")


def check_item_path(path: str) -> tuple[str, ...]:
    """The parts of a file path inside a backup, refusing any that could leave the backup folder.

    Args:
        path: relative, '/'-separated, e.g. ``weights/model.safetensors``.

    Returns:
        Its '/'-separated parts.

    Raises:
        InputError: the path is empty, absolute, has an empty, '.' or '..' part, a backslash or a
            control character, or is one of the store's own files (manifest.json, dossier.json).
    """
    allowed = "a relative '/'-separated path such as 'weights/model.bin', without '.', '..' or control characters"
    if not isinstance(path, str) or not path:
        raise InputError("file path", "is empty", allowed)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        raise InputError("file path", f"{path!r} contains a control character", allowed)
    if "\\" in path:
        raise InputError("file path", f"{path!r} contains a backslash", allowed)
    if path.startswith("/"):
        raise InputError("file path", f"{path!r} is absolute", allowed)
    parts = tuple(path.split("/"))
    if any(part in ("", ".", "..") for part in parts):
        raise InputError("file path", f"{path!r} has an empty, '.' or '..' part", allowed)
    if path in RESERVED:
        raise InputError("file path", f"{path!r} is reserved for the backup's own records", allowed)
    return parts


def _inside(folder: Path, parts: Sequence[str]) -> Path:
    """``folder/parts``, checked to stay inside ``folder`` once resolved."""
    target = folder.joinpath(*parts)
    base = folder.resolve()
    # The last part is opened with O_NOFOLLOW; the folders leading to it must not lead out.
    if not target.parent.resolve().is_relative_to(base):
        raise InputError("file path", f"{'/'.join(parts)!r} leaves the backup folder", "a path inside the backup")
    return target


_URL_QUERY_RE = re.compile(r"([a-z][a-z0-9+.-]*://[^\s?#'\"]+)\?[^\s'\"]*", re.IGNORECASE)


def _scrub(text: str) -> str:
    """``text`` without credentials: known token shapes and URL query strings (pre-signed URLs sign there)."""
    return redact_text(_URL_QUERY_RE.sub(r"\1?[redacted]", text))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class _Progress:
    """Thread-safe byte counter that calls the user's callback at least every PROGRESS_EVERY bytes."""

    def __init__(self, callback: ProgressCallback | None, total: int | None) -> None:
        self.callback = callback
        self.total = total
        self.done = 0
        self._last = 0
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.done += n
            if self.callback is not None and self.done - self._last >= PROGRESS_EVERY:
                self._last = self.done
                self.callback(self.done, self.total)

    def finish(self) -> None:
        if self.callback is not None:
            with self._lock:
                self.callback(self.done, self.total)


class FilesystemBackupStore:
    """Backups as write-once folders under ``root``, one per model version and time.

    Layout: ``<root>/<platform>/<model>/<version or _model>/<UTC timestamp>/`` holding the files
    at their own relative paths, ``manifest.json`` (a BackupManifest) and ``dossier.json``. Every
    location component is percent-encoded, so no model name can leave the root. A backup is
    written into a sibling ``.partial`` folder and renamed into place only when complete; files
    are made read-only.

    Args:
        root: the folder that holds every backup.
        workers: files downloaded, hashed and written at the same time.
        fsync: flush every file to disk before the backup is declared complete (a backup that
            a deletion relies on must survive a power cut).
        clock: the time that names new backups (injected by tests).
    """

    def __init__(
        self,
        root: Path,
        *,
        workers: int = 2,
        fsync: bool = True,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        if workers < 1:
            raise InputError("workers", f"is {workers}", "1 or more")
        self.root = Path(root).expanduser()
        self.workers = workers
        self.fsync = fsync
        self._clock = clock

    # -- locations ------------------------------------------------------------------------

    def _ref_dir(self, ref: ModelRef) -> Path:
        version = MODEL_DIR if ref.version is None else _component("version", ref.version)
        return self.root / _component("platform", ref.platform) / _component("name", ref.name) / version

    def location_for(self, ref: ModelRef, created_at: datetime) -> Path:
        """The folder a backup of ``ref`` taken at ``created_at`` lives in.

        Raises:
            InputError: a part of the reference cannot name a folder ('.', '..', empty).
        """
        stamp = created_at.astimezone(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        return self._ref_dir(ref) / stamp

    def _backup_dir(self, location: str | Path) -> Path:
        folder = Path(location).expanduser()
        if not (folder / MANIFEST).is_file() or folder.name.endswith(PARTIAL_SUFFIX):
            raise NotFoundError(f"{folder} is not a backup (no {MANIFEST})")
        return folder

    def manifest(self, location: str | Path) -> BackupManifest:
        """The manifest of the backup at ``location``, with ``location`` set to where it is now.

        Raises:
            NotFoundError: there is no backup at ``location``.
            BackupError: its manifest cannot be read.
        """
        folder = self._backup_dir(location)
        try:
            manifest = BackupManifest.model_validate_json((folder / MANIFEST).read_bytes())
        except (OSError, ValidationError) as exc:
            raise BackupError(f"{folder / MANIFEST}: unreadable manifest: {type(exc).__name__}") from exc
        return manifest.model_copy(update={"location": str(folder)})

    # -- write ----------------------------------------------------------------------------

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

        Args:
            ref: the model (version) the files belong to.
            items: the files, as lazily opened streams.
            retain_until: until when the backup must be kept.
            dossier: written as dossier.json when given.
            captures: what the backup holds, in words.
            not_captured: what the platform would not let out.
            platform_metadata: the platform's metadata, for a restore.
            progress: called with (bytes done, total or None) at least every 64 MiB and at the end.

        Returns:
            The manifest, as written to manifest.json.

        Raises:
            InputError: a file path is unsafe or appears twice; nothing is written.
            BackupError: a download failed or a declared size/hash did not match; the partial
                backup is removed.
            ConflictError: the target location already exists (backups are write-once).
        """
        paths: dict[str, tuple[str, ...]] = {}
        for item in items:
            parts = check_item_path(item.path)
            if item.path in paths:
                raise InputError("file path", f"{item.path!r} appears twice", "each file once")
            paths[item.path] = parts
        folders = {"/".join(parts[:i]) for parts in paths.values() for i in range(1, len(parts))}
        for clash in sorted(folders & set(paths)):
            raise InputError("file path", f"{clash!r} is both a file and a folder", "files and folders apart")
        created_at = self._clock()
        final = self.location_for(ref, created_at)
        partial = final.with_name(final.name + PARTIAL_SUFFIX)
        if final.exists():
            raise ConflictError(f"a backup already exists at {final}; backups are write-once")
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            partial.mkdir()
        except FileExistsError:
            raise ConflictError(f"a backup is already being written at {partial}") from None
        try:
            files = self._write_files(partial, items, paths, progress)
            manifest = BackupManifest(
                source=ref,
                location=str(final),
                created_at=created_at,
                retain_until=retain_until,
                files=files,
                captures=list(captures),
                not_captured=list(not_captured),
                platform_metadata=redact(dict(platform_metadata or {})),
            )
            if dossier is not None:
                self._write_record(
                    partial / DOSSIER, json.dumps(redact(dossier), indent=2, sort_keys=True, default=str)
                )
            self._write_record(partial / MANIFEST, manifest.model_dump_json(indent=2))
            if self.fsync:
                self._fsync_dir(partial)
            if final.exists():
                raise ConflictError(f"a backup already exists at {final}; backups are write-once")
            try:
                os.rename(partial, final)
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    raise ConflictError(f"a backup already exists at {final}; backups are write-once") from exc
                raise BackupError(f"cannot move the finished backup into {final}: {exc.strerror}") from exc
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            self._prune_empty(final.parent)
            raise
        if self.fsync:
            self._fsync_dir(final.parent)
        logger.info("backup of %s written to %s: %d files, %d bytes", ref, final, len(files), manifest.total_bytes)
        return manifest

    def _write_files(
        self,
        folder: Path,
        items: Sequence[ExportItem],
        paths: dict[str, tuple[str, ...]],
        progress: ProgressCallback | None,
    ) -> list[ManifestFile]:
        sizes = [item.size for item in items]
        total = None if any(s is None for s in sizes) else sum(s for s in sizes if s is not None)
        counter = _Progress(progress, total)
        cancel = threading.Event()
        results: dict[str, ManifestFile] = {}
        with ThreadPoolExecutor(max_workers=min(self.workers, max(1, len(items))), thread_name_prefix="backup") as pool:
            futures = [pool.submit(self._write_one, folder, item, paths[item.path], counter, cancel) for item in items]
            try:
                done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            except BaseException:  # Ctrl-C: the workers stop at their next chunk
                cancel.set()
                raise
            failed = next((f for f in done if f.exception() is not None), None)
            if failed is not None:
                cancel.set()
                for future in futures:
                    future.cancel()
                wait(futures)
                exc = failed.exception()
                assert exc is not None
                raise exc
            for future in futures:
                entry = future.result()
                results[entry.path] = entry
        counter.finish()
        return [results[item.path] for item in items]

    def _write_one(
        self,
        folder: Path,
        item: ExportItem,
        parts: tuple[str, ...],
        counter: _Progress,
        cancel: threading.Event,
    ) -> ManifestFile:
        target = _inside(folder, parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        _inside(folder, parts)  # a folder created by another file must not have become a way out
        digest = hashlib.sha256()
        size = 0
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_BINARY, 0o600)
        except OSError as exc:
            raise BackupError(f"{item.path}: cannot create the file: {exc.strerror}") from exc
        try:
            stream = item.open()
            try:
                for chunk in stream:
                    if cancel.is_set():
                        raise BackupError("cancelled because another file failed")
                    digest.update(chunk)
                    _write_all(fd, chunk)
                    size += len(chunk)
                    counter.add(len(chunk))
                    if item.size is not None and size > item.size:
                        raise BackupError(f"more than the declared {item.size} bytes received")
            finally:
                close = getattr(stream, "close", None)
                if callable(close):
                    close()
            if self.fsync:
                os.fsync(fd)
        except Exception as exc:
            text = str(exc) if isinstance(exc, RetirementError) else f"{type(exc).__name__}: {exc}"
            raise BackupError(f"{item.path}: {_scrub(text)}") from exc
        finally:
            os.close(fd)
        found = digest.hexdigest()
        if item.size is not None and size != item.size:
            raise BackupError(f"{item.path}: {size} bytes received, the platform declared {item.size}")
        if item.sha256 is not None and found != item.sha256.lower():
            raise BackupError(f"{item.path}: sha256 {found} does not match the declared {item.sha256.lower()}")
        os.chmod(target, _READ_ONLY)
        return ManifestFile(path=item.path, size=size, sha256=found)

    def _write_record(self, path: Path, text: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_BINARY, 0o600)
        try:
            _write_all(fd, text.encode("utf-8"))
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(path, _READ_ONLY)

    def _prune_empty(self, folder: Path) -> None:
        """Remove the empty folders a failed write left between ``folder`` and the root."""
        root = self.root.resolve()
        current = folder
        while current.resolve() != root and current.resolve().is_relative_to(root):
            try:
                current.rmdir()
            except OSError:
                return
            current = current.parent

    @staticmethod
    def _fsync_dir(folder: Path) -> None:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- verify ---------------------------------------------------------------------------

    def verify(self, location: str) -> VerifyReport:
        """Re-read every file and compare it with the manifest.

        Every problem is one line of the report: a size that differs, a hash that differs, a
        missing file, an extra file (anything besides the manifest's files, manifest.json and
        dossier.json), a path that is not a regular file.

        Raises:
            NotFoundError: there is no backup at ``location``.
        """
        folder = self._backup_dir(location)
        try:
            manifest = self.manifest(folder)
        except BackupError as exc:
            return VerifyReport(location=str(folder), ok=False, files_checked=0, bytes_checked=0, mismatches=[str(exc)])
        mismatches: list[str] = []
        checkable: list[tuple[ManifestFile, Path]] = []
        listed: set[str] = set()
        for entry in manifest.files:
            listed.add(entry.path)
            try:
                checkable.append((entry, _inside(folder, check_item_path(entry.path))))
            except InputError:
                mismatches.append(f"{entry.path}: unsafe path (it could lead out of the backup), not read")
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="verify") as pool:
            outcomes = list(pool.map(lambda pair: _check_file(*pair), checkable))
        files_checked = 0
        bytes_checked = 0
        for problem, read in outcomes:
            if read is not None:
                files_checked += 1
                bytes_checked += read
            if problem:
                mismatches.append(problem)
        for extra in sorted(_walk(folder) - listed - RESERVED):
            mismatches.append(f"{extra}: extra file, not in the manifest")
        report = VerifyReport(
            location=str(folder),
            ok=not mismatches,
            files_checked=files_checked,
            bytes_checked=bytes_checked,
            mismatches=mismatches,
        )
        if not report.ok:
            logger.warning("backup %s failed verification: %d problems", folder, len(mismatches))
        return report

    # -- list and open --------------------------------------------------------------------

    def list(self, ref: ModelRef | None = None) -> list[BackupManifest]:
        """Backups of ``ref``, newest first.

        Args:
            ref: a version (its backups), a model without version (backups of every version and
                of the whole model), or None (every backup).
        """
        if ref is None:
            pattern = "*/*/*/*/" + MANIFEST
            base = self.root
        elif ref.version is None:
            pattern = "*/*/" + MANIFEST
            base = self.root / _component("platform", ref.platform) / _component("name", ref.name)
        else:
            pattern = "*/" + MANIFEST
            base = self._ref_dir(ref)
        if not base.is_dir():
            return []
        manifests: list[BackupManifest] = []
        for path in base.glob(pattern):
            if path.parent.name.endswith(PARTIAL_SUFFIX):
                continue
            try:
                manifests.append(self.manifest(path.parent))
            except (BackupError, NotFoundError) as exc:
                logger.warning("skipping %s: %s", path.parent, exc)
        manifests.sort(key=lambda m: m.created_at, reverse=True)
        return manifests

    def open(self, location: str, path: str) -> BinaryIO:
        """Open one file of a backup (one listed in its manifest, or the manifest or dossier) read-only, binary.

        Raises:
            NotFoundError: no backup at ``location``, or no such file in it.
            InputError: ``path`` could leave the backup folder.
        """
        folder = self._backup_dir(location)
        if path in RESERVED:
            parts: tuple[str, ...] = (path,)
        else:
            parts = check_item_path(path)
            if path not in {f.path for f in self.manifest(folder).files}:
                raise NotFoundError(f"{path!r} is not a file of the backup at {folder}")
        target = _inside(folder, parts)
        try:
            fd = os.open(target, os.O_RDONLY | _O_NOFOLLOW | _O_BINARY)
        except FileNotFoundError:
            raise NotFoundError(f"{path!r} is missing from the backup at {folder}") from None
        except OSError as exc:
            raise BackupError(f"{path!r} in {folder}: cannot open: {exc.strerror}") from exc
        return os.fdopen(fd, "rb")

    def iter_file(self, location: str, path: str, chunk_size: int = READ_CHUNK) -> Iterator[bytes]:
        """The bytes of one backed-up file, in chunks, checked against the manifest as they are read.

        Raises:
            BackupVerifyError: at the end of the stream, when the bytes read do not match the manifest
                (the file changed after it was verified).
        """
        manifest = self.manifest(location)
        entry = next((f for f in manifest.files if f.path == path), None)
        if entry is None:
            raise NotFoundError(f"{path!r} is not a file of the backup at {manifest.location}")
        digest = hashlib.sha256()
        size = 0
        with self.open(location, path) as handle:
            while chunk := handle.read(chunk_size):
                digest.update(chunk)
                size += len(chunk)
                yield chunk
        if size != entry.size or digest.hexdigest() != entry.sha256:
            raise BackupVerifyError(manifest.location, [f"{path}: changed since it was verified"])


def _check_file(entry: ManifestFile, target: Path) -> tuple[str | None, int | None]:
    """(problem or None, bytes read or None) for one file of a backup."""
    try:
        fd = os.open(target, os.O_RDONLY | _O_NOFOLLOW | _O_BINARY)
    except FileNotFoundError:
        return f"{entry.path}: missing", None
    except OSError as exc:
        return f"{entry.path}: cannot be read ({exc.strerror}; a link or not a regular file)", None
    digest = hashlib.sha256()
    size = 0
    with os.fdopen(fd, "rb", buffering=0) as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            return f"{entry.path}: not a regular file", None
        buffer = bytearray(READ_CHUNK)
        view = memoryview(buffer)
        while n := handle.readinto(buffer):
            digest.update(view[:n])
            size += n
    if size != entry.size:
        return f"{entry.path}: size differs (manifest {entry.size} bytes, found {size})", size
    found = digest.hexdigest()
    if found != entry.sha256:
        return f"{entry.path}: sha256 differs (manifest {entry.sha256}, found {found})", size
    return None, size


def _walk(folder: Path) -> set[str]:
    """Every file (and link, and special file) under ``folder``, as '/'-separated relative paths."""
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        rel = Path(dirpath).relative_to(folder)
        for name in filenames:
            found.add((rel / name).as_posix())
        for name in list(dirnames):
            if (Path(dirpath) / name).is_symlink():
                found.add((rel / name).as_posix())
                dirnames.remove(name)
    return found


__all__ = ["DOSSIER", "MANIFEST", "FilesystemBackupStore", "check_item_path"]
