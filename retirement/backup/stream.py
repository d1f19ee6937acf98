"""The one streaming download engine: every adapter that exports over HTTP goes through it."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping

import httpx

from retirement.errors import BackupError, PlatformUnavailableError
from retirement.models import ExportItem
from retirement.platforms.http import raise_for_platform

logger = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20


def iter_download(
    client: httpx.Client,
    url: str,
    *,
    platform: str,
    headers: Mapping[str, str] | None = None,
    chunk_size: int = CHUNK_SIZE,
    max_resumes: int = 3,
) -> Iterator[bytes]:
    """Stream ``url`` in chunks of about ``chunk_size`` bytes, in constant memory.

    A connection that drops mid-body is resumed with an HTTP Range request from the byte where it
    stopped (up to ``max_resumes`` times); a server that ignores the Range is an error, never a
    silent restart that would duplicate bytes.

    Raises:
        The exception tree's platform errors for an HTTP error status; BackupError when resuming fails.
    """
    done = 0
    resumes = 0
    while True:
        request_headers = dict(headers or {})
        if done:
            request_headers["Range"] = f"bytes={done}-"
        try:
            with client.stream("GET", url, headers=request_headers) as response:
                if not response.is_success:
                    response.read()
                    raise_for_platform(response, platform)
                if done and response.status_code != 206:
                    raise BackupError(f"{url}: the server ignored the Range request while resuming at byte {done}")
                for chunk in response.iter_raw(chunk_size):
                    done += len(chunk)
                    yield chunk
                return
        except (httpx.TransportError, PlatformUnavailableError) as exc:
            resumes += 1
            if resumes > max_resumes:
                raise BackupError(f"{url}: download failed after {max_resumes} resumes: {exc}") from exc
            logger.warning("%s: connection lost at byte %d (%s); resuming", url, done, type(exc).__name__)


def http_export_item(
    client: httpx.Client,
    path: str,
    url: str,
    *,
    platform: str,
    size: int | None = None,
    sha256: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> ExportItem:
    """An ExportItem whose stream is a fresh download of ``url`` each time it is opened."""
    return ExportItem(
        path=path,
        size=size,
        sha256=sha256,
        open=lambda: iter_download(client, url, platform=platform, headers=headers),
    )
