"""Bailo (gchq/Bailo, API v2): the whole model is the unit of retirement; its releases are listed as versions."""

from __future__ import annotations

import hashlib
import json
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from retirement.backup.stream import http_export_item
from retirement.errors import (
    AuthError,
    ConfigError,
    ConflictError,
    DeletionBlockedError,
    InputError,
    NotFoundError,
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
    VersionInfo,
    utcnow,
)
from retirement.platforms.base import Platform
from retirement.platforms.http import default_message, send
from retirement.redact import redact, remember
from retirement.settings import RetireSettings

PLATFORM = "bailo"
API_PREFIX = "/api/v2"

# What DELETE /model/{id} removes with the model (backend/src/services/model.ts removeModel).
CASCADE = [
    "model card revisions",
    "reviews and review responses",
    "releases (every semver)",
    "Docker images and tags",
    "files and their scan results",
    "inference service records",
    "access requests",
    "webhooks",
    "access tokens scoped to the model",
]

# Roles that hold the Delete permission on a Bailo model.
DELETE_ROLES = frozenset({"owner"})


class BailoSettings(BaseSettings):
    """Where the Bailo instance is and how to authenticate to it (personal access token and/or mTLS)."""

    model_config = SettingsConfigDict(env_prefix="RETIRE_BAILO_", extra="ignore")

    url: str | None = Field(
        default=None, description="Root URL of the Bailo instance, e.g. https://bailo.example.org (API is /api/v2)."
    )
    base_url: str | None = Field(default=None, description="Overrides `url` (tests, proxies); same form.")
    access_key: SecretStr | None = Field(default=None, description="Access key of a Bailo personal access token.")
    secret_key: SecretStr | None = Field(default=None, description="Secret key of a Bailo personal access token.")
    client_cert: Path | None = Field(default=None, description="Client certificate (PEM) for mutual TLS.")
    client_key: Path | None = Field(default=None, description="Private key (PEM) of the client certificate.")
    ca_bundle: Path | None = Field(default=None, description="CA bundle to verify the Bailo server with.")
    timeout: float = Field(default=60.0, gt=0, description="Seconds before an HTTP call times out.")

    def api_url(self) -> str:
        """The API root, ``<url>/api/v2``.

        Raises:
            ConfigError: no URL is configured.
        """
        root = self.base_url or self.url
        if not root:
            raise ConfigError("bailo: RETIRE_BAILO_URL is not set (allowed: the root URL of the Bailo instance)")
        root = root.rstrip("/")
        return root if root.endswith(API_PREFIX) else root + API_PREFIX


def bailo_message(body: Any) -> str | None:
    """Bailo's own error message from ``{"error": {"name", "message", "context"}}``."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        name, message = error.get("name"), error.get("message")
        if message:
            return f"{name}: {message}" if name else str(message)
    return default_message(body)


def json_item(path: str, document: Any) -> ExportItem:
    """A metadata document of the backup: ``document`` (sanitized of secrets) as indented JSON."""
    data = json.dumps(redact(document), indent=2, sort_keys=True, default=str).encode("utf-8")
    return ExportItem(path=path, open=lambda: iter((data,)), size=len(data), sha256=hashlib.sha256(data).hexdigest())


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _safe_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "._-" else "_" for c in name).strip("._")
    return cleaned or "file"


@dataclass
class _Uses:
    """What points at one Bailo model: inference services, access requests, webhooks, images."""

    inferences: list[dict[str, Any]] = field(default_factory=list)
    inference_known: bool = True
    access_requests: list[dict[str, Any]] = field(default_factory=list)
    webhooks: list[dict[str, Any]] = field(default_factory=list)
    images: list[dict[str, Any]] = field(default_factory=list)


class BailoRegistry:
    """Bailo models through the v2 REST API.

    Args:
        client: an HTTP client whose base URL is the API root (``.../api/v2``) and which carries the auth.
        sleep: how to wait before retrying a 429 (injected by tests).
    """

    name = PLATFORM
    capabilities = Capabilities(
        weights_exportable=True,
        exports=[
            "every file of the model (weights, configs, archives), streamed from Bailo",
            "the model's record with collaborators and visibility (model.json)",
            "the current model card and every card revision (model-card.json, model-card-revisions.json)",
            "every release with its notes and file list (releases.json)",
            "the lists of access requests, webhooks and Docker images, for the record",
        ],
        not_exportable=[
            "Docker images: Bailo has no export route for them (pull them with docker before the delete)",
            "reviews and review responses",
            "webhook secrets and access tokens (never written to a backup)",
        ],
        soft_delete=None,
        restore=False,
        cutover=False,
        traffic=False,
        delete_unit="model",
        cascade=CASCADE,
    )

    def __init__(self, client: httpx.Client, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.client = client
        self._sleep = sleep

    def close(self) -> None:
        """Close the HTTP client."""
        self.client.close()

    # -- HTTP ---------------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = send(
            self.client, method, path, platform=PLATFORM, extract=bailo_message, sleep=self._sleep, **kwargs
        )
        return response.json() if response.content else {}

    @staticmethod
    def _model_id(ref: ModelRef) -> str:
        if ref.platform != PLATFORM:
            raise InputError("platform", f"{ref.platform!r} given to the Bailo adapter", "'bailo'")
        if ref.version is not None:
            raise InputError(
                "model",
                f"{ref} names release {ref.version!r}",
                "the Bailo model id alone (Bailo deletes whole models; releases are listed as versions)",
            )
        return ref.name

    @staticmethod
    def _path(model_id: str, *rest: str) -> str:
        return "/".join(["model", quote(model_id, safe=""), *rest])

    def _model(self, model_id: str) -> dict[str, Any]:
        body = self._request("GET", self._path(model_id))
        model = body.get("model") if isinstance(body, dict) else None
        if not isinstance(model, dict) or model.get("deleted"):
            raise NotFoundError(f"bailo: model {model_id!r} does not exist")
        return model

    def _list(self, model_id: str, suffix: str, key: str) -> list[dict[str, Any]]:
        body = self._request("GET", self._path(model_id, suffix))
        items = body.get(key, []) if isinstance(body, dict) else []
        return [item for item in items if isinstance(item, dict) and not item.get("deleted")]

    def _uses(self, model_id: str) -> _Uses:
        uses = _Uses()
        try:
            uses.inferences = self._list(model_id, "inferences", "inferences")
        except NotFoundError:
            # The inferencing routes exist only where the instance enables inferencing; the model
            # itself was found a moment ago, so a 404 here means the feature is off on this instance.
            uses.inference_known = False
        uses.access_requests = self._list(model_id, "access-requests", "accessRequests")
        uses.webhooks = self._list(model_id, "webhooks", "webhooks")
        uses.images = self._list(model_id, "images", "images")
        return uses

    # -- Registry -----------------------------------------------------------------------------

    def describe(self, ref: ModelRef) -> Dossier:
        """The model's record, card, releases, files and everything that uses it.

        Raises:
            NotFoundError: the model does not exist (or was deleted).
        """
        model_id = self._model_id(ref)
        model = self._model(model_id)
        releases = self._list(model_id, "releases", "releases")
        files = self._list(model_id, "files", "files")
        uses = self._uses(model_id)
        blockers = self._blockers(model_id, model, uses)
        card = model.get("card") or {}
        known_issues = []
        if not uses.inference_known:
            known_issues.append("inferencing is not enabled on this Bailo instance: no inference services to check")
        if uses.images:
            tags = [f"{i.get('repository')}/{i.get('name')}:{t}" for i in uses.images for t in i.get("tags") or []]
            known_issues.append(
                f"{len(tags)} Docker image tag(s) are deleted with the model and cannot be backed up: {', '.join(tags)}"
            )
        if uses.webhooks:
            names = ", ".join(str(w.get("name") or w.get("id")) for w in uses.webhooks)
            known_issues.append(f"webhooks deleted with the model (their secrets are not backed up): {names}")
        ended = [r for r in uses.access_requests if not _access_request_open(r, utcnow())]
        if ended:
            known_issues.append(
                "ended access requests, kept in the backup and deleted with the model: "
                + ", ".join(_access_request_name(r) for r in ended)
            )
        return Dossier(
            reference=ref,
            description=str(model.get("description") or ""),
            versions=[_release_info(r) for r in releases],
            metadata=redact(
                {
                    "id": model.get("id"),
                    "name": model.get("name"),
                    "kind": model.get("kind"),
                    "organisation": model.get("organisation"),
                    "state": model.get("state"),
                    "tags": model.get("tags"),
                    "visibility": model.get("visibility"),
                    "collaborators": model.get("collaborators"),
                    "card": {k: card.get(k) for k in ("schemaId", "version", "createdBy")},
                    "createdAt": model.get("createdAt"),
                    "updatedAt": model.get("updatedAt"),
                    "files": [{"id": f.get("id"), "name": f.get("name"), "size": f.get("size")} for f in files],
                }
            ),
            deployed_at=[f"inference service {_inference_name(i)}" for i in uses.inferences],
            dependents=_dependents(uses),
            blockers=blockers,
            known_issues=known_issues,
            capabilities=self.capabilities,
        )

    def dependents(self, ref: ModelRef) -> list[Dependent]:
        """Who still uses the model: its live inference services and its open access requests.

        Its webhooks, Docker images and ended access requests are part of the model (the delete removes
        them with it): the dossier lists them as what the delete takes, not as dependents.
        """
        model_id = self._model_id(ref)
        self._model(model_id)
        return _dependents(self._uses(model_id))

    def deletion_blockers(self, ref: ModelRef) -> list[DeletionBlocker]:
        """Missing Delete permission, live inference services, open access requests.

        Raises:
            NotFoundError: the model does not exist.
        """
        model_id = self._model_id(ref)
        model = self._model(model_id)
        return self._blockers(model_id, model, self._uses(model_id))

    def _blockers(self, model_id: str, model: dict[str, Any], uses: _Uses) -> list[DeletionBlocker]:
        blockers: list[DeletionBlocker] = []
        permission = self._permission_blocker(model_id, model)
        if permission is not None:
            blockers.append(permission)
        for inference in uses.inferences:
            blockers.append(
                DeletionBlocker(
                    code="inference_service",
                    message=f"inference service {_inference_name(inference)} of {model_id} is live",
                    remedy="move its users to the replacement, then delete the inference service in Bailo",
                )
            )
        now = utcnow()
        for request in uses.access_requests:
            if _access_request_open(request, now):
                blockers.append(
                    DeletionBlocker(
                        code="access_request",
                        message=f"access request {_access_request_name(request)} to {model_id} is open",
                        remedy="tell its requesters about the replacement and close the access request",
                    )
                )
        return blockers

    def _permission_blocker(self, model_id: str, model: dict[str, Any]) -> DeletionBlocker | None:
        """What the model's collaborators say about the caller's Delete permission (None = may delete)."""
        me = self._request("GET", "entities/me").get("user") or {}
        if me.get("isAdmin"):
            return None
        entity = f"user:{me.get('dn')}"
        collaborators = [c for c in model.get("collaborators") or [] if isinstance(c, dict)]
        for collaborator in collaborators:
            if collaborator.get("entity") == entity and DELETE_ROLES & set(collaborator.get("roles") or []):
                return None
        if any(
            not str(c.get("entity", "")).startswith("user:") and DELETE_ROLES & set(c.get("roles") or [])
            for c in collaborators
        ):
            # An owner group may include the caller; Bailo's answer to the DELETE is then the judge.
            return None
        return DeletionBlocker(
            code="delete_permission",
            message=f"{entity} lacks the Delete permission on {model_id} (only its owners hold it)",
            remedy="ask an owner of the model to give you the owner role, or to run the deletion",
        )

    def export(self, ref: ModelRef) -> list[ExportItem]:
        """Every file (streamed), plus the model, card, card revisions, releases and uses as JSON."""
        model_id = self._model_id(ref)
        model = self._model(model_id)
        releases = self._list(model_id, "releases", "releases")
        files = self._list(model_id, "files", "files")
        revisions = self._request("GET", self._path(model_id, "model-card-revisions")).get("modelCardRevisions", [])
        uses = self._uses(model_id)
        items = [
            json_item("model.json", model),
            json_item("model-card.json", model.get("card") or {}),
            json_item("model-card-revisions.json", revisions),
            json_item("releases.json", releases),
            json_item("files.json", files),
            json_item(
                "uses.json",
                {
                    "inferences": uses.inferences,
                    "accessRequests": uses.access_requests,
                    "webhooks": uses.webhooks,
                    "images": uses.images,
                },
            ),
        ]
        released_in = {
            str(f.get("name")): str(r.get("semver"))
            for r in releases
            for f in r.get("files") or []
            if isinstance(f, dict) and f.get("name")
        }
        for file in files:
            name = str(file.get("name") or "")
            file_id = str(file.get("id") or file.get("_id") or "")
            if file_id:
                url = self._path(model_id, "file", quote(file_id, safe=""), "download")
                path = f"files/{_safe_name(file_id)}/{_safe_name(name or file_id)}"
            elif name in released_in:
                # Listings without an id: download through a release that carries the file.
                semver = released_in[name]
                url = self._path(model_id, "release", quote(semver, safe=""), "file", quote(name, safe=""), "download")
                path = f"files/{_safe_name(semver)}/{_safe_name(name)}"
            else:
                raise ConflictError(f"bailo: file {name!r} of {model_id} has no id and is in no release")
            size = file.get("size")
            items.append(
                http_export_item(
                    self.client, path, url, platform=PLATFORM, size=int(size) if isinstance(size, int | float) else None
                )
            )
        return items

    def set_active(self, ref: ModelRef, active: bool) -> None:
        """Bailo has no soft step for a model.

        Raises:
            ConflictError: always.
        """
        raise ConflictError(
            f"bailo: {ref} cannot be {'re' if active else 'de'}activated: Bailo has no deactivate or deprecate "
            "for a model (its delete is final for users; only administrators can restore)"
        )

    def delete(self, ref: ModelRef) -> DeletionReceipt:
        """Delete the whole model after re-checking every blocker, then confirm Bailo answers 404.

        Raises:
            DeletionBlockedError: a blocker stands, or Bailo refused for lack of the Delete permission.
            NotFoundError: the model was already gone.
        """
        model_id = self._model_id(ref)
        blockers = self.deletion_blockers(ref)
        if blockers:
            raise DeletionBlockedError(str(ref), [b.message for b in blockers])
        try:
            answer = self._request("DELETE", self._path(model_id))
        except AuthError as exc:
            if exc.status != 403:
                raise
            raise DeletionBlockedError(
                str(ref), [f"Bailo refused the delete ({exc}): the Delete permission on the model is needed"]
            ) from None
        return DeletionReceipt(
            reference=ref,
            removed=[f"model {model_id}", *CASCADE],
            verified_gone=not self.exists(ref),
            platform_response=redact(answer) if isinstance(answer, dict) else {},
        )

    def exists(self, ref: ModelRef) -> bool:
        """True while Bailo still returns the model."""
        try:
            self._model(self._model_id(ref))
        except NotFoundError:
            return False
        return True

    # -- Catalog ------------------------------------------------------------------------------

    def list_versions(self) -> Iterator[CatalogEntry]:
        """Every model the caller can see (Bailo's unit), one entry each; Bailo does not paginate."""
        body = self._request("GET", "models/search")
        for summary in body.get("models", []):
            model_id = str(summary.get("id"))
            try:
                model = self._model(model_id)
            except NotFoundError:
                continue  # deleted between the search and now
            created = _parse_time(model.get("createdAt")) or utcnow()
            yield CatalogEntry(
                reference=ModelRef(platform=PLATFORM, name=model_id),
                created_at=created,
                stage=model.get("state"),
                status_changed_at=_parse_time(model.get("updatedAt")),
                tags={str(t): "" for t in model.get("tags") or []},
            )


def _release_info(release: dict[str, Any]) -> VersionInfo:
    sizes = [f.get("size") for f in release.get("files") or [] if isinstance(f, dict)]
    return VersionInfo(
        version=str(release.get("semver")),
        created_at=_parse_time(release.get("createdAt")),
        stage="draft" if release.get("draft") else "released",
        size_bytes=int(sum(s for s in sizes if isinstance(s, int | float))) if sizes else None,
    )


def _inference_name(inference: dict[str, Any]) -> str:
    return f"{inference.get('image')}:{inference.get('tag')}"


def _access_request_name(request: dict[str, Any]) -> str:
    overview = (request.get("metadata") or {}).get("overview") or {}
    return f"{request.get('id')} ({overview.get('name', '')})"


def _access_request_open(request: dict[str, Any], now: datetime) -> bool:
    overview = (request.get("metadata") or {}).get("overview") or {}
    end = _parse_time(overview.get("endDate"))
    return end is None or end > now


def _dependents(uses: _Uses) -> list[Dependent]:
    """Live inference services and open access requests: none of them is moved by a retirement."""
    now = utcnow()
    found = [
        Dependent(
            kind="deployment",
            name=_inference_name(i),
            detail=f"live Bailo inference service: {i.get('description', '')}".strip(),
        )
        for i in uses.inferences
    ]
    for request in uses.access_requests:
        if not _access_request_open(request, now):
            continue
        overview = (request.get("metadata") or {}).get("overview") or {}
        entities = ", ".join(overview.get("entities", []))
        found.append(
            Dependent(
                kind="consumer",
                name=str(request.get("id")),
                detail=f"open access request {overview.get('name', '')!r} for {entities}",
            )
        )
    return found


def _ssl_context(settings: BailoSettings) -> ssl.SSLContext | bool:
    if settings.client_cert is None and settings.ca_bundle is None:
        return True
    context = ssl.create_default_context(cafile=str(settings.ca_bundle) if settings.ca_bundle else None)
    if settings.client_cert is not None:
        context.load_cert_chain(
            str(settings.client_cert), str(settings.client_key) if settings.client_key is not None else None
        )
    return context


def build(settings: RetireSettings) -> Platform:
    """The Bailo adapters from RETIRE_BAILO_* settings: one HTTP client with Basic auth and/or mTLS.

    Raises:
        ConfigError: no URL, half a token, or neither a token nor a client certificate.
    """
    del settings  # Bailo reads its own settings class
    own = BailoSettings()
    remember(own.access_key, own.secret_key)
    base = own.api_url()
    if (own.access_key is None) != (own.secret_key is None):
        raise ConfigError(
            "bailo: set both RETIRE_BAILO_ACCESS_KEY and RETIRE_BAILO_SECRET_KEY (a personal access token), or neither"
        )
    if own.client_key is not None and own.client_cert is None:
        raise ConfigError("bailo: RETIRE_BAILO_CLIENT_KEY is set without RETIRE_BAILO_CLIENT_CERT")
    if own.access_key is None and own.client_cert is None:
        raise ConfigError(
            "bailo: no credentials (allowed: RETIRE_BAILO_ACCESS_KEY + RETIRE_BAILO_SECRET_KEY, "
            "and/or RETIRE_BAILO_CLIENT_CERT for mutual TLS)"
        )
    auth = (
        httpx.BasicAuth(own.access_key.get_secret_value(), own.secret_key.get_secret_value())
        if own.access_key is not None and own.secret_key is not None
        else None
    )
    client = httpx.Client(base_url=base, auth=auth, verify=_ssl_context(own), timeout=own.timeout)
    return Platform(name=PLATFORM, registry=BailoRegistry(client))


__all__ = ["CASCADE", "BailoRegistry", "BailoSettings", "bailo_message", "build", "json_item"]
