"""The one streaming download engine: every adapter that exports over HTTP goes through it."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping
from urllib.parse import urlsplit, urlunsplit

import httpx

from retirement.errors import BackupError, PlatformUnavailableError, RateLimitedError
from retirement.models import ExportItem
from retirement.platforms.http import raise_for_platform

logger = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20
"""A good size for reading files in chunks (1 MiB). Downloads pass on the network's own chunks instead:
re-chunking them to 1 MiB costs a copy and, worse, a fresh 1 MiB allocation per chunk, which glibc
serves with mmap/munmap, so every page is faulted in again (measured: twice the CPU time per byte)."""

_CONTENT_RANGE_RE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)


def safe_url(url: str) -> str:
    """``url`` without its query string, fragment and user info, fit for logs and error messages.

    Pre-signed download URLs carry their credentials in the query string; they must never be
    written anywhere.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class _ScrubURLs(logging.Filter):
    """Rewrites the URLs in httpx's own request log lines to their safe form (no query string)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(a, httpx.URL) for a in record.args):
            record.args = tuple(safe_url(str(a)) if isinstance(a, httpx.URL) else a for a in record.args)
        return True


# httpx logs every request's full URL at INFO; a pre-signed download URL carries its credentials
# in the query string, so those lines are scrubbed before any handler sees them.
if not any(isinstance(f, _ScrubURLs) for f in logging.getLogger("httpx").filters):
    logging.getLogger("httpx").addFilter(_ScrubURLs())


def _check_resumed(response: httpx.Response, shown: str, done: int) -> None:
    """Refuse a resumed response that does not start exactly at byte ``done``."""
    if response.status_code != 206:
        raise BackupError(
            f"{shown}: the server ignored the Range request while resuming at byte {done} "
            f"(HTTP {response.status_code}); refusing to restart, which would duplicate bytes"
        )
    match = _CONTENT_RANGE_RE.match(response.headers.get("content-range", ""))
    if match is None or int(match.group(1)) != done:
        raise BackupError(
            f"{shown}: the server answered the resume at byte {done} with Content-Range "
            f"{response.headers.get('content-range')!r}; expected 'bytes {done}-...'"
        )


def iter_download(
    client: httpx.Client,
    url: str,
    *,
    platform: str,
    headers: Mapping[str, str] | None = None,
    chunk_size: int | None = None,
    max_resumes: int = 3,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[bytes]:
    """Stream ``url`` in chunks, in constant memory.

    The body is read as sent (``Accept-Encoding: identity``, raw bytes), so what is hashed is the
    file itself. A connection that drops mid-body is resumed with an HTTP Range request from the
    byte where it stopped; a 5xx or 429 answer is retried after a short wait (Retry-After when the
    server gives one). At most ``max_resumes`` such retries are made in all. A server that ignores
    the Range, or answers it from another offset, is an error, never a silent restart that would
    duplicate bytes.

    Args:
        client: the HTTP client (its auth, base URL and timeouts apply).
        url: the file's URL; only its scheme, host and path ever appear in logs and errors.
        platform: the platform's name, for error messages.
        headers: extra request headers (e.g. authorization); never logged.
        chunk_size: None (default) passes on the chunks as they arrive (up to 64 KiB each, no copy);
            a number re-chunks to exactly that many bytes per chunk (the last one may be shorter).
        max_resumes: retries allowed after a dropped connection, a 5xx or a 429.
        sleep: how to wait before retrying a 5xx or 429 (injected by tests).

    Yields:
        The body's bytes, in order, each byte exactly once.

    Raises:
        AuthError: 401 or 403.
        NotFoundError: 404.
        RateLimitedError: 429, still after the retries.
        PlatformUnavailableError: 5xx, still after the retries.
        PlatformError: any other error status.
        BackupError: the connection kept dropping, or the server cannot resume where it stopped.
    """
    shown = safe_url(url)
    done = 0
    retries = 0
    while True:
        request_headers = dict(headers or {})
        request_headers["Accept-Encoding"] = "identity"
        if done:
            request_headers["Range"] = f"bytes={done}-"
        try:
            with client.stream("GET", url, headers=request_headers) as response:
                if not response.is_success:
                    response.read()
                    raise_for_platform(response, platform)
                if done:
                    _check_resumed(response, shown, done)
                for chunk in response.iter_raw(chunk_size) if chunk_size else response.iter_raw():
                    done += len(chunk)
                    yield chunk
                return
        except httpx.TransportError as exc:
            retries += 1
            if retries > max_resumes:
                raise BackupError(
                    f"{shown}: download failed at byte {done} after {max_resumes} resumes: {type(exc).__name__}"
                ) from exc
            logger.warning("%s: connection lost at byte %d (%s); resuming", shown, done, type(exc).__name__)
        except (PlatformUnavailableError, RateLimitedError) as exc:
            retries += 1
            if retries > max_resumes:
                raise
            wait = exc.retry_after if isinstance(exc, RateLimitedError) and exc.retry_after is not None else 0.0
            wait = min(30.0, max(wait, 0.5 * 2 ** (retries - 1)))
            logger.warning("%s: HTTP %s at byte %d; retrying in %.1fs", shown, exc.status, done, wait)
            sleep(wait)


def http_export_item(
    client: httpx.Client,
    path: str,
    url: str,
    *,
    platform: str,
    size: int | None = None,
    sha256: str | None = None,
    headers: Mapping[str, str] | None = None,
    chunk_size: int | None = None,
) -> ExportItem:
    """An ExportItem whose stream is a fresh download of ``url`` each time it is opened.

    Args:
        client: the HTTP client to download with.
        path: the file's path inside the backup, relative and '/'-separated.
        url: where to download it from.
        platform: the platform's name, for error messages.
        size: the size the platform declares, checked by the backup store when given.
        sha256: the SHA-256 the platform declares (hex), checked by the backup store when given.
        headers: extra request headers (e.g. authorization).
        chunk_size: bytes per chunk; None passes on the network's chunks (see ``iter_download``).
    """
    return ExportItem(
        path=path,
        size=size,
        sha256=sha256,
        open=lambda: iter_download(client, url, platform=platform, headers=headers, chunk_size=chunk_size),
    )


__all__ = ["CHUNK_SIZE", "http_export_item", "iter_download", "safe_url"]
