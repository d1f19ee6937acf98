"""Phase 1: the dossier and the plan, shown in the Prefect UI."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from retirement import protocol
from retirement.models import Dossier, RetirementRequest
from retirement.render import dossier_markdown
from tasks._context import load


@task(cache_policy=NO_CACHE, name="document")
def document(request: RetirementRequest, retirement_id: str) -> Dossier:
    """Make the dossier and the plan; publish both as artifacts."""
    svc, state = load(request, retirement_id)
    dossier = protocol.document(svc, state)
    get_run_logger().info(
        "dossier of %s: %d dependents, %d blockers", state.ref, len(dossier.dependents), len(dossier.blockers)
    )
    create_markdown_artifact(
        dossier_markdown(dossier, state.request), key=f"{retirement_id}-dossier", description=f"Dossier of {state.ref}"
    )
    create_table_artifact(
        [s.model_dump(mode="json") for s in dossier.plan],
        key=f"{retirement_id}-plan",
        description=f"Plan for retiring {state.ref}",
    )
    return dossier
