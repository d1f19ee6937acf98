"""Keep secrets out of logs, artifacts, Slack and the ledger.

Three nets, applied together by :func:`redact_text` (and to every string :func:`redact` meets):

- by value: every configured secret (the product's credential variables in the environment, and
  any value passed to :func:`remember`), also in its URL-encoded forms;
- by name: the value of a form field, query parameter, JSON member or header whose name says it
  is a credential (``client_secret=...``, ``"password": "..."``, ``x-blocks-key: ...``);
- by shape: well-known credential formats (OpenAI, Replicate and Slack tokens, bearer and basic
  headers, user info in URLs).
"""

from __future__ import annotations

import functools
import json
import os
import re
import threading
from typing import Any
from urllib.parse import quote, quote_plus, unquote, urlsplit

from pydantic import SecretStr

REDACTED = "[redacted]"

_CREDENTIAL_WORDS = (
    r"token|secret|password|passwd|pwd|authorization|api[-_]?key|access[-_]?key|private[-_]?key|"
    r"cookie|credential|signature"
)
# Keys of structured data (JSON members, dict keys) whose value is dropped whole. A bare ``key`` is
# left alone here: MLflow tags and other records use it for ordinary names.
_SECRET_KEY_RE = re.compile(rf"({_CREDENTIAL_WORDS}|[-_]key$)", re.IGNORECASE)
# Names of fields inside free text (form bodies, query strings, headers, echoed JSON): the same
# words, plus any name that is or ends in ``key`` (``key=``, ``project_key=``, ``x-blocks-key:``).
_DONE = re.escape(REDACTED)  # a value already replaced is not replaced again
_NAME = rf"[A-Za-z0-9_.\-]*(?:{_CREDENTIAL_WORDS}|key)"
_FORM_FIELD_RE = re.compile(
    rf"(?<![A-Za-z0-9_.\-])(?P<name>{_NAME})=(?!{_DONE})(?P<value>\"[^\"]*\"|'[^']*'|[^&\s\"'<>,;)}}\]]+)",
    re.IGNORECASE,
)
_QUOTED_MEMBER_RE = re.compile(
    rf"(?P<name>[\"']{_NAME}[\"']\s*[:=]\s*)(?P<value>\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*')", re.IGNORECASE
)
# Header lines of an echoed request (``Authorization: ...``, ``x-blocks-key: ...``); header names
# have no '.' or '_', which keeps "query.project_key: field required" (FastAPI's words) readable.
_HEADER_LINE_RE = re.compile(
    rf"(?im)^(?P<name>[ \t]*[A-Za-z0-9\-]*(?:{_CREDENTIAL_WORDS}|key)[ \t]*:[ \t]*)(?!{_DONE}$)(?P<value>\S[^\r\n]*)"
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

# The credential variables the product reads (platforms, Slack, Prometheus, the database URL, the
# ledger's signing key, S3): their values are secrets wherever they appear. RETIRE_BAILO_CLIENT_KEY
# is a path to a key file and RETIRE_LEDGER_VERIFY_KEY a public key: neither is secret.
_SECRET_ENV_RE = re.compile(
    r"^(RETIRE|OPENAI|REPLICATE|MLFLOW|DATATURE|AWS)_\w*"
    r"(TOKEN|SECRET\w*|PASSWORD|_KEY|_KEY_ID|AUTH\w*|WEBHOOK\w*|CREDENTIAL\w*|DATABASE_URL)$"
)
_NOT_SECRET_ENV = frozenset({"RETIRE_BAILO_CLIENT_KEY", "RETIRE_LEDGER_VERIFY_KEY"})
# Shorter values are not treated as secrets: replacing every "1" or "abc" would garble messages.
MIN_SECRET_LENGTH = 6

_remembered: set[str] = set()
_lock = threading.Lock()


def _parts(value: str) -> set[str]:
    """The parts of a configured value that are secret: the value itself; the credential of ``Scheme credential``
    (an Authorization header); of a URL, its password (a database URL) and, for http(s), its path and query
    (a webhook URL's secret is its path) instead of the whole URL."""
    url = urlsplit(value) if "://" in value else None
    if url is not None:
        parts = {url.password or "", unquote(url.password or "")}
        if url.scheme in ("http", "https"):
            parts.add(url.path + (f"?{url.query}" if url.query else ""))
    else:
        parts = {value}
        scheme, space, credential = value.strip().partition(" ")
        if space and scheme.isalpha() and " " not in credential.strip():
            parts.add(credential.strip())
    return {p for p in parts if len(p) >= MIN_SECRET_LENGTH}


def remember(*secrets: SecretStr | str | None) -> None:
    """Add secrets (settings read elsewhere than the environment) to those redacted by value."""
    values = {s.get_secret_value() if isinstance(s, SecretStr) else s for s in secrets if s is not None}
    with _lock:
        for value in values:
            _remembered.update(_parts(value))


def known_secrets() -> frozenset[str]:
    """Every secret value redacted by value: the credential variables of the environment and the remembered ones."""
    from_env = {
        part
        for name, value in os.environ.items()
        if _SECRET_ENV_RE.match(name) and name not in _NOT_SECRET_ENV
        for part in _parts(value)
    }
    with _lock:
        return frozenset(from_env | _remembered)


@functools.lru_cache(maxsize=8)
def _values_pattern(secrets: frozenset[str]) -> re.Pattern[str] | None:
    # As sent in a query string or form (httpx encodes like quote_plus), in a path, and inside JSON.
    forms = {form for s in secrets for form in (s, quote(s, safe=""), quote_plus(s), json.dumps(s)[1:-1])}
    # A secret can carry a shorter one (a webhook URL holds its token; a bearer header holds its key): longest first.
    alternatives = sorted(forms, key=len, reverse=True)
    return re.compile("|".join(re.escape(a) for a in alternatives)) if alternatives else None


def _scrub(text: str, values: re.Pattern[str] | None) -> str:
    if values is not None:
        text = values.sub(REDACTED, text)
    text = _HEADER_LINE_RE.sub(lambda m: m.group("name") + REDACTED, text)
    text = _QUOTED_MEMBER_RE.sub(lambda m: m.group("name") + m.group("value")[0] + REDACTED + m.group("value")[0], text)
    text = _FORM_FIELD_RE.sub(lambda m: f"{m.group('name')}={REDACTED}", text)
    for pattern in _SECRET_VALUE_RES:
        text = pattern.sub(REDACTED, text)
    return _URL_USERINFO_RE.sub(lambda m: f"{m.group('scheme')}{REDACTED}@", text)


def redact_text(text: str) -> str:
    """``text`` with every configured secret, credential-named field and credential-shaped substring replaced."""
    return _scrub(text, _values_pattern(known_secrets()))


def redact(value: Any) -> Any:
    """A copy of ``value`` (dicts, lists, strings) with secrets removed.

    Values under secret-sounding keys are dropped whole; strings anywhere are scrubbed as by
    :func:`redact_text`.
    """
    return _redact(value, _values_pattern(known_secrets()))


def _redact(value: Any, values: re.Pattern[str] | None) -> Any:
    if isinstance(value, dict):
        return {
            k: (REDACTED if isinstance(k, str) and _SECRET_KEY_RE.search(k) and v else _redact(v, values))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_redact(v, values) for v in value]
    if isinstance(value, str):
        return _scrub(value, values)
    if isinstance(value, SecretStr):
        return REDACTED
    return value


__all__ = ["MIN_SECRET_LENGTH", "REDACTED", "known_secrets", "redact", "redact_text", "remember"]
