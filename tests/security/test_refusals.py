"""Bad input to `retire plan` and `retire start` is refused before anything is opened: RETIRE_HOME stays as it was."""

from __future__ import annotations

from pathlib import Path

import pytest

import retirement.cli._prefect
from retirement.cli import main
from retirement.platforms.local import LocalRegistry
from retirement.settings import RetireSettings

START = ["--requester", "alice", "--approvers", "bob", "--reason", "superseded by v2"]

# (arguments after the command, what the error must name)
BAD = [
    (["--model", "churn model@1"], "'churn model' is not a valid local model name"),
    (["--model", " churn-model@1"], "surrounding spaces"),
    (["--model", "churn-model@1@2"], "more than one '@'"),
    (["--model", "churn-model@1", "--platform", "nowhere"], "platform: unknown platform 'nowhere'"),
    (["--model", "churn-model@1", "--set", "traffic_window_hours=1"], "traffic_window_hours: 1 h is shorter"),
    (["--model", "churn-model@1", "--set", "backup_retention_days=7"], "backup_retention_days: 7 days"),
    (["--model", "churn-model@1", "--set", "timezone=Mars/Olympus"], "timezone: unknown timezone"),
    (["--model", "churn-model@1", "--set", "traffic_window_hours"], "--set: 'traffic_window_hours' is not FIELD=VALUE"),
    (["--model", "churn-model@1", "--set", "colour=blue"], "colour"),
    (["--model", "churn-model@1", "--traffic-source", "carrier-pigeon"], "traffic_sources: unknown name"),
    (["--model", "churn-model@1", "--serving", "elsewhere"], "serving: unknown serving target"),
    (["--model", "churn-model@1", "--replacement", "churn-model@9"], "churn-model@9 does not exist"),
]


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` and its bytes (a database is a file too)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def seeded(retire_home: Path) -> Path:
    LocalRegistry(RetireSettings().local_dir).seed_demo(64 * 1024)
    return retire_home


@pytest.fixture
def no_server(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """`retire start` must never reach the Prefect server with a refused request; records it if it does."""
    reached: list[str] = []

    def use_server(settings: RetireSettings) -> str:
        reached.append("use_server")
        raise AssertionError("a refused request reached the Prefect server")

    monkeypatch.setattr(retirement.cli._prefect, "use_server", use_server)
    return reached


@pytest.mark.parametrize("command", ["plan", "start"])
@pytest.mark.parametrize(("arguments", "named"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_refused_and_leaves_nothing_behind(
    command: str,
    arguments: list[str],
    named: str,
    seeded: Path,
    no_server: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = tree(seeded)
    code = main([command, *arguments, *(START if command == "start" else [])])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith(f"retire {command}: error:") and named in err, err
    assert tree(seeded) == before
    assert no_server == []


@pytest.mark.parametrize("command", ["plan", "start"])
def test_a_refused_request_on_a_fresh_machine_creates_no_home(
    command: str, retire_home: Path, no_server: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code = main([command, "--model", "churn model@1", *(START if command == "start" else [])])
    assert code == 2 and "not a valid local model name" in capsys.readouterr().err
    assert not retire_home.exists()


def test_a_plan_changes_nothing(seeded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = tree(seeded)
    assert main(["plan", "--model", "churn-model@1", "--replacement", "churn-model@2"]) == 0
    assert "# Dossier: churn-model@1 on local" in capsys.readouterr().out
    assert tree(seeded) == before
