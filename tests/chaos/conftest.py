"""Fixtures of the chaos tests: one real stack (PostgreSQL, Prefect, two workers, gateway) per test session."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from retirement.errors import ConflictError, PlatformUnavailableError
from retirement.gateway.server import GatewayProcess
from retirement.settings import RetireSettings
from tests.chaos.cluster import (
    PROJECT_DIR,
    ChaosStack,
    HarnessError,
    PostgresCluster,
    PrefectServer,
    WorkerPool,
    free_port,
)

CHAOS_DIR = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test under tests/chaos carries the ``chaos`` marker."""
    for item in items:
        if CHAOS_DIR in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.chaos)


def _operator_env(home: Path, database_url: str, gateway_port: int) -> dict[str, str]:
    """What the operator sets on every worker and on the test's own `retire` calls."""
    return {
        "RETIRE_HOME": str(home),
        "RETIRE_DATABASE_URL": database_url,
        "RETIRE_GATEWAY_HOST": "127.0.0.1",
        "RETIRE_GATEWAY_PORT": str(gateway_port),
        "RETIRE_MIN_TRAFFIC_WINDOW_HOURS": "0",
        "RETIRE_CUTOVER_GRACE_SECONDS": "2",
        "RETIRE_GATE_POLL_SECONDS": "1",
    }


def _start_gateway(home: Path) -> GatewayProcess:
    """The local gateway on a free port (another one if that port is taken before it binds)."""
    settings = RetireSettings(home=home, local_root=home / "local")
    failures = []
    for _ in range(3):
        try:
            return GatewayProcess(settings, free_port()).start()
        except (ConflictError, PlatformUnavailableError) as exc:
            failures.append(str(exc))
    raise HarnessError("the gateway did not start:\n" + "\n".join(failures))


@pytest.fixture(scope="package")
def chaos_stack(request: pytest.FixtureRequest) -> Iterator[ChaosStack]:
    """The whole stack, started once per session and stopped by PID after the last chaos test.

    Package-scoped (tests/chaos is one package): the stack starts once, and stops when the chaos tests
    are done rather than idling through the rest of the suite.

    The workers run copies of this checkout (RETIRE_CHAOS_PROJECT names another one). The stack's folder
    (RETIRE_HOME, the copies, every log) is kept when a test failed or RETIRE_CHAOS_KEEP is set.
    """
    t0 = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="retire-chaos-"))
    home = root / "home"
    home.mkdir()
    print(f"\n[chaos] stack folder {root}", flush=True)
    with contextlib.ExitStack() as cleanup:
        postgres = PostgresCluster(("prefect", "retire"))
        cleanup.callback(postgres.stop)
        postgres.start()
        print(f"[chaos] PostgreSQL on 127.0.0.1:{postgres.port} ({time.monotonic() - t0:.1f}s)", flush=True)

        prefect = PrefectServer(postgres.url("prefect", "asyncpg"), root / "prefect")
        cleanup.callback(prefect.stop)
        prefect.start()
        print(f"[chaos] Prefect server at {prefect.api_url} ({time.monotonic() - t0:.1f}s)", flush=True)

        gateway = _start_gateway(home)
        cleanup.callback(gateway.stop)
        operator = _operator_env(home, postgres.url("retire", "psycopg"), gateway.port)

        project = Path(os.environ.get("RETIRE_CHAOS_PROJECT") or PROJECT_DIR)
        workers = WorkerPool(prefect, root / "workers", operator, project=project)
        cleanup.callback(workers.stop)
        workers.start()
        print(f"[chaos] {len(workers)} workers online on pool 'retirement' ({time.monotonic() - t0:.1f}s)", flush=True)

        env = {**workers.cli_env(), "PYTHONPATH": str(workers.copy(0))}  # a person's shell in their checkout
        stack = ChaosStack(root, home, postgres, prefect, workers, gateway, env, time.monotonic() - t0)
        yield stack
    keep = os.environ.get("RETIRE_CHAOS_KEEP") or request.session.testsfailed
    if keep:
        print(f"\n[chaos] kept {root} and {postgres.root} (logs, copies, RETIRE_HOME)", flush=True)
    else:
        postgres.remove()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="package")
def pg_cluster(chaos_stack: ChaosStack) -> PostgresCluster:
    """The PostgreSQL cluster (databases ``prefect`` and ``retire``)."""
    return chaos_stack.postgres


@pytest.fixture(scope="package")
def chaos_prefect(chaos_stack: ChaosStack) -> PrefectServer:
    """The Prefect server on PostgreSQL."""
    return chaos_stack.prefect


@pytest.fixture(scope="package")
def worker_pool(chaos_stack: ChaosStack) -> WorkerPool:
    """The ``retirement`` process work pool and its two workers (0 and 1), each from its own project copy."""
    return chaos_stack.workers


@pytest.fixture(scope="package")
def chaos_env(chaos_stack: ChaosStack) -> dict[str, str]:
    """The environment of a `retire` command or Prefect CLI acting on the stack (a full os.environ).

    PREFECT_API_URL, RETIRE_HOME, RETIRE_DATABASE_URL, the gateway and the operator's short limits, and
    PYTHONPATH = worker 0's copy (run commands there, as ``chaos_stack.retire`` does).
    """
    return dict(chaos_stack.env)


@pytest.fixture(autouse=True)
def retire_home(chaos_stack: ChaosStack, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Overrides the suite's per-test RETIRE_HOME: a chaos test acts on the stack's shared one.

    This process gets the stack's RETIRE_* and PREFECT_API_URL (the Prefect settings context too),
    so the library and Prefect clients used in the test see what the workers see.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    for name in list(os.environ):
        if name.startswith("RETIRE_"):
            monkeypatch.delenv(name)
    for name, value in chaos_stack.env.items():
        if name.startswith(("RETIRE_", "PREFECT_")):
            monkeypatch.setenv(name, value)
    with temporary_settings(updates={PREFECT_API_URL: chaos_stack.prefect.api_url}):
        yield chaos_stack.home
