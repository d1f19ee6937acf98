"""Run the gateway with uvicorn, in this process (`retire gateway serve`) or as a child process (GatewayProcess)."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import httpx
from starlette.types import ASGIApp

from retirement.errors import ConflictError, InputError, PlatformUnavailableError
from retirement.gateway.app import create_app
from retirement.gateway.requestlog import RequestLog
from retirement.platforms.local import LocalRegistry
from retirement.settings import RetireSettings

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


def check_port_free(host: str, port: int) -> None:
    """Raise ConflictError naming the port when something already listens on ``host:port``."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise InputError("port", f"{port!r} is not a port number", "an integer from 1 to 65535")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As uvicorn does: a port in TIME_WAIT is free, only a listener makes it busy.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConflictError(
                    f"port {port} on {host} is already in use; stop what listens there or pick another --port"
                ) from None
            raise InputError("host", f"cannot bind {host}:{port}: {exc.strerror}", "a local address") from None


def free_port(host: str = LOOPBACK) -> int:
    """A port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def serve(settings: RetireSettings, host: str | None = None, port: int | None = None) -> None:
    """Serve the gateway on ``host:port`` until interrupted (SIGINT / SIGTERM stop it cleanly).

    Raises:
        ConflictError: the port is already in use.
    """
    import uvicorn

    host = host or settings.gateway_host
    port = settings.gateway_port if port is None else port
    check_port_free(host, port)
    root = settings.local_dir
    app = create_app(LocalRegistry(root), RequestLog(root))
    logger.info("gateway for %s on http://%s:%d", root, host, port)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="on")
    uvicorn.Server(config).run()


@contextlib.contextmanager
def serve_in_thread(
    app: ASGIApp, host: str = LOOPBACK, port: int | None = None, startup_timeout: float = 10.0
) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a background thread of this process; yield its base URL, stop on exit.

    For tests and tools that want a real HTTP server without a child process.

    Raises:
        ConflictError: the port is already in use.
        PlatformUnavailableError: the server did not start.
    """
    import uvicorn

    port = free_port(host) if port is None else port
    check_port_free(host, port)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"gateway-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(5)
            raise PlatformUnavailableError("local", f"the gateway did not start on {host}:{port}")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


class GatewayProcess:
    """The gateway in a child process (``python -m retirement gateway serve``) with the same RETIRE_HOME.

    Args:
        settings: whose home and local root the child uses.
        port: the port to listen on (a free one when None).
        host: the address to bind (loopback by default).
        startup_timeout: seconds to wait for /healthz before giving up.
    """

    def __init__(
        self,
        settings: RetireSettings,
        port: int | None = None,
        *,
        host: str = LOOPBACK,
        startup_timeout: float = 30.0,
    ) -> None:
        self.settings = settings
        self.host = host
        self.port = port
        self.startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._output: Path | None = None

    @property
    def url(self) -> str:
        """Base URL of the gateway (known once started)."""
        if self.port is None:
            raise ConflictError("the gateway process has not been started")
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The child's process id, while it runs."""
        return self._process.pid if self._process is not None else None

    def output(self) -> str:
        """What the child wrote to stdout and stderr so far."""
        if self._output is None or not self._output.exists():
            return ""
        return self._output.read_text(errors="replace")

    def start(self) -> GatewayProcess:
        """Spawn the gateway and wait until /healthz answers from it.

        Raises:
            ConflictError: the port is already in use.
            PlatformUnavailableError: the gateway did not come up (the message has its output).
        """
        if self._process is not None:
            return self
        if self.port is None:
            self.port = free_port(self.host)
        check_port_free(self.host, self.port)
        env = dict(os.environ)
        env["RETIRE_HOME"] = str(self.settings.home.expanduser())
        env["RETIRE_LOCAL_ROOT"] = str(self.settings.local_dir)
        fd, name = tempfile.mkstemp(prefix="retire-gateway-", suffix=".log")
        self._output = Path(name)
        with os.fdopen(fd, "wb") as out:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "retirement", "gateway", "serve", "--host", self.host, "--port", str(self.port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        deadline = time.monotonic() + self.startup_timeout
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    code = self._process.returncode
                    text = self.output()
                    self._cleanup()
                    raise PlatformUnavailableError(
                        "local", f"the gateway exited with code {code} before answering; its output:\n{text.strip()}"
                    )
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    response = client.get(f"{self.url}/healthz")
                    if response.status_code == 200 and response.json().get("pid") == self._process.pid:
                        return self
                time.sleep(0.05)
        text = self.output()
        self.stop()
        raise PlatformUnavailableError(
            "local", f"the gateway did not answer /healthz within {self.startup_timeout:.0f}s; its output:\n{text}"
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the child (SIGTERM, then SIGKILL after ``timeout``) and wait for it."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        self._cleanup()

    def _cleanup(self) -> None:
        self._process = None
        if self._output is not None:
            with contextlib.suppress(OSError):
                self._output.unlink()
            self._output = None

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


__all__ = ["GatewayProcess", "check_port_free", "free_port", "serve", "serve_in_thread"]
