"""Fixtures of the chaos tests: one real stack (PostgreSQL, Prefect, two workers, gateway) per test session."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.cluster import (
    PROJECT_DIR,
    Background,
    ChaosStack,
    PostgresCluster,
    PrefectServer,
    WorkerPool,
    running_stack,
)

CHAOS_DIR = Path(__file__).resolve().parent


# The order the chaos tests run in: scenarios marked ``background`` start with the stack and run alongside
# the smoke and load tests; the worker kills come last, alone (a kill takes down every run on that worker).
ORDER = ("test_workers_smoke", "test_concurrent_load", "test_cancel_phases", "test_start_race", "test_worker_kills")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "background(scenario): the chaos scenario starts in a thread with the stack and this test asserts its outcome",
    )


def _is_chaos(item: pytest.Item) -> bool:
    return CHAOS_DIR in Path(str(item.path)).resolve().parents


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test under tests/chaos carries the ``chaos`` marker; they run in ORDER."""
    places = [i for i, item in enumerate(items) if _is_chaos(item)]
    for i in places:
        items[i].add_marker(pytest.mark.chaos)

    def rank(item: pytest.Item) -> int:
        module = Path(str(item.path)).stem
        return ORDER.index(module) if module in ORDER else len(ORDER)

    ordered = sorted((items[i] for i in places), key=rank)
    for i, item in zip(places, ordered, strict=True):
        items[i] = item


@pytest.fixture(scope="package")
def chaos_stack(request: pytest.FixtureRequest) -> Iterator[ChaosStack]:
    """The whole stack, started once per session and stopped by PID after the last chaos test.

    Package-scoped (tests/chaos is one package): the stack starts once, and stops when the chaos tests
    are done rather than idling through the rest of the suite.

    The workers run copies of this checkout (RETIRE_CHAOS_PROJECT names another one). The stack's folder
    (RETIRE_HOME, the copies, every log) is kept when a test failed or RETIRE_CHAOS_KEEP is set.
    """
    root = Path(tempfile.mkdtemp(prefix="retire-chaos-"))
    print(f"\n[chaos] stack folder {root}", flush=True)
    project = Path(os.environ.get("RETIRE_CHAOS_PROJECT") or PROJECT_DIR)
    with running_stack(root, project=project, say=lambda s: print(s, flush=True)) as (stack, postgres):
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


@pytest.fixture(scope="package")
def background(chaos_stack: ChaosStack, request: pytest.FixtureRequest) -> Iterator[Background]:
    """Starts, with the stack, the scenario of every selected test marked ``background``; stops them at the end."""
    started = Background(chaos_stack)
    scenarios = {}
    for item in request.session.items:
        marker = item.get_closest_marker("background")
        if marker is not None and _is_chaos(item):
            scenarios[marker.args[0].__name__] = marker.args[0]
    print(f"[chaos] background scenarios start: {', '.join(scenarios) or 'none'}", flush=True)
    started.start(scenarios)
    yield started
    started.close()


@pytest.fixture(autouse=True)
def retire_home(chaos_stack: ChaosStack, background: Background, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
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
