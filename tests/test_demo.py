"""The README's first command, as a user runs it: the whole protocol on a real local Prefect server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from retirement.bootstrap import stores
from retirement.models import ModelRef
from retirement.platforms.local import LocalRegistry
from retirement.settings import RetireSettings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.prefect_server
@pytest.mark.timeout(900)
def test_demo_auto_approve_retires_the_old_version(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RETIRE_"))}
    env.update(
        {"RETIRE_HOME": str(home), "RETIRE_GATEWAY_PORT": str(_free_port()), "PREFECT_HOME": str(tmp_path / "prefect")}
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "retirement",
            "demo",
            "--auto-approve",
            "--size",
            "4MiB",
            "--port",
            str(_free_port()),
            "--stop-server",
            "--timeout",
            "600",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    for gate in ("approve-plan", "approve-cutover", "approve-deletion"):
        assert f"approving {gate} as demo-approver" in out
    assert "churn-model@1 on local - done retired" in out
    assert "gateway now answers 404 for churn-model@1" in out
    assert "ledger verify: OK" in out

    registry = LocalRegistry(home / "local")
    assert not registry.exists(ModelRef(name="churn-model", version="1"))
    assert registry.aliases("churn-model")["production"] == "2"
    ledger, states = stores(RetireSettings(home=home))
    (state,) = states.all()
    assert state.status == "done" and state.receipt is not None and state.receipt.verified_gone
    assert state.backup_location and (Path(state.backup_location) / "manifest.json").exists()
    assert ledger.verify()[0] > 20
    drill = ledger.find(state.id, "restore-drill")  # restored, served as a scratch version, removed again
    assert drill is not None and drill.detail["ok"] and "answered a golden request" in drill.detail["served"]
    assert not registry.exists(ModelRef(name="churn-model-restore-drill", version="1"))
