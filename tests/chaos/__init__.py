"""The chaos suite: the real stack (PostgreSQL, a Prefect server on it, a process work pool with two workers
from two copies of the project, the local gateway) started by the tests, and retirements attacked on it.

Run it with ``.venv/bin/pytest tests/chaos -m chaos -x -s -p no:cacheprovider`` (``.ci/run`` runs it with
the rest of the suite). It takes about 12-15 minutes on a 2-core machine. The scenarios share one stack
and overlap where they do not interfere (tests marked ``background`` start in threads with the stack and
their test collects the outcome, conftest.py): the smoke test, the cancels and the race start at once;
the load scenario starts when the race is over; the three retirements of the worker kills start at once
too but wait at a gate, and are killed once the race and the load are over and the cancels have landed
(a kill takes down every run on that worker).

- test_workers_smoke: one retirement through the pool, gates answered with `retire approve`;
- test_concurrent_load: ten retirements at once under a CPU hog, all done by themselves;
- test_cancel_phases: `retire cancel` during the bake, the backup, at the deletion gate, in the pending window;
- test_start_race: two starts of one model released at the same instant, ten rounds: one retirement each;
- test_worker_kills: kill -9 of a worker during the bake, the backup, right after the deletion gate.

``python -m tests.chaos.cluster [FOLDER]`` starts the same stack by hand and writes FOLDER/env.sh.
RETIRE_CHAOS_KEEP=1 keeps the stack's folder (logs, copies, RETIRE_HOME) after a passing run.
"""
