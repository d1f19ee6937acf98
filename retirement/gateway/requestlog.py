"""The gateway's request log: every predict request, and a heartbeat every second while the gateway is up.

Rows are written by one background thread from a queue (flushed at least every 200 ms) so a
request never waits on the disk. Heartbeats go through the same queue, behind the requests, so
a heartbeat in the log means every request queued before it is in the log too: a reader that
sees heartbeats over a window has seen every request of that window.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, Field

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    model TEXT NOT NULL,
    requested TEXT NOT NULL,
    version TEXT,
    status INTEGER NOT NULL,
    latency_ms REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_by_version ON requests (model, version, at);
CREATE INDEX IF NOT EXISTS requests_by_requested ON requests (model, requested, at);
CREATE INDEX IF NOT EXISTS requests_by_time ON requests (at);
CREATE TABLE IF NOT EXISTS heartbeats (
    at REAL NOT NULL,
    session TEXT NOT NULL,
    pid INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS heartbeats_by_time ON heartbeats (at);
"""


class RequestRecord(BaseModel):
    """One predict request as the gateway answered it."""

    at: datetime = Field(description="When the request arrived (UTC).")
    model: str = Field(description="The model name in the request path.")
    requested: str = Field(description="The alias or version the request named, e.g. 'production' or '3'.")
    version: str | None = Field(
        default=None,
        description="The version it resolved to; the requested version when it named one that is gone; "
        "None for an unknown alias.",
    )
    status: int = Field(description="HTTP status of the answer.")
    latency_ms: float = Field(description="Time to answer, in milliseconds.")


class RequestStats(BaseModel):
    """Counts for one model version over a window."""

    requests: int = Field(description="Requests that resolved to or named the version, any status.")
    errors: int = Field(description="Of those, answers with status >= 500.")
    p95_latency_ms: float | None = Field(default=None, description="95th percentile latency (nearest rank).")


@dataclass
class _Flush:
    done: threading.Event


def _epoch(value: datetime, field: str) -> float:
    if value.tzinfo is None:
        raise ValueError(f"{field} is a naive datetime; a timezone-aware one (UTC) is needed")
    return value.timestamp()


class RequestLog:
    """The request log at ``<root>/requests.db``; writing starts with ``start()``, reading works any time.

    Args:
        root: the local platform's root.
        flush_interval: longest time a request waits in the queue (seconds).
        heartbeat_interval: time between two heartbeats while started (seconds).
    """

    def __init__(self, root: Path, *, flush_interval: float = 0.2, heartbeat_interval: float = 1.0) -> None:
        self.root = Path(root).expanduser()
        self.path = self.root / "requests.db"
        self.flush_interval = flush_interval
        self.heartbeat_interval = heartbeat_interval
        self.session = uuid.uuid4().hex
        self._queue: queue.Queue[RequestRecord | _Flush | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- writing -------------------------------------------------------------------------------

    def _connect(self, create: bool) -> sqlite3.Connection:
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        elif not self.path.exists():
            raise FileNotFoundError(f"no request log at {self.path}: the gateway has never run with this root")
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        conn.execute("PRAGMA busy_timeout = 30000")
        # NORMAL is safe in WAL mode: a power cut may lose the last rows, never corrupt the log; a lost
        # heartbeat only lowers coverage, which errs towards NODATA.
        conn.execute("PRAGMA synchronous = NORMAL")
        if create:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.executescript(_SCHEMA)
        return conn

    def start(self) -> RequestLog:
        """Create the log if needed and start the writer thread (heartbeats begin at once). Idempotent."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return self
            conn = self._connect(create=True)
            try:
                self._heartbeat(conn)
            finally:
                conn.close()
            self._thread = threading.Thread(target=self._run, name="request-log-writer", daemon=True)
            self._thread.start()
        return self

    @property
    def running(self) -> bool:
        """True while the writer thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def record(self, record: RequestRecord) -> None:
        """Queue one request for writing (returns at once)."""
        self._queue.put(record)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far is written; False if the writer is not running or too slow."""
        if not self.running:
            return False
        marker = _Flush(threading.Event())
        self._queue.put(marker)
        return marker.done.wait(timeout)

    def close(self) -> None:
        """Write what is queued, a last heartbeat, and stop the writer thread."""
        with self._lock:
            thread = self._thread
            if thread is None:
                return
            self._queue.put(None)
            thread.join(timeout=30)
            self._thread = None

    def _heartbeat(self, conn: sqlite3.Connection) -> float:
        now = time.time()
        conn.execute("INSERT INTO heartbeats (at, session, pid) VALUES (?, ?, ?)", (now, self.session, os.getpid()))
        return now

    def _run(self) -> None:
        conn = self._connect(create=True)
        last_beat = time.time()
        try:
            while True:
                batch: list[RequestRecord] = []
                markers: list[_Flush] = []
                stop = False
                deadline = time.monotonic() + self.flush_interval
                while True:
                    wait = deadline - time.monotonic()
                    if wait <= 0:
                        break
                    try:
                        item = self._queue.get(timeout=wait)
                    except queue.Empty:
                        break
                    if item is None:
                        stop = True
                        break
                    if isinstance(item, _Flush):
                        markers.append(item)
                        break
                    batch.append(item)
                try:
                    self._write(conn, batch)
                    if stop or time.time() - last_beat >= self.heartbeat_interval:
                        last_beat = self._heartbeat(conn)
                except sqlite3.Error:
                    logger.exception("request log %s: could not write %d rows", self.path, len(batch))
                for marker in markers:
                    marker.done.set()
                if stop:
                    return
        finally:
            conn.close()

    @staticmethod
    def _write(conn: sqlite3.Connection, batch: list[RequestRecord]) -> None:
        if not batch:
            return
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT INTO requests (at, model, requested, version, status, latency_ms) VALUES (?, ?, ?, ?, ?, ?)",
                [(r.at.timestamp(), r.model, r.requested, r.version, r.status, r.latency_ms) for r in batch],
            )

    # -- reading -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        conn = self._connect(create=False)
        try:
            yield conn
        finally:
            conn.close()

    def stats(self, model: str, version: str | None, start: datetime, end: datetime) -> RequestStats:
        """Requests that resolved to or named ``model@version`` (any version when None) over ``[start, end)``.

        Raises:
            FileNotFoundError: there is no log (the gateway never ran here).
            sqlite3.Error: the log cannot be read.
        """
        t0, t1 = _epoch(start, "start"), _epoch(end, "end")
        if version is None:
            where, args = "model = ? AND at >= ? AND at < ?", [model, t0, t1]
        else:
            where = "model = ? AND (version = ? OR requested = ?) AND at >= ? AND at < ?"
            args = [model, version, version, t0, t1]
        with self._reader() as conn:
            count, errors = conn.execute(
                f"SELECT COUNT(*), COALESCE(SUM(status >= 500), 0) FROM requests WHERE {where}", args
            ).fetchone()
            p95 = None
            if count:
                rank = max(0, -(-95 * count // 100) - 1)
                row = conn.execute(
                    f"SELECT latency_ms FROM requests WHERE {where} ORDER BY latency_ms LIMIT 1 OFFSET ?", [*args, rank]
                ).fetchone()
                p95 = row[0] if row else None
        return RequestStats(requests=count, errors=errors, p95_latency_ms=p95)

    def coverage(self, start: datetime, end: datetime, gap_seconds: float = 5.0, now: float | None = None) -> float:
        """Share of ``[start, end)`` the gateway observed: spans between heartbeats at most ``gap_seconds`` apart.

        The part of the window after ``now`` (default: the current time) is not covered.

        Raises:
            FileNotFoundError: there is no log (the gateway never ran here).
            sqlite3.Error: the log cannot be read.
        """
        t0, t1 = _epoch(start, "start"), _epoch(end, "end")
        if t1 <= t0:
            return 0.0
        limit = min(t1, time.time() if now is None else now)
        with self._reader() as conn:
            beats = [
                r[0]
                for r in conn.execute(
                    "SELECT at FROM heartbeats WHERE at >= ? AND at <= ? ORDER BY at",
                    (t0 - gap_seconds, limit + gap_seconds),
                )
            ]
        covered = 0.0
        for earlier, later in itertools.pairwise(beats):
            if later - earlier > gap_seconds:
                continue
            lo, hi = max(earlier, t0), min(later, limit)
            if hi > lo:
                covered += hi - lo
        return min(1.0, covered / (t1 - t0))

    def recent(self, limit: int = 20, model: str | None = None) -> list[RequestRecord]:
        """The last ``limit`` requests (of ``model`` when given), oldest first."""
        where, args = ("WHERE model = ?", [model]) if model else ("", [])
        with self._reader() as conn:
            rows = conn.execute(
                f"SELECT at, model, requested, version, status, latency_ms FROM requests {where} "
                "ORDER BY id DESC LIMIT ?",
                [*args, limit],
            ).fetchall()
        return [
            RequestRecord(
                at=datetime.fromtimestamp(r[0], UTC),
                model=r[1],
                requested=r[2],
                version=r[3],
                status=r[4],
                latency_ms=r[5],
            )
            for r in reversed(rows)
        ]

    def last_heartbeat(self) -> datetime | None:
        """When the gateway (any gateway on this root) last wrote a heartbeat."""
        with self._reader() as conn:
            row = conn.execute("SELECT MAX(at) FROM heartbeats").fetchone()
        return None if row is None or row[0] is None else datetime.fromtimestamp(row[0], UTC)


__all__ = ["RequestLog", "RequestRecord", "RequestStats"]
