"""Prism (npm @stoplight/prism-cli) serving an official OpenAPI spec on 127.0.0.1, for contract tests.

Prism validates every request against the spec: an invalid request is answered 4xx (usually 422)
and every response carries an ``sl-violations`` header listing what did not match the spec.
Examples are static (no ``--dynamic``), so the same request gets the same answer.

Usage in a contract test module::

    from tests.fakes.prism import PrismServer, assert_no_violations, spec_path

    @pytest.fixture(scope="session")
    def prism_replicate() -> Iterator[PrismServer]:
        with PrismServer(spec_path("replicate-openapi.json")) as server:
            yield server

or the ready-made session fixtures from :func:`prism_fixture`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import httpx
import pytest

from retirement.errors import RetirementError

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The repository root (tests/fakes/prism.py is two levels below it)."""


def specs_dir() -> Path:
    """The folder of official specs: $RETIRE_SPECS_DIR, else the repo's sibling ``shared/specs``."""
    override = os.environ.get("RETIRE_SPECS_DIR")
    return Path(override) if override else REPO_ROOT.parent / "shared" / "specs"


def spec_path(name: str) -> Path:
    """The path of one spec file in :func:`specs_dir`; fails the test (never skips) when it is missing."""
    path = specs_dir() / name
    if not path.is_file():
        pytest.fail(f"official spec {path} is missing; set RETIRE_SPECS_DIR to the folder holding {name}")
    return path


def prism_binary() -> Path:
    """The prism executable: $RETIRE_TEST_PRISM, else <repo>/.tools/node_modules/.bin/prism.

    Fails the test (never skips) when it is not installed.
    """
    override = os.environ.get("RETIRE_TEST_PRISM")
    path = Path(override) if override else REPO_ROOT / ".tools" / "node_modules" / ".bin" / "prism"
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(
            f"Prism is not installed at {path}; run ./scripts/test once (it installs @stoplight/prism-cli "
            "under .tools/) or set RETIRE_TEST_PRISM to the prism executable"
        )
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrismServer:
    """``prism mock <spec>`` on 127.0.0.1, started on enter and stopped (its process group) on exit.

    Args:
        spec: the OpenAPI document to serve.
        start_timeout: seconds to wait for the first answer (the OpenAI spec takes a while to load).
        binary: the prism executable; defaults to :func:`prism_binary`.
    """

    def __init__(self, spec: Path, *, start_timeout: float = 180.0, binary: Path | None = None) -> None:
        self.spec = Path(spec)
        self.start_timeout = start_timeout
        self.binary = binary
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``: prepend the spec's path prefix (e.g. ``/v1``) where its server has one."""
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        """What prism wrote so far (stdout and stderr), for failure messages."""
        if self._log is None:
            return ""
        self._log.flush()
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")[-4000:]

    def start(self) -> PrismServer:
        """Start prism and wait until it answers HTTP; fails the test with prism's output if it does not."""
        binary = self.binary or prism_binary()
        if not self.spec.is_file():
            pytest.fail(f"spec {self.spec} does not exist")
        self.port = free_port()
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [str(binary), "mock", str(self.spec), "-h", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, so stop() ends node and its children
        )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                output = self.log_text()
                self.stop()
                pytest.fail(f"prism exited with code {self.process.returncode} serving {self.spec}:\n{output}")
            try:
                # Any HTTP answer (even 404 for an unknown path) means the spec is loaded and serving.
                httpx.get(f"{self.base_url}/__prism_ready__", timeout=2.0)
            except httpx.TransportError:
                time.sleep(0.25)
                continue
            return self
        output = self.log_text()
        self.stop()
        pytest.fail(f"prism did not answer within {self.start_timeout:.0f}s serving {self.spec}:\n{output}")

    def stop(self) -> None:
        """Stop prism: SIGTERM to its process group, SIGKILL if it lingers."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> PrismServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def violations(response: httpx.Response) -> str:
    """The ``sl-violations`` header of a Prism answer ('' when the request and answer matched the spec)."""
    return response.headers.get("sl-violations", "")


def assert_no_violations(response: httpx.Response) -> None:
    """Fail when Prism rejected the request (4xx validation error) or reported any violation."""
    found = violations(response)
    request = response.request
    where = f"{request.method} {request.url}"
    assert not found, f"{where}: Prism reported spec violations: {found}"
    if response.status_code in (400, 401, 403, 404, 405, 415, 422):
        try:
            body = response.text[:1000]
        except httpx.ResponseNotRead:
            body = "(body not read)"
        raise AssertionError(f"{where}: Prism refused the request with HTTP {response.status_code}: {body}")


class RecordingHook:
    """An httpx response hook that keeps every response, so a test can check each one after an adapter call.

    Pass it as ``httpx.Client(event_hooks={"response": [hook]})``; then :meth:`assert_clean`.
    """

    def __init__(self) -> None:
        self.responses: list[httpx.Response] = []

    def __call__(self, response: httpx.Response) -> None:
        if not response.is_success:
            response.read()  # keep the error body for the failure message; a success may be a stream
        self.responses.append(response)

    def assert_clean(self, *, at_least: int = 1) -> None:
        """Every recorded response passed :func:`assert_no_violations`; at least ``at_least`` were sent."""
        assert len(self.responses) >= at_least, f"expected at least {at_least} requests, saw {len(self.responses)}"
        for response in self.responses:
            assert_no_violations(response)

    def calls(self) -> list[str]:
        """``"METHOD /path"`` of every request seen, in order."""
        return [f"{r.request.method} {r.request.url.path}" for r in self.responses]


def prism_fixture(spec_name: str) -> Callable[..., Iterator[PrismServer]]:
    """A session-scoped pytest fixture serving ``spec_name`` from :func:`specs_dir`, one server per session.

    In a test module: ``prism_openai = prism_fixture("openai-openapi.yaml")``.
    """

    @pytest.fixture(scope="session")
    def _fixture() -> Iterator[PrismServer]:
        with PrismServer(spec_path(spec_name)) as server:
            yield server

    return _fixture


__all__ = [
    "PrismServer",
    "RecordingHook",
    "assert_no_violations",
    "free_port",
    "prism_binary",
    "prism_fixture",
    "spec_path",
    "specs_dir",
    "violations",
]


@contextmanager
def bearer_client(server: PrismServer, token: str, hook: RecordingHook) -> Iterator[httpx.Client]:
    """An httpx client at the Prism server (the specs serve paths without their /v1 prefix), recording answers."""
    with httpx.Client(
        base_url=server.base_url + "/",
        headers={"Authorization": f"Bearer {token}"},
        event_hooks={"response": [hook]},
        timeout=30,
    ) as client:
        yield client


def attempt(call: Callable[[], Any]) -> None:
    """Run an adapter call to send its requests; Prism's placeholder examples (cursors that never end, ...)
    may make the adapter fail afterwards. What is asserted is that every request sent was valid."""
    try:
        result = call()
        if isinstance(result, Iterator):
            list(result)
    except RetirementError:
        pass
