"""A real S3 wire protocol on 127.0.0.1: `python -m moto.server`, one per session, stopped by its PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.config import Config

START_TIMEOUT = 60.0
START_ATTEMPTS = 3
ACCESS_KEY_ID = "AKIAMOTOTESTKEY00001"
SECRET_ACCESS_KEY = "moto-secret-Zq8vR3tL9wXy"
SESSION_TOKEN = "moto-session-Hk2pN7cQ4sJm"
REGION = "us-east-1"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class MotoServer:
    """A running moto server: its endpoint, the PID we started, and where its log goes."""

    endpoint: str
    process: subprocess.Popen[bytes]
    log: Path

    def client(self) -> Any:
        """A boto3 S3 client on this server, with the test credentials."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2, "mode": "standard"}),
        )

    def stop(self) -> None:
        """Stop the server: the process group led by the PID we started (bounded waits)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=15)


def start_moto(root: Path) -> MotoServer:
    """Start `python -m moto.server` on a free loopback port; a port taken before moto bound it is retried."""
    root.mkdir(parents=True, exist_ok=True)
    # moto keeps object bodies in spooled temporary files: large ones go to disk here, not to memory.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MOTO_"))}
    env["TMPDIR"] = str(root)
    last_log = ""
    for attempt in range(START_ATTEMPTS):
        port = free_port()
        log = root / f"moto-{attempt}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=root,
                env=env,
                start_new_session=True,
            )
        server = MotoServer(endpoint=f"http://127.0.0.1:{port}", process=process, log=log)
        deadline = time.monotonic() + START_TIMEOUT
        while process.poll() is None and time.monotonic() < deadline:
            try:
                if httpx.get(f"{server.endpoint}/moto-api/", timeout=2).status_code == 200:
                    return server
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        server.stop()
        last_log = log.read_text(errors="replace")[-3000:]
    pytest.fail(f"moto server did not start in {START_ATTEMPTS} attempts:\n{last_log}")


_server: MotoServer | None = None
_users = 0


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """One moto server for the session, shared by every module that imports this fixture."""
    global _server, _users
    if _server is None:
        _server = start_moto(tmp_path_factory.mktemp("moto"))
    _users += 1
    try:
        yield _server
    finally:
        _users -= 1
        if _users == 0 and _server is not None:
            _server.stop()
            _server = None


@pytest.fixture
def s3_env(moto_s3: MotoServer, monkeypatch: pytest.MonkeyPatch) -> MotoServer:
    """The AWS variables of a user of the moto server (a session token included, to check it never leaks)."""
    for name in list(os.environ):
        if name.startswith("AWS_") or name.startswith("RETIRE_BACKUP_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
    monkeypatch.setenv("AWS_SESSION_TOKEN", SESSION_TOKEN)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("RETIRE_BACKUP_S3_ENDPOINT_URL", moto_s3.endpoint)
    return moto_s3


def make_bucket(server: MotoServer, *, object_lock: bool = True) -> str:
    """A new bucket with a unique name, with Object Lock enabled unless told otherwise."""
    name = f"retire-{uuid.uuid4().hex[:16]}"
    server.client().create_bucket(Bucket=name, ObjectLockEnabledForBucket=object_lock)
    return name


@pytest.fixture
def locked_bucket(s3_env: MotoServer) -> str:
    """A fresh bucket with Object Lock enabled."""
    return make_bucket(s3_env)


__all__ = [
    "ACCESS_KEY_ID",
    "SECRET_ACCESS_KEY",
    "SESSION_TOKEN",
    "MotoServer",
    "free_port",
    "locked_bucket",
    "make_bucket",
    "moto_s3",
    "s3_env",
    "start_moto",
]
