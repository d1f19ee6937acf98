"""prefect.yaml is validated offline: a typo fails CI instead of silently dropping a schedule."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from retirement.cli._prefect import PREFECT_YAML, validate_prefect_yaml


def test_project_prefect_yaml_is_valid() -> None:
    assert validate_prefect_yaml(PREFECT_YAML) == []
    config = yaml.safe_load(PREFECT_YAML.read_text())
    by_name = {d["name"]: d for d in config["deployments"]}
    assert by_name["quarterly-review"]["schedules"] == [{"cron": "0 9 1 1,4,7,10 *", "timezone": "UTC", "active": True}]
    assert all(d["enforce_parameter_schema"] for d in by_name.values())


def _broken(tmp_path: Path, edit: str, replacement: str) -> list[str]:
    for folder in ("flows", "tasks", "retirement"):
        (tmp_path / folder).symlink_to(PREFECT_YAML.parent / folder)
    text = PREFECT_YAML.read_text()
    assert edit in text
    target = tmp_path / "prefect.yaml"
    target.write_text(text.replace(edit, replacement, 1))
    return validate_prefect_yaml(target)


@pytest.mark.parametrize(
    ("edit", "replacement", "needle"),
    [
        ("    schedules:\n      - cron", "    shedules:\n      - cron", "unknown key 'shedules'"),
        ('cron: "0 9 1 1,4,7,10 *"', 'cron: "0 9 1 1,4,7,13 *"', "cron"),
        ('timezone: "UTC"', 'timezone: "Mars/Olympus"', "timezone"),
        (
            "entrypoint: flows/retire_model.py:retire_model",
            "entrypoint: flows/retire_model.py:retire_modle",
            "does not load",
        ),
        ("prefect-version: 3.8.8", "prefect-versoin: 3.8.8", "unknown top-level key 'prefect-versoin'"),
    ],
)
def test_typos_are_caught(tmp_path: Path, edit: str, replacement: str, needle: str) -> None:
    problems = _broken(tmp_path, edit, replacement)
    assert any(needle in p for p in problems), problems
