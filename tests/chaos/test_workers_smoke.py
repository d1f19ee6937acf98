"""One retirement end to end on the chaos stack: two workers from two copies, state shared through the store.

It runs first, while the background scenarios (load, cancel, race) start on the same stack; its gates are
answered with `retire approve`, as a person in a terminal would.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from retirement.gateway.loadgen import TrafficGenerator
from retirement.platforms.local import LocalRegistry
from retirement.protocol import GATE_DELETION
from tests.chaos.cluster import POOL, ChaosStack, FlowRunWatcher

pytestmark = pytest.mark.chaos

DEADLINE_SECONDS = 720  # the background scenarios (40 retirements' worth of runs and a CPU hog) share the machine
REQUESTER = "alice"
APPROVER = "bob"
FAILED = ("FAILED", "CRASHED")


def _start(stack: ChaosStack) -> str:
    """`retire start` as a person types it; returns the first flow run's id."""
    result = stack.retire(
        "start",
        "--model",
        "churn-model@1",
        "--replacement",
        "churn-model@2",
        "--requester",
        REQUESTER,
        "--approvers",
        f"{APPROVER},carol",
        "--reason",
        "chaos smoke: v2 replaces v1",
        "--traffic-source",
        "local",
        "--set",
        f"traffic_window_hours={10 / 3600}",
        "--set",
        f"bake_minutes={5 / 60}",
        "--set",
        "pending_delete_hours=0",
        "--set",
        "monitor_days=0",
    )
    found = re.search(r"flow run \S+ \(([0-9a-f-]{36})\)", result.stdout)
    assert found, result.stdout + result.stderr
    return found.group(1)


def _retirement_id(stack: ChaosStack, run_id: str) -> str | None:
    """The retirement's id: the run carries it as a tag once the retirement is open."""
    run = stack.prefect.flow_run(run_id)
    if run["state_type"] in FAILED:
        raise AssertionError(f"the first run ended {run['state_name']}: {run['state'].get('message')}")
    return next((t for t in run["tags"] if t.startswith("ret-")), None)


def _status(stack: ChaosStack, rid: str) -> str:
    return stack.retire("status", rid).stdout


def _answer_gates(stack: ChaosStack, rid: str, answered: set[str], refused: list[str]) -> None:
    """Answer every gate a run of the retirement waits at, as the approver would with `retire approve`."""
    for run in stack.prefect.flow_runs(tags=[rid], states=["PAUSED"]):
        key = (run["state"].get("state_details") or {}).get("pause_key") or ""
        if not key or key in answered:
            continue
        args = ["approve", run["id"], "--approver", APPROVER, "--comment", "chaos smoke"]
        if key.startswith(GATE_DELETION):
            args += ["--typed-reference", "churn-model@1"]
        result = stack.retire(*args, check=False)
        if result.returncode == 0:
            answered.add(key)
            print(f"[smoke] {result.stdout.strip()}", flush=True)
        else:  # the gate's form is saved a moment after the run pauses: ask again on the next round
            refused.append(f"{key}: {result.stdout}{result.stderr}".strip())


def _runs_by_worker(stack: ChaosStack, runs: list[dict[str, Any]]) -> dict[str, list[int]]:
    """For each flow run id, the workers that submitted it (a worker logs every run it submits)."""
    logs = [stack.workers.output(i) for i in range(len(stack.workers))]
    return {run["id"]: [i for i, log in enumerate(logs) if f"submitting flow run '{run['id']}'" in log] for run in runs}


@pytest.mark.timeout(DEADLINE_SECONDS + 240)  # the stack's start and stop count too
def test_one_retirement_runs_on_the_work_pool_from_both_copies(chaos_stack: ChaosStack, retire_home: Path) -> None:
    stack = chaos_stack
    print(f"[smoke] stack started in {stack.started_in:.1f}s", flush=True)
    old, new = LocalRegistry(retire_home / "local").seed_demo(256 * 1024, reset=True)
    assert (str(old), str(new)) == ("churn-model@1", "churn-model@2")
    traffic = TrafficGenerator(stack.gateway_url, "churn-model@production", rate_per_second=5).start()
    t0 = time.monotonic()
    deadline = t0 + DEADLINE_SECONDS
    answered: set[str] = set()
    refused: list[str] = []
    rid: str | None = None
    try:
        with FlowRunWatcher(stack.workers) as watcher:
            first = _start(stack)
            print(f"[smoke] started flow run {first}", flush=True)
            while time.monotonic() < deadline:
                rid = rid or _retirement_id(stack, first)
                if rid is not None:
                    # Watched in the store (a `retire status` a second would cost a core on this shared machine).
                    stored = stack.postgres.query("SELECT status FROM retirements WHERE id = %s", (rid,))
                    if stored and stored[0][0] in ("done", "halted", "cancelled"):
                        break
                    failed = [r for r in stack.prefect.flow_runs(tags=[rid]) if r["state_type"] in FAILED]
                    assert not failed, f"{failed[0]['name']} ended {failed[0]['state_name']}:\n{_status(stack, rid)}"
                    _answer_gates(stack, rid, answered, refused)
                time.sleep(2)
            else:
                status = _status(stack, rid) if rid else "(the retirement never opened)"
                pytest.fail(
                    f"the retirement did not finish within {DEADLINE_SECONDS} s; last `retire status`:\n{status}\n"
                    f"gates answered: {sorted(answered)}; refused answers: {refused[-3:]}\n"
                    + "\n".join(f"--- worker {i} ---\n{stack.workers.output(i)[-3000:]}" for i in range(2))
                )
        took = time.monotonic() - t0
    finally:
        traffic.stop()
    assert rid is not None
    status = _status(stack, rid)
    print(f"[smoke] {rid} finished in {took:.1f}s:\n{status}", flush=True)

    # What the user sees: done, the old version gone from the gateway, a backup with its manifest.
    assert f"{rid}: churn-model@1 on local - done" in status, status
    assert {g.rsplit("-", 1)[0] for g in answered} >= {"approve-plan", "approve-cutover", "approve-deletion"}
    answer = httpx.post(f"{stack.gateway_url}/v1/models/churn-model@1/predict", json={"inputs": [1]}, timeout=10)
    assert answer.status_code == 404, answer.text
    backup = re.search(r"^backup: (\S+) ", status, re.MULTILINE)
    assert backup, status
    manifest = Path(backup.group(1)) / "manifest.json"
    assert manifest.is_file(), manifest
    assert (retire_home / "backups") in manifest.parents

    # The workers shared the retirement through PostgreSQL, not through a SQLite file in the shared RETIRE_HOME.
    assert not (retire_home / "retire.db").exists()
    assert stack.postgres.query("SELECT status FROM retirements WHERE id = %s", (rid,)) == [("done",)]

    # Every run of the retirement ran on the work pool, submitted by the workers (a run resumed after a gate
    # may be picked up by the other worker).
    runs = stack.prefect.flow_runs(tags=[rid])
    ran = [r for r in runs if r["state_type"] not in ("SCHEDULED", "CANCELLED")]
    # The first run, resumed at each gate, and the run scheduled at the end of the traffic window.
    assert first in {r["id"] for r in ran} and len(ran) >= 2, [(r["name"], r["state_name"]) for r in runs]
    assert all(r["state_type"] == "COMPLETED" for r in ran), [(r["name"], r["state_name"]) for r in ran]
    assert {r["work_pool_name"] for r in runs} == {POOL}, [(r["name"], r["work_pool_name"]) for r in runs]
    by_worker = _runs_by_worker(stack, ran)
    assert all(by_worker.values()), by_worker
    for run in ran:
        print(f"[smoke]   {run['name']:<36} {run['state_name']:<10} workers {by_worker[run['id']]}", flush=True)

    # Each worker's flow runs ran from its own copy: the pull step's $RETIRE_PROJECT_DIR, and PYTHONPATH.
    seen = list(watcher.seen.values())
    assert seen, "no flow-run process was ever seen under a worker"
    copies = {i: str(stack.workers.copy(i)) for i in range(len(stack.workers))}
    for process in seen:
        assert process.pythonpath == copies[process.worker], process
        others = [c for i, c in copies.items() if i != process.worker]
        assert not any(process.cwd.startswith(c) for c in others), process
    assert any(p.cwd == copies[p.worker] for p in seen), seen
    for worker, cwd in sorted({(p.worker, p.cwd) for p in seen if p.cwd in copies.values()}):
        print(f"[smoke]   worker {worker}'s flow runs ran in {cwd} with PYTHONPATH={copies[worker]}", flush=True)
