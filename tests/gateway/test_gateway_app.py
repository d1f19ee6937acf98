"""The gateway served by uvicorn in a thread: routing, 410/404, request log, /metrics, Range downloads."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from retirement.gateway.app import create_app
from retirement.gateway.requestlog import RequestLog
from retirement.gateway.server import serve_in_thread
from retirement.models import ModelRef
from retirement.platforms.local import LocalRegistry

PREDICT = "/v1/models/churn-model@{}/predict"


@pytest.fixture
def registry(tmp_path: Path) -> LocalRegistry:
    reg = LocalRegistry(tmp_path / "local")
    reg.seed_demo(total_bytes=64 * 1024)
    return reg


@pytest.fixture
def log(registry: LocalRegistry) -> RequestLog:
    return RequestLog(registry.root)


@pytest.fixture
def client(registry: LocalRegistry, log: RequestLog) -> Iterator[httpx.Client]:
    with serve_in_thread(create_app(registry, log)) as url, httpx.Client(base_url=url) as http:
        yield http


def predict(client: httpx.Client, target: str, inputs: object = None) -> tuple[int, dict]:
    response = client.post(PREDICT.format(target), json={"inputs": inputs or {"tenure_days": 3}})
    return response.status_code, response.json()


def samples(client: httpx.Client, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    result = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name:
                result[tuple(sorted(sample.labels.items()))] = sample.value
    return result


def test_predict_resolves_the_alias_and_is_deterministic_per_version(client: httpx.Client) -> None:
    status, body = predict(client, "production", {"tenure_days": 3})
    assert status == 200
    assert (body["model"], body["version"]) == ("churn-model", "1")
    assert predict(client, "production", {"tenure_days": 3})[1] == body
    assert predict(client, "2", {"tenure_days": 3})[1]["outputs"] != body["outputs"]
    _, batch = predict(client, "1", [{"a": 1}, {"a": 2}])
    assert len(batch["outputs"]) == 2


def test_every_predict_is_logged_and_counted_in_metrics(client: httpx.Client, log: RequestLog) -> None:
    for _ in range(3):
        assert predict(client, "production")[0] == 200
    assert predict(client, "canary")[0] == 404
    assert log.flush()
    records = log.recent(10)
    assert [(r.requested, r.version, r.status) for r in records] == [("production", "1", 200)] * 3 + [
        ("canary", None, 404)
    ]
    assert all(r.latency_ms >= 0 for r in records)
    requests = samples(client, "retire_gateway_requests_total")
    assert requests[(("model", "churn-model"), ("status", "200"), ("version", "1"))] == 3
    errors = samples(client, "retire_gateway_request_errors_total")
    assert errors[(("model", "churn-model"), ("version", ""))] == 1
    count = samples(client, "retire_gateway_request_duration_seconds_count")
    assert count[(("model", "churn-model"), ("version", "1"))] == 3


def test_a_deactivated_version_answers_410_and_counts_as_an_error(
    client: httpx.Client, registry: LocalRegistry, log: RequestLog
) -> None:
    registry.set_active(ModelRef.parse("churn-model@1"), False)
    status, body = predict(client, "production")
    assert status == 410
    assert "deactivated" in body["error"]["message"]
    assert samples(client, "retire_gateway_request_errors_total")[(("model", "churn-model"), ("version", "1"))] == 1
    registry.set_active(ModelRef.parse("churn-model@1"), True)
    assert predict(client, "production")[0] == 200


def test_a_deleted_version_answers_404_and_requests_still_naming_it_are_logged_under_it(
    client: httpx.Client, registry: LocalRegistry, log: RequestLog
) -> None:
    registry.delete(ModelRef.parse("churn-model@2"))
    status, body = predict(client, "2")
    assert status == 404
    assert "was deleted" in body["error"]["message"]
    assert client.get("/v1/models/churn-model/versions/2/files").status_code == 404
    assert client.get("/v1/models/churn-model/versions/2/files/weights.bin").status_code == 404
    assert log.flush()
    assert [(r.version, r.status) for r in log.recent(5)] == [("2", 404)]


def test_moving_the_production_alias_sends_requests_to_the_new_version(
    client: httpx.Client, registry: LocalRegistry
) -> None:
    assert predict(client, "production")[1]["version"] == "1"
    registry.set_alias("churn-model", "production", "2")
    assert predict(client, "production")[1]["version"] == "2"


def test_bad_predict_requests_get_a_clear_400(client: httpx.Client) -> None:
    response = client.post("/v1/models/churn-model/predict", json={"inputs": 1})
    assert response.status_code == 400
    assert "name@alias_or_version" in response.json()["error"]["message"]
    response = client.post(PREDICT.format("production"), json={"features": 1})
    assert (response.status_code, response.json()["error"]["field"]) == (400, "inputs")
    response = client.post(PREDICT.format("production"), content=b"not json")
    assert (response.status_code, response.json()["error"]["field"]) == (400, "body")
    response = client.post("/v1/models/Bad..Name@production/predict", json={"inputs": 1})
    assert response.status_code == 400


def test_file_listing_and_range_downloads_return_the_exact_bytes(client: httpx.Client, registry: LocalRegistry) -> None:
    v1 = ModelRef.parse("churn-model@1")
    listing = client.get("/v1/models/churn-model/versions/1/files").json()
    assert listing == [r.model_dump() for r in registry.file_records(v1)]
    data = registry.file_path(v1, "weights.bin").read_bytes()
    url = "/v1/models/churn-model/versions/1/files/weights.bin"
    full = client.get(url)
    assert (full.status_code, full.content) == (200, data)
    part = client.get(url, headers={"Range": "bytes=1000-4999"})
    assert (part.status_code, part.content) == (206, data[1000:5000])
    assert part.headers["content-range"] == f"bytes 1000-4999/{len(data)}"
    tail = client.get(url, headers={"Range": f"bytes={len(data) - 10}-"})
    assert tail.content == data[-10:]
    assert client.get(url, headers={"Range": f"bytes={len(data) + 5}-"}).status_code == 416


def test_a_deactivated_version_can_still_be_downloaded_for_its_backup(
    client: httpx.Client, registry: LocalRegistry
) -> None:
    v1 = ModelRef.parse("churn-model@1")
    registry.set_active(v1, False)
    response = client.get("/v1/models/churn-model/versions/1/files/config.json")
    assert response.content == registry.file_path(v1, "config.json").read_bytes()


@pytest.mark.parametrize("path", ["..%2F..%2Fcatalog.db", "../../catalog.db", "%2e%2e/%2e%2e/catalog.db", "nope.bin"])
def test_file_downloads_never_leave_the_version_folder(
    client: httpx.Client, registry: LocalRegistry, path: str
) -> None:
    response = client.get(f"/v1/models/churn-model/versions/1/files/{path}")
    assert response.status_code in (400, 404)
    assert b"SQLite" not in response.content


def test_healthz_names_the_root(client: httpx.Client, registry: LocalRegistry) -> None:
    assert client.get("/healthz").json()["root"] == str(registry.root)
