"""No input stops the parser or the dead-letter path: every value is a model or a reason.

The property behind the critical poison fix: for any bytes at all, and for any JSON tree
(deep nesting, huge numbers, NaN, invalid UTF-8, duplicate keys), parsing an input of any
topic either yields its model or raises :class:`InvalidEvent` with a reason, and the dead
letter of that value can always be built, keeps the value, and never shows a secret.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from dispatcher import safejson
from dispatcher.deadletter import Source, build
from dispatcher.events import INPUT_MODELS, CommandCreated, parse
from dispatcher.exceptions import InvalidEvent
from dispatcher.secretbox import SECRET_KEYS, redact_raw
from tests.support import fuzz
from tests.support.fuzz import nested

MAX_BYTES = 1024 * 1024
SECRET = "hunter2-poison-secret"
GOOD = {"id": "a" * 24, "organization": "b" * 24, "aosEnterprise": "c" * 24,
        "aosDevice": "d" * 24, "mdmUser": None, "command": "RESET_PASSWORD",
        "params": {"newPassword": SECRET}, "duration": 600,
        "createdAt": "2026-11-23T10:00:00Z"}


values = fuzz.values(GOOD)


def check_total(value: bytes) -> None:
    for model in INPUT_MODELS.values():
        reason = "accepted"
        try:
            parse(model, value, MAX_BYTES)
        except InvalidEvent as exc:
            reason, detail = exc.reason, exc.detail
            assert detail
        assert reason
    letter = build(Source("mdm.commands.created", 0, 7, b"k", value), "x", "y")
    assert letter.value is not None
    kept = (base64.b64decode(letter.value) if letter.valueEncoding == "base64"
            else letter.value.encode())
    assert SECRET.encode() not in kept
    if not any(f'"{name}"'.encode() in value for name in SECRET_KEYS | {"pushToken"}):
        assert kept == value or letter.valueTruncated  # no secret field: kept byte for byte
    json.loads(letter.model_dump_json())


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values)
def test_any_value_is_a_model_or_a_reason_and_its_dead_letter_can_be_built(
        value: bytes) -> None:
    check_total(value)


@pytest.mark.parametrize("raw", [nested(5000), nested(5000, "{"), nested(100_000),
                                 b"[" * 200_000, b'{"id": ' + nested(5000, "{") + b"}"])
def test_deep_nesting_is_too_deep_and_its_dead_letter_keeps_the_value(raw: bytes) -> None:
    for model in INPUT_MODELS.values():
        with pytest.raises(InvalidEvent) as exc:
            parse(model, raw, MAX_BYTES)
        assert exc.value.reason == "too_deep"
    letter = build(Source("t", 0, 0, None, raw), "too_deep", "")
    assert letter.value == raw.decode()


def test_depth_is_measured_outside_strings_only() -> None:
    inside = json.dumps({"params": {"note": "[" * 500 + "{" * 500}})
    assert safejson.loads(inside.encode()) == json.loads(inside)
    at_limit = nested(safejson.MAX_DEPTH)
    assert safejson.loads(at_limit) is not None
    with pytest.raises(safejson.TooDeep):
        safejson.loads(nested(safejson.MAX_DEPTH + 1))


@pytest.mark.parametrize(("raw", "reason"), [
    (json.dumps(GOOD).encode()[:-1] + b', "command": "WIPE"}', "duplicate_key"),
    (b'{"a": NaN}', "invalid_json"),
    (b'{"a": 1e999}', "invalid_json"),
    (b'{"a": ' + b"9" * 5000 + b"}", "invalid_json"),
    (b'{"a": "\\udc00"}', "invalid_json"),
    (b'{"a": "\xed\xb0\x80"}', "invalid_json"),
    (b"[" * 33 + b"]" * 33, "too_deep"),
])
def test_strict_json_reasons(raw: bytes, reason: str) -> None:
    with pytest.raises(InvalidEvent) as exc:
        parse(CommandCreated, raw, MAX_BYTES)
    assert exc.value.reason == reason


def test_a_valid_surrogate_pair_is_accepted() -> None:
    event: dict[str, Any] = {**GOOD, "command": "LOCK", "params": {"message": "\U0001f600"}}
    assert parse(CommandCreated, json.dumps(event).encode(), MAX_BYTES).params == {
        "message": "\U0001f600"}


def test_redaction_of_a_value_that_does_not_parse_keeps_the_rest() -> None:
    deep = b'{"params": {"newPassword": "' + SECRET.encode() + b'", "x": ' + nested(900) + b"}}"
    redacted = redact_raw(deep)
    assert SECRET.encode() not in redacted
    assert redacted.replace(b'"***"', b'"' + SECRET.encode() + b'"') == deep
    binary = b'{"pin": "' + SECRET.encode() + b'", "x": "\xff"}'
    assert redact_raw(binary) == b'{"pin": "***", "x": "\xff"}'
