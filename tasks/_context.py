"""The services and state a task works on, built once per process."""

from __future__ import annotations

from retirement import bootstrap
from retirement.bootstrap import Services
from retirement.models import RetirementRequest
from retirement.state import RetirementState

_cache: dict[tuple[str, tuple[str, ...]], Services] = {}


def services_for(request: RetirementRequest) -> Services:
    """The services of the request's platform and traffic sources (cached per process)."""
    key = (request.platform, tuple(request.traffic_sources))
    if key not in _cache:
        _cache[key] = bootstrap.services(request.platform, list(request.traffic_sources))
    return _cache[key]


def load(request: RetirementRequest, retirement_id: str) -> tuple[Services, RetirementState]:
    """The services and the freshly read state of one retirement."""
    svc = services_for(request)
    return svc, svc.states.load(retirement_id)


def reset() -> None:
    """Forget cached services (tests swap the factory between cases)."""
    for svc in _cache.values():
        svc.close()
    _cache.clear()
