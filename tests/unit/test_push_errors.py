"""What a push provider's refusal becomes: a fixed message per errorType for the tenant,
the provider's text (without the device token) for the logs only."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from dispatcher.exceptions import PUSH_ERROR_MESSAGES, PushError
from dispatcher.push import _pushy_answer

TOKEN = "device-token-0123456789"
PROVIDER_TEXT = f"internal shard 7 of account acme-corp refused {TOKEN}"


@dataclass
class Answer:
    """The parts of an aiohttp response that the classification reads."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)


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
        _pushy_answer(Answer(status), payload, TOKEN)  # type: ignore[arg-type]
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
