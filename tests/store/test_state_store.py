"""The retirement store under two writers: the loser fails loudly, a terminal status stays, one claim per model."""

from __future__ import annotations

import multiprocessing
import threading
from pathlib import Path

import pytest

from retirement import db
from retirement.bootstrap import stores
from retirement.errors import ConflictError, RetirementStoppedError, StaleStateError
from retirement.models import Phase, RetirementRequest
from retirement.settings import RetireSettings
from retirement.state import Entry, RetirementState, StateStore, new_retirement_id


def _request(version: str = "1") -> RetirementRequest:
    return RetirementRequest(
        model=f"churn-model@{version}",
        replacement="churn-model@9",
        requester="alice",
        approvers=["bob"],
        reason="v9 is better",
    )


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    return stores(RetireSettings(home=tmp_path))[1]


def _open(store: StateStore, request: RetirementRequest | None = None) -> RetirementState:
    request = request or _request()
    state = RetirementState(id=new_retirement_id(request.ref), request=request)
    store.create(state, Entry("decision", "open", "alice"))
    return state


def test_the_second_of_two_writers_gets_a_conflict_not_an_overwrite(store: StateStore) -> None:
    first = _open(store)
    a, b = store.load(first.id), store.load(first.id)
    a.status_reason = "written by a"
    store.save(a)
    b.status_reason = "written by b"
    with pytest.raises(StaleStateError, match="changed since it was read"):
        store.save(b)
    assert store.load(first.id).status_reason == "written by a"


def test_a_cancel_is_never_undone_by_a_stale_copy(store: StateStore) -> None:
    """The bake loaded the state once and saved it after each sample: that copy must not revive a cancel."""
    state = _open(store)
    baking = store.load(state.id)
    with store.transaction(state.id) as change:
        change.state.status = "cancelled"
        change.record("decision", "cancel", actor="carol")
    baking.bake.append({"sample": 1})
    with pytest.raises(StaleStateError):
        store.save(baking)
    fresh = store.load(state.id)
    fresh.status = "running"
    with pytest.raises(ConflictError, match="final"):
        store.save(fresh)
    assert store.load(state.id).status == "cancelled"


def test_a_destructive_call_is_refused_once_the_retirement_is_cancelled(store: StateStore) -> None:
    state = _open(store)
    with store.transaction(state.id) as change:
        change.state.status = "cancelled"
        change.state.status_reason = "cancelled by carol"
    with pytest.raises(RetirementStoppedError, match=r"cancelled by carol.*delete refused"):
        store.fence(state, "delete")
    assert store.ledger.find(state.id, "delete", kind="intent") is None
    store.fence(state, "reactivate", undo=True)  # putting things back goes on after a cancel
    assert store.ledger.find(state.id, "reactivate", kind="intent") is not None


def test_fence_writes_the_intent_and_settle_keeps_the_outcome_of_a_call_a_cancel_overtook(store: StateStore) -> None:
    state = _open(store)
    store.fence(state, "delete", {"backup": "/b"})
    assert store.load(state.id).inflight == "delete"
    with store.transaction(state.id) as change:  # the cancel lands while the DELETE is under way
        change.state.status = "cancelled"
    store.settle(state, "delete", lambda s: setattr(s, "status_reason", "deleted anyway"), {"gone": True})
    stored = store.load(state.id)
    assert stored.status == "cancelled" and stored.inflight is None and stored.status_reason == "deleted anyway"
    assert store.ledger.find(state.id, "delete").detail == {"gone": True}  # type: ignore[union-attr]


def test_one_claim_per_model_and_it_is_released_with_the_terminal_status(store: StateStore) -> None:
    first = _open(store)
    with pytest.raises(ConflictError, match=f"already being retired by {first.id}"):
        _open(store)
    assert store.ledger.verify()[0] == 1  # the refused open wrote nothing
    with store.transaction(first.id) as change:
        change.state.status = "done"
    second = _open(store)
    assert store.holder(second.ref) == second.id


def test_ledger_entries_commit_with_the_state_change_or_not_at_all(store: StateStore) -> None:
    state = _open(store)
    stale = store.load(state.id)
    store.save(store.load(state.id), Entry("outcome", "first"))
    with pytest.raises(StaleStateError):
        store.save(stale, Entry("outcome", "lost"))
    assert store.ledger.find(state.id, "lost") is None
    assert [e.action for e in store.ledger.entries(state.id)] == ["open", "first"]


def test_flow_runs_are_found_without_reading_every_retirement(store: StateStore) -> None:
    state = _open(store)
    for i in range(3):
        other = _open(store, _request(str(i + 10)))
        store.add_flow_run(other, f"run-{i}")
    assert store.add_flow_run(state, "mine") and not store.add_flow_run(state, "mine")
    found = store.by_flow_run("mine")
    assert found is not None and found.id == state.id and found.flow_runs == ["mine"]
    assert store.by_flow_run("nobody") is None
    assert [s.id for s in store.by_status(["running"], limit=2)] == [s.id for s in store.all()[:2]]


def test_a_second_run_of_the_retirement_waits_for_a_live_holder_and_names_it(store: StateStore) -> None:
    state = _open(store)
    store.acquire_run(state.id, "run-a", lambda run: True)
    with pytest.raises(ConflictError, match="being worked on by flow run run-a"):
        store.acquire_run(state.id, "run-b", lambda run: run == "run-a", wait_seconds=0.5, poll_seconds=0.1)
    store.acquire_run(state.id, "run-b", lambda run: False)  # the holder died: the next run takes over
    assert store.load(state.id).run_id == "run-b"


def test_state_files_from_before_the_database_are_imported_once(tmp_path: Path) -> None:
    legacy = tmp_path / "retirements"
    legacy.mkdir()
    open_state = RetirementState(id="ret-churn-model-1-aaaaaa", request=_request(), flow_runs=["r1"])
    done_state = RetirementState(id="ret-churn-model-1-bbbbbb", request=_request(), status="done")
    for s in (open_state, done_state):
        (legacy / f"{s.id}.json").write_text(s.model_dump_json())
    _, store = stores(RetireSettings(home=tmp_path))
    assert {s.id for s in store.all()} == {open_state.id, done_state.id}
    assert store.holder(open_state.ref) == open_state.id
    assert store.by_flow_run("r1").id == open_state.id  # type: ignore[union-attr]
    assert not legacy.exists() and (tmp_path / "retirements.imported").is_dir()


def _race_open(url: str, barrier: multiprocessing.synchronize.Barrier, results: multiprocessing.Queue) -> None:
    request = _request()
    try:
        engine = db.engine_for(url)
        store = StateStore(engine, stores_ledger(engine))  # type: ignore[arg-type]
        barrier.wait(timeout=60)
        state = RetirementState(id=new_retirement_id(request.ref), request=request)
        store.create(state, Entry("decision", "open"))
        results.put("opened")
    except ConflictError:
        results.put("refused")
    except Exception as exc:  # anything else is a failure the test names
        results.put(f"error: {exc!r}")


def stores_ledger(engine: object) -> object:
    from retirement.ledger import Ledger

    return Ledger(engine)  # type: ignore[arg-type]


@pytest.mark.parametrize("rounds", [50])
def test_two_processes_opening_one_model_at_the_same_instant_exactly_one_wins(tmp_path: Path, rounds: int) -> None:
    # Racers fork from a fresh server process: nothing of this test process (threads, servers) crosses over.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["tests.store.test_state_store"])
    for i in range(rounds):
        url = f"sqlite:///{tmp_path / f'race-{i}.db'}"
        db.engine_for(url)  # migrated before the race, as a running installation is
        barrier, results = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=_race_open, args=(url, barrier, results)) for _ in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
            assert p.exitcode == 0, f"round {i}: a racer ended with {p.exitcode}"
        outcomes = sorted(results.get(timeout=10) for _ in procs)
        assert outcomes == ["opened", "refused"], f"round {i}: {outcomes}"


def test_two_threads_cancelling_and_answering_at_once_the_cancel_stays(store: StateStore) -> None:
    state = _open(store)
    barrier = threading.Barrier(2)
    errors: list[Exception] = []

    def cancel() -> None:
        barrier.wait()
        with store.transaction(state.id) as change:
            change.state.status = "cancelled"

    def answer() -> None:
        copy = store.load(state.id)
        barrier.wait()
        copy.status = "running"
        copy.phase = Phase.STAGING
        try:
            store.save(copy)
        except ConflictError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=cancel), threading.Thread(target=answer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = store.load(state.id)
    assert final.status == "cancelled", "a cancel must never be overwritten"
