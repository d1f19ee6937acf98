"""kill -9 of a worker and its flow-run processes in the middle of a phase: every retirement comes back by itself.

Three retirements are each hit once, at their own moment:

- bake: during the bake (the cutover done, the bake watching the replacement);
- backup: during the backup (its intent in the ledger, no outcome yet: files being streamed);
- gate: right after the deletion gate was answered (the resumed run is running).

Each time, the worker running that retirement's run is killed with SIGKILL together with every flow-run
process under it (the other two retirements' runs on that worker die too), and started again at once, as a
supervisor would. Nobody touches the retirements afterwards:
the reconciler (every minute) finds each dead run Running without a heartbeat for
RETIRE_ZOMBIE_AFTER_SECONDS (60 in the stack), marks it Crashed and resumes its retirement at the phase it
reached. Every retirement must end done, each destructive
call made once (the ledger has one outcome each, the platform deleted the version once).

The scenario runs in the background from the start: its retirements wait at a gate until the race and
the load scenario are over and the cancels have landed (a kill takes down every run on the worker, and
those checks do not expect their runs to crash), then go on and are killed within a minute or two.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.chaos.cluster import Background, ChaosStack
from tests.chaos.fleet import GATES, Fleet, Retirement, check_retired, ledger, seed, settle_runs, short_windows

pytestmark = pytest.mark.chaos

DEADLINE_SECONDS = 720
AFTER = ("race_scenario", "cancel_scenario:landed", "load_scenario")
BIG = 384 * 1024 * 1024  # the backup of this one streams long enough to be caught in the middle


def _reconciler_ran(stack: ChaosStack) -> bool:
    """A run of the retirement-reconciler deployment (scheduled every minute) completed on the pool."""
    runs = stack.prefect.request(
        "POST",
        "flow_runs/filter",
        {"flow_runs": {"tags": {"all_": ["reconciler"]}, "state": {"type": {"any_": ["COMPLETED"]}}}, "limit": 1},
    )
    return bool(runs)


def _running_process(stack: ChaosStack, member: Retirement) -> tuple[int, str] | None:
    """(worker, run id) of a run of ``member`` that runs in a flow-run process right now."""
    for run in member.runs:
        if run["state_type"] == "RUNNING":
            worker = stack.workers.worker_of(run["id"])
            if worker is not None:
                return worker, run["id"]
    return None


def kill_scenario(stack: ChaosStack, background: Background) -> str:
    """Runs in the background (see the module's docstring); returns what was killed and how each came back.

    The three retirements start with the stack and wait at a gate (the cutover gate, or the deletion gate
    for the one killed after it) until the other scenarios no longer need the workers whole; then their
    gates are answered and the kills follow within a minute or two.
    """
    fleet = Fleet(stack, say=lambda text: print(f"[kills] {text}", flush=True), stop=background.stop)
    kills: list[dict[str, Any]] = []
    lines: list[str] = []

    def kill(member: Retirement) -> None:
        target = _running_process(stack, member)
        assert target is not None
        worker, run_id = target
        alongside = [p.flow_run_id[:8] for p in stack.workers.flow_run_processes(worker) if p.flow_run_id != run_id]
        pids = stack.workers.kill_worker(worker)
        kills.append({"who": member.label, "worker": worker, "run": run_id, "pids": pids, "at": time.monotonic()})
        lines.append(
            f"{member.label}: killed worker {worker} in phase {member.phase} (run {run_id[:8]}, pids {pids}; "
            f"other runs killed with it: {alongside or 'none'})"
        )
        stack.workers.start_worker(worker, wait=False)

    try:
        specs = [
            ("bake", seed(stack.home, "kill-bake"), short_windows(bake_minutes=1.0)),
            ("backup", seed(stack.home, "kill-backup", BIG), short_windows()),
            ("gate", seed(stack.home, "kill-gate"), short_windows()),
        ]
        held = {"bake": "approve-cutover", "backup": "approve-cutover", "gate": "approve-deletion"}
        members = {
            label: fleet.start(f"kill-{label}", old, new, answer=set(GATES) - {held[label]}, **fields)
            for label, (old, new), fields in specs
        }
        t0 = time.monotonic()
        for label, member in members.items():
            fleet.when(
                member,
                f"{held[label]} released (the race and the load are over, the cancels landed)",
                lambda m: not background.wait_for(AFTER, 0),
                lambda m, gate=held[label]: m.answer.add(gate),
            )
        fleet.wait("the race and the load over, the cancels landed", lambda: not background.wait_for(AFTER, 0), 1500)
        lines.append(f"the kills waited {time.monotonic() - t0:.0f}s for the race, the cancels and the load")
        # The reconciler's schedule is active after the deploy and its runs are picked up by the workers.
        fleet.wait("a scheduled reconciler run completed", lambda: _reconciler_ran(stack), 180)

        def in_bake(m: Retirement) -> bool:
            return m.phase == "cutover" and bool(m.data.get("cutover_at")) and _running_process(stack, m) is not None

        def in_backup(m: Retirement) -> bool:
            if m.phase != "backup" or m.data.get("backup_location") or _running_process(stack, m) is None:
                return False
            actions = [(k, a) for _, k, a, _ in ledger(stack, m.rid or "")]
            return ("intent", "backup") in actions and ("outcome", "backup") not in actions

        def gate_answered(m: Retirement) -> bool:
            return "approve-deletion" in m.answered and _running_process(stack, m) is not None

        fleet.when(members["bake"], "kill -9 of its worker during the bake", in_bake, kill)
        fleet.when(members["backup"], "kill -9 of its worker during the backup", in_backup, kill)
        fleet.when(
            members["gate"], "kill -9 of its worker right after the deletion gate was answered", gate_answered, kill
        )
        took = fleet.wait(
            "every retirement ended", lambda: all(m.final for m in members.values()), DEADLINE_SECONDS, interval=1.0
        )
        assert not fleet.pending_hooks(), f"kills never made: {fleet.pending_hooks()}\n{fleet.report()}"
        settle_runs(fleet, members.values())
        for label, member in members.items():
            problems = check_retired(stack, member)
            assert not problems, f"{label}: {problems}\n{fleet.report([member])}"
            resumes = [r.get("why") for r in member.data.get("resumes") or []]
            assert resumes, f"{label}: done without a resume by the reconciler?\n{fleet.report([member])}"
            lines.append(f"{label}: done in {member.took:.0f}s, resumed by the reconciler {len(resumes)}x: {resumes}")
        lines.append(f"all three ended {took:.0f}s after the kills were armed")
    finally:
        fleet.close()
    return "\n".join(lines)


@pytest.mark.background.with_args(kill_scenario)
@pytest.mark.timeout(2700)
def test_killed_workers_runs_come_back_and_finish(background: Background) -> None:
    took, said = background.result("kill_scenario", timeout=2600)
    print(f"[kills] {took:.0f}s:\n{said}", flush=True)
