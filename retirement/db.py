"""The database of retirements and the ledger: SQLite under RETIRE_HOME by default, PostgreSQL for many workers.

One engine per URL per process. The schema is created and migrated by the product (Alembic, run on
first use under a lock so two workers starting together never race on DDL); nobody runs SQL by hand.
SQLite write transactions start with ``BEGIN IMMEDIATE`` so two writers queue on the lock instead of
failing on a lock upgrade; PostgreSQL writers lock the rows they change (``SELECT ... FOR UPDATE``).
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    DateTime,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    text,
)
from sqlalchemy.engine import make_url

from retirement.errors import ConfigError

metadata = MetaData()

retirements = Table(
    "retirements",
    metadata,
    Column("id", String(120), primary_key=True),
    Column("model_key", String(400), nullable=False, index=True),
    Column("status", String(32), nullable=False, index=True),
    Column("phase", String(32), nullable=False),
    Column("version", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("data", Text, nullable=False),
    Index("ix_retirements_status_created", "status", "created_at"),
)

# One row per model being retired: the unique key is the one-retirement-per-model rule.
claims = Table(
    "claims",
    metadata,
    Column("model_key", String(400), primary_key=True),
    Column("retirement_id", String(120), nullable=False),
    Column("claimed_at", DateTime(timezone=True), nullable=False),
)

flow_runs = Table(
    "flow_runs",
    metadata,
    Column("flow_run_id", String(64), primary_key=True),
    Column("retirement_id", String(120), nullable=False, index=True),
)

ledger = Table(
    "ledger",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("at", String(40), nullable=False),
    Column("retirement_id", String(120), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("action", String(120), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("reference", String(400)),
    Column("detail", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Index("ix_ledger_retirement_action", "retirement_id", "action", "kind", "seq"),
)

# The chain head: one row, locked by every append, so an append never reads the ledger itself.
ledger_head = Table(
    "ledger_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", Integer, nullable=False),
    Column("hash", String(64), nullable=False),
)

meta = Table(
    "meta",
    metadata,
    Column("key", String(100), primary_key=True),
    Column("value", Text, nullable=False),
)

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def _forget_after_fork() -> None:
    # A forked child must not use its parent's pooled connections (SQLAlchemy's documented recipe).
    for engine in _engines.values():
        engine.dispose(close=False)
    _engines.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


def is_postgres(engine: Engine) -> bool:
    """True on PostgreSQL (row locks with FOR UPDATE); False on SQLite (the database lock)."""
    return engine.dialect.name == "postgresql"


def safe_url(url: str) -> str:
    """The URL with its password hidden, for messages."""
    return make_url(url).render_as_string(hide_password=True)


@contextmanager
def reading(engine: Engine) -> Iterator[Connection]:
    """A connection for reads only (on SQLite a plain BEGIN: readers never wait for the write lock)."""
    with engine.connect() as conn:
        conn.execution_options(retire_readonly=True)
        try:
            yield conn
        finally:
            conn.rollback()


def engine_for(url: str) -> Engine:
    """The engine of ``url`` (one per process), its schema migrated to the newest version.

    Raises:
        ConfigError: the URL names a database this product cannot use.
    """
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _create(url)
            migrate(engine)
            _engines[url] = engine
        return engine


def dispose_all() -> None:
    """Close every pooled connection (tests, and before a process forks)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def _create(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:"):
            raise ConfigError("RETIRE_DATABASE_URL: an in-memory SQLite database cannot be shared; name a file")
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        # A pooled connection keeps the write-ahead log open: closing the last one checkpoints and syncs it,
        # which cost about 40% of every ledger append with a connection per operation.
        engine = create_engine(parsed, pool_size=2, max_overflow=8, connect_args={"timeout": 60})

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")  # one machine, local disk: see README for many hosts
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA busy_timeout=60000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            readonly = conn.get_execution_options().get("retire_readonly")
            conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")

        return engine
    if parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        try:
            return create_engine(parsed, pool_pre_ping=True, pool_size=2, max_overflow=4, pool_recycle=600)
        except ModuleNotFoundError as exc:
            raise ConfigError(
                f"RETIRE_DATABASE_URL names PostgreSQL but its driver is missing ({exc.name}): "
                "pip install 'model-retirement[postgres]'"
            ) from None
    raise ConfigError(
        f"RETIRE_DATABASE_URL: unsupported database {parsed.get_backend_name()!r} "
        "(allowed: sqlite:///PATH, postgresql://USER:PASSWORD@HOST:PORT/DB)"
    )


_MIGRATION_LOCK = 0x5245_5449  # "RETI": the advisory lock two workers take before migrating


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest version (Alembic), under a lock so concurrent starts do not race."""
    logging.getLogger("alembic").setLevel(logging.WARNING)  # a migration is routine; its steps are not news
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    if is_postgres(engine):
        with engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
        return
    database = make_url(str(engine.url)).database or ""
    with open(f"{database}.migrate.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            with engine.connect() as conn:
                config.attributes["connection"] = conn
                command.upgrade(config, "head")
                conn.commit()
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
