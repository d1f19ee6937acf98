"""Prefect plumbing for the CLI: a local server started or reused, the deployments served, gates answered.

Prefect is imported inside the functions: the library itself never needs it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import yaml

from retirement.errors import ConfigError, InputError, NotFoundError, PlatformUnavailableError
from retirement.settings import RetireSettings

PROJECT_DIR = Path(__file__).resolve().parents[2]
PREFECT_YAML = PROJECT_DIR / "prefect.yaml"
DEFAULT_API = "http://127.0.0.1:4200/api"


def _healthy(api_url: str) -> bool:
    try:
        return httpx.get(f"{api_url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def ensure_server(settings: RetireSettings, port: int = 4200, timeout: float = 120) -> tuple[str, bool]:
    """The API URL of a Prefect server: PREFECT_API_URL's, one answering on 127.0.0.1:port, or a new one.

    A new server (SQLite under PREFECT_HOME) runs in the background after this command ends, so the
    UI stays open; `retire server stop` stops it. Returns (api url, started here).
    """
    configured = os.environ.get("PREFECT_API_URL")
    if configured:
        if not _healthy(configured):
            raise PlatformUnavailableError("prefect", f"PREFECT_API_URL={configured} does not answer /health")
        return configured, False
    api = f"http://127.0.0.1:{port}/api"
    if _healthy(api):
        return api, False
    home = settings.home.expanduser()
    home.mkdir(parents=True, exist_ok=True)
    log = open(home / "prefect-server.log", "ab")  # noqa: SIM115 - handed to the detached server
    process = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env={
            **os.environ,
            "PREFECT_UI_URL": f"http://127.0.0.1:{port}",
            "PREFECT_UI_API_URL": api,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        },
    )
    (home / "prefect-server.pid").write_text(str(process.pid))
    (home / "prefect-api-url").write_text(api)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise PlatformUnavailableError(
                "prefect", f"the Prefect server exited with {process.returncode}; see {home / 'prefect-server.log'}"
            )
        if _healthy(api):
            return api, True
        time.sleep(0.5)
    raise PlatformUnavailableError("prefect", f"the Prefect server did not answer within {timeout:.0f} s")


def use_server(settings: RetireSettings) -> str:
    """Point this process at a Prefect server: PREFECT_API_URL, else the one `retire` started.

    Without this, Prefect would start a throwaway in-process server, which is never what a
    command that answers or starts a retirement wants.

    Raises:
        ConfigError: no server is configured or running.
    """
    configured = os.environ.get("PREFECT_API_URL")
    if configured:
        return configured
    recorded = settings.home.expanduser() / "prefect-api-url"
    for api in ([recorded.read_text().strip()] if recorded.exists() else []) + [DEFAULT_API]:
        if _healthy(api):
            os.environ["PREFECT_API_URL"] = api
            return api
    raise ConfigError(
        "no Prefect server: set PREFECT_API_URL, or start one with `retire server start` (or `retire demo`)"
    )


def stop_server(settings: RetireSettings) -> str:
    """Stop the Prefect server this CLI started, by its PID."""
    pid_file = settings.home.expanduser() / "prefect-server.pid"
    if not pid_file.exists():
        raise NotFoundError(f"no Prefect server started by `retire` (no {pid_file})")
    pid = int(pid_file.read_text())
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pid_file.unlink()
        return f"the Prefect server (pid {pid}) was not running"
    pid_file.unlink()
    (settings.home.expanduser() / "prefect-api-url").unlink(missing_ok=True)
    return f"stopped the Prefect server (pid {pid})"


def load_deployments(path: Path = PREFECT_YAML) -> list[Any]:
    """The deployments of prefect.yaml as runner deployments (for serving without a work pool).

    Raises:
        ConfigError: prefect.yaml has an unknown key, a bad schedule or a bad entrypoint.
    """
    from prefect.flows import load_flow_from_entrypoint
    from prefect.schedules import Cron, Interval

    config = yaml.safe_load(path.read_text())
    result = []
    for spec in config.get("deployments", []):
        name = spec.get("name")
        if not name or not spec.get("entrypoint"):
            raise ConfigError(f"{path}: every deployment needs a name and an entrypoint")
        flow: Any = load_flow_from_entrypoint(str(PROJECT_DIR / spec["entrypoint"]))
        schedules = [
            Interval(s["interval"], active=s.get("active", True))
            if "interval" in s
            else Cron(s["cron"], timezone=s.get("timezone", "UTC"), active=s.get("active", True))
            for s in spec.get("schedules") or []
        ]
        result.append(
            flow.to_deployment(
                name=name,
                description=spec.get("description"),
                tags=spec.get("tags"),
                enforce_parameter_schema=spec.get("enforce_parameter_schema", True),
                schedules=schedules or None,
            )
        )
    return result


def serve_all(path: Path = PREFECT_YAML) -> None:
    """Serve every deployment of prefect.yaml from this process (blocks until interrupted)."""
    from prefect import serve

    # Served runs beat too: a run whose process died is marked Crashed and the reconciler resumes it.
    os.environ.setdefault("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "30")
    sys.path.insert(0, str(PROJECT_DIR))
    serve(*load_deployments(path), print_starting_message=True)


def paused_runs(flow_run_ids: list[str] | None = None) -> list[Any]:
    """Flow runs waiting at a gate (paused or suspended), optionally among ``flow_run_ids``."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    flow_filter = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])))
    if flow_run_ids is not None:
        flow_filter.id = FlowRunFilterId(any_=[UUID(i) for i in flow_run_ids])
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_run_filter=flow_filter)


def retirement_runs(retirement_id: str) -> list[Any]:
    """Every flow run of a retirement (found by its tag), newest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[retirement_id])),
            sort=FlowRunSort.START_TIME_DESC,
        )


LIVE_TYPES = ("SCHEDULED", "PENDING", "RUNNING", "PAUSED", "CANCELLING")


def cancel_runs(retirement_id: str) -> list[tuple[str, str]]:
    """Cancel every run of a retirement that is scheduled, waiting at a gate, pending or running.

    Running runs are moved to Cancelling: their worker (or `retire serve`) stops the process.
    Returns, for each run cancelled, its id and a line with its name and the state it was in.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import State
    from prefect.states import Cancelled, Cancelling

    message = f"retirement {retirement_id} cancelled"
    said = []
    with get_client(sync_client=True) as client:
        for run in retirement_runs(retirement_id):
            kind = run.state.type.value if run.state else ""
            if kind not in LIVE_TYPES or kind == "CANCELLING":
                continue
            new: State = Cancelling(message=message) if kind == "RUNNING" else Cancelled(message=message)
            client.set_flow_run_state(run.id, new, force=True)
            said.append((str(run.id), f"{run.name} ({run.state.name if run.state else kind})"))
    return said


def live_runs(retirement_id: str) -> list[Any]:
    """Runs of a retirement that may still act on it (pending, running, being cancelled)."""
    return [
        r
        for r in retirement_runs(retirement_id)
        if r.state is not None and r.state.type.value in ("PENDING", "RUNNING", "CANCELLING")
    ]


def answer_gate(flow_run_id: str, answer: dict[str, Any]) -> str:
    """Resume a run waiting at a gate with ``answer``; the server checks it against the gate's form.

    Raises:
        InputError: the run is not waiting at a gate, or the server refused the answer (it says why).
    """
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.flow_runs import resume_flow_run

    with get_client(sync_client=True) as client:
        try:
            run = client.read_flow_run(flow_run_id)  # type: ignore[arg-type]
        except ObjectNotFound:
            raise NotFoundError(f"no flow run {flow_run_id}") from None
    if run.state is None or not run.state.is_paused():
        raise InputError("RUN_ID", f"flow run {flow_run_id} is not waiting at a gate ({run.state})", "a paused run")
    gate = (run.state.state_details.pause_key or "").rsplit("-", 1)[0]
    try:
        resume_flow_run(run.id, run_input=answer)
    except RuntimeError as exc:
        raise InputError("answer", f"refused by the server for gate {gate}: {exc}") from None
    return gate


def validate_prefect_yaml(path: Path = PREFECT_YAML) -> list[str]:
    """Every problem of a prefect.yaml, found offline (Prefect has no validation command for it).

    Prefect's own model ignores unknown keys, so a typo (``shedules:``) silently drops a schedule;
    this also checks unknown keys, cron expressions and timezones, and loads every entrypoint.
    """
    from prefect.cli.deploy._models import DeploymentConfig, PrefectYamlModel
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.flows import load_flow_from_entrypoint
    from pydantic import ValidationError

    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        return [f"{path}: not YAML: {exc}"]
    if not isinstance(raw, dict):
        return [f"{path}: the top level must be a mapping"]
    problems: list[str] = []
    top_keys = {f.alias or name for name, f in PrefectYamlModel.model_fields.items()}
    problems += [
        f"unknown top-level key {k!r} (allowed: {', '.join(sorted(top_keys))})" for k in raw if k not in top_keys
    ]
    try:
        PrefectYamlModel.model_validate(raw)
    except ValidationError as exc:
        problems.append(f"prefect.yaml does not validate: {exc}")
    allowed = set(DeploymentConfig.model_fields)
    schedule_keys = {"cron", "timezone", "day_or", "active", "parameters", "slug", "interval", "anchor_date", "rrule"}
    for i, spec in enumerate(raw.get("deployments") or []):
        where = f"deployments[{i}] ({spec.get('name', '?')})"
        problems += [f"{where}: unknown key {k!r}" for k in spec if k not in allowed]
        for j, schedule in enumerate(spec.get("schedules") or []):
            problems += [f"{where}.schedules[{j}]: unknown key {k!r}" for k in schedule if k not in schedule_keys]
            if "cron" in schedule:
                try:
                    CronSchedule(cron=schedule["cron"], timezone=schedule.get("timezone"))
                except (ValidationError, ValueError) as exc:
                    problems.append(f"{where}.schedules[{j}]: {exc}")
        entrypoint = spec.get("entrypoint")
        if not entrypoint:
            problems.append(f"{where}: no entrypoint")
            continue
        try:
            load_flow_from_entrypoint(str(path.parent / entrypoint))
        except Exception as exc:
            problems.append(f"{where}: entrypoint {entrypoint!r} does not load: {type(exc).__name__}: {exc}")
    return problems
