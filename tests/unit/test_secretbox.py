"""Secrets are split out of params, sealed, and redacted from anything shown."""

from __future__ import annotations

import json

from dispatcher.deadletter import Source, build
from dispatcher.secretbox import SecretBox, redact_raw, redact_text, split


def test_split_takes_secrets_out() -> None:
    public, secret = split({"newPassword": "p@ss", "resetPasswordFlags": ["LOCK_NOW"]})
    assert public == {"resetPasswordFlags": ["LOCK_NOW"]}
    assert secret == {"newPassword": "p@ss"}


def test_sealed_secrets_round_trip_and_do_not_show_the_plaintext() -> None:
    box = SecretBox("k1")
    sealed = box.seal({"newPassword": "p@ss-123"})
    assert sealed is not None
    assert b"p@ss-123" not in sealed
    assert box.open(sealed) == {"newPassword": "p@ss-123"}
    assert SecretBox("another key").open(sealed) == {}
    assert box.seal({}) is None


def test_redaction_of_raw_values_json_or_not() -> None:
    assert b"p@ss" not in redact_raw(json.dumps({"params": {"newPassword": "p@ss"}}).encode())
    broken = b'{"params": {"newPassword": "p@ss", '
    assert b"p@ss" not in redact_raw(broken)
    assert "KEY123" not in redact_text("POST /push?api_key=KEY123&x=1")


def test_dead_letters_carry_the_value_without_secrets() -> None:
    value = json.dumps({"id": "bad", "params": {"newPassword": "p@ss"}}).encode()
    letter = build(Source("mdm.commands.created", 1, 42, b"k", value), "validation", "id")
    assert letter.value is not None
    assert "p@ss" not in letter.value
    assert (letter.topic, letter.partition, letter.offset) == ("mdm.commands.created", 1, 42)
    binary = build(Source("t", 0, 0, None, b"\xff\x00\xfe"), "invalid_json", "x")
    assert binary.valueEncoding == "base64"
