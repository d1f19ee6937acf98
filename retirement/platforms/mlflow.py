"""MLflow model registry adapter, over MLflow's REST API only (no mlflow package at runtime).

A reference is ``model_name@version``. Aliases are the serving targets (``production`` and
``staging``, names configurable); MLflow serves no traffic itself, so there is no traffic source.
Artifacts are listed and streamed through the server's ``mlflow-artifacts`` proxy
(``mlflow server`` serves it by default), so the server must be started with artifact serving on.
"""

from __future__ import annotations

import json
import posixpath
import time
from collections.abc import Callable, Generator, Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from retirement.backup.stream import http_export_item
from retirement.errors import ConfigError, ConflictError, DeletionBlockedError, InputError, NotFoundError
from retirement.models import (
    Capabilities,
    CatalogEntry,
    DeletionBlocker,
    DeletionReceipt,
    Dependent,
    Dossier,
    ExportItem,
    ModelRef,
    RetirementRequest,
    SmokeResult,
    VersionInfo,
)
from retirement.platforms.base import Platform, same_model_refusals
from retirement.platforms.http import paginate, send
from retirement.redact import redact, remember
from retirement.settings import RetireSettings

PLATFORM = "mlflow"
API = "/api/2.0/mlflow"
ARTIFACTS_API = "/api/2.0/mlflow-artifacts/artifacts"
STATUS_TAG = "retirement.status"
DEPRECATED = "deprecated"
PAGE_SIZE = 1000

Sleep = Callable[[float], None]


class MlflowSettings(BaseSettings):
    """Where the MLflow tracking server is and how to authenticate to it (MLflow's own env vars)."""

    model_config = SettingsConfigDict(extra="ignore")

    tracking_uri: str | None = Field(
        default=None,
        validation_alias="MLFLOW_TRACKING_URI",
        description="The MLflow tracking server, e.g. 'http://mlflow.internal:5000' (MLFLOW_TRACKING_URI).",
    )
    base_url: str | None = Field(
        default=None,
        validation_alias="RETIRE_MLFLOW_BASE_URL",
        description="Overrides MLFLOW_TRACKING_URI for this tool only (RETIRE_MLFLOW_BASE_URL).",
    )
    token: SecretStr | None = Field(
        default=None,
        validation_alias="MLFLOW_TRACKING_TOKEN",
        description="Bearer token sent as 'Authorization: Bearer ...' (MLFLOW_TRACKING_TOKEN).",
    )
    username: str | None = Field(
        default=None,
        validation_alias="MLFLOW_TRACKING_USERNAME",
        description="HTTP Basic user name (MLFLOW_TRACKING_USERNAME), used with the password.",
    )
    password: SecretStr | None = Field(
        default=None,
        validation_alias="MLFLOW_TRACKING_PASSWORD",
        description="HTTP Basic password (MLFLOW_TRACKING_PASSWORD).",
    )
    production_alias: str = Field(
        default="production",
        validation_alias="RETIRE_MLFLOW_PRODUCTION_ALIAS",
        description="The alias that names the production version (RETIRE_MLFLOW_PRODUCTION_ALIAS).",
    )
    staging_alias: str = Field(
        default="staging",
        validation_alias="RETIRE_MLFLOW_STAGING_ALIAS",
        description="The alias that names the staging version (RETIRE_MLFLOW_STAGING_ALIAS).",
    )
    timeout: float = Field(
        default=60.0,
        gt=0,
        validation_alias="RETIRE_MLFLOW_TIMEOUT",
        description="Seconds before an HTTP call to MLflow gives up (RETIRE_MLFLOW_TIMEOUT).",
    )

    def url(self) -> str:
        """The server's base URL.

        Raises:
            ConfigError: neither variable is set, or the URI is not http(s) (a local ./mlruns
                folder or a database URI has no REST API to talk to).
        """
        url = self.base_url or self.tracking_uri
        if not url:
            raise ConfigError("MLFLOW_TRACKING_URI is not set (allowed: the http(s) URL of an MLflow server)")
        if urlsplit(url).scheme not in ("http", "https"):
            raise ConfigError(
                f"MLFLOW_TRACKING_URI has scheme {urlsplit(url).scheme or 'none'!r} "
                "(allowed: http or https, the URL of an MLflow tracking server)"
            )
        return url.rstrip("/")

    def auth(self) -> httpx.Auth | None:
        """Bearer token when set, else HTTP Basic when a user name is set, else none."""
        if self.token is not None:
            return _BearerAuth(self.token)
        if self.username:
            password = self.password.get_secret_value() if self.password else ""
            remember(password)
            return httpx.BasicAuth(self.username, password)
        return None


class _BearerAuth(httpx.Auth):
    """Adds the bearer token to every request, keeping the token out of the client's repr."""

    def __init__(self, token: SecretStr) -> None:
        remember(token)
        self._token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._token.get_secret_value()}"
        yield request


def mlflow_message(body: Any) -> str | None:
    """MLflow's error shape: ``{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "..."}``."""
    if isinstance(body, dict) and (body.get("message") or body.get("error_code")):
        code, message = body.get("error_code"), body.get("message")
        return f"{code}: {message}" if code and message else str(code or message)
    if isinstance(body, str) and body.strip():
        return body.strip()[:500]
    return None


def _ms(value: Any) -> datetime | None:
    """A datetime from MLflow's epoch-milliseconds timestamps."""
    try:
        return datetime.fromtimestamp(int(value) / 1000, UTC)
    except (TypeError, ValueError):
        return None


def _tags(obj: dict[str, Any]) -> dict[str, str]:
    return {str(t.get("key")): str(t.get("value", "")) for t in obj.get("tags") or [] if isinstance(t, dict)}


class _MlflowApi:
    """The REST calls both adapters make, on one injected client."""

    def __init__(self, client: httpx.Client, sleep: Sleep) -> None:
        self.client = client
        self._sleep = sleep

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = send(
            self.client, method, path, platform=PLATFORM, extract=mlflow_message, sleep=self._sleep, **kwargs
        )
        return response.json() if response.content else {}

    def model(self, name: str) -> dict[str, Any]:
        body = self.call("GET", f"{API}/registered-models/get", params={"name": name})
        return dict(body.get("registered_model") or {})

    def version(self, name: str, version: str) -> dict[str, Any]:
        body = self.call("GET", f"{API}/model-versions/get", params={"name": name, "version": version})
        return dict(body.get("model_version") or {})

    def search_versions(self, filter_: str | None = None) -> Iterator[dict[str, Any]]:
        def fetch(token: str | None) -> tuple[list[Any], str | None]:
            params: dict[str, Any] = {"max_results": PAGE_SIZE}
            if filter_:
                params["filter"] = filter_
            if token:
                params["page_token"] = token
            body = self.call("GET", f"{API}/model-versions/search", params=params)
            return list(body.get("model_versions") or []), body.get("next_page_token") or None

        yield from paginate(fetch)

    def versions_of(self, name: str) -> list[dict[str, Any]]:
        escaped = name.replace("'", "\\'")
        return list(self.search_versions(f"name='{escaped}'"))

    def search_models(self) -> Iterator[dict[str, Any]]:
        def fetch(token: str | None) -> tuple[list[Any], str | None]:
            params: dict[str, Any] = {"max_results": PAGE_SIZE}
            if token:
                params["page_token"] = token
            body = self.call("GET", f"{API}/registered-models/search", params=params)
            return list(body.get("registered_models") or []), body.get("next_page_token") or None

        yield from paginate(fetch)

    def alias_version(self, name: str, alias: str) -> str | None:
        try:
            body = self.call("GET", f"{API}/registered-models/alias", params={"name": name, "alias": alias})
        except NotFoundError:
            return None
        except InputError as exc:
            # A real server answers an unset alias with 400 INVALID_PARAMETER_VALUE "... alias ... not found."
            if "not found" in str(exc):
                return None
            raise
        version = (body.get("model_version") or {}).get("version")
        return None if version is None else str(version)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.call("POST", f"{API}/registered-models/alias", json={"name": name, "alias": alias, "version": version})

    def artifact_root(self, name: str, version: str) -> str:
        """The version's artifact folder as a path under the mlflow-artifacts proxy."""
        body = self.call("GET", f"{API}/model-versions/get-download-uri", params={"name": name, "version": version})
        uri = str(body.get("artifact_uri") or "")
        if uri.startswith("runs:/"):
            run_id, _, rest = uri[len("runs:/") :].partition("/")
            run = self.call("GET", f"{API}/runs/get", params={"run_id": run_id})
            uri = posixpath.join(str(run["run"]["info"]["artifact_uri"]), rest)
        parts = urlsplit(uri)
        if parts.scheme == "mlflow-artifacts":
            return parts.path.strip("/")
        if parts.scheme in ("http", "https") and ARTIFACTS_API in parts.path:
            return parts.path.split(ARTIFACTS_API, 1)[1].strip("/")
        raise ConflictError(
            f"mlflow: {name}@{version} stores its artifacts at a {parts.scheme or 'local'!r} location that "
            "the server does not proxy (allowed: mlflow-artifacts:/ locations, i.e. a server started with "
            "artifact serving, the default of `mlflow server`)"
        )

    def list_files(self, root: str) -> list[tuple[str, int | None]]:
        """Every file under ``root`` (relative path, size), depth first."""
        files: list[tuple[str, int | None]] = []
        pending = [""]
        while pending:
            sub = pending.pop()
            path = posixpath.join(root, sub) if sub else root
            body = self.call("GET", ARTIFACTS_API, params={"path": path})
            for entry in body.get("files") or []:
                rel = posixpath.join(sub, posixpath.basename(str(entry["path"]).rstrip("/")))
                if entry.get("is_dir"):
                    pending.append(rel)
                else:
                    size = entry.get("file_size")
                    files.append((rel, None if size is None else int(size)))
        return sorted(files)


def _check_ref(ref: ModelRef, *, version_required: bool = False) -> None:
    if ref.platform != PLATFORM:
        raise InputError("model", f"{ref} is on platform {ref.platform!r}", "a reference on platform 'mlflow'")
    if ref.version is not None and not ref.version.isdigit():
        raise InputError("model", f"{ref}: MLflow version {ref.version!r} is not a number", "'name@3'")
    if version_required and ref.version is None:
        raise InputError("model", f"{ref} names no version", "'name@version', e.g. 'churn-model@3'")


class MlflowRegistry:
    """The MLflow model registry: versions, aliases, tags, artifacts, deletes.

    Args:
        client: an httpx.Client whose base URL is the tracking server, with auth.
        production_alias: the alias that names production.
        staging_alias: the alias that names staging.
        sleep: how to wait between retries (injected by tests).
    """

    name = PLATFORM
    capabilities = Capabilities(
        weights_exportable=True,
        exports=[
            "every artifact file of the version (weights, MLmodel, environment files), via the artifacts proxy",
            "registered model and version metadata: description, tags, aliases, source, run id",
        ],
        not_exportable=[
            "the training run itself (params, metrics history, other run artifacts) - it is not deleted",
            "artifacts stored outside the server's mlflow-artifacts proxy",
        ],
        soft_delete="deprecate",
        restore=False,
        cutover=True,
        traffic=False,
        delete_unit="version",
        cascade=["the version's tags and aliases", "the registry entry; the run and its artifacts stay"],
    )

    def __init__(
        self,
        client: httpx.Client,
        *,
        production_alias: str = "production",
        staging_alias: str = "staging",
        sleep: Sleep = time.sleep,
    ) -> None:
        self._api = _MlflowApi(client, sleep)
        self._client = client
        self.protocol_aliases = (production_alias, staging_alias)

    def close(self) -> None:
        """Close the HTTP client."""
        self._client.close()

    def _aliases(self, name: str) -> dict[str, str]:
        """alias -> version for the model."""
        model = self._api.model(name)
        return {str(a["alias"]): str(a["version"]) for a in model.get("aliases") or []}

    def describe(self, ref: ModelRef) -> Dossier:
        """Versions, tags, aliases and source of the model; the version's run metrics when it has a run.

        Raises:
            NotFoundError: the model or version does not exist.
        """
        _check_ref(ref)
        model = self._api.model(ref.name)
        aliases = {str(a["alias"]): str(a["version"]) for a in model.get("aliases") or []}
        raw_versions = self._api.versions_of(ref.name)
        versions = [self._version_info(v, aliases) for v in raw_versions]
        metadata: dict[str, Any] = {"registered_model": redact(model)}
        metrics: dict[str, Any] = {}
        if ref.version is not None:
            version = self._api.version(ref.name, ref.version)
            metadata["model_version"] = redact(version)
            if version.get("run_id"):
                try:
                    run = self._api.call("GET", f"{API}/runs/get", params={"run_id": version["run_id"]})
                    metrics = {m["key"]: m["value"] for m in run.get("run", {}).get("data", {}).get("metrics") or []}
                except NotFoundError:
                    metadata["run_missing"] = str(version["run_id"])
        dependents = self._dependents(ref, aliases)
        return Dossier(
            reference=ref,
            description=str(model.get("description") or ""),
            versions=versions,
            metrics=metrics,
            metadata=metadata,
            deployed_at=[f"alias {d.name}" for d in dependents],
            dependents=dependents,
            blockers=self._blockers(ref, aliases, raw_versions),
            known_issues=["MLflow serves no traffic itself: the serving targets are its aliases."],
            capabilities=self.capabilities,
        )

    def _version_info(self, v: dict[str, Any], aliases: dict[str, str]) -> VersionInfo:
        version = str(v["version"])
        tags = _tags(v)
        return VersionInfo(
            version=version,
            created_at=_ms(v.get("creation_timestamp")),
            stage=str(v.get("current_stage") or "") or None,
            aliases=sorted(a for a, ver in aliases.items() if ver == version),
            tags=tags,
            active=tags.get(STATUS_TAG) != DEPRECATED,
        )

    def _dependents(self, ref: ModelRef, aliases: dict[str, str]) -> list[Dependent]:
        return [
            Dependent(
                kind="alias",
                name=alias,
                detail=f"alias {alias!r} of {ref.name} points at version {version}",
                movable=alias in self.protocol_aliases,
            )
            for alias, version in sorted(aliases.items())
            if ref.version is None or version == ref.version
        ]

    def dependents(self, ref: ModelRef) -> list[Dependent]:
        """The aliases that point at the version (every alias of the model when no version is given)."""
        _check_ref(ref)
        return self._dependents(ref, self._aliases(ref.name))

    def _blockers(
        self, ref: ModelRef, aliases: dict[str, str], versions: list[dict[str, Any]]
    ) -> list[DeletionBlocker]:
        blockers = [
            DeletionBlocker(
                code="alias",
                message=f"alias {d.name!r} points at {ref}",
                remedy="the cutover moves it to the replacement"
                if d.movable
                else f"move or delete alias {d.name!r} first",
                cleared_by_protocol=d.movable,
            )
            for d in self._dependents(ref, aliases)
            if ref.version is not None
        ]
        if ref.version is None and versions:
            listed = ", ".join(sorted((str(v["version"]) for v in versions), key=int))
            blockers.append(
                DeletionBlocker(
                    code="has_versions",
                    message=f"{ref.name} still has versions {listed}; deleting the model would delete them all",
                    remedy="retire and delete each version first",
                )
            )
        return blockers

    def deletion_blockers(self, ref: ModelRef) -> list[DeletionBlocker]:
        """An alias on the version; for the whole model, any remaining version.

        Raises:
            NotFoundError: the model or version does not exist.
        """
        _check_ref(ref)
        aliases = self._aliases(ref.name)
        if ref.version is not None:
            self._api.version(ref.name, ref.version)
            return self._blockers(ref, aliases, [])
        return self._blockers(ref, aliases, self._api.versions_of(ref.name))

    def export(self, ref: ModelRef) -> list[ExportItem]:
        """Every artifact file of the version, streamed through the proxy, plus its metadata as JSON."""
        _check_ref(ref, version_required=True)
        assert ref.version is not None
        model = self._api.model(ref.name)
        version = self._api.version(ref.name, ref.version)
        root = self._api.artifact_root(ref.name, ref.version)
        items = [
            _json_item("metadata/registered_model.json", redact(model)),
            _json_item("metadata/model_version.json", redact(version)),
        ]
        for rel, size in self._api.list_files(root):
            url = f"{ARTIFACTS_API}/{quote(posixpath.join(root, rel))}"
            items.append(http_export_item(self._client, f"artifacts/{rel}", url, platform=PLATFORM, size=size))
        return items

    def set_active(self, ref: ModelRef, active: bool) -> None:
        """Deprecate (tag ``retirement.status=deprecated``) or undo it (remove the tag).

        MLflow has no deactivation: the tag is advisory, for people and tools that read it.
        """
        _check_ref(ref, version_required=True)
        body = {"name": ref.name, "version": ref.version, "key": STATUS_TAG}
        if active:
            try:
                self._api.call("DELETE", f"{API}/model-versions/delete-tag", json=body)
            except NotFoundError:
                self._api.version(ref.name, str(ref.version))  # the tag was absent: fine if the version exists
        else:
            self._api.call("POST", f"{API}/model-versions/set-tag", json={**body, "value": DEPRECATED})

    def delete(self, ref: ModelRef) -> DeletionReceipt:
        """Delete the version (or the whole model, once it has no versions) and confirm it is gone.

        Raises:
            DeletionBlockedError: an alias points at it, or the model still has versions.
            NotFoundError: it was already gone.
        """
        _check_ref(ref)
        blockers = self.deletion_blockers(ref)
        if blockers:
            raise DeletionBlockedError(str(ref), [b.message for b in blockers])
        if ref.version is not None:
            answer = self._api.call(
                "DELETE", f"{API}/model-versions/delete", json={"name": ref.name, "version": ref.version}
            )
            removed = [f"model version {ref}", "its tags"]
        else:
            answer = self._api.call("DELETE", f"{API}/registered-models/delete", json={"name": ref.name})
            removed = [f"registered model {ref.name}"]
        return DeletionReceipt(
            reference=ref,
            removed=removed,
            verified_gone=not self.exists(ref),
            platform_response=redact(answer) if isinstance(answer, dict) else {},
        )

    def exists(self, ref: ModelRef) -> bool:
        """True while MLflow answers the version (or the model) rather than RESOURCE_DOES_NOT_EXIST."""
        _check_ref(ref)
        try:
            if ref.version is None:
                self._api.model(ref.name)
            else:
                self._api.version(ref.name, ref.version)
        except NotFoundError:
            return False
        return True

    def list_versions(self) -> Iterator[CatalogEntry]:
        """Every version of every registered model, with its aliases and tags."""
        aliases: dict[str, dict[str, str]] = {}
        for model in self._api.search_models():
            aliases[str(model["name"])] = {str(a["alias"]): str(a["version"]) for a in model.get("aliases") or []}
        for v in self._api.search_versions():
            name, version = str(v["name"]), str(v["version"])
            model_aliases = aliases.get(name, {})
            info = self._version_info(v, model_aliases)
            ref = ModelRef(platform=PLATFORM, name=name, version=version)
            yield CatalogEntry(
                reference=ref,
                created_at=info.created_at or datetime.now(UTC),
                stage=info.stage,
                status=info.tags.get(STATUS_TAG),
                status_changed_at=_ms(v.get("last_updated_timestamp")),
                aliases=info.aliases,
                tags=info.tags,
                dependents=self._dependents(ref, model_aliases),
                active=info.active,
            )


def _json_item(path: str, document: Any) -> ExportItem:
    data = json.dumps(document, indent=2, sort_keys=True, default=str).encode()
    return ExportItem(path=path, size=len(data), open=lambda: iter([data]))


class MlflowServing:
    """Aliases as serving targets: staging and production are aliases that point at versions.

    Args:
        client: an httpx.Client whose base URL is the tracking server, with auth.
        production_alias: the alias that names production.
        staging_alias: the alias that names staging.
        sleep: how to wait between retries (injected by tests).
    """

    name = PLATFORM

    def __init__(
        self,
        client: httpx.Client,
        *,
        production_alias: str = "production",
        staging_alias: str = "staging",
        sleep: Sleep = time.sleep,
    ) -> None:
        self._api = _MlflowApi(client, sleep)
        self.production_alias = production_alias
        self.staging_alias = staging_alias

    def preflight(self, request: RetirementRequest) -> list[str]:
        """Staging and production are aliases of one registered model: the replacement must be a version of it."""
        return same_model_refusals(request, "MLflow aliases belong to one registered model")

    def deploy_staging(self, ref: ModelRef) -> None:
        """Point the staging alias at ``ref``."""
        _check_ref(ref, version_required=True)
        self._api.set_alias(ref.name, self.staging_alias, str(ref.version))

    def smoke_test(self, ref: ModelRef, requests: int = 5) -> SmokeResult:
        """Check the version's artifacts are listable; MLflow serves no traffic, so nothing is sent to a model."""
        _check_ref(ref, version_required=True)
        started = time.perf_counter()
        try:
            files = self._api.list_files(self._api.artifact_root(ref.name, str(ref.version)))
        except (NotFoundError, ConflictError) as exc:
            return SmokeResult(reference=ref, requests=1, errors=1, ok=False, detail=str(exc))
        elapsed = (time.perf_counter() - started) * 1000
        ok = bool(files)
        detail = "MLflow serves no traffic itself; checked that the version's artifacts are listable: " + (
            f"{len(files)} files" if ok else "no artifact files found"
        )
        return SmokeResult(
            reference=ref, requests=1, errors=0 if ok else 1, p95_latency_ms=elapsed, ok=ok, detail=detail
        )

    def production(self, model: ModelRef) -> ModelRef | None:
        """The version the production alias points at, if the alias exists."""
        _check_ref(model)
        version = self._api.alias_version(model.name, self.production_alias)
        return None if version is None else ModelRef(platform=PLATFORM, name=model.name, version=version)

    def switch(self, to: ModelRef, *, replacing: ModelRef | None = None) -> ModelRef | None:
        """Move the production alias to ``to``; return the version it pointed at before (None if unset)."""
        _check_ref(to, version_required=True)
        self._api.version(to.name, str(to.version))
        previous = self.production(to.model)
        if previous != to:
            self._api.set_alias(to.name, self.production_alias, str(to.version))
        return previous


def build(settings: RetireSettings) -> Platform:
    """The MLflow adapters, on one client built from MLFLOW_TRACKING_URI and its credentials.

    Raises:
        ConfigError: MLFLOW_TRACKING_URI is missing or not an http(s) URL.
    """
    del settings  # MLflow keeps nothing under RETIRE_HOME
    own = MlflowSettings()
    client = httpx.Client(base_url=own.url(), auth=own.auth(), timeout=own.timeout)
    prod, staging = own.production_alias, own.staging_alias
    return Platform(
        name=PLATFORM,
        registry=MlflowRegistry(client, production_alias=prod, staging_alias=staging),
        serving=MlflowServing(client, production_alias=prod, staging_alias=staging),
        traffic=None,
    )


__all__ = ["MlflowRegistry", "MlflowServing", "MlflowSettings", "build", "mlflow_message"]
