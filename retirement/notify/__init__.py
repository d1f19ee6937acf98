"""Notifiers: Slack when configured (bot token and channel, or incoming webhook), the console otherwise."""

from __future__ import annotations

from retirement.errors import ConfigError
from retirement.notify.base import Notifier
from retirement.notify.console import ConsoleNotifier
from retirement.notify.slack import SlackNotifier, SlackSettings


def get_notifier(settings: SlackSettings | None = None) -> Notifier:
    """The notifier the settings call for.

    Args:
        settings: Slack settings; read from the RETIRE_SLACK_* environment when None.

    Returns:
        A Slack bot notifier (threads) when a bot token and a channel are set, a Slack webhook
        notifier when only RETIRE_SLACK_WEBHOOK_URL is set, and a console notifier otherwise.

    Raises:
        ConfigError: a bot token without RETIRE_SLACK_CHANNEL.
    """
    settings = settings if settings is not None else SlackSettings()
    if settings.bot_token is not None and not settings.channel:
        raise ConfigError(
            "RETIRE_SLACK_BOT_TOKEN is set but RETIRE_SLACK_CHANNEL is not: set RETIRE_SLACK_CHANNEL to the "
            "channel to post to (a channel ID such as C0123456789 or a name such as #model-retirements)"
        )
    if settings.bot_token is not None or settings.webhook_url is not None:
        return SlackNotifier(settings)
    return ConsoleNotifier()


__all__ = ["ConsoleNotifier", "Notifier", "SlackNotifier", "SlackSettings", "get_notifier"]
