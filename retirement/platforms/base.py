"""Ports for where a model lives (Registry) and where its traffic goes (Serving)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

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
)

if TYPE_CHECKING:
    from retirement.traffic.base import TrafficSource


@runtime_checkable
class Registry(Protocol):
    """Where a model lives: describe it, find what depends on it, back it up, delete it.

    Every method takes a reference whose ``platform`` is this adapter's. Methods that change
    anything (``set_active``, ``delete``) must be safe to call again after a crash: calling
    ``delete`` on something already gone raises ``NotFoundError`` and changes nothing.
    """

    name: str
    capabilities: Capabilities

    def describe(self, ref: ModelRef) -> Dossier:
        """The dossier's facts: versions, metadata, metrics, where it is deployed.

        Raises:
            NotFoundError: the model or version does not exist.
        """
        ...

    def dependents(self, ref: ModelRef) -> list[Dependent]:
        """Everything that still points at the version: aliases, deployments, agents, children."""
        ...

    def deletion_blockers(self, ref: ModelRef) -> list[DeletionBlocker]:
        """The platform's own rules that forbid deleting ``ref`` right now (empty = may delete)."""
        ...

    def export(self, ref: ModelRef) -> list[ExportItem]:
        """Every file the platform lets out for a backup, as lazily opened streams."""
        ...

    def set_active(self, ref: ModelRef, active: bool) -> None:
        """The soft step: deactivate / deprecate (``False``) or undo it (``True``).

        Raises:
            ConflictError: the platform has no soft step (``capabilities.soft_delete`` is None).
        """
        ...

    def delete(self, ref: ModelRef) -> DeletionReceipt:
        """Delete ``ref`` (after re-checking ``deletion_blockers``) and confirm it is gone.

        Raises:
            DeletionBlockedError: a blocker stands; nothing was deleted.
            NotFoundError: it was already gone.
        """
        ...

    def exists(self, ref: ModelRef) -> bool:
        """True while the platform still knows ``ref``."""
        ...


@runtime_checkable
class Catalog(Protocol):
    """Lists every version on a platform, for the quarterly retention review."""

    def list_versions(self) -> Iterator[CatalogEntry]:
        """Every version of every model, paginated to the end, in no particular order."""
        ...


@runtime_checkable
class Serving(Protocol):
    """Where production traffic for a model is routed."""

    name: str

    def preflight(self, request: RetirementRequest) -> list[str]:
        """What would stop this retirement's staging or cutover on this target, found by reading only.

        Asked when the plan is made, before anything is done: a setting the run will need and does not
        have, a staging or production target that serves another model than the request names, a
        replacement this target cannot serve in the old model's place.

        Returns:
            One sentence per problem, each naming its remedy; empty when nothing stands in the way.
        """
        ...

    def deploy_staging(self, ref: ModelRef) -> None:
        """Make ``ref`` the staging target of its model."""
        ...

    def smoke_test(self, ref: ModelRef, requests: int = 5) -> SmokeResult:
        """Send golden requests to ``ref`` (as staged) and report errors and latency."""
        ...

    def production(self, model: ModelRef) -> ModelRef | None:
        """The version currently serving production for ``model``, if any."""
        ...

    def switch(self, to: ModelRef, *, replacing: ModelRef | None = None) -> ModelRef | None:
        """Point production at ``to``; return what it replaced (for rollback). Idempotent.

        Args:
            to: the version that serves production from now on.
            replacing: the version it takes over from, where the platform needs it to know what to
                move (Selise moves the agents of ``replacing``); versioned registries ignore it.
        """
        ...


def same_model_refusals(request: RetirementRequest, why: str) -> list[str]:
    """Where staging and production are aliases of one model: a replacement of another model never takes over."""
    old, new = request.ref, request.replacement_ref
    if new is None or new.name == old.name:
        return []
    return [
        f"{new} cannot take over production of {old}: {why}, so the cutover would move {new.name}'s production "
        f"alias and leave {old.name}'s on {old}; remedy: name a version of {old.name} as the replacement, or retire "
        f"{old} with no replacement once its clients call {new.name}"
    ]


@dataclass
class Platform:
    """The adapters of one platform, as picked by name from the registry of platforms."""

    name: str
    registry: Registry
    serving: Serving | None = None
    traffic: TrafficSource | None = None

    def close(self) -> None:
        """Release HTTP clients and files held by the adapters."""
        for part in (self.registry, self.serving, self.traffic):
            closer = getattr(part, "close", None)
            if callable(closer):
                closer()
