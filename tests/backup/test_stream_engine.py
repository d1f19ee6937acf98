"""The streaming download engine against a fake file server behind httpx.MockTransport."""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterator

import httpx
import pytest

from retirement.backup.stream import http_export_item, iter_download
from retirement.errors import AuthError, BackupError, NotFoundError, PlatformUnavailableError, RateLimitedError

DATA = bytes(range(256)) * 40  # 10,240 bytes, every offset distinguishable by its neighbours
SECRET = "sig-0123456789abcdef"


class FileServer:
    """A fake file server: serves ``files`` with Range support; can drop, ignore Range or fail on purpose."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.requests: list[httpx.Request] = []
        self.drop_after: list[int] = []  # for the next requests: bytes sent before the connection drops
        self.statuses: list[tuple[int, dict[str, str]]] = []  # for the next requests: error answers
        self.ignore_range = False
        self.range_offset = 0  # answer a Range this many bytes off
        self.pieces_sent = 0

    def _body(self, data: bytes, drop: int | None) -> Iterator[bytes]:
        for start in range(0, len(data), 512):
            if drop is not None and start >= drop:
                raise httpx.ReadError("connection reset by peer")
            self.pieces_sent += 1
            yield data[start : min(start + 512, len(data)) if drop is None else min(start + 512, drop, len(data))]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.statuses:
            status, headers = self.statuses.pop(0)
            return httpx.Response(status, headers=headers, json={"error": {"message": f"status {status}"}})
        data = self.files.get(request.url.path)
        if data is None:
            return httpx.Response(404, json={"error": {"message": "no such file"}})
        drop = self.drop_after.pop(0) if self.drop_after else None
        match = re.fullmatch(r"bytes=(\d+)-", request.headers.get("range", ""))
        if match and not self.ignore_range:
            start = int(match.group(1)) + self.range_offset
            part = data[start:]
            headers = {"content-range": f"bytes {start}-{len(data) - 1}/{len(data)}", "content-length": str(len(part))}
            return httpx.Response(206, headers=headers, content=self._body(part, drop))
        return httpx.Response(200, headers={"content-length": str(len(data))}, content=self._body(data, drop))


@pytest.fixture
def server() -> FileServer:
    return FileServer({"/files/model.bin": DATA})


@pytest.fixture
def client(server: FileServer) -> Iterator[httpx.Client]:
    with httpx.Client(transport=httpx.MockTransport(server), base_url="http://registry.test") as c:
        yield c


def download(client: httpx.Client, url: str = "/files/model.bin", **kwargs: object) -> bytes:
    return b"".join(iter_download(client, url, platform="test", sleep=lambda s: None, **kwargs))  # type: ignore[arg-type]


def test_the_body_arrives_in_bounded_chunks_while_the_server_is_still_sending(
    client: FileServer, server: FileServer
) -> None:
    stream = iter_download(client, "/files/model.bin", platform="test", chunk_size=1024)  # type: ignore[arg-type]
    first = next(stream)
    assert first == DATA[:1024]
    assert server.pieces_sent < len(DATA) // 512, "the whole body was read before the first chunk was handed on"
    rest = list(stream)
    assert all(len(chunk) <= 1024 for chunk in rest)
    assert first + b"".join(rest) == DATA
    assert len(server.requests) == 1
    assert server.requests[0].headers["accept-encoding"] == "identity"
    assert "range" not in server.requests[0].headers


def test_a_dropped_connection_resumes_with_range_and_returns_exactly_the_file(
    client: httpx.Client, server: FileServer
) -> None:
    server.drop_after = [3072, 2048]
    assert download(client, chunk_size=1000) == DATA
    # bytes received but not yet handed on as a whole chunk are asked for again, never skipped
    assert [r.headers.get("range") for r in server.requests] == [None, "bytes=3000-", "bytes=5000-"]


def test_a_server_that_ignores_range_on_resume_is_an_error_and_no_byte_is_duplicated(
    client: httpx.Client, server: FileServer
) -> None:
    server.drop_after = [3072]
    server.ignore_range = True
    received = bytearray()
    with pytest.raises(BackupError, match="ignored the Range"):
        for chunk in iter_download(client, "/files/model.bin", platform="test", chunk_size=512):
            received += chunk
    assert bytes(received) == DATA[:3072]


def test_a_resume_answered_from_the_wrong_offset_is_an_error(client: httpx.Client, server: FileServer) -> None:
    server.drop_after = [3072]
    server.range_offset = -512
    with pytest.raises(BackupError, match="Content-Range"):
        download(client, chunk_size=512)


def test_a_connection_that_keeps_dropping_gives_up_after_max_resumes(client: httpx.Client, server: FileServer) -> None:
    server.drop_after = [0, 0, 0, 0, 0]
    with pytest.raises(BackupError, match="after 3 resumes"):
        download(client, max_resumes=3)
    assert len(server.requests) == 4


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (401, AuthError),
        (403, AuthError),
        (404, NotFoundError),
        (429, RateLimitedError),
        (500, PlatformUnavailableError),
    ],
)
def test_error_statuses_map_to_the_exception_tree(
    client: httpx.Client, server: FileServer, status: int, error: type[Exception]
) -> None:
    server.statuses = [(status, {})] * 5
    with pytest.raises(error, match=f"status {status}"):
        download(client, max_resumes=2)
    retried = status in (429, 500)
    assert len(server.requests) == (3 if retried else 1)


def test_5xx_and_429_are_retried_with_backoff_then_the_download_completes(
    client: httpx.Client, server: FileServer
) -> None:
    server.statuses = [(503, {}), (429, {"retry-after": "7"})]
    waits: list[float] = []
    data = b"".join(iter_download(client, "/files/model.bin", platform="test", sleep=waits.append))
    assert data == DATA
    assert waits == [0.5, 7.0]


def test_a_missing_file_is_not_found(client: httpx.Client) -> None:
    with pytest.raises(NotFoundError, match="no such file"):
        download(client, "/files/other.bin")


def test_signed_url_query_never_reaches_errors_or_logs(
    client: httpx.Client, server: FileServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server.drop_after = [100, 100, 100]
    with pytest.raises(BackupError) as info:
        download(client, f"/files/model.bin?X-Amz-Signature={SECRET}", max_resumes=2)
    assert SECRET not in str(info.value)
    assert "/files/model.bin" in str(info.value)
    assert caplog.records, "the resumes were not logged"
    assert SECRET not in caplog.text


def test_export_item_opens_a_fresh_download_each_time(client: httpx.Client, server: FileServer) -> None:
    item = http_export_item(
        client, "weights/model.bin", "/files/model.bin", platform="test", size=len(DATA), sha256="0" * 64
    )
    assert (item.path, item.size, item.sha256) == ("weights/model.bin", len(DATA), "0" * 64)
    first = b"".join(item.open())
    second = b"".join(item.open())
    assert first == second == DATA
    assert hashlib.sha256(first).hexdigest() == hashlib.sha256(DATA).hexdigest()
    assert len(server.requests) == 2


def test_by_default_chunks_pass_through_as_received_and_resume_at_the_exact_byte(
    client: httpx.Client, server: FileServer
) -> None:
    server.drop_after = [3072]
    received = list(iter_download(client, "/files/model.bin", platform="test"))
    assert b"".join(received) == DATA
    assert {len(chunk) for chunk in received} == {512}
    assert [r.headers.get("range") for r in server.requests] == [None, "bytes=3072-"]
