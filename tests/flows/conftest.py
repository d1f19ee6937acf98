"""One Prefect test server for the flow tests, and a driver that answers gates like a person in the UI."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
from prefect.client.schemas.objects import StateType
from prefect.flow_runs import resume_flow_run
from prefect.settings import (
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
    PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_ENABLED,
    temporary_settings,
)
from prefect.testing.utilities import prefect_test_harness

import tasks._context
from retirement import bootstrap
from retirement.models import Phase, RetirementRequest, utcnow
from retirement.state import RetirementState
from tests.fakes.platform import World, make_world

Answer = dict[str, Any] | Callable[[], dict[str, Any]]


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """A temporary Prefect server (SQLite) for the whole session."""
    # The task-run recorder is a second writer on the server's SQLite file; under load its bulk inserts hold
    # the write lock long enough to stall API calls. Nothing here reads what it records.
    quiet = {PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None, PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_ENABLED: False}
    with temporary_settings(quiet), prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture
def world(prefect_server: None, retire_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    """A fake platform wired in as the services of every task."""
    monkeypatch.setenv("RETIRE_GATE_POLL_SECONDS", "1")
    w = make_world(retire_home)
    bootstrap.use_factory(w.factory)
    tasks._context.reset()
    yield w
    bootstrap.use_factory(None)
    tasks._context.reset()


class Driver:
    """Runs the flow phase after phase as the scheduler would, answering gates through the API."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.refused: list[str] = []
        self.answered: list[str] = []

    def paused_runs(self) -> list[Any]:
        with get_client(sync_client=True) as client:
            return client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))
                )
            )

    def run_leg(
        self, request: RetirementRequest, phase: Phase, rid: str | None, answers: dict[str, list[Answer]]
    ) -> Any:
        from flows.retire_model import retire_model

        result: dict[str, Any] = {}

        def target() -> None:
            try:
                result["state"] = retire_model(request=request, phase=phase, retirement_id=rid, return_state=True)
            except BaseException as exc:  # a simulated kill of the process
                result["state"] = exc

        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        deadline = time.monotonic() + 120
        while thread.is_alive():
            for run in self.paused_runs():
                gate = run.state.state_details.pause_key.rsplit("-", 1)[0]
                queue = answers.get(gate)
                if queue is None:
                    raise AssertionError(f"the flow asked gate {gate} and the test has no answer for it")
                if not queue:
                    continue  # left unanswered on purpose
                answer = queue[0]
                payload = answer() if callable(answer) else answer
                try:
                    resume_flow_run(run.id, run_input=payload)
                    self.answered.append(gate)
                except RuntimeError as exc:
                    self.refused.append(f"{gate}: {exc}")
                queue.pop(0)
            thread.join(0.3)
            assert time.monotonic() < deadline, "flow did not finish in time"
        return result["state"]

    def run(
        self,
        request: RetirementRequest,
        answers: dict[str, list[Answer]],
        max_legs: int = 10,
        start: tuple[Phase, str] | None = None,
    ) -> tuple[Any, RetirementState]:
        """Every leg until the retirement ends or stops scheduling; returns the last flow state and the retirement."""
        phase: Phase = start[0] if start else Phase.DOCUMENT
        rid: str | None = start[1] if start else None
        for _ in range(max_legs):
            flow_state = self.run_leg(request, phase, rid, answers)
            states = self.world.services.states.all()
            assert states, f"no retirement opened: {flow_state}"
            state = states[0]
            rid = state.id
            if state.status != "waiting" or state.next_phase is None or state.next_run_at is None:
                return flow_state, state
            wait = (state.next_run_at - utcnow()).total_seconds()
            if wait > 0:
                time.sleep(wait)
            phase = state.next_phase
        raise AssertionError("retirement did not end")


@pytest.fixture
def driver(world: World) -> Driver:
    return Driver(world)
