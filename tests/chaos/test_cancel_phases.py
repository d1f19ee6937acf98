"""`retire cancel` at each phase: the model is never deleted afterwards, the state and the runs stay cancelled.

Four retirements run at once, each cancelled by a person (`retire cancel ID --by carol`) at its own moment:

- bake: during the bake, its run running (the unbaked cutover is rolled back: production serves the old
  version again);
- backup: while the backup streams (its intent in the ledger, no outcome yet);
- gate: waiting at the deletion gate, nobody answered it (an answer after the cancel is refused);
- pending: during the pending window after the soft delete (the soft delete is undone; the delete was
  scheduled for later and never happens).

Then the stack is left alone past the moment the delete was due and through a reconciler run, and each
retirement must still be cancelled, with no live run, no run started after the cancel, no delete in
the ledger, and its old version still on the platform and answering.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from tests.chaos.cluster import Background, ChaosStack
from tests.chaos.fleet import (
    LIVE_RUN_STATES,
    Fleet,
    Retirement,
    gateway_status,
    ledger,
    platform_events,
    production,
    seed,
    short_windows,
)

pytestmark = pytest.mark.chaos

DEADLINE_SECONDS = 420
BIG = 1024 * 1024 * 1024  # its backup streams for seconds: long enough for `retire cancel` to land in it
UNDO = ("rollback", "reactivate")  # what a cancel may still do: put things back
PENDING_SECONDS = 150  # `retire cancel` lands well inside it even on a loaded machine


def _running(stack: ChaosStack, member: Retirement) -> bool:
    return any(r["state_type"] == "RUNNING" and stack.workers.worker_of(r["id"]) is not None for r in member.runs)


def _reconciler_runs_since(stack: ChaosStack, since: datetime) -> int:
    runs = stack.prefect.request(
        "POST",
        "flow_runs/filter",
        {"flow_runs": {"tags": {"all_": ["reconciler"]}, "state": {"type": {"any_": ["COMPLETED"]}}}, "limit": 200},
    )
    return sum(1 for r in runs if r.get("start_time") and datetime.fromisoformat(r["start_time"]) > since)


def cancel_scenario(stack: ChaosStack, background: Background) -> str:
    """Runs in the background with the stack (see the module's docstring); returns what each cancel printed.

    Marks ``cancel_scenario:landed`` once the four cancels are done (the worker kills wait for it).
    """
    fleet = Fleet(stack, say=lambda text: print(f"[cancel] {text}", flush=True), stop=background.stop)
    cancels: dict[str, dict[str, Any]] = {}
    home = stack.home
    lines: list[str] = []

    def cancel(member: Retirement) -> None:
        live = [r["id"] for r in member.live_runs()]
        waiting = [r["id"] for r in member.runs if r["state_type"] in ("SCHEDULED", "PAUSED")]
        record: dict[str, Any] = {
            "at": datetime.now(UTC),
            "live": live,
            "waiting": waiting,
            "phase": member.phase,
            "due": member.data.get("next_run_at"),  # when the next phase was scheduled (the cancel clears it)
        }
        cancels[member.label.removeprefix("cancel-")] = record

        def run() -> None:
            result = stack.retire("cancel", member.rid or "", "--by", "carol", "--wait", "120", timeout=200)
            record["output"] = result.stdout
            record["returned"] = datetime.now(UTC)

        fleet.background(member, "retire cancel", run)

    try:
        members = {
            "bake": fleet.start("cancel-bake", *seed(home, "cancel-bake"), **short_windows(bake_minutes=1.5)),
            "backup": fleet.start("cancel-backup", *seed(home, "cancel-backup", BIG), **short_windows()),
            "gate": fleet.start(
                "cancel-gate",
                *seed(home, "cancel-gate"),
                answer=("approve-plan", "approve-cutover"),
                **short_windows(),
            ),
            "pending": fleet.start(
                "cancel-pending",
                *seed(home, "cancel-pending"),
                **short_windows(soft_delete=True, pending_delete_hours=PENDING_SECONDS / 3600),
            ),
        }

        def in_bake(m: Retirement) -> bool:
            return m.phase == "cutover" and bool(m.data.get("cutover_at")) and _running(stack, m)

        def in_backup(m: Retirement) -> bool:
            if m.phase != "backup" or m.data.get("backup_location") or not _running(stack, m):
                return False
            actions = [(k, a) for _, k, a, _ in ledger(stack, m.rid or "")]
            return ("intent", "backup") in actions and ("outcome", "backup") not in actions

        def at_deletion_gate(m: Retirement) -> bool:
            return any(
                (r["state"].get("state_details") or {}).get("pause_key", "").startswith("approve-deletion")
                for r in m.paused()
            )

        def pending(m: Retirement) -> bool:
            return (
                m.status == "waiting" and bool(m.data.get("soft_deleted_at")) and m.data.get("next_phase") == "delete"
            )

        fleet.when(members["bake"], "retire cancel during the bake", in_bake, cancel)
        fleet.when(members["backup"], "retire cancel during the backup", in_backup, cancel)
        fleet.when(members["gate"], "retire cancel at the deletion gate", at_deletion_gate, cancel)
        fleet.when(members["pending"], "retire cancel during the pending window", pending, cancel)
        fleet.wait(
            "every retirement cancelled",
            lambda: all(m.final for m in members.values()) and not fleet.pending_hooks() and fleet.idle(),
            DEADLINE_SECONDS,
            interval=1.0,
        )
        background.mark("cancel_scenario:landed")
        last = max(c["returned"] for c in cancels.values())
        due = cancels["pending"]["due"]
        assert due, f"the pending retirement had no delete scheduled: {members['pending'].describe()}"
        # Left alone: a reconciler run that started after the last cancel ended, and the time the delete was due
        # passed (the runs of those moments were cancelled; nothing may bring them back).
        fleet.wait(
            "a reconciler run after the cancels, and the pending delete's time passed",
            lambda: (
                _reconciler_runs_since(stack, last) >= 1
                and (not due or datetime.now(UTC) > datetime.fromisoformat(due))
            ),
            240,
        )
        gate_runs = [r for r in members["gate"].runs if r["id"] in cancels["gate"]["live"]]
        late = (
            stack.retire(
                "approve",
                gate_runs[0]["id"],
                "--approver",
                "bob",
                "--typed-reference",
                members["gate"].model,
                check=False,
            )
            if gate_runs
            else None
        )

        for label, member in members.items():
            record = cancels[label]
            report = fleet.report([member])
            assert member.status == "cancelled", f"{label}: {member.status}\n{report}"
            assert f"{member.rid} cancelled by carol" in record["output"], record["output"]
            status = stack.retire("status", member.rid or "").stdout
            assert " - cancelled cancelled by carol" in status.splitlines()[0], status
            live = [f"{r['name']} ({r['state_name']})" for r in member.runs if r["state_type"] in LIVE_RUN_STATES]
            assert not live, f"{label}: runs still live after the cancel: {live}\n{report}"
            # The runs that would have carried it on (scheduled, at a gate, at work) were cancelled; a run that had
            # just done its part (it scheduled the next phase) may have ended on its own, doing nothing more.
            was_live = [r for r in member.runs if r["id"] in record["live"]]
            waiting = [r for r in was_live if r["id"] in record["waiting"]]
            assert all(r["state_type"] == "CANCELLED" for r in waiting), (
                f"{label}: {[(r['name'], r['state_name']) for r in waiting]}\n{report}"
            )
            assert all(r["state_type"] in ("CANCELLED", "COMPLETED") for r in was_live), (
                f"{label}: {[(r['name'], r['state_name']) for r in was_live]}\n{report}"
            )
            after = [r["name"] for r in member.runs if datetime.fromisoformat(r["created"]) > record["returned"]]
            assert not after, f"{label}: runs created after the cancel: {after}\n{report}"
            entries = ledger(stack, member.rid or "")
            assert not [e for e in entries if e[2] == "delete"], f"{label}: a delete in the ledger: {entries}"
            cancel_seq = next(seq for seq, kind, action, _ in entries if (kind, action) == ("decision", "cancel"))
            acted = [(k, a) for seq, k, a, _ in entries if seq > cancel_seq and k == "intent" and a not in UNDO]
            assert not acted, f"{label}: actions begun after the cancel: {acted}\n{entries}"
            events = platform_events(stack, member.model)
            assert "deleted" not in events, f"{label}: {member.model} deleted after the cancel: {events}"
            assert gateway_status(stack, member.model) == 200, f"{label}: {member.model} no longer answers: {events}"
            said = " / ".join(record["output"].strip().splitlines())
            lines.append(f"{label}: cancelled in phase {record['phase']}; platform events {events}; {said}")

        name = members["bake"].model.partition("@")[0]
        assert production(stack, name) == members["bake"].model, "the unbaked cutover was not rolled back"
        assert "rolled back" in cancels["bake"]["output"], cancels["bake"]["output"]
        for label in ("backup", "gate", "pending"):
            name = members[label].model.partition("@")[0]
            assert production(stack, name) == members[label].replacement, (
                f"{label}: production {production(stack, name)}"
            )
        backup = [(k, a) for _, k, a, _ in ledger(stack, members["backup"].rid or "") if a == "backup"]
        assert backup == [("intent", "backup")], f"the cancel did not land during the backup: {backup}"
        assert platform_events(stack, members["pending"].model)[-2:] == ["deactivated", "reactivated"]
        assert "reactivated" in cancels["pending"]["output"], cancels["pending"]["output"]
        assert late is not None and late.returncode != 0, (
            f"an answer after the cancel was accepted: {late and late.stdout}"
        )
    finally:
        fleet.close()
    return "\n".join(lines)


@pytest.mark.background.with_args(cancel_scenario)
@pytest.mark.timeout(DEADLINE_SECONDS + 500)
def test_cancel_at_each_phase_stops_for_good(background: Background) -> None:
    took, said = background.result("cancel_scenario", timeout=DEADLINE_SECONDS + 400)
    print(f"[cancel] the four cancels held for {took:.0f}s:\n{said}", flush=True)
