"""Parsing input events: what is accepted, and the reason given for what is not."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dispatcher.events import CommandCreated, DeviceAck, DeviceState, parse
from dispatcher.exceptions import InvalidEvent

GOOD: dict[str, Any] = {"id": "a" * 24, "organization": "b" * 24, "aosEnterprise": "c" * 24,
        "aosDevice": "d" * 24, "mdmUser": None, "command": "REBOOT", "params": {},
        "duration": 600, "createdAt": "2026-11-23T10:00:00Z"}


def raw(value: object) -> bytes:
    return json.dumps(value).encode()


def reason(model: type, value: bytes | None) -> str:
    with pytest.raises(InvalidEvent) as exc:
        parse(model, value, 65536)
    return exc.value.reason


def test_a_valid_command_parses_with_utc_time() -> None:
    event = parse(CommandCreated, raw(GOOD), 65536)
    assert event.command == "REBOOT"
    assert event.createdAt is not None
    offset = event.createdAt.utcoffset()
    assert offset is not None
    assert offset.total_seconds() == 0


@pytest.mark.parametrize(("value", "expected"), [
    (None, "empty"),
    (b"", "empty"),
    (b"   ", "empty"),
    (b"{not json", "invalid_json"),
    (b"\xff\xfe", "invalid_json"),
    (raw([1, 2]), "validation"),
    (raw({**GOOD, "command": "SELF_DESTRUCT"}), "unknown_command"),
    (raw({**GOOD, "id": "xyz"}), "validation"),
    (raw({**GOOD, "aosDevice": "d" * 25}), "validation"),
    (raw({**GOOD, "duration": "ten"}), "validation"),
    (raw({**GOOD, "duration": -1}), "validation"),
    (raw({**GOOD, "duration": True}), "validation"),
    (raw({**GOOD, "unexpected": 1}), "validation"),
    (raw({k: v for k, v in GOOD.items() if k != "aosDevice"}), "validation"),
    (raw({**GOOD, "createdAt": "2026-11-23T10:00:00"}), "validation"),
    (raw({**GOOD, "params": {"blob": "x" * 5000}}), "too_large"),
    (raw({**GOOD, "params": {"a": "nul\u0000"}}), "validation"),
    (b"{" + b" " * 70000 + b"}", "too_large"),
])
def test_invalid_commands_have_a_reason(value: bytes | None, expected: str) -> None:
    assert reason(CommandCreated, value) == expected


def test_duration_absent_or_zero_is_accepted() -> None:
    assert parse(CommandCreated, raw({**GOOD, "duration": 0}), 65536).duration == 0
    no_duration = {k: v for k, v in GOOD.items() if k != "duration"}
    assert parse(CommandCreated, raw(no_duration), 65536).duration is None


def test_ack_status_must_be_known() -> None:
    ack = {"commandId": "a" * 24, "aosDevice": "d" * 24, "status": "MAYBE"}
    assert reason(DeviceAck, raw(ack)) == "unknown_status"


def test_device_state_must_be_known() -> None:
    device = {"aosDevice": "d" * 24, "organization": "b" * 24, "aosEnterprise": "c" * 24,
              "pushToken": "t", "state": "LOST"}
    assert reason(DeviceState, raw(device)) == "validation"


def test_the_detail_never_echoes_values() -> None:
    secret = "hunter2-very-secret"
    value = raw({**GOOD, "aosDevice": "bad", "params": {"newPassword": secret}})
    with pytest.raises(InvalidEvent) as exc:
        parse(CommandCreated, value, 65536)
    assert secret not in str(exc.value)
