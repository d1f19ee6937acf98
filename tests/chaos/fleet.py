"""Drive many retirements on the chaos stack at once, as their people do, and read what they would see.

A :class:`Fleet` starts retirements with `retire start`, answers their gates with `retire approve` (the
approvers are scripted), and on every tick reads each retirement's row in the retirement database and
its flow runs from the Prefect API. Scenario code hooks into the ticks (:meth:`Fleet.when`) to kill a
worker or cancel a retirement at the right moment. One polling loop serves every retirement, and the
`retire` commands run in a small thread pool, so ten retirements cost about as much as one to watch.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.chaos.cluster import ChaosStack, HarnessError

REQUESTER = "alice"
APPROVER = "bob"
GATES = ("approve-plan", "approve-cutover", "approve-deletion")
DESTRUCTIVE = ("cutover", "rollback", "soft-delete", "reactivate", "delete")
OPEN = ("running", "waiting", "awaiting_approval")
FINAL = ("halted", "cancelled", "done")
LIVE_RUN_STATES = ("SCHEDULED", "PENDING", "RUNNING", "PAUSED", "CANCELLING")


def short_windows(**fields: Any) -> dict[str, Any]:
    """Request fields of a retirement of seconds: 10 s traffic window, 5 s bake, no pending window, no monitoring."""
    base: dict[str, Any] = {
        "traffic_window_hours": 10 / 3600,
        "bake_minutes": 5 / 60,
        "pending_delete_hours": 0,
        "monitor_days": 0,
    }
    base.update(fields)
    return base


def seed(home: Path, name: str, size: int = 256 * 1024) -> tuple[str, str]:
    """``name@1`` in production and ``name@2`` in staging on the local platform; returns both references."""
    from retirement.platforms.local import LocalRegistry

    old, new = LocalRegistry(home / "local").seed_demo(size, name=name, reset=True)
    return str(old), str(new)


@dataclass
class Retirement:
    """One retirement as the test follows it: what was started, and what the store and Prefect say now."""

    label: str
    model: str
    replacement: str
    first_run: str
    answer: set[str] = field(default_factory=lambda: set(GATES))  # gates answered (approved) automatically
    rid: str | None = None
    status: str = ""
    phase: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)
    answered: dict[str, str] = field(default_factory=dict)  # gate -> the pause key it was answered at (once each)
    refused: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    started_at: float = field(default_factory=time.monotonic)
    ended_at: float | None = None

    @property
    def final(self) -> bool:
        return self.status in FINAL

    @property
    def took(self) -> float:
        return (self.ended_at or time.monotonic()) - self.started_at

    def paused(self) -> list[dict[str, Any]]:
        """Its runs waiting at a gate, each with its pause key."""
        return [r for r in self.runs if r["state_type"] == "PAUSED"]

    def live_runs(self) -> list[dict[str, Any]]:
        return [r for r in self.runs if r["state_type"] in LIVE_RUN_STATES]

    def note(self, text: str) -> None:
        self.events.append(f"{time.strftime('%H:%M:%S')} {text}")

    def describe(self) -> str:
        """Where it stands, with its runs (newest first) and what happened to it, for a failure message."""
        lines = [f"{self.label}: {self.rid or '(not open)'} {self.model} status={self.status} phase={self.phase}"]
        if self.data.get("attention"):
            lines.append(f"  needs attention: {self.data['attention']}")
        if self.data.get("status_reason"):
            lines.append(f"  reason: {self.data['status_reason']}")
        for run in sorted(self.runs, key=lambda r: r.get("created") or "", reverse=True)[:8]:
            message = ((run.get("state") or {}).get("message") or "")[:160]
            lines.append(f"  run {run['name']:<44} {run['state_name']:<11} {run['id'][:8]} {message}")
        lines += [f"  {e}" for e in self.events[-12:]]
        return "\n".join(lines)


class Fleet:
    """Many retirements on one stack, watched and answered in one loop.

    Args:
        stack: the running chaos stack.
        say: where progress lines go.
        stop: set when the session ends early; every wait then gives up.
        approve_with: "ui" (the resume call the Prefect UI makes) or "cli" (`retire approve`).
    """

    def __init__(
        self,
        stack: ChaosStack,
        say: Callable[[str], None] | None = None,
        stop: threading.Event | None = None,
        approve_with: str = "ui",
    ) -> None:
        self.stack = stack
        # "ui": the approvers submit the gate's form (the resume call the Prefect UI makes);
        # "cli": they type `retire approve` (which makes the same call). The smoke test covers the CLI.
        self.approve_with = approve_with
        self.say = say or (lambda text: print(f"[fleet] {text}", flush=True))
        self.stop = stop or threading.Event()  # set when the session ends early: every wait gives up
        self.members: list[Retirement] = []
        self._pool = ThreadPoolExecutor(max_workers=6, thread_name_prefix="retire-cli")
        self._busy: dict[tuple[str, str], Future[Any]] = {}
        self._calls: dict[str, Future[Any]] = {}
        self._hooks: list[tuple[str, Callable[[Retirement], bool], Callable[[Retirement], None], Retirement]] = []
        self._lock = threading.Lock()

    # --- starting ---------------------------------------------------------------------------------

    def start(
        self,
        label: str,
        model: str,
        replacement: str,
        *,
        answer: Iterable[str] = GATES,
        **fields: Any,
    ) -> Retirement:
        """`retire start` as a person types it, with ``fields`` as ``--set FIELD=VALUE``."""
        args = ["start", "--model", model, "--replacement", replacement, "--requester", REQUESTER]
        args += ["--approvers", f"{APPROVER},carol", "--reason", f"chaos: {label}", "--traffic-source", "local"]
        for key, value in fields.items():
            args += ["--set", f"{key}={json.dumps(value)}"]
        result = self.stack.retire(*args)
        found = re.search(r"flow run \S+ \(([0-9a-f-]{36})\)", result.stdout)
        if not found:
            raise HarnessError(f"`retire start` printed no flow run:\n{result.stdout}{result.stderr}")
        member = Retirement(label, model, replacement, found.group(1), answer=set(answer))
        member.note(f"started: first run {member.first_run}")
        with self._lock:
            self.members.append(member)
        return member

    def start_many(self, specs: list[dict[str, Any]]) -> list[Retirement]:
        """Start several retirements at once (each spec: label, model, replacement and request fields)."""
        futures = [self._pool.submit(lambda s=dict(spec): self.start(**s)) for spec in specs]
        return [f.result(timeout=600) for f in futures]

    # --- hooks ------------------------------------------------------------------------------------

    def when(
        self,
        member: Retirement,
        name: str,
        condition: Callable[[Retirement], bool],
        action: Callable[[Retirement], None],
    ) -> None:
        """Run ``action`` once, on the first tick where ``condition`` holds for ``member``."""
        self._hooks.append((name, condition, action, member))

    def background(self, member: Retirement, what: str, action: Callable[[], Any]) -> None:
        """Run ``action`` in the fleet's thread pool (a `retire` command that may take a while); errors fail a tick."""

        def run() -> None:
            member.note(f"{what}: begins")
            action()
            member.note(f"{what}: returned")

        self._busy[(member.label, what)] = self._pool.submit(run)

    def background_call(self, name: str, call: Callable[[], Any]) -> None:
        """Run ``call`` in the fleet's thread pool; its result is kept for :meth:`join_calls`."""
        self._calls[name] = self._pool.submit(call)

    def join_calls(self, timeout: float) -> dict[str, Any]:
        """The results of every :meth:`background_call` so far (raises what one raised)."""
        calls, self._calls = self._calls, {}
        return {name: future.result(timeout=timeout) for name, future in calls.items()}

    def idle(self) -> bool:
        """True when no `retire` command started by the fleet is still running."""
        self._collect()
        return not self._busy

    def pending_hooks(self) -> list[str]:
        return [f"{m.label}: {name}" for name, _, _, m in self._hooks]

    # --- watching ---------------------------------------------------------------------------------

    def tick(self) -> None:
        """Read every retirement's row and runs, answer the gates it may answer, fire the hooks due."""
        self._collect()
        members = list(self.members)
        by_first = {m.first_run: m for m in members if m.rid is None}
        if by_first:
            rows = self.stack.postgres.query(
                "SELECT flow_run_id, retirement_id FROM flow_runs WHERE flow_run_id = ANY(%s)", (list(by_first),)
            )
            for run_id, rid in rows:
                by_first[run_id].rid = rid
                by_first[run_id].note(f"opened as {rid}")
        rids = [m.rid for m in members if m.rid]
        if rids:
            rows = self.stack.postgres.query(
                "SELECT id, status, phase, data FROM retirements WHERE id = ANY(%s)", (rids,)
            )
            found = {r[0]: r for r in rows}
            runs = self.stack.prefect.request(
                "POST",
                "flow_runs/filter",
                {"flow_runs": {"tags": {"any_": rids}}, "limit": 200, "sort": "EXPECTED_START_TIME_DESC"},
            )
            for member in members:
                if member.rid not in found:
                    continue
                _, status, phase, data = found[member.rid]
                if (status, phase) != (member.status, member.phase):
                    member.note(f"{phase} - {status}")
                member.status, member.phase, member.data = status, phase, json.loads(data)
                member.runs = [r for r in runs if member.rid in r["tags"]]
                if member.final and member.ended_at is None:
                    member.ended_at = time.monotonic()
                    self.say(f"{member.label} {member.rid} ended {status} after {member.took:.0f}s")
        for member in members:
            if member.rid and not member.final:
                self._answer(member)
        for hook in list(self._hooks):
            name, condition, action, member = hook
            if condition(member):
                self._hooks.remove(hook)
                member.note(f"hook: {name}")
                self.say(f"{member.label}: {name}")
                action(member)

    def _answer(self, member: Retirement) -> None:
        for run in member.paused():
            key = ((run.get("state") or {}).get("state_details") or {}).get("pause_key") or ""
            gate = key.rsplit("-", 1)[0]
            # A person answers each gate once: a gate asked again after its answer was accepted stays unanswered
            # (the retirement must not lose an answer), and the test sees it waiting there.
            if gate not in member.answer or gate in member.answered or (run["id"], key) in self._busy:
                continue
            args = ["approve", run["id"], "--approver", APPROVER, "--comment", f"chaos {member.label}"]
            if gate == "approve-deletion":
                args += ["--typed-reference", member.model]
            self._busy[(run["id"], key)] = self._pool.submit(self._approve, member, run["id"], key, args)

    def _approve(self, member: Retirement, run_id: str, key: str, args: list[str]) -> None:
        if self.approve_with == "cli":
            result = self.stack.retire(*args, check=False)
            accepted, said = result.returncode == 0, (result.stdout + result.stderr).strip()
        else:  # what the UI sends when an approver submits the gate's form
            answer = {"decision": "approve", "approver": APPROVER, "comment": f"chaos {member.label}"}
            if key.startswith("approve-deletion"):
                answer["typed_reference"] = member.model
            try:
                reply = self.stack.prefect.request("POST", f"flow_runs/{run_id}/resume", {"run_input": answer})
            except httpx.HTTPError as exc:
                reply = {"status": "ERROR", "details": {"reason": repr(exc)}}
            accepted, said = reply.get("status") == "ACCEPT", json.dumps(reply)
        if accepted:
            member.answered[key.rsplit("-", 1)[0]] = key
            member.note(f"approved {key} on run {run_id[:8]}")
        else:  # the gate's form is saved a moment after the run pauses: asked again on a later tick
            member.refused.append(f"{key}: {said[-300:]}")

    def _collect(self) -> None:
        for key, future in list(self._busy.items()):
            if future.done():
                del self._busy[key]
                future.result()  # a harness error surfaces here

    def wait(
        self,
        what: str,
        done: Callable[[], bool],
        timeout: float,
        members: Iterable[Retirement] | None = None,
        interval: float = 2.0,
    ) -> float:
        """Tick until ``done()``; fail after ``timeout`` s with where every retirement stands. Returns seconds taken."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        last_say = t0
        while True:
            if self.stop.is_set():
                raise AssertionError(f"{what}: stopped (the chaos session is ending)")
            self.tick()
            if done():
                return time.monotonic() - t0
            now = time.monotonic()
            if now > deadline:
                raise AssertionError(f"{what}: not true after {timeout:.0f} s\n{self.report(members)}")
            if now - last_say > 30:
                last_say = now
                counts: dict[str, int] = {}
                for m in self.members:
                    counts[m.status or "starting"] = counts.get(m.status or "starting", 0) + 1
                self.say(f"{now - t0:4.0f}s waiting for {what}: {counts}")
            time.sleep(interval)

    def report(self, members: Iterable[Retirement] | None = None) -> str:
        """Every retirement's state and runs, what `retire status` says of the open ones, the workers' logs' ends."""
        chosen = list(members) if members is not None else self.members
        parts = [m.describe() for m in chosen]
        still = [m for m in chosen if m.rid and not m.final]
        for member in still[:4]:
            result = self.stack.retire("status", member.rid or "", check=False)
            parts.append(f"--- retire status {member.rid} ---\n{result.stdout}{result.stderr}")
        if still:
            parts.append(f"hooks not fired: {self.pending_hooks()}")
            for i in range(len(self.stack.workers)):
                parts.append(
                    f"--- worker {i} (last lines) ---\n" + "\n".join(self.stack.workers.output(i).splitlines()[-25:])
                )
        return "\n".join(parts)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


# --- what a retirement left behind ---------------------------------------------------------------------


def ledger(stack: ChaosStack, rid: str) -> list[tuple[int, str, str, dict[str, Any]]]:
    """The retirement's ledger entries: (seq, kind, action, detail), in order."""
    rows = stack.postgres.query(
        "SELECT seq, kind, action, detail FROM ledger WHERE retirement_id = %s ORDER BY seq", (rid,)
    )
    return [(seq, kind, action, json.loads(detail) if detail else {}) for seq, kind, action, detail in rows]


def destructive_outcomes(stack: ChaosStack, rid: str) -> dict[str, int]:
    """How many outcomes each destructive action has in the retirement's ledger."""
    counts: dict[str, int] = {}
    for _, kind, action, _ in ledger(stack, rid):
        if kind == "outcome" and action in DESTRUCTIVE:
            counts[action] = counts.get(action, 0) + 1
    return counts


def platform_events(stack: ChaosStack, model: str) -> list[str]:
    """The local platform's lifecycle events of one version (created, deleted, deactivated, ...), in order."""
    import sqlite3

    name, _, version = model.partition("@")
    with sqlite3.connect(stack.home / "local" / "catalog.db", timeout=30) as conn:
        rows = conn.execute(
            "SELECT event FROM events WHERE name = ? AND version = ? ORDER BY id", (name, int(version))
        ).fetchall()
    return [r[0] for r in rows]


def production(stack: ChaosStack, name: str) -> str | None:
    """The version the local platform's `production` alias points at."""
    import sqlite3

    with sqlite3.connect(stack.home / "local" / "catalog.db", timeout=30) as conn:
        row = conn.execute("SELECT version FROM aliases WHERE name = ? AND alias = 'production'", (name,)).fetchone()
    return f"{name}@{row[0]}" if row else None


def gateway_status(stack: ChaosStack, model: str) -> int:
    """What the gateway answers a predict request for ``model`` (404 once deleted)."""
    return httpx.post(f"{stack.gateway_url}/v1/models/{model}/predict", json={"inputs": [1]}, timeout=10).status_code


def check_retired(stack: ChaosStack, member: Retirement) -> list[str]:
    """What is wrong with a retirement that should be done (empty = nothing).

    Done in the store, the old version gone (the gateway answers 404, the platform deleted it once),
    production on the replacement, its backup verified (every file re-read against its manifest), at most one outcome
    per destructive action in the ledger (cutover and delete exactly once, no rollback), nobody resumed
    it by hand, and no run of it left running.
    """
    problems: list[str] = []
    if member.status != "done":
        return [f"status {member.status} (phase {member.phase}), not done"]
    rid = member.rid or ""
    counts = destructive_outcomes(stack, rid)
    if counts.get("cutover") != 1 or counts.get("delete") != 1 or any(n > 1 for n in counts.values()):
        problems.append(f"destructive outcomes in the ledger: {counts} (want cutover 1, delete 1, none twice)")
    if counts.get("rollback"):
        problems.append(f"rolled back: {counts}")
    by_hand = [(a, d) for _, k, a, d in ledger(stack, rid) if k == "decision" and a == "resume"]
    if by_hand:
        problems.append(f"resumed by hand: {by_hand}")
    events = platform_events(stack, member.model)
    if events.count("deleted") != 1:
        problems.append(f"the platform's events of {member.model}: {events} (want exactly one 'deleted')")
    answer = gateway_status(stack, member.model)
    if answer != 404:
        problems.append(f"the gateway answers {answer} for {member.model}, not 404")
    name = member.model.partition("@")[0]
    if production(stack, name) != member.replacement:
        problems.append(f"production of {name} is {production(stack, name)}, not {member.replacement}")
    location = member.data.get("backup_location")
    if not location:
        problems.append("no backup location recorded")
    else:  # what `retire backup verify` does, without a process per backup: every file re-read against the manifest
        from retirement.backup.filesystem import FilesystemBackupStore

        report = FilesystemBackupStore(stack.home / "backups").verify(location)
        if not report.ok or not report.bytes_checked:
            problems.append(f"the backup at {location} does not verify: {report.mismatches[:5]}")
    return problems


def settle_runs(fleet: Fleet, members: Iterable[Retirement], timeout: float = 90) -> None:
    """Wait until no run of ``members`` is pending or running any more (the last run ends a moment after the state)."""
    chosen = list(members)
    fleet.wait(
        "the last runs of the finished retirements ended",
        lambda: not [r for m in chosen for r in m.runs if r["state_type"] in ("PENDING", "RUNNING", "CANCELLING")],
        timeout,
        chosen,
    )
