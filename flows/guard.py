"""One run works on a retirement at a time: the store records which run does, and Prefect says if it still lives.

The model itself is claimed by the retirement in the store (a unique row taken when it opened), so a
busy server can never make a run of the retirement that holds the model look like a conflict. A second
run of the same retirement (a retry racing the reconciler, say) waits while the first is alive, then
fails naming it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.exceptions import ObjectNotFound
from prefect.runtime import flow_run

from retirement.models import RetirementRequest
from tasks._context import services_for

# A run in one of these states may still act on the retirement.
LIVE = frozenset({StateType.PENDING, StateType.RUNNING, StateType.PAUSED, StateType.CANCELLING})


def is_live(run_id: str) -> bool:
    """True while the flow run may still act (running, pending, paused at a gate, being cancelled)."""
    try:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(UUID(run_id))
    except (ObjectNotFound, ValueError):
        return False
    return run.state is not None and run.state.type in LIVE


@contextmanager
def working_on(request: RetirementRequest, retirement_id: str, wait_seconds: float = 600) -> Iterator[None]:
    """Hold the retirement for this flow run (waiting while another live run holds it).

    Raises:
        ConflictError: another live run still holds it after ``wait_seconds``; the message names it.
    """
    run_id = flow_run.get_id()
    if not run_id:
        yield
        return
    states = services_for(request).states
    states.acquire_run(retirement_id, run_id, is_live, wait_seconds=wait_seconds)
    try:
        yield
    finally:
        with suppress(Exception):  # the run is ending anyway; the next one takes over from a dead holder
            states.release_run(retirement_id, run_id)
