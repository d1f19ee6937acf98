"""Redaction by value (every configured secret), by name (form fields, query parameters, headers, JSON) and by shape."""

from __future__ import annotations

import json
from urllib.parse import quote, quote_plus

import httpx
import pytest
from pydantic import SecretStr

from retirement.errors import AuthError, PlatformUnavailableError
from retirement.platforms.http import raise_for_platform, send
from retirement.redact import REDACTED, redact, redact_text, remember


def test_a_configured_secret_is_redacted_wherever_it_appears_and_however_it_is_encoded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = 'plain+secret/with&marks, a space and "quotes"'
    monkeypatch.setenv("RETIRE_SELISE_CLIENT_SECRET", secret)
    form = httpx.Request("POST", "https://x.test", data={"client_secret": secret}).read().decode()
    query = str(httpx.Request("GET", "https://x.test", params={"client_secret": secret}).url.query, "ascii")
    as_json = json.dumps({"client_secret": secret})
    for text in (secret, form, query, as_json):
        assert secret not in redact_text(f"refused {text}")
    for text in (secret, quote(secret, safe=""), quote_plus(secret), json.dumps(secret)[1:-1]):
        assert redact_text(f"refused {text}") == f"refused {REDACTED}", text


def test_the_secret_parts_of_configured_urls_and_headers_are_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETIRE_DATABASE_URL", "postgresql://retire:db-pass-word@db.internal:5432/retire")
    monkeypatch.setenv("RETIRE_SLACK_WEBHOOK_URL", "http://127.0.0.1:9/services/T1/B2/hook-secret-path")
    monkeypatch.setenv("RETIRE_PROMETHEUS_AUTH_HEADER", "Custom prom-credential-1")
    said = redact_text("db-pass-word; posted to /services/T1/B2/hook-secret-path; sent prom-credential-1")
    assert said == f"{REDACTED}; posted to {REDACTED}; sent {REDACTED}"
    assert redact_text("the store at db.internal:5432/retire") == "the store at db.internal:5432/retire"


def test_a_remembered_secret_is_redacted() -> None:
    remember(SecretStr("issued-token-4711"), None, "x")
    assert redact_text("token issued-token-4711 expired") == f"token {REDACTED} expired"
    assert redact_text("x marks the spot") == "x marks the spot"  # too short to be a secret


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "grant_type=client_credentials&client_id=retire&client_secret=unknown-value",
            f"grant_type=client_credentials&client_id=retire&client_secret={REDACTED}",
        ),
        ("GET /models/?project_key=pk-1&page=2", f"GET /models/?project_key={REDACTED}&page=2"),
        ("GET /v1/x?key=abc&api_key=def", f"GET /v1/x?key={REDACTED}&api_key={REDACTED}"),
        ("Authorization: Token abc\nx-blocks-key: pk-2", f"Authorization: {REDACTED}\nx-blocks-key: {REDACTED}"),
        ('{"password": "hunter2", "user": "bob"}', f'{{"password": "{REDACTED}", "user": "bob"}}'),
        ("{'access_token': 'tok'}", f"{{'access_token': '{REDACTED}'}}"),
        ('secret_key="quoted value" rest', f"secret_key={REDACTED} rest"),
    ],
)
def test_credential_fields_are_redacted_by_name(text: str, expected: str) -> None:
    assert redact_text(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "query.project_key: field required",
        "body.limit: ensure this value is between 1 and 100",
        "the token endpoint refused the project's credentials",
        "model key is churn-model; page=2",
    ],
)
def test_ordinary_words_stay_readable(text: str) -> None:
    assert redact_text(text) == text


def test_redaction_is_idempotent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-abcdefgh12345678")
    once = redact_text("client_secret=sk-abcdefgh12345678&x=1 Authorization: Bearer sk-abcdefgh12345678")
    assert redact_text(once) == once and "]]" not in once


def test_structured_data_drops_credential_keys_and_scrubs_every_string(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPLICATE_API_TOKEN", "tok-in-a-value-1")
    value = {
        "project_key": "pk-3",
        "x-blocks-key": "pk-4",
        "key": "training_data",  # an MLflow tag's name, not a credential
        "value": "subscribers",
        "notes": ["sent tok-in-a-value-1", SecretStr("s")],
    }
    assert redact(value) == {
        "project_key": REDACTED,
        "x-blocks-key": REDACTED,
        "key": "training_data",
        "value": "subscribers",
        "notes": [f"sent {REDACTED}", REDACTED],
    }


def test_an_error_never_carries_the_request_even_when_the_server_echoes_it() -> None:
    def echo(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, text=f"refused {request.method} {request.url}\n{request.content.decode()}")

    with httpx.Client(transport=httpx.MockTransport(echo), base_url="https://platform.test") as client:
        response = client.post("/token?api_key=query-cred", data={"password": "form-cred", "user": "bob"})
    with pytest.raises(AuthError) as caught:
        raise_for_platform(response, "somewhere")
    said = str(caught.value)
    assert said.startswith("somewhere HTTP 401: refused POST")
    assert "query-cred" not in said and "form-cred" not in said and "user=bob" in said


def test_a_request_without_an_answer_names_the_url_without_its_credentials() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with httpx.Client(transport=httpx.MockTransport(down)) as client, pytest.raises(PlatformUnavailableError) as caught:
        send(client, "GET", "https://user:pw-cred@platform.test/v1/models?token=q-cred", platform="p", max_retries=0)
    said = str(caught.value)
    assert "GET https://platform.test/v1/models: ConnectError" in said
    assert "pw-cred" not in said and "q-cred" not in said
