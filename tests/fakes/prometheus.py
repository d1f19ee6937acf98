"""A real Prometheus (the Debian `prometheus` binary) on 127.0.0.1, scraping given targets every second."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import pytest

from retirement.gateway.server import LOOPBACK, free_port

START_TIMEOUT = 60.0
SCRAPE_SECONDS = 1.0


def prometheus_binary() -> Path:
    """The `prometheus` executable from $RETIRE_TEST_PROMETHEUS or PATH; fails the test when absent."""
    configured = os.environ.get("RETIRE_TEST_PROMETHEUS")
    found = configured or shutil.which("prometheus") or "/usr/bin/prometheus"
    path = Path(found)
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(
            f"the Prometheus binary is missing (looked for {path}): run ./scripts/test, which installs the Debian "
            "package `prometheus` (or set RETIRE_TEST_PROMETHEUS to a `prometheus` executable)"
        )
    return path


def scrape_config(job: str, targets: list[str], interval: float = SCRAPE_SECONDS) -> str:
    """A prometheus.yml that scrapes ``targets`` (host:port) under ``job`` every ``interval`` seconds."""
    listed = ", ".join(f'"{t}"' for t in targets)
    timeout_ms = max(100, int(interval * 900))
    return (
        "global:\n"
        f"  scrape_interval: {int(interval * 1000)}ms\n"
        f"  scrape_timeout: {timeout_ms}ms\n"
        "scrape_configs:\n"
        f"  - job_name: {job}\n"
        "    metrics_path: /metrics\n"
        "    static_configs:\n"
        f"      - targets: [{listed}]\n"
    )


class PrometheusServer:
    """`prometheus` in a child process with its own config and TSDB under ``root``; stopped by its PID.

    Args:
        root: folder for prometheus.yml, the TSDB and the log.
        job: scrape job name.
        targets: ``host:port`` of the targets to scrape (loopback only).
    """

    def __init__(self, root: Path, job: str, targets: list[str]) -> None:
        for target in targets:
            if not target.startswith(f"{LOOPBACK}:"):
                raise ValueError(f"target {target!r} is not on {LOOPBACK}")
        self.root = root
        self.job = job
        self.targets = targets
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None
        self.client = httpx.Client(timeout=10.0)

    def start(self) -> PrometheusServer:
        binary = prometheus_binary()
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "prometheus.yml"
        config.write_text(scrape_config(self.job, self.targets))
        log = self.root / "prometheus.log"
        command = [
            str(binary),
            f"--config.file={config}",
            f"--storage.tsdb.path={self.root / 'data'}",
            f"--web.listen-address={LOOPBACK}:{self.port}",
            "--storage.tsdb.retention.time=1d",
        ]
        with log.open("wb") as out:
            self._proc = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self._proc.poll() is not None:
                pytest.fail(f"prometheus exited with {self._proc.returncode}:\n{self.log()[-3000:]}")
            try:
                if self.client.get(f"{self.url}/-/ready").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"prometheus not ready after {START_TIMEOUT}s:\n{self.log()[-3000:]}")
            time.sleep(0.1)

    def log(self) -> str:
        path = self.root / "prometheus.log"
        return path.read_text(errors="replace") if path.exists() else ""

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def stop(self) -> None:
        """SIGTERM the process we started (SIGKILL after 15 s) and wait for it."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)
        self._proc = None

    def close(self) -> None:
        self.stop()
        self.client.close()

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- waiting on what Prometheus has ingested ---------------------------------------------------

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": promql} if at is None else {"query": promql, "time": f"{at:.3f}"}
        body = self.client.get(f"{self.url}/api/v1/query", params=params).json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def wait_until(self, promql: str, check: Any, timeout: float = 30.0, what: str = "") -> list[dict[str, Any]]:
        """Poll the instant query ``promql`` until ``check(result)`` is true; fail the test after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(promql)
            if check(result):
                return result
            if time.monotonic() > deadline:
                pytest.fail(f"Prometheus never showed {what or promql} within {timeout}s; last answer {result}")
            time.sleep(0.2)

    def scrape_times(self, up: float | None = None, seconds: float = 30.0) -> list[float]:
        """Times of the job's scrapes in the last ``seconds`` (only those with ``up == up`` when given)."""
        found = self.query(f'up{{job="{self.job}"}}[{int(seconds * 1000)}ms]')
        times = [float(t) for item in found for t, v in item["values"] if up is None or float(v) == up]
        return sorted(times)

    def wait_scraped_after(self, when: float, timeout: float = 30.0) -> float:
        """Wait until Prometheus holds an answered scrape of the job taken after ``when``; return its time."""
        deadline = time.monotonic() + timeout
        while True:
            later = [t for t in self.scrape_times(up=1.0) if t > when]
            if later:
                return later[0]
            if time.monotonic() > deadline:
                pytest.fail(
                    f"no answered scrape of job {self.job} after {when} within {timeout}s:\n{self.log()[-2000:]}"
                )
            time.sleep(0.2)

    def wait_failed_scrape_after(self, when: float, timeout: float = 30.0) -> float:
        """Wait until Prometheus records a failed scrape (``up == 0``) taken after ``when``; return its time."""
        deadline = time.monotonic() + timeout
        while True:
            later = [t for t in self.scrape_times(up=0.0) if t > when]
            if later:
                return later[0]
            if time.monotonic() > deadline:
                pytest.fail(f"no failed scrape of job {self.job} after {when} within {timeout}s")
            time.sleep(0.2)
