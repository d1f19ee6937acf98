"""The real stack of the chaos tests: PostgreSQL, a Prefect server on it, a process work pool with two workers."""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

LOOPBACK = "127.0.0.1"
PROJECT_DIR = Path(__file__).resolve().parents[2]
POOL = "retirement"
DEPLOYMENT = "retire-model/retire-model"
# Never copied into a worker's copy of the project (besides what .gitignore ignores).
COPY_EXCLUDE = (".venv", ".tools", ".git")


class HarnessError(RuntimeError):
    """A component of the chaos stack did not start or stop as it should; the message says why."""


def free_port(host: str = LOOPBACK) -> int:
    """A port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def listening_pids(port: int) -> set[int]:
    """The processes holding a TCP socket that listens on ``port`` (any address), from /proc."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{cols[9]}]")
    found: set[int] = set()
    for entry in os.listdir("/proc") if inodes else []:
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{entry}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{entry}/fd/{fd}") in inodes:
                        found.add(int(entry))
                        break
    return found


def owns_port(pid: int, port: int) -> bool:
    """True when ``pid`` or one of its descendants listens on ``port`` (not some other process)."""
    return bool(listening_pids(port) & {pid, *descendants(pid)})


def tail(path: Path, lines: int = 60) -> str:
    """The last ``lines`` lines of a log file ('' when it does not exist)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def clean_env(*updates: dict[str, str], **extra: str) -> dict[str, str]:
    """This process's environment without any PREFECT_*, RETIRE_* or PYTHONPATH, then ``updates`` and ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RETIRE_")) and k != "PYTHONPATH"}
    env["PYTHONUNBUFFERED"] = "1"
    for update in updates:
        env.update(update)
    env.update(extra)
    return env


def wait_until(what: str, check: Callable[[], bool], timeout: float, interval: float = 0.5) -> None:
    """Call ``check`` until it is true; raise HarnessError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise HarnessError(f"{what}: not true after {timeout:.0f} s")


# --- processes ------------------------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, int, int] | None:
    """(parent pid, process group, start time) of a living ``pid`` from /proc; None when gone or a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[1]), int(fields[2]), int(fields[19])


def _process_table() -> dict[int, tuple[int, int, int]]:
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (found := _stat(int(entry))) is not None:
            table[int(entry)] = found
    return table


def descendants(pid: int, table: dict[int, tuple[int, int, int]] | None = None) -> list[int]:
    """Every living descendant of ``pid`` (children, their children, ...), from /proc (or ``table``, read once)."""
    children: dict[int, list[int]] = {}
    for child, (parent, _, _) in (table if table is not None else _process_table()).items():
        children.setdefault(parent, []).append(child)
    found: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def _snapshot(pid: int) -> dict[int, int]:
    """``pid``, its descendants and every member of their process groups, each with its start time.

    Start times tell a process from a later one that reused its pid. Read before any signal is sent:
    a killed parent's children are re-parented and could no longer be found through it.
    """
    table = _process_table()
    tree = [p for p in [pid, *descendants(pid)] if p in table]
    groups = {table[p][1] for p in tree} - {os.getpgrp(), 0, 1}
    members = [p for p, (_, group, _) in table.items() if group in groups]
    return {p: table[p][2] for p in {*tree, *members} if p not in (os.getpid(), 1)}


def _kill_known(known: dict[int, int], sig: int = signal.SIGKILL) -> list[int]:
    """Signal the processes of a snapshot that still run (same pid, same start time)."""
    signalled = []
    for pid, started in known.items():
        now = _stat(pid)
        if now is not None and now[2] == started:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
                signalled.append(pid)
    return signalled


def kill_tree(pid: int, sig: int = signal.SIGKILL) -> list[int]:
    """Send ``sig`` to ``pid``, every descendant and every member of their process groups; return the pids.

    ``pid`` must be the process meant: a child of this process not yet waited for, or one whose start
    time was checked (a pid can be reused). Read again after each round for anything forked in between.
    """
    signalled: set[int] = set()
    for _ in range(3):
        known = {p: started for p, started in _snapshot(pid).items() if p not in signalled}
        if not known:
            break
        signalled.update(_kill_known(known, sig))
        time.sleep(0.05)
    return sorted(signalled)


def _alive(pid: int) -> bool:
    return _stat(pid) is not None


def stop_process(process: subprocess.Popen[Any] | None, timeout: float = 15.0) -> None:
    """Stop a child started in its own session: SIGTERM to its group, then SIGKILL to whatever of its tree is left."""
    if process is None:
        return
    if process.poll() is None:
        known = _snapshot(process.pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout)
        if process.poll() is None:
            kill_tree(process.pid)
        _kill_known(known)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(10)


def _run(cmd: list[str], what: str, timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
    except subprocess.TimeoutExpired as exc:
        raise HarnessError(f"{what}: no answer within {timeout:.0f} s ({' '.join(cmd)})") from exc
    if result.returncode != 0:
        raise HarnessError(f"{what} failed with code {result.returncode}:\n{result.stdout}\n{result.stderr}".rstrip())
    return result


# --- PostgreSQL -----------------------------------------------------------------------------------


def postgres_bindir() -> Path:
    """The newest PostgreSQL server binaries: RETIRE_TEST_PG_BINDIR, Debian's, or those on PATH."""
    configured = os.environ.get("RETIRE_TEST_PG_BINDIR")
    if configured:
        return Path(configured)
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: [int(n) for n in re.findall(r"\d+", p.parent.parent.name)] or [0],
    )
    if debian:
        return debian[-1].parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    raise HarnessError(
        "PostgreSQL is not installed: no /usr/lib/postgresql/*/bin/initdb (Debian: apt-get install postgresql, "
        "or run ./scripts/test, which installs it)"
    )


class PostgresCluster:
    """A throwaway PostgreSQL cluster: initdb into a temp folder, listening on 127.0.0.1 only, on a free port.

    Run as the ``postgres`` system user when this process is root (initdb refuses root). One role
    with a password owns the databases (``prefect`` and ``retire`` by default); the superuser
    ``postgres`` only connects through the unix socket inside the temp folder. Stopped by PID.

    Args:
        databases: the databases to create, owned by ``user``.
        user: the role the URLs log in as.
        max_connections: the server's connection limit (Prefect, the workers' flow runs and the tests share it).
        startup_timeout: seconds to wait for the server to accept connections.
    """

    def __init__(
        self,
        databases: Iterable[str] = ("prefect", "retire"),
        *,
        user: str = "retire",
        max_connections: int = 200,
        startup_timeout: float = 90.0,
    ) -> None:
        self.databases = list(databases)
        self.user = user
        self.password = secrets.token_hex(16)
        self.max_connections = max_connections
        self.startup_timeout = startup_timeout
        self.port: int | None = None
        self.root: Path | None = None
        self.pid: int | None = None
        self._bindir: Path | None = None
        self._started = 0

    @property
    def data_dir(self) -> Path:
        return self._root / "data"

    @property
    def socket_dir(self) -> Path:
        return self._root / "run"

    @property
    def log_file(self) -> Path:
        return self._root / "postgres.log"

    @property
    def _root(self) -> Path:
        if self.root is None:
            raise HarnessError("the PostgreSQL cluster has not been started")
        return self.root

    def url(self, db: str = "retire", driver: str = "psycopg") -> str:
        """SQLAlchemy URL of ``db``: driver ``asyncpg`` for the Prefect server, ``psycopg`` for the retirement store."""
        if self.port is None:
            raise HarnessError("the PostgreSQL cluster has not been started")
        return f"postgresql+{driver}://{self.user}:{self.password}@{LOOPBACK}:{self.port}/{db}"

    def dsn(self, db: str = "retire") -> str:
        """libpq connection string of ``db`` (for psycopg.connect), over TCP as the owning role."""
        return f"host={LOOPBACK} port={self.port} user={self.user} password={self.password} dbname={db}"

    def query(self, sql: str, params: Any = None, db: str = "retire") -> list[tuple[Any, ...]]:
        """Rows of one SQL statement on ``db``, as the owning role over TCP (to look, not to change)."""
        import psycopg

        with psycopg.connect(self.dsn(db), connect_timeout=10) as conn:
            cursor = conn.execute(sql, params)
            return cursor.fetchall() if cursor.description else []

    def _as_postgres(self, cmd: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd

    def _bin(self, name: str) -> str:
        if self._bindir is None:
            self._bindir = postgres_bindir()
        return str(self._bindir / name)

    def start(self) -> PostgresCluster:
        """initdb, configure, start and wait; then create the role and the databases.

        Raises:
            HarnessError: PostgreSQL is missing or did not start (the message has the end of its log).
        """
        if self.pid is not None:
            return self
        self._bin("initdb")  # fail early, with the install hint, when PostgreSQL is missing
        # Under /tmp itself: the postgres user must be able to reach the folder (pytest's are 0700 root).
        self.root = Path(tempfile.mkdtemp(prefix="retire-chaos-pg-", dir="/tmp" if Path("/tmp").is_dir() else None))
        self.socket_dir.mkdir()
        if os.geteuid() == 0:
            _run(["chown", "-R", "postgres:postgres", str(self.root)], "chown of the PostgreSQL folder")
        _run(
            self._as_postgres(
                [
                    self._bin("initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    "--no-locale",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                ]
            ),
            "initdb",
        )
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# chaos test cluster\n"
                f"listen_addresses = '{LOOPBACK}'\n"
                f"unix_socket_directories = '{self.socket_dir}'\n"
                f"max_connections = {self.max_connections}\n"
                "shared_buffers = 64MB\n"
                # Durability against a machine crash is not what these tests are about; speed on 2 cores is.
                "fsync = off\n"
                "synchronous_commit = off\n"
                "full_page_writes = off\n"
                "log_min_messages = warning\n"
            )
        try:
            for attempt in range(3):  # a port taken by someone else between choosing and binding it: another one
                self.port = free_port()
                pg_ctl = [self._bin("pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_file), "-w"]
                pg_ctl += ["-t", str(int(self.startup_timeout)), "-o", f"-p {self.port}", "start"]
                try:
                    _run(
                        self._as_postgres(pg_ctl),
                        "pg_ctl start",
                        timeout=self.startup_timeout + 30,
                        start_new_session=True,
                    )
                    break
                except HarnessError:
                    if attempt == 2 or "could not bind" not in tail(self.log_file, 20):
                        raise
            self.pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
            self._started = (_stat(self.pid) or (0, 0, 0))[2]
            self._create_databases()
        except Exception as exc:
            log = tail(self.log_file)
            self.stop()
            raise HarnessError(f"PostgreSQL did not start: {exc}\n--- postgres.log ---\n{log}") from exc
        return self

    def _create_databases(self) -> None:
        import psycopg
        from psycopg import sql

        def superuser(db: str) -> psycopg.Connection[Any]:
            return psycopg.connect(
                host=str(self.socket_dir),
                port=self.port,
                user="postgres",
                dbname=db,
                autocommit=True,
                connect_timeout=10,
            )

        with superuser("postgres") as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(self.user), sql.Literal(self.password)
                )
            )
            for db in self.databases:
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(db), sql.Identifier(self.user))
                )
        for db in self.databases:
            with superuser(db) as conn:
                # Prefect's migrations create it; made here so the role needs no extension rights.
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        with psycopg.connect(self.dsn(self.databases[0]), connect_timeout=10) as conn:
            conn.execute("SELECT 1")  # the role logs in over TCP with its password, as the URLs will

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server by PID: ``pg_ctl stop -m fast``, then SIGKILL of the postmaster and its children."""
        if self.root is not None and (self.data_dir / "postmaster.pid").exists():
            with contextlib.suppress(HarnessError):
                _run(
                    self._as_postgres(
                        [
                            self._bin("pg_ctl"),
                            "-D",
                            str(self.data_dir),
                            "-m",
                            "fast",
                            "-w",
                            "-t",
                            str(int(timeout)),
                            "stop",
                        ]
                    ),
                    "pg_ctl stop",
                    timeout=timeout + 15,
                )
        now = _stat(self.pid) if self.pid is not None else None
        if self.pid is not None and now is not None and now[2] == self._started:
            kill_tree(self.pid)
        self.pid = None

    def remove(self) -> None:
        """Delete the cluster's folder (after stop)."""
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __enter__(self) -> PostgresCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        self.remove()


# --- Prefect server -------------------------------------------------------------------------------


class PrefectServer:
    """``prefect server start`` from the project's virtualenv on 127.0.0.1:<free port>, its database on PostgreSQL.

    PREFECT_HOME and the log are in ``root``. Stopped by PID (its process group).

    Args:
        database_url: ``postgresql+asyncpg://...`` of its database.
        root: folder for PREFECT_HOME and ``prefect-server.log``.
        startup_timeout: seconds to wait for /api/health (migrations on a fresh database included).
    """

    def __init__(self, database_url: str, root: Path, *, startup_timeout: float = 180.0) -> None:
        self.database_url = database_url
        self.root = root
        self.startup_timeout = startup_timeout
        self.port: int | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.log_file = root / "prefect-server.log"

    @property
    def api_url(self) -> str:
        """PREFECT_API_URL of this server."""
        if self.port is None:
            raise HarnessError("the Prefect server has not been started")
        return f"http://{LOOPBACK}:{self.port}/api"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def healthy(self) -> bool:
        """True when /api/health answers 200."""
        try:
            return httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def start(self, attempts: int = 3) -> PrefectServer:
        """Start the server and wait until it answers /api/health on its own port.

        A port taken by someone else between choosing and binding it is retried with another.

        Raises:
            HarnessError: it exited or did not answer in time (the message has the end of its log).
        """
        if self.process is not None:
            return self
        self.root.mkdir(parents=True, exist_ok=True)
        for _ in range(attempts):
            self.port = free_port()
            if self._launch():
                return self
        raise HarnessError(f"the Prefect server found its port taken {attempts} times in a row")

    def _launch(self) -> bool:
        """Start on self.port; True when up, False when the port was taken meanwhile (nothing left running)."""
        env = clean_env(
            PREFECT_HOME=str(self.root / "home"),
            PREFECT_API_DATABASE_CONNECTION_URL=self.database_url,
            PREFECT_API_DATABASE_TIMEOUT="30",
            PREFECT_API_DATABASE_CONNECTION_TIMEOUT="30",
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_UI_ENABLED="false",
            PREFECT_UI_API_URL=self.api_url,
        )
        start = self.log_file.stat().st_size if self.log_file.exists() else 0
        with self.log_file.open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "prefect", "server", "start", "--host", LOOPBACK, "--port", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.root,
                start_new_session=True,
            )
        self.process = process
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                self.process = None
                with self.log_file.open("rb") as log:
                    log.seek(start)
                    said = log.read().decode(errors="replace")
                if "already in use" in said:
                    return False
                raise HarnessError(
                    f"the Prefect server exited with code {process.returncode}:\n"
                    f"--- {self.log_file} ---\n{tail(self.log_file)}"
                )
            # Something else may answer on a port taken meanwhile: only our own listener counts.
            if self.healthy() and owns_port(process.pid, self.port):
                return True
            time.sleep(0.5)
        self.stop()
        raise HarnessError(
            f"the Prefect server did not answer /api/health within {self.startup_timeout:.0f} s:\n"
            f"--- {self.log_file} ---\n{tail(self.log_file)}"
        )

    def stop(self) -> None:
        """Stop the server by its process group (SIGTERM, then SIGKILL)."""
        stop_process(self.process, timeout=20)
        self.process = None

    # The REST API, for tests that look at runs the way the UI does.

    def request(self, method: str, path: str, json: Any = None, timeout: float = 30.0) -> Any:
        """Call the REST API (``path`` relative to /api); return the decoded JSON (None for an empty body)."""
        response = httpx.request(method, f"{self.api_url}/{path.lstrip('/')}", json=json, timeout=timeout)
        response.raise_for_status()
        return response.json() if response.content else None

    def flow_runs(
        self, *, tags: list[str] | None = None, states: list[str] | None = None, ids: list[str] | None = None
    ) -> list[dict[str, Any]]:
        """Flow runs (as the API returns them) having all ``tags``, in one of ``states`` (types), among ``ids``."""
        runs: dict[str, Any] = {}
        if tags:
            runs["tags"] = {"all_": tags}
        if states:
            runs["state"] = {"type": {"any_": states}}
        if ids:
            runs["id"] = {"any_": ids}
        result: list[dict[str, Any]] = self.request("POST", "flow_runs/filter", {"flow_runs": runs, "limit": 200})
        return result

    def flow_run(self, flow_run_id: str) -> dict[str, Any]:
        """One flow run, as the API returns it."""
        result: dict[str, Any] = self.request("GET", f"flow_runs/{flow_run_id}")
        return result

    def workers(self, pool: str = POOL) -> list[dict[str, Any]]:
        """The workers the server knows in ``pool`` (name, status, last_heartbeat_time, ...)."""
        result: list[dict[str, Any]] = self.request("POST", f"work_pools/{pool}/workers/filter", {})
        return result


# --- the work pool and its workers ----------------------------------------------------------------


def project_files(project: Path) -> list[str]:
    """The project's files, relative to it, as the working tree has them now.

    In a git checkout: tracked files (edits included) and untracked files git does not ignore;
    elsewhere every file but Python caches. Never .venv, .tools or .git.
    """
    if (project / ".git").exists():
        out = _run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], "git ls-files", cwd=project
        ).stdout
        names = {name for name in out.split("\0") if name}
    else:
        names = {
            str(path.relative_to(project))
            for path in project.rglob("*")
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
        }
    return sorted(n for n in names if n.split("/", 1)[0] not in COPY_EXCLUDE)


def copy_project(project: Path, dest: Path) -> int:
    """Copy the working tree's files (see project_files) to ``dest``; files deleted meanwhile are skipped."""
    copied = 0
    for name in project_files(project):
        source = project / name
        if not source.is_file():  # deleted but still in the index, or being rewritten right now
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            shutil.copy2(source, target, follow_symlinks=False)
            copied += 1
    return copied


@dataclass
class FlowRunProcess:
    """A flow run's engine process under a worker, as seen in /proc."""

    pid: int
    worker: int
    cwd: str
    pythonpath: str
    cmdline: str
    flow_run_id: str = ""


@dataclass
class _Worker:
    index: int
    name: str
    copy: Path
    log: Path
    home: Path
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    killed: list[int] = field(default_factory=list)


class WorkerPool:
    """A process work pool with ``workers`` workers, each started from its own copy of the project.

    The copies hold the working tree's files (tracked, edits included, and untracked-not-ignored),
    as two machines that checked out the same commit would. The deployments of prefect.yaml are
    deployed from copy 0 with RETIRE_PROJECT_DIR unset, so their pull step keeps
    ``{{ $RETIRE_PROJECT_DIR }}`` and each flow run changes to its own worker's copy. Every worker
    uses this virtualenv's python with PYTHONPATH and RETIRE_PROJECT_DIR set to its copy and its
    own PREFECT_HOME; RETIRE_HOME and RETIRE_DATABASE_URL (in ``env``) are shared. Workers are
    numbered from 0; each runs in its own process group and logs to ``root/worker-<i>.log``.

    Args:
        server: the Prefect server.
        root: folder for the copies, the workers' homes and logs.
        env: what every worker (and its flow runs) gets besides the Prefect settings: RETIRE_*, ...
        workers: how many workers.
        pool: the work pool's name (prefect.yaml's deployments name ``retirement``).
        query_seconds: PREFECT_WORKER_QUERY_SECONDS of the workers.
        project: the checkout to copy.
    """

    def __init__(
        self,
        server: PrefectServer,
        root: Path,
        env: dict[str, str],
        *,
        workers: int = 2,
        pool: str = POOL,
        query_seconds: float = 2,
        project: Path = PROJECT_DIR,
    ) -> None:
        self.server = server
        self.root = root
        self.env = dict(env)
        self.pool = pool
        self.query_seconds = query_seconds
        self.project = project
        self._workers = [
            _Worker(i, f"chaos-worker-{i}", root / f"copy-{i}", root / f"worker-{i}.log", root / f"prefect-home-{i}")
            for i in range(workers)
        ]

    def __len__(self) -> int:
        return len(self._workers)

    def copy(self, i: int) -> Path:
        """The project copy worker ``i`` runs flows from."""
        return self._workers[i].copy

    def name(self, i: int) -> str:
        """Worker ``i``'s name, as the Prefect server and its log call it."""
        return self._workers[i].name

    def log(self, i: int) -> Path:
        """Worker ``i``'s log (its flow runs' output included), appended across restarts."""
        return self._workers[i].log

    def output(self, i: int) -> str:
        """What worker ``i`` and its flow runs wrote so far."""
        return self.log(i).read_text(errors="replace") if self.log(i).exists() else ""

    def pid(self, i: int) -> int | None:
        """Worker ``i``'s process id while it runs."""
        process = self._workers[i].process
        return process.pid if process is not None and process.poll() is None else None

    def cli_env(self) -> dict[str, str]:
        """Environment of a Prefect CLI call against the server (PREFECT_HOME under root)."""
        return clean_env(self.env, PREFECT_API_URL=self.server.api_url, PREFECT_HOME=str(self.root / "cli-home"))

    def worker_env(self, i: int) -> dict[str, str]:
        """Environment of worker ``i`` (inherited by its flow runs)."""
        worker = self._workers[i]
        return clean_env(
            self.env,
            PREFECT_API_URL=self.server.api_url,
            PREFECT_HOME=str(worker.home),
            PREFECT_WORKER_QUERY_SECONDS=str(self.query_seconds),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            RETIRE_PROJECT_DIR=str(worker.copy),
            PYTHONPATH=str(worker.copy),
        )

    def start(self, timeout: float = 240.0) -> WorkerPool:
        """Copy the project, create the pool, deploy prefect.yaml, start every worker and wait until online.

        Raises:
            HarnessError: a step failed (the message has its output).
        """
        self.root.mkdir(parents=True, exist_ok=True)
        for worker in self._workers:
            if worker.copy.exists():
                shutil.rmtree(worker.copy)
            if copy_project(self.project, worker.copy) == 0:
                raise HarnessError(f"nothing to copy from {self.project}")
        prefect = [sys.executable, "-m", "prefect"]
        _run(
            [*prefect, "work-pool", "create", self.pool, "--type", "process"],
            "prefect work-pool create",
            env=self.cli_env(),
            cwd=self.root,
        )
        deploy_env = self.cli_env()
        deploy_env.pop("RETIRE_PROJECT_DIR", None)
        _run(
            [*prefect, "--no-prompt", "deploy", "--all"],
            "prefect deploy --all",
            timeout=timeout,
            env=deploy_env,
            cwd=self._workers[0].copy,
        )
        self.check_pull_step()
        for worker in self._workers:
            self._launch(worker)
        for worker in self._workers:
            self._wait_online(worker, timeout)
        return self

    def check_pull_step(self) -> None:
        """The deployment's pull step must still name ``$RETIRE_PROJECT_DIR``, resolved by each worker's flow run.

        Raises:
            HarnessError: the directory was resolved at deploy time: every worker would run copy 0's code.
        """
        deployment = self.server.request("GET", f"deployments/name/{DEPLOYMENT}")
        steps = deployment.get("pull_steps") or []
        directories = [
            step.get("prefect.deployments.steps.set_working_directory", {}).get("directory") for step in steps
        ]
        if not any(d and "$RETIRE_PROJECT_DIR" in d for d in directories):
            raise HarnessError(f"{DEPLOYMENT}: the pull step does not defer to $RETIRE_PROJECT_DIR: {steps}")

    def _launch(self, worker: _Worker) -> None:
        worker.home.mkdir(parents=True, exist_ok=True)
        worker.started_at = time.time()
        with worker.log.open("ab") as log:
            log.write(f"\n===== {worker.name} starting at {time.strftime('%H:%M:%S')} =====\n".encode())
            log.flush()
            worker.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "prefect",
                    "worker",
                    "start",
                    "--pool",
                    self.pool,
                    "--type",
                    "process",
                    "--name",
                    worker.name,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.worker_env(worker.index),
                cwd=worker.copy,
                start_new_session=True,
            )

    def _wait_online(self, worker: _Worker, timeout: float) -> None:
        """Wait until the server has a heartbeat of ``worker`` sent after it (re)started."""
        from datetime import datetime

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            process = worker.process
            if process is None or process.poll() is not None:
                raise HarnessError(f"{worker.name} exited:\n--- {worker.log} ---\n{tail(worker.log)}")
            with contextlib.suppress(httpx.HTTPError):
                for seen in self.server.workers(self.pool):
                    beat = seen.get("last_heartbeat_time")
                    if (
                        seen.get("name") == worker.name
                        and seen.get("status") == "ONLINE"
                        and beat
                        and datetime.fromisoformat(beat.replace("Z", "+00:00")).timestamp() >= worker.started_at - 1
                    ):
                        return
            time.sleep(0.5)
        raise HarnessError(
            f"{worker.name} did not come online within {timeout:.0f} s:\n--- {worker.log} ---\n{tail(worker.log)}"
        )

    def start_worker(self, i: int, wait: bool = True, timeout: float = 120.0) -> None:
        """Start worker ``i`` (again), from its copy; wait until the server sees it online."""
        worker = self._workers[i]
        if self.pid(i) is not None:
            return
        self._launch(worker)
        if wait:
            self._wait_online(worker, timeout)

    def kill_worker(self, i: int) -> list[int]:
        """kill -9 of worker ``i`` and every flow-run process under it (process groups and descendants).

        Returns the pids killed.
        """
        worker = self._workers[i]
        process = worker.process
        if process is None:
            return []
        killed = kill_tree(process.pid) if process.poll() is None else []
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(10)
        worker.killed.extend(killed)
        with worker.log.open("ab") as log:
            log.write(
                f"\n===== {worker.name} killed (SIGKILL) at {time.strftime('%H:%M:%S')}: {killed} =====\n".encode()
            )
        return killed

    def restart_worker(self, i: int, wait: bool = True) -> None:
        """Kill worker ``i`` (and its flow runs) if it runs, then start it again from the same copy."""
        self.kill_worker(i)
        self.start_worker(i, wait=wait)

    def stop_worker(self, i: int, timeout: float = 20.0) -> None:
        """Stop worker ``i`` gently (SIGTERM to its group), then SIGKILL anything left under it."""
        worker = self._workers[i]
        stop_process(worker.process, timeout)
        worker.process = None

    def flow_run_processes(self, i: int | None = None) -> list[FlowRunProcess]:
        """The flow-run engine processes (``python -m prefect.engine``) running under worker ``i`` (or any)."""
        found = []
        table = _process_table()
        for worker in self._workers if i is None else [self._workers[i]]:
            pid = self.pid(worker.index)
            if pid is None:
                continue
            for child in descendants(pid, table):
                try:
                    cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
                    if "prefect.engine" not in cmdline:
                        continue
                    cwd = os.readlink(f"/proc/{child}/cwd")
                    environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
                except OSError:
                    continue
                variables = dict(e.decode(errors="replace").partition("=")[::2] for e in environ if b"=" in e)
                pythonpath = variables.get("PYTHONPATH", "")
                run_id = variables.get("PREFECT__FLOW_RUN_ID", "")
                found.append(FlowRunProcess(child, worker.index, cwd, pythonpath, cmdline, run_id))
        return found

    def worker_of(self, flow_run_id: str) -> int | None:
        """The worker whose flow-run process runs ``flow_run_id`` right now (None when no process does)."""
        return next((p.worker for p in self.flow_run_processes() if p.flow_run_id == flow_run_id), None)

    def stop(self) -> None:
        """Stop every worker and its flow runs by PID."""
        for worker in self._workers:
            self.stop_worker(worker.index)


class FlowRunWatcher:
    """Samples the workers' flow-run processes in a thread, to tell which copy ran which run; a context manager."""

    def __init__(self, pool: WorkerPool, interval: float = 1.0) -> None:
        self.pool = pool
        self.interval = interval
        self.seen: dict[int, FlowRunProcess] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flow-run-watcher", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for process in self.pool.flow_run_processes():
                previous = self.seen.get(process.pid)
                # Keep the last cwd: the run starts in a temp folder, then its pull step changes to the copy.
                if previous is None or process.cwd != previous.cwd:
                    self.seen[process.pid] = process

    def __enter__(self) -> FlowRunWatcher:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(10)


# --- load -----------------------------------------------------------------------------------------

_HOG = "import sys, time\nend = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < end:\n    pass\n"


class CpuHog:
    """``processes`` busy-looping processes that stop by themselves after at most ``seconds``; a context manager.

    Args:
        processes: how many (2 saturates this machine kind).
        seconds: upper bound of their life, even if stop() is never called.
    """

    def __init__(self, processes: int = 2, seconds: float = 60.0) -> None:
        if not 0 < seconds <= 3600:
            raise ValueError(f"seconds must be in (0, 3600], not {seconds}")
        self.processes = processes
        self.seconds = seconds
        self._children: list[subprocess.Popen[bytes]] = []

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._children if p.poll() is None]

    def start(self) -> CpuHog:
        """Start the busy processes."""
        for _ in range(self.processes):
            self._children.append(
                subprocess.Popen(
                    [sys.executable, "-c", _HOG, str(self.seconds)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        return self

    def stop(self) -> None:
        """Kill them by PID and reap them."""
        for child in self._children:
            if child.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(10)
        self._children = []

    def __enter__(self) -> CpuHog:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# --- the whole stack ------------------------------------------------------------------------------


@dataclass
class ChaosStack:
    """The running stack of a chaos session, and the environment a test uses to act on it as a user.

    ``env`` is what a `retire` command or a Prefect client needs: PREFECT_API_URL, RETIRE_HOME
    (shared with the workers), RETIRE_DATABASE_URL (the ``retire`` database), the gateway's host and
    port, the operator's short limits, and PYTHONPATH = worker 0's copy (the code the workers run).
    """

    root: Path
    home: Path
    postgres: PostgresCluster
    prefect: PrefectServer
    workers: WorkerPool
    gateway: Any
    env: dict[str, str]
    started_in: float = 0.0

    @property
    def gateway_url(self) -> str:
        return f"http://{self.env['RETIRE_GATEWAY_HOST']}:{self.env['RETIRE_GATEWAY_PORT']}"

    def retire(self, *args: str, timeout: float = 300.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``retire ARGS`` from worker 0's copy of the project (the code the workers run) with ``env``.

        Raises:
            HarnessError: ``check`` and it exited non-zero or did not finish in time.
        """
        cmd = [sys.executable, "-m", "retirement", *args]
        checkout = self.workers.copy(0)
        try:
            result = subprocess.run(
                cmd, capture_output=True, text=True, timeout=timeout, env=self.env, cwd=checkout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise HarnessError(f"`retire {' '.join(args)}` did not finish within {timeout:.0f} s") from exc
        if check and result.returncode != 0:
            raise HarnessError(
                f"`retire {' '.join(args)}` exited {result.returncode}:\n{result.stdout}\n{result.stderr}".rstrip()
            )
        return result


class Background:
    """Scenarios that run in threads while other tests run, each asserted later by its own test.

    Several retirements share the stack at once where they do not interfere (nothing here kills a worker),
    which keeps the chaos package within its time budget. A scenario is ``fn(stack, background) -> str``;
    it raises AssertionError when what it checks does not hold, may wait for another scenario's milestones
    (:meth:`wait_for`, :meth:`mark`), and gives up when ``background.stop`` is set.
    """

    def __init__(self, stack: ChaosStack) -> None:
        self.stack = stack
        self.stop = threading.Event()
        self._threads: dict[str, threading.Thread] = {}
        self._outcome: dict[str, tuple[float, Any, BaseException | None]] = {}
        self._marks: dict[str, threading.Event] = {}

    def start(self, scenarios: dict[str, Callable[[ChaosStack, Background], Any]]) -> None:
        """Start each ``scenario(stack, self)`` in its own thread (all registered first, so that any of them
        can wait for another one's milestones)."""
        fresh = [self._add(name, scenario) for name, scenario in scenarios.items() if name not in self._threads]
        for thread in fresh:
            thread.start()

    def _add(self, name: str, scenario: Callable[[ChaosStack, Background], Any]) -> threading.Thread:

        def run() -> None:
            t0 = time.monotonic()
            try:
                value = scenario(self.stack, self)
                self._outcome[name] = (time.monotonic() - t0, value, None)
                print(f"[chaos] background scenario {name} ended after {time.monotonic() - t0:.0f}s", flush=True)
            except BaseException as exc:  # handed to the test that asks for it
                self._outcome[name] = (time.monotonic() - t0, None, exc)
                said = "".join(traceback.format_exception_only(exc)).strip()[:2000]
                print(
                    f"[chaos] background scenario {name} FAILED after {time.monotonic() - t0:.0f}s: {said}", flush=True
                )
            finally:
                self.mark(name)

        thread = threading.Thread(target=run, name=f"chaos-{name}", daemon=True)
        self._threads[name] = thread
        return thread

    def mark(self, name: str) -> None:
        """Say that ``name`` happened (a scenario's milestone; every scenario marks its own name when it ends)."""
        self._marks.setdefault(name, threading.Event()).set()

    def wait_for(self, names: Iterable[str], timeout: float) -> list[str]:
        """Wait until each of ``names`` (``scenario`` or ``scenario:milestone``) was marked, or its scenario ended
        or was never started; return those still missing after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        pending = list(names)
        while True:
            pending = [
                n
                for n in pending
                if n.split(":", 1)[0] in self._threads
                and not any(self._marks.get(m, threading.Event()).is_set() for m in (n, n.split(":", 1)[0]))
            ]
            if not pending or time.monotonic() > deadline or self.stop.is_set():
                return pending
            time.sleep(1)

    def result(self, name: str, timeout: float) -> tuple[float, Any]:
        """Wait for ``name`` to end (at most ``timeout`` s); return (seconds it took, what it returned), or raise
        what it raised."""
        thread = self._threads.get(name)
        if thread is None:
            raise HarnessError(f"background scenario {name} was never started")
        thread.join(timeout)
        if thread.is_alive():
            raise AssertionError(f"background scenario {name} still running after {timeout:.0f} s more")
        took, value, error = self._outcome[name]
        if error is not None:
            raise error
        return took, value

    def wait_all(self, timeout: float) -> None:
        """Wait (at most ``timeout`` s in all) until no background scenario runs (errors wait for their tests)."""
        deadline = time.monotonic() + timeout
        for thread in self._threads.values():
            thread.join(max(0.0, deadline - time.monotonic()))

    def close(self, timeout: float = 60.0) -> None:
        """Tell every scenario to give up and wait for its thread (bounded)."""
        self.stop.set()
        self.wait_all(timeout)


def operator_env(home: Path, database_url: str, gateway_port: int) -> dict[str, str]:
    """What the operator sets on every worker and on the test's own `retire` calls.

    Short limits for windows of seconds, and a zombie delay of 60 s (the product allows 45, its default is
    90): the reconciler marks a running run Crashed once it sent no heartbeat for 60 s (runs beat every
    30 s; on this loaded machine a heartbeat is persisted up to ~15 s late) and resumes its retirement.
    """
    return {
        "RETIRE_HOME": str(home),
        "RETIRE_DATABASE_URL": database_url,
        "RETIRE_GATEWAY_HOST": LOOPBACK,
        "RETIRE_GATEWAY_PORT": str(gateway_port),
        "RETIRE_MIN_TRAFFIC_WINDOW_HOURS": "0",
        "RETIRE_CUTOVER_GRACE_SECONDS": "2",
        "RETIRE_GATE_POLL_SECONDS": "1",
        "RETIRE_ZOMBIE_AFTER_SECONDS": "60",
    }


def start_gateway(home: Path) -> Any:
    """The local gateway on a free port (another one if that port is taken before it binds)."""
    from retirement.errors import ConflictError, PlatformUnavailableError
    from retirement.gateway.server import GatewayProcess
    from retirement.settings import RetireSettings

    settings = RetireSettings(home=home, local_root=home / "local")
    failures = []
    for _ in range(3):
        try:
            return GatewayProcess(settings, free_port()).start()
        except (ConflictError, PlatformUnavailableError) as exc:
            failures.append(str(exc))
    raise HarnessError("the gateway did not start:\n" + "\n".join(failures))


@contextlib.contextmanager
def running_stack(
    root: Path, *, project: Path = PROJECT_DIR, say: Callable[[str], None] = print
) -> Iterator[tuple[ChaosStack, PostgresCluster]]:
    """Start the whole stack under ``root`` and stop everything it started (by PID) on exit.

    Yields the stack and its PostgreSQL cluster (whose folder the caller removes with ``remove()``
    once it no longer wants the logs).
    """
    t0 = time.monotonic()
    home = root / "home"
    home.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as cleanup:
        # A second Ctrl-C during the teardown would skip it: whatever is still running stops at exit then.
        atexit.register(cleanup.close)
        cleanup.callback(atexit.unregister, cleanup.close)
        postgres = PostgresCluster(("prefect", "retire"))
        cleanup.callback(postgres.stop)
        postgres.start()
        say(f"[chaos] PostgreSQL on 127.0.0.1:{postgres.port} ({time.monotonic() - t0:.1f}s)")

        prefect = PrefectServer(postgres.url("prefect", "asyncpg"), root / "prefect")
        cleanup.callback(prefect.stop)
        prefect.start()
        say(f"[chaos] Prefect server at {prefect.api_url} ({time.monotonic() - t0:.1f}s)")

        gateway = start_gateway(home)
        cleanup.callback(gateway.stop)
        operator = operator_env(home, postgres.url("retire", "psycopg"), gateway.port)

        workers = WorkerPool(prefect, root / "workers", operator, project=project)
        cleanup.callback(workers.stop)
        workers.start()
        say(f"[chaos] {len(workers)} workers online on pool '{workers.pool}' ({time.monotonic() - t0:.1f}s)")

        env = {**workers.cli_env(), "PYTHONPATH": str(workers.copy(0))}  # a person's shell in their checkout
        yield ChaosStack(root, home, postgres, prefect, workers, gateway, env, time.monotonic() - t0), postgres


def main() -> None:
    """Start the stack by hand (``python -m tests.chaos.cluster [ROOT]``), print its environment, stop on Ctrl-C."""
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="retire-chaos-"))
    root.mkdir(parents=True, exist_ok=True)
    with running_stack(root, say=lambda s: print(s, flush=True)) as (stack, postgres):
        (root / "env.sh").write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in stack.env.items()))
        print(f"[chaos] stack up in {stack.started_in:.0f}s; `source {root / 'env.sh'}` to act on it; Ctrl-C stops")

        def stop(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, stop)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    postgres.remove()
    print(f"[chaos] stopped; logs, copies and RETIRE_HOME kept in {root}", flush=True)


__all__ = [
    "DEPLOYMENT",
    "POOL",
    "Background",
    "ChaosStack",
    "CpuHog",
    "FlowRunProcess",
    "FlowRunWatcher",
    "HarnessError",
    "PostgresCluster",
    "PrefectServer",
    "WorkerPool",
    "clean_env",
    "copy_project",
    "free_port",
    "kill_tree",
    "operator_env",
    "running_stack",
    "start_gateway",
    "wait_until",
]


if __name__ == "__main__":
    main()
