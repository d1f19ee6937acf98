"""Datature Vi adapter: a model is a checkpoint output of a training run; a delete removes the whole run.

References are ``run_id@ckpt`` (or ``run_id`` alone). Vi has no per-checkpoint delete:
``DELETE /workspaces/{org}/runs/{run_id}`` takes every checkpoint of the run, so the dossier lists
them all and the deletion gate's typed confirmation names the run (``confirmation_reference``).

Requests are made as vi-sdk 0.1.0b7 makes them: ``Authorization: Bearer <secret key>`` and an
``Organization-Id`` header on every API call (``SecretKeyAuth.get_headers``); a checkpoint with its
download link is ``GET .../runs/{run}/outputs/{ckpt}?intent=sdkLocalDeploy&contents=y`` (the SDK's
link builder writes booleans as ``y``/``n``), and its answer is decoded as a page whose last item is
the checkpoint (``Model.get`` takes ``items[-1]``). A bare output object is accepted as well.

Assumptions where Vi's docs are silent (each kept in one helper so it is easy to correct):

- a checkpoint's id is the output's ``runOutputId`` (vi-sdk's ``Model.model_id``), else the last path
  segment of its ``selfLink`` (the SDK fetches ``.../outputs/{ckpt}``), else ``metadata.ckpt`` / ``metadata.name``;
- a deployment names what it serves in ``spec.runId`` and ``spec.ckpt`` (or under ``spec.model``),
  and the cutover is ``PATCH .../deployments/{id}`` with that same shape and only those fields;
- deployment statistics are live snapshots (``requestsPerSecond``): a past window is known only
  when it was sampled through, by calling ``DatatureViTraffic.record_snapshot`` periodically.
"""

from __future__ import annotations

import json
import logging
import posixpath
import time
from collections.abc import Callable, Generator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from retirement.backup.stream import http_export_item
from retirement.errors import (
    ConfigError,
    ConflictError,
    DeletionBlockedError,
    InputError,
    NotFoundError,
    PlatformError,
    RetirementError,
)
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
    TrafficSample,
    TrafficVerdict,
    VersionInfo,
)
from retirement.platforms.base import Platform
from retirement.platforms.http import paginate, send
from retirement.redact import redact, redact_text, remember
from retirement.settings import RetireSettings

logger = logging.getLogger(__name__)

PLATFORM = "datature-vi"
PAGE_SIZE = 100
DEFAULT_ENDPOINT = "https://api.vi.datature.com/"

Sleep = Callable[[float], None]


class DatatureViSettings(BaseSettings):
    """Credentials and endpoints of Datature Vi (the SDK's own env vars) and the deployments to cut over."""

    model_config = SettingsConfigDict(extra="ignore")

    secret_key: SecretStr | None = Field(
        default=None,
        validation_alias="DATATURE_VI_SECRET_KEY",
        description="Secret key, sent as 'Authorization: Bearer ...' (DATATURE_VI_SECRET_KEY).",
    )
    organization_id: str | None = Field(
        default=None,
        validation_alias="DATATURE_VI_ORGANIZATION_ID",
        description="The organization (workspace) id in every path (DATATURE_VI_ORGANIZATION_ID).",
    )
    api_endpoint: str = Field(
        default=DEFAULT_ENDPOINT,
        validation_alias="DATATURE_VI_API_ENDPOINT",
        description="The Vi API endpoint (DATATURE_VI_API_ENDPOINT).",
    )
    base_url: str | None = Field(
        default=None,
        validation_alias="RETIRE_DATATURE_VI_BASE_URL",
        description="Overrides DATATURE_VI_API_ENDPOINT for this tool only (RETIRE_DATATURE_VI_BASE_URL).",
    )
    production_deployment: str | None = Field(
        default=None,
        validation_alias="RETIRE_DATATURE_VI_PRODUCTION_DEPLOYMENT",
        description="Id of the deployment that serves production; the cutover points it at the replacement.",
    )
    staging_deployment: str | None = Field(
        default=None,
        validation_alias="RETIRE_DATATURE_VI_STAGING_DEPLOYMENT",
        description="Id of the deployment used as staging for the replacement.",
    )
    snapshot_interval_minutes: float = Field(
        default=15.0,
        gt=0,
        validation_alias="RETIRE_DATATURE_VI_SNAPSHOT_INTERVAL_MINUTES",
        description="How long one statistics snapshot vouches for: a gap longer than this is missing data.",
    )
    timeout: float = Field(
        default=60.0,
        gt=0,
        validation_alias="RETIRE_DATATURE_VI_TIMEOUT",
        description="Seconds before an HTTP call to Vi gives up (RETIRE_DATATURE_VI_TIMEOUT).",
    )


class _BearerAuth(httpx.Auth):
    """Adds the secret key as a bearer token, keeping it out of the client's repr."""

    def __init__(self, key: SecretStr) -> None:
        remember(key)
        self._key = key

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._key.get_secret_value()}"
        yield request


def vi_message(body: Any) -> str | None:
    """Vi's error message: JSON ``message``, else ``error`` (a string or an object with a message)."""
    if isinstance(body, dict):
        if body.get("message"):
            return str(body["message"])
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if error:
            return str(error)
    if isinstance(body, str) and body.strip():
        return body.strip()[:500]
    return None


def _dict(value: Any) -> dict[str, Any]:
    """``value`` when it is a JSON object, else an empty one (Vi omits empty objects)."""
    return value if isinstance(value, dict) else {}


def _unwrap(body: Any) -> Any:
    """Vi wraps some answers in ``{"data": ...}``."""
    if isinstance(body, dict) and set(body) == {"data"}:
        return body["data"]
    return body


def _last_segment(link: Any) -> str | None:
    if isinstance(link, str) and link.strip("/"):
        return urlsplit(link).path.rstrip("/").rsplit("/", 1)[-1] or None
    return None


def _single_output(body: Any, where: str) -> dict[str, Any]:
    """The output a ``.../outputs/{ckpt}`` answer holds: the last item of a page (as vi-sdk reads it), or the object."""
    if isinstance(body, dict) and isinstance(body.get("items"), list):
        items = [item for item in body["items"] if isinstance(item, dict)]
        if not items:
            raise PlatformError(PLATFORM, f"checkpoint {where}: Vi answered an empty page of outputs")
        return items[-1]
    if isinstance(body, dict):
        return body
    raise PlatformError(PLATFORM, f"checkpoint {where}: Vi answered neither a page nor an output")


def checkpoint_id(output: dict[str, Any]) -> str:
    """The checkpoint id of one output (see the module docstring for the assumption)."""
    metadata = _dict(output.get("metadata"))
    candidates = (
        output.get("runOutputId"),
        _last_segment(output.get("selfLink")),
        metadata.get("ckpt"),
        metadata.get("name"),
    )
    for candidate in candidates:
        if candidate:
            return str(candidate)
    raise PlatformError(PLATFORM, f"an output of run {output.get('runId')!r} has no checkpoint id")


def deployment_id(deployment: dict[str, Any]) -> str:
    """A deployment's id: ``id``, ``deploymentId`` or the last segment of its ``selfLink``."""
    for candidate in (deployment.get("id"), deployment.get("deploymentId"), _last_segment(deployment.get("selfLink"))):
        if candidate:
            return str(candidate)
    raise PlatformError(PLATFORM, "a deployment has no id")


def _target_holder(deployment: dict[str, Any]) -> dict[str, Any]:
    spec = _dict(deployment.get("spec"))
    model = spec.get("model")
    return model if isinstance(model, dict) else spec


def deployment_target(deployment: dict[str, Any]) -> tuple[str | None, str | None]:
    """(run id, checkpoint) a deployment serves (see the module docstring for the assumption)."""
    holder = _target_holder(deployment)
    run = holder.get("runId")
    ckpt = holder.get("ckpt") or holder.get("checkpoint")
    return (None if run is None else str(run), None if ckpt is None else str(ckpt))


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value / 1000 if value > 1e11 else value, UTC)
    if isinstance(value, str) and value:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def _created(doc: dict[str, Any]) -> datetime | None:
    metadata = _dict(doc.get("metadata"))
    return _parse_time(
        metadata.get("timeCreated") or metadata.get("createTime") or metadata.get("createdAt") or doc.get("createdAt")
    )


def _without_download_urls(value: Any) -> Any:
    """``value`` without any ``downloadUrl``: signed URLs are credentials and never go in a backup or log."""
    if isinstance(value, dict):
        return {k: _without_download_urls(v) for k, v in value.items() if k != "downloadUrl"}
    if isinstance(value, list):
        return [_without_download_urls(v) for v in value]
    return value


def _clean(value: Any) -> Any:
    return redact(_without_download_urls(value))


def _json_item(path: str, document: Any) -> ExportItem:
    data = json.dumps(document, indent=2, sort_keys=True, default=str).encode()
    return ExportItem(path=path, size=len(data), open=lambda: iter([data]))


def _check_ref(ref: ModelRef, *, ckpt_required: bool = False) -> None:
    if ref.platform != PLATFORM:
        raise InputError("model", f"{ref} is on platform {ref.platform!r}", "a reference on platform 'datature-vi'")
    if "/" in ref.name or ref.name in (".", ".."):
        raise InputError("model", f"run id {ref.name!r} contains '/'", "a Vi run id, e.g. 'run_8f2c'")
    if ckpt_required and ref.version is None:
        raise InputError("model", f"{ref} names no checkpoint", "'run_id@ckpt'")


class _ViApi:
    """The REST calls the adapters make, on one injected client, with the headers vi-sdk sends."""

    def __init__(self, client: httpx.Client, organization_id: str, sleep: Sleep) -> None:
        if not organization_id or "/" in organization_id:
            raise InputError("organization_id", f"{organization_id!r}", "the Vi organization id, with no '/'")
        self.client = client
        self.root = f"/workspaces/{quote(organization_id, safe='')}"
        self._headers = {"Organization-Id": organization_id}
        self._sleep = sleep

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = send(
            self.client,
            method,
            self.root + path,
            platform=PLATFORM,
            extract=vi_message,
            sleep=self._sleep,
            headers=self._headers,
            **kwargs,
        )
        return _unwrap(response.json()) if response.content else {}

    def _pages(self, path: str, params: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        def fetch(token: str | None) -> tuple[list[Any], str | None]:
            query = {**(params or {}), "s": PAGE_SIZE}
            if token:
                query["p"] = token
            body = self.call("GET", path, params=query)
            if isinstance(body, list):
                return body, None
            return list(body.get("items") or []), body.get("nextPage") or None

        yield from paginate(fetch)

    def run(self, run_id: str) -> dict[str, Any]:
        return dict(self.call("GET", f"/runs/{quote(run_id, safe='')}") or {})

    def runs(self) -> Iterator[dict[str, Any]]:
        return self._pages("/runs")

    def outputs(self, run_id: str) -> list[dict[str, Any]]:
        return list(self._pages(f"/runs/{quote(run_id, safe='')}/outputs", {"intent": "sdkLocalDeploy"}))

    def contents(self, run_id: str, ckpt: str) -> tuple[str, int | None]:
        """(signed download URL, size) of a checkpoint's weights."""
        body = self.call(
            "GET",
            f"/runs/{quote(run_id, safe='')}/outputs/{quote(ckpt, safe='')}",
            params={"intent": "sdkLocalDeploy", "contents": "y"},
        )
        output = _single_output(body, f"{run_id}@{ckpt}")
        contents = _dict(_dict(output.get("status")).get("contents"))
        url = (contents.get("downloadUrl") or {}).get("url")
        if not url:
            raise PlatformError(PLATFORM, f"checkpoint {run_id}@{ckpt} has no download URL")
        size = contents.get("fileSize")
        return str(url), None if size is None else int(size)

    def deployments(self) -> list[dict[str, Any]]:
        return list(self._pages("/deployments"))

    def deployment(self, dep_id: str) -> dict[str, Any]:
        return dict(self.call("GET", f"/deployments/{quote(dep_id, safe='')}") or {})

    def statistics(self, dep_id: str) -> dict[str, Any]:
        return dict(self.call("GET", f"/deployments/{quote(dep_id, safe='')}/statistics") or {})


class DatatureViRegistry:
    """Vi training runs and their checkpoints: describe, blockers, backup of every checkpoint, run delete.

    Args:
        client: an httpx.Client with the Vi base URL and the bearer key.
        download_client: an httpx.Client with NO credentials, for the signed download URLs.
        organization_id: the Vi organization id.
        protocol_deployments: deployment ids the protocol moves (production, staging).
        sleep: how to wait between retries (injected by tests).
    """

    name = PLATFORM
    capabilities = Capabilities(
        weights_exportable=True,
        exports=[
            "the weights archive of every checkpoint of the run (the delete removes them all)",
            "run and checkpoint metadata, evaluation metrics, as JSON",
        ],
        not_exportable=[
            "the training dataset and annotations (not part of the run)",
            "deployment statistics history (Vi keeps only live snapshots)",
            "a way back: Vi has no restore or re-import of a deleted run",
        ],
        soft_delete=None,
        restore=False,
        cutover=True,
        traffic=True,
        delete_unit="run",
        cascade=["every checkpoint (output) of the training run", "the run's configuration, logs and metadata"],
    )

    def __init__(
        self,
        client: httpx.Client,
        download_client: httpx.Client,
        organization_id: str,
        *,
        protocol_deployments: tuple[str, ...] = (),
        sleep: Sleep = time.sleep,
    ) -> None:
        self._api = _ViApi(client, organization_id, sleep)
        self._client = client
        self._download_client = download_client
        self.protocol_deployments = tuple(d for d in protocol_deployments if d)

    def close(self) -> None:
        """Close both HTTP clients."""
        self._client.close()
        self._download_client.close()

    def confirmation_reference(self, ref: ModelRef) -> str:
        """What the deletion gate's typed confirmation must be: the run id, because the whole run is deleted."""
        _check_ref(ref)
        return ref.name

    def checkpoints(self, ref: ModelRef) -> list[str]:
        """Every checkpoint of the run: what a delete of ``ref`` removes.

        Raises:
            NotFoundError: the run, or the checkpoint ``ref`` names, does not exist.
        """
        _check_ref(ref)
        self._api.run(ref.name)
        return self._checkpoints(ref, self._api.outputs(ref.name))

    def _checkpoints(self, ref: ModelRef, outputs: list[dict[str, Any]]) -> list[str]:
        ckpts = [checkpoint_id(o) for o in outputs]
        if ref.version is not None and ref.version not in ckpts:
            raise NotFoundError(
                f"{PLATFORM}: run {ref.name} has no checkpoint {ref.version!r} "
                f"(checkpoints: {', '.join(ckpts) or 'none'})"
            )
        return ckpts

    def _dependents(self, ref: ModelRef, deployments: list[dict[str, Any]]) -> list[Dependent]:
        found = []
        for dep in deployments:
            run, ckpt = deployment_target(dep)
            if run != ref.name:
                continue
            dep_id = deployment_id(dep)
            served = f"{run}@{ckpt}" if ckpt else str(run)
            other = ref.version is not None and ckpt is not None and ckpt != ref.version
            detail = f"deployment {dep.get('name') or dep_id} serves {served}"
            if other:
                detail += f", another checkpoint of the same run: deleting {ref} deletes it too"
            found.append(
                Dependent(kind="deployment", name=dep_id, detail=detail, movable=dep_id in self.protocol_deployments)
            )
        return found

    def dependents(self, ref: ModelRef) -> list[Dependent]:
        """Every deployment that serves any checkpoint of the run."""
        _check_ref(ref)
        return self._dependents(ref, self._api.deployments())

    def _blockers(self, ref: ModelRef, dependents: list[Dependent]) -> list[DeletionBlocker]:
        return [
            DeletionBlocker(
                code="deployment",
                message=f"{d.detail} ({d.name}); deleting run {ref.name} removes every checkpoint",
                remedy="the cutover points the deployment at the replacement"
                if d.movable
                else f"point deployment {d.name} at another run, or delete it",
                cleared_by_protocol=d.movable,
            )
            for d in dependents
        ]

    def deletion_blockers(self, ref: ModelRef) -> list[DeletionBlocker]:
        """A deployment that uses any checkpoint of the run blocks (the delete takes the whole run).

        Raises:
            NotFoundError: the run, or the checkpoint ``ref`` names, does not exist.
        """
        self.checkpoints(ref)
        return self._blockers(ref, self.dependents(ref))

    def describe(self, ref: ModelRef) -> Dossier:
        """The run, every checkpoint with its epoch and metrics, the deployments that serve it.

        Raises:
            NotFoundError: the run, or the checkpoint ``ref`` names, does not exist.
        """
        _check_ref(ref)
        run = self._api.run(ref.name)
        outputs = self._api.outputs(ref.name)
        ckpts = self._checkpoints(ref, outputs)
        deployments = self._api.deployments()
        dependents = self._dependents(ref, deployments)
        serving: dict[str, list[str]] = {}
        for dep in deployments:
            dep_run, dep_ckpt = deployment_target(dep)
            if dep_run == ref.name and dep_ckpt:
                serving.setdefault(dep_ckpt, []).append(deployment_id(dep))
        versions, metrics = [], {}
        for ckpt, output in zip(ckpts, outputs, strict=True):
            spec = _dict(output.get("spec"))
            versions.append(
                VersionInfo(
                    version=ckpt,
                    created_at=_created(output),
                    aliases=[f"deployment:{d}" for d in serving.get(ckpt, [])],
                )
            )
            if ref.version in (None, ckpt):
                metrics[ckpt] = {"epoch": spec.get("epoch"), "evaluationMetrics": _clean(spec.get("evaluationMetrics"))}
        if ref.version is not None:
            metrics = metrics[ref.version]
        return Dossier(
            reference=ref,
            description=str((run.get("metadata") or {}).get("description") or "") if isinstance(run, dict) else "",
            versions=versions,
            metrics=metrics,
            metadata={"run": _clean(run), "outputs": _clean(outputs)},
            deployed_at=[d.detail for d in dependents],
            dependents=dependents,
            blockers=self._blockers(ref, dependents),
            known_issues=[
                f"Vi deletes whole runs: deleting {ref} deletes training run {ref.name} and ALL its "
                f"{len(ckpts)} checkpoints: {', '.join(ckpts) or 'none'}. The deletion confirmation is the run id "
                f"{ref.name!r}.",
                "Vi has no soft delete (no deactivate or deprecate step).",
                "Vi deployment statistics are live snapshots: idle is proven only for windows sampled throughout.",
            ],
            capabilities=self.capabilities,
        )

    def export(self, ref: ModelRef) -> list[ExportItem]:
        """Run and outputs metadata as JSON, and every checkpoint's weights streamed from its signed URL.

        The signed URL is fetched afresh each time an item is opened (they expire) and is sent no
        credentials.
        """
        _check_ref(ref)
        run = self._api.run(ref.name)
        outputs = self._api.outputs(ref.name)
        ckpts = self._checkpoints(ref, outputs)
        items = [_json_item("metadata/run.json", _clean(run)), _json_item("metadata/outputs.json", _clean(outputs))]
        for ckpt in ckpts:
            url, size = self._api.contents(ref.name, ckpt)
            filename = posixpath.basename(urlsplit(url).path) or "weights"
            items.append(self._weights_item(ref.name, ckpt, f"checkpoints/{ckpt}/{filename}", size))
        return items

    def _weights_item(self, run_id: str, ckpt: str, path: str, size: int | None) -> ExportItem:
        def open_stream() -> Iterator[bytes]:
            url, _ = self._api.contents(run_id, ckpt)
            return http_export_item(self._download_client, path, url, platform=PLATFORM, size=size).open()

        return ExportItem(path=path, size=size, open=open_stream)

    def set_active(self, ref: ModelRef, active: bool) -> None:
        """Vi has no soft step.

        Raises:
            ConflictError: always.
        """
        raise ConflictError(f"{PLATFORM}: no deactivate or deprecate exists for runs (soft_delete is not available)")

    def delete(self, ref: ModelRef) -> DeletionReceipt:
        """Delete the whole training run of ``ref``, with every checkpoint, and confirm it is gone.

        Raises:
            DeletionBlockedError: a deployment uses a checkpoint of the run; nothing was deleted.
            NotFoundError: the run was already gone.
        """
        ckpts = self.checkpoints(ref)
        blockers = self._blockers(ref, self.dependents(ref))
        if blockers:
            raise DeletionBlockedError(str(ref), [b.message for b in blockers])
        answer = self._api.call("DELETE", f"/runs/{quote(ref.name, safe='')}")
        return DeletionReceipt(
            reference=ref,
            removed=[f"training run {ref.name}"] + [f"checkpoint {ref.name}@{c}" for c in ckpts],
            verified_gone=not self.exists(ref.model),
            platform_response=_clean(answer) if isinstance(answer, dict) else {"data": answer},
        )

    def exists(self, ref: ModelRef) -> bool:
        """True while Vi still answers the run (and the checkpoint, when ``ref`` names one)."""
        try:
            self.checkpoints(ref)
        except NotFoundError:
            return False
        return True

    def list_versions(self) -> Iterator[CatalogEntry]:
        """Every checkpoint of every run; a checkpoint with no known creation time is dated now (never 'old')."""
        deployments = self._api.deployments()
        for run in self._api.runs():
            run_id = str(
                run.get("runId") or (run.get("metadata") or {}).get("runId") or _last_segment(run.get("selfLink"))
            )
            for output in self._api.outputs(run_id):
                ref = ModelRef(platform=PLATFORM, name=run_id, version=checkpoint_id(output))
                serving = [deployment_id(d) for d in deployments if deployment_target(d) == (run_id, ref.version)]
                yield CatalogEntry(
                    reference=ref,
                    created_at=_created(output) or _created(run) or datetime.now(UTC),
                    aliases=[f"deployment:{d}" for d in serving],
                    dependents=self._dependents(ref, deployments),
                )


class DatatureViServing:
    """Deployments as serving targets: the cutover PATCHes the production deployment to the new checkpoint.

    Args:
        client: an httpx.Client with the Vi base URL and the bearer key.
        organization_id: the Vi organization id.
        production_deployment: id of the production deployment.
        staging_deployment: id of the staging deployment.
        sleep: how to wait between retries (injected by tests).
    """

    name = PLATFORM

    def __init__(
        self,
        client: httpx.Client,
        organization_id: str,
        *,
        production_deployment: str | None = None,
        staging_deployment: str | None = None,
        sleep: Sleep = time.sleep,
    ) -> None:
        self._api = _ViApi(client, organization_id, sleep)
        self.production_deployment = production_deployment
        self.staging_deployment = staging_deployment

    def preflight(self, request: RetirementRequest) -> list[str]:
        """With a replacement: both deployments configured, existing, and serving the old run or the replacement.

        A deployment serving any other run belongs to another model: staging or cutting over there would
        take it from that model. A production deployment serving another checkpoint of the run being
        retired is never switched (the cutover switches only a deployment serving the reference), and
        the delete would take that checkpoint from under it.
        """
        old, new = request.ref, request.replacement_ref
        if new is None:
            return []
        problems = []
        if new.version is None:
            problems.append(f"replacement {new} names no checkpoint; remedy: name it as 'run_id@ckpt'")
        for role, dep_id, variable in (
            ("production", self.production_deployment, "RETIRE_DATATURE_VI_PRODUCTION_DEPLOYMENT"),
            ("staging", self.staging_deployment, "RETIRE_DATATURE_VI_STAGING_DEPLOYMENT"),
        ):
            if not dep_id:
                problems.append(
                    f"{variable} is not set: the {role} step needs the Vi deployment it points at {new}; "
                    f"remedy: set it to the id of the {role} deployment"
                )
                continue
            try:
                run, ckpt = deployment_target(self._api.deployment(dep_id))
            except NotFoundError:
                problems.append(f"{role} deployment {dep_id} ({variable}) does not exist on Vi; remedy: set {variable}")
                continue
            served = f"{run}@{ckpt}" if ckpt else str(run)
            if run not in (old.name, new.name):
                problems.append(
                    f"{role} deployment {dep_id} serves {served}, another model than {old} or {new}: the {role} step "
                    f"would take it from that model; remedy: set {variable} to the {role} deployment of {old.name}"
                )
            elif role == "production" and run == old.name and old.version is not None and ckpt != old.version:
                problems.append(
                    f"production deployment {dep_id} serves {served}, another checkpoint of run {old.name}: the "
                    f"cutover switches only a deployment serving {old}, and deleting run {old.name} would take "
                    f"{served} from under it; remedy: retire {served} (the checkpoint it serves) instead"
                )
        return problems

    def _need(self, dep_id: str | None, variable: str) -> str:
        if not dep_id:
            raise ConfigError(f"{variable} is not set (allowed: the id of a Vi deployment)")
        return dep_id

    def _point(self, dep_id: str, to: ModelRef) -> ModelRef | None:
        _check_ref(to, ckpt_required=True)
        self._api.run(to.name)
        before = self._api.deployment(dep_id)
        run, ckpt = deployment_target(before)
        previous = None if run is None else ModelRef(platform=PLATFORM, name=run, version=ckpt)
        if previous == to:
            return previous
        target = {"runId": to.name, "ckpt": to.version}
        spec = _dict(before.get("spec"))
        body = {"spec": {"model": target}} if isinstance(spec.get("model"), dict) else {"spec": target}
        self._api.call("PATCH", f"/deployments/{quote(dep_id, safe='')}", json=body)
        after = deployment_target(self._api.deployment(dep_id))
        if after != (to.name, to.version):
            raise PlatformError(PLATFORM, f"deployment {dep_id} still serves {after[0]}@{after[1]} after the PATCH")
        return previous

    def deploy_staging(self, ref: ModelRef) -> None:
        """Point the staging deployment at ``ref`` (``run_id@ckpt``)."""
        self._point(self._need(self.staging_deployment, "RETIRE_DATATURE_VI_STAGING_DEPLOYMENT"), ref)

    def smoke_test(self, ref: ModelRef, requests: int = 5) -> SmokeResult:
        """Check the staging deployment serves ``ref`` and answers its statistics.

        No inference request is sent: Vi inference takes images, and no golden set is configured.
        """
        dep_id = self._need(self.staging_deployment, "RETIRE_DATATURE_VI_STAGING_DEPLOYMENT")
        started = time.perf_counter()
        try:
            target = deployment_target(self._api.deployment(dep_id))
            self._api.statistics(dep_id)
        except RetirementError as exc:
            return SmokeResult(reference=ref, requests=1, errors=1, ok=False, detail=str(exc))
        ok = target == (ref.name, ref.version)
        detail = f"staging deployment {dep_id} serves {target[0]}@{target[1]} and answers statistics"
        if not ok:
            detail = f"staging deployment {dep_id} serves {target[0]}@{target[1]}, not {ref}"
        return SmokeResult(
            reference=ref,
            requests=1,
            errors=0 if ok else 1,
            p95_latency_ms=(time.perf_counter() - started) * 1000,
            ok=ok,
            detail=detail + " (no inference request sent)",
        )

    def production(self, model: ModelRef) -> ModelRef | None:
        """What the production deployment serves (a Vi deployment names its run, whatever ``model`` is).

        None when RETIRE_DATATURE_VI_PRODUCTION_DEPLOYMENT is not set: no deployment is known as production
        (a retirement with a replacement is refused at plan time without it, see ``preflight``).
        """
        if not self.production_deployment:
            return None
        run, ckpt = deployment_target(self._api.deployment(self.production_deployment))
        return None if run is None else ModelRef(platform=PLATFORM, name=run, version=ckpt)

    def switch(self, to: ModelRef, *, replacing: ModelRef | None = None) -> ModelRef | None:
        """PATCH the production deployment to ``to``; return what it served before. Idempotent."""
        return self._point(self._need(self.production_deployment, "RETIRE_DATATURE_VI_PRODUCTION_DEPLOYMENT"), to)


class DatatureViTraffic:
    """Requests to a run, from snapshots of Vi's live deployment statistics recorded under RETIRE_HOME.

    Vi reports only the current ``requestsPerSecond`` of a deployment. A window is IDLE only when
    snapshots taken no more than ``interval`` apart cover all of it and every one saw zero requests
    on every deployment serving the run (or no deployment serving it at all); partly covered
    windows are NODATA, never zero.

    Args:
        client: an httpx.Client with the Vi base URL and the bearer key.
        organization_id: the Vi organization id.
        state_dir: where snapshot records are kept (one JSON-lines file per run).
        interval: how long one snapshot vouches for.
        clock: the current time (injected by tests).
        sleep: how to wait between retries (injected by tests).
    """

    name = PLATFORM

    def __init__(
        self,
        client: httpx.Client,
        organization_id: str,
        state_dir: Path,
        *,
        interval: timedelta = timedelta(minutes=15),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        sleep: Sleep = time.sleep,
    ) -> None:
        self._api = _ViApi(client, organization_id, sleep)
        self.state_dir = state_dir
        self.interval = interval
        self._clock = clock

    def _file(self, ref: ModelRef) -> Path:
        return self.state_dir / f"{quote(ref.name, safe='')}.jsonl"

    def record_snapshot(self, ref: ModelRef) -> dict[str, Any]:
        """Read the live statistics of every deployment serving the run and append them to the record.

        Call it periodically (at most ``interval`` apart) through the traffic window.

        Raises:
            PlatformError: Vi could not be read; nothing is recorded (the gap stays missing data).
        """
        _check_ref(ref)
        serving = [d for d in self._api.deployments() if deployment_target(d)[0] == ref.name]
        rates: dict[str, float] = {}
        for dep in serving:
            stats = self._api.statistics(deployment_id(dep))
            rps = stats.get("requestsPerSecond")
            if not isinstance(rps, int | float):
                raise PlatformError(PLATFORM, f"deployment {deployment_id(dep)} statistics have no requestsPerSecond")
            rates[deployment_id(dep)] = float(rps)
        record = {"at": self._clock().isoformat(), "run": ref.name, "requestsPerSecond": rates}
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with self._file(ref).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        return record

    def _records(self, ref: ModelRef) -> list[tuple[datetime, dict[str, float]]]:
        path = self._file(ref)
        if not path.exists():
            return []
        records = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                doc = json.loads(line)
                records.append(
                    (datetime.fromisoformat(doc["at"]), {k: float(v) for k, v in doc["requestsPerSecond"].items()})
                )
        return sorted(records, key=lambda r: r[0])

    def sample(self, ref: ModelRef, start: datetime, end: datetime) -> TrafficSample:
        """The verdict over ``[start, end)`` from the recorded snapshots (a fresh one when the window reaches now)."""
        base = {"source": self.name, "reference": ref, "start": start, "end": end}
        try:
            if end > self._clock() - self.interval:
                self.record_snapshot(ref)
            records = [(at, r) for at, r in self._records(ref) if start - self.interval < at < end]
        except (RetirementError, OSError, ValueError, KeyError) as exc:
            return TrafficSample(
                **base, verdict=TrafficVerdict.ERROR, detail=redact_text(f"{type(exc).__name__}: {exc}")
            )
        busy = [(at, dep, rps) for at, rates in records for dep, rps in rates.items() if rps > 0 and at >= start]
        coverage = self._coverage([at for at, _ in records], start, end)
        if busy:
            at, dep, rps = max(busy, key=lambda b: b[2])
            return TrafficSample(
                **base,
                coverage=coverage,
                verdict=TrafficVerdict.ACTIVE,
                detail=f"deployment {dep} served {rps:g} requests/s at {at.isoformat()} ({len(busy)} busy snapshots)",
            )
        if coverage < 1.0:
            return TrafficSample(
                **base,
                coverage=coverage,
                verdict=TrafficVerdict.NODATA,
                detail=f"Vi statistics are live snapshots only: snapshots cover {coverage:.0%} of the window; "
                f"record_snapshot must run at least every {self.interval} through it",
            )
        return TrafficSample(
            **base,
            requests=0,
            coverage=1.0,
            verdict=TrafficVerdict.IDLE,
            detail=f"{len(records)} snapshots, no more than {self.interval} apart, all at 0 requests/s",
        )

    def _coverage(self, times: list[datetime], start: datetime, end: datetime) -> float:
        total = (end - start).total_seconds()
        if total <= 0:
            return 0.0
        covered, cursor = 0.0, start
        for at in times:
            lo, hi = max(at, cursor), min(at + self.interval, end)
            if hi > lo:
                covered += (hi - lo).total_seconds()
                cursor = hi
        return min(1.0, covered / total)


def build(settings: RetireSettings) -> Platform:
    """The Vi adapters: one authenticated client for the API, one bare client for signed downloads.

    Raises:
        ConfigError: DATATURE_VI_SECRET_KEY or DATATURE_VI_ORGANIZATION_ID is missing.
    """
    own = DatatureViSettings()
    missing = [
        n
        for n, v in (("DATATURE_VI_SECRET_KEY", own.secret_key), ("DATATURE_VI_ORGANIZATION_ID", own.organization_id))
        if not v
    ]
    if missing:
        raise ConfigError(f"{', '.join(missing)} not set (allowed: the secret key and organization id from Vi)")
    assert own.secret_key is not None and own.organization_id is not None
    client = httpx.Client(
        base_url=own.base_url or own.api_endpoint, auth=_BearerAuth(own.secret_key), timeout=own.timeout
    )
    download_client = httpx.Client(timeout=own.timeout, follow_redirects=True)
    org = own.organization_id
    protocol = tuple(d for d in (own.production_deployment, own.staging_deployment) if d)
    return Platform(
        name=PLATFORM,
        registry=DatatureViRegistry(client, download_client, org, protocol_deployments=protocol),
        serving=DatatureViServing(
            client, org, production_deployment=own.production_deployment, staging_deployment=own.staging_deployment
        ),
        traffic=DatatureViTraffic(
            client,
            org,
            settings.home.expanduser() / "datature-vi" / "snapshots",
            interval=timedelta(minutes=own.snapshot_interval_minutes),
        ),
    )


__all__ = [
    "DatatureViRegistry",
    "DatatureViServing",
    "DatatureViSettings",
    "DatatureViTraffic",
    "build",
    "checkpoint_id",
    "deployment_id",
    "deployment_target",
    "vi_message",
]
