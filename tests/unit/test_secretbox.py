"""Secrets are masked in params at any depth, sealed under a key ring, bound to their
command, and redacted from anything shown; an unreadable one is an error."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from dispatcher.cli import dev_secret_keys
from dispatcher.config import Settings
from dispatcher.deadletter import Source, build
from dispatcher.exceptions import ConfigError, SecretUnreadable
from dispatcher.logs import is_secret_name
from dispatcher.secretbox import (
    REDACTED,
    SecretBox,
    generate_keys,
    redact_raw,
    redact_text,
    reveal,
    split,
    strip,
)

CMD = "a" * 24
OTHER = "b" * 24


def test_split_masks_secrets_at_any_depth_and_reveal_puts_them_back() -> None:
    params = {"newPassword": "p@ss", "resetPasswordFlags": ["LOCK_NOW"],
              "addEsimParams": {"activationCode": "LPA:1$smdp.example$XYZ",
                                "activationState": "ACTIVATED"},
              "steps": [{"pin": "1234"}, {"note": "n"}]}
    public, secrets = split(params)
    assert public == {"newPassword": REDACTED, "resetPasswordFlags": ["LOCK_NOW"],
                      "addEsimParams": {"activationCode": REDACTED,
                                        "activationState": "ACTIVATED"},
                      "steps": [{"pin": REDACTED}, {"note": "n"}]}
    assert sorted(path for path, _ in secrets) == sorted([
        ("newPassword",), ("addEsimParams", "activationCode"), ("steps", 0, "pin")])
    assert reveal(public, secrets) == params
    assert strip(public, secrets) == {"resetPasswordFlags": ["LOCK_NOW"],
                                      "addEsimParams": {"activationState": "ACTIVATED"},
                                      "steps": [{}, {"note": "n"}]}
    assert "XYZ" not in json.dumps(public)


def test_sealed_secrets_round_trip_and_do_not_show_the_plaintext() -> None:
    box = SecretBox(generate_keys("k1"))
    _, secrets = split({"newPassword": "p@ss-123", "addEsimParams": {"activationCode": "LPA:9"}})
    sealed = box.seal(CMD, secrets)
    assert sealed is not None
    assert sealed.startswith(b"v1:k1:")
    assert b"p@ss-123" not in sealed
    assert b"LPA:9" not in sealed
    assert box.open(CMD, sealed) == secrets
    assert box.seal(CMD, []) is None
    assert box.open(CMD, None) == []


def test_a_secret_that_does_not_decrypt_is_an_error_never_nothing() -> None:
    box = SecretBox(generate_keys("k1"))
    sealed = box.seal(CMD, [(("newPassword",), "p@ss")])
    assert sealed is not None
    with pytest.raises(SecretUnreadable, match="'k1'"):  # another replica's key, same id
        SecretBox(generate_keys("k1")).open(CMD, sealed)
    with pytest.raises(SecretUnreadable, match="not in DISPATCHER_SECRET_KEYS"):
        SecretBox(generate_keys("k2")).open(CMD, sealed)
    with pytest.raises(SecretUnreadable):
        box.open(CMD, sealed[:-1] + bytes([sealed[-1] ^ 1]))
    with pytest.raises(SecretUnreadable):
        box.open(CMD, b"garbage")
    key = bytes(32)
    forged = os.urandom(12)  # authentic under the key, but not a list of [path, value]
    forged += AESGCM(key).encrypt(forged, b'{"newPassword": "x"}', b"v1:z:" + CMD.encode())
    with pytest.raises(SecretUnreadable):
        SecretBox([("z", key)]).open(CMD, b"v1:z:" + forged)


def test_a_ciphertext_is_bound_to_its_command_and_its_key_id() -> None:
    k1, k2 = generate_keys("k1"), generate_keys("k2")
    box = SecretBox(f"{k1},{k2}")
    sealed = box.seal(CMD, [(("newPassword",), "p@ss")])
    assert sealed is not None
    with pytest.raises(SecretUnreadable):  # moved onto another command
        box.open(OTHER, sealed)
    relabelled = sealed.replace(b"v1:k1:", b"v1:k2:", 1)
    with pytest.raises(SecretUnreadable):  # relabelled to the other key
        SecretBox(f"k2:{k1.split(':', 1)[1]}").open(CMD, relabelled)


def test_rotation_a_new_key_in_front_old_commands_still_decrypt() -> None:
    old, new = generate_keys("2026a"), generate_keys("2026b")
    before = SecretBox(old).seal(CMD, [(("pin",), "1234")])
    assert before is not None
    rotated = SecretBox(f"{new},{old}")
    assert rotated.key_ids == ["2026b", "2026a"]
    assert rotated.open(CMD, before) == [(("pin",), "1234")]
    after = rotated.seal(OTHER, [(("pin",), "5678")])
    assert after is not None
    assert after.startswith(b"v1:2026b:")
    with pytest.raises(SecretUnreadable):  # the old key alone cannot read the new
        SecretBox(old).open(OTHER, after)
    assert SecretBox(new).open(OTHER, after) == [(("pin",), "5678")]


def test_legacy_ciphertexts_are_read_with_the_legacy_key_only() -> None:
    old_material = "the-old-DISPATCHER_SECRET_KEY"
    key = hashlib.sha256(old_material.encode()).digest()
    nonce = os.urandom(12)
    legacy = nonce + AESGCM(key).encrypt(nonce, b'{"newPassword": "old-pw"}', b"dispatcher")
    ring = f"{generate_keys('k1')},legacy:{base64.b64encode(key).decode()}"
    assert SecretBox(ring).open(CMD, legacy) == [(("newPassword",), "old-pw")]
    with pytest.raises(SecretUnreadable, match="legacy"):
        SecretBox(generate_keys("k1")).open(CMD, legacy)


@pytest.mark.parametrize(("value", "why"), [
    ("", "required"),
    ("k1", "kid:base64key"),
    ("k1:not base64!", "not base64"),
    (f"k1:{base64.b64encode(b'short').decode()}", "5 bytes, not 32"),
    ("bad kid:" + base64.b64encode(bytes(32)).decode(), "kid:base64key"),
    (f"k1:{base64.b64encode(bytes(32)).decode()},k1:{base64.b64encode(bytes(32)).decode()}",
     "twice"),
])
def test_bad_keys_are_refused_naming_the_variable(value: str, why: str) -> None:
    with pytest.raises(ConfigError, match="DISPATCHER_SECRET_KEYS") as info:
        SecretBox(value)
    assert why in str(info.value)
    if value:
        with pytest.raises(ConfigError, match="DISPATCHER_SECRET_KEYS"):
            Settings.from_env({"DISPATCHER_SECRET_KEYS": value})


def test_run_refuses_to_start_without_keys() -> None:
    with pytest.raises(ConfigError, match="DISPATCHER_SECRET_KEYS"):
        Settings.from_env({}).require_secret_keys()
    Settings.from_env({"DISPATCHER_SECRET_KEYS": generate_keys()}).require_secret_keys()


def test_secret_names_are_redacted_in_logs_and_dead_letters() -> None:
    assert b"LPA:1" not in redact_raw(json.dumps(
        {"params": {"addEsimParams": {"activationCode": "LPA:1$x"}}}).encode())
    assert is_secret_name("activationCode")


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


def test_dev_generates_its_keys_once(tmp_path: Path) -> None:
    settings = Settings(dev_dir=str(tmp_path))
    keys = dev_secret_keys(settings)
    assert SecretBox(keys).key_ids == ["dev1"]
    assert dev_secret_keys(settings) == keys  # kept under .dev/ between runs
    assert (tmp_path / "secret_keys").stat().st_mode & 0o077 == 0
    given = generate_keys("mine")
    assert dev_secret_keys(Settings(dev_dir=str(tmp_path), secret_keys=given)) == given


def test_keys_never_show_in_the_settings_logged_at_start() -> None:
    keys = generate_keys("k1")
    shown = str(Settings.from_env({"DISPATCHER_SECRET_KEYS": keys}).redacted())
    assert keys.split(":", 1)[1] not in shown
    assert "'secret_keys': '<set>'" in shown


def test_request_fingerprints_are_keyed_and_survive_rotation() -> None:
    from dispatcher.secretbox import SecretBox, generate_keys

    old = generate_keys("k1")
    box = SecretBox(old)
    mark = box.fingerprint(b'["aosp","dev","LOCK",{"newPassword":"pw"},"600"]')
    assert mark.startswith("k1:")
    assert "pw" not in mark
    assert box.same_fingerprint(b'["aosp","dev","LOCK",{"newPassword":"pw"},"600"]', mark)
    assert box.same_fingerprint(b'["aosp","dev","LOCK",{"newPassword":"px"},"600"]', mark) \
        is False
    rotated = SecretBox(generate_keys("k2") + "," + old)
    assert rotated.same_fingerprint(b'["aosp","dev","LOCK",{"newPassword":"pw"},"600"]', mark)
    assert SecretBox(generate_keys("k9")).same_fingerprint(b"x", mark) is None
    assert SecretBox(generate_keys("k1")).fingerprint(b"x") != box.fingerprint(b"x")
