"""Retire production ML models safely and permanently, on whatever platform they live."""

from __future__ import annotations

from retirement.errors import RetirementError
from retirement.models import ModelRef, RetirementRequest

__all__ = ["ModelRef", "RetirementError", "RetirementRequest"]
