"""Two starts of one model released at the same instant: exactly one retirement proceeds, every time.

Each round is a fresh model and two runs of the `retire-model` deployment with the same request (what
two people pressing "start" would create), both scheduled through the Prefect API for the same moment,
so the two workers pick them up together. A barrier then lines them up on the one point where they
can collide: the test holds the model's claim row in an open, uncommitted PostgreSQL transaction, so
each run's insert of that claim blocks on it; once both are blocked (seen in pg_locks) the transaction
is rolled back and both inserts go in the same instant. Exactly one retirement must be opened: one run
waits at the plan gate, the other fails naming the retirement that holds the model. The winner is then
cancelled with `retire cancel`, which releases the model.

50 rounds through the store directly are in tests/store/test_state_store.py. Through Prefect each round
costs two flow runs (four Python processes with the workers' supervisors) and a `retire cancel`, on a
machine the other scenarios load at the same time, so this runs 6 rounds, 3 pairs in parallel at a time
(2 batches; two to four minutes on 2 cores), which keeps the whole chaos package near 15 minutes.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from retirement.models import ModelRef, RetirementRequest
from retirement.state import model_key
from tests.chaos.cluster import DEPLOYMENT, Background, ChaosStack
from tests.chaos.fleet import APPROVER, REQUESTER, Fleet, seed, short_windows

pytestmark = pytest.mark.chaos

ROUNDS = 6
PAIRS_AT_ONCE = 3
LEAD_SECONDS = 8  # the runs are scheduled this far ahead, so both exist before either starts
BARRIER_SECONDS = 300
ENDED = ("FAILED", "CRASHED", "COMPLETED", "CANCELLED")


class ClaimBarrier:
    """Holds the model's claim row in an open transaction: every run inserting that claim waits on it."""

    def __init__(self, stack: ChaosStack, key: str) -> None:
        self.stack = stack
        self.conn = psycopg.connect(stack.postgres.dsn(), connect_timeout=10)
        self.conn.execute(
            "INSERT INTO claims (model_key, retirement_id, claimed_at) VALUES (%s, 'chaos-barrier', now())", (key,)
        )
        row = self.conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        self.pid = int(row[0])
        self.released_with: int | None = None

    def waiting(self) -> int:
        """How many transactions wait for this one (the runs' inserts of the claim)."""
        rows = self.stack.postgres.query(
            "SELECT count(*) FROM pg_locks w JOIN pg_locks h ON h.locktype = 'transactionid' "
            "AND h.transactionid = w.transactionid AND h.granted AND h.pid = %s "
            "WHERE w.locktype = 'transactionid' AND NOT w.granted",
            (self.pid,),
        )
        return int(rows[0][0])

    def release(self) -> None:
        if self.released_with is None:
            self.released_with = self.waiting()
            self.conn.rollback()
            self.conn.close()


def _request(model: str, replacement: str) -> dict[str, Any]:
    request = RetirementRequest(
        model=model,
        replacement=replacement,
        requester=REQUESTER,
        approvers=[APPROVER, "carol"],
        reason="chaos: two starts at once",
        traffic_sources=["local"],
        **short_windows(),
    )
    return request.model_dump(mode="json")


def _run(stack: ChaosStack, deployment_id: str, request: dict[str, Any], at: datetime) -> str:
    run = stack.prefect.request(
        "POST",
        f"deployments/{deployment_id}/create_flow_run",
        {
            "parameters": {"request": request},
            "state": {"type": "SCHEDULED", "state_details": {"scheduled_time": at.isoformat()}},
        },
    )
    return str(run["id"])


def _opened(stack: ChaosStack, key: str) -> list[tuple[str, str]]:
    return [
        (r[0], r[1]) for r in stack.postgres.query("SELECT id, status FROM retirements WHERE model_key = %s", (key,))
    ]


def _batch(stack: ChaosStack, fleet: Fleet, deployment_id: str, batch: int, home: Path) -> list[dict[str, Any]]:
    """PAIRS_AT_ONCE rounds at once: two runs per model, the barrier, and what became of each pair."""
    t0 = time.monotonic()
    at = datetime.now(UTC) + timedelta(seconds=LEAD_SECONDS)
    rounds: list[dict[str, Any]] = []
    try:
        for i in range(PAIRS_AT_ONCE):
            model, replacement = seed(home, f"race-{batch}-{i}")
            key = model_key(ModelRef.parse(model))
            barrier = ClaimBarrier(stack, key)
            rounds.append({"model": model, "key": key, "barrier": barrier, "runs": [], "states": {}})
            request = _request(model, replacement)
            rounds[-1]["runs"] = [_run(stack, deployment_id, request, at) for _ in range(2)]

        def look() -> None:
            for r in rounds:
                r["states"] = {run["id"]: run for run in stack.prefect.flow_runs(ids=r["runs"])}
                r["opened"] = _opened(stack, r["key"])

        def both_at_the_barrier() -> bool:
            for r in rounds:
                if r["barrier"].released_with is None and r["barrier"].waiting() >= 2:
                    r["barrier"].release()
                    r["met_after"] = time.monotonic() - t0
            look()
            return all(r["barrier"].released_with is not None for r in rounds)

        try:
            fleet.wait(
                f"batch {batch}: both runs of every pair blocked on the claim", both_at_the_barrier, BARRIER_SECONDS
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{_describe(rounds)}") from None
    finally:
        for r in rounds:
            r["barrier"].release()

    def settled() -> bool:
        look()
        return all(run["state_type"] in ("PAUSED", *ENDED) for r in rounds for run in r["states"].values())

    try:
        fleet.wait(f"batch {batch}: one run of each pair at the plan gate, the other ended", settled, 300)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{_describe(rounds)}") from None
    return rounds


def _describe(rounds: list[dict[str, Any]]) -> str:
    lines = []
    for r in rounds:
        lines.append(f"{r['model']}: opened {r.get('opened')}, waiting at the barrier {r['barrier'].released_with}")
        for run in r["states"].values():
            message = (run["state"].get("message") or "")[:200]
            lines.append(f"  {run['id'][:8]} {run['name']:<40} {run['state_name']:<10} {message}")
    return "\n".join(lines)


def race_scenario(stack: ChaosStack, background: Background) -> str:
    """Runs in the background with the stack (see the module's docstring); returns one line per round."""
    fleet = Fleet(stack, say=lambda text: print(f"[race] {text}", flush=True), stop=background.stop)
    stack.retire("status")  # the first process that opens the retirement database creates its schema
    deployment_id = stack.prefect.request("GET", f"deployments/name/{DEPLOYMENT}")["id"]
    results: list[str] = []
    try:
        for batch in range(ROUNDS // PAIRS_AT_ONCE):
            rounds = _batch(stack, fleet, deployment_id, batch, stack.home)
            for r in rounds:
                assert len(r["opened"]) == 1, (
                    f"{r['model']}: {len(r['opened'])} retirements opened\n{_describe(rounds)}"
                )
                rid = r["opened"][0][0]
                paused = [run for run in r["states"].values() if run["state_type"] == "PAUSED"]
                failed = [run for run in r["states"].values() if run["state_type"] == "FAILED"]
                assert len(paused) == 1 and len(failed) == 1, _describe(rounds)
                assert rid in paused[0]["tags"], f"{r['model']}: the run at the gate is not {rid}\n{_describe(rounds)}"
                message = failed[0]["state"].get("message") or ""
                assert f"already being retired by {rid}" in message, f"{r['model']}: the loser says: {message}"
                met = f"both runs met at the claim after {r['met_after']:.0f}s"
                results.append(f"{r['model']}: {met}; {rid} proceeds, the other failed")
                fleet.say(results[-1])
            for r in rounds:  # the winners are cancelled together; each releases its model
                rid = r["opened"][0][0]
                fleet.background_call(f"cancel {rid}", lambda rid=rid: stack.retire("cancel", rid, "--by", "chaos"))
            said = fleet.join_calls(120)
            for r in rounds:
                rid = r["opened"][0][0]
                assert f"{rid} cancelled by chaos" in said[f"cancel {rid}"].stdout, said[f"cancel {rid}"].stdout
                assert _opened(stack, r["key"]) == [(rid, "cancelled")]
                assert not stack.postgres.query("SELECT 1 FROM claims WHERE model_key = %s", (r["key"],))
        assert len(results) == ROUNDS
    finally:
        fleet.close()
    return "\n".join(results)


@pytest.mark.background.with_args(race_scenario)
@pytest.mark.timeout(900)
def test_two_starts_at_the_same_instant_open_one_retirement(background: Background) -> None:
    took, said = background.result("race_scenario", timeout=800)
    print(f"[race] {ROUNDS} rounds in {took:.0f}s, exactly one retirement each:\n{said}", flush=True)
