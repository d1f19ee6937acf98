"""SlackNotifier with the real slack-sdk over HTTP against the local FakeSlack."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
import slack_sdk.http_retry.builtin_handlers as builtin_handlers
from pydantic import SecretStr
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from retirement.errors import ConfigError
from retirement.models import Notification, NotificationStatus, Phase
from retirement.notify import ConsoleNotifier, Notifier, SlackNotifier, SlackSettings, get_notifier
from retirement.notify.slack import relative_time
from tests.fakes.slack import WEBHOOK_PATH, FakeSlack

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
UI_URL = "http://127.0.0.1:4200/flow-runs/flow-run/0b7c7f0e-1111-2222-3333-444455556666"


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack() as fake:
        yield fake


def make_settings(slack: FakeSlack, **overrides: object) -> SlackSettings:
    values: dict[str, object] = {
        "bot_token": SecretStr(slack.token),
        "channel": "#model-retirements",
        "base_url": slack.base_url,
        "max_retries": 3,
        "retry_backoff_seconds": 0.01,
    }
    values.update(overrides)
    return SlackSettings(**values)  # type: ignore[arg-type]


def event(status: NotificationStatus = NotificationStatus.STARTED, **overrides: object) -> Notification:
    values: dict[str, object] = {
        "retirement_id": "ret-churn-model-3",
        "reference": "churn-model@3",
        "phase": Phase.BACKUP,
        "status": status,
        "text": "Backing up *churn-model@3* before deletion: 12 files.",
        "next_step": "approve deletion",
        "next_at": NOW + timedelta(hours=2),
        "ui_url": UI_URL,
    }
    values.update(overrides)
    return Notification(**values)


def notifier(settings: SlackSettings) -> SlackNotifier:
    return SlackNotifier(settings, clock=lambda: NOW)


def block(blocks: list[dict], kind: str) -> list[dict]:
    return [b for b in blocks if b["type"] == kind]


def test_message_has_header_text_fields_and_prefect_button(slack: FakeSlack) -> None:
    receipt = notifier(make_settings(slack)).post(event())

    assert receipt.delivered and receipt.error is None and receipt.attempts == 1
    [call] = slack.calls("chat.postMessage")
    assert call.headers["Authorization"] == f"Bearer {slack.token}"
    body = call.body
    assert body["channel"] == "#model-retirements"
    assert "thread_ts" not in body and "reply_broadcast" not in body
    assert "churn-model@3" in body["text"] and "STARTED" in body["text"]
    [header] = block(body["blocks"], "header")
    assert header["text"]["text"] == ":arrow_forward: churn-model@3 · backup · STARTED"
    sections = block(body["blocks"], "section")
    assert sections[0]["text"]["text"] == "Backing up *churn-model@3* before deletion: 12 files."
    fields = [f["text"] for f in sections[1]["fields"]]
    assert fields == [
        "*Phase*\nbackup",
        "*Status*\n:arrow_forward: started",
        "*Next step*\napprove deletion",
        "*When*\n2030-01-01T14:00:00Z (in 2 hours)",
    ]
    [actions] = block(body["blocks"], "actions")
    [button] = actions["elements"]
    assert button["text"]["text"] == "Open in Prefect" and button["url"] == UI_URL
    assert receipt.thread == slack.messages[0]["ts"] == "1700000000.000200"


def test_no_button_without_a_ui_url(slack: FakeSlack) -> None:
    receipt = notifier(make_settings(slack)).post(event(ui_url=None, next_at=None, next_step=None))

    assert receipt.delivered
    blocks = slack.calls("chat.postMessage")[0].body["blocks"]
    assert block(blocks, "actions") == []
    fields = [f["text"] for f in block(blocks, "section")[1]["fields"]]
    assert fields[2:] == ["*Next step*\nnone", "*When*\n2030-01-01T12:00:00Z (just now)"]


def test_one_thread_per_retirement_and_alarming_replies_broadcast(slack: FakeSlack) -> None:
    bot = notifier(make_settings(slack))
    first = bot.post(event(NotificationStatus.STARTED))
    assert first.thread is not None

    statuses = [
        NotificationStatus.DONE,
        NotificationStatus.SCHEDULED,
        NotificationStatus.FAILED,
        NotificationStatus.HALTED,
        NotificationStatus.ALERT,
        NotificationStatus.AWAITING_APPROVAL,
    ]
    receipts = [bot.post(event(status), thread=first.thread) for status in statuses]

    assert all(r.delivered and r.thread == first.thread for r in receipts)
    replies = slack.calls("chat.postMessage")[1:]
    assert [r.body["thread_ts"] for r in replies] == [first.thread] * len(statuses)
    assert [bool(r.body.get("reply_broadcast")) for r in replies] == [False, False, True, True, True, True]
    posted = [float(m["ts"]) for m in slack.messages]
    assert posted == sorted(posted) and len(set(posted)) == len(posted)


def test_rate_limited_post_waits_retry_after_then_delivers(slack: FakeSlack, monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []
    real_sleep = builtin_handlers.time.sleep

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(builtin_handlers, "time", SimpleNamespace(sleep=sleep))
    slack.rate_limit(1, retry_after=1)

    receipt = notifier(make_settings(slack)).post(event())

    assert receipt.delivered and receipt.attempts == 2
    assert len(slack.calls("chat.postMessage")) == 2
    assert len(waits) == 1 and waits[0] >= 1


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_error_is_retried_then_delivered(slack: FakeSlack, status: int) -> None:
    slack.fail(1, status=status)

    receipt = notifier(make_settings(slack)).post(event())

    assert receipt.delivered and receipt.attempts == 2 and receipt.thread is not None
    assert len(slack.calls("chat.postMessage")) == 2
    assert len(slack.messages) == 1


def test_retries_exhausted_is_an_undelivered_receipt(slack: FakeSlack, caplog: pytest.LogCaptureFixture) -> None:
    slack.fail(100, status=500)

    receipt = notifier(make_settings(slack, max_retries=2)).post(event())

    assert not receipt.delivered and receipt.attempts == 3
    assert receipt.error is not None and "HTTP 500" in receipt.error
    assert len(slack.calls("chat.postMessage")) == 3
    assert "not delivered after 3 attempt(s)" in caplog.text


@pytest.mark.parametrize("problem", ["invalid_auth", "channel_not_found"])
def test_slack_errors_are_named_and_the_token_is_never_shown(
    slack: FakeSlack, caplog: pytest.LogCaptureFixture, problem: str
) -> None:
    caplog.set_level(logging.DEBUG)
    token = "xoxb-999999999999-8888888888888-WrongTokenValue00"
    if problem == "invalid_auth":
        settings = make_settings(slack, bot_token=SecretStr(token))
    else:
        token = slack.token
        settings = make_settings(slack)
        slack.error("channel_not_found")

    receipt = notifier(settings).post(event())

    assert not receipt.delivered and receipt.attempts == 1
    assert receipt.error is not None and problem in receipt.error
    assert len(slack.calls("chat.postMessage")) == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("retirement.notify")]
    assert len(warnings) == 1 and problem in warnings[0].getMessage()
    assert token not in receipt.model_dump_json()
    assert token not in caplog.text
    assert token not in repr(settings)


def test_slack_down_returns_undelivered_without_raising(slack: FakeSlack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    settings = make_settings(slack, max_retries=2)
    slack.down()

    receipt = notifier(settings).post(event())

    assert not receipt.delivered and receipt.attempts == 3
    assert receipt.error is not None and "refused" in receipt.error.lower()
    assert slack.token not in caplog.text and slack.token not in receipt.model_dump_json()


def test_secrets_in_event_text_never_reach_slack(slack: FakeSlack) -> None:
    leaked = "sk-proj-ABCDEFGHIJKLMNOP1234"
    notifier(make_settings(slack)).post(event(text=f"export failed with key {leaked}", next_step=f"rotate {leaked}"))

    assert leaked not in json.dumps(slack.calls("chat.postMessage")[0].body)
    assert "[redacted]" in slack.calls("chat.postMessage")[0].body["blocks"][1]["text"]["text"]


def test_webhook_mode_posts_the_same_blocks_without_threads(slack: FakeSlack) -> None:
    hook = notifier(SlackSettings(webhook_url=SecretStr(slack.webhook_url), retry_backoff_seconds=0.01))
    assert hook.mode == "webhook"

    first = hook.post(event())
    second = hook.post(event(NotificationStatus.FAILED), thread="1700000000.000200")

    assert first.delivered and second.delivered
    assert first.thread is None and second.thread is None
    assert slack.calls("chat.postMessage") == []
    calls = slack.webhook_calls()
    assert [c.path for c in calls] == [WEBHOOK_PATH, WEBHOOK_PATH]
    assert "Authorization" not in calls[0].headers
    [header] = block(calls[0].body["blocks"], "header")
    assert header["text"]["text"] == ":arrow_forward: churn-model@3 · backup · STARTED"
    assert block(calls[0].body["blocks"], "actions")[0]["elements"][0]["url"] == UI_URL
    assert "thread_ts" not in calls[1].body


def test_webhook_failure_names_the_error_and_hides_the_url(slack: FakeSlack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    slack.error("channel_not_found")
    hook = notifier(SlackSettings(webhook_url=SecretStr(slack.webhook_url), retry_backoff_seconds=0.01))
    slack.fail(1, status=503)

    receipt = hook.post(event())

    assert not receipt.delivered and receipt.attempts == 2
    assert receipt.error == "HTTP 404: channel_not_found"
    secret = WEBHOOK_PATH.rsplit("/", 1)[-1]
    assert secret not in caplog.text and secret not in receipt.model_dump_json()


@pytest.mark.parametrize(
    ("when", "words"),
    [
        (NOW + timedelta(seconds=20), "just now"),
        (NOW + timedelta(minutes=1), "in 1 minute"),
        (NOW + timedelta(hours=5, minutes=59), "in 5 hours"),
        (NOW - timedelta(days=3, hours=1), "3 days ago"),
        (NOW.replace(tzinfo=None) + timedelta(days=1), "in 1 day"),
    ],
)
def test_relative_time_words(when: datetime, words: str) -> None:
    assert relative_time(when, NOW) == words


def test_get_notifier_picks_by_configuration(slack: FakeSlack, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(get_notifier(), ConsoleNotifier)

    monkeypatch.setenv("RETIRE_SLACK_WEBHOOK_URL", slack.webhook_url)
    hook = get_notifier()
    assert isinstance(hook, SlackNotifier) and hook.mode == "webhook"

    monkeypatch.setenv("RETIRE_SLACK_BOT_TOKEN", slack.token)
    monkeypatch.setenv("RETIRE_SLACK_CHANNEL", "#model-retirements")
    monkeypatch.setenv("RETIRE_SLACK_BASE_URL", slack.base_url)
    bot = get_notifier()
    assert isinstance(bot, SlackNotifier) and bot.mode == "bot"
    assert isinstance(bot, Notifier) and bot.name == "slack"
    assert bot.post(event()).delivered
    assert len(slack.calls("chat.postMessage")) == 1


@pytest.mark.parametrize("channel", [None, ""])
def test_token_without_channel_is_a_config_error(slack: FakeSlack, channel: str | None) -> None:
    settings = SlackSettings(bot_token=SecretStr(slack.token), channel=channel)

    with pytest.raises(ConfigError, match="RETIRE_SLACK_CHANNEL") as raised:
        get_notifier(settings)
    assert slack.token not in str(raised.value)
    with pytest.raises(ConfigError, match="RETIRE_SLACK_CHANNEL"):
        SlackNotifier(settings)


def test_an_injected_client_gets_the_notifiers_retries(slack: FakeSlack) -> None:
    client = WebClient(token=slack.token, base_url=slack.base_url)
    bot = SlackNotifier(make_settings(slack, bot_token=None), client=client)
    slack.fail(1, status=500)

    receipt = bot.post(event())

    assert receipt.delivered and receipt.attempts == 2
    assert len(slack.calls("chat.postMessage")) == 2


def test_fake_slack_speaks_form_and_json_bodies_and_checks_the_token(slack: FakeSlack) -> None:
    client = WebClient(token=slack.token, base_url=slack.base_url)
    assert client.auth_test()["user_id"] == "U00000000"
    form = client.api_call("chat.postMessage", params={"channel": "C1", "text": "form body"})
    as_json = client.chat_postMessage(channel="C1", text="json body", thread_ts=form["ts"])
    assert float(as_json["ts"]) > float(form["ts"])
    assert as_json["message"]["thread_ts"] == form["ts"]
    bodies = [c.body for c in slack.calls("chat.postMessage")]
    assert bodies[0] == {"channel": "C1", "text": "form body"}
    assert bodies[1]["text"] == "json body"

    with pytest.raises(SlackApiError) as raised:
        WebClient(token="xoxb-not-the-right-one", base_url=slack.base_url).auth_test()
    assert raised.value.response["error"] == "invalid_auth"
