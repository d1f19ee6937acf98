"""The reconciler: every minute, each open retirement is carried by a live run, or one is started for it."""

from __future__ import annotations

from prefect import flow

from tasks import reconcile


@flow(name="retirement-reconciler", log_prints=False)
def retirement_reconciler() -> str:
    """Resume retirements no run carries (a lost worker, a crash, a transient failure); flag what needs a person."""
    reconcile.drop_zombie_automation()
    reconcile.crash_silent_runs()  # runs whose process is gone: their retirements are judged as crashed below
    resumed = flagged = 0
    for decision, request in reconcile.judge():
        if decision.action == "resume":
            reconcile.resume(decision, request)
            resumed += 1
        elif decision.action == "attention":
            reconcile.flag(decision, request)
            flagged += 1
    return f"{resumed} resumed, {flagged} need attention"
