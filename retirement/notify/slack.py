"""Slack notifier: Block Kit messages, one thread per retirement, through a bot token or an incoming webhook."""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from http.client import HTTPException
from typing import Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry import (
    BackoffRetryIntervalCalculator,
    ConnectionErrorRetryHandler,
    HttpRequest,
    HttpResponse,
    Jitter,
    RateLimitErrorRetryHandler,
    RetryHandler,
    RetryState,
)
from slack_sdk.http_retry.builtin_handlers import ServerErrorRetryHandler
from slack_sdk.webhook import WebhookClient

from retirement.errors import ConfigError
from retirement.models import Notification, NotificationStatus, NotifyReceipt, utcnow
from retirement.redact import REDACTED, redact_text

logger = logging.getLogger("retirement.notify.slack")

# Posts in a thread that the whole channel must see, not only those who follow the thread.
BROADCAST_STATUSES = frozenset(
    {
        NotificationStatus.FAILED,
        NotificationStatus.HALTED,
        NotificationStatus.ALERT,
        NotificationStatus.AWAITING_APPROVAL,
    }
)

STATUS_MARKERS: dict[NotificationStatus, str] = {
    NotificationStatus.STARTED: ":arrow_forward:",
    NotificationStatus.AWAITING_APPROVAL: ":raised_hand:",
    NotificationStatus.DONE: ":white_check_mark:",
    NotificationStatus.FAILED: ":x:",
    NotificationStatus.SCHEDULED: ":alarm_clock:",
    NotificationStatus.HALTED: ":octagonal_sign:",
    NotificationStatus.ALERT: ":rotating_light:",
}

# Block Kit limits (https://api.slack.com/reference/block-kit/blocks).
_HEADER_MAX = 150
_SECTION_MAX = 3000
_FIELD_MAX = 2000
_URL_MAX = 3000


class SlackSettings(BaseSettings):
    """How to reach Slack: a bot token and a channel (threads), or an incoming webhook (no threads)."""

    model_config = SettingsConfigDict(env_prefix="RETIRE_SLACK_", extra="ignore")

    bot_token: SecretStr | None = Field(
        default=None,
        description="Bot token (xoxb-...) with chat:write; needs `channel`; keeps one thread per retirement.",
    )
    channel: str | None = Field(
        default=None, description="Channel the bot posts to, by ID or name (e.g. C0123456789 or #model-retirements)."
    )
    webhook_url: SecretStr | None = Field(
        default=None,
        description="Incoming webhook URL, used when no bot token is set; posts to the webhook's channel, no threads.",
    )
    base_url: str = Field(
        default="https://slack.com/api/",
        description="Slack Web API base URL; override for a proxy or a local fake Slack in tests.",
    )
    max_retries: int = Field(
        default=3, ge=0, le=10, description="Retries after a 429 (honouring Retry-After), a 5xx or a connection error."
    )
    retry_backoff_seconds: float = Field(
        default=0.5,
        ge=0,
        description="First wait before retrying a 5xx or connection error (seconds); doubles on each retry.",
    )
    timeout_seconds: int = Field(
        default=10, ge=1, le=300, description="Timeout of one HTTP request to Slack (seconds)."
    )

    @field_validator("bot_token", "webhook_url", "channel", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        # An exported-but-empty variable means "not configured", not "an empty token".
        if isinstance(value, str) and not value.strip():
            return None
        return value


def _iso(when: datetime) -> str:
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def relative_time(when: datetime, now: datetime) -> str:
    """``when`` relative to ``now`` in words: 'just now', 'in 3 hours', '2 days ago'.

    Naive datetimes are taken as UTC.
    """
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    seconds = (when - now).total_seconds()
    magnitude = abs(seconds)
    if magnitude < 60:
        return "just now"
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if magnitude >= size:
            count = int(magnitude // size)
            words = f"{count} {unit}{'' if count == 1 else 's'}"
            return f"in {words}" if seconds > 0 else f"{words} ago"
    return "just now"  # pragma: no cover - the loop always returns for magnitude >= 60


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _label(value: str) -> str:
    return value.replace("_", " ")


def fallback_text(event: Notification) -> str:
    """The plain-text version of ``event``: notification previews and clients without blocks show it."""
    text = f"[{_label(event.status.value).upper()}] {event.reference} - {_label(event.phase.value)}: {event.text}"
    return redact_text(text)


def build_blocks(event: Notification, now: datetime) -> list[dict[str, Any]]:
    """Block Kit blocks for ``event``: header, what and why, facts, and a button to the run.

    Args:
        event: the notification.
        now: the current time, for the relative words of the 'When' field.

    Returns:
        header (marker, model reference, phase, status), a section with the text, a section of
        fields (Phase, Status, Next step, When) and, when ``event.ui_url`` is set, an actions
        block with an "Open in Prefect" button. Credential-shaped text is redacted.
    """
    marker = STATUS_MARKERS[event.status]
    status = _label(event.status.value)
    phase = _label(event.phase.value)
    header = f"{marker} {event.reference} · {phase} · {status.upper()}"
    if event.next_at is not None:
        when = f"{_iso(event.next_at)} ({relative_time(event.next_at, now)})"
    else:
        when = f"{_iso(now)} (just now)"
    fields = [
        ("Phase", phase),
        ("Status", f"{marker} {status}"),
        ("Next step", event.next_step or "none"),
        ("When", when),
    ]
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": _truncate(redact_text(header), _HEADER_MAX), "emoji": True},
        },
        {"type": "section", "text": {"type": "mrkdwn", "text": _truncate(redact_text(event.text), _SECTION_MAX)}},
        {
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": _truncate(f"*{name}*\n{redact_text(value)}", _FIELD_MAX)}
                for name, value in fields
            ],
        },
    ]
    if event.ui_url and len(event.ui_url) <= _URL_MAX:
        blocks.append(
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "text": {"type": "plain_text", "text": "Open in Prefect", "emoji": True},
                        "url": event.ui_url,
                        "action_id": "open_in_prefect",
                    }
                ],
            }
        )
    return blocks


class _Attempts(threading.local):
    """Attempts of the current post, per thread: one notifier may serve concurrent tasks."""

    def __init__(self) -> None:
        self.count = 1


class _BoundedJitter(Jitter):
    """Adds up to ``scale`` seconds, so the jitter shrinks with the backoff (the SDK's adds up to 1 s)."""

    def __init__(self, scale: float) -> None:
        self.scale = scale

    def recalculate(self, duration: float) -> float:
        return duration + random.random() * self.scale  # noqa: S311 - jitter, not security


class _CountsAttempts(RetryHandler):
    """Counts every retry a handler decides on, so the receipt can say how many attempts were made."""

    _attempts: _Attempts

    def prepare_for_next_attempt(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> None:
        self._attempts.count += 1
        super().prepare_for_next_attempt(state=state, request=request, response=response, error=error)


class _CountingRateLimit(_CountsAttempts, RateLimitErrorRetryHandler):
    def __init__(self, attempts: _Attempts, max_retry_count: int) -> None:
        super().__init__(max_retry_count=max_retry_count)
        self._attempts = attempts


class _CountingServerError(_CountsAttempts, ServerErrorRetryHandler):
    def __init__(self, attempts: _Attempts, max_retry_count: int, backoff: float) -> None:
        super().__init__(max_retry_count, BackoffRetryIntervalCalculator(backoff, _BoundedJitter(backoff)))
        self._attempts = attempts

    def _can_retry(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        # The SDK retries 500 and 503 only; a 502 or 504 from a proxy in front of Slack is as transient.
        return response is not None and response.status_code in (500, 502, 503, 504)


class _CountingConnectionError(_CountsAttempts, ConnectionErrorRetryHandler):
    def __init__(self, attempts: _Attempts, max_retry_count: int, backoff: float) -> None:
        super().__init__(max_retry_count, BackoffRetryIntervalCalculator(backoff, _BoundedJitter(backoff)))
        self._attempts = attempts


class _SecretFilter(logging.Filter):
    """Scrubs this notifier's token and webhook URL from what slack-sdk logs (it logs request URLs)."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self._secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        for secret in self._secrets:
            message = message.replace(secret, REDACTED)
        record.msg, record.args = redact_text(message), None
        return True


def _sdk_logger(secrets: list[str]) -> logging.Logger:
    # A logger of its own per notifier, outside the logging registry, so that its secret filter
    # holds only this notifier's secrets; records still propagate to "retirement.notify.slack".
    sdk_logger = logging.Logger("retirement.notify.slack.sdk")
    sdk_logger.parent = logger
    sdk_logger.addFilter(_SecretFilter(secrets))
    return sdk_logger


class SlackNotifier:
    """Posts retirement events to Slack with Block Kit.

    With a bot token and a channel it uses ``chat.postMessage`` and keeps one thread per
    retirement: the first post's ``ts`` is the receipt's ``thread``, later posts reply in it, and
    failures, halts, alerts and approval requests are also broadcast to the channel. With only an
    incoming webhook it posts the same blocks without threads.

    ``post`` never raises for what the network or Slack does: it retries 429 (honouring
    Retry-After), 5xx and connection errors up to ``settings.max_retries`` times, then returns an
    undelivered receipt and logs a warning; neither ever contains the token or the webhook URL.
    """

    name = "slack"

    def __init__(
        self,
        settings: SlackSettings,
        client: WebClient | None = None,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        """Create the notifier.

        Args:
            settings: token and channel, or webhook URL; retries and timeout.
            client: a ready ``WebClient`` (bot mode); its retry handlers are replaced by this
                notifier's. Built from ``settings`` when None.
            clock: returns the current time (UTC), for the 'When' field.

        Raises:
            ConfigError: a bot token (or client) without a channel, or neither a bot token nor a webhook URL.
        """
        self.settings = settings
        self._clock = clock
        self._attempts = _Attempts()
        token = settings.bot_token.get_secret_value() if settings.bot_token else None
        webhook = settings.webhook_url.get_secret_value() if settings.webhook_url else None
        handlers: list[RetryHandler] = [
            _CountingRateLimit(self._attempts, settings.max_retries),
            _CountingServerError(self._attempts, settings.max_retries, settings.retry_backoff_seconds),
            _CountingConnectionError(self._attempts, settings.max_retries, settings.retry_backoff_seconds),
        ]
        self._secrets = [s for s in (token, webhook) if s]
        if client is not None and client.token:
            self._secrets.append(client.token)
        sdk_logger = _sdk_logger(self._secrets)
        self._client: WebClient | None = None
        self._webhook: WebhookClient | None = None
        if token is not None or client is not None:
            if not settings.channel:
                raise ConfigError(
                    "RETIRE_SLACK_CHANNEL is not set: a Slack bot token needs the channel to post to "
                    "(a channel ID such as C0123456789 or a name such as #model-retirements)"
                )
            if client is None:
                client = WebClient(
                    token=token,
                    base_url=settings.base_url,
                    timeout=settings.timeout_seconds,
                    logger=sdk_logger,
                    retry_handlers=handlers,
                )
            else:
                client.retry_handlers = handlers
            self._client = client
        elif webhook is not None:
            self._webhook = WebhookClient(
                url=webhook, timeout=settings.timeout_seconds, logger=sdk_logger, retry_handlers=handlers
            )
        else:
            raise ConfigError(
                "Slack is not configured: set RETIRE_SLACK_BOT_TOKEN and RETIRE_SLACK_CHANNEL, "
                "or RETIRE_SLACK_WEBHOOK_URL"
            )

    @property
    def mode(self) -> str:
        """``"bot"`` (chat.postMessage, threads) or ``"webhook"`` (incoming webhook, no threads)."""
        return "bot" if self._client is not None else "webhook"

    def post(self, event: Notification, thread: str | None = None) -> NotifyReceipt:
        """Post ``event``; reply in ``thread`` (the first post's receipt.thread) when given.

        Args:
            event: what happened.
            thread: the Slack ``ts`` of the retirement's first message; ignored by webhooks.

        Returns:
            A receipt: delivered, the channel, the thread to reply in next time, and on failure
            the reason (redacted) and the number of attempts made.
        """
        self._attempts.count = 1
        blocks = build_blocks(event, self._clock())
        text = fallback_text(event)
        try:
            if self._client is not None:
                receipt = self._post_bot(event, thread, text, blocks)
            else:
                receipt = self._post_webhook(text, blocks)
        except SlackApiError as exc:
            receipt = NotifyReceipt(delivered=False, channel=self._channel_name, error=self._api_error(exc))
        except (SlackClientError, OSError, HTTPException) as exc:
            # OSError covers URLError, refused connections, timeouts and TLS errors.
            receipt = NotifyReceipt(
                delivered=False, channel=self._channel_name, error=self._scrub(f"{type(exc).__name__}: {exc}")
            )
        receipt.attempts = self._attempts.count
        if not receipt.delivered:
            logger.warning(
                "Slack notification for %s (%s, %s) not delivered after %d attempt(s): %s",
                event.reference,
                event.phase.value,
                event.status.value,
                receipt.attempts,
                receipt.error,
            )
        return receipt

    @property
    def _channel_name(self) -> str:
        return self.settings.channel if self._client is not None and self.settings.channel else "webhook"

    def _post_bot(
        self, event: Notification, thread: str | None, text: str, blocks: list[dict[str, Any]]
    ) -> NotifyReceipt:
        assert self._client is not None
        kwargs: dict[str, Any] = {"channel": self.settings.channel, "text": text, "blocks": blocks}
        if thread:
            kwargs["thread_ts"] = thread
            if event.status in BROADCAST_STATUSES:
                kwargs["reply_broadcast"] = True
        response = self._client.chat_postMessage(**kwargs)
        channel = response.get("channel") or self.settings.channel
        return NotifyReceipt(delivered=True, channel=channel, thread=thread or response.get("ts"))

    def _post_webhook(self, text: str, blocks: list[dict[str, Any]]) -> NotifyReceipt:
        assert self._webhook is not None
        response = self._webhook.send(text=text, blocks=blocks)
        if response.status_code == 200:
            return NotifyReceipt(delivered=True, channel="webhook")
        reason = (response.body or "").strip() or "no body"
        return NotifyReceipt(
            delivered=False, channel="webhook", error=self._scrub(f"HTTP {response.status_code}: {reason}"[:300])
        )

    def _api_error(self, exc: SlackApiError) -> str:
        response = exc.response
        data = response.data if isinstance(response.data, dict) else {}
        code = str(data.get("error") or "unknown_error")
        if response.status_code != 200:
            code = f"HTTP {response.status_code}: {code}"
        return self._scrub(code[:300])

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return redact_text(text)


__all__ = [
    "BROADCAST_STATUSES",
    "STATUS_MARKERS",
    "SlackNotifier",
    "SlackSettings",
    "build_blocks",
    "fallback_text",
    "relative_time",
]
