"""The reconciler's judgement: for each open retirement, is a run carrying it, or must one be started?

Runs are lost in ways no run can report itself: a worker killed with its flow-run processes, a server
restart, a run that failed on a transient error. The reconciler looks at every open retirement and its
flow runs (plain facts handed in, no Prefect here) and decides: leave it, resume it at the phase it
reached, or ask a person, saying why. A retirement never stays "running" with nothing running it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from retirement.models import Phase
from retirement.state import RetirementState

# Run states (Prefect's StateType values) in which a run still carries its retirement.
LIVE_STATES = frozenset({"SCHEDULED", "PENDING", "RUNNING", "PAUSED", "CANCELLING"})


@dataclass(frozen=True)
class RunView:
    """What the reconciler needs to know of one flow run."""

    id: str
    name: str
    state_type: str
    state_name: str
    message: str
    started: datetime | None
    since: datetime | None = None  # when the run entered its current state
    # A gate's deadline run (scheduled for when the gate fails safe, cancelled once it is answered): it never
    # carries the retirement, and its cancel is the retirement's own doing.
    deadline: bool = False


@dataclass(frozen=True)
class Decision:
    """What to do with one retirement."""

    retirement_id: str
    action: Literal["leave", "resume", "attention"]
    reason: str
    phase: Phase | None = None
    at: datetime | None = None
    lost: tuple[str, ...] = ()  # runs stuck Pending past the limit: marked Crashed before the resume


def decide(
    state: RetirementState,
    runs: list[RunView],
    now: datetime,
    *,
    max_resumes: int = 5,
    settle: timedelta = timedelta(seconds=30),
    pending_limit: timedelta = timedelta(minutes=5),
) -> Decision:
    """Judge one retirement from its stored state and its flow runs.

    A run Pending for longer than ``pending_limit`` was lost with the worker that picked it up (it never
    started, so it never beat): it no longer counts as carrying the retirement.
    """
    rid = state.id
    if state.stopped:
        return Decision(rid, "leave", f"{state.status}: nothing to carry")
    # A deadline run scheduled days ahead would otherwise count as live while the run it guards is gone,
    # and once cancelled (its gate answered) it would look like the last run, cancelled by a person.
    runs = [r for r in runs if not r.deadline]
    lost = tuple(
        r.id for r in runs if r.state_type == "PENDING" and r.since is not None and now - r.since > pending_limit
    )
    live = [r for r in runs if r.state_type in LIVE_STATES and r.id not in lost]
    if live:
        run = live[0]
        return Decision(rid, "leave", f"live run {run.name} ({run.state_name})")
    ended = sorted((r for r in runs if r.started is not None), key=lambda r: r.started or now)
    last = ended[-1] if ended else None
    if last is not None and last.state_type == "CANCELLED" and last.message.startswith("retirement"):
        pass  # cancelled by the retirement itself (a gate deadline, an answered gate): not a person's stop
    elif last is not None and last.state_type == "CANCELLED":
        return Decision(
            rid,
            "attention",
            f"its run {last.name} was cancelled by hand ({last.message or 'no message'}); stop the retirement with "
            f"`retire cancel {rid}` or let it go on with `retire resume {rid}`",
        )
    if state.status == "waiting" and state.next_phase is not None:
        phase, at = state.next_phase, max(now, state.next_run_at or now)
    else:
        phase, at = state.phase, now
    if last is not None and last.started is not None and now - last.started < settle and last.state_type == "COMPLETED":
        return Decision(rid, "leave", f"run {last.name} just ended; looking again shortly")
    same = [r for r in state.resumes if r.get("phase") == phase.value]
    if len(same) >= max_resumes:
        why = f"the last run {last.name} ended {last.state_name}: {last.message}" if last else "no run is left"
        return Decision(
            rid,
            "attention",
            f"resumed {len(same)} times at phase {phase.value} without getting past it; {why}",
        )
    why = f"its last run {last.name} ended {last.state_name}" if last else "it has no run"
    if last is not None and last.message:
        why += f" ({last.message[:200]})"
    if lost:
        why = (
            f"{len(lost)} run(s) stuck Pending for over {pending_limit.total_seconds() / 60:g} min (lost with a worker)"
        )
    return Decision(rid, "resume", why, phase=phase, at=at, lost=lost)


def silent(entered: datetime | None, last_beat: datetime | None, now: datetime, zombie_after: timedelta) -> bool:
    """True when a run that should beat (Running, or being cancelled) gave no sign of life for over ``zombie_after``:
    no heartbeat, and it did not enter its state, in that time. Its process is gone.
    """
    signs = [t for t in (entered, last_beat) if t is not None]
    return bool(signs) and now - max(signs) > zombie_after
