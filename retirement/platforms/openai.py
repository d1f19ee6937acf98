"""OpenAI: retire a fine-tuned model (the unit is the whole model), back up its lineage, watch its usage."""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from retirement.backup.stream import http_export_item
from retirement.errors import (
    AuthError,
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
    TrafficSample,
    TrafficVerdict,
    VersionInfo,
)
from retirement.platforms.base import Platform
from retirement.platforms.http import paginate, send
from retirement.redact import redact, redact_text, remember
from retirement.settings import RetireSettings

PLATFORM = "openai"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
_MODEL_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9:._\-]{0,255}$")
_FILE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,127}$")
# Fine-tuning job states after which a job no longer reads its base model.
_FINISHED_JOB_STATES = frozenset({"succeeded", "failed", "cancelled"})
# Usage buckets the API allows, widest first, with the most buckets one page may hold.
_BUCKETS: tuple[tuple[str, int, int], ...] = (("1d", 86_400, 31), ("1h", 3_600, 168), ("1m", 60, 1_440))

CAPABILITIES = Capabilities(
    weights_exportable=False,
    exports=[
        "the model object (id, base model, owner, creation time)",
        "the fine-tuning job that produced it (hyperparameters, status, trained tokens)",
        "its checkpoints with their training metrics",
        "the training and validation files and the job's result files (metrics CSV)",
    ],
    not_exportable=[
        "the fine-tuned weights: OpenAI never lets them out; a deleted fine-tune can only be re-created "
        "by training again from the backed-up files, and the result will not be identical",
    ],
    soft_delete=None,
    restore=False,
    cutover=False,
    traffic=True,
    delete_unit="model",
    cascade=["the fine-tuned model and its weights on OpenAI; every call naming its id fails from then on"],
)


class OpenAISettings(BaseSettings):
    """Credentials and address of the OpenAI API (OpenAI's standard environment variables)."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("RETIRE_OPENAI_API_KEY", "OPENAI_API_KEY"),
        description="API key of the organisation that owns the fine-tunes (OPENAI_API_KEY); deleting needs Owner.",
    )
    base_url: str = Field(
        default=DEFAULT_BASE_URL,
        validation_alias=AliasChoices("RETIRE_OPENAI_BASE_URL", "OPENAI_BASE_URL"),
        description="Base URL of the API, including /v1 (OPENAI_BASE_URL, or RETIRE_OPENAI_BASE_URL to override).",
    )
    admin_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("RETIRE_OPENAI_ADMIN_KEY", "OPENAI_ADMIN_KEY"),
        description="Admin key for the organisation usage API (OPENAI_ADMIN_KEY); without it traffic is NODATA.",
    )
    org_id: str | None = Field(
        default=None,
        validation_alias=AliasChoices("RETIRE_OPENAI_ORG_ID", "OPENAI_ORG_ID"),
        description="Organisation id (org-...) sent as OpenAI-Organization and compared with a model's owned_by.",
    )
    timeout_seconds: float = Field(
        default=60.0,
        gt=0,
        validation_alias=AliasChoices("RETIRE_OPENAI_TIMEOUT_SECONDS"),
        description="Timeout of one HTTP request (seconds).",
    )

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/]+", value or ""):
            raise ValueError(f"OPENAI_BASE_URL {value!r} is not an http(s) URL; e.g. {DEFAULT_BASE_URL}")
        return value.rstrip("/") + "/"


def openai_error_message(body: Any) -> str | None:
    """The message of an OpenAI error body ``{"error": {"message", "type", "param", "code"}}``, with its code."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        message = str(error.get("message") or error.get("type") or "error")
        code = error.get("code") or error.get("type")
        return f"{message} ({code})" if code and str(code) not in message else message
    if isinstance(body, str) and body.strip():
        return body.strip()[:500]
    return None


def model_id(ref: ModelRef) -> str:
    """The OpenAI model id of ``ref``; refuses a version (the unit is the whole model) or a malformed id.

    Raises:
        InputError: naming ``model`` or ``version``.
    """
    if ref.version is not None:
        raise InputError(
            "version",
            f"OpenAI models have no versions, got {ref.version!r}",
            "the model id alone, e.g. 'ft:gpt-4o-mini-2024-07-18:my-org::abc123'",
        )
    if not _MODEL_ID_RE.match(ref.name):
        raise InputError("model", f"{ref.name!r} is not an OpenAI model id", "letters, digits, ':', '.', '_', '-'")
    return ref.name


def _from_unix(value: Any) -> datetime | None:
    return datetime.fromtimestamp(int(value), UTC) if isinstance(value, int | float) and value > 0 else None


def _json_item(path: str, document: Any) -> ExportItem:
    data = json.dumps(redact(document), indent=2, sort_keys=True, default=str).encode()
    return ExportItem(path=path, open=lambda: iter((data,)), size=len(data))


class _OpenAIBase:
    """The injected client and the one way to call the API."""

    def __init__(self, client: httpx.Client, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.client = client
        self._sleep = sleep

    def _get(self, url: str, **kwargs: Any) -> Any:
        return send(
            self.client, "GET", url, platform=PLATFORM, extract=openai_error_message, sleep=self._sleep, **kwargs
        ).json()

    def _list(self, url: str, limit: int = 100, headers: dict[str, str] | None = None) -> Iterator[dict[str, Any]]:
        """Every item of a cursor list (``after`` = id of the last item, while ``has_more``)."""

        def fetch(after: str | None) -> tuple[list[Any], str | None]:
            params: dict[str, Any] = {"limit": limit}
            if after:
                params["after"] = after
            page = self._get(url, params=params, headers=headers)
            data = list(page.get("data") or [])
            if not page.get("has_more"):
                return data, None
            if not data:
                raise PlatformError(PLATFORM, f"GET {url}: has_more is true on an empty page")
            return data, str(data[-1].get("id"))

        return paginate(fetch)

    def close(self) -> None:
        """Close the HTTP client."""
        self.client.close()


@dataclass
class _Lineage:
    """What OpenAI knows around one model: the model, every job of the organisation, the job that made it."""

    model: dict[str, Any]
    jobs: list[dict[str, Any]]
    job: dict[str, Any] | None
    checkpoints: list[dict[str, Any]]

    @property
    def checkpoint_models(self) -> list[str]:
        """The model ids of its checkpoints (``ft:...:ckpt-step-N``), each usable and shareable on its own."""
        return [str(c["fine_tuned_model_checkpoint"]) for c in self.checkpoints if c.get("fine_tuned_model_checkpoint")]


class OpenAIRegistry(_OpenAIBase):
    """Fine-tuned models of one OpenAI organisation: lineage, dependents, backup of what can be let out, delete.

    Dependents of a fine-tuned model are the fine-tunes made from it or from one of its checkpoints (a job
    still training, or the model a finished job produced while that model exists) and the projects it or
    a checkpoint is shared with through checkpoint permissions (``GET /fine_tuning/checkpoints/{id}/
    permissions``, which needs an admin key: without one the shares are unknown, and that blocks).

    Args:
        client: an httpx.Client with the API key and base URL (``build`` makes it).
        org_id: the organisation the key belongs to, compared with a model's ``owned_by``.
        admin_key: an admin key of the organisation, sent only to list checkpoint permissions.
        sleep: how to wait between retries and polls (tests inject a no-op).
        poll_attempts: how many times ``delete`` asks whether the model is gone before giving up.
    """

    name = PLATFORM
    capabilities = CAPABILITIES

    def __init__(
        self,
        client: httpx.Client,
        *,
        org_id: str | None = None,
        admin_key: SecretStr | None = None,
        sleep: Callable[[float], None] = time.sleep,
        poll_attempts: int = 10,
    ) -> None:
        super().__init__(client, sleep=sleep)
        self.org_id = org_id
        self._admin_key = admin_key if admin_key is not None and admin_key.get_secret_value() else None
        self.poll_attempts = poll_attempts

    # -- facts -----------------------------------------------------------------------------

    def _model(self, mid: str) -> dict[str, Any]:
        result: dict[str, Any] = self._get(f"models/{mid}")
        return result

    def _jobs(self) -> list[dict[str, Any]]:
        return list(self._list("fine_tuning/jobs"))

    @staticmethod
    def _producing_job(mid: str, jobs: list[dict[str, Any]]) -> dict[str, Any] | None:
        return next((job for job in jobs if job.get("fine_tuned_model") == mid), None)

    def _checkpoints(self, job_id: str) -> list[dict[str, Any]]:
        if not _FILE_ID_RE.match(job_id):
            raise PlatformError(PLATFORM, f"unexpected fine-tuning job id {job_id!r}")
        return list(self._list(f"fine_tuning/jobs/{job_id}/checkpoints"))

    def _lineage(self, mid: str) -> _Lineage:
        model = self._model(mid)
        jobs = self._jobs()
        job = self._producing_job(mid, jobs)
        checkpoints = self._checkpoints(str(job["id"])) if job else []
        return _Lineage(model=model, jobs=jobs, job=job, checkpoints=checkpoints)

    def _children(self, mid: str, lineage: _Lineage) -> list[Dependent]:
        """Fine-tunes made from the model or one of its checkpoints: jobs still training, models that still exist."""
        parents = {mid, *lineage.checkpoint_models}
        found = []
        for job in lineage.jobs:
            base = job.get("model")
            if base not in parents:
                continue
            status = str(job.get("status"))
            child = job.get("fine_tuned_model")
            if status not in _FINISHED_JOB_STATES:
                found.append(
                    Dependent(
                        kind="fine_tune_child",
                        name=str(job.get("id")),
                        detail=f"fine-tuning job training on top of {base}, status {status}",
                    )
                )
            elif child and _MODEL_ID_RE.match(str(child)) and self._exists(str(child)):
                found.append(
                    Dependent(
                        kind="fine_tune_child",
                        name=str(child),
                        detail=f"fine-tuned from {base} by job {job.get('id')}",
                    )
                )
        return found

    def _shares(self, mid: str, lineage: _Lineage) -> list[Dependent] | None:
        """The projects the model or one of its checkpoints is shared with; None when no admin key can say."""
        if self._admin_key is None:
            return None
        headers = {"Authorization": f"Bearer {self._admin_key.get_secret_value()}"}
        found = []
        for checkpoint in (mid, *lineage.checkpoint_models):
            url = f"fine_tuning/checkpoints/{quote(checkpoint, safe=':')}/permissions"
            try:
                permissions = list(self._list(url, headers=headers))
            except NotFoundError as exc:
                raise PlatformError(PLATFORM, f"the permissions of {checkpoint} could not be read: {exc}") from exc
            found += [
                Dependent(
                    kind="consumer",
                    name=str(p.get("project_id")),
                    detail=f"project {p.get('project_id')} may use {checkpoint} (checkpoint permission {p.get('id')})",
                )
                for p in permissions
            ]
        return found

    def _owned(self, mid: str, lineage: _Lineage) -> tuple[bool, str]:
        owner = lineage.model.get("owned_by")
        if self.org_id:
            owned = owner == self.org_id or (
                lineage.job is not None and lineage.job.get("organization_id") == self.org_id
            )
            return owned, f"it is owned by {owner!r}, not by this key's organisation {self.org_id!r} (OPENAI_ORG_ID)"
        return lineage.job is not None, (
            f"it is owned by {owner!r} and no fine-tuning job of this key's organisation produced it; "
            "set OPENAI_ORG_ID to confirm ownership"
        )

    def _dependents(self, mid: str, lineage: _Lineage) -> list[Dependent]:
        if not mid.startswith("ft:") or not self._owned(mid, lineage)[0]:
            return []  # a base model or another organisation's: refused by its rule, nothing here to look into
        return self._children(mid, lineage) + (self._shares(mid, lineage) or [])

    def _blockers(self, mid: str, lineage: _Lineage, dependents: list[Dependent]) -> list[DeletionBlocker]:
        if not mid.startswith("ft:"):
            return [
                DeletionBlocker(
                    code="base_model",
                    message=f"{mid} is a base model (owned by {lineage.model.get('owned_by')!r}); only fine-tuned "
                    "models (ids starting with 'ft:') can be deleted",
                    remedy="none: base models belong to OpenAI",
                )
            ]
        owned, why = self._owned(mid, lineage)
        if not owned:
            return [
                DeletionBlocker(
                    code="not_owner",
                    message=f"{mid} does not belong to this organisation: {why}",
                    remedy="use an API key of the owning organisation",
                )
            ]
        blockers: list[DeletionBlocker] = []
        for dep in dependents:
            if dep.kind == "fine_tune_child" and dep.name.startswith("ftjob-"):
                blockers.append(
                    DeletionBlocker(
                        code="fine_tune_in_progress",
                        message=f"fine-tuning job {dep.name} is training on top of {mid} ({dep.detail})",
                        remedy="wait for the job to finish or cancel it",
                    )
                )
            elif dep.kind == "fine_tune_child":
                blockers.append(
                    DeletionBlocker(
                        code="fine_tune_parent",
                        message=f"{dep.name} was {dep.detail}: it is a child of {mid}",
                        remedy=f"retire {dep.name} first",
                    )
                )
            else:
                blockers.append(
                    DeletionBlocker(
                        code="shared",
                        message=f"{mid} is shared: {dep.detail}",
                        remedy=f"once project {dep.name} no longer uses it, delete that checkpoint permission "
                        "(DELETE /v1/fine_tuning/checkpoints/{checkpoint}/permissions/{permission_id}, admin key)",
                    )
                )
        if self._admin_key is None:
            blockers.append(
                DeletionBlocker(
                    code="shares_unknown",
                    message=f"the projects {mid} is shared with (checkpoint permissions) cannot be read: listing "
                    "them needs an admin key",
                    remedy="set OPENAI_ADMIN_KEY to an admin key of the organisation",
                )
            )
        return blockers

    # -- Registry --------------------------------------------------------------------------

    def describe(self, ref: ModelRef) -> Dossier:
        """The model, the fine-tuning job that produced it, its checkpoints and metrics, its dependents.

        Raises:
            NotFoundError: the model does not exist (or this key cannot see it).
        """
        mid = model_id(ref)
        lineage = self._lineage(mid)
        model, job, checkpoints = lineage.model, lineage.job, lineage.checkpoints
        metrics: dict[str, Any] = {}
        if checkpoints:
            last = max(checkpoints, key=lambda c: int(c.get("step_number") or 0))
            metrics = dict(last.get("metrics") or {})
        if job and job.get("trained_tokens") is not None:
            metrics["trained_tokens"] = job["trained_tokens"]
        known = [
            "OpenAI does not let fine-tuned weights out: the backup holds the lineage and data to train again, "
            "not the model itself.",
            "The fine-tuning job, its files and checkpoints stay on OpenAI after the delete.",
        ]
        if model.get("shutdown_date"):
            known.append(f"OpenAI has scheduled this model's shutdown for {model['shutdown_date']}.")
        if mid.startswith("ft:") and job is None:
            known.append("No fine-tuning job of this organisation produced this model: its lineage is unknown.")
        dependents = self._dependents(mid, lineage)
        return Dossier(
            reference=ref,
            description=f"OpenAI model {mid}" + (f", fine-tuned from {job.get('model')}" if job else ""),
            versions=[
                VersionInfo(
                    version=mid,
                    created_at=_from_unix(model.get("created")),
                    stage="fine-tuned" if mid.startswith("ft:") else "base",
                )
            ],
            metrics=metrics,
            metadata=redact({"model": model, "fine_tuning_job": job, "checkpoints": checkpoints}),
            deployed_at=[f"OpenAI API: any client of the organisation can call model={mid!r}"],
            dependents=dependents,
            blockers=self._blockers(mid, lineage, dependents),
            known_issues=known,
            capabilities=self.capabilities,
        )

    def dependents(self, ref: ModelRef) -> list[Dependent]:
        """Fine-tunes made from it or its checkpoints (training, or their model still exists), and the projects
        it or a checkpoint is shared with.

        Raises:
            NotFoundError: the model does not exist.
        """
        mid = model_id(ref)
        return self._dependents(mid, self._lineage(mid))

    def deletion_blockers(self, ref: ModelRef) -> list[DeletionBlocker]:
        """Base model, not owned by this organisation, a child fine-tune (training or made), a share, shares unknown.

        Raises:
            NotFoundError: the model does not exist.
        """
        mid = model_id(ref)
        lineage = self._lineage(mid)
        return self._blockers(mid, lineage, self._dependents(mid, lineage))

    def export(self, ref: ModelRef) -> list[ExportItem]:
        """Model, job and checkpoints as JSON, plus the job's training, validation and result files (streamed)."""
        mid = model_id(ref)
        model = self._model(mid)
        job = self._producing_job(mid, self._jobs())
        checkpoints = self._checkpoints(str(job["id"])) if job else []
        items = [
            _json_item("metadata/model.json", model),
            _json_item("metadata/fine_tuning_job.json", job),
            _json_item("metadata/checkpoints.json", checkpoints),
        ]
        if job is None:
            return items
        roles: list[tuple[str, str]] = []
        for role in ("training_file", "validation_file"):
            if job.get(role):
                roles.append((role.removesuffix("_file"), str(job[role])))
        roles += [("result", str(fid)) for fid in job.get("result_files") or []]
        files: list[dict[str, Any]] = []
        for role, fid in roles:
            if not _FILE_ID_RE.match(fid):
                raise PlatformError(PLATFORM, f"unexpected file id {fid!r} in job {job.get('id')}")
            info: dict[str, Any] = self._get(f"files/{fid}")
            files.append({"role": role, **info})
            filename = re.sub(r"[^A-Za-z0-9._-]", "_", str(info.get("filename") or "content"))
            size = info.get("bytes")
            items.append(
                http_export_item(
                    self.client,
                    f"files/{role}/{fid}-{filename}",
                    f"files/{fid}/content",
                    platform=PLATFORM,
                    size=size if isinstance(size, int) else None,
                )
            )
        items.insert(3, _json_item("metadata/files.json", files))
        return items

    def set_active(self, ref: ModelRef, active: bool) -> None:
        """OpenAI has no soft step for a model.

        Raises:
            ConflictError: always.
        """
        raise ConflictError(
            f"openai: {ref} cannot be {'re' if active else 'de'}activated: OpenAI offers no deactivation or "
            "deprecation of a model (soft delete: none); skip the soft step"
        )

    def delete(self, ref: ModelRef) -> DeletionReceipt:
        """Re-check the blockers, delete the fine-tuned model, confirm OpenAI answers not-found.

        Raises:
            DeletionBlockedError: a blocker stands; nothing was sent.
            NotFoundError: the model was already gone.
            AuthError: the key lacks the Owner role (said plainly).
        """
        mid = model_id(ref)
        blockers = self.deletion_blockers(ref)
        if blockers:
            raise DeletionBlockedError(str(ref), [b.message for b in blockers])
        try:
            response = send(
                self.client,
                "DELETE",
                f"models/{mid}",
                platform=PLATFORM,
                extract=openai_error_message,
                sleep=self._sleep,
            )
        except AuthError as exc:
            raise AuthError(
                PLATFORM,
                f"deleting {mid} needs the Owner role in the organisation; this key was refused: {exc}",
                exc.status,
                exc.detail,
            ) from exc
        answer = response.json() if response.content else {}
        if isinstance(answer, dict) and answer.get("deleted") is False:
            raise PlatformError(PLATFORM, f"DELETE models/{mid} answered deleted=false", response.status_code)
        gone = False
        for attempt in range(self.poll_attempts):
            if not self.exists(ref):
                gone = True
                break
            if attempt < self.poll_attempts - 1:
                self._sleep(min(30.0, 2.0 * 2**attempt))
        return DeletionReceipt(
            reference=ref,
            removed=[f"fine-tuned model {mid}"],
            verified_gone=gone,
            platform_response=redact(answer) if isinstance(answer, dict) else {},
        )

    def exists(self, ref: ModelRef) -> bool:
        """True while GET /models/{id} answers."""
        return self._exists(model_id(ref))

    def _exists(self, mid: str) -> bool:
        try:
            self._model(mid)
        except NotFoundError:
            return False
        return True

    # -- Catalog ---------------------------------------------------------------------------

    def list_versions(self) -> Iterator[CatalogEntry]:
        """Every fine-tuned model the key can see (of ``org_id`` when set); one entry per model."""
        page = self._get("models")
        for model in page.get("data") or []:
            mid = str(model.get("id", ""))
            if not mid.startswith("ft:") or not _MODEL_ID_RE.match(mid):
                continue
            if self.org_id and model.get("owned_by") != self.org_id:
                continue
            yield CatalogEntry(
                reference=ModelRef(platform=PLATFORM, name=mid),
                created_at=_from_unix(model.get("created")) or datetime.fromtimestamp(0, UTC),
                stage="fine-tuned",
            )


def _bucket_plan(start: datetime, end: datetime) -> tuple[str, int, int, int, int]:
    """The widest bucket that tiles the window, and the window widened to bucket edges.

    Widening can only add requests from just outside the window, never hide one inside it.
    """
    s, e = math.floor(start.timestamp()), math.ceil(end.timestamp())
    for width, seconds, limit in _BUCKETS:
        if s % seconds == 0 and e % seconds == 0:
            return width, seconds, limit, s, e
    return "1m", 60, 1_440, s - s % 60, e + (-e % 60)


class OpenAIUsageTraffic(_OpenAIBase):
    """Requests to a model from the organisation usage API (completions), which needs an admin key.

    Args:
        client: the API's httpx.Client (the admin key is sent per request, never stored in the client).
        admin_key: the admin key; without it every sample is NODATA.
        sleep: how to wait between retries.
    """

    name = PLATFORM

    def __init__(
        self, client: httpx.Client, admin_key: SecretStr | None, *, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        super().__init__(client, sleep=sleep)
        self._admin_key = admin_key

    def sample(self, ref: ModelRef, start: datetime, end: datetime) -> TrafficSample:
        """Sum of ``num_model_requests`` for the model over the window; coverage from the buckets returned."""

        def result(verdict: TrafficVerdict, detail: str, **kw: Any) -> TrafficSample:
            return TrafficSample(
                source=self.name, reference=ref, start=start, end=end, verdict=verdict, detail=detail, **kw
            )

        if self._admin_key is None or not self._admin_key.get_secret_value():
            return result(
                TrafficVerdict.NODATA,
                "OPENAI_ADMIN_KEY is needed to read the organisation usage API; no usage was read",
            )
        if start.tzinfo is None or end.tzinfo is None or end <= start:
            return result(TrafficVerdict.ERROR, "the window must be timezone-aware with start before end")
        try:
            mid = model_id(ref)
            width, seconds, limit, s, e = _bucket_plan(start, end)
            headers = {"Authorization": f"Bearer {self._admin_key.get_secret_value()}"}
            covered: set[int] = set()
            requests = 0

            def fetch(page: str | None) -> tuple[list[Any], str | None]:
                params: dict[str, Any] = {
                    "start_time": s,
                    "end_time": e,
                    "bucket_width": width,
                    "models": [mid],
                    "group_by": ["model"],
                    "limit": limit,
                }
                if page:
                    params["page"] = page
                body = self._get("organization/usage/completions", params=params, headers=headers)
                nxt = body.get("next_page") if body.get("has_more") else None
                return list(body.get("data") or []), nxt

            for bucket in paginate(fetch):
                b_start, b_end = int(bucket.get("start_time") or 0), int(bucket.get("end_time") or 0)
                covered.update(range(max(b_start, s), min(b_end, e), seconds))
                for row in bucket.get("results") or []:
                    if row.get("model") in (mid, None):
                        requests += int(row.get("num_model_requests") or 0)
        except (RetirementError, httpx.HTTPError, ValueError, TypeError) as exc:
            return result(TrafficVerdict.ERROR, redact_text(f"usage API call failed: {exc}"))
        expected = max(1, (e - s) // seconds)
        coverage = min(1.0, len(covered) / expected)
        detail = f"{requests} requests in {len(covered)} of {expected} {width} buckets"
        if requests > 0:
            return result(TrafficVerdict.ACTIVE, detail, requests=requests, coverage=coverage)
        if coverage < 1.0:
            return result(
                TrafficVerdict.NODATA,
                detail + ": the usage API does not cover the whole window yet",
                requests=None,
                coverage=coverage,
            )
        return result(TrafficVerdict.IDLE, detail, requests=0, coverage=coverage)


def build(settings: RetireSettings) -> Platform:
    """The OpenAI adapters from OPENAI_* settings, sharing one httpx.Client.

    Raises:
        ConfigError: OPENAI_API_KEY is not set.
    """
    del settings  # OpenAI reads its own settings class
    own = OpenAISettings()
    remember(own.api_key, own.admin_key)
    if own.api_key is None or not own.api_key.get_secret_value():
        raise ConfigError(
            "openai: OPENAI_API_KEY is not set; set it to an API key of the organisation that owns the model"
        )
    headers = {"Authorization": f"Bearer {own.api_key.get_secret_value()}"}
    if own.org_id:
        headers["OpenAI-Organization"] = own.org_id
    client = httpx.Client(base_url=own.base_url, headers=headers, timeout=own.timeout_seconds)
    return Platform(
        name=PLATFORM,
        registry=OpenAIRegistry(client, org_id=own.org_id, admin_key=own.admin_key),
        serving=None,
        traffic=OpenAIUsageTraffic(client, own.admin_key),
    )


__all__ = [
    "CAPABILITIES",
    "OpenAIRegistry",
    "OpenAISettings",
    "OpenAIUsageTraffic",
    "build",
    "model_id",
    "openai_error_message",
]
