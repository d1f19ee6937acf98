"""Phase 6: back up and verify, with a progress bar in the UI."""

from __future__ import annotations

from uuid import UUID

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from retirement import protocol
from retirement.errors import SafetyError
from retirement.models import RetirementRequest, utcnow
from tasks._context import load


@task(cache_policy=NO_CACHE, name="backup")
def backup(request: RetirementRequest, retirement_id: str) -> str:
    """Export, write, verify; returns the backup location."""
    svc, state = load(request, retirement_id)
    artifact: UUID = create_progress_artifact(  # type: ignore[assignment]
        0.0, key=f"{retirement_id}-backup-progress", description=f"Backup of {state.ref}"
    )

    def progress(done: int, total: int | None) -> None:
        if total:
            update_progress_artifact(artifact, min(100.0, 100.0 * done / total))

    location = protocol.backup(svc, state, utcnow(), progress)
    update_progress_artifact(artifact, 100.0)
    drill = protocol.restore_drill(svc, state)
    get_run_logger().info("%s", protocol.drill_summary(state))
    if drill.get("problems"):
        raise SafetyError(protocol.drill_summary(state))
    manifest = next(m for m in svc.backups.list(state.ref) if m.location == location)
    create_table_artifact(
        [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in manifest.files],
        key=f"{retirement_id}-manifest",
        description=f"Backup manifest at {location}, kept until {manifest.retain_until.date()}",
    )
    get_run_logger().info(
        "backup of %s at %s: %d files, %d bytes, verified",
        state.ref,
        location,
        len(manifest.files),
        manifest.total_bytes,
    )
    return location


@task(name="approved-backup-verifies", cache_policy=NO_CACHE)
def approved_backup_verifies(request: RetirementRequest, retirement_id: str) -> bool:
    """After the deletion gate: the backup the approver saw still verifies (a failure is recorded and alerted)."""
    svc, state = load(request, retirement_id)
    ok = protocol.backup_still_approved(svc, state)
    if not ok:
        get_run_logger().error("the approved backup of %s no longer verifies: asking again", state.ref)
    return ok
