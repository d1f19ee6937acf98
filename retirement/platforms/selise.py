"""Selise Blocks: AI model configurations of a project, the agents that use them, and their cutover."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from retirement.errors import (
    AuthError,
    ConfigError,
    ConflictError,
    DeletionBlockedError,
    InputError,
    NotFoundError,
    PlatformError,
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
    VersionInfo,
    utcnow,
)
from retirement.platforms.base import Platform
from retirement.platforms.http import default_message, error_text, paginate, raise_for_platform, send
from retirement.redact import redact, remember
from retirement.settings import RetireSettings

PLATFORM = "selise"
DEFAULT_BASE_URL = "https://api.seliseblocks.com"
TOKEN_PATH = "/authentication/v1/OAuth/Token"  # noqa: S105 - a URL path, not a secret
PAGE_SIZE = 100  # the largest page GET /models/ serves
AGENT_PAGE = 100

# Fields of an agent that POST /agents/update-ai-configurations sets; all are sent back unchanged
# except llm_config, so a cutover changes the model and nothing else.
AI_CONFIG_FIELDS = (
    "enable_rag",
    "rag_config",
    "llm_config",
    "enable_guardrails",
    "guardrail",
    "enable_tools",
    "tool_ids",
    "memory_config",
    "response_type",
    "response_format",
)


class SeliseSettings(BaseSettings):
    """Where Selise Blocks is and the project's credentials."""

    model_config = SettingsConfigDict(env_prefix="RETIRE_SELISE_", extra="ignore")

    base_url: str = Field(default=DEFAULT_BASE_URL, description="Root URL of the Selise Blocks API.")
    project_key: SecretStr | None = Field(
        default=None, description="The project's x-blocks-key (also sent as the project_key query parameter)."
    )
    client_id: str | None = Field(default=None, description="Client id of a client credential of the project.")
    client_secret: SecretStr | None = Field(default=None, description="Secret of that client credential.")
    grant_type: str = Field(
        default="client_credential",
        description="grant_type sent to the token endpoint: Selise's OAuth Token page documents 'client_credential' "
        "(singular); set another only for a deployment that differs.",
    )
    timeout: float = Field(default=60.0, gt=0, description="Seconds before an HTTP call times out.")


def selise_message(body: Any) -> str | None:
    """Selise's own words: FastAPI ``{"detail": [{loc, msg, type}]}`` or ``{is_success: false, error, detail}``."""
    if isinstance(body, dict) and "is_success" in body:
        parts = [str(body.get("detail") or "")]
        error = body.get("error")
        if isinstance(error, dict):
            parts += [str(v) for v in error.values() if v]
        elif error:
            parts.append(str(error))
        text = "; ".join(p for p in parts if p)
        if text:
            return text
    return default_message(body)


class SeliseTokenAuth(httpx.Auth):
    """Bearer token from the client-credentials endpoint, cached until it expires and renewed once on a 401.

    The token request is what Selise's OAuth Token page shows: ``POST /authentication/v1/OAuth/Token``
    with the ``x-blocks-key`` header and a ``multipart/form-data`` body (the page says it "Must be
    multipart/form-data") of ``grant_type=client_credential``, ``client_id`` and ``client_secret``.

    Args:
        token_url: absolute URL of ``/authentication/v1/OAuth/Token``.
        blocks_key: the project's x-blocks-key, sent with every request.
        client_id: client id of the client credential.
        client_secret: its secret.
        grant_type: the grant type Selise expects.
        clock: monotonic seconds (injected by tests).
    """

    requires_response_body = True

    def __init__(
        self,
        token_url: str,
        blocks_key: SecretStr,
        client_id: str,
        client_secret: SecretStr,
        *,
        grant_type: str = "client_credential",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        remember(blocks_key, client_secret)
        self.token_url = token_url
        self._blocks_key = blocks_key
        self._client_id = client_id
        self._client_secret = client_secret
        self._grant_type = grant_type
        self._clock = clock
        self._token: str | None = None
        self._expires_at = 0.0

    def _token_request(self) -> httpx.Request:
        # (None, value) makes each field a plain multipart form field (no filename), as `curl --form` sends it.
        fields = {
            "grant_type": self._grant_type,
            "client_id": self._client_id,
            "client_secret": self._client_secret.get_secret_value(),
        }
        return httpx.Request(
            "POST",
            self.token_url,
            headers={"x-blocks-key": self._blocks_key.get_secret_value(), "accept": "application/json"},
            files={name: (None, value) for name, value in fields.items()},
        )

    def _store(self, response: httpx.Response) -> None:
        """Keep the token of a token endpoint answer; a refusal says which settings to check, never what was sent."""
        if response.status_code in (401, 403):
            response.read()
            message, detail = error_text(response, selise_message)
            raise AuthError(
                PLATFORM,
                f"the token endpoint refused the project's credentials ({message}); check RETIRE_SELISE_PROJECT_KEY, "
                "RETIRE_SELISE_CLIENT_ID and RETIRE_SELISE_CLIENT_SECRET",
                response.status_code,
                detail,
            )
        raise_for_platform(response, PLATFORM, selise_message)
        body = response.json()
        token = body.get("access_token") if isinstance(body, dict) else None
        if not token:
            raise PlatformError(PLATFORM, "the token endpoint answered without an access_token", response.status_code)
        expires_in = float(body.get("expires_in") or 300)
        remember(str(token))
        self._token = str(token)
        # Renew a little early so a token never expires in flight.
        self._expires_at = self._clock() + max(0.0, expires_in - min(30.0, expires_in / 10))

    def _valid(self) -> bool:
        return self._token is not None and self._clock() < self._expires_at

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Add x-blocks-key and the bearer token; fetch a token first when none is valid; retry a 401 once."""
        request.headers["x-blocks-key"] = self._blocks_key.get_secret_value()
        if not self._valid():
            self._store((yield self._token_request()))
        request.headers["Authorization"] = f"Bearer {self._token}"
        response = yield request
        if response.status_code == 401:
            self._store((yield self._token_request()))
            request.headers["Authorization"] = f"Bearer {self._token}"
            yield request


def json_item(path: str, document: Any) -> ExportItem:
    """A metadata document of the backup: ``document`` (sanitized of secrets) as indented JSON."""
    data = json.dumps(redact(document), indent=2, sort_keys=True, default=str).encode("utf-8")
    return ExportItem(path=path, open=lambda: iter((data,)), size=len(data), sha256=hashlib.sha256(data).hexdigest())


def _get(record: dict[str, Any], *names: str) -> Any:
    for name in names:
        if name in record and record[name] is not None:
            return record[name]
    return None


def _items(body: Any, *keys: str) -> list[dict[str, Any]]:
    if isinstance(body, list):
        return [x for x in body if isinstance(x, dict)]
    if isinstance(body, dict):
        for key in keys:
            if isinstance(body.get(key), list):
                return [x for x in body[key] if isinstance(x, dict)]
    return []


def _total(body: Any) -> int | None:
    if isinstance(body, dict):
        for key in ("total_count", "totalCount", "total"):
            if isinstance(body.get(key), int):
                return int(body[key])
    return None


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def model_id_of(model: dict[str, Any]) -> str:
    """The id of a Selise model record (``_id`` in the API's answers)."""
    return str(_get(model, "_id", "id", "ItemId", "item_id") or "")


@dataclass(frozen=True)
class Agent:
    """An agent of the project and the model its llm_config names."""

    id: str
    name: str
    record: dict[str, Any]

    @property
    def llm(self) -> dict[str, Any]:
        """The agent's llm_config (Provider, ModelName, ModelId, ...)."""
        config = self.record.get("llm_config")
        return config if isinstance(config, dict) else {}

    def uses(self, model_id: str, model: dict[str, Any] | None) -> bool:
        """True when the agent names the model by id, or (no id) by the same provider and model name."""
        named = self.llm.get("ModelId")
        if named:
            return str(named) == model_id
        if model is None:
            return False
        return bool(self.llm.get("ModelName")) and (
            self.llm.get("ModelName") == _get(model, "ModelName", "model_name")
            and self.llm.get("Provider") == _get(model, "Provider", "provider")
        )


class SeliseClient:
    """The Selise Blocks calls both adapters need, over one injected HTTP client.

    Args:
        client: an HTTP client whose base URL is the API root and whose auth adds the token and x-blocks-key.
        project_key: the project key sent as ``project_key``.
        sleep: how to wait before retrying a 429 (injected by tests).
    """

    def __init__(
        self, client: httpx.Client, project_key: SecretStr, *, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        remember(project_key)
        self.http = client
        self._project_key = project_key
        self._sleep = sleep

    def request(self, method: str, path: str, *, params: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        """One call with project_key added; a 422 saying "not found" becomes NotFoundError."""
        query = {"project_key": self._project_key.get_secret_value(), **(params or {})}
        try:
            response = send(
                self.http,
                method,
                path,
                platform=PLATFORM,
                extract=selise_message,
                sleep=self._sleep,
                params=query,
                **kwargs,
            )
        except InputError as exc:
            if "not found" in exc.problem.lower():
                raise NotFoundError(f"{PLATFORM}: {exc.problem}") from None
            raise
        return response.json() if response.content else {}

    def project_body(self, **fields: Any) -> dict[str, Any]:
        """A JSON body carrying the project key."""
        return {"project_key": self._project_key.get_secret_value(), **fields}

    def model(self, model_id: str) -> dict[str, Any]:
        """GET /models/{id}; NotFoundError when it does not exist."""
        body = self.request("GET", f"models/{quote(model_id, safe='')}")
        record = body.get("model") if isinstance(body, dict) and isinstance(body.get("model"), dict) else body
        if not isinstance(record, dict) or not record or record.get("is_success") is False:
            raise NotFoundError(f"{PLATFORM}: model {model_id!r} does not exist")
        return record

    def models(self) -> Iterator[dict[str, Any]]:
        """Every model of the project, page by page to the end."""

        def fetch(cursor: str | None) -> tuple[list[Any], str | None]:
            page = int(cursor or 1)
            body = self.request("GET", "models/", params={"page": page, "page_size": PAGE_SIZE})
            items = _items(body, "models", "items", "data", "results")
            total = _total(body)
            more = len(items) == PAGE_SIZE if total is None else page * PAGE_SIZE < total
            return items, str(page + 1) if more and items else None

        return paginate(fetch)

    def agents(self) -> list[Agent]:
        """Every agent of the project with its full configuration (llm_config from GET /agents/query/{id})."""

        def fetch(cursor: str | None) -> tuple[list[Any], str | None]:
            offset = int(cursor or 0)
            body = self.request(
                "POST", "agents/queries", json=self.project_body(limit=AGENT_PAGE, offset=offset), params={}
            )
            items = _items(body, "agents", "items", "data", "results")
            total = _total(body)
            end = offset + len(items)
            more = len(items) == AGENT_PAGE if total is None else end < total
            return items, str(end) if more and items else None

        found = []
        for summary in paginate(fetch):
            agent_id = str(_get(summary, "id", "agent_id", "_id") or "")
            if not agent_id:
                continue
            body = self.request("GET", f"agents/query/{quote(agent_id, safe='')}")
            record: dict[str, Any] = summary
            if isinstance(body, dict) and isinstance(body.get("agent"), dict):
                record = body["agent"]
            found.append(Agent(id=agent_id, name=str(record.get("name") or agent_id), record=record))
        return found

    def move_agent(self, agent: Agent, model_id: str, model: dict[str, Any]) -> None:
        """Point ``agent`` at ``model`` with POST /agents/update-ai-configurations, keeping its other settings."""
        body = {k: agent.record[k] for k in AI_CONFIG_FIELDS if k in agent.record}
        llm = dict(agent.llm)
        llm["ModelId"] = model_id
        for key, names in (
            ("ModelName", ("ModelName", "model_name")),
            ("Provider", ("Provider", "provider")),
            ("ModelType", ("ModelType", "model_type")),
        ):
            value = _get(model, *names)
            if value is not None:
                llm[key] = value
        body["llm_config"] = llm
        answer = self.request(
            "POST", "agents/update-ai-configurations", json=self.project_body(agent_id=agent.id, **body)
        )
        if isinstance(answer, dict) and answer.get("is_success") is False:
            raise PlatformError(
                PLATFORM, selise_message(answer) or "update-ai-configurations failed", 200, redact(answer)
            )


def _check_ref(ref: ModelRef) -> str:
    if ref.platform != PLATFORM:
        raise InputError("platform", f"{ref.platform!r} given to the Selise adapter", "'selise'")
    if ref.version is not None:
        raise InputError(
            "model", f"{ref} names a version", "the Selise model id alone (a Selise model has no versions)"
        )
    return ref.name


class SeliseRegistry:
    """Selise Blocks AI models of one project.

    Args:
        api: the Selise calls, over the injected HTTP client.
    """

    name = PLATFORM
    capabilities = Capabilities(
        weights_exportable=False,
        exports=[
            "the model's configuration as Selise returns it (model.json; Selise masks its credentials)",
            "the configuration of every agent that used it (agents.json)",
        ],
        not_exportable=[
            "weights: a Selise model is a configuration of a hosted provider model; there is nothing to download",
            "the model's API keys and credentials (Selise masks them; they must be entered again to recreate it)",
            "conversation history and usage statistics (Selise keeps them after the delete)",
        ],
        soft_delete=None,
        restore=False,
        cutover=True,
        traffic=False,
        delete_unit="model",
        cascade=["the model's configuration, credentials and settings"],
    )

    def __init__(self, api: SeliseClient) -> None:
        self.api = api

    def close(self) -> None:
        """Close the HTTP client."""
        self.api.http.close()

    def _users(self, model_id: str, model: dict[str, Any]) -> list[Agent]:
        return [agent for agent in self.api.agents() if agent.uses(model_id, model)]

    def describe(self, ref: ModelRef) -> Dossier:
        """The model's configuration, the agents that use it and what blocks its deletion.

        Raises:
            NotFoundError: the model does not exist.
        """
        model_id = _check_ref(ref)
        model = self.api.model(model_id)
        users = self._users(model_id, model)
        return Dossier(
            reference=ref,
            description=str(_get(model, "Description", "description") or ""),
            versions=[
                VersionInfo(
                    version=str(_get(model, "ModelName", "model_name") or model_id),
                    created_at=_parse_time(_get(model, "CreatedDate", "created_at")),
                    stage=_get(model, "Status", "status"),
                    active=bool(_get(model, "IsActive", "is_active") is not False),
                )
            ],
            metadata=redact(model),
            deployed_at=[f"agent {a.name} ({a.id})" for a in users],
            dependents=[_dependent(a) for a in users],
            blockers=self._blockers(model_id, users),
            known_issues=[
                "Selise keeps conversations that used the model, marked as using a deleted model",
            ],
            capabilities=self.capabilities,
        )

    def dependents(self, ref: ModelRef) -> list[Dependent]:
        """The agents whose llm_config names the model."""
        model_id = _check_ref(ref)
        return [_dependent(a) for a in self._users(model_id, self.api.model(model_id))]

    def deletion_blockers(self, ref: ModelRef) -> list[DeletionBlocker]:
        """Agents still using the model, and the last-model rule.

        Raises:
            NotFoundError: the model does not exist.
        """
        model_id = _check_ref(ref)
        model = self.api.model(model_id)
        return self._blockers(model_id, self._users(model_id, model))

    def _blockers(self, model_id: str, users: list[Agent]) -> list[DeletionBlocker]:
        blockers = [
            DeletionBlocker(
                code="agent",
                message=f"agent {agent.name} ({agent.id}) uses model {model_id}",
                remedy="switch the agent to the replacement (the cutover does), or deactivate the model "
                "(IsActive=false) in the Selise console instead of deleting it",
                cleared_by_protocol=True,
            )
            for agent in users
        ]
        others = 0
        for model in self.api.models():
            if model_id_of(model) != model_id:
                others += 1
                break
        if others == 0:
            blockers.append(
                DeletionBlocker(
                    code="last_model",
                    message=f"{model_id} is the only model of the project; Selise cannot delete the last model",
                    remedy="add another model to the project first",
                )
            )
        return blockers

    def export(self, ref: ModelRef) -> list[ExportItem]:
        """The model's configuration and the agents that use it, as JSON (there are no files)."""
        model_id = _check_ref(ref)
        model = self.api.model(model_id)
        users = self._users(model_id, model)
        return [
            json_item("model.json", model),
            json_item("agents.json", [{"id": a.id, "name": a.name, "llm_config": a.llm} for a in users]),
        ]

    def set_active(self, ref: ModelRef, active: bool) -> None:
        """Selise documents IsActive but no API call to change it.

        Raises:
            ConflictError: always.
        """
        _check_ref(ref)
        raise ConflictError(
            f"selise: {ref} cannot be {'activated' if active else 'deactivated'} through the API: Selise documents "
            "IsActive=false as the alternative to deleting, but publishes no endpoint to update a model; "
            "set it in the Selise Blocks console"
        )

    def delete(self, ref: ModelRef) -> DeletionReceipt:
        """Delete the model after re-checking every blocker, then confirm Selise answers not-found.

        Raises:
            DeletionBlockedError: an agent uses it, it is the last model, or Selise answered 409.
            NotFoundError: it was already gone.
        """
        model_id = _check_ref(ref)
        blockers = self.deletion_blockers(ref)
        if blockers:
            raise DeletionBlockedError(str(ref), [b.message for b in blockers])
        try:
            answer = self.api.request("DELETE", f"models/{quote(model_id, safe='')}")
        except ConflictError as exc:
            raise DeletionBlockedError(str(ref), [f"Selise refused the delete: {exc}"]) from None
        if isinstance(answer, dict) and answer.get("is_success") is False:
            words = selise_message(answer) or "is_success is false"
            if "in use" in words.lower() or "last model" in words.lower() or "only model" in words.lower():
                raise DeletionBlockedError(str(ref), [f"Selise refused the delete: {words}"])
            raise PlatformError(PLATFORM, words, 200, redact(answer))
        return DeletionReceipt(
            reference=ref,
            removed=[f"model {model_id}", *self.capabilities.cascade],
            verified_gone=not self.exists(ref),
            platform_response=redact(answer) if isinstance(answer, dict) else {},
        )

    def exists(self, ref: ModelRef) -> bool:
        """True while Selise still returns the model."""
        try:
            self.api.model(_check_ref(ref))
        except NotFoundError:
            return False
        return True

    def list_versions(self) -> Iterator[CatalogEntry]:
        """Every model of the project (Selise's unit), with the agents that use it."""
        agents = self.api.agents()
        for model in self.api.models():
            model_id = model_id_of(model)
            if not model_id:
                continue
            yield CatalogEntry(
                reference=ModelRef(platform=PLATFORM, name=model_id),
                created_at=_parse_time(_get(model, "CreatedDate", "created_at")) or utcnow(),
                stage=_get(model, "Status", "status"),
                status_changed_at=_parse_time(_get(model, "LastUpdatedDate", "updated_at")),
                dependents=[_dependent(a) for a in agents if a.uses(model_id, model)],
                active=_get(model, "IsActive", "is_active") is not False,
            )


def _dependent(agent: Agent) -> Dependent:
    return Dependent(
        kind="agent",
        name=agent.id,
        detail=f"agent {agent.name!r} uses it through its llm_config",
        movable=True,
    )


class SeliseServing:
    """Production on Selise = the model the project's agents use; a cutover moves those agents.

    ``switch`` moves every agent that uses the model being replaced: that model is the one named by
    ``replacing``, else the one last asked about with ``production``. Switching back to it after a
    switch (a rollback) moves exactly the agents that switch moved.

    Args:
        api: the Selise calls, over the injected HTTP client.
    """

    name = PLATFORM

    def __init__(self, api: SeliseClient) -> None:
        self.api = api
        self._watched: ModelRef | None = None
        self._last: tuple[ModelRef, ModelRef, list[str]] | None = None

    def preflight(self, request: RetirementRequest) -> list[str]:
        """The replacement the agents would move to must be usable: active, and valid by Selise's own check."""
        new = request.replacement_ref
        if new is None:
            return []
        problem = _unusable(self.api.model(_check_ref(new)))
        if not problem:
            return []
        return [
            f"replacement {new} cannot serve the agents of {request.ref}: {problem}; remedy: activate it or fix its "
            "provider credentials in the Selise Blocks console, or name another replacement"
        ]

    def deploy_staging(self, ref: ModelRef) -> None:
        """Nothing to deploy (a Selise model is a provider configuration): check it exists, is active and valid.

        Raises:
            NotFoundError: it does not exist.
            ConflictError: it is inactive or Selise marks it invalid.
        """
        model = self.api.model(_check_ref(ref))
        problem = _unusable(model)
        if problem:
            raise ConflictError(f"selise: {ref} cannot serve: {problem}")

    def smoke_test(self, ref: ModelRef, requests: int = 5) -> SmokeResult:
        """Selise's own validation of the model's provider credentials; no request is sent to the model."""
        model = self.api.model(_check_ref(ref))
        problem = _unusable(model)
        return SmokeResult(
            reference=ref,
            requests=0,
            errors=0,
            ok=not problem,
            detail=problem
            or "Selise reports the model active and valid; Selise offers no call to send a golden request "
            "to a model outside an agent",
        )

    def production(self, model: ModelRef) -> ModelRef | None:
        """``model`` when at least one agent uses it, else None; remembers it as the model a switch replaces."""
        model_id = _check_ref(model)
        record = self.api.model(model_id)
        self._watched = model
        return model if any(a.uses(model_id, record) for a in self.api.agents()) else None

    def switch(self, to: ModelRef, *, replacing: ModelRef | None = None) -> ModelRef | None:
        """Move the agents of the replaced model to ``to``; return the replaced model, None if no agent moved.

        Raises:
            ConflictError: no model to replace is known (call ``production`` first or pass ``replacing``).
            NotFoundError: ``to`` does not exist.
        """
        target_id = _check_ref(to)
        target = self.api.model(target_id)
        agents = self.api.agents()
        if self._last is not None and to == self._last[0] and replacing in (None, self._last[1]):
            # Rollback: move back exactly the agents the last switch moved.
            _, moved_to, ids = self._last
            moving = [a for a in agents if a.id in ids and a.uses(moved_to.name, None)]
            for agent in moving:
                self.api.move_agent(agent, target_id, target)
            self._last = None
            return moved_to if moving else None
        replaced = replacing or self._watched
        if replaced is None:
            raise ConflictError("selise: switch does not know which model's agents to move; call production() first")
        source_id = _check_ref(replaced)
        if source_id == target_id:
            return None
        try:
            source_record: dict[str, Any] | None = self.api.model(source_id)
        except NotFoundError:
            source_record = None
        moving = [a for a in agents if a.uses(source_id, source_record)]
        for agent in moving:
            self.api.move_agent(agent, target_id, target)
        if not moving:
            return None
        self._last = (replaced, to, [a.id for a in moving])
        return replaced


def _unusable(model: dict[str, Any]) -> str:
    if _get(model, "IsActive", "is_active") is False:
        return "the model is inactive (IsActive=false)"
    status = _get(model, "Status", "status")
    if status is not None and str(status).lower() != "valid":
        return f"Selise marks the model {status!r} (its provider credentials did not validate)"
    return ""


def build(settings: RetireSettings) -> Platform:
    """The Selise adapters from RETIRE_SELISE_* settings: one HTTP client with the token auth.

    Raises:
        ConfigError: the project key or the client credential is missing.
    """
    del settings  # Selise reads its own settings class
    own = SeliseSettings()
    missing = [
        name
        for name, value in (
            ("RETIRE_SELISE_PROJECT_KEY", own.project_key),
            ("RETIRE_SELISE_CLIENT_ID", own.client_id),
            ("RETIRE_SELISE_CLIENT_SECRET", own.client_secret),
        )
        if not value
    ]
    if missing or own.project_key is None or own.client_id is None or own.client_secret is None:
        raise ConfigError(f"selise: {', '.join(missing)} not set (allowed: the project's key and a client credential)")
    base = own.base_url.rstrip("/")
    auth = SeliseTokenAuth(
        base + TOKEN_PATH, own.project_key, own.client_id, own.client_secret, grant_type=own.grant_type
    )
    client = httpx.Client(base_url=base, auth=auth, timeout=own.timeout, headers={"accept": "application/json"})
    api = SeliseClient(client, own.project_key)
    return Platform(name=PLATFORM, registry=SeliseRegistry(api), serving=SeliseServing(api))


__all__ = [
    "Agent",
    "SeliseClient",
    "SeliseRegistry",
    "SeliseServing",
    "SeliseSettings",
    "SeliseTokenAuth",
    "build",
    "selise_message",
]
