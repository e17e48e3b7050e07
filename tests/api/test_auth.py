"""Token verification without a server: HS256, RS256, expiry, claims, algorithm confusion."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from dispatcher.auth import AuthError, authenticate, mint, verify
from dispatcher.config import Settings

SECRET = "an-hs256-secret-of-at-least-32-bytes!"


@pytest.fixture(scope="module")
def rsa_keys() -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


def claims(**over: object) -> dict[str, object]:
    base: dict[str, object] = {"org": ["*"], "permissions": ["mdm.aosp.command.read"],
                               "exp": int(time.time()) + 60}
    base.update(over)
    return base


def test_hs256_token_round_trips() -> None:
    principal = verify(mint(SECRET, ["abc"], ["p"]), Settings(jwt_secret=SECRET))
    assert principal.orgs == frozenset({"abc"})
    assert principal.covers("abc")
    assert not principal.covers("abd")


def test_rs256_token_is_accepted_with_the_public_key(rsa_keys: tuple[str, str]) -> None:
    private, public = rsa_keys
    token = jwt.encode(claims(), private, algorithm="RS256")
    principal = verify(token, Settings(jwt_secret=SECRET, jwt_public_key=public))
    assert principal.covers("anything")
    with pytest.raises(AuthError):
        verify(token, Settings(jwt_secret=SECRET))


def test_public_key_is_never_an_hmac_secret(rsa_keys: tuple[str, str]) -> None:
    _, public = rsa_keys

    def b64(raw: bytes) -> bytes:
        return base64.urlsafe_b64encode(raw).rstrip(b"=")

    signing = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + b"." + b64(
        json.dumps(claims()).encode())
    forged = signing + b"." + b64(hmac.new(public.encode(), signing, hashlib.sha256).digest())
    settings = Settings(jwt_secret="", jwt_public_key=public)
    with pytest.raises(AuthError):
        verify(forged.decode(), settings)


@pytest.mark.parametrize("token_claims", [
    claims(exp=int(time.time()) - 5),
    {"org": ["*"], "permissions": []},
    claims(org="*"),
    claims(permissions="mdm.aosp.command.read"),
    claims(org=[1, 2]),
])
def test_bad_claims_are_invalid(token_claims: dict[str, object]) -> None:
    token = jwt.encode(token_claims, SECRET, algorithm="HS256")
    with pytest.raises(AuthError) as info:
        verify(token, Settings(jwt_secret=SECRET))
    assert info.value.kind == "invalid"


@pytest.mark.parametrize(("header", "kind"), [
    (None, "missing"), ("", "missing"), ("Bearer ", "missing"), ("Token abc", "invalid"),
    ("Bearer abc", "invalid"),
])
def test_headers(header: str | None, kind: str) -> None:
    with pytest.raises(AuthError) as info:
        authenticate(header, Settings(jwt_secret=SECRET))
    assert info.value.kind == kind
