"""Keep secrets out of logs, artifacts, Slack and the ledger."""

from __future__ import annotations

import re
from typing import Any

REDACTED = "[redacted]"

_SECRET_KEY_RE = re.compile(
    r"(token|secret|password|passwd|authorization|api[-_]?key|access[-_]?key|private[-_]?key|"
    r"cookie|credential|x-blocks-key|signature)",
    re.IGNORECASE,
)
# Shapes of well-known credentials: OpenAI, Replicate, Slack, bearer/basic headers, URL userinfo.
_SECRET_VALUE_RES = [
    re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}"),
    re.compile(r"\br8_[A-Za-z0-9]{8,}"),
    re.compile(r"\bxox[abposr]-[A-Za-z0-9\-]{8,}"),
    re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=\-]{8,}", re.IGNORECASE),
    re.compile(r"https://hooks\.slack\.com/services/[A-Za-z0-9/_\-]+"),
]
_URL_USERINFO_RE = re.compile(r"(?P<scheme>[a-z][a-z0-9+.\-]*://)[^/@\s:]+:[^/@\s]+@", re.IGNORECASE)


def redact_text(text: str) -> str:
    """``text`` with every credential-shaped substring replaced."""
    for pattern in _SECRET_VALUE_RES:
        text = pattern.sub(REDACTED, text)
    return _URL_USERINFO_RE.sub(lambda m: f"{m.group('scheme')}{REDACTED}@", text)


def redact(value: Any) -> Any:
    """A copy of ``value`` (dicts, lists, strings) with secrets removed.

    Values under secret-sounding keys are dropped whole; strings anywhere are scrubbed of
    credential shapes.
    """
    if isinstance(value, dict):
        return {
            k: (REDACTED if isinstance(k, str) and _SECRET_KEY_RE.search(k) and v else redact(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return redact_text(value)
    return value
