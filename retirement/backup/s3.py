"""The S3 backup store: objects in an S3-compatible bucket under Object Lock, uploaded in parts hashed in one pass."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from pydantic import ValidationError

from retirement.backup.base import ProgressCallback
from retirement.backup.filesystem import DOSSIER, MANIFEST, MODEL_DIR, READ_CHUNK, RESERVED, _Progress, check_item_path
from retirement.backup.stream import safe_url
from retirement.errors import (
    BackupError,
    BackupVerifyError,
    ConfigError,
    ConflictError,
    InputError,
    NotFoundError,
    RetirementError,
)
from retirement.models import BackupManifest, ExportItem, ManifestFile, ModelRef, VerifyReport, utcnow
from retirement.redact import redact, redact_text, remember
from retirement.settings import S3BackupSettings

logger = logging.getLogger(__name__)

MIB = 1 << 20
DEFAULT_PART_SIZE = 8 * MIB
MIN_PART_SIZE = 5 * MIB
"""S3's smallest part (every part of a multipart upload but the last)."""
MAX_PARTS = 10_000
"""S3's largest number of parts in one multipart upload."""
LOCK_MODES = ("COMPLIANCE", "GOVERNANCE")
MAX_MANIFEST_BYTES = 64 * MIB
DELETE_BATCH = 1000

BACKUP_URL_ALLOWED = (
    "s3://BUCKET[/PREFIX] or file:///ABSOLUTE/PATH; unset: the filesystem store under RETIRE_HOME/backups"
)
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_BUCKET_RULE = "3-63 lowercase letters, digits, '.' and '-', starting and ending with a letter or digit"
_CREDENTIAL_CODES = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "TokenRefreshRequired"}
)
_CREDENTIAL_HINT = "check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN"
# botocore logs whole requests at DEBUG (`retire -v`), session-token header included: scrubbed before any handler.
_BOTOCORE_LOGGERS = (
    "botocore.auth",
    "botocore.awsrequest",
    "botocore.endpoint",
    "botocore.hooks",
    "botocore.httpsession",
    "botocore.parsers",
    "botocore.retryhandler",
    "botocore.retries.standard",
)


def _import_boto3() -> tuple[Any, Any]:
    """boto3 and botocore's Config, imported on first use: they come with the `s3` extra."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:
        raise ImportError(
            "the S3 backup store (RETIRE_BACKUP_URL=s3://...) needs boto3, which is not installed: "
            "run `pip install 'model-retirement[s3]'`"
        ) from exc
    return boto3, Config


def _botocore_errors() -> tuple[type[Exception], type[Exception]]:
    """botocore's ClientError (the service answered an error) and BotoCoreError (no usable answer)."""
    _import_boto3()
    from botocore.exceptions import BotoCoreError, ClientError

    return ClientError, BotoCoreError


class _RedactRecord(logging.Filter):
    """Replaces a botocore log record's text by its redacted form (secrets by value, credential headers by name).

    A record longer than LOG_LIMIT (a request carrying a part's bytes) keeps only its format string: scrubbing
    megabytes per part would cost more than the upload.
    """

    LOG_LIMIT = 16 * 1024

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # a record whose arguments do not format is left to logging's own error path
            return True
        if len(text) > self.LOG_LIMIT:
            text = f"{str(record.msg)[:200]} [{len(text)} characters with the request's data, not logged]"
        record.msg, record.args = redact_text(text), None
        return True


def _scrub_botocore_logs() -> None:
    for name in _BOTOCORE_LOGGERS:
        target = logging.getLogger(name)
        if not any(isinstance(f, _RedactRecord) for f in target.filters):
            target.addFilter(_RedactRecord())


# --- locations and RETIRE_BACKUP_URL ------------------------------------------------------------


@dataclass(frozen=True)
class BackupURL:
    """Where RETIRE_BACKUP_URL puts backups: a bucket and prefix (``s3``) or a folder (``file``)."""

    scheme: str
    bucket: str = ""
    prefix: str = ""
    path: Path | None = None


def _url_error(problem: str) -> ConfigError:
    return ConfigError(f"RETIRE_BACKUP_URL: {problem} (allowed: {BACKUP_URL_ALLOWED})")


def check_bucket(bucket: str, field: str = "bucket") -> str:
    """``bucket`` if it is a valid S3 bucket name.

    Raises:
        InputError: it is not.
    """
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise InputError(field, f"{bucket!r} is not a valid S3 bucket name", _BUCKET_RULE)
    return bucket


def _check_prefix(prefix: str, field: str) -> str:
    prefix = prefix.strip("/")
    if not prefix:
        return ""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in prefix):
        raise InputError(field, "contains a control character", "printable text")
    if any(part in ("", ".", "..") for part in prefix.split("/")):
        raise InputError(field, f"{prefix!r} has an empty, '.' or '..' part", "'/'-separated names")
    return prefix


def parse_backup_url(value: str | None) -> BackupURL | None:
    """RETIRE_BACKUP_URL, checked: None when unset or blank.

    Raises:
        ConfigError: it is neither ``s3://BUCKET[/PREFIX]`` nor ``file:///ABSOLUTE/PATH``; the message names
            the variable and what is allowed, never a credential it may carry.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    shown = repr(redact_text(text))
    parts = urlsplit(text)
    if "://" not in text or not parts.scheme:
        raise _url_error(f"{shown} is not a URL (no scheme)")
    scheme = parts.scheme.lower()
    if parts.username is not None or parts.password is not None:
        raise _url_error(
            "carries credentials in the URL; give them as AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY instead"
        )
    if parts.query or parts.fragment:
        raise _url_error(f"{shown} has a query or fragment")
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise _url_error(f"{shown} names a host ({parts.netloc!r}); a file URL is file:///ABSOLUTE/PATH")
        if not parts.path.startswith("/") or parts.path == "/":
            raise _url_error(f"{shown} has no absolute folder")
        return BackupURL(scheme="file", path=Path(parts.path))
    if scheme != "s3":
        raise _url_error(f"{shown} has scheme {parts.scheme!r}")
    bucket = parts.netloc
    if ":" in bucket:
        raise _url_error(f"{shown}: {bucket!r} is not a bucket; an endpoint goes in RETIRE_BACKUP_S3_ENDPOINT_URL")
    try:
        check_bucket(bucket)
        prefix = _check_prefix(parts.path, "prefix")
    except InputError as exc:
        raise _url_error(f"{shown}: {exc.field} {exc.problem}; {exc.allowed}") from None
    return BackupURL(scheme="s3", bucket=bucket, prefix=prefix)


def split_location(location: str, field: str = "location") -> tuple[str, str]:
    """(bucket, key) of a backup location ``s3://BUCKET/KEY``.

    Raises:
        InputError: it is not such a location.
    """
    allowed = "s3://BUCKET/KEY, as printed by `retire backup create` or `retire backup list`"
    parts = urlsplit(location.strip())
    if parts.scheme.lower() != "s3" or parts.query or parts.fragment or parts.username or parts.password:
        raise InputError(field, f"{redact_text(location)!r} is not an S3 backup location", allowed)
    bucket = check_bucket(parts.netloc, field)
    key = _check_prefix(parts.path, field)
    if not key:
        raise InputError(field, f"{location!r} names a bucket, not a backup", allowed)
    return bucket, key


def _component(field: str, value: str) -> str:
    """One key component of a backup location: percent-encoded, never '.', '..' or empty (as on the filesystem)."""
    if not value or value in (".", ".."):
        raise InputError(field, f"{value!r} cannot name a backup", "a non-empty name other than '.' and '..'")
    return quote(value, safe="")


def _b64_sha256(data: bytes | bytearray | memoryview) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode("ascii")


class _UnreadableManifest(BackupError):
    """The manifest object is there but is not a BackupManifest: verify reports it, listing skips it."""


def _whole_second_after(when: datetime) -> datetime:
    """``when`` rounded up to a whole second, in UTC: what S3 keeps of a retain-until date."""
    when = when.astimezone(UTC)
    return when if when.microsecond == 0 else when.replace(microsecond=0) + timedelta(seconds=1)


# --- the store ----------------------------------------------------------------------------------


class S3BackupStore:
    """Backups as write-once objects in an S3-compatible bucket with Object Lock.

    Layout: ``<prefix>/<platform>/<model>/<version or _model>/<UTC timestamp>/`` holding the files at
    their own relative paths, ``manifest.json`` (a BackupManifest) and ``dossier.json``, exactly as the
    filesystem store lays out its folders. A location is ``s3://<bucket>/<that key>``.

    Each file is streamed once: every chunk is hashed (SHA-256 of the whole file, for the manifest) and
    copied into a part buffer that is uploaded when full, with the part's own SHA-256 for S3 to check;
    memory holds one part per worker whatever the file size. Files go up unlocked, so a failed backup
    leaves nothing; once every file is in, each object version is put under Object Lock until
    retain-until, and the manifest is written last, locked from its first byte: a backup exists only
    when its manifest does, and by then nothing in it can be deleted or overwritten before
    retain-until (COMPLIANCE: by no one; GOVERNANCE: only with s3:BypassGovernanceRetention).

    Args:
        client: a boto3 S3 client (thread-safe; its endpoint, credentials and retries apply).
        bucket: the bucket; it must have Object Lock enabled before anything is written.
        prefix: the key prefix every backup lives under ('' for the bucket's root).
        lock_mode: COMPLIANCE (default) or GOVERNANCE.
        workers: files uploaded (and verified) at the same time.
        part_size: bytes per part (at least 5 MiB); a file too large for 10,000 such parts uses larger ones.
        clock: the time that names new backups (injected by tests).
    """

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str = "",
        *,
        lock_mode: str = "COMPLIANCE",
        workers: int = 2,
        part_size: int = DEFAULT_PART_SIZE,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        if lock_mode not in LOCK_MODES:
            raise InputError("lock_mode", f"is {lock_mode!r}", " or ".join(LOCK_MODES))
        if workers < 1:
            raise InputError("workers", f"is {workers}", "1 or more")
        if part_size < MIN_PART_SIZE:
            raise InputError("part_size", f"is {part_size} bytes", f"at least {MIN_PART_SIZE} (5 MiB, S3's minimum)")
        self.client = client
        self.bucket = check_bucket(bucket)
        self.prefix = _check_prefix(prefix, "prefix")
        self.lock_mode = lock_mode
        self.workers = workers
        self.part_size = part_size
        self._clock = clock
        self._client_error, self._core_error = _botocore_errors()
        self._lock_checked = False
        _scrub_botocore_logs()

    @classmethod
    def from_settings(
        cls,
        bucket: str,
        prefix: str = "",
        settings: S3BackupSettings | None = None,
        *,
        workers: int = 2,
    ) -> S3BackupStore:
        """A store on ``bucket`` reached with the AWS variables (S3BackupSettings).

        Raises:
            ImportError: boto3 is not installed (the `s3` extra).
            ConfigError: the endpoint is not an http(s) URL, or only half of a key pair is set.
        """
        s = settings or S3BackupSettings()
        remember(s.access_key_id, s.secret_access_key, s.session_token)
        if (s.access_key_id is None) != (s.secret_access_key is None):
            raise ConfigError(
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY: only one of them is set; set both, or neither "
                "(boto3's credential chain: profile, instance or task role)"
            )
        endpoint = s.endpoint_url
        if endpoint is not None:
            parts = urlsplit(endpoint)
            if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
                raise ConfigError(
                    f"RETIRE_BACKUP_S3_ENDPOINT_URL: {safe_url(endpoint)!r} is not usable "
                    "(allowed: http(s)://HOST[:PORT], without credentials)"
                )
        boto3, config_class = _import_boto3()
        session = boto3.session.Session(
            aws_access_key_id=s.access_key_id.get_secret_value() if s.access_key_id else None,
            aws_secret_access_key=s.secret_access_key.get_secret_value() if s.secret_access_key else None,
            aws_session_token=s.session_token.get_secret_value() if s.session_token else None,
            region_name=s.region,
        )
        config = config_class(
            retries={"max_attempts": 5, "mode": "standard"},
            connect_timeout=10,
            read_timeout=120,
            max_pool_connections=max(10, 2 * workers),
            # Every upload carries the SHA-256 this store computed; botocore need not read bodies again.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            s3={"addressing_style": "path"} if endpoint else {},
        )
        client = session.client("s3", endpoint_url=endpoint, config=config)
        return cls(
            client,
            bucket,
            prefix,
            lock_mode=s.lock_mode,
            workers=workers,
            part_size=s.part_size_mib * MIB,
        )

    # -- locations ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The store itself, as RETIRE_BACKUP_URL names it."""
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def _under_prefix(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def _ref_parts(self, ref: ModelRef) -> tuple[str, ...]:
        version = MODEL_DIR if ref.version is None else _component("version", ref.version)
        return _component("platform", ref.platform), _component("name", ref.name), version

    def location_for(self, ref: ModelRef, created_at: datetime) -> str:
        """The location of a backup of ``ref`` taken at ``created_at``: ``s3://bucket/prefix/.../<timestamp>``.

        Raises:
            InputError: a part of the reference cannot name a backup ('.', '..', empty).
        """
        stamp = created_at.astimezone(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        return f"s3://{self.bucket}/{self._under_prefix(*self._ref_parts(ref), stamp)}"

    def _key(self, location: str) -> str:
        bucket, key = split_location(location)
        if bucket != self.bucket:
            raise InputError("location", f"{location!r} is in bucket {bucket!r}", f"a backup in s3://{self.bucket}")
        return key

    # -- errors ---------------------------------------------------------------------------

    def _error(self, exc: Exception, what: str) -> RetirementError:
        """One of the library's errors for a botocore failure: never the request, never a credential."""
        if isinstance(exc, self._client_error):
            response: dict[str, Any] = getattr(exc, "response", {}) or {}
            error = response.get("Error", {})
            code = str(error.get("Code", ""))
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            message = redact_text(str(error.get("Message", "")))[:300]
            if code in ("NoSuchKey", "404", "NotFound"):
                return NotFoundError(f"{what}: not found")
            if code == "NoSuchBucket":
                return ConfigError(f"{what}: the bucket {self.bucket!r} does not exist (RETIRE_BACKUP_URL)")
            if code in _CREDENTIAL_CODES:
                return ConfigError(f"{what}: S3 refused the credentials ({code}); {_CREDENTIAL_HINT}")
            if code in ("PreconditionFailed", "ConditionalRequestConflict"):
                return ConflictError(f"{what}: it already exists; backups are write-once")
            return BackupError(f"{what}: S3 answered {code or status}: {message}")
        name = type(exc).__name__
        if name in ("NoCredentialsError", "PartialCredentialsError"):
            return ConfigError(f"{what}: no S3 credentials found; {_CREDENTIAL_HINT} (or configure a profile)")
        return BackupError(f"{what}: {name}: {redact_text(str(exc))[:300]}")

    @contextmanager
    def _s3(self, what: str) -> Iterator[None]:
        try:
            yield
        except (self._client_error, self._core_error) as exc:
            raise self._error(exc, what) from exc

    def _code(self, exc: Exception) -> str:
        return str((getattr(exc, "response", {}) or {}).get("Error", {}).get("Code", ""))

    # -- Object Lock ----------------------------------------------------------------------

    def require_object_lock(self) -> None:
        """Refuse a bucket without Object Lock: a backup there could be deleted before its retain-until date.

        Raises:
            ConfigError: the bucket does not have Object Lock enabled (or its configuration cannot be read).
        """
        if self._lock_checked:
            return
        refused = (
            f"the bucket {self.bucket!r} of RETIRE_BACKUP_URL does not have S3 Object Lock enabled "
            "(bucket setting ObjectLockEnabled): backups there could be deleted before their retain-until date. "
            "Use a bucket created with Object Lock enabled "
            "(`aws s3api create-bucket --bucket NAME --object-lock-enabled-for-bucket`)"
        )
        try:
            answer = self.client.get_object_lock_configuration(Bucket=self.bucket)
        except self._client_error as exc:
            code = self._code(exc)
            if code == "ObjectLockConfigurationNotFoundError":
                raise ConfigError(refused) from exc
            if code in ("AccessDenied", "403"):
                raise ConfigError(
                    f"the Object Lock setting of bucket {self.bucket!r} cannot be read (AccessDenied): the "
                    "credentials need s3:GetBucketObjectLockConfiguration"
                ) from exc
            raise self._error(exc, f"s3://{self.bucket}: reading its Object Lock setting") from exc
        except self._core_error as exc:
            raise self._error(exc, f"s3://{self.bucket}: reading its Object Lock setting") from exc
        if answer.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") != "Enabled":
            raise ConfigError(refused)
        self._lock_checked = True

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
        """Stream every item into a new backup (one pass: read, hash, upload in parts), lock it, write its manifest.

        Args:
            ref: the model (version) the files belong to.
            items: the files, as lazily opened streams.
            retain_until: until when the backup must be kept; every object is locked until then
                (rounded up to a whole second, as S3 keeps it).
            dossier: written as dossier.json when given.
            captures: what the backup holds, in words.
            not_captured: what the platform would not let out.
            platform_metadata: the platform's metadata, for a restore.
            progress: called with (bytes done, total or None) at least every 64 MiB and at the end.

        Returns:
            The manifest, as written to manifest.json.

        Raises:
            InputError: a file path is unsafe or appears twice, or retain_until is not in the future;
                nothing is written.
            ConfigError: the bucket has no Object Lock, or the credentials are refused; nothing is written.
            BackupError: a download or an upload failed, or a declared size/hash did not match; what was
                uploaded is deleted.
            ConflictError: the target location already holds objects (backups are write-once).
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
        retain_until = _whole_second_after(retain_until)
        if retain_until <= created_at:
            raise InputError("retain_until", f"{retain_until.isoformat()} is not in the future", "a later time")
        self.require_object_lock()
        location = self.location_for(ref, created_at)
        key = self._key(location)
        with self._s3(f"{location}: checking it is free"):
            taken = self.client.list_objects_v2(Bucket=self.bucket, Prefix=key + "/", MaxKeys=1).get("KeyCount", 0)
        if taken:
            raise ConflictError(f"a backup already exists at {location}; backups are write-once")
        uploaded: list[tuple[str, str | None]] = []
        guard = threading.Lock()
        try:
            files = self._write_files(key, items, progress, uploaded, guard)
            manifest = BackupManifest(
                source=ref,
                location=location,
                created_at=created_at,
                retain_until=retain_until,
                files=files,
                captures=list(captures),
                not_captured=list(not_captured),
                platform_metadata=redact(dict(platform_metadata or {})),
            )
            if dossier is not None:
                text = json.dumps(redact(dossier), indent=2, sort_keys=True, default=str)
                uploaded.append(self._put_record(f"{key}/{DOSSIER}", text, None))
            for object_key, version in uploaded:
                self._lock(object_key, version, retain_until)
            self._put_record(f"{key}/{MANIFEST}", manifest.model_dump_json(indent=2), retain_until)
        except BaseException:
            self._discard(location, uploaded, retain_until)
            raise
        logger.info(
            "backup of %s written to %s: %d files, %d bytes, locked (%s) until %s",
            ref,
            location,
            len(files),
            manifest.total_bytes,
            self.lock_mode,
            retain_until.isoformat(),
        )
        return manifest

    def _write_files(
        self,
        key: str,
        items: Sequence[ExportItem],
        progress: ProgressCallback | None,
        uploaded: list[tuple[str, str | None]],
        guard: threading.Lock,
    ) -> list[ManifestFile]:
        sizes = [item.size for item in items]
        total = None if any(s is None for s in sizes) else sum(s for s in sizes if s is not None)
        counter = _Progress(progress, total)
        cancel = threading.Event()
        results: dict[str, ManifestFile] = {}
        with ThreadPoolExecutor(max_workers=min(self.workers, max(1, len(items))), thread_name_prefix="s3-up") as pool:
            futures = [pool.submit(self._upload_one, key, item, counter, cancel, uploaded, guard) for item in items]
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

    def _part_size_for(self, item: ExportItem) -> int:
        if item.size is None or item.size <= self.part_size * MAX_PARTS:
            return self.part_size
        return math.ceil(item.size / MAX_PARTS / MIB) * MIB

    def _upload_one(
        self,
        key: str,
        item: ExportItem,
        counter: _Progress,
        cancel: threading.Event,
        uploaded: list[tuple[str, str | None]],
        guard: threading.Lock,
    ) -> ManifestFile:
        object_key = f"{key}/{item.path}"
        part_size = self._part_size_for(item)
        # The one part this worker holds, reused for every part of the file; a file declared smaller than a part
        # gets a buffer of its own size (the declared size is enforced before a byte is copied).
        buffer = bytearray(part_size if item.size is None else min(part_size, item.size))
        view = memoryview(buffer)
        filled = 0
        digest = hashlib.sha256()
        size = 0
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        try:
            stream = item.open()
            try:
                for chunk in stream:
                    if cancel.is_set():
                        raise BackupError("cancelled because another file failed")
                    digest.update(chunk)
                    size += len(chunk)
                    counter.add(len(chunk))
                    if item.size is not None and size > item.size:
                        raise BackupError(f"more than the declared {item.size} bytes received")
                    data = memoryview(chunk)
                    while data:
                        n = min(len(data), part_size - filled)
                        view[filled : filled + n] = data[:n]
                        filled += n
                        data = data[n:]
                        if filled == part_size:
                            if upload_id is None:
                                upload_id = self._start_upload(object_key)
                            if len(parts) == MAX_PARTS:
                                raise BackupError(
                                    f"larger than {MAX_PARTS} parts of {part_size // MIB} MiB; "
                                    "raise RETIRE_BACKUP_S3_PART_SIZE_MIB"
                                )
                            parts.append(self._upload_part(object_key, upload_id, len(parts) + 1, buffer))
                            filled = 0
            finally:
                close = getattr(stream, "close", None)
                if callable(close):
                    close()
            found = digest.hexdigest()
            if item.size is not None and size != item.size:
                raise BackupError(f"{size} bytes received, the platform declared {item.size}")
            if item.sha256 is not None and found != item.sha256.lower():
                raise BackupError(f"sha256 {found} does not match the declared {item.sha256.lower()}")
            if upload_id is None:
                with self._s3(f"uploading {object_key}"):
                    answer = self.client.put_object(
                        Bucket=self.bucket,
                        Key=object_key,
                        Body=bytes(view[:filled]),
                        ChecksumSHA256=base64.b64encode(digest.digest()).decode("ascii"),
                        IfNoneMatch="*",
                    )
            else:
                if filled:
                    parts.append(self._upload_part(object_key, upload_id, len(parts) + 1, bytes(view[:filled])))
                with self._s3(f"completing the upload of {object_key}"):
                    answer = self.client.complete_multipart_upload(
                        Bucket=self.bucket,
                        Key=object_key,
                        UploadId=upload_id,
                        MultipartUpload={"Parts": parts},
                        IfNoneMatch="*",
                    )
                upload_id = None
            with guard:
                uploaded.append((object_key, answer.get("VersionId")))
        except (ConfigError, ConflictError):  # credentials, a missing bucket, a key taken: said as they are
            if upload_id is not None:
                self._abort(object_key, upload_id)
            raise
        except Exception as exc:
            if upload_id is not None:
                self._abort(object_key, upload_id)
            text = str(exc) if isinstance(exc, RetirementError) else f"{type(exc).__name__}: {exc}"
            raise BackupError(f"{item.path}: {redact_text(text)}") from exc
        except BaseException:
            if upload_id is not None:
                self._abort(object_key, upload_id)
            raise
        return ManifestFile(path=item.path, size=size, sha256=found)

    def _start_upload(self, object_key: str) -> str:
        with self._s3(f"starting the upload of {object_key}"):
            answer = self.client.create_multipart_upload(Bucket=self.bucket, Key=object_key, ChecksumAlgorithm="SHA256")
        return str(answer["UploadId"])

    def _upload_part(self, object_key: str, upload_id: str, number: int, body: bytes | bytearray) -> dict[str, Any]:
        checksum = _b64_sha256(body)  # S3 checks every part against it on arrival
        with self._s3(f"uploading part {number} of {object_key}"):
            answer = self.client.upload_part(
                Bucket=self.bucket,
                Key=object_key,
                UploadId=upload_id,
                PartNumber=number,
                Body=body,
                ChecksumSHA256=checksum,
            )
        return {"PartNumber": number, "ETag": answer["ETag"], "ChecksumSHA256": checksum}

    def _abort(self, object_key: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=object_key, UploadId=upload_id)
        except (self._client_error, self._core_error) as exc:
            logger.warning("could not abort the upload of %s: %s", object_key, self._error(exc, "abort"))

    def _put_record(self, object_key: str, text: str, locked_until: datetime | None) -> tuple[str, str | None]:
        body = text.encode("utf-8")
        lock: dict[str, Any] = {}
        if locked_until is not None:
            lock = {"ObjectLockMode": self.lock_mode, "ObjectLockRetainUntilDate": locked_until}
        # S3 wants Content-MD5 (or an SDK checksum header) on a write that carries an Object Lock.
        md5 = base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode("ascii")
        with self._s3(f"writing {object_key}"):
            answer = self.client.put_object(
                Bucket=self.bucket,
                Key=object_key,
                Body=body,
                ContentType="application/json",
                ContentMD5=md5,
                ChecksumSHA256=_b64_sha256(body),
                IfNoneMatch="*",
                **lock,
            )
        return object_key, answer.get("VersionId")

    def _lock(self, object_key: str, version: str | None, until: datetime) -> None:
        version_arg = {"VersionId": version} if version else {}
        with self._s3(f"locking {object_key}"):
            self.client.put_object_retention(
                Bucket=self.bucket,
                Key=object_key,
                Retention={"Mode": self.lock_mode, "RetainUntilDate": until},
                **version_arg,
            )

    def _discard(self, location: str, uploaded: list[tuple[str, str | None]], until: datetime) -> None:
        """Delete what a failed write uploaded; what is already locked stays (and is said so)."""
        left: list[str] = []
        for object_key, version in uploaded:
            try:
                if version:
                    self.client.delete_object(Bucket=self.bucket, Key=object_key, VersionId=version)
                else:
                    self.client.delete_object(Bucket=self.bucket, Key=object_key)
            except (self._client_error, self._core_error):
                left.append(object_key)
        if left:
            logger.warning(
                "the failed backup at %s left %d objects that could not be deleted (under Object Lock until %s?)",
                location,
                len(left),
                until.isoformat(),
            )

    # -- reading --------------------------------------------------------------------------

    def _read_manifest(self, key: str, location: str) -> tuple[BackupManifest, dict[str, Any]]:
        """The manifest of the backup at ``key`` and the GET answer's headers (its lock)."""
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=f"{key}/{MANIFEST}")
        except self._client_error as exc:
            if self._code(exc) in ("NoSuchKey", "404", "NotFound"):
                raise NotFoundError(f"{location} is not a backup (no {MANIFEST})") from exc
            raise self._error(exc, f"{location}/{MANIFEST}") from exc
        except self._core_error as exc:
            raise self._error(exc, f"{location}/{MANIFEST}") from exc
        body = answer["Body"]
        try:
            with self._s3(f"{location}/{MANIFEST}: reading"):
                raw = body.read(MAX_MANIFEST_BYTES + 1)
        finally:
            body.close()
        if len(raw) > MAX_MANIFEST_BYTES:
            raise _UnreadableManifest(
                f"{location}/{MANIFEST}: unreadable manifest: larger than {MAX_MANIFEST_BYTES} bytes"
            )
        try:
            manifest = BackupManifest.model_validate_json(raw)
        except ValidationError as exc:
            raise _UnreadableManifest(f"{location}/{MANIFEST}: unreadable manifest: {type(exc).__name__}") from exc
        return manifest.model_copy(update={"location": location}), answer

    def manifest(self, location: str) -> BackupManifest:
        """The manifest of the backup at ``location``, with ``location`` set to where it is.

        Raises:
            InputError: ``location`` is not an ``s3://`` location of this bucket.
            NotFoundError: there is no backup at ``location``.
            BackupError: its manifest cannot be read.
        """
        key = self._key(location)
        return self._read_manifest(key, f"s3://{self.bucket}/{key}")[0]

    def _list_keys(self, prefix: str) -> dict[str, int]:
        found: dict[str, int] = {}
        with self._s3(f"listing s3://{self.bucket}/{prefix}"):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                for entry in page.get("Contents", []):
                    found[entry["Key"]] = int(entry["Size"])
        return found

    # -- verify ---------------------------------------------------------------------------

    def verify(self, location: str) -> VerifyReport:
        """Re-read every object and compare it with the manifest.

        Every problem is one line of the report: a size that differs, a hash that differs, a missing
        object (deleted, or hidden by a delete marker), an extra object (anything under the backup
        besides the manifest's files, manifest.json and dossier.json), an object not under Object
        Lock until the backup's retain-until.

        Raises:
            NotFoundError: there is no backup at ``location``.
            BackupError: S3 could not be read (network, permissions): nothing can be said of the backup.
        """
        key = self._key(location)
        shown = f"s3://{self.bucket}/{key}"
        try:
            manifest, answer = self._read_manifest(key, shown)
        except _UnreadableManifest as exc:
            return VerifyReport(location=shown, ok=False, files_checked=0, bytes_checked=0, mismatches=[str(exc)])
        mismatches: list[str] = []
        lock_problem = self._lock_problem(MANIFEST, answer, manifest.retain_until)
        if lock_problem:
            mismatches.append(lock_problem)
        present = {k[len(key) + 1 :] for k in self._list_keys(key + "/")}
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="s3-verify") as pool:
            outcomes = list(pool.map(lambda entry: self._check_object(key, entry, manifest), manifest.files))
        files_checked = 0
        bytes_checked = 0
        for problems, read in outcomes:
            if read is not None:
                files_checked += 1
                bytes_checked += read
            mismatches.extend(problems)
        listed = {entry.path for entry in manifest.files}
        for extra in sorted(present - listed - RESERVED):
            mismatches.append(f"{extra}: extra object, not in the manifest")
        report = VerifyReport(
            location=shown,
            ok=not mismatches,
            files_checked=files_checked,
            bytes_checked=bytes_checked,
            mismatches=mismatches,
        )
        if not report.ok:
            logger.warning("backup %s failed verification: %d problems", shown, len(mismatches))
        return report

    def _lock_problem(self, path: str, answer: dict[str, Any], retain_until: datetime) -> str | None:
        mode = answer.get("ObjectLockMode")
        until = answer.get("ObjectLockRetainUntilDate")
        if mode in LOCK_MODES and isinstance(until, datetime) and until >= retain_until:
            return None
        held = f"{mode} until {until.astimezone(UTC).isoformat()}" if isinstance(until, datetime) else "no lock"
        return (
            f"{path}: not under Object Lock until {retain_until.astimezone(UTC).isoformat()} ({held}; "
            "reading a lock needs s3:GetObjectRetention)"
        )

    def _check_object(self, key: str, entry: ManifestFile, manifest: BackupManifest) -> tuple[list[str], int | None]:
        """(problems, bytes read or None) for one object of a backup."""
        try:
            check_item_path(entry.path)
        except InputError:
            return [f"{entry.path}: unsafe path (it could lead out of the backup), not read"], None
        object_key = f"{key}/{entry.path}"
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=object_key)
        except self._client_error as exc:
            if self._code(exc) in ("NoSuchKey", "404", "NotFound"):
                return [f"{entry.path}: missing"], None
            raise self._error(exc, f"s3://{self.bucket}/{object_key}") from exc
        except self._core_error as exc:
            raise self._error(exc, f"s3://{self.bucket}/{object_key}") from exc
        digest = hashlib.sha256()
        size = 0
        body = answer["Body"]
        try:
            with self._s3(f"reading s3://{self.bucket}/{object_key}"):
                for chunk in body.iter_chunks(READ_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
        finally:
            body.close()
        problems: list[str] = []
        found = digest.hexdigest()
        if size != entry.size:
            problems.append(f"{entry.path}: size differs (manifest {entry.size} bytes, found {size})")
        elif found != entry.sha256:
            problems.append(f"{entry.path}: sha256 differs (manifest {entry.sha256}, found {found})")
        lock_problem = self._lock_problem(entry.path, answer, manifest.retain_until)
        if lock_problem:
            problems.append(lock_problem)
        return problems, size

    # -- list and open --------------------------------------------------------------------

    def list(self, ref: ModelRef | None = None) -> list[BackupManifest]:
        """Backups of ``ref``, newest first.

        Args:
            ref: a version (its backups), a model without version (backups of every version and
                of the whole model), or None (every backup under the prefix).
        """
        if ref is None:
            base, depth = self._under_prefix(), 5
        elif ref.version is None:
            base, depth = self._under_prefix(*self._ref_parts(ref)[:2]), 3
        else:
            base, depth = self._under_prefix(*self._ref_parts(ref)), 2
        base = f"{base}/" if base else ""
        manifests: list[BackupManifest] = []
        for object_key in self._list_keys(base):
            rel = object_key[len(base) :].split("/")
            if len(rel) != depth or rel[-1] != MANIFEST:
                continue
            key = object_key[: -len(MANIFEST) - 1]
            try:
                manifests.append(self._read_manifest(key, f"s3://{self.bucket}/{key}")[0])
            except (_UnreadableManifest, NotFoundError) as exc:
                logger.warning("skipping s3://%s/%s: %s", self.bucket, key, exc)
        manifests.sort(key=lambda m: m.created_at, reverse=True)
        return manifests

    def open(self, location: str, path: str) -> Any:
        """Open one file of a backup (one listed in its manifest, or the manifest or dossier) for reading.

        Returns:
            botocore's StreamingBody (``read``, ``iter_chunks``, ``close``).

        Raises:
            NotFoundError: no backup at ``location``, or no such file in it.
            InputError: ``path`` is not a safe path of a backup file.
        """
        key = self._key(location)
        shown = f"s3://{self.bucket}/{key}"
        if path not in RESERVED:
            check_item_path(path)
            if path not in {f.path for f in self.manifest(location).files}:
                raise NotFoundError(f"{path!r} is not a file of the backup at {shown}")
        try:
            return self.client.get_object(Bucket=self.bucket, Key=f"{key}/{path}")["Body"]
        except self._client_error as exc:
            if self._code(exc) in ("NoSuchKey", "404", "NotFound"):
                raise NotFoundError(f"{path!r} is missing from the backup at {shown}") from exc
            raise self._error(exc, f"{shown}/{path}") from exc
        except self._core_error as exc:
            raise self._error(exc, f"{shown}/{path}") from exc

    def iter_file(self, location: str, path: str, chunk_size: int = READ_CHUNK) -> Iterator[bytes]:
        """The bytes of one backed-up file, in chunks, checked against the manifest as they are read.

        Raises:
            BackupVerifyError: at the end of the stream, when the bytes read do not match the manifest
                (the object changed after it was verified).
        """
        manifest = self.manifest(location)
        entry = next((f for f in manifest.files if f.path == path), None)
        if entry is None:
            raise NotFoundError(f"{path!r} is not a file of the backup at {manifest.location}")
        digest = hashlib.sha256()
        size = 0
        body = self.open(location, path)
        try:
            with self._s3(f"reading {manifest.location}/{path}"):
                for chunk in body.iter_chunks(chunk_size):
                    digest.update(chunk)
                    size += len(chunk)
                    yield chunk
        finally:
            body.close()
        if size != entry.size or digest.hexdigest() != entry.sha256:
            raise BackupVerifyError(manifest.location, [f"{path}: changed since it was verified"])

    # -- delete ---------------------------------------------------------------------------

    def delete(self, location: str) -> int:
        """Delete every version of every object of the backup at ``location``, its manifest last.

        This does not look at dates: S3 itself refuses to delete an object version still under Object
        Lock (the purge checks retain-until first). Delete markers are removed too, so nothing of the
        backup is left in a versioned bucket.

        Returns:
            The object versions (and delete markers) deleted.

        Raises:
            NotFoundError: there is no backup at ``location``.
            ConflictError: S3 refused to delete some of them (Object Lock); the manifest is then kept,
                so the backup still lists and verify says what is gone.
        """
        key = self._key(location)
        shown = f"s3://{self.bucket}/{key}"
        self._read_manifest(key, shown)
        versions: list[dict[str, str]] = []
        with self._s3(f"listing the versions of {shown}"):
            pages = self.client.get_paginator("list_object_versions").paginate(Bucket=self.bucket, Prefix=key + "/")
            for page in pages:
                for entry in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]:
                    versions.append({"Key": entry["Key"], "VersionId": entry["VersionId"]})
        manifest_key = f"{key}/{MANIFEST}"
        deleted = self._delete_versions(key, [v for v in versions if v["Key"] != manifest_key])
        deleted += self._delete_versions(key, [v for v in versions if v["Key"] == manifest_key])
        logger.info("backup %s deleted: %d object versions", shown, deleted)
        return deleted

    def _delete_versions(self, key: str, versions: Sequence[dict[str, str]]) -> int:
        shown = f"s3://{self.bucket}/{key}"
        deleted = 0
        refused: list[str] = []
        for start in range(0, len(versions), DELETE_BATCH):
            batch = list(versions[start : start + DELETE_BATCH])
            with self._s3(f"deleting {shown}"):
                answer = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": False})
            deleted += len(answer.get("Deleted", []))
            for error in answer.get("Errors", []):
                path = str(error.get("Key", "")).removeprefix(key + "/")
                refused.append(f"{path}: {error.get('Code')}")
        if refused:
            raise ConflictError(
                f"S3 refused to delete {len(refused)} object versions of the backup at {shown} "
                f"(Object Lock keeps them until their retain-until date): {'; '.join(refused[:5])}"
            )
        return deleted


__all__ = [
    "BACKUP_URL_ALLOWED",
    "DEFAULT_PART_SIZE",
    "LOCK_MODES",
    "BackupURL",
    "S3BackupStore",
    "check_bucket",
    "parse_backup_url",
    "split_location",
]
