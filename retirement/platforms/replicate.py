"""Replicate: retire a model version (or a whole private model), switch deployments, count predictions."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

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
from retirement.platforms.http import default_message, paginate, send
from retirement.redact import redact, redact_text, remember
from retirement.settings import RetireSettings

PLATFORM = "replicate"
DEFAULT_BASE_URL = "https://api.replicate.com/v1"
_SLUG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,127}$")
NAME_NOT_REUSABLE = "Replicate never lets a deleted model's name be created again: owner/name is gone for good."

CAPABILITIES = Capabilities(
    weights_exportable=False,
    exports=[
        "the model's metadata (owner, name, visibility, description, URLs, run count)",
        "every version's metadata (id, created_at, cog_version)",
        "every version's OpenAPI schema (its inputs and outputs)",
    ],
    not_exportable=[
        "the weights and the Cog image: Replicate offers no export of a version's weights",
        "predictions' inputs and outputs",
        "the model name: a deleted name cannot be created again",
    ],
    soft_delete=None,
    restore=False,
    cutover=True,
    traffic=True,
    delete_unit="version",
    cascade=[
        "deleting a version removes its image and weights on Replicate",
        "deleting the whole model deletes every version first, then the model page and its name",
    ],
)


class ReplicateSettings(BaseSettings):
    """Token, address and deployment names for Replicate (REPLICATE_API_TOKEN is Replicate's own variable)."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    api_token: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("RETIRE_REPLICATE_API_TOKEN", "REPLICATE_API_TOKEN"),
        description="API token (r8_...) of the account that owns the model (REPLICATE_API_TOKEN).",
    )
    base_url: str = Field(
        default=DEFAULT_BASE_URL,
        validation_alias=AliasChoices("RETIRE_REPLICATE_BASE_URL"),
        description="Base URL of the API, including /v1 (RETIRE_REPLICATE_BASE_URL).",
    )
    production_deployment: str | None = Field(
        default=None,
        validation_alias=AliasChoices("RETIRE_REPLICATE_PRODUCTION_DEPLOYMENT"),
        description="Deployment 'owner/name' serving production; empty = the one deployment running the model.",
    )
    staging_deployment: str | None = Field(
        default=None,
        validation_alias=AliasChoices("RETIRE_REPLICATE_STAGING_DEPLOYMENT"),
        description="Deployment 'owner/name' used as staging; needed to stage a replacement.",
    )
    smoke_input: str | None = Field(
        default=None,
        validation_alias=AliasChoices("RETIRE_REPLICATE_SMOKE_INPUT"),
        description="JSON object sent as the input of each smoke-test prediction on the staging deployment.",
    )
    timeout_seconds: float = Field(
        default=60.0,
        gt=0,
        validation_alias=AliasChoices("RETIRE_REPLICATE_TIMEOUT_SECONDS"),
        description="Timeout of one HTTP request (seconds).",
    )

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/]+", value or ""):
            raise ValueError(f"RETIRE_REPLICATE_BASE_URL {value!r} is not an http(s) URL; e.g. {DEFAULT_BASE_URL}")
        return value.rstrip("/") + "/"

    @field_validator("production_deployment", "staging_deployment")
    @classmethod
    def _deployment(cls, value: str | None) -> str | None:
        if value:
            split_slug(value, "deployment")
        return value or None

    @field_validator("smoke_input")
    @classmethod
    def _smoke(cls, value: str | None) -> str | None:
        if value and not isinstance(json.loads(value), dict):
            raise ValueError('RETIRE_REPLICATE_SMOKE_INPUT must be a JSON object, e.g. {"prompt": "hello"}')
        return value or None


def replicate_error_message(body: Any) -> str | None:
    """The words of an RFC 7807 problem+json body ``{type, title, status, detail, instance}``."""
    if isinstance(body, dict) and (body.get("detail") or body.get("title")):
        detail, title = body.get("detail"), body.get("title")
        if isinstance(detail, str) and detail:
            return f"{title}: {detail}" if title and title not in detail else detail
    return default_message(body)


def split_slug(text: str, field: str = "model") -> tuple[str, str]:
    """``owner/name`` into its two parts.

    Raises:
        InputError: naming ``field`` when ``text`` is not of that form.
    """
    owner, sep, name = (text or "").partition("/")
    if not sep or not _SLUG_RE.match(owner) or not _SLUG_RE.match(name):
        raise InputError(field, f"{text!r} is not 'owner/name'", "'owner/name', e.g. 'acme/churn-model'")
    return owner, name


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _json_item(path: str, document: Any) -> ExportItem:
    data = json.dumps(redact(document), indent=2, sort_keys=True, default=str).encode()
    return ExportItem(path=path, open=lambda: iter((data,)), size=len(data))


class _ReplicateBase:
    """The injected client and the one way to call the API."""

    def __init__(self, client: httpx.Client, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.client = client
        self._sleep = sleep

    def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        return send(
            self.client, method, url, platform=PLATFORM, extract=replicate_error_message, sleep=self._sleep, **kwargs
        )

    def _get(self, url: str, **kwargs: Any) -> Any:
        return self._send("GET", url, **kwargs).json()

    def _pages(self, url: str, params: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """Every result of a listing, following the full-URL ``next`` cursors (only on the API's own host)."""
        base = urlsplit(str(self.client.base_url))

        def fetch(cursor: str | None) -> tuple[list[Any], str | None]:
            body = self._get(cursor, params=None) if cursor else self._get(url, params=params)
            nxt = body.get("next")
            if nxt:
                parts = urlsplit(str(nxt))
                if (parts.scheme, parts.netloc) != (base.scheme, base.netloc):
                    raise PlatformError(PLATFORM, f"refusing to follow a next page on another host: {parts.hostname}")
            return list(body.get("results") or []), nxt or None

        return paginate(fetch)

    def _deployments(self) -> list[dict[str, Any]]:
        return list(self._pages("deployments"))

    def close(self) -> None:
        """Close the HTTP client."""
        self.client.close()


class ReplicateRegistry(_ReplicateBase):
    """Models and versions of one Replicate account: dossier, blockers, metadata backup, delete.

    Args:
        client: an httpx.Client with the token and base URL (``build`` makes it).
        production_deployment: 'owner/name' of the production deployment the cutover switches; None = the one
            deployment running the model.
        staging_deployment: 'owner/name' of the staging deployment the staging step points at the replacement.
        sleep: how to wait between retries and polls (tests inject a no-op).
        poll_attempts: how many times a version delete is polled before giving up.
        poll_interval: seconds between two polls.
    """

    name = PLATFORM
    capabilities = CAPABILITIES

    def __init__(
        self,
        client: httpx.Client,
        *,
        production_deployment: str | None = None,
        staging_deployment: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        poll_attempts: int = 30,
        poll_interval: float = 5.0,
    ) -> None:
        super().__init__(client, sleep=sleep)
        self.production_deployment = production_deployment
        self.staging_deployment = staging_deployment
        self.poll_attempts = poll_attempts
        self.poll_interval = poll_interval

    def _moved_by_protocol(self, slug: str, model: str, deployments: list[dict[str, Any]]) -> bool:
        """True when the staging or cutover step moves deployment ``slug`` (running a version of ``model``)."""
        if slug in (self.production_deployment, self.staging_deployment):
            return True
        if self.production_deployment:
            return False
        running = [d for d in deployments if (d.get("current_release") or {}).get("model") == model]
        return [f"{d.get('owner')}/{d.get('name')}" for d in running] == [slug]

    def _check(self, ref: ModelRef) -> tuple[str, str]:
        owner, name = split_slug(ref.name)
        return owner, name

    def _model(self, owner: str, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._get(f"models/{owner}/{name}")
        return result

    def _versions(self, owner: str, name: str) -> list[dict[str, Any]]:
        return list(self._pages(f"models/{owner}/{name}/versions"))

    def _version(self, owner: str, name: str, version: str) -> dict[str, Any]:
        result: dict[str, Any] = self._get(f"models/{owner}/{name}/versions/{version}")
        return result

    def _account(self) -> str:
        return str(self._get("account").get("username") or "")

    def _target_versions(self, ref: ModelRef) -> list[str]:
        owner, name = self._check(ref)
        if ref.version is not None:
            return [str(self._version(owner, name, ref.version)["id"])]
        return [str(v["id"]) for v in self._versions(owner, name)]

    def _trainings_from(self, versions: set[str]) -> list[dict[str, Any]]:
        return [t for t in self._pages("trainings") if t.get("version") in versions]

    # -- Registry --------------------------------------------------------------------------

    def describe(self, ref: ModelRef) -> Dossier:
        """Model and versions, where each version is deployed, what blocks the delete.

        Raises:
            NotFoundError: the model or version does not exist.
        """
        owner, name = self._check(ref)
        model = self._model(owner, name)
        versions = self._versions(owner, name)
        if ref.version is not None and ref.version not in {str(v.get("id")) for v in versions}:
            self._version(owner, name, ref.version)  # raises the platform's own not-found
        deployments = self._deployments()
        serving = {
            str(d.get("current_release", {}).get("version")): f"deployment {d.get('owner')}/{d.get('name')}"
            for d in deployments
            if (d.get("current_release") or {}).get("model") == ref.name
        }
        latest = str((model.get("latest_version") or {}).get("id") or "")
        infos = [
            VersionInfo(
                version=str(v.get("id")),
                created_at=_time(v.get("created_at")),
                stage="deployed" if str(v.get("id")) in serving else ("latest" if str(v.get("id")) == latest else None),
                aliases=[serving[str(v.get("id"))]] if str(v.get("id")) in serving else [],
            )
            for v in versions
        ]
        wanted = {ref.version} if ref.version else {str(v.get("id")) for v in versions}
        known = [
            NAME_NOT_REUSABLE if ref.version is None else "Deleting a version cannot be undone.",
            "Replicate lets no weights out: a backup holds metadata and schemas only.",
            "Replicate refuses a version delete when someone else ran it, when it is a fine-tune base or when "
            "another version is overridden to use it; those are only known when the delete is refused.",
        ]
        return Dossier(
            reference=ref,
            description=str(model.get("description") or ""),
            versions=infos,
            metrics={"run_count": model.get("run_count")} if model.get("run_count") is not None else {},
            metadata=redact({k: v for k, v in model.items() if k not in ("default_example", "latest_version")}),
            deployed_at=[where for version, where in serving.items() if version in wanted],
            dependents=self._dependents(ref, deployments, wanted),
            blockers=self._blockers(ref, model, deployments, wanted),
            known_issues=known,
            capabilities=self.capabilities,
        )

    def _dependents(self, ref: ModelRef, deployments: list[dict[str, Any]], versions: set[str]) -> list[Dependent]:
        found = [
            Dependent(
                kind="deployment",
                name=f"{d.get('owner')}/{d.get('name')}",
                detail=f"release {d['current_release'].get('number')} runs this version",
                movable=self._moved_by_protocol(f"{d.get('owner')}/{d.get('name')}", ref.name, deployments),
            )
            for d in deployments
            if (d.get("current_release") or {}).get("version") in versions
        ]
        found += [
            Dependent(
                kind="fine_tune_child",
                name=str(t.get("id")),
                detail=f"training from version {t.get('version')} into {t.get('model')}, status {t.get('status')}",
            )
            for t in self._trainings_from(versions)
        ]
        return found

    def dependents(self, ref: ModelRef) -> list[Dependent]:
        """Deployments running the version(s) and this account's trainings that started from them."""
        return self._dependents(ref, self._deployments(), set(self._target_versions(ref)))

    def _blockers(
        self, ref: ModelRef, model: dict[str, Any], deployments: list[dict[str, Any]], versions: set[str]
    ) -> list[DeletionBlocker]:
        blockers: list[DeletionBlocker] = []
        account = self._account()
        if model.get("owner") != account:
            blockers.append(
                DeletionBlocker(
                    code="not_owner",
                    message=f"{ref.name} is owned by {model.get('owner')!r}, not by this token's account {account!r}",
                    remedy="use a token of the owning account",
                )
            )
        if model.get("visibility") != "private":
            blockers.append(
                DeletionBlocker(
                    code="not_private",
                    message=f"{ref.name} is {model.get('visibility')}; Replicate deletes only private models "
                    "and their versions",
                    remedy="make the model private on Replicate first",
                )
            )
        for d in deployments:
            release = d.get("current_release") or {}
            if release.get("version") in versions:
                slug = f"{d.get('owner')}/{d.get('name')}"
                moved = self._moved_by_protocol(slug, ref.name, deployments)
                blockers.append(
                    DeletionBlocker(
                        code="deployment",
                        message=f"deployment {slug} runs version {release.get('version')}",
                        remedy="the cutover switches it to the replacement"
                        if moved
                        else f"switch deployment {slug} to another version or delete it (it is neither "
                        "RETIRE_REPLICATE_PRODUCTION_DEPLOYMENT nor RETIRE_REPLICATE_STAGING_DEPLOYMENT)",
                        cleared_by_protocol=moved,
                    )
                )
        for t in self._trainings_from(versions):
            blockers.append(
                DeletionBlocker(
                    code="fine_tune_base",
                    message=f"version {t.get('version')} is the base of training {t.get('id')} ({t.get('model')})",
                    remedy="a fine-tune base cannot be deleted while the fine-tune exists",
                )
            )
        return blockers

    def deletion_blockers(self, ref: ModelRef) -> list[DeletionBlocker]:
        """Not owner, not private, a deployment runs it, a training of this account started from it.

        Raises:
            NotFoundError: the model or version does not exist.
        """
        owner, name = self._check(ref)
        model = self._model(owner, name)
        versions = set(self._target_versions(ref))
        return self._blockers(ref, model, self._deployments(), versions)

    def export(self, ref: ModelRef) -> list[ExportItem]:
        """The model's metadata, each version's metadata and each version's OpenAPI schema, as JSON."""
        owner, name = self._check(ref)
        model = self._model(owner, name)
        versions = self._versions(owner, name)
        if ref.version is not None:
            versions = [v for v in versions if str(v.get("id")) == ref.version] or [
                self._version(owner, name, ref.version)
            ]
        items = [_json_item("metadata/model.json", model)]
        for v in versions:
            vid = str(v.get("id"))
            meta = {k: val for k, val in v.items() if k != "openapi_schema"}
            items.append(_json_item(f"versions/{vid}/version.json", meta))
            items.append(_json_item(f"versions/{vid}/openapi_schema.json", v.get("openapi_schema") or {}))
        return items

    def set_active(self, ref: ModelRef, active: bool) -> None:
        """Replicate has no soft step for a model or a version.

        Raises:
            ConflictError: always.
        """
        raise ConflictError(
            f"replicate: {ref} cannot be {'re' if active else 'de'}activated: Replicate offers no deactivation or "
            "deprecation (soft delete: none); skip the soft step"
        )

    def _delete_version(self, ref: ModelRef, owner: str, name: str, vid: str) -> bool:
        url = f"models/{owner}/{name}/versions/{vid}"
        try:
            self._send("DELETE", url)
        except (ConflictError, InputError) as exc:
            raise DeletionBlockedError(f"{ref.name}@{vid}", [f"Replicate refused: {exc}"]) from exc
        except PlatformError as exc:
            # 403 on a token that reads the model is a refusal of this delete, not bad credentials.
            if exc.status in (403, 405, 412):
                raise DeletionBlockedError(f"{ref.name}@{vid}", [f"Replicate refused: {exc}"]) from exc
            raise
        for attempt in range(self.poll_attempts):
            try:
                self._get(url)
            except NotFoundError:
                return True
            if attempt < self.poll_attempts - 1:
                self._sleep(self.poll_interval)
        return False

    def delete(self, ref: ModelRef) -> DeletionReceipt:
        """Re-check the blockers, delete the version (or every version, then the model), confirm each is gone.

        Version deletes are asynchronous (202): each is polled until the API answers not-found, at most
        ``poll_attempts`` times. A refusal from Replicate (someone else ran it, fine-tune base, override)
        becomes DeletionBlockedError with Replicate's words.

        Raises:
            DeletionBlockedError: a blocker stands or Replicate refused; nothing further was deleted.
            NotFoundError: it was already gone.
        """
        owner, name = self._check(ref)
        blockers = self.deletion_blockers(ref)
        if blockers:
            raise DeletionBlockedError(str(ref), [b.message for b in blockers])
        removed: list[str] = []
        all_gone = True
        for vid in self._target_versions(ref):
            try:
                gone = self._delete_version(ref, owner, name, vid)
            except DeletionBlockedError as exc:
                reasons = [*exc.blockers]
                if removed:
                    reasons.append("already deleted before the refusal: " + ", ".join(removed))
                raise DeletionBlockedError(str(ref), reasons) from exc
            removed.append(f"version {vid}")
            all_gone = all_gone and gone
        response: dict[str, Any] = {"versions_deleted": len(removed)}
        if ref.version is None:
            if not all_gone:
                return DeletionReceipt(reference=ref, removed=removed, verified_gone=False, platform_response=response)
            try:
                self._send("DELETE", f"models/{owner}/{name}")
            except (ConflictError, InputError) as exc:
                raise DeletionBlockedError(str(ref), [f"Replicate refused the model delete: {exc}"]) from exc
            removed.append(f"model {ref.name} (its name can never be used again)")
            all_gone = not self.exists(ref)
        return DeletionReceipt(reference=ref, removed=removed, verified_gone=all_gone, platform_response=response)

    def exists(self, ref: ModelRef) -> bool:
        """True while the model (or the version) answers."""
        owner, name = self._check(ref)
        try:
            if ref.version is None:
                self._model(owner, name)
            else:
                self._version(owner, name, ref.version)
        except NotFoundError:
            return False
        return True

    # -- Catalog ---------------------------------------------------------------------------

    def list_versions(self) -> Iterator[CatalogEntry]:
        """Every version of the account's models that GET /models lists, paginated to the end."""
        account = self._account()
        serving = {
            str((d.get("current_release") or {}).get("version")): f"{d.get('owner')}/{d.get('name')}"
            for d in self._deployments()
        }
        for model in self._pages("models"):
            if model.get("owner") != account:
                continue
            slug = f"{model.get('owner')}/{model.get('name')}"
            owner, name = split_slug(slug)
            for v in self._versions(owner, name):
                vid = str(v.get("id"))
                yield CatalogEntry(
                    reference=ModelRef(platform=PLATFORM, name=slug, version=vid),
                    created_at=_time(v.get("created_at")) or datetime.fromtimestamp(0, UTC),
                    stage="production" if vid in serving else None,
                    dependents=[Dependent(kind="deployment", name=serving[vid])] if vid in serving else [],
                )


class ReplicateServing(_ReplicateBase):
    """Production and staging are Replicate deployments; a switch PATCHes the deployment's version.

    Args:
        client: the API's httpx.Client.
        production_deployment: 'owner/name' of the production deployment; None = the one running the model.
        staging_deployment: 'owner/name' of the staging deployment; None = staging is not possible.
        smoke_input: the input of each smoke-test prediction.
        sleep: how to wait between retries.
        clock: a monotonic clock for latencies.
    """

    name = PLATFORM

    def __init__(
        self,
        client: httpx.Client,
        *,
        production_deployment: str | None = None,
        staging_deployment: str | None = None,
        smoke_input: dict[str, Any] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(client, sleep=sleep)
        self.production_deployment = production_deployment
        self.staging_deployment = staging_deployment
        self.smoke_input = smoke_input
        self._clock = clock

    def _production(self, model: str) -> dict[str, Any] | None:
        if self.production_deployment:
            owner, name = split_slug(self.production_deployment, "production_deployment")
            result: dict[str, Any] = self._get(f"deployments/{owner}/{name}")
            return result
        running = [d for d in self._deployments() if (d.get("current_release") or {}).get("model") == model]
        if len(running) > 1:
            names = ", ".join(f"{d.get('owner')}/{d.get('name')}" for d in running)
            raise ConflictError(
                f"replicate: {model} runs on several deployments ({names}); "
                "set RETIRE_REPLICATE_PRODUCTION_DEPLOYMENT to the production one"
            )
        return running[0] if running else None

    def production(self, model: ModelRef) -> ModelRef | None:
        """The version the production deployment runs, if it runs this model."""
        split_slug(model.name)
        deployment = self._production(model.name)
        release = (deployment or {}).get("current_release") or {}
        if release.get("model") != model.name or not release.get("version"):
            return None
        return ModelRef(platform=PLATFORM, name=model.name, version=str(release["version"]))

    def _patch(self, deployment: dict[str, Any], version: str) -> None:
        owner, name = split_slug(f"{deployment.get('owner')}/{deployment.get('name')}", "deployment")
        self._send("PATCH", f"deployments/{owner}/{name}", json={"version": version})

    def switch(self, to: ModelRef, *, replacing: ModelRef | None = None) -> ModelRef | None:
        """Point the production deployment at ``to``; return the version it ran before (for rollback).

        Raises:
            InputError: ``to`` has no version.
            ConflictError: no deployment runs the model and none is configured.
        """
        if to.version is None:
            raise InputError("replacement", f"{to} has no version", "'owner/name@version_id'")
        split_slug(to.name)
        deployment = self._production(to.name)
        if deployment is None:
            raise ConflictError(f"replicate: no deployment runs {to.name}; set RETIRE_REPLICATE_PRODUCTION_DEPLOYMENT")
        release = deployment.get("current_release") or {}
        previous = (
            ModelRef(platform=PLATFORM, name=str(release["model"]), version=str(release["version"]))
            if release.get("model") and release.get("version")
            else None
        )
        if previous != to:
            self._patch(deployment, to.version)
        return previous

    def preflight(self, request: RetirementRequest) -> list[str]:
        """With a replacement: a staging deployment of the replacement's model and a smoke input are configured,
        and the production deployment (configured, or the one running the model) runs the retired model.

        A Replicate deployment runs versions of one model and a PATCH changes only its version, so staging
        or switching on a deployment of another model would replace that model's release.
        """
        old, new = request.ref, request.replacement_ref
        if new is None:
            return []
        problems = []
        if new.version is None:
            problems.append(f"replacement {new} names no version; remedy: name it as 'owner/name@version_id'")
        if not self.staging_deployment:
            problems.append(
                f"RETIRE_REPLICATE_STAGING_DEPLOYMENT is not set: the staging step needs a deployment of {new.name} "
                f"to stage {new} on; remedy: set it to 'owner/name' of one"
            )
        else:
            problems += self._serves_model("staging", self.staging_deployment, new.name, "STAGING")
        if self.smoke_input is None:
            problems.append(
                f"RETIRE_REPLICATE_SMOKE_INPUT is not set: the smoke test of {new} in staging sends it as the input "
                'of each prediction; remedy: set it to a JSON object the model accepts, e.g. {"prompt": "hello"}'
            )
        if self.production_deployment:
            wrong = self._serves_model("production", self.production_deployment, old.name, "PRODUCTION")
            problems += wrong
            switched = not wrong
        else:  # several deployments of the model and none named production: ``production`` says so
            running = [d for d in self._deployments() if (d.get("current_release") or {}).get("model") == old.name]
            switched = bool(running)
        if switched and new.name != old.name:
            problems.append(
                f"replacement {new} is a version of another model: the production deployment runs {old.name} and "
                f"a switch changes only its version; remedy: name a version of {old.name} as the replacement"
            )
        return problems

    def _serves_model(self, role: str, slug: str, model: str, setting: str) -> list[str]:
        """Empty when deployment ``slug`` exists and runs ``model``; else why not, with the remedy."""
        owner, name = split_slug(slug, f"{role}_deployment")
        variable = f"RETIRE_REPLICATE_{setting}_DEPLOYMENT"
        try:
            deployment = self._get(f"deployments/{owner}/{name}")
        except NotFoundError:
            return [f"{role} deployment {slug} ({variable}) does not exist on Replicate; remedy: set {variable}"]
        runs = (deployment.get("current_release") or {}).get("model")
        if runs == model:
            return []
        return [
            f"{role} deployment {slug} ({variable}) runs {runs}, not {model}: a Replicate deployment runs versions "
            f"of one model, so the {role} step would replace {runs}'s release; remedy: set {variable} to a "
            f"deployment of {model}"
        ]

    def deploy_staging(self, ref: ModelRef) -> None:
        """Point the staging deployment at ``ref``, once it is known to run ``ref``'s model and the smoke test
        has its input (nothing is PATCHed otherwise).

        Raises:
            ConfigError: no staging deployment or no smoke input is configured.
            ConflictError: the staging deployment runs another model.
        """
        if ref.version is None:
            raise InputError("replacement", f"{ref} has no version", "'owner/name@version_id'")
        if not self.staging_deployment:
            raise ConfigError(
                "replicate: no staging deployment is configured; set RETIRE_REPLICATE_STAGING_DEPLOYMENT to "
                "'owner/name' of a deployment to stage on"
            )
        if self.smoke_input is None:
            raise ConfigError(
                f"replicate: RETIRE_REPLICATE_SMOKE_INPUT is not set: {ref} is not staged without the input of its "
                'smoke test; set it to a JSON object the model accepts, e.g. {"prompt": "hello"}'
            )
        wrong = self._serves_model("staging", self.staging_deployment, ref.name, "STAGING")
        if wrong:
            raise ConflictError(f"replicate: {wrong[0]}")
        owner, name = split_slug(self.staging_deployment, "staging_deployment")
        self._patch({"owner": owner, "name": name}, ref.version)

    def smoke_test(self, ref: ModelRef, requests: int = 5) -> SmokeResult:
        """Run ``requests`` predictions on the staging deployment (sync mode) and report failures and latency."""
        if not self.staging_deployment or self.smoke_input is None:
            return SmokeResult(
                reference=ref,
                requests=0,
                errors=0,
                ok=False,
                detail="set RETIRE_REPLICATE_STAGING_DEPLOYMENT and RETIRE_REPLICATE_SMOKE_INPUT to smoke-test",
            )
        owner, name = split_slug(self.staging_deployment, "staging_deployment")
        latencies: list[float] = []
        failures: list[str] = []
        for _ in range(requests):
            started = self._clock()
            try:
                body = self._send(
                    "POST",
                    f"deployments/{owner}/{name}/predictions",
                    json={"input": self.smoke_input},
                    headers={"Prefer": "wait=60"},
                ).json()
            except RetirementError as exc:
                failures.append(str(exc))
                continue
            latencies.append((self._clock() - started) * 1000)
            if body.get("status") != "succeeded":
                failures.append(f"prediction {body.get('id')} {body.get('status')}: {body.get('error') or ''}")
        latencies.sort()
        p95 = latencies[max(0, round(0.95 * len(latencies)) - 1)] if latencies else None
        return SmokeResult(
            reference=ref,
            requests=requests,
            errors=len(failures),
            p95_latency_ms=p95,
            ok=not failures and requests > 0,
            detail=redact_text("; ".join(failures[:5])),
        )


class ReplicatePredictionsTraffic(_ReplicateBase):
    """Predictions of this account over a window, counted client-side for the version (or the model)."""

    name = PLATFORM

    def sample(self, ref: ModelRef, start: datetime, end: datetime) -> TrafficSample:
        """Predictions created in ``[start, end)`` naming the version; full coverage once the listing ended."""

        def result(verdict: TrafficVerdict, detail: str, **kw: Any) -> TrafficSample:
            return TrafficSample(
                source=self.name, reference=ref, start=start, end=end, verdict=verdict, detail=detail, **kw
            )

        if start.tzinfo is None or end.tzinfo is None or end <= start:
            return result(TrafficVerdict.ERROR, "the window must be timezone-aware with start before end")
        requests = errors = 0
        try:
            split_slug(ref.name)
            params = {
                "created_after": start.astimezone(UTC).isoformat().replace("+00:00", "Z"),
                "created_before": end.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            }
            for p in self._pages("predictions", params):
                if ref.version is not None and p.get("version") != ref.version:
                    continue
                if ref.version is None and p.get("model") != ref.name:
                    continue
                created = _time(p.get("created_at"))
                if created is not None and not (start <= created < end):
                    continue
                requests += 1
                errors += p.get("status") == "failed"
        except (RetirementError, httpx.HTTPError, ValueError, TypeError) as exc:
            return result(TrafficVerdict.ERROR, redact_text(f"listing predictions failed: {exc}"))
        detail = f"{requests} predictions by this account's token in the window (listing read to the end)"
        # The listing can only vouch for the part of the window that has already happened.
        seen = (datetime.now(UTC) - start) / (end - start)
        coverage = min(1.0, max(0.0, seen))
        if not requests and coverage < 1.0:
            detail += f"; the window is not over ({coverage:.0%} of it has happened): missing data is never zero"
            return result(TrafficVerdict.NODATA, detail, coverage=coverage)
        verdict = TrafficVerdict.ACTIVE if requests else TrafficVerdict.IDLE
        return result(verdict, detail, requests=requests, errors=errors, coverage=coverage)


def build(settings: RetireSettings) -> Platform:
    """The Replicate adapters from REPLICATE_API_TOKEN and RETIRE_REPLICATE_* settings, sharing one client.

    Raises:
        ConfigError: REPLICATE_API_TOKEN is not set.
    """
    del settings  # Replicate reads its own settings class
    own = ReplicateSettings()
    remember(own.api_token)
    if own.api_token is None or not own.api_token.get_secret_value():
        raise ConfigError(
            "replicate: REPLICATE_API_TOKEN is not set; set it to a token of the account owning the model"
        )
    client = httpx.Client(
        base_url=own.base_url,
        headers={"Authorization": f"Bearer {own.api_token.get_secret_value()}"},
        timeout=own.timeout_seconds,
    )
    return Platform(
        name=PLATFORM,
        registry=ReplicateRegistry(
            client, production_deployment=own.production_deployment, staging_deployment=own.staging_deployment
        ),
        serving=ReplicateServing(
            client,
            production_deployment=own.production_deployment,
            staging_deployment=own.staging_deployment,
            smoke_input=json.loads(own.smoke_input) if own.smoke_input else None,
        ),
        traffic=ReplicatePredictionsTraffic(client),
    )


__all__ = [
    "CAPABILITIES",
    "NAME_NOT_REUSABLE",
    "ReplicatePredictionsTraffic",
    "ReplicateRegistry",
    "ReplicateServing",
    "ReplicateSettings",
    "build",
    "replicate_error_message",
    "split_slug",
]
