"""What a push provider's answer means: accepted, or refused permanently or retriably
(a pure decision), and a fixed message per errorType for the tenant, the provider's text
(without the device token) for the logs only."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from dispatcher.exceptions import PUSH_ERROR_MESSAGES, PushError
from dispatcher.push.providers import pushy_answer, retry_after_s, transport_error

TOKEN = "device-token-0123456789"
PROVIDER_TEXT = f"internal shard 7 of account acme-corp refused {TOKEN}"


@pytest.mark.parametrize(("status", "payload", "error_type", "retriable"), [
    (400, {"code": "NO_RECIPIENTS", "error": PROVIDER_TEXT}, "INVALID_TOKEN", False),
    (400, {"code": "INVALID_PARAM", "error": PROVIDER_TEXT}, "PUSH_REJECTED", False),
    (413, {"code": "PAYLOAD_LIMIT_EXCEEDED", "error": PROVIDER_TEXT}, "PUSH_REJECTED", False),
    (401, {"code": "INVALID_API_KEY", "error": PROVIDER_TEXT}, "PROVIDER_AUTH", True),
    (503, {"code": "INTERNAL_SERVER_ERROR", "error": PROVIDER_TEXT}, "PROVIDER_ERROR", True),
    (429, {"code": "RATE_LIMIT_EXCEEDED", "error": PROVIDER_TEXT}, "RATE_LIMITED", True),
    (200, {"id": "p1", "info": {"devices": 0, "failed": [TOKEN]}}, "INVALID_TOKEN", False),
])
def test_the_tenant_gets_a_fixed_message_the_logs_get_the_providers_text(
        status: int, payload: dict[str, Any], error_type: str, retriable: bool) -> None:
    with pytest.raises(PushError) as caught:
        pushy_answer(status, payload, TOKEN)
    err = caught.value
    assert (err.error_type, err.retriable) == (error_type, retriable)
    assert err.public_message == PUSH_ERROR_MESSAGES[error_type]
    assert "acme" not in err.public_message
    assert TOKEN not in str(err)
    if "error" in payload and status != 429:  # a 429 says nothing worth logging
        assert "internal shard 7 of account acme-corp refused <token>" in str(err)


def test_every_error_type_has_a_fixed_message() -> None:
    assert PushError("x", error_type="SOMETHING_NEW", retriable=False).public_message == (
        "The push could not be delivered")
    assert all(message and "{" not in message for message in PUSH_ERROR_MESSAGES.values())


@pytest.mark.parametrize(("status", "payload", "retry_after", "expected"), [
    (200, {"id": "p1", "info": {"devices": 1}}, None, "p1"),
    (200, {"id": "p1"}, 7.0, "p1"),
    (200, {"id": "p1", "info": "not an object"}, None, "p1"),
    (200, {}, None, ("PUSH_REJECTED", False, None)),
    (200, {"id": "p1", "info": {"failed": [TOKEN]}}, None, ("INVALID_TOKEN", False, None)),
    (429, {}, 3.0, ("RATE_LIMITED", True, 3.0)),
    (429, {}, None, ("RATE_LIMITED", True, None)),
    (403, {}, 3.0, ("PROVIDER_AUTH", True, None)),
    (500, {}, 4.0, ("PROVIDER_ERROR", True, 4.0)),
    (502, {"error": "bad gateway"}, None, ("PROVIDER_ERROR", True, None)),
    (408, {}, 2.0, ("PROVIDER_ERROR", True, 2.0)),
    (400, {"code": "DEVICE_NOT_FOUND"}, 2.0, ("INVALID_TOKEN", False, None)),
    (404, {}, None, ("PUSH_REJECTED", False, None)),
])
def test_each_answer_is_accepted_or_permanent_or_retriable(
        status: int, payload: dict[str, Any], retry_after: float | None,
        expected: str | tuple[str, bool, float | None]) -> None:
    if isinstance(expected, str):
        assert pushy_answer(status, payload, TOKEN, retry_after) == expected
        return
    with pytest.raises(PushError) as caught:
        pushy_answer(status, payload, TOKEN, retry_after)
    err = caught.value
    assert (err.error_type, err.retriable, err.retry_after_s) == expected


@pytest.mark.parametrize(("exc", "error_type", "outcome"), [
    (TimeoutError(), "PUSH_TIMEOUT", "timeout"),
    (aiohttp.ClientConnectionError("refused"), "PUSH_UNREACHABLE", "connection_error"),
    (aiohttp.ServerDisconnectedError(), "PUSH_UNREACHABLE", "connection_error"),
])
def test_no_answer_at_all_is_retriable(exc: BaseException, error_type: str,
                                       outcome: str) -> None:
    err = transport_error(exc)
    assert (err.error_type, err.retriable, err.outcome) == (error_type, True, outcome)


@pytest.mark.parametrize(("header", "seconds"), [
    (None, None), ("", None), ("5", 5.0), ("0.5", 0.5), ("-3", 0.0),
    ("Wed, 21 Oct 2026 07:28:00 GMT", None),
])
def test_retry_after_in_seconds(header: str | None, seconds: float | None) -> None:
    assert retry_after_s(header) == seconds


@pytest.mark.parametrize(("push_id", "stored"), [
    ("5f1e2d3c4b5a69788796a5b4", "5f1e2d3c4b5a69788796a5b4"),
    (12345, "12345"),
    ("a\x00b", "ab"),
    ("lone \ud800 surrogate", "lone ? surrogate"),
    ("x" * 5000, "x" * 200),
])
def test_a_push_id_is_always_storable(push_id: Any, stored: str) -> None:
    assert pushy_answer(200, {"id": push_id}, TOKEN) == stored
