"""HTTP plumbing shared by the platform adapters: errors into the exception tree, retries, pages."""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx

from retirement.errors import (
    AuthError,
    ConflictError,
    InputError,
    NotFoundError,
    PlatformError,
    PlatformUnavailableError,
    RateLimitedError,
)
from retirement.redact import redact, redact_text

logger = logging.getLogger(__name__)

MessageExtractor = Callable[[Any], str | None]
"""Pulls the platform's own error message out of a decoded error body."""

MAX_MESSAGE = 500
"""Longest platform message kept in an error (an HTML error page says nothing more past this)."""


def default_message(body: Any) -> str | None:
    """The message of the common error shapes: {"error": {"message"}}, {"error": "..."}, {"message"},
    RFC 7807 {"title", "detail"}, FastAPI {"detail": [{"loc", "msg"}]}."""
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str) and error:
            return error
        if body.get("message"):
            return str(body["message"])
        detail = body.get("detail")
        if isinstance(detail, list):
            parts = [
                f"{'.'.join(str(x) for x in d.get('loc', []))}: {d.get('msg')}" if isinstance(d, dict) else str(d)
                for d in detail
            ]
            return "; ".join(parts)
        if detail or body.get("title"):
            return " - ".join(str(x) for x in (body.get("title"), detail) if x)
    if isinstance(body, str) and body.strip():
        return body.strip()
    return None


def retry_after_seconds(response: httpx.Response) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), if present."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)
        if parsed is None:
            return None
        return max(0.0, (parsed - datetime.now(UTC)).total_seconds())


def shown_url(url: httpx.URL | str) -> str:
    """``url`` fit for logs and error messages: no user info, query string or fragment (they carry credentials)."""
    parsed = httpx.URL(str(url))
    return str(parsed.copy_with(userinfo=b"", query=None, fragment=None))


def error_text(response: httpx.Response, extract: MessageExtractor = default_message) -> tuple[str, Any]:
    """What a failed exchange says, fit for any log, artifact, ledger line or Slack message: (message, detail).

    This is the one place error texts of HTTP exchanges are built. The request never goes into
    them (its body, headers and URL are left out), and the answer is redacted by name and by value
    before anything reads it, since a server may echo what it was sent (a form with
    ``client_secret=...``, an ``Authorization`` header). ``detail`` is the redacted decoded body
    when it is JSON, else None.
    """
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text[: MAX_MESSAGE * 100]  # an error page; only its start can end up in the message
    clean = redact(body) if isinstance(body, dict | list | str) else body
    message = extract(clean) or response.reason_phrase or "error"
    if len(message) > MAX_MESSAGE:
        message = message[:MAX_MESSAGE] + "..."
    return redact_text(message), clean if isinstance(clean, dict | list) else None


def transport_error_text(method: str, url: httpx.URL | str, exc: Exception) -> str:
    """The text of a request that got no answer: method, URL without credentials, the error's type and words."""
    return redact_text(f"{method} {shown_url(url)}: {type(exc).__name__}: {exc}")


def raise_for_platform(
    response: httpx.Response, platform: str, extract: MessageExtractor = default_message
) -> httpx.Response:
    """Return ``response`` if it is a success, else raise the matching error with the platform's message.

    401/403 -> AuthError, 404 -> NotFoundError, 409 -> ConflictError, 429 -> RateLimitedError,
    5xx -> PlatformUnavailableError, 400/422 -> InputError, anything else -> PlatformError.
    The message comes from :func:`error_text`: never the request, and redacted.
    """
    if response.is_success:
        return response
    message, detail = error_text(response, extract)
    status = response.status_code
    if status in (401, 403):
        raise AuthError(platform, message, status, detail)
    if status == 404:
        raise NotFoundError(f"{platform}: {message}")
    if status == 409:
        raise ConflictError(f"{platform}: {message}")
    if status == 429:
        raise RateLimitedError(platform, message, status, detail, retry_after=retry_after_seconds(response))
    if status >= 500:
        raise PlatformUnavailableError(platform, message, status, detail)
    if status in (400, 422):
        raise InputError(f"{platform} request", message)
    raise PlatformError(platform, message, status, detail)


def send(
    client: httpx.Client,
    method: str,
    url: str,
    *,
    platform: str,
    extract: MessageExtractor = default_message,
    max_retries: int = 4,
    max_wait: float = 60.0,
    sleep: Callable[[float], None] = time.sleep,
    **kwargs: Any,
) -> httpx.Response:
    """Send one request, retrying 429 (honouring Retry-After) and 5xx/transport errors with backoff.

    Only idempotent methods (GET, HEAD, PUT, DELETE, OPTIONS) are retried after a 5xx or a
    transport error; a POST or PATCH is retried only on 429, which the platform sends before acting.
    """
    idempotent = method.upper() in {"GET", "HEAD", "PUT", "DELETE", "OPTIONS"}
    for attempt in range(max_retries + 1):
        last = attempt == max_retries
        try:
            response = client.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            if last or not idempotent:
                raise PlatformUnavailableError(platform, transport_error_text(method, url, exc)) from exc
            wait = min(max_wait, 0.5 * 2**attempt)
        else:
            retryable = response.status_code == 429 or (response.status_code >= 500 and idempotent)
            if retryable and not last:
                wait = min(max_wait, retry_after_seconds(response) or 0.5 * 2**attempt)
            else:
                return raise_for_platform(response, platform, extract)
        logger.info(
            "%s %s: retrying in %.1fs (attempt %d of %d)", method, shown_url(url), wait, attempt + 1, max_retries
        )
        sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover


def paginate(
    fetch: Callable[[str | None], tuple[list[Any], str | None]],
) -> Iterator[Any]:
    """Every item across pages: ``fetch(cursor)`` returns (items, next cursor or None)."""
    cursor: str | None = None
    seen: set[str] = set()
    while True:
        items, cursor = fetch(cursor)
        yield from items
        if not cursor:
            return
        if cursor in seen:
            raise PlatformError("pagination", f"the platform returned cursor {cursor!r} twice")
        seen.add(cursor)
