"""Every Bailo call of the adapter, sent to Prism serving gchq/Bailo's own OpenAPI v2 spec, is accepted."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from retirement.models import ModelRef
from retirement.platforms.bailo import BailoRegistry
from tests.fakes.prism import (
    PrismServer,
    RecordingHook,
    assert_no_violations,
    prism_fixture,
    spec_path,
    violations,
)

pytestmark = pytest.mark.prism

SPEC = "bailo-openapi-v2.json"
prism_bailo = prism_fixture(SPEC)

# Bailo registers its inferencing routes only where an instance enables inferencing; the
# published spec was generated without them, so Prism cannot judge that one call.
NOT_IN_SPEC = "/api/v2/model/{modelId}/inferences"


class StreamingHook(RecordingHook):
    """Records every response but leaves file downloads unread, so the adapter can still stream them."""

    def __call__(self, response: httpx.Response) -> None:
        if not response.request.url.path.endswith("/download"):
            response.read()
        self.responses.append(response)


@pytest.fixture
def recorded(prism_bailo: PrismServer) -> Iterator[tuple[BailoRegistry, RecordingHook]]:
    hook = StreamingHook()
    client = httpx.Client(
        base_url=f"{prism_bailo.base_url}/api/v2", auth=("access", "secret"), event_hooks={"response": [hook]}
    )
    registry = BailoRegistry(client, sleep=lambda _: None)
    try:
        yield registry, hook
    finally:
        client.close()


def _assert_request_accepted(response: httpx.Response) -> None:
    """No violation of the request; Prism's own mocked download answer lacks the Content-Length it declares."""
    assert response.status_code < 400, f"{response.request.url.path}: HTTP {response.status_code}"
    found = json.loads(violations(response) or "[]")
    unexpected = [
        v for v in found if v.get("location") != ["response", "header"] or "content-length" not in v.get("message", "")
    ]
    assert not unexpected, f"{response.request.url.path}: Prism reported spec violations: {unexpected}"


def _check(hook: RecordingHook) -> list[str]:
    """Every response is clean, except the inferencing call the spec does not declare; returns the calls."""
    spec_paths = json.loads(spec_path(SPEC).read_text())["paths"]
    assert NOT_IN_SPEC not in spec_paths, "the spec now declares inferencing: drop the exception below"
    checked = 0
    for response in hook.responses:
        if response.request.url.path.endswith("/inferences"):
            assert response.status_code == 404  # Prism: no such path in the spec
            continue
        if response.request.url.path.endswith("/download"):
            _assert_request_accepted(response)
        else:
            assert_no_violations(response)
        checked += 1
    assert checked > 0
    return hook.calls()


def test_describe_and_blockers_are_valid_requests(recorded: tuple[BailoRegistry, RecordingHook]) -> None:
    registry, hook = recorded
    ref = ModelRef(platform="bailo", name="yolo-v4-abcdef")
    dossier = registry.describe(ref)
    registry.dependents(ref)
    registry.deletion_blockers(ref)
    assert registry.exists(ref) is True
    calls = _check(hook)
    for path in ("", "/releases", "/files", "/access-requests", "/webhooks", "/images"):
        assert f"GET /api/v2/model/yolo-v4-abcdef{path}" in calls
    assert "GET /api/v2/entities/me" in calls
    assert dossier.versions, "the spec's example release is listed as a version"


def test_export_requests_are_valid(recorded: tuple[BailoRegistry, RecordingHook]) -> None:
    registry, hook = recorded
    items = registry.export(ModelRef(platform="bailo", name="yolo-v4-abcdef"))
    downloads = [item for item in items if item.path.startswith("files/")]
    assert downloads, "the spec's example file is exported"
    for item in items:
        b"".join(item.open())
    calls = _check(hook)
    assert any(call.endswith("/download") for call in calls)
    assert "GET /api/v2/model/yolo-v4-abcdef/model-card-revisions" in calls


def test_delete_and_catalog_requests_are_valid(
    recorded: tuple[BailoRegistry, RecordingHook], monkeypatch: pytest.MonkeyPatch
) -> None:
    registry, hook = recorded
    # Prism's static examples include an open access request; the request shapes are what is checked here.
    monkeypatch.setattr(registry, "deletion_blockers", lambda ref: [])
    receipt = registry.delete(ModelRef(platform="bailo", name="yolo-v4-abcdef"))
    assert receipt.platform_response.get("message")
    entries = list(registry.list_versions())
    assert entries
    calls = _check(hook)
    assert "DELETE /api/v2/model/yolo-v4-abcdef" in calls
    assert "GET /api/v2/models/search" in calls
