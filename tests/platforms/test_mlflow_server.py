"""The MLflow adapter against a real `mlflow server`: alias blocker, cutover, exact artifact bytes, delete."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from retirement.errors import DeletionBlockedError, NotFoundError
from retirement.models import ModelRef
from retirement.platforms import get_platform
from retirement.platforms.mlflow import MlflowRegistry, MlflowServing
from retirement.settings import RetireSettings
from tests.fakes.mlflow_server import mlflow_server

pytestmark = pytest.mark.mlflow
__all__ = ["mlflow_server"]

API = "/api/2.0/mlflow"

FILES_V1 = {"model/MLmodel": b"flavors: {}\n", "model/weights.bin": bytes(range(256)) * 40, "model/sub/cfg.json": b"{}"}
FILES_V2 = {"model/MLmodel": b"flavors: {v: 2}\n", "model/weights.bin": b"\x00\x01v2" * 1000}


def _ok(response: httpx.Response) -> dict[str, object]:
    assert response.is_success, response.text
    return response.json() if response.content else {}  # type: ignore[no-any-return]


def _logged_version(http: httpx.Client, experiment_id: str, model: str, files: dict[str, bytes]) -> str:
    """A run whose artifacts are ``files`` (uploaded through the proxy) registered as a new version of ``model``."""
    run = _ok(http.post(f"{API}/runs/create", json={"experiment_id": experiment_id}))["run"]
    info = run["info"]  # type: ignore[index]
    artifact_uri = str(info["artifact_uri"])
    root = artifact_uri.removeprefix("mlflow-artifacts:/").strip("/")
    for rel, data in files.items():
        _ok(http.put(f"/api/2.0/mlflow-artifacts/artifacts/{root}/{rel}", content=data))
    body = {"name": model, "source": f"{artifact_uri}/model", "run_id": info["run_id"]}
    version = _ok(http.post(f"{API}/model-versions/create", json=body))["model_version"]
    return str(version["version"])  # type: ignore[index]


@pytest.fixture
def seeded(mlflow_server: str, request: pytest.FixtureRequest) -> Iterator[tuple[httpx.Client, str]]:
    """A registered model (named after the test) with versions 1 and 2; alias production on version 1."""
    model = f"churn-{request.node.name.replace('_', '-')}"
    with httpx.Client(base_url=mlflow_server, timeout=30) as http:
        exp = _ok(http.post(f"{API}/experiments/create", json={"name": model}))["experiment_id"]
        _ok(http.post(f"{API}/registered-models/create", json={"name": model}))
        assert _logged_version(http, str(exp), model, FILES_V1) == "1"
        assert _logged_version(http, str(exp), model, FILES_V2) == "2"
        _ok(http.post(f"{API}/registered-models/alias", json={"name": model, "alias": "production", "version": "1"}))
        yield http, model


def _ref(model: str, version: str | None = None) -> ModelRef:
    return ModelRef(platform="mlflow", name=model, version=version)


def test_retirement_of_a_version_on_a_real_server(
    seeded: tuple[httpx.Client, str], mlflow_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    http, model = seeded
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    platform = get_platform("mlflow", RetireSettings())
    try:
        registry, serving = platform.registry, platform.serving
        assert isinstance(registry, MlflowRegistry)
        assert isinstance(serving, MlflowServing)
        old, new = _ref(model, "1"), _ref(model, "2")

        # The production alias blocks the delete, and nothing is deleted.
        assert [b.code for b in registry.deletion_blockers(old)] == ["alias"]
        with pytest.raises(DeletionBlockedError, match="alias 'production'"):
            registry.delete(old)
        assert registry.exists(old)

        # Staging, then the cutover moves the alias and reports what it replaced.
        serving.deploy_staging(new)
        assert (
            _ok(http.get(f"{API}/registered-models/alias", params={"name": model, "alias": "staging"}))[
                "model_version"
            ]["version"]
            == "2"
        )  # type: ignore[index]
        smoke = serving.smoke_test(new)
        assert smoke.ok, smoke.detail
        assert "serves no traffic" in smoke.detail
        assert serving.switch(new) == old
        assert serving.production(_ref(model)) == new
        assert serving.switch(new) == new  # idempotent
        assert registry.deletion_blockers(old) == []

        # The soft step is a tag on the version, and it can be undone.
        registry.set_active(old, False)
        assert not next(v for v in registry.describe(old).versions if v.version == "1").active
        registry.set_active(old, True)
        assert next(v for v in registry.describe(old).versions if v.version == "1").active

        # The export streams exactly the bytes that were logged.
        items = {item.path: item for item in registry.export(old)}
        artifacts = {p: i for p, i in items.items() if p.startswith("artifacts/")}
        assert sorted(artifacts) == sorted(f"artifacts/{rel.removeprefix('model/')}" for rel in FILES_V1)
        for rel, data in FILES_V1.items():
            item = artifacts[f"artifacts/{rel.removeprefix('model/')}"]
            got = hashlib.sha256()
            for chunk in item.open():
                got.update(chunk)
            assert got.hexdigest() == hashlib.sha256(data).hexdigest()
            assert item.size == len(data)
        assert "metadata/model_version.json" in items

        # Deleting the whole model is refused while version 2 exists.
        with pytest.raises(DeletionBlockedError, match="still has versions 1, 2"):
            registry.delete(_ref(model))

        receipt = registry.delete(old)
        assert receipt.verified_gone
        gone = http.get(f"{API}/model-versions/get", params={"name": model, "version": "1"})
        assert gone.status_code == 404
        assert gone.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
        assert not registry.exists(old)
        assert registry.exists(new)
        with pytest.raises(NotFoundError, match="RESOURCE_DOES_NOT_EXIST"):
            registry.delete(old)
        listed = [e.reference for e in registry.list_versions() if e.reference.name == model]
        assert listed == [new]
    finally:
        platform.close()


def test_missing_binary_fails_and_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.fakes.mlflow_server import mlflow_binary

    monkeypatch.setenv("RETIRE_TEST_MLFLOW", str(tmp_path / "no-mlflow"))
    with pytest.raises(pytest.fail.Exception, match=r"run \./scripts/test"):
        mlflow_binary()
