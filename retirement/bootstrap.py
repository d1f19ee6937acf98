"""Wiring: the adapters one retirement uses, built from settings in one place (tests swap the factory)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

from retirement.anchor import Anchor, load_private_key
from retirement.backup.base import BackupStore
from retirement.backup.filesystem import FilesystemBackupStore
from retirement.backup.s3 import S3BackupStore, parse_backup_url
from retirement.errors import ConfigError, UnknownNameError
from retirement.ledger import Ledger
from retirement.notify.base import Notifier
from retirement.platforms import Platform, get_platform
from retirement.settings import RetireSettings
from retirement.state import StateStore
from retirement.traffic.base import TrafficSource

# Traffic sources other than a platform's own, by name -> "module:factory(settings) -> TrafficSource".
_TRAFFIC_SOURCES: dict[str, str] = {
    "prometheus": "retirement.traffic.prometheus:build",
}


@dataclass
class Services:
    """Everything the phases of one retirement talk to."""

    settings: RetireSettings
    platform: Platform
    traffic: list[TrafficSource]
    backups: BackupStore
    ledger: Ledger
    notifier: Notifier
    states: StateStore
    extras: dict[str, object] = field(default_factory=dict)
    anchor: Anchor | None = None

    def close(self) -> None:
        """Release clients held by the adapters."""
        self.platform.close()
        for source in self.traffic:
            closer = getattr(source, "close", None)
            if callable(closer):
                closer()


def traffic_sources(names: list[str], platform: Platform, settings: RetireSettings) -> list[TrafficSource]:
    """The sources named in a request; the platform's own when none are named.

    Raises:
        UnknownNameError: a name that is neither the platform's own source nor a known one.
    """
    if not names:
        return [platform.traffic] if platform.traffic is not None else []
    sources: list[TrafficSource] = []
    for name in names:
        if platform.traffic is not None and name in (platform.name, platform.traffic.name):
            sources.append(platform.traffic)
            continue
        target = _TRAFFIC_SOURCES.get(name)
        if target is None:
            valid = set(_TRAFFIC_SOURCES) | ({platform.traffic.name} if platform.traffic else set())
            raise UnknownNameError("traffic_sources", name, valid)
        module_name, _, attr = target.partition(":")
        sources.append(getattr(importlib.import_module(module_name), attr)(settings))
    return sources


_imported: set[str] = set()


def stores(settings: RetireSettings) -> tuple[Ledger, StateStore]:
    """The ledger and the state store of the database in force (state files from before it imported once)."""
    from retirement import db

    url = settings.database
    engine = db.engine_for(url)
    ledger = Ledger(engine, name=db.safe_url(url))
    states = StateStore(engine, ledger)
    if url not in _imported:
        states.import_files(settings.state_dir, settings.ledger_file)
        _imported.add(url)
    return ledger, states


def anchor(settings: RetireSettings) -> Anchor:
    """Where the ledger's checkpoints go, signed when RETIRE_LEDGER_SIGNING_KEY is set."""
    key = settings.ledger_signing_key.get_secret_value() if settings.ledger_signing_key else ""
    return Anchor(settings.checkpoint_dir, load_private_key(key) if key else None)


def backup_store(settings: RetireSettings, *, workers: int = 2) -> FilesystemBackupStore | S3BackupStore:
    """The backup store RETIRE_BACKUP_URL names: ``s3://BUCKET[/PREFIX]``, ``file:///PATH``, or (unset) the
    filesystem store under RETIRE_BACKUP_ROOT / RETIRE_HOME/backups.

    Raises:
        ConfigError: RETIRE_BACKUP_URL is not one of those, or it and RETIRE_BACKUP_ROOT name different places.
        ImportError: an ``s3://`` store without boto3 (the `s3` extra).
    """
    target = parse_backup_url(settings.backup_url)
    if target is None:
        return FilesystemBackupStore(settings.backup_dir, workers=workers)
    if settings.backup_root is not None and target.path != settings.backup_root.expanduser():
        raise ConfigError("RETIRE_BACKUP_URL and RETIRE_BACKUP_ROOT name different places: set only one of them")
    if target.path is None:
        return S3BackupStore.from_settings(target.bucket, target.prefix, workers=workers)
    return FilesystemBackupStore(target.path, workers=workers)


def default_services(platform_name: str, traffic_names: list[str]) -> Services:
    """Services from the environment: the named platform, RETIRE_HOME's store, ledger and states."""
    from retirement.notify import get_notifier

    settings = RetireSettings()
    platform = get_platform(platform_name, settings)
    ledger, states = stores(settings)
    return Services(
        settings=settings,
        platform=platform,
        traffic=traffic_sources(traffic_names, platform, settings),
        backups=backup_store(settings),
        ledger=ledger,
        notifier=get_notifier(),
        states=states,
        anchor=anchor(settings),
    )


ServicesFactory = Callable[[str, list[str]], Services]
_factory: ServicesFactory = default_services


def services(platform_name: str, traffic_names: list[str]) -> Services:
    """The services for a retirement on ``platform_name`` (from the current factory)."""
    return _factory(platform_name, traffic_names)


def use_factory(factory: ServicesFactory | None) -> None:
    """Replace how services are built (tests pass in-memory fakes); None restores the default."""
    global _factory
    _factory = factory or default_services
