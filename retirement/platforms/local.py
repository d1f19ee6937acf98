"""The embedded local platform: a SQLite catalogue and version files under one root folder.

Layout under ``root``::

    catalog.db                         models, versions, files, aliases, consumers, events (SQLite, WAL)
    models/<name>/<version>/<path>     the files of each version
    incoming/                          versions being written (renamed into models/ when complete)
    requests.db                        the gateway's request log (see retirement.gateway.requestlog)

The catalogue is opened per operation, in WAL mode with a busy timeout, so the gateway and
flow runs in other processes can use it at the same time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import random
import re
import shutil
import sqlite3
import struct
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import BaseModel, Field

from retirement.backup.stream import CHUNK_SIZE, http_export_item
from retirement.errors import (
    ConflictError,
    DeletionBlockedError,
    InputError,
    NotFoundError,
)
from retirement.models import (
    Capabilities,
    CatalogEntry,
    DeletionBlocker,
    DeletionReceipt,
    Dependent,
    Dossier,
    ExportItem,
    ModelRef,
    RetirementRequest,
    SmokeResult,
    VersionInfo,
)
from retirement.platforms.base import Platform, same_model_refusals
from retirement.settings import RetireSettings

logger = logging.getLogger(__name__)

PLATFORM = "local"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
ALIAS_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
VERSION_RE = re.compile(r"^[1-9][0-9]{0,17}$")
_PATH_PART_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,254}$")
_TAG_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")

NAME_ALLOWED = "lowercase letters, digits, '.', '_', '-', starting with a letter or digit, at most 64 characters"
ALIAS_ALLOWED = "lowercase letters, digits, '_', '-', starting with a letter, at most 64 characters (e.g. 'production')"
VERSION_ALLOWED = "a version number such as '1' or '12'"
PATH_ALLOWED = (
    "a relative path of '/'-separated parts made of letters, digits, '.', '_', '-' "
    "(not starting with '.'), e.g. 'weights.bin' or 'adapters/lora.safetensors'"
)
CONSUMER_ALLOWED = "a non-empty name of at most 128 printable characters, e.g. 'billing-service'"

PRODUCTION = "production"
STAGING = "staging"

CAPABILITIES = Capabilities(
    weights_exportable=True,
    exports=["weights", "adapter", "config", "metadata"],
    not_exportable=[],
    soft_delete="deactivate",
    restore=True,
    cutover=True,
    traffic=True,
    delete_unit="version",
    cascade=[],
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    name TEXT PRIMARY KEY,
    description TEXT NOT NULL DEFAULT '',
    tags TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    next_version INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS versions (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    created_at REAL NOT NULL,
    stage TEXT,
    description TEXT NOT NULL DEFAULT '',
    tags TEXT NOT NULL DEFAULT '{}',
    metrics TEXT NOT NULL DEFAULT '{}',
    active INTEGER NOT NULL DEFAULT 1,
    deleted_at REAL,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS files (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    PRIMARY KEY (name, version, path)
);
CREATE TABLE IF NOT EXISTS aliases (
    name TEXT NOT NULL,
    alias TEXT NOT NULL,
    version INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (name, alias)
);
CREATE TABLE IF NOT EXISTS consumers (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    consumer TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    added_at REAL NOT NULL,
    PRIMARY KEY (name, version, consumer)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    event TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_version ON events (name, version, id);
"""

# Events that count as a version's lifecycle status in the retention review. Deactivation is not
# one (CatalogEntry.active carries it); a restore starts the version afresh, so what happened to
# it before it was deleted no longer counts.
_STATUS_EVENTS = ("promoted", "superseded", "rejected", "failed")
_RESTORED = "restored"


class LocalFile(BaseModel):
    """One file of a local model version, as the catalogue records it."""

    path: str = Field(description="Path relative to the version folder, '/'-separated.")
    size: int = Field(description="Size in bytes.")
    sha256: str = Field(description="SHA-256 of the content, hex, computed when the version was written.")


# ---------------------------------------------------------------------------------------------
# Input checks (all raise InputError before anything is touched)


def check_model_name(name: str, field: str = "name") -> str:
    """A local model name, or InputError naming ``field`` and the allowed form."""
    if not isinstance(name, str) or not name:
        raise InputError(field, "is empty", NAME_ALLOWED)
    if "\x00" in name:
        raise InputError(field, "contains a NUL character", NAME_ALLOWED)
    if "/" in name or "\\" in name:
        raise InputError(field, f"{name!r} contains a path separator", NAME_ALLOWED)
    if ".." in name:
        raise InputError(field, f"{name!r} contains '..'", NAME_ALLOWED)
    if len(name) > 64:
        raise InputError(field, f"is {len(name)} characters long", NAME_ALLOWED)
    if not NAME_RE.match(name):
        raise InputError(field, f"{name!r} is not a valid local model name", NAME_ALLOWED)
    return name


def check_alias(alias: str, field: str = "alias") -> str:
    """A local alias name (never all digits, so it cannot be read as a version)."""
    if not isinstance(alias, str) or not ALIAS_RE.match(alias):
        raise InputError(field, f"{alias!r} is not a valid alias", ALIAS_ALLOWED)
    return alias


def check_local_version(version: str | None, field: str = "version") -> str:
    """A local version number as a string."""
    if not isinstance(version, str) or not VERSION_RE.match(version):
        raise InputError(field, f"{version!r} is not a version number", VERSION_ALLOWED)
    return version


def check_relpath(path: str, field: str = "files") -> str:
    """A safe relative file path inside a version folder."""
    if not isinstance(path, str) or not path:
        raise InputError(field, "has an empty file path", PATH_ALLOWED)
    if "\x00" in path:
        raise InputError(field, "a file path contains a NUL character", PATH_ALLOWED)
    if path.startswith("/") or "\\" in path or len(path) > 1024:
        raise InputError(field, f"file path {path!r} is absolute, uses '\\' or is too long", PATH_ALLOWED)
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise InputError(field, f"file path {path!r} has an empty, '.' or '..' part", PATH_ALLOWED)
        if not _PATH_PART_RE.match(part):
            raise InputError(field, f"file path {path!r} has a disallowed part {part!r}", PATH_ALLOWED)
    return path


def _check_text(field: str, value: str, limit: int, allowed: str) -> str:
    if not isinstance(value, str):
        raise InputError(field, f"is a {type(value).__name__}, not text", allowed)
    if len(value) > limit:
        raise InputError(field, f"is {len(value)} characters long", allowed)
    if "\x00" in value:
        raise InputError(field, "contains a NUL character", allowed)
    return value


def _check_tags(tags: Mapping[str, str] | None, field: str = "tags") -> dict[str, str]:
    result: dict[str, str] = {}
    for key, value in (tags or {}).items():
        if not isinstance(key, str) or not _TAG_KEY_RE.match(key):
            raise InputError(
                field, f"tag key {key!r} is not allowed", "letters, digits, '.', '_', ':', '/', '-', up to 128"
            )
        result[key] = _check_text(f"{field}.{key}", value, 1024, "text of at most 1024 characters")
    return result


def _check_metrics(metrics: Mapping[str, float] | None) -> dict[str, float]:
    result: dict[str, float] = {}
    for key, value in (metrics or {}).items():
        if not isinstance(key, str) or not _TAG_KEY_RE.match(key):
            raise InputError("metrics", f"metric name {key!r} is not allowed", "letters, digits, '.', '_', '-'")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InputError(f"metrics.{key}", f"{value!r} is not a number", "a float such as 0.87")
        result[key] = float(value)
    return result


def _ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _read_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_SIZE):
            yield chunk


# ---------------------------------------------------------------------------------------------


class LocalRegistry:
    """The local platform's registry and catalogue: models, versions, aliases, tags, consumers.

    Args:
        root: the platform's folder (default in ``build``: ``RetireSettings().local_dir``).
        client: HTTP client for exports through the gateway; disk reads when None.
        gateway_url: base URL of the gateway that serves the files (with ``client``).
    """

    name = PLATFORM
    capabilities = CAPABILITIES

    def __init__(self, root: Path, *, client: httpx.Client | None = None, gateway_url: str | None = None) -> None:
        self.root = Path(root).expanduser().resolve()
        self.client = client
        self.gateway_url = gateway_url.rstrip("/") if gateway_url else None
        self._initialized = False

    # -- storage ------------------------------------------------------------------------------

    @property
    def db_path(self) -> Path:
        """The SQLite catalogue."""
        return self.root / "catalog.db"

    @property
    def models_dir(self) -> Path:
        """Where version files live."""
        return self.root / "models"

    def init(self) -> Path:
        """Create the root folder and the catalogue if they do not exist; return the root."""
        self._connect().close()
        return self.root

    def _connect(self) -> sqlite3.Connection:
        if not self._initialized:
            self.root.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.db_path, timeout=30.0, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 30000")
        if not self._initialized:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.executescript(_SCHEMA)
            self._initialized = True
        return conn

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        conn = self._connect()
        try:
            yield conn
        finally:
            conn.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A transaction that takes the write lock at once, so concurrent writers queue instead of deadlocking."""
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            conn.close()

    def _inside_root(self, path: Path) -> Path:
        resolved = path.resolve()
        if not resolved.is_relative_to(self.root):
            raise InputError("path", f"{path} resolves outside the platform root", f"a path under {self.root}")
        return resolved

    def _version_dir(self, name: str, version: str) -> Path:
        return self._inside_root(self.models_dir / check_model_name(name) / check_local_version(version))

    def close(self) -> None:
        """Nothing to release: connections are opened per operation (the HTTP client is its owner's)."""

    # -- reference helpers --------------------------------------------------------------------

    def _check_ref(self, ref: ModelRef, *, need_version: bool = True, field: str = "reference") -> tuple[str, str]:
        if not isinstance(ref, ModelRef):
            raise InputError(field, f"is a {type(ref).__name__}", "a ModelRef such as ModelRef.parse('churn-model@1')")
        if ref.platform != PLATFORM:
            raise InputError(field, f"{ref} is on platform {ref.platform!r}", "a reference on platform 'local'")
        check_model_name(ref.name, field)
        if ref.version is None:
            if need_version:
                raise InputError(field, f"{ref} names no version", "'name@version', e.g. 'churn-model@1'")
            return ref.name, ""
        return ref.name, check_local_version(ref.version, field)

    def _ref(self, name: str, version: int | str) -> ModelRef:
        return ModelRef(platform=PLATFORM, name=name, version=str(version))

    @staticmethod
    def _model_row(conn: sqlite3.Connection, name: str) -> sqlite3.Row:
        row = conn.execute("SELECT * FROM models WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFoundError(f"local: model {name!r} does not exist")
        return row

    @staticmethod
    def _version_row(conn: sqlite3.Connection, name: str, version: str, *, live: bool = True) -> sqlite3.Row:
        row = conn.execute("SELECT * FROM versions WHERE name = ? AND version = ?", (name, int(version))).fetchone()
        if row is None:
            if conn.execute("SELECT 1 FROM models WHERE name = ?", (name,)).fetchone() is None:
                raise NotFoundError(f"local: model {name!r} does not exist")
            raise NotFoundError(f"local: {name}@{version} does not exist")
        if live and row["deleted_at"] is not None:
            raise NotFoundError(f"local: {name}@{version} was deleted")
        return row

    @staticmethod
    def _event(conn: sqlite3.Connection, name: str, version: int | str, event: str, detail: str = "") -> None:
        conn.execute(
            "INSERT INTO events (name, version, event, detail, at) VALUES (?, ?, ?, ?, ?)",
            (name, int(version), event, detail, time.time()),
        )

    # -- models and versions ------------------------------------------------------------------

    def create_model(self, name: str, description: str = "", tags: dict[str, str] | None = None) -> ModelRef:
        """Create an empty model.

        Raises:
            InputError: the name, description or tags are not allowed.
            ConflictError: a model of that name exists.
        """
        check_model_name(name)
        _check_text("description", description, 10_000, "text of at most 10000 characters")
        clean_tags = _check_tags(tags)
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM models WHERE name = ?", (name,)).fetchone():
                raise ConflictError(f"local: model {name!r} already exists")
            conn.execute(
                "INSERT INTO models (name, description, tags, created_at) VALUES (?, ?, ?, ?)",
                (name, description, json.dumps(clean_tags), time.time()),
            )
        return ModelRef(platform=PLATFORM, name=name)

    def list_models(self) -> list[str]:
        """Every model's name, sorted."""
        with self._read() as conn:
            return [r["name"] for r in conn.execute("SELECT name FROM models ORDER BY name")]

    def _write_incoming(
        self, sources: Iterable[tuple[str, Callable[[], Iterator[bytes]]]]
    ) -> tuple[Path, list[LocalFile]]:
        """Write every file into a fresh folder under incoming/, hashing on the way."""
        incoming = self._inside_root(self.root / "incoming" / uuid.uuid4().hex)
        incoming.mkdir(parents=True)
        records: list[LocalFile] = []
        try:
            for relpath, opener in sources:
                target = self._inside_root(incoming / relpath)
                target.parent.mkdir(parents=True, exist_ok=True)
                digest = hashlib.sha256()
                size = 0
                with target.open("wb") as handle:
                    for chunk in opener():
                        digest.update(chunk)
                        size += len(chunk)
                        handle.write(chunk)
                records.append(LocalFile(path=relpath, size=size, sha256=digest.hexdigest()))
        except BaseException:
            shutil.rmtree(incoming, ignore_errors=True)
            raise
        return incoming, records

    def _commit_version(
        self,
        name: str,
        version: int | None,
        incoming: Path,
        records: list[LocalFile],
        *,
        stage: str | None,
        tags: dict[str, str],
        metrics: dict[str, float],
        description: str,
        event: str,
        model_description: str = "",
        model_tags: dict[str, str] | None = None,
        create_model: bool = False,
    ) -> str:
        """Record a written version in the catalogue and move its folder into place, in one transaction."""
        try:
            with self._write() as conn:
                model = conn.execute("SELECT * FROM models WHERE name = ?", (name,)).fetchone()
                if model is None:
                    if not create_model:
                        raise NotFoundError(f"local: model {name!r} does not exist")
                    conn.execute(
                        "INSERT INTO models (name, description, tags, created_at) VALUES (?, ?, ?, ?)",
                        (name, model_description, json.dumps(model_tags or {}), time.time()),
                    )
                    next_version = 1
                else:
                    next_version = model["next_version"]
                if version is None:
                    version = next_version
                else:
                    existing = conn.execute(
                        "SELECT deleted_at FROM versions WHERE name = ? AND version = ?", (name, version)
                    ).fetchone()
                    if existing is not None and existing["deleted_at"] is None:
                        raise ConflictError(f"local: {name}@{version} already exists; restore refuses to overwrite it")
                    conn.execute("DELETE FROM versions WHERE name = ? AND version = ?", (name, version))
                    conn.execute("DELETE FROM files WHERE name = ? AND version = ?", (name, version))
                conn.execute(
                    "UPDATE models SET next_version = ? WHERE name = ?", (max(next_version, version + 1), name)
                )
                conn.execute(
                    "INSERT INTO versions (name, version, created_at, stage, description, tags, metrics) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (name, version, time.time(), stage, description, json.dumps(tags), json.dumps(metrics)),
                )
                conn.executemany(
                    "INSERT INTO files (name, version, path, size, sha256) VALUES (?, ?, ?, ?, ?)",
                    [(name, version, r.path, r.size, r.sha256) for r in records],
                )
                self._event(conn, name, version, event)
                if stage == "failed" and event == "created":
                    self._event(conn, name, version, "failed", "added with stage failed")
                target = self._version_dir(name, str(version))
                if target.exists():
                    # Left over from a delete that crashed after removing the catalogue row's files.
                    shutil.rmtree(target)
                target.parent.mkdir(parents=True, exist_ok=True)
                incoming.rename(target)
        finally:
            shutil.rmtree(incoming, ignore_errors=True)
        return str(version)

    def add_version(
        self,
        name: str,
        files: Mapping[str, bytes | Path],
        *,
        stage: str | None = None,
        tags: dict[str, str] | None = None,
        metrics: dict[str, float] | None = None,
        description: str = "",
    ) -> ModelRef:
        """Add the next version of ``name`` with these files (relative path -> bytes or a file to copy).

        Returns:
            The new version's reference; versions are numbered 1, 2, ... and never reused.

        Raises:
            InputError: a name, path, tag or metric is not allowed, or a source file is missing.
            NotFoundError: the model does not exist.
        """
        check_model_name(name)
        if not files:
            raise InputError("files", "is empty", "at least one file, e.g. {'weights.bin': b'...'}")
        for relpath, content in files.items():
            check_relpath(relpath)
            if isinstance(content, Path):
                if not content.is_file():
                    raise InputError(f"files[{relpath!r}]", f"{content} is not a readable file", "an existing file")
            elif not isinstance(content, bytes | bytearray):
                raise InputError(f"files[{relpath!r}]", f"is a {type(content).__name__}", "bytes or a Path")
        if stage is not None:
            _check_text("stage", stage, 64, "a short word such as 'production', 'staging', 'archived'")
        clean_tags = _check_tags(tags)
        clean_metrics = _check_metrics(metrics)
        _check_text("description", description, 10_000, "text of at most 10000 characters")
        with self._read() as conn:
            self._model_row(conn, name)

        def opener(content: bytes | Path) -> Callable[[], Iterator[bytes]]:
            if isinstance(content, Path):
                return lambda: _read_chunks(content)
            return lambda: iter([bytes(content)])

        incoming, records = self._write_incoming((p, opener(c)) for p, c in files.items())
        version = self._commit_version(
            name,
            None,
            incoming,
            records,
            stage=stage,
            tags=clean_tags,
            metrics=clean_metrics,
            description=description,
            event="created",
        )
        return self._ref(name, version)

    def import_version(
        self,
        ref: ModelRef,
        files: Iterable[tuple[str, Callable[[], Iterator[bytes]]]],
        *,
        metadata: dict[str, Any] | None = None,
    ) -> ModelRef:
        """Restore a version from a backup under its own version number.

        ``metadata`` may carry ``stage``, ``tags``, ``metrics``, ``description`` (of the version) and
        ``model_description`` / ``model_tags`` (used when the model has to be recreated).

        Raises:
            InputError: a path or a metadata field is not allowed.
            ConflictError: that version exists (restore never overwrites).
        """
        name, version = self._check_ref(ref)
        sources = list(files)
        if not sources:
            raise InputError("files", "is empty", "the files of the backup")
        seen: set[str] = set()
        for relpath, opener in sources:
            check_relpath(relpath)
            if relpath in seen:
                raise InputError("files", f"file path {relpath!r} appears twice", "each path once")
            if not callable(opener):
                raise InputError("files", f"the opener of {relpath!r} is not callable", "a function returning chunks")
            seen.add(relpath)
        meta = dict(metadata or {})
        stage = meta.get("stage")
        if stage is not None:
            _check_text("metadata.stage", stage, 64, "a short word such as 'archived'")
        tags = _check_tags(meta.get("tags"), "metadata.tags")
        metrics = _check_metrics(meta.get("metrics"))
        description = _check_text("metadata.description", meta.get("description") or "", 10_000, "text")
        model_description = _check_text(
            "metadata.model_description", meta.get("model_description") or "", 10_000, "text"
        )
        model_tags = _check_tags(meta.get("model_tags"), "metadata.model_tags")
        if self.exists(ref):
            raise ConflictError(f"local: {ref} already exists; restore refuses to overwrite it")
        incoming, records = self._write_incoming(sources)
        self._commit_version(
            name,
            int(version),
            incoming,
            records,
            stage=stage,
            tags=tags,
            metrics=metrics,
            description=description,
            event="restored",
            model_description=model_description,
            model_tags=model_tags,
            create_model=True,
        )
        return self._ref(name, version)

    def delete_model(self, name: str) -> None:
        """Remove an empty model (its version counter goes with it).

        Raises:
            NotFoundError: no such model.
            ConflictError: it still has versions.
        """
        check_model_name(name)
        with self._write() as conn:
            self._model_row(conn, name)
            live = [
                str(r["version"])
                for r in conn.execute(
                    "SELECT version FROM versions WHERE name = ? AND deleted_at IS NULL ORDER BY version", (name,)
                )
            ]
            if live:
                raise ConflictError(f"local: model {name!r} still has versions {', '.join(live)}; delete them first")
            for table in ("models", "versions", "files", "aliases", "consumers", "events"):
                conn.execute(f"DELETE FROM {table} WHERE name = ?", (name,))
        shutil.rmtree(self._inside_root(self.models_dir / name), ignore_errors=True)

    def _purge_model(self, name: str) -> None:
        """Remove a model and everything about it, ignoring blockers (only for resetting the demo)."""
        with self._write() as conn:
            for table in ("models", "versions", "files", "aliases", "consumers", "events"):
                conn.execute(f"DELETE FROM {table} WHERE name = ?", (name,))
        shutil.rmtree(self._inside_root(self.models_dir / name), ignore_errors=True)

    # -- aliases, tags, consumers --------------------------------------------------------------

    def set_alias(self, name: str, alias: str, version: str) -> str | None:
        """Point ``alias`` at ``version``; return the version it pointed at before (None if new).

        Moving ``production`` records ``promoted`` / ``superseded`` events and updates the stage
        (the new version becomes ``production``, the old one ``archived``); moving ``staging``
        records ``staged``, and ``rejected`` for the version it leaves unless that one was promoted.

        Raises:
            InputError: a name is not allowed.
            NotFoundError: the model or version does not exist (or was deleted).
            ConflictError: the version is deactivated.
        """
        check_model_name(name)
        check_alias(alias)
        check_local_version(version)
        with self._write() as conn:
            row = self._version_row(conn, name, version)
            if not row["active"]:
                raise ConflictError(f"local: {name}@{version} is deactivated; activate it before aliasing it")
            old = conn.execute("SELECT version FROM aliases WHERE name = ? AND alias = ?", (name, alias)).fetchone()
            previous = None if old is None else str(old["version"])
            if previous == version:
                return previous
            conn.execute(
                "INSERT INTO aliases (name, alias, version, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (name, alias) DO UPDATE SET version = excluded.version, updated_at = excluded.updated_at",
                (name, alias, int(version), time.time()),
            )
            if alias == PRODUCTION:
                self._event(conn, name, version, "promoted", f"alias production (was {previous or 'unset'})")
                conn.execute(
                    "UPDATE versions SET stage = ? WHERE name = ? AND version = ?", (PRODUCTION, name, version)
                )
                if previous is not None:
                    self._event(conn, name, previous, "superseded", f"alias production moved to {version}")
                    conn.execute(
                        "UPDATE versions SET stage = 'archived' WHERE name = ? AND version = ? AND stage = ?",
                        (name, int(previous), PRODUCTION),
                    )
            elif alias == STAGING:
                self._event(conn, name, version, "staged", f"alias staging (was {previous or 'unset'})")
                if previous is not None:
                    self._reject_unless_promoted(conn, name, previous, f"alias staging moved to {version}")
        return previous

    @classmethod
    def _reject_unless_promoted(cls, conn: sqlite3.Connection, name: str, version: str, detail: str) -> None:
        """Record ``rejected`` for a version leaving staging, unless it was promoted since it was staged."""
        last = conn.execute(
            "SELECT event FROM events WHERE name = ? AND version = ? AND event IN ('staged', 'promoted') "
            "ORDER BY id DESC LIMIT 1",
            (name, int(version)),
        ).fetchone()
        if last is None or last["event"] != "promoted":
            cls._event(conn, name, version, "rejected", detail)

    def remove_alias(self, name: str, alias: str) -> None:
        """Remove ``alias`` from model ``name``.

        Removing ``staging`` records ``rejected`` for its version unless that version was promoted.

        Raises:
            NotFoundError: the model or the alias does not exist.
        """
        check_model_name(name)
        check_alias(alias)
        with self._write() as conn:
            self._model_row(conn, name)
            row = conn.execute("SELECT version FROM aliases WHERE name = ? AND alias = ?", (name, alias)).fetchone()
            if row is None:
                raise NotFoundError(f"local: model {name!r} has no alias {alias!r}")
            conn.execute("DELETE FROM aliases WHERE name = ? AND alias = ?", (name, alias))
            if alias == STAGING:
                self._reject_unless_promoted(conn, name, str(row["version"]), "alias staging removed")

    def aliases(self, name: str) -> dict[str, str]:
        """Alias -> version of model ``name``."""
        check_model_name(name)
        with self._read() as conn:
            self._model_row(conn, name)
            rows = conn.execute("SELECT alias, version FROM aliases WHERE name = ? ORDER BY alias", (name,))
            return {r["alias"]: str(r["version"]) for r in rows}

    def set_tag(self, ref: ModelRef, key: str, value: str) -> None:
        """Set a tag on a version (or on the model when ``ref`` names no version)."""
        name, version = self._check_ref(ref, need_version=False)
        tag = _check_tags({key: value}, "tag")
        with self._write() as conn:
            if version:
                row = self._version_row(conn, name, version)
                tags = json.loads(row["tags"]) | tag
                conn.execute(
                    "UPDATE versions SET tags = ? WHERE name = ? AND version = ?",
                    (json.dumps(tags), name, int(version)),
                )
            else:
                row = self._model_row(conn, name)
                tags = json.loads(row["tags"]) | tag
                conn.execute("UPDATE models SET tags = ? WHERE name = ?", (json.dumps(tags), name))

    def add_consumer(self, ref: ModelRef, consumer: str, detail: str = "") -> None:
        """Declare that ``consumer`` (a service, a team, a job) uses this version; it blocks deletion."""
        name, version = self._check_ref(ref)
        if not isinstance(consumer, str) or not consumer.strip() or _CONTROL_RE.search(consumer) or len(consumer) > 128:
            raise InputError("consumer", f"{consumer!r} is not a valid consumer name", CONSUMER_ALLOWED)
        _check_text("detail", detail, 1000, "text of at most 1000 characters")
        with self._write() as conn:
            self._version_row(conn, name, version)
            conn.execute(
                "INSERT INTO consumers (name, version, consumer, detail, added_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (name, version, consumer) DO UPDATE SET detail = excluded.detail",
                (name, int(version), consumer, detail, time.time()),
            )

    def remove_consumer(self, ref: ModelRef, consumer: str) -> None:
        """Withdraw a declared consumer.

        Raises:
            NotFoundError: the version or that consumer of it does not exist.
        """
        name, version = self._check_ref(ref)
        with self._write() as conn:
            self._version_row(conn, name, version, live=False)
            deleted = conn.execute(
                "DELETE FROM consumers WHERE name = ? AND version = ? AND consumer = ?", (name, int(version), consumer)
            ).rowcount
            if deleted == 0:
                raise NotFoundError(f"local: {ref} has no declared consumer {consumer!r}")

    # -- lookups ---------------------------------------------------------------------------------

    def resolve(self, name: str, alias_or_version: str) -> ModelRef:
        """The version ``alias_or_version`` names (a version number or an alias).

        Raises:
            InputError: the name or the alias/version is malformed.
            NotFoundError: unknown model, alias or version, or a deleted version.
        """
        check_model_name(name)
        with self._read() as conn:
            if isinstance(alias_or_version, str) and VERSION_RE.match(alias_or_version):
                version = alias_or_version
            else:
                check_alias(alias_or_version, "alias_or_version")
                row = conn.execute(
                    "SELECT version FROM aliases WHERE name = ? AND alias = ?", (name, alias_or_version)
                ).fetchone()
                if row is None:
                    self._model_row(conn, name)
                    raise NotFoundError(f"local: model {name!r} has no alias {alias_or_version!r}")
                version = str(row["version"])
            self._version_row(conn, name, version)
        return self._ref(name, version)

    def is_active(self, ref: ModelRef) -> bool:
        """False once the version is deactivated.

        Raises:
            NotFoundError: the version does not exist or was deleted.
        """
        name, version = self._check_ref(ref)
        with self._read() as conn:
            return bool(self._version_row(conn, name, version)["active"])

    def exists(self, ref: ModelRef) -> bool:
        """True while the model (or version) is in the catalogue and not deleted."""
        name, version = self._check_ref(ref, need_version=False)
        with self._read() as conn:
            if not version:
                return conn.execute("SELECT 1 FROM models WHERE name = ?", (name,)).fetchone() is not None
            row = conn.execute(
                "SELECT deleted_at FROM versions WHERE name = ? AND version = ?", (name, int(version))
            ).fetchone()
            return row is not None and row["deleted_at"] is None

    def file_records(self, ref: ModelRef) -> list[LocalFile]:
        """Every file of the version with its size and SHA-256, sorted by path (deactivated versions too).

        Raises:
            NotFoundError: the version does not exist or was deleted.
        """
        name, version = self._check_ref(ref)
        with self._read() as conn:
            self._version_row(conn, name, version)
            rows = conn.execute(
                "SELECT path, size, sha256 FROM files WHERE name = ? AND version = ? ORDER BY path",
                (name, int(version)),
            )
            return [LocalFile(path=r["path"], size=r["size"], sha256=r["sha256"]) for r in rows]

    def files(self, ref: ModelRef) -> list[tuple[str, int]]:
        """(relative path, size) of every file of the version, sorted by path."""
        return [(f.path, f.size) for f in self.file_records(ref)]

    def file_path(self, ref: ModelRef, relpath: str) -> Path:
        """Where one file of the version is on disk.

        Raises:
            InputError: the path is not a safe relative path.
            NotFoundError: the version or the file does not exist.
        """
        name, version = self._check_ref(ref)
        check_relpath(relpath, "path")
        if relpath not in {f.path for f in self.file_records(ref)}:
            raise NotFoundError(f"local: {ref} has no file {relpath!r}")
        return self._inside_root(self._version_dir(name, version) / relpath)

    # -- Registry port ---------------------------------------------------------------------------

    def _version_infos(self, conn: sqlite3.Connection, name: str) -> list[VersionInfo]:
        aliases: dict[int, list[str]] = {}
        for r in conn.execute("SELECT alias, version FROM aliases WHERE name = ? ORDER BY alias", (name,)):
            aliases.setdefault(r["version"], []).append(r["alias"])
        sizes = {
            r["version"]: r["total"]
            for r in conn.execute(
                "SELECT version, SUM(size) AS total FROM files WHERE name = ? GROUP BY version", (name,)
            )
        }
        rows = conn.execute(
            "SELECT * FROM versions WHERE name = ? AND deleted_at IS NULL ORDER BY version", (name,)
        ).fetchall()
        return [
            VersionInfo(
                version=str(r["version"]),
                created_at=_ts(r["created_at"]),
                stage=r["stage"],
                aliases=aliases.get(r["version"], []),
                tags=json.loads(r["tags"]),
                size_bytes=sizes.get(r["version"], 0),
                active=bool(r["active"]),
            )
            for r in rows
        ]

    def describe(self, ref: ModelRef) -> Dossier:
        """The dossier's facts for a version (or the model when ``ref`` names no version).

        Raises:
            NotFoundError: the model or version does not exist.
        """
        name, version = self._check_ref(ref, need_version=False)
        with self._read() as conn:
            model = self._model_row(conn, name)
            versions = self._version_infos(conn, name)
            metadata: dict[str, Any] = {
                "model_description": model["description"],
                "model_tags": json.loads(model["tags"]),
                "model_created_at": _ts(model["created_at"]),
            }
            metrics: dict[str, Any] = {}
            known_issues: list[str] = []
            deployed_at: list[str] = []
            if version:
                row = self._version_row(conn, name, version)
                metrics = json.loads(row["metrics"])
                metadata |= {
                    "version": version,
                    "stage": row["stage"],
                    "description": row["description"],
                    "tags": json.loads(row["tags"]),
                    "metrics": metrics,
                    "created_at": _ts(row["created_at"]),
                    "active": bool(row["active"]),
                }
                if not row["active"]:
                    known_issues.append(f"{ref} is deactivated: the gateway answers 410 Gone to requests for it")
            for info in versions:
                if version and info.version != version:
                    continue
                for alias in info.aliases:
                    where = f"gateway alias {name}@{alias}"
                    if self.gateway_url:
                        where += f" ({self.gateway_url}/v1/models/{name}@{alias}/predict)"
                    deployed_at.append(where)
        if version:
            records = self.file_records(ref)
            metadata["files"] = [r.model_dump() for r in records]
        return Dossier(
            reference=ref,
            description=model["description"],
            versions=versions,
            metrics=metrics,
            metadata=metadata,
            deployed_at=deployed_at,
            dependents=self.dependents(ref),
            blockers=self.deletion_blockers(ref) if version else [],
            known_issues=known_issues,
            capabilities=CAPABILITIES,
        )

    def dependents(self, ref: ModelRef) -> list[Dependent]:
        """Aliases and declared consumers that point at the version (or at any version of the model)."""
        name, version = self._check_ref(ref, need_version=False)
        where, args = ("name = ?", (name,)) if not version else ("name = ? AND version = ?", (name, int(version)))
        with self._read() as conn:
            alias_rows = conn.execute(
                f"SELECT alias, version FROM aliases WHERE {where} ORDER BY alias", args
            ).fetchall()
            consumer_rows = conn.execute(
                f"SELECT consumer, version, detail FROM consumers WHERE {where} ORDER BY consumer", args
            ).fetchall()
        result = [
            Dependent(
                kind="alias",
                name=r["alias"],
                detail=f"{name}@{r['alias']} -> version {r['version']}",
                movable=r["alias"] in (PRODUCTION, STAGING),
            )
            for r in alias_rows
        ]
        result += [
            Dependent(
                kind="consumer",
                name=r["consumer"],
                detail=(r["detail"] or f"declared consumer of {name}@{r['version']}"),
                movable=False,
            )
            for r in consumer_rows
        ]
        return result

    def deletion_blockers(self, ref: ModelRef) -> list[DeletionBlocker]:
        """Aliases and declared consumers of the version (empty for a version that is gone)."""
        name, version = self._check_ref(ref)
        blockers: list[DeletionBlocker] = []
        for dep in self.dependents(ref):
            if dep.kind == "alias":
                blockers.append(
                    DeletionBlocker(
                        code="alias",
                        message=f"alias {dep.name!r} points at {name}@{version}",
                        remedy="move the alias (the cutover does)",
                        cleared_by_protocol=dep.movable,
                    )
                )
            else:
                blockers.append(
                    DeletionBlocker(
                        code="consumer",
                        message=f"consumer {dep.name!r} declared that it uses {name}@{version}",
                        remedy="move the consumer off it, then withdraw it "
                        f"(`retire local consumer remove {name}@{version} {dep.name}`)",
                    )
                )
        return blockers

    def export(self, ref: ModelRef) -> list[ExportItem]:
        """One lazily opened stream per file, through the gateway when one is configured, else from disk."""
        name, version = self._check_ref(ref)
        records = self.file_records(ref)
        if self.client is not None and self.gateway_url:
            base = f"{self.gateway_url}/v1/models/{name}/versions/{version}/files/"
            return [
                http_export_item(
                    self.client, r.path, base + quote(r.path), platform=PLATFORM, size=r.size, sha256=r.sha256
                )
                for r in records
            ]
        folder = self._version_dir(name, version)

        def opener(path: Path) -> Callable[[], Iterator[bytes]]:
            return lambda: _read_chunks(path)

        return [
            ExportItem(path=r.path, open=opener(self._inside_root(folder / r.path)), size=r.size, sha256=r.sha256)
            for r in records
        ]

    def set_active(self, ref: ModelRef, active: bool) -> None:
        """Deactivate (the gateway answers 410 Gone) or reactivate a version. Idempotent.

        Raises:
            NotFoundError: the version does not exist or was deleted.
        """
        name, version = self._check_ref(ref)
        with self._write() as conn:
            row = self._version_row(conn, name, version)
            if bool(row["active"]) == bool(active):
                return
            conn.execute(
                "UPDATE versions SET active = ? WHERE name = ? AND version = ?", (int(bool(active)), name, int(version))
            )
            self._event(conn, name, version, "reactivated" if active else "deactivated")

    def delete(self, ref: ModelRef) -> DeletionReceipt:
        """Delete the version's files and mark it deleted; its number is never reused.

        Raises:
            DeletionBlockedError: an alias or a declared consumer still points at it; nothing deleted.
            NotFoundError: it was already gone.
        """
        name, version = self._check_ref(ref)
        with self._read() as conn:
            self._version_row(conn, name, version)
        blockers = self.deletion_blockers(ref)
        if blockers:
            raise DeletionBlockedError(str(ref), [f"{b.message} (remedy: {b.remedy})" for b in blockers])
        folder = self._version_dir(name, version)
        with self._write() as conn:
            self._version_row(conn, name, version)
            # Re-checked under the write lock: an alias set between the check above and here blocks too.
            if conn.execute(
                "SELECT 1 FROM aliases WHERE name = ? AND version = ? UNION ALL "
                "SELECT 1 FROM consumers WHERE name = ? AND version = ?",
                (name, int(version), name, int(version)),
            ).fetchone():
                raise DeletionBlockedError(str(ref), [b.message for b in self.deletion_blockers(ref)])
            removed = [
                f"models/{name}/{version}/{r['path']}"
                for r in conn.execute(
                    "SELECT path FROM files WHERE name = ? AND version = ? ORDER BY path", (name, int(version))
                )
            ]
            # The files go first: a crash after this leaves a version that still exists and can be deleted again.
            trash: Path | None = None
            if folder.exists():
                trash = self._inside_root(self.root / "incoming" / f"deleting-{uuid.uuid4().hex}")
                trash.parent.mkdir(parents=True, exist_ok=True)
                folder.rename(trash)
            conn.execute(
                "UPDATE versions SET deleted_at = ?, active = 0 WHERE name = ? AND version = ?",
                (time.time(), name, int(version)),
            )
            self._event(conn, name, version, "deleted")
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
        return DeletionReceipt(
            reference=ref,
            removed=[*removed, f"catalogue entry {ref}"],
            verified_gone=not self.exists(ref),
            platform_response={"root": str(self.root), "files_removed": len(removed)},
        )

    # -- Catalog port ----------------------------------------------------------------------------

    def list_versions(self) -> Iterator[CatalogEntry]:
        """Every live version of every model, by model name then version.

        ``status`` is the version's last lifecycle event that matters to retention (promoted,
        superseded, rejected, failed) since it was created or restored; ``active`` says whether
        it is deactivated.

        Reads one snapshot over one connection: five queries ordered by (model, version) whose rows
        are merged as the versions are yielded, so memory does not grow with the catalogue.
        """
        with self._read() as conn:
            conn.row_factory = None
            conn.execute("BEGIN")
            try:
                yield from self._catalog_entries(conn)
            finally:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")

    def _catalog_entries(self, conn: sqlite3.Connection) -> Iterator[CatalogEntry]:
        statuses = (*_STATUS_EVENTS, _RESTORED)
        placeholders = ", ".join("?" for _ in statuses)
        versions = conn.execute(
            "SELECT v.name, v.version, v.created_at, v.stage, v.tags, v.active FROM versions AS v "
            "JOIN models AS m ON m.name = v.name WHERE v.deleted_at IS NULL ORDER BY v.name, v.version"
        )
        sizes = _ByVersion(
            conn.execute("SELECT name, version, SUM(size) FROM files GROUP BY name, version ORDER BY name, version")
        )
        aliases = _ByVersion(conn.execute("SELECT name, version, alias FROM aliases ORDER BY name, version, alias"))
        consumers = _ByVersion(
            conn.execute("SELECT name, version, consumer, detail FROM consumers ORDER BY name, version, consumer")
        )
        events = _ByVersion(
            conn.execute(
                f"SELECT name, version, event, at FROM events WHERE event IN ({placeholders}) "
                "ORDER BY name, version, id",
                statuses,
            )
        )
        for name, version, created_at, stage, tags, active in versions:
            key = (name, version)
            size = sizes.take(key)
            last = None
            for event in events.take(key):
                last = None if event[2] == _RESTORED else event
            yield CatalogEntry(
                reference=self._ref(name, version),
                created_at=_ts(created_at),
                stage=stage,
                status=last[2] if last else None,
                status_changed_at=_ts(last[3]) if last else None,
                aliases=[r[2] for r in aliases.take(key)],
                tags=json.loads(tags),
                dependents=[
                    Dependent(
                        kind="consumer",
                        name=consumer,
                        detail=detail or f"declared consumer of {name}@{version}",
                        movable=False,
                    )
                    for _, _, consumer, detail in consumers.take(key)
                ],
                size_bytes=size[0][2] if size else 0,
                active=bool(active),
            )

    # -- demo ------------------------------------------------------------------------------------

    def seed_demo(
        self, total_bytes: int = 64 * 1024**2, name: str = "churn-model", reset: bool = False
    ) -> tuple[ModelRef, ModelRef]:
        """Create a realistic pair: version 1 in production and version 2, its replacement, in staging.

        Each version has weights.bin (most of the bytes), adapter.safetensors, config.json and
        metadata.json, about ``total_bytes`` in all, with deterministic pseudo-random content.

        Raises:
            InputError: the size or the name is not allowed.
            ConflictError: the model exists and ``reset`` is False.
        """
        check_model_name(name)
        if isinstance(total_bytes, bool) or not isinstance(total_bytes, int) or not 16 * 1024 <= total_bytes <= 1 << 40:
            raise InputError("total_bytes", f"{total_bytes!r} is out of range", "an integer from 16 KiB to 1 TiB")
        if self.exists(ModelRef(platform=PLATFORM, name=name)):
            if not reset:
                raise ConflictError(f"local: model {name!r} already exists (use reset to recreate the demo)")
            self._purge_model(name)
        self.create_model(
            name,
            description="Predicts which subscribers will cancel within 30 days (gradient-boosted trees + LoRA head).",
            tags={"owner": "ml-platform", "team": "growth", "data-classification": "internal"},
        )
        old = self._add_demo_version(
            name,
            1,
            total_bytes,
            stage="production",
            metrics={"auc": 0.861, "accuracy": 0.912, "f1": 0.744, "p95_latency_ms": 41.0},
            tags={"framework": "pytorch", "training_data": "subscribers-2025q4", "git_commit": "3f9c2e1"},
            description="Trained on 2025 Q4 subscriber data.",
        )
        self.set_alias(name, PRODUCTION, old.version or "1")
        new = self._add_demo_version(
            name,
            2,
            total_bytes,
            stage="staging",
            metrics={"auc": 0.884, "accuracy": 0.925, "f1": 0.771, "p95_latency_ms": 38.0},
            tags={"framework": "pytorch", "training_data": "subscribers-2026q1", "git_commit": "a71b0d4"},
            description="Retrained on 2026 Q1 subscriber data; replaces version 1.",
        )
        return old, new

    def _add_demo_version(
        self,
        name: str,
        seed: int,
        total_bytes: int,
        *,
        stage: str,
        metrics: dict[str, float],
        tags: dict[str, str],
        description: str,
    ) -> ModelRef:
        config = json.dumps(
            {
                "architecture": "ChurnNet",
                "hidden_size": 256,
                "num_layers": 4,
                "features": ["tenure_days", "plan", "monthly_spend", "support_tickets", "last_login_days"],
                "threshold": 0.5,
                "seed": seed,
            },
            indent=2,
        ).encode()
        metadata = json.dumps(
            {"name": name, "description": description, "metrics": metrics, "tags": tags}, indent=2, sort_keys=True
        ).encode()
        adapter_size = max(1024, total_bytes // 16)
        weights_size = max(1024, total_bytes - adapter_size - len(config) - len(metadata))
        files: list[tuple[str, Callable[[], Iterator[bytes]]]] = [
            ("weights.bin", lambda: _pseudo_random(weights_size, seed * 2)),
            ("adapter.safetensors", lambda: _safetensors(adapter_size, seed * 2 + 1)),
            ("config.json", lambda: iter([config])),
            ("metadata.json", lambda: iter([metadata])),
        ]
        incoming, records = self._write_incoming(files)
        version = self._commit_version(
            name,
            None,
            incoming,
            records,
            stage=stage,
            tags=tags,
            metrics=metrics,
            description=description,
            event="created",
        )
        return self._ref(name, version)


def _pseudo_random(size: int, seed: int) -> Iterator[bytes]:
    """``size`` deterministic bytes in 1 MiB blocks: one random block, each copy stamped with its index."""
    block = random.Random(seed).randbytes(CHUNK_SIZE)  # noqa: S311 - test data, not security
    index = 0
    remaining = size
    while remaining > 0:
        chunk = struct.pack("<QQ", seed, index) + block[16:]
        yield chunk[:remaining]
        remaining -= len(chunk)
        index += 1


def _safetensors(size: int, seed: int) -> Iterator[bytes]:
    """A valid safetensors file of about ``size`` bytes holding one float32 tensor."""
    count = max(1, (size - 200) // 4)
    header = json.dumps(
        {"__metadata__": {"format": "pt"}, "lora_A": {"dtype": "F32", "shape": [count], "data_offsets": [0, count * 4]}}
    ).encode()
    header += b" " * (-len(header) % 8)
    yield struct.pack("<Q", len(header)) + header
    yield from _pseudo_random(count * 4, seed)


# ---------------------------------------------------------------------------------------------


GOLDEN_INPUTS: list[dict[str, Any]] = [
    {"tenure_days": 30, "plan": "basic", "monthly_spend": 9.99, "support_tickets": 0, "last_login_days": 2},
    {"tenure_days": 400, "plan": "pro", "monthly_spend": 49.0, "support_tickets": 3, "last_login_days": 20},
    {"tenure_days": 5, "plan": "trial", "monthly_spend": 0.0, "support_tickets": 1, "last_login_days": 4},
]


class LocalServing:
    """Serving through the local gateway: aliases are the routing table.

    Args:
        registry: the local registry (its aliases route the gateway's requests).
        client: HTTP client for smoke tests against the gateway.
        gateway_url: the gateway's base URL.
        max_latency_ms: a smoke-test request slower than this counts as failed.
        close_client: close ``client`` in ``close()`` (when this object's builder made it).
    """

    name = PLATFORM

    def __init__(
        self,
        registry: LocalRegistry,
        client: httpx.Client,
        gateway_url: str,
        *,
        max_latency_ms: float = 1000.0,
        close_client: bool = False,
    ) -> None:
        self.registry = registry
        self.client = client
        self.gateway_url = gateway_url.rstrip("/")
        self.max_latency_ms = max_latency_ms
        self._close_client = close_client

    def close(self) -> None:
        """Close the HTTP client if this object owns it."""
        if self._close_client:
            self.client.close()

    def preflight(self, request: RetirementRequest) -> list[str]:
        """The gateway routes a model by its own aliases: the replacement must be a version of the same model."""
        return same_model_refusals(request, "the local gateway routes each model by its own aliases")

    def deploy_staging(self, ref: ModelRef) -> None:
        """Point the ``staging`` alias at ``ref``."""
        name, version = self.registry._check_ref(ref)
        self.registry.set_alias(name, STAGING, version)

    def smoke_test(self, ref: ModelRef, requests: int = 5) -> SmokeResult:
        """Send golden predict requests to ``<name>@staging``; each must succeed and be answered by ``ref``."""
        name, version = self.registry._check_ref(ref)
        if isinstance(requests, bool) or not isinstance(requests, int) or not 1 <= requests <= 1000:
            raise InputError("requests", f"{requests!r} is out of range", "an integer from 1 to 1000")
        url = f"{self.gateway_url}/v1/models/{name}@{STAGING}/predict"
        latencies: list[float] = []
        problems: list[str] = []
        errors = 0
        for i in range(requests):
            started = time.perf_counter()
            try:
                response = self.client.post(url, json={"inputs": GOLDEN_INPUTS[i % len(GOLDEN_INPUTS)]})
            except httpx.TransportError as exc:
                errors += 1
                problems.append(f"request {i + 1}: gateway unreachable at {self.gateway_url} ({type(exc).__name__})")
                continue
            elapsed = (time.perf_counter() - started) * 1000
            latencies.append(elapsed)
            if response.status_code != 200:
                errors += 1
                problems.append(f"request {i + 1}: HTTP {response.status_code} {response.text[:200]}")
                continue
            answered = response.json().get("version")
            if answered != version:
                errors += 1
                problems.append(f"request {i + 1}: answered by version {answered}, not {version}")
            elif elapsed > self.max_latency_ms:
                errors += 1
                problems.append(f"request {i + 1}: {elapsed:.0f} ms, above {self.max_latency_ms:.0f} ms")
        p95 = _p95(latencies)
        return SmokeResult(
            reference=ref,
            requests=requests,
            errors=errors,
            p95_latency_ms=p95,
            ok=errors == 0,
            detail="; ".join(problems[:5]) if problems else f"{requests} golden requests answered by {ref}",
        )

    def production(self, model: ModelRef) -> ModelRef | None:
        """The version the ``production`` alias points at, or None."""
        name, _ = self.registry._check_ref(model, need_version=False)
        version = self.registry.aliases(name).get(PRODUCTION)
        return None if version is None else self.registry._ref(name, version)

    def switch(self, to: ModelRef, *, replacing: ModelRef | None = None) -> ModelRef | None:
        """Point ``production`` at ``to``; return the version it pointed at before (``to`` itself if unchanged)."""
        name, version = self.registry._check_ref(to)
        previous = self.registry.set_alias(name, PRODUCTION, version)
        return None if previous is None else self.registry._ref(name, previous)


class _ByVersion:
    """The rows of one query ordered by (model name, version), taken forward one version at a time."""

    def __init__(self, rows: Iterator[tuple[Any, ...]]) -> None:
        self._rows = rows
        self._next: tuple[Any, ...] | None = next(rows, None)

    def take(self, key: tuple[str, int]) -> list[tuple[Any, ...]]:
        """The rows of version ``key``; rows of earlier (deleted or unlisted) versions are skipped."""
        found: list[tuple[Any, ...]] = []
        row = self._next
        while row is not None and (row[0], row[1]) <= key:
            if row[0] == key[0] and row[1] == key[1]:
                found.append(row)
            row = next(self._rows, None)
        self._next = row
        return found


def _p95(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, -(-95 * len(ordered) // 100) - 1)]


def build(settings: RetireSettings) -> Platform:
    """The local platform: registry on disk, serving and traffic through the gateway at ``settings.gateway_url``."""
    from retirement.traffic.local import LocalTrafficSource

    client = httpx.Client(timeout=httpx.Timeout(30.0, read=600.0))
    registry = LocalRegistry(settings.local_dir, client=client, gateway_url=settings.gateway_url)
    serving = LocalServing(registry, client, settings.gateway_url, close_client=True)
    return Platform(name=PLATFORM, registry=registry, serving=serving, traffic=LocalTrafficSource(settings.local_dir))


__all__ = [
    "CAPABILITIES",
    "GOLDEN_INPUTS",
    "LocalFile",
    "LocalRegistry",
    "LocalServing",
    "build",
    "check_alias",
    "check_local_version",
    "check_model_name",
    "check_relpath",
]
