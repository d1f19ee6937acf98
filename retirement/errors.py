"""One exception tree for the whole library.

Every error says what was wrong and, where it applies, what is allowed::

    RetirementError
    ├── InputError                  bad input, raised before any side effect (also a ValueError)
    │   └── UnknownNameError        a name not in a fixed set (platform, adapter, rule); lists valid names
    ├── ConfigError                 settings or credentials missing / inconsistent
    ├── NotFoundError               the thing does not exist (model, version, alias, backup, run)
    ├── ConflictError               the thing exists / is in a state that forbids the request
    │   ├── DeletionBlockedError    a platform rule or a dependent forbids the deletion (lists blockers)
    │   └── StaleStateError         a retirement changed since it was read (another writer won); nothing written
    ├── SafetyError                 a safety invariant refused a step (approval, backup, traffic, ...)
    │   ├── ApprovalError           a gate was rejected, timed out, or answered by a wrong person
    │   └── RetirementStoppedError  the retirement was cancelled or halted: no destructive call after that
    ├── DeletePendingError          an accepted delete has not shown as gone yet: re-checked by a scheduled run
    ├── PlatformError               a remote platform answered with an error (keeps its own message)
    │   ├── AuthError               401 / 403: credentials or role (e.g. OpenAI Owner role)
    │   ├── RateLimitedError        429, with retry_after seconds when the platform said
    │   └── PlatformUnavailableError  5xx, timeouts, connection refused
    ├── BackupError                 a backup could not be written or read
    │   └── BackupVerifyError       a backup does not match its manifest (lists every mismatch)
    └── LedgerError                 the audit ledger cannot be written
        └── LedgerTamperedError     the hash chain is broken (names the first bad entry)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any


class RetirementError(Exception):
    """Base class of every error this library raises on purpose."""


class InputError(RetirementError, ValueError):
    """Bad input. Raised before any side effect.

    Args:
        field: the name of the offending field or argument.
        problem: what was wrong with it.
        allowed: what would have been accepted.
    """

    def __init__(self, field: str, problem: str, allowed: str | None = None) -> None:
        self.field = field
        self.problem = problem
        self.allowed = allowed
        message = f"{field}: {problem}"
        if allowed:
            message += f" (allowed: {allowed})"
        super().__init__(message)


class UnknownNameError(InputError):
    """A name that is not one of a fixed set; the message lists the valid names."""

    def __init__(self, field: str, name: str, valid: Iterable[str]) -> None:
        self.valid = sorted(valid)
        super().__init__(field, f"unknown name {name!r}", ", ".join(self.valid) or "none")


class ConfigError(RetirementError):
    """Settings or credentials are missing or inconsistent."""


class NotFoundError(RetirementError):
    """The model, version, alias, backup or run does not exist."""


class ConflictError(RetirementError):
    """The target exists, or is in a state that forbids the request."""


class DeletionBlockedError(ConflictError):
    """A platform rule or a dependent forbids the deletion.

    Args:
        reference: the model reference that cannot be deleted.
        blockers: human-readable reasons, one per blocker.
    """

    def __init__(self, reference: str, blockers: Sequence[str]) -> None:
        self.reference = reference
        self.blockers = list(blockers)
        super().__init__(f"{reference} cannot be deleted: " + "; ".join(self.blockers))


class StaleStateError(ConflictError):
    """A retirement changed since this writer read it: the other writer won and nothing was written."""


class SafetyError(RetirementError):
    """A safety invariant refused a step; nothing destructive was done."""


class ApprovalError(SafetyError):
    """A gate was rejected, timed out, or answered by someone not allowed to."""


class RetirementStoppedError(SafetyError):
    """The retirement is cancelled, halted or done: a destructive call was refused, or a loop stopped."""

    def __init__(self, retirement_id: str, status: str, reason: str, refused: str) -> None:
        self.retirement_id = retirement_id
        self.status = status
        self.reason = reason
        super().__init__(f"retirement {retirement_id} is {status} ({reason or 'no reason given'}): {refused} refused")


class DeletePendingError(RetirementError):
    """The platform accepted the delete but still shows the model: re-check later (``retry_at``)."""

    def __init__(self, message: str, retry_at: datetime) -> None:
        self.retry_at = retry_at
        super().__init__(message)


class PlatformError(RetirementError):
    """A remote platform answered with an error.

    Args:
        platform: the platform's name.
        message: the platform's own message.
        status: the HTTP status, when there was one.
        detail: the decoded error body, for the record (never contains credentials).
    """

    def __init__(
        self,
        platform: str,
        message: str,
        status: int | None = None,
        detail: Any = None,
    ) -> None:
        self.platform = platform
        self.status = status
        self.detail = detail
        prefix = f"{platform}" + (f" HTTP {status}" if status is not None else "")
        super().__init__(f"{prefix}: {message}")


class AuthError(PlatformError):
    """401 or 403: the credentials are wrong or lack the role the call needs."""


class RateLimitedError(PlatformError):
    """429: the platform asks to slow down; ``retry_after`` is in seconds when known."""

    def __init__(
        self,
        platform: str,
        message: str,
        status: int | None = 429,
        detail: Any = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(platform, message, status, detail)
        self.retry_after = retry_after


class PlatformUnavailableError(PlatformError):
    """5xx, timeout or connection failure: the platform could not answer."""


class BackupError(RetirementError):
    """A backup could not be written or read."""


class BackupVerifyError(BackupError):
    """A backup does not match its manifest.

    Args:
        location: where the backup is.
        mismatches: one line per problem (path and what differs).
    """

    def __init__(self, location: str, mismatches: Sequence[str]) -> None:
        self.location = location
        self.mismatches = list(mismatches)
        super().__init__(f"backup at {location} failed verification: " + "; ".join(self.mismatches))


class LedgerError(RetirementError):
    """The audit ledger cannot be written or read."""


class LedgerTamperedError(LedgerError):
    """The ledger's hash chain is broken; ``line`` is the first bad entry (1-based)."""

    def __init__(self, path: str, line: int, problem: str) -> None:
        self.path = path
        self.line = line
        self.problem = problem
        super().__init__(f"ledger {path}: line {line}: {problem}")


__all__ = [
    "ApprovalError",
    "AuthError",
    "BackupError",
    "BackupVerifyError",
    "ConfigError",
    "ConflictError",
    "DeletePendingError",
    "DeletionBlockedError",
    "InputError",
    "LedgerError",
    "LedgerTamperedError",
    "NotFoundError",
    "PlatformError",
    "PlatformUnavailableError",
    "RateLimitedError",
    "RetirementError",
    "RetirementStoppedError",
    "SafetyError",
    "StaleStateError",
    "UnknownNameError",
]
