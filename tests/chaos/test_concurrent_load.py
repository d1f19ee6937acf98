"""Ten retirements at once on the two workers while a CPU hog saturates the machine: all ten finish by themselves.

Ten models are seeded on the local platform and ten retirements started together with `retire start`
(bake 6 s, traffic window 3 s, so the window is over when the bake ends and verify-idle follows in the
same run; no pending window, no monitoring); scripted approvers answer each gate once, by submitting
its form as the Prefect UI does. Two busy-looping processes keep both cores loaded until the last one
ends. The scenario runs in the background once the race scenario is over, alongside the smoke test and
the cancel scenario (the worker kills wait for it to end). Every retirement must end done by itself:
its old version deleted once (the gateway answers 404, the platform recorded one delete), production on
the replacement, the backup re-read against its manifest, each destructive call once in the ledger, and
no `retire resume` or second answer by a person.
"""

from __future__ import annotations

import pytest

from tests.chaos.cluster import Background, ChaosStack, CpuHog
from tests.chaos.fleet import Fleet, check_retired, seed, settle_runs, short_windows

pytestmark = pytest.mark.chaos

RETIREMENTS = 10
DEADLINE_SECONDS = 900


def load_scenario(stack: ChaosStack, background: Background) -> str:
    """Runs in the background with the stack (see the module's docstring); returns how each retirement went."""
    # After the race's twenty runs have started and ended: their burst and this one would only slow each other.
    background.wait_for(["race_scenario"], 900)
    fleet = Fleet(stack, say=lambda text: print(f"[load] {text}", flush=True), stop=background.stop)
    lines: list[str] = []
    try:
        with CpuHog(processes=2, seconds=DEADLINE_SECONDS + 300) as hog:
            models = [seed(stack.home, f"load-{i}") for i in range(RETIREMENTS)]
            members = fleet.start_many(
                [
                    {
                        "label": f"load-{i}",
                        "model": old,
                        "replacement": new,
                        **short_windows(traffic_window_hours=3 / 3600, bake_minutes=6 / 60),
                    }
                    for i, (old, new) in enumerate(models)
                ]
            )
            took = fleet.wait(
                f"{RETIREMENTS} retirements ended under a CPU hog (pids {hog.pids})",
                lambda: all(m.final for m in members),
                DEADLINE_SECONDS,
            )
        lines.append(f"{RETIREMENTS} retirements ended within {took:.0f}s of their start, under a CPU hog")
        settle_runs(fleet, members)
        problems = {m.label: check_retired(stack, m) for m in members}
        bad = {label: found for label, found in problems.items() if found}
        assert not bad, f"{bad}\n{fleet.report([m for m in members if m.label in bad])}"
        for member in members:
            resumes = [r.get("why") for r in member.data.get("resumes") or []]
            lines.append(f"{member.label}: done in {member.took:.0f}s, resumed by the reconciler {resumes or 'never'}")
    finally:
        fleet.close()
    return "\n".join(lines)


@pytest.mark.background.with_args(load_scenario)
@pytest.mark.timeout(DEADLINE_SECONDS + 900)
def test_ten_retirements_under_cpu_load_all_finish(background: Background) -> None:
    took, said = background.result("load_scenario", timeout=DEADLINE_SECONDS + 800)
    print(f"[load] {took:.0f}s:\n{said}", flush=True)
