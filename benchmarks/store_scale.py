"""Scale of the retirement store on SQLite and PostgreSQL: ledger append and find, state lookups, 10^3 to 10^6 rows."""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import pwd
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

from sqlalchemy import Connection, Engine, Table, create_engine, insert, select, text, update
from sqlalchemy.pool import NullPool

from retirement import db
from retirement.ledger import GENESIS, Ledger, _digest
from retirement.models import Approval, Phase, RetirementRequest
from retirement.state import OPEN, PhaseRecord, RetirementState, StateStore

PG_BIN = Path("/usr/lib/postgresql/15/bin")
LOOPBACK = "127.0.0.1"
BATCH = 10_000
T0 = datetime(2024, 1, 1, tzinfo=UTC)
RUN_NS = uuid.UUID("6f1c2a9e-3b7d-4e55-9a0c-1d2e3f405162")

# Where the retirements stand: (status, phase, share in percent). Most are finished, a sixth are open.
MIX: tuple[tuple[str, Phase, int], ...] = (
    ("done", Phase.DONE, 70),
    ("cancelled", Phase.STAGING, 10),
    ("halted", Phase.TRAFFIC_WINDOW, 4),
    ("running", Phase.BACKUP, 8),
    ("waiting", Phase.TRAFFIC_WINDOW, 5),
    ("awaiting_approval", Phase.DELETE, 3),
)
BUCKETS: list[int] = [k for k, (_, _, share) in enumerate(MIX) for _ in range(share)]

# The ledger of one retirement from open to close: (kind, action, actor).
SCRIPT: tuple[tuple[str, str, str], ...] = (
    ("decision", "open", "alice"),
    ("notice", "notify", "system"),
    ("decision", "gate:approve-plan", "bob"),
    ("intent", "stage", "system"),
    ("outcome", "stage", "system"),
    ("intent", "cutover", "system"),
    ("outcome", "cutover", "system"),
    ("outcome", "traffic", "system"),
    ("intent", "backup", "system"),
    ("outcome", "backup", "system"),
    ("decision", "gate:approve-deletion", "carol"),
    ("intent", "delete", "system"),
    ("outcome", "delete", "system"),
    ("notice", "monitor", "system"),
    ("notice", "monitor", "system"),
    ("decision", "close", "system"),
)
FOUND = [(kind, action) for kind, action, _ in SCRIPT if kind in ("intent", "outcome") and action != "traffic"]

COLUMNS = ("append median ms", "append p95 ms", "find ms", "load ms", "by_flow_run ms", "by_status ms")


# --- synthetic rows -------------------------------------------------------------------------------


def name_of(i: int) -> str:
    return f"model-{i:07d}"


def rid(i: int) -> str:
    """The id of retirement ``i``, as new_retirement_id would make it (the random tail derived from ``i``)."""
    return f"ret-{name_of(i)}-7-{(i * 0x9E3779B1 + 0x7F4A7C15) & 0xFFFFFF:06x}"


def runs_of(i: int) -> int:
    return (1, 2, 2, 3)[i % 4]


def run_id(i: int, j: int) -> str:
    return str(uuid.uuid5(RUN_NS, f"{i}/{j}"))


def status_of(i: int) -> int:
    return BUCKETS[(i * 37) % 100]


def created_of(i: int) -> datetime:
    return T0 + timedelta(seconds=30 * i, microseconds=1 + i % 999_999)


_SENT_ID = "ret-sentinel-7-000000"
_SENT_NAME = "sentinelmodel"
_SENT_TIME = datetime(2001, 2, 3, 4, 5, 6, 789_012, tzinfo=UTC)
_SENT_TIME_JSON = "2001-02-03T04:05:06.789012Z"


def _templates() -> list[str]:
    """RetirementState JSON per status, with sentinels for the id, the model name and the times."""
    order = list(Phase)
    out = []
    for status, phase, _ in MIX:
        request = RetirementRequest(
            model=f"{_SENT_NAME}@7",
            replacement=f"{_SENT_NAME}@8",
            requester="alice",
            approvers=["bob", "carol"],
            reason="v8 replaces v7; v7 has served no traffic since the cutover",
            traffic_sources=["local"],
        )
        done = order[: order.index(phase)]
        state = RetirementState(
            id=_SENT_ID,
            request=request,
            created_at=_SENT_TIME,
            status=status,  # type: ignore[arg-type]
            status_reason={"halted": "traffic seen on v7", "waiting": "traffic window open"}.get(status, ""),
            phase=phase,
            history=[PhaseRecord(phase=p, started_at=_SENT_TIME, ended_at=_SENT_TIME, outcome="ok") for p in done]
            + [PhaseRecord(phase=phase, started_at=_SENT_TIME)],
            approvals=[Approval(gate="approve-plan", decision="approve", approver="bob", at=_SENT_TIME)],
            scheduled={p.value: 1 for p in done},
            slack_thread="1700000000.000100",
            version=1,
        )
        out.append(state.model_dump_json())
        if _SENT_TIME_JSON not in out[-1]:
            raise SystemExit(f"the state template does not render times as {_SENT_TIME_JSON}")
    return out


@dataclass
class Filled:
    """What one database holds so far (the fill continues from here at the next size)."""

    retirements: int = 0
    ledger: int = 0
    head: str = GENESIS
    next_ret: int = 0  # retirement whose ledger script is being written
    next_step: int = 0
    templates: list[str] = field(default_factory=_templates)


def retirement_rows(filled: Filled, n: int) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]], dict | None]]:
    for i in range(filled.retirements, n):
        status, phase, _ = MIX[status_of(i)]
        created = created_of(i)
        stamp = created.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        data = (
            filled.templates[status_of(i)]
            .replace(_SENT_ID, rid(i))
            .replace(_SENT_NAME, name_of(i))
            .replace(_SENT_TIME_JSON, stamp)
        )
        key = f"local:{name_of(i)}@7"
        row = {
            "id": rid(i),
            "model_key": key,
            "status": status,
            "phase": phase.value,
            "version": 1,
            "created_at": created,
            "updated_at": created + timedelta(hours=1),
            "data": data,
        }
        runs = [{"flow_run_id": run_id(i, j), "retirement_id": rid(i)} for j in range(runs_of(i))]
        claim = {"model_key": key, "retirement_id": rid(i), "claimed_at": created} if status in OPEN else None
        yield row, runs, claim


def _detail(i: int, step: int) -> dict[str, Any]:
    kind, action, _ = SCRIPT[step]
    detail: dict[str, Any] = {"flow_run": run_id(i, min(step // 6, runs_of(i) - 1)), "step": step}
    if action == "backup" and kind == "outcome":
        detail.update(location=f"file:///srv/backups/{rid(i)}", sha256=f"{i:064x}", files=3, bytes=1_234_567_890)
    elif action == "traffic":
        detail.update(requests=0, window_hours=48.0, sources=["local"])
    elif action.startswith("gate:"):
        detail.update(decision="approve", comment="")
    elif action == "delete" and kind == "outcome":
        detail.update(receipt=f"{rid(i)}/receipt.json", deleted=["model", "artifacts"])
    return detail


def ledger_rows(filled: Filled, n: int) -> Iterator[dict[str, Any]]:
    """Entries ``filled.ledger + 1`` .. ``n``, chained exactly as Ledger.append_in chains them."""
    while filled.ledger < n:
        seq = filled.ledger + 1
        i, step = filled.next_ret, filled.next_step
        kind, action, actor = SCRIPT[step]
        entry: dict[str, Any] = {
            "seq": seq,
            "at": (T0 + timedelta(seconds=10 * seq, microseconds=seq % 999_983 + 1)).isoformat(),
            "retirement_id": rid(i),
            "kind": kind,
            "action": action,
            "actor": actor,
            "reference": f"{name_of(i)}@7",
            "detail": _detail(i, step),
            "prev_hash": filled.head,
        }
        entry["hash"] = _digest(entry)
        filled.ledger, filled.head = seq, entry["hash"]
        filled.next_ret, filled.next_step = (i, step + 1) if step + 1 < len(SCRIPT) else (i + 1, 0)
        yield {**entry, "detail": _json(entry["detail"])}


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


# --- bulk writes ----------------------------------------------------------------------------------


def write(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """Many rows in one statement: COPY on PostgreSQL, one executemany on SQLite."""
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        cols = list(rows[0])
        raw = conn.connection.driver_connection
        with raw.cursor() as cur, cur.copy(f"COPY {table.name} ({', '.join(cols)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row([row[c] for c in cols])
    else:
        conn.execute(insert(table), rows)


def batched(items: Iterable[Any], size: int = BATCH) -> Iterator[list[Any]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def fill(engine: Engine, filled: Filled, n: int) -> None:
    """Grow the retirements (with flow runs and claims) and the ledger (with its head) to ``n`` rows each."""
    for chunk in batched(retirement_rows(filled, n)):
        with engine.begin() as conn:
            write(conn, db.retirements, [row for row, _, _ in chunk])
            write(conn, db.flow_runs, [run for _, runs, _ in chunk for run in runs])
            write(conn, db.claims, [claim for _, _, claim in chunk if claim is not None])
        filled.retirements += len(chunk)
    with engine.connect() as conn:
        seq, head = conn.execute(select(db.ledger_head.c.seq, db.ledger_head.c.hash)).one()
    if (seq, head) != (filled.ledger, filled.head):
        raise SystemExit(f"ledger head moved under the benchmark: {seq} {head}")
    for chunk in batched(ledger_rows(filled, n)):
        with engine.begin() as conn:
            write(conn, db.ledger, chunk)
            conn.execute(
                update(db.ledger_head).where(db.ledger_head.c.id == 1).values(seq=filled.ledger, hash=filled.head)
            )
    if engine.dialect.name == "postgresql":  # what autovacuum does after a load, done now so runs agree
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
    else:  # no ANALYZE (the product never runs it); outside a transaction, as SQLAlchemy emits BEGIN itself
        raw = engine.raw_connection()
        try:
            raw.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            raw.close()


# --- measurements ---------------------------------------------------------------------------------


def timed(call: Callable[[int], object], reps: int, warmup: int) -> list[float]:
    """Milliseconds of ``call(k)`` for k in 0..reps-1, after ``warmup`` unmeasured calls."""
    for k in range(warmup):
        call(-1 - k)
    out = []
    for k in range(reps):
        started = time.perf_counter()
        call(k)
        out.append((time.perf_counter() - started) * 1000)
    return out


def fsync_ms(folder: str, reps: int = 50) -> float:
    """Median milliseconds of one 4 KiB write and fsync in ``folder``: what every durable commit waits for."""
    fd, path = tempfile.mkstemp(dir=folder)
    try:
        took = []
        for _ in range(reps):
            os.write(fd, b"x" * 4096)
            started = time.perf_counter()
            os.fsync(fd)
            took.append((time.perf_counter() - started) * 1000)
        return statistics.median(took)
    finally:
        os.close(fd)
        os.unlink(path)


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[18]


def measure(engine: Engine, filled: Filled, reps: int, seed: int) -> dict[str, list[float]]:
    """Milliseconds per call of each operation (``reps`` calls, a tenth of that for by_status)."""
    ledger = Ledger(engine)
    store = StateStore(engine, ledger)
    rng = random.Random(seed)
    n_ret = filled.retirements
    complete = filled.next_ret  # retirements whose ledger script is complete

    def append(k: int) -> None:
        i = rng.randrange(n_ret)
        ledger.append(
            rid(i), "notice", "monitor", reference=f"{name_of(i)}@7", detail={"check": k, "requests": 0, "days": 7}
        )

    def find(_k: int) -> None:
        i = rng.randrange(complete)
        kind, action = rng.choice(FOUND)
        if ledger.find(rid(i), action, kind) is None:
            raise SystemExit(f"ledger find: no {kind} {action} for {rid(i)}")

    def load(_k: int) -> None:
        i = rng.randrange(n_ret)
        if store.load(rid(i)).id != rid(i):
            raise SystemExit(f"load returned another retirement than {rid(i)}")

    def by_flow_run(_k: int) -> None:
        i = rng.randrange(n_ret)
        found = store.by_flow_run(run_id(i, rng.randrange(runs_of(i))))
        if found is None or found.id != rid(i):
            raise SystemExit(f"by_flow_run did not find {rid(i)}")

    expected = min(50, sum(1 for i in range(n_ret) if MIX[status_of(i)][0] == "running"))

    def by_status(_k: int) -> None:
        found = store.by_status(["running"], limit=50)
        if len(found) != expected:
            raise SystemExit(f"by_status returned {len(found)} retirements")

    out = {"append": timed(append, reps, warmup=5)}
    with engine.connect() as conn:
        filled.ledger, filled.head = conn.execute(select(db.ledger_head.c.seq, db.ledger_head.c.hash)).one()
    out["find"] = timed(find, reps, warmup=5)
    out["load"] = timed(load, reps, warmup=5)
    out["by_flow_run"] = timed(by_flow_run, reps, warmup=5)
    out["by_status"] = timed(by_status, max(reps // 10, 2), warmup=1)
    return out


def explain(engine: Engine) -> list[str]:
    """The plans of the read queries behind the numbers."""
    queries = {
        "find": select(db.ledger)
        .where(db.ledger.c.retirement_id == rid(0), db.ledger.c.action == "delete", db.ledger.c.kind == "outcome")
        .order_by(db.ledger.c.seq.desc())
        .limit(1),
        "load": select(db.retirements).where(db.retirements.c.id == rid(0)),
        "load runs": select(db.flow_runs.c.flow_run_id).where(db.flow_runs.c.retirement_id == rid(0)),
        "by_flow_run": select(db.flow_runs.c.retirement_id).where(db.flow_runs.c.flow_run_id == run_id(0, 0)),
        "by_status": select(db.retirements)
        .where(db.retirements.c.status.in_(["running"]))
        .order_by(db.retirements.c.created_at.desc())
        .limit(50),
    }
    prefix = "EXPLAIN " if db.is_postgres(engine) else "EXPLAIN QUERY PLAN "
    lines = []
    with engine.connect() as conn:
        for label, query in queries.items():
            sql = str(query.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))
            plan = conn.exec_driver_sql(prefix + sql).all()
            lines.append(f"  {label}: " + " | ".join(str(r[-1]).strip() for r in plan))
    return lines


# --- backends -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@contextlib.contextmanager
def sqlite_backend() -> Iterator[Callable[[str], str]]:
    root = Path(tempfile.mkdtemp(prefix="store-scale-sqlite-"))
    try:
        yield lambda name: f"sqlite:///{root / name}.db"
    finally:
        db.dispose_all()
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def postgres_backend() -> Iterator[Callable[[str], str]]:
    """A throwaway cluster: initdb as ``postgres`` in a temp dir, 127.0.0.1 on a free port, stopped by PID."""
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    root = Path(tempfile.mkdtemp(prefix="store-scale-pg-"))
    data, run, log = root / "data", root / "run", root / "postgres.log"
    run.mkdir()
    password = secrets.token_hex(16)
    pwfile = root / "pw"
    pwfile.write_text(password + "\n")
    pid = None
    try:
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            for path in (root, run, pwfile):
                os.chown(path, user.pw_uid, user.pw_gid)
        initdb = [str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "-E", "UTF8", "--no-locale"]
        subprocess.run(
            [*as_pg, *initdb, "--auth-local=peer", "--auth-host=scram-sha-256", f"--pwfile={pwfile}"],
            cwd=root,
            check=True,
            capture_output=True,
            timeout=180,
        )
        pwfile.unlink()
        port = free_port()
        with (data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"listen_addresses = '{LOOPBACK}'\nport = {port}\nunix_socket_directories = '{run}'\n"
                "max_connections = 20\nstatement_timeout = '600s'\nlog_min_messages = warning\n"
            )
        subprocess.run(
            [*as_pg, str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "90", "start"],
            cwd=root,
            check=True,
            capture_output=True,
            timeout=150,
            start_new_session=True,
        )
        pid = int((data / "postmaster.pid").read_text().split()[0])
        base = f"postgresql+psycopg://postgres:{password}@{LOOPBACK}:{port}"

        def url_for(name: str) -> str:
            admin = create_engine(f"{base}/postgres", poolclass=NullPool, isolation_level="AUTOCOMMIT")
            try:
                with admin.connect() as conn:
                    conn.execute(text(f'CREATE DATABASE "{name}"'))
            finally:
                admin.dispose()
            return f"{base}/{name}?connect_timeout=10"

        yield url_for
    finally:
        db.dispose_all()
        if pid is not None and _alive(pid):
            os.kill(pid, signal.SIGINT)  # fast shutdown
            deadline = time.monotonic() + 60
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if _alive(pid):
                os.kill(pid, signal.SIGQUIT)  # immediate shutdown
                time.sleep(2)
        shutil.rmtree(root, ignore_errors=True)


BACKENDS: dict[str, Callable[[], contextlib.AbstractContextManager[Callable[[str], str]]]] = {
    "sqlite": sqlite_backend,
    "postgres": postgres_backend,
}


# --- main -----------------------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run_backend(name: str, sizes: list[int], reps: int, rounds: int, show_plans: bool) -> list[dict[str, Any]]:
    """One database per size, filled, then measured in rounds that alternate between the sizes.

    The machine is shared: alternating spreads its load over every size alike, so the ratios hold.
    """
    with BACKENDS[name]() as url_for:
        dbs = []
        for n in sizes:
            engine = db.engine_for(url_for(f"n{n}"))
            filled = Filled()
            started = time.perf_counter()
            fill(engine, filled, n)
            log(f"{name}: filled to {n:,} retirements and ledger entries in {time.perf_counter() - started:.1f} s")
            dbs.append((n, engine, filled))
        samples: dict[int, dict[str, list[float]]] = {n: {} for n in sizes}
        for r in range(rounds):
            started = time.perf_counter()
            for n, engine, filled in dbs if r % 2 == 0 else reversed(dbs):
                for op, values in measure(engine, filled, max(reps // rounds, 1), seed=r * 7919 + n).items():
                    samples[n].setdefault(op, []).extend(values)
            took = time.perf_counter() - started
            log(f"{name}: round {r + 1}/{rounds} in {took:.1f} s (fsync {fsync_ms(tempfile.gettempdir()):.2f} ms)")
        for n, engine, _ in dbs:
            if show_plans:
                for line in explain(engine):
                    log(f"{name} plan at {n:,}{line}")
            if n <= 10_000:
                started = time.perf_counter()
                count, _ = Ledger(engine).verify()
                took = time.perf_counter() - started
                log(f"{name}: Ledger.verify() passed at {n:,} over {count:,} entries in {took:.2f} s")
    rows = []
    for n in sizes:
        got = samples[n]
        rows.append(
            {
                "backend": name,
                "N": n,
                "append median ms": statistics.median(got["append"]),
                "append p95 ms": p95(got["append"]),
                "find ms": statistics.median(got["find"]),
                "load ms": statistics.median(got["load"]),
                "by_flow_run ms": statistics.median(got["by_flow_run"]),
                "by_status ms": statistics.median(got["by_status"]),
            }
        )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    smallest: dict[str, dict[str, Any]] = {}
    for r in rows:
        smallest.setdefault(r["backend"], r)
    base = min(r["N"] for r in rows)
    head = ["backend", "N", *COLUMNS, f"append ratio vs N={base:,}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ratio = r["append median ms"] / smallest[r["backend"]]["append median ms"]
        cells = [r["backend"], f"{r['N']:,}", *(f"{r[c]:.3f}" for c in COLUMNS), f"{ratio:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Ratio of each cost at the largest N to the smallest (goal: at most 2x):", ""]
    lines += ["| backend | N | " + " | ".join(COLUMNS) + " |", "|" + "---|" * (len(COLUMNS) + 2)]
    for backend, first in smallest.items():
        last = [r for r in rows if r["backend"] == backend][-1]
        cells = [f"{last[c] / first[c]:.2f}x" + ("" if last[c] <= 2 * first[c] else " **over**") for c in COLUMNS]
        lines.append(f"| {backend} | {first['N']:,} -> {last['N']:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ints(text_value: str) -> list[int]:
    return [int(float(v)) for v in text_value.split(",") if v.strip()]


def _timeout(_signum: int, _frame: FrameType | None) -> None:
    raise TimeoutError("the benchmark ran past --budget")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=_ints, default=[1_000, 100_000, 1_000_000], help="Comma-separated row counts.")
    parser.add_argument(
        "--backends",
        type=lambda v: [b.strip() for b in v.split(",") if b.strip()],
        default=["sqlite", "postgres"],
        help="Comma-separated: sqlite, postgres.",
    )
    parser.add_argument("--reps", type=int, default=500, help="Measured calls per operation (500).")
    parser.add_argument("--rounds", type=int, default=10, help="Rounds alternating between the sizes (10).")
    parser.add_argument("--budget", type=int, default=4 * 3600, help="Give up after this many seconds (4 h).")
    parser.add_argument("--explain", action="store_true", help="Log the query plans of the reads at each size.")
    args = parser.parse_args()
    unknown = set(args.backends) - set(BACKENDS)
    if unknown or not args.sizes or sorted(args.sizes) != args.sizes:
        parser.error("--sizes must increase; --backends are sqlite, postgres")
    signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(args.budget)
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    try:
        for backend in args.backends:
            rows += run_backend(backend, args.sizes, args.reps, args.rounds, args.explain)
    finally:
        signal.alarm(0)
        if rows:
            print(table(rows))
        print(f"\ntotal {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
