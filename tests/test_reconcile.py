"""The reconciler's judgement: a retirement no run carries is resumed at its phase; a person's stop is respected."""

from __future__ import annotations

from datetime import timedelta

from retirement.models import Phase, RetirementRequest, utcnow
from retirement.reconcile import RunView, decide
from retirement.state import RetirementState

NOW = utcnow()


def _state(**fields: object) -> RetirementState:
    request = RetirementRequest(
        model="churn-model@1",
        replacement="churn-model@2",
        requester="alice",
        approvers=["bob"],
        reason="v2 replaces it",
    )
    return RetirementState(id="ret-churn-model-1-abcdef", request=request, **fields)  # type: ignore[arg-type]


def _run(kind: str, ago: float = 300, message: str = "", name: str = "retire churn-model@1 · backup") -> RunView:
    return RunView(
        id=f"run-{kind}",
        name=name,
        state_type=kind,
        state_name=kind.capitalize(),
        message=message,
        started=NOW - timedelta(seconds=ago),
    )


def test_a_live_run_carries_the_retirement() -> None:
    for kind in ("SCHEDULED", "PENDING", "RUNNING", "PAUSED", "CANCELLING"):
        decision = decide(_state(phase=Phase.BACKUP), [_run("CRASHED"), _run(kind, ago=10)], NOW)
        assert decision.action == "leave", kind


def test_a_crashed_run_is_resumed_at_the_phase_it_reached() -> None:
    decision = decide(_state(phase=Phase.BACKUP), [_run("CRASHED", message="no heartbeat for 90 s")], NOW)
    assert decision.action == "resume" and decision.phase is Phase.BACKUP and decision.at == NOW
    assert "ended Crashed" in decision.reason and "no heartbeat" in decision.reason


def test_a_waiting_retirement_whose_scheduled_run_vanished_resumes_at_the_next_phase_on_time() -> None:
    later = NOW + timedelta(hours=2)
    state = _state(phase=Phase.CUTOVER, status="waiting", next_phase=Phase.VERIFY_IDLE, next_run_at=later)
    decision = decide(state, [_run("COMPLETED", ago=600)], NOW)
    assert decision.action == "resume" and decision.phase is Phase.VERIFY_IDLE and decision.at == later
    past = _state(phase=Phase.CUTOVER, status="waiting", next_phase=Phase.VERIFY_IDLE, next_run_at=NOW - timedelta(1))
    assert decide(past, [_run("COMPLETED", ago=600)], NOW).at == NOW


def test_a_run_a_person_cancelled_is_not_fought_but_flagged() -> None:
    decision = decide(_state(phase=Phase.BACKUP), [_run("CANCELLED", message="cancelled from the UI")], NOW)
    assert decision.action == "attention" and "retire cancel" in decision.reason
    own = decide(_state(), [_run("CANCELLED", message="retirement ret-x: gate answered")], NOW)
    assert own.action == "resume"


def test_a_phase_that_keeps_failing_asks_a_person_with_the_reason() -> None:
    resumes = [{"phase": "backup", "at": NOW.isoformat(), "run": f"r{i}", "why": "x"} for i in range(5)]
    decision = decide(_state(phase=Phase.BACKUP, resumes=resumes), [_run("FAILED", message="disk full")], NOW)
    assert decision.action == "attention" and "disk full" in decision.reason and "5 times" in decision.reason


def test_stopped_retirements_and_just_finished_runs_are_left() -> None:
    for status in ("halted", "cancelled", "done"):
        assert decide(_state(status=status), [_run("FAILED")], NOW).action == "leave"
    assert decide(_state(), [_run("COMPLETED", ago=5)], NOW).action == "leave"


def test_a_run_stuck_pending_past_the_limit_was_lost_with_its_worker() -> None:
    stuck = RunView(
        "run-p", "retire churn-model@1 · backup", "PENDING", "Pending", "", None, NOW - timedelta(minutes=9)
    )
    decision = decide(_state(phase=Phase.BACKUP), [stuck], NOW)
    assert decision.action == "resume" and decision.lost == ("run-p",) and "stuck Pending" in decision.reason
    fresh = RunView("run-q", "x", "PENDING", "Pending", "", None, NOW - timedelta(seconds=20))
    assert decide(_state(phase=Phase.BACKUP), [fresh], NOW).action == "leave"
