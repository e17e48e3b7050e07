"""Secrets sealed to the device's key: a device opens them with its private key alone."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from dispatcher import sealing
from dispatcher.events import DeviceState, parse
from dispatcher.exceptions import InvalidEvent

CMD = "c" * 24


def pem(private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


SECRETS = [(("newPassword",), "p@ss-42"), (("addEsimParams", "activationCode"), "LPA:1$s$Z")]


@pytest.mark.parametrize(("make", "alg"), [
    (lambda: ec.generate_private_key(ec.SECP256R1()), sealing.EC_ALG),
    (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), sealing.RSA_ALG),
])
def test_sealed_secrets_open_with_the_private_key_only(make: Callable[[], Any], alg: str) -> None:
    private = make()
    box = sealing.seal(pem(private), CMD, SECRETS)
    assert box["alg"] == alg
    assert box["kid"] == sealing.key_id(private.public_key())
    text = json.dumps(box)
    assert "p@ss-42" not in text
    assert "LPA:1" not in text
    assert sealing.open_sealed(private, CMD, box) == [
        {"path": ["newPassword"], "value": "p@ss-42"},
        {"path": ["addEsimParams", "activationCode"], "value": "LPA:1$s$Z"}]
    with pytest.raises((InvalidTag, ValueError)):  # bound to its command
        sealing.open_sealed(private, "d" * 24, box)
    with pytest.raises((InvalidTag, ValueError)):  # another device's key
        sealing.open_sealed(make(), CMD, box)


@pytest.mark.parametrize(("key", "why"), [
    ("not a pem", "not a PEM public key"),
    (pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)), "1024 bits"),
    (pem(ec.generate_private_key(ec.SECP384R1())), "EC P-256"),
])
def test_unacceptable_device_keys_are_refused(key: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        sealing.load_device_key(key)
    event = {"aosDevice": "a" * 24, "organization": "b" * 24, "aosEnterprise": "c" * 24,
             "state": "ACTIVE", "publicKey": key}
    with pytest.raises(InvalidEvent) as info:
        parse(DeviceState, json.dumps(event).encode(), 65536)
    assert info.value.reason == "validation"
    assert "publicKey" in info.value.detail


def test_a_device_event_carries_an_optional_public_key() -> None:
    key = pem(ec.generate_private_key(ec.SECP256R1()))
    base = {"aosDevice": "a" * 24, "organization": "b" * 24, "aosEnterprise": "c" * 24,
            "state": "ACTIVE"}
    assert parse(DeviceState, json.dumps({**base, "publicKey": key}).encode(),
                 65536).publicKey == key
    assert parse(DeviceState, json.dumps(base).encode(), 65536).publicKey is None
