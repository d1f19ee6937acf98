"""Secrets never leave, proven on every run: every place the product writes is searched for every secret.

A distinct marker is set for every secret setting the product reads. Then, with ``-v`` wherever the
CLI runs: a whole retirement on the local platform through the retire-model flow (Slack on its fake),
one on the local platform whose Prometheus refuses the credentials, every HTTP platform refusing
(401) and failing (500) both `retire plan` and the flow's first phase, and `retire review`. The
platforms answer with the request they got echoed back (tests/security/echo.py), so every error
path sees the secrets. Then the raw bytes of everything under RETIRE_HOME (the SQLite database,
backups, manifests, the local catalogue), the Prefect server's database (runs, logs, artifacts)
and PREFECT_HOME, the CLI's output, this process's console and log records, the gateway's output
and the Slack fake's received messages are searched for every marker.
"""

from __future__ import annotations

import base64
import importlib
import logging
import os
import secrets
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from prefect.logging.handlers import APILogWorker
from prefect.settings import (
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
    PREFECT_HOME,
    PREFECT_SERVER_DATABASE_CONNECTION_URL,
    PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_ENABLED,
    temporary_settings,
)
from prefect.testing.utilities import prefect_test_harness
from pydantic import AliasChoices, SecretStr
from pydantic_settings import BaseSettings

import tasks._context
from retirement import bootstrap
from retirement.anchor import keygen
from retirement.gateway.server import GatewayProcess, free_port
from retirement.models import Phase, RetirementRequest, utcnow
from retirement.platforms.local import LocalRegistry
from retirement.redact import redact_text
from retirement.settings import RetireSettings
from retirement.state import RetirementState
from tests.fakes.slack import WEBHOOK_PATH, FakeSlack
from tests.flows.conftest import Answer, Driver
from tests.security.echo import EchoServer

REPO = Path(__file__).resolve().parents[2]
APPROVE = {"decision": "approve", "approver": "bob", "comment": "checked"}

# Secret settings this scan cannot give a marker, and why.
NOT_SET = {
    "RETIRE_DATABASE_URL": "only a PostgreSQL URL carries a password; this scan runs on the default SQLite store "
    "under RETIRE_HOME, which it scans (tests/security/test_redact.py checks a database password is redacted)",
}

# Each HTTP platform: the reference `retire plan` and the flow ask about ({n}: the status the platform answers, so
# each round retires another model: a failed run keeps its model's claim), and the variables pointing it at a server.
PLATFORMS: dict[str, tuple[str, dict[str, str]]] = {
    "mlflow": ("churn-{n}@1", {"MLFLOW_TRACKING_URI": "{url}"}),
    "replicate": ("acme/churn-{n}@5c7d5dc6dd8b", {"RETIRE_REPLICATE_BASE_URL": "{url}/v1"}),
    "openai": ("ft:gpt-4o-mini-2024-07-18:acme::churn{n}", {"OPENAI_BASE_URL": "{url}/v1", "OPENAI_ORG_ID": "org-1"}),
    "bailo": ("churn-{n}-x1y2", {"RETIRE_BAILO_URL": "{url}"}),
    "selise": ("m-{n}", {"RETIRE_SELISE_BASE_URL": "{url}", "RETIRE_SELISE_CLIENT_ID": "retire-client"}),
    "datature-vi": (
        "run-{n}@c1",
        {
            "RETIRE_DATATURE_VI_BASE_URL": "{url}",
            "DATATURE_VI_ORGANIZATION_ID": "org-1",
            "RETIRE_DATATURE_VI_PRODUCTION_DEPLOYMENT": "dep-prod",
        },
    ),
}


def secret_settings() -> dict[str, set[str]]:
    """Every SecretStr setting of the product (``Class.field``) and the variables that set it."""
    found: dict[str, set[str]] = {}
    for path in sorted((REPO / "retirement").rglob("*.py")):
        if "SecretStr" not in path.read_text(encoding="utf-8") or "migrations" in path.parts:
            continue
        module = importlib.import_module(".".join(path.relative_to(REPO).with_suffix("").parts))
        for value in vars(module).values():
            if not (
                isinstance(value, type) and issubclass(value, BaseSettings) and value.__module__ == module.__name__
            ):
                continue
            prefix = str(value.model_config.get("env_prefix") or "")
            for name, info in value.model_fields.items():
                if SecretStr not in (getattr(info.annotation, "__args__", None) or (info.annotation,)):
                    continue
                alias = info.validation_alias
                if isinstance(alias, AliasChoices):
                    names = {str(choice) for choice in alias.choices}
                elif isinstance(alias, str):
                    names = {alias}
                else:
                    names = {f"{prefix}{name}".upper()}
                found[f"{value.__name__}.{name}"] = names
    return found


@dataclass
class Markers:
    """A marker per secret variable: the value it is set to, and what must never be found (the marker itself)."""

    values: dict[str, str] = field(default_factory=dict)
    searched: dict[str, bytes] = field(default_factory=dict)

    def add(self, variable: str, marker: str, value: str | None = None) -> None:
        self.values[variable] = marker if value is None else value
        self.searched[variable] = marker.encode()

    def derived(self, what: str, text: str) -> None:
        """A form a secret travels in (a Basic credential) that must not be found either."""
        self.searched[what] = text.encode()


def _marker(n: int) -> str:
    # Letters and digits only: the same bytes in a form body, a query string, JSON or a database.
    return f"zq{n:02d}{secrets.token_hex(10)}"


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A Prefect test server of this module's own, with PREFECT_HOME in a temporary folder; yields that folder."""
    home = tmp_path_factory.mktemp("prefect-home")
    quiet = {
        PREFECT_HOME: str(home),
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None,
        PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_ENABLED: False,
    }
    with temporary_settings(quiet), prefect_test_harness(server_startup_timeout=90):
        yield home


def test_every_secret_setting_is_redacted_by_value(monkeypatch: pytest.MonkeyPatch) -> None:
    variables = sorted({v for names in secret_settings().values() for v in names})
    values = {variable: _marker(n) for n, variable in enumerate(variables)}
    for variable, value in values.items():
        monkeypatch.setenv(variable, value)
    said = redact_text("sent " + ", ".join(values.values()))  # no names: only their values can give them away
    assert not [variable for variable, value in values.items() if value in said], said


def test_every_secret_setting_gets_a_marker() -> None:
    settings = secret_settings()
    assert "SeliseSettings.client_secret" in settings and "RetireSettings.database_url" in settings
    covered = set(SECRET_VARIABLES) | set(NOT_SET)
    missing = {name: sorted(variables) for name, variables in settings.items() if not variables & covered}
    assert not missing, f"secret settings without a marker in the leak scan: {missing}"


# The secrets the failing platforms are sent (OPENAI_ADMIN_KEY only goes to the usage API, after a cutover).
SENT = (
    "MLFLOW_TRACKING_TOKEN",
    "REPLICATE_API_TOKEN",
    "OPENAI_API_KEY",
    "RETIRE_SELISE_PROJECT_KEY",
    "RETIRE_SELISE_CLIENT_SECRET",
    "DATATURE_VI_SECRET_KEY",
)

SECRET_VARIABLES = (
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_PASSWORD",
    "REPLICATE_API_TOKEN",
    "OPENAI_API_KEY",
    "OPENAI_ADMIN_KEY",
    "RETIRE_BAILO_ACCESS_KEY",
    "RETIRE_BAILO_SECRET_KEY",
    "RETIRE_SELISE_PROJECT_KEY",
    "RETIRE_SELISE_CLIENT_SECRET",
    "DATATURE_VI_SECRET_KEY",
    "RETIRE_PROMETHEUS_AUTH_HEADER",
    "RETIRE_SLACK_BOT_TOKEN",
    "RETIRE_SLACK_WEBHOOK_URL",
    "RETIRE_LEDGER_SIGNING_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
)


class Retirements:
    """Runs retire-model flow legs in this process (as a served deployment would), answering gates like bob."""

    def __init__(self, settings: RetireSettings) -> None:
        self.settings = settings
        self.driver = Driver(world=None)  # type: ignore[arg-type]

    def states(self) -> list[RetirementState]:
        return bootstrap.stores(self.settings)[1].all()

    def run(
        self, request: RetirementRequest, answers: dict[str, list[Answer]], max_legs: int = 10
    ) -> tuple[Any, RetirementState]:
        """Every leg until the retirement ends, halts or a run fails; returns the last flow run state and the state."""
        before = {s.id for s in self.states()}
        phase, rid = Phase.DOCUMENT, None
        for _ in range(max_legs):
            flow_state = self.driver.run_leg(request, phase, rid, answers)
            if rid is None:
                (state,) = [s for s in self.states() if s.id not in before]
                rid = state.id
            state = bootstrap.stores(self.settings)[1].load(rid)
            if state.status != "waiting" or state.next_phase is None or state.next_run_at is None:
                return flow_state, state
            time.sleep(max(0.0, (state.next_run_at - utcnow()).total_seconds()))
            phase = state.next_phase
        raise AssertionError(f"retirement of {request.model} did not end")


def _request(model: str, platform: str = "local", **overrides: Any) -> RetirementRequest:
    data: dict[str, Any] = {
        "model": model,
        "platform": platform,
        "requester": "alice",
        "approvers": ["bob"],
        "reason": "superseded by the next version",
        "traffic_window_hours": 2 / 3600,
        "bake_minutes": 0,
        "monitor_days": 0,
        **overrides,
    }
    return RetirementRequest.model_validate(data)


def _retire(*args: str) -> tuple[int, bytes]:
    """`retire -v ARGS` as a user runs it; its exit code and everything it printed."""
    done = subprocess.run(
        [sys.executable, "-m", "retirement", "-v", *args], env=os.environ.copy(), capture_output=True, timeout=120
    )
    return done.returncode, done.stdout + done.stderr


def _files(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()} if root.exists() else {}


def scan(places: dict[str, bytes], markers: Markers) -> list[str]:
    """Every (place, secret) where a marker is found, as a line naming both; URL-encoded forms count too."""
    hits = []
    for place, content in places.items():
        for variable, marker in markers.searched.items():
            text = marker.decode()
            forms = {marker, quote(text, safe="").encode(), quote_plus(text).encode()}
            if any(form in content for form in forms):
                hits.append(f"{place}: {variable} ({text})")
    return hits


def test_the_scan_finds_a_marker_inside_a_sqlite_database(tmp_path: Path) -> None:
    markers = Markers()
    markers.add("SOME_TOKEN", _marker(0))
    with sqlite3.connect(tmp_path / "store.db") as db:
        db.execute("CREATE TABLE t (detail TEXT)")
        db.execute("INSERT INTO t VALUES (?)", (f'{{"error": "refused: token={markers.values["SOME_TOKEN"]}"}}',))
    db.close()
    assert scan(_files(tmp_path), markers) == [f"{tmp_path / 'store.db'}: SOME_TOKEN ({markers.values['SOME_TOKEN']})"]


@pytest.mark.prefect_server
@pytest.mark.timeout(300)
def test_no_secret_reaches_anything_the_product_writes(
    prefect_home: Path,
    retire_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    markers = Markers()
    for n, variable in enumerate(SECRET_VARIABLES):
        markers.add(variable, _marker(n + 1))
    markers.add("RETIRE_LEDGER_SIGNING_KEY", keygen()[0])  # the anchor signs checkpoints with it: a real key
    webhook_secret = WEBHOOK_PATH.rsplit("/", 1)[1]  # the fake accepts its own webhook path only
    with (
        FakeSlack(token=markers.values["RETIRE_SLACK_BOT_TOKEN"]) as slack,
        EchoServer() as echo,
        EchoServer(401) as prometheus,
    ):
        markers.add("RETIRE_SLACK_WEBHOOK_URL", webhook_secret, slack.webhook_url)
        prometheus_token = markers.values["RETIRE_PROMETHEUS_AUTH_HEADER"]
        markers.add("RETIRE_PROMETHEUS_AUTH_HEADER", prometheus_token, f"Bearer {prometheus_token}")
        for variable, value in markers.values.items():
            monkeypatch.setenv(variable, value)
        bailo = f"{markers.values['RETIRE_BAILO_ACCESS_KEY']}:{markers.values['RETIRE_BAILO_SECRET_KEY']}"
        markers.derived("Bailo Basic credential", base64.b64encode(bailo.encode()).decode())
        mlflow = f"retire-bot:{markers.values['MLFLOW_TRACKING_PASSWORD']}"
        markers.derived("MLflow Basic credential", base64.b64encode(mlflow.encode()).decode())
        for _, variables in PLATFORMS.values():
            for variable, value in variables.items():
                monkeypatch.setenv(variable, value.format(url=echo.url))
        environment = {
            "RETIRE_MIN_TRAFFIC_WINDOW_HOURS": "0",
            "RETIRE_CUTOVER_GRACE_SECONDS": "1",
            "RETIRE_GATE_POLL_SECONDS": "1",
            "RETIRE_GATEWAY_PORT": str(free_port()),
            "RETIRE_SLACK_CHANNEL": "#model-retirements",
            "RETIRE_SLACK_BASE_URL": slack.base_url,
            "RETIRE_SLACK_RETRY_BACKOFF_SECONDS": "0.01",
            "RETIRE_PROMETHEUS_URL": prometheus.url,
            "RETIRE_PROMETHEUS_MAX_RETRIES": "0",
        }
        for variable, value in environment.items():
            monkeypatch.setenv(variable, value)
        settings = RetireSettings()
        registry = LocalRegistry(settings.local_dir)
        registry.seed_demo(64 * 1024)
        registry.seed_demo(64 * 1024, name="fraud-model")
        bootstrap.use_factory(None)
        tasks._context.reset()
        retirements = Retirements(settings)
        outputs: dict[str, bytes] = {}
        gateway = GatewayProcess(settings, settings.gateway_port).start()
        try:
            # A whole retirement on the local platform, every gate approved.
            answers: dict[str, list[Answer]] = {
                "approve-plan": [APPROVE, APPROVE],
                "approve-cutover": [APPROVE, APPROVE],
                "approve-deletion": [{**APPROVE, "typed_reference": "churn-model@1"}],
            }
            _, done = retirements.run(_request("churn-model@1", replacement="churn-model@2"), answers)
            assert done.status == "done", done.status_reason
            assert done.receipt is not None and done.receipt.verified_gone
            with ThreadPoolExecutor(max_workers=3) as pool:
                local = {
                    "retire -v plan --platform local": pool.submit(_retire, "plan", "--model", "churn-model@2"),
                    "retire -v review": pool.submit(_retire, "review"),
                    "retire -v review --json --save": pool.submit(_retire, "review", "--json", "--save"),
                }
                # A retirement whose Prometheus refuses the credentials: it halts, saying why.
                _, halted = retirements.run(
                    _request("fraud-model@1", replacement="fraud-model@2", traffic_sources=["local", "prometheus"]),
                    answers,
                )
                assert halted.status == "halted" and "RETIRE_PROMETHEUS_AUTH_HEADER" in halted.status_reason
                assert prometheus.received and all(prometheus_token.encode() in r for r in prometheus.received)
                for name, running in local.items():
                    code, outputs[name] = running.result()
                    said = outputs[name].decode(errors="replace")
                    if name.startswith("retire -v plan"):  # @2 now serves production with no replacement: refused
                        assert code == 1 and "refused" in said, said[-2000:]
                    else:
                        assert code == 0, said[-2000:]
        finally:
            outputs["gateway output"] = gateway.output().encode()
            gateway.stop()

        # Every HTTP platform refusing (401) and failing (500): `retire plan`, the flow, `retire review`.
        for status in (401, 500):
            echo.status = status
            # MLflow takes a token or a user and password: one each way.
            if status == 401:
                monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
                monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", markers.values["MLFLOW_TRACKING_TOKEN"])
            else:
                monkeypatch.delenv("MLFLOW_TRACKING_TOKEN")
                monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "retire-bot")
            tasks._context.reset()
            with ThreadPoolExecutor(max_workers=2 * len(PLATFORMS)) as pool:
                commands = {}
                for platform, (reference, _) in PLATFORMS.items():
                    model = reference.format(n=status)
                    commands[f"retire -v plan --platform {platform} (HTTP {status})"] = pool.submit(
                        _retire, "plan", "--platform", platform, "--model", model
                    )
                    if status == 401:  # a review lists versions through the same error path: once is enough
                        commands[f"retire -v review --platform {platform} (HTTP {status})"] = pool.submit(
                            _retire, "review", "--platform", platform
                        )
                for platform, (reference, _) in PLATFORMS.items():
                    flow_state, state = retirements.run(_request(reference.format(n=status), platform), {})
                    assert flow_state.is_failed() and f"HTTP {status}" in str(flow_state.message), flow_state
                    assert state.status != "done"
                for name, running in commands.items():
                    code, outputs[name] = running.result()
                    assert code == 2 and f"HTTP {status}".encode() in outputs[name], outputs[name][-2000:]
        # Each platform's credentials went out, so each echo carried them back into an error path.
        sent = b"\n".join(echo.received)
        for variable in (*SENT, "Bailo Basic credential", "MLflow Basic credential"):
            assert markers.searched[variable] in sent, f"{variable} never reached a platform: nothing was tested"

    bootstrap.use_factory(None)
    tasks._context.reset()
    APILogWorker.drain_all(timeout=30)
    captured = capfd.readouterr()
    places: dict[str, bytes] = {**outputs}
    places["this process's stdout"] = captured.out.encode()
    places["this process's stderr"] = captured.err.encode()
    places["this process's log records"] = "\n".join(
        f"{r.name} {r.levelname} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records
    ).encode()
    places.update({f"Slack fake, {r.method} {r.path}": repr(r.body).encode() for r in slack.requests})
    places.update(_files(retire_home))
    database = Path(PREFECT_SERVER_DATABASE_CONNECTION_URL.value().split(":///", 1)[1])
    places.update(_files(database.parent))
    places.update(_files(prefect_home))

    # The places hold what happened, so a clean scan means redaction worked, not that nothing was written.
    prefect_db = b"".join(content for place, content in places.items() if place.startswith(str(database.parent)))
    assert b"selise HTTP 401" in prefect_db and b"datature-vi HTTP 500" in prefect_db
    assert b"churn-model@1" in prefect_db and b"approve-deletion" in prefect_db
    assert any(r.api_method == "chat.postMessage" for r in slack.requests)
    assert any(place.endswith("manifest.json") for place in places)

    hits = scan(places, markers)
    assert not hits, "secrets found where the product writes:\n" + "\n".join(hits)
    # What the user sees instead when Selise refuses the credentials.
    selise_said = outputs["retire -v plan --platform selise (HTTP 401)"].decode()
    assert "retire plan: error: selise HTTP 401: the token endpoint refused the project's credentials" in selise_said
    assert "RETIRE_SELISE_CLIENT_SECRET" in selise_said
