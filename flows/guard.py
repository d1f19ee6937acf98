"""One retirement per model at a time, across processes: a Prefect global concurrency limit per model."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists

from retirement.errors import ConflictError
from retirement.models import RetirementRequest


def limit_name(request: RetirementRequest) -> str:
    """The limit's name for the model being retired."""
    ref = request.ref
    return "retire-" + re.sub(r"[^a-z0-9-]+", "-", f"{ref.platform}-{ref}".lower()).strip("-")


@contextmanager
def one_retirement_per_model(request: RetirementRequest, retirement_id: str) -> Iterator[None]:
    """Hold the model's limit (created first: a missing limit would silently not guard).

    Raises:
        ConflictError: another run holds the model; the message names this retirement's model.
    """
    name = limit_name(request)
    with get_client(sync_client=True) as client, suppress(ObjectAlreadyExists):
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
    try:
        with concurrency(name, occupy=1, timeout_seconds=5, strict=True):
            yield
    except TimeoutError:
        raise ConflictError(
            f"another run is working on {request.ref} right now (concurrency limit {name}); "
            f"this run of {retirement_id} did nothing. A run whose process was killed holds the limit "
            "until its lease expires (5 minutes); retry after that"
        ) from None
