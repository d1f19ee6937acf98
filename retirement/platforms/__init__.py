"""The platforms a model can live on, picked by name."""

from __future__ import annotations

import importlib

from retirement.errors import UnknownNameError
from retirement.platforms.base import Platform, Registry, Serving
from retirement.settings import RetireSettings

# name -> module whose ``build(settings) -> Platform`` makes the adapters. Modules are imported
# only when their platform is asked for, so an optional dependency never breaks the others.
_PLATFORMS: dict[str, str] = {
    "local": "retirement.platforms.local",
    "mlflow": "retirement.platforms.mlflow",
    "replicate": "retirement.platforms.replicate",
    "openai": "retirement.platforms.openai",
    "bailo": "retirement.platforms.bailo",
    "selise": "retirement.platforms.selise",
    "datature-vi": "retirement.platforms.datature_vi",
}
PLATFORM_NAMES: frozenset[str] = frozenset(_PLATFORMS)


def get_platform(name: str, settings: RetireSettings | None = None) -> Platform:
    """The adapters of platform ``name``.

    Raises:
        UnknownNameError: ``name`` is not a platform; the message lists the valid names.
    """
    try:
        module_name = _PLATFORMS[name]
    except KeyError:
        raise UnknownNameError("platform", name, _PLATFORMS) from None
    module = importlib.import_module(module_name)
    platform: Platform = module.build(settings or RetireSettings())
    return platform


__all__ = ["PLATFORM_NAMES", "Platform", "Registry", "Serving", "get_platform"]
