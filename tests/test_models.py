"""The domain models: references parse or fail with an error naming the field."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from retirement.errors import InputError
from retirement.models import ModelRef, RetirementRequest


@pytest.mark.parametrize(
    ("text", "name", "version"),
    [
        ("churn-model@3", "churn-model", "3"),
        ("churn-model", "churn-model", None),
        ("a.b_c@1.2.0", "a.b_c", "1.2.0"),
        ("ft:gpt-4o-mini:acme::abc123", "ft:gpt-4o-mini:acme::abc123", None),
        ("owner/name@9f8e7d", "owner/name", "9f8e7d"),
    ],
)
def test_parse_accepts_platform_names(text: str, name: str, version: str | None) -> None:
    ref = ModelRef.parse(text)
    assert (ref.name, ref.version) == (name, version)
    assert str(ref) == text


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "is empty"),
        ("churn@", "no version"),
        ("@3", "is empty"),
        ("a@b@c", "more than one '@'"),
        ("churn@3 ", "surrounding spaces"),
        ("churn\x00x@3", "control character"),
        ("churn@../3", "invalid version"),
        ("x" * 300 + "@1", "characters long"),
    ],
)
def test_parse_refuses_malformed_reference_naming_the_field(text: str, needle: str) -> None:
    with pytest.raises(InputError) as info:
        ModelRef.parse(text, field="model")
    assert info.value.field == "model"
    assert needle in str(info.value)
    assert "allowed" in str(info.value)


def _request(**overrides: object) -> RetirementRequest:
    data: dict[str, object] = {
        "model": "churn-model@3",
        "replacement": "churn-model@4",
        "requester": "alice",
        "approvers": ["bob"],
        "reason": "superseded by v4",
    }
    data.update(overrides)
    return RetirementRequest.model_validate(data)


def test_request_parses_references() -> None:
    request = _request()
    assert request.ref == ModelRef(platform="local", name="churn-model", version="3")
    assert request.replacement_ref == ModelRef(platform="local", name="churn-model", version="4")


@pytest.mark.parametrize(
    ("overrides", "field", "needle"),
    [
        ({"platform": "sagemaker"}, "platform", "bailo, datature-vi, local, mlflow, openai, replicate, selise"),
        ({"model": "churn@"}, "model", "no version"),
        ({"replacement": "churn-model@3"}, "replacement", "is the model being retired"),
        ({"approvers": ["alice"]}, "approvers", "other than the requester"),
        ({"traffic_window_hours": -1}, "traffic_window_hours", "greater than 0"),
        ({"cutover_window": "25:00-26:00"}, "cutover_window", "pattern"),
        ({"surprise": 1}, "surprise", "Extra inputs are not permitted"),
    ],
)
def test_request_refuses_bad_input_naming_the_field(overrides: dict[str, object], field: str, needle: str) -> None:
    with pytest.raises(ValidationError) as info:
        _request(**overrides)
    text = str(info.value)
    assert field in text
    assert needle in text


def test_request_form_describes_every_field() -> None:
    schema = RetirementRequest.model_json_schema()
    missing = [name for name, prop in schema["properties"].items() if not prop.get("description")]
    assert missing == []
