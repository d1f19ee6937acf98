"""The Registry and Catalog contract, kept by every platform adapter and the local default.

Each adapter is built the way a retirement builds it (``get_platform`` from settings), pointed at a
real MLflow server, at the stateful fakes of Selise, Datature Vi, OpenAI, Replicate and Bailo over
real HTTP, or at a temporary local root.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from retirement.errors import DeletionBlockedError, NotFoundError
from retirement.models import CatalogEntry, Dossier, ModelRef
from retirement.platforms import Platform, get_platform
from retirement.platforms.base import Catalog, Registry
from retirement.platforms.local import LocalRegistry
from retirement.platforms.mlflow import MlflowRegistry
from retirement.settings import RetireSettings
from tests.fakes import datature_vi as vi_fake
from tests.fakes import openai_api, replicate_api, selise
from tests.fakes.bailo_api import ACCESS_KEY, SECRET_KEY, BailoApi
from tests.fakes.mlflow_server import mlflow_server
from tests.fakes.openai_api import OpenAIApi
from tests.fakes.replicate_api import ReplicateApi
from tests.fakes.selise import SeliseServer

__all__ = ["mlflow_server"]

PLATFORMS = ["local", "mlflow", "selise", "datature-vi", "openai", "replicate", "bailo"]
MLFLOW_API = "/api/2.0/mlflow"
WEIGHTS = bytes(range(256)) * 64
_serial = itertools.count(1)


def unique(prefix: str) -> str:
    """A name no other test of the session uses (servers are shared)."""
    return f"{prefix}-{next(_serial)}"


# -- servers, one per module ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def selise_server() -> Iterator[SeliseServer]:
    with SeliseServer() as server:
        server.state.add_model("keeper", "gpt-4o-keeper")  # Selise never deletes a project's last model
        yield server


class ViServer:
    """The fake Vi server of tests/fakes/datature_vi.py, shared by a module."""

    def __init__(self) -> None:
        self.vi = vi_fake.FakeVi()
        self._server = vi_fake._Server(self.vi)
        self.vi.base_url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> vi_fake.FakeVi:
        import threading

        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self.vi

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


@pytest.fixture(scope="module")
def vi_server() -> Iterator[vi_fake.FakeVi]:
    with ViServer() as vi:
        yield vi


@pytest.fixture(scope="module")
def openai_server() -> Iterator[OpenAIApi]:
    with OpenAIApi() as server:
        server.add_base_model("gpt-4o-mini-2024-07-18")
        yield server


@pytest.fixture(scope="module")
def replicate_server() -> Iterator[ReplicateApi]:
    with ReplicateApi() as server:
        yield server


@pytest.fixture(scope="module")
def bailo_server() -> Iterator[BailoApi]:
    with BailoApi() as server:
        yield server


# -- environment of each platform's settings -----------------------------------------------------


def use_selise(monkeypatch: pytest.MonkeyPatch, server: SeliseServer) -> None:
    monkeypatch.setenv("RETIRE_SELISE_BASE_URL", server.base_url)
    monkeypatch.setenv("RETIRE_SELISE_PROJECT_KEY", selise.PROJECT_KEY)
    monkeypatch.setenv("RETIRE_SELISE_CLIENT_ID", selise.CLIENT_ID)
    monkeypatch.setenv("RETIRE_SELISE_CLIENT_SECRET", selise.CLIENT_SECRET)


def use_vi(monkeypatch: pytest.MonkeyPatch, vi: vi_fake.FakeVi, production: str | None = None) -> None:
    monkeypatch.setenv("DATATURE_VI_SECRET_KEY", vi_fake.KEY)
    monkeypatch.setenv("DATATURE_VI_ORGANIZATION_ID", vi_fake.ORG)
    monkeypatch.setenv("RETIRE_DATATURE_VI_BASE_URL", vi.base_url)
    if production:
        monkeypatch.setenv("RETIRE_DATATURE_VI_PRODUCTION_DEPLOYMENT", production)


def use_openai(monkeypatch: pytest.MonkeyPatch, server: OpenAIApi) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", openai_api.API_KEY)
    monkeypatch.setenv("OPENAI_ADMIN_KEY", openai_api.ADMIN_KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", f"{server.base_url}/v1")
    monkeypatch.delenv("OPENAI_ORG_ID", raising=False)


def use_replicate(monkeypatch: pytest.MonkeyPatch, server: ReplicateApi) -> None:
    monkeypatch.setenv("REPLICATE_API_TOKEN", replicate_api.TOKEN)
    monkeypatch.setenv("RETIRE_REPLICATE_BASE_URL", f"{server.base_url}/v1")


def use_bailo(monkeypatch: pytest.MonkeyPatch, server: BailoApi) -> None:
    monkeypatch.setenv("RETIRE_BAILO_URL", server.base_url)
    monkeypatch.setenv("RETIRE_BAILO_ACCESS_KEY", ACCESS_KEY)
    monkeypatch.setenv("RETIRE_BAILO_SECRET_KEY", SECRET_KEY)


def use_mlflow(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)


def mlflow_model(url: str, model: str, versions: int = 2, production: str | None = None) -> None:
    """A registered model with ``versions`` versions whose artifacts are uploaded through the server's proxy."""
    with httpx.Client(base_url=url, timeout=30) as http:

        def ok(response: httpx.Response) -> dict[str, object]:
            assert response.is_success, response.text
            return response.json() if response.content else {}

        exp = ok(http.post(f"{MLFLOW_API}/experiments/create", json={"name": model}))["experiment_id"]
        ok(http.post(f"{MLFLOW_API}/registered-models/create", json={"name": model}))
        for n in range(1, versions + 1):
            info = ok(http.post(f"{MLFLOW_API}/runs/create", json={"experiment_id": exp}))["run"]["info"]  # type: ignore[index]
            uri = str(info["artifact_uri"])
            root = uri.removeprefix("mlflow-artifacts:/").strip("/")
            for rel, data in {"model/MLmodel": b"flavors: {}\n", "model/weights.bin": WEIGHTS + bytes([n])}.items():
                ok(http.put(f"/api/2.0/mlflow-artifacts/artifacts/{root}/{rel}", content=data))
            body = {"name": model, "source": f"{uri}/model", "run_id": info["run_id"]}
            ok(http.post(f"{MLFLOW_API}/model-versions/create", json=body))
        if production:
            alias = {"name": model, "alias": "production", "version": production}
            ok(http.post(f"{MLFLOW_API}/registered-models/alias", json=alias))


def local_model(registry: LocalRegistry, model: str, production: str | None = None) -> None:
    """A local model with versions 1 and 2."""
    registry.create_model(model)
    for n in (1, 2):
        registry.add_version(model, {"weights.bin": WEIGHTS + bytes([n]), "config.json": b'{"layers": 2}'})
    if production:
        registry.set_alias(model, "production", production)


# -- one case per platform -----------------------------------------------------------------------


@dataclass
class Case:
    """One adapter with a deletable ref, a missing one, a blocked one, and a way to count DELETEs sent."""

    registry: Registry
    existing: ModelRef
    missing: ModelRef
    blocked: ModelRef
    deletes: Callable[[], int]
    listed: ModelRef
    """A ref the catalogue lists (``existing``, except where the platform lists only some models)."""


def _built(platform: str) -> Platform:
    return get_platform(platform, RetireSettings())


def _case(platform: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp: Path) -> Case:
    if platform == "local":
        registry = LocalRegistry(tmp / "local")  # files read from disk: no gateway in these tests
        local_model(registry, "churn", production="2")
        ref = ModelRef(platform="local", name="churn", version="1")
        missing = ModelRef(platform="local", name="churn", version="9")
        blocked = ref.model_copy(update={"version": "2"})
        return Case(registry, ref, missing, blocked, lambda: 0, ref)
    if platform == "mlflow":
        url = request.getfixturevalue("mlflow_server")
        model = unique("contract")
        mlflow_model(url, model, production="2")
        sent: list[str] = []
        client = httpx.Client(base_url=url, timeout=30, event_hooks={"request": [lambda r: sent.append(r.method)]})
        request.addfinalizer(client.close)
        ref = ModelRef(platform="mlflow", name=model, version="1")
        missing = ModelRef(platform="mlflow", name=unique("nowhere"), version="1")
        blocked = ref.model_copy(update={"version": "2"})
        return Case(MlflowRegistry(client), ref, missing, blocked, lambda: sent.count("DELETE"), ref)
    if platform == "selise":
        server: SeliseServer = request.getfixturevalue("selise_server")
        use_selise(monkeypatch, server)
        old, used = unique("m"), unique("m")
        server.state.add_model(old, "gpt-4")
        server.state.add_model(used, "gpt-4o")
        server.state.add_agent(unique("agent"), "Support", used)
        return Case(
            _built("selise").registry,
            ModelRef(platform="selise", name=old),
            ModelRef(platform="selise", name=unique("missing")),
            ModelRef(platform="selise", name=used),
            lambda: len(server.state.calls_of("DELETE")),
            ModelRef(platform="selise", name=old),
        )
    if platform == "datature-vi":
        vi: vi_fake.FakeVi = request.getfixturevalue("vi_server")
        use_vi(monkeypatch, vi)
        run, deployed = unique("run"), unique("run")
        vi.add_run(run, {"c1": WEIGHTS, "c2": b"second" * 1000})
        vi.add_run(deployed, {"c1": b"deployed"})
        vi.add_deployment(unique("dep"), deployed, "c1")
        ref = ModelRef(platform="datature-vi", name=run, version="c1")
        return Case(
            _built("datature-vi").registry,
            ref,
            ModelRef(platform="datature-vi", name=unique("run"), version="c1"),
            ModelRef(platform="datature-vi", name=deployed, version="c1"),
            lambda: sum(1 for method, _ in vi.requests if method == "DELETE"),
            ref,
        )
    if platform == "openai":
        api: OpenAIApi = request.getfixturevalue("openai_server")
        use_openai(monkeypatch, api)
        mid, _ = api.add_fine_tune("gpt-4o-mini-2024-07-18", unique("churn"))
        ref = ModelRef(platform="openai", name=mid)
        return Case(
            _built("openai").registry,
            ref,
            ModelRef(platform="openai", name=f"ft:gpt-4o-mini-2024-07-18:acme:{unique('gone')}:0000"),
            ModelRef(platform="openai", name="gpt-4o-mini-2024-07-18"),  # a base model
            lambda: len(api.calls_of("DELETE")),
            ref,
        )
    if platform == "replicate":
        rep: ReplicateApi = request.getfixturevalue("replicate_server")
        use_replicate(monkeypatch, rep)
        slug, public = f"acme/{unique('churn')}", f"acme/{unique('public')}"
        rep.add_model(slug)
        old, new = rep.add_version(slug), rep.add_version(slug)
        rep.add_deployment(f"acme/{unique('prod')}", slug, new)
        rep.add_model(public, visibility="public")
        listed = rep.add_version(public)
        return Case(
            _built("replicate").registry,
            ModelRef(platform="replicate", name=slug, version=old),
            ModelRef(platform="replicate", name=slug, version="f" * 64),
            ModelRef(platform="replicate", name=slug, version=new),
            lambda: len(rep.calls_of("DELETE")),
            # GET /models lists public models only: a private model is never in Replicate's catalogue.
            ModelRef(platform="replicate", name=public, version=listed),
        )
    assert platform == "bailo"
    bailo: BailoApi = request.getfixturevalue("bailo_server")
    use_bailo(monkeypatch, bailo)
    mine, theirs = unique("churn"), unique("shared")
    bailo.add_model(mine, {"weights.bin": WEIGHTS, "config.json": b'{"layers": 2}'})
    bailo.add_model(theirs, {"weights.bin": b"w"}, roles=("contributor",))
    ref = ModelRef(platform="bailo", name=mine)
    return Case(
        _built("bailo").registry,
        ref,
        ModelRef(platform="bailo", name=unique("missing")),
        ModelRef(platform="bailo", name=theirs),
        lambda: len(bailo.calls_of("DELETE")),
        ref,
    )


@pytest.fixture(params=PLATFORMS)
def case(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Case]:
    built = _case(request.param, request, monkeypatch, tmp_path)
    yield built
    closer = getattr(built.registry, "close", None)
    if callable(closer):
        closer()


# -- the contract ----------------------------------------------------------------------------------


def test_adapter_is_a_registry_and_a_catalog(case: Case) -> None:
    assert isinstance(case.registry, Registry)
    assert isinstance(case.registry, Catalog)
    assert case.existing.platform == case.registry.name


def test_describe_returns_the_dossier_of_that_reference(case: Case) -> None:
    dossier = case.registry.describe(case.existing)
    assert isinstance(dossier, Dossier)
    assert dossier.reference == case.existing


def test_a_missing_reference_is_not_found_and_nothing_is_deleted(case: Case) -> None:
    assert case.registry.exists(case.missing) is False
    with pytest.raises(NotFoundError):
        case.registry.describe(case.missing)
    with pytest.raises(NotFoundError):
        case.registry.delete(case.missing)
    assert case.registry.exists(case.existing)


def test_delete_makes_it_gone_and_a_second_delete_is_not_found(case: Case) -> None:
    assert case.registry.exists(case.existing) is True
    receipt = case.registry.delete(case.existing)
    assert receipt.reference == case.existing
    assert receipt.verified_gone is True
    assert case.registry.exists(case.existing) is False
    with pytest.raises(NotFoundError):
        case.registry.describe(case.existing)
    with pytest.raises(NotFoundError):
        case.registry.delete(case.existing)


def test_a_blocked_delete_is_refused_before_any_delete_is_sent(case: Case) -> None:
    before = case.deletes()
    assert case.registry.deletion_blockers(case.blocked), "the platform rule should show as a blocker"
    with pytest.raises(DeletionBlockedError):
        case.registry.delete(case.blocked)
    assert case.deletes() == before
    assert case.registry.exists(case.blocked)


def test_export_streams_exactly_what_each_item_declares(case: Case) -> None:
    items = case.registry.export(case.existing)
    assert items, "a backup needs at least one file"
    assert len({i.path for i in items}) == len(items), "two items would overwrite each other in the backup"
    assert any(i.size is not None or i.sha256 is not None for i in items), "nothing declared: nothing to verify"
    for item in items:
        digest, size = hashlib.sha256(), 0
        for chunk in item.open():
            digest.update(chunk)
            size += len(chunk)
        if item.size is not None:
            assert size == item.size, item.path
        if item.sha256 is not None:
            assert digest.hexdigest() == item.sha256, item.path
        assert b"".join(item.open()) == b"".join(item.open()), f"{item.path}: reopening gives other bytes"


def test_capabilities_say_what_a_backup_loses(case: Case) -> None:
    caps = case.registry.capabilities
    assert caps.exports, "the plan must say what the backup captures"
    if not caps.weights_exportable:
        assert caps.not_exportable, "weights cannot be exported, and the plan must say so"


def test_catalog_lists_catalog_entries_including_the_seeded_reference(case: Case) -> None:
    entries = list(case.registry.list_versions())  # type: ignore[attr-defined]
    assert all(isinstance(e, CatalogEntry) for e in entries)
    assert all(e.reference.platform == case.registry.name for e in entries)
    assert case.listed in [e.reference for e in entries]
