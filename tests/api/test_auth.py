"""Token verification without a server: HS256, RS256, expiry, claims, algorithm confusion."""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import time
from pathlib import Path

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


def test_a_token_with_aud_is_accepted_when_no_audience_is_configured() -> None:
    token = jwt.encode(claims(aud="https://some-other-api"), SECRET, algorithm="HS256")
    assert verify(token, Settings(jwt_secret=SECRET)).covers("x")


def test_audience_and_issuer_are_required_when_configured() -> None:
    strict = Settings(jwt_secret=SECRET, jwt_audience="dispatcher", jwt_issuer="https://idp")
    good = jwt.encode(claims(aud="dispatcher", iss="https://idp"), SECRET, algorithm="HS256")
    assert verify(good, strict).covers("x")
    assert verify(mint(SECRET, ["o"], audience="dispatcher", issuer="https://idp"), strict)
    for bad in (claims(iss="https://idp"), claims(aud="dispatcher"),
                claims(aud="other", iss="https://idp"), claims(aud="dispatcher", iss="evil")):
        with pytest.raises(AuthError) as info:
            verify(jwt.encode(bad, SECRET, algorithm="HS256"), strict)
        assert info.value.kind == "invalid"


def test_dispatcher_token_mints_what_the_settings_accept(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from dispatcher.cli import cmd_token

    s = Settings(jwt_secret=SECRET, jwt_audience="dispatcher", jwt_issuer="https://idp",
                 jwt_max_ttl_s=600, dev_dir=str(tmp_path))
    cmd_token(s, argparse.Namespace(org=["o"], perm=None, ttl=600))
    assert verify(capsys.readouterr().out.strip(), s).covers("o")



def test_max_ttl_refuses_long_lived_tokens_and_tokens_without_iat() -> None:
    limited = Settings(jwt_secret=SECRET, jwt_max_ttl_s=3600)
    now = int(time.time())
    assert verify(mint(SECRET, ["o"], ttl_s=3600), limited)
    for bad in (claims(iat=now, exp=now + 3601), claims(exp=now + 60),
                claims(iat="yesterday", exp=now + 60)):
        with pytest.raises(AuthError) as info:
            verify(jwt.encode(bad, SECRET, algorithm="HS256"), limited)
        assert info.value.kind == "invalid"
    assert verify(jwt.encode(claims(exp=now + 10 * 86400), SECRET, algorithm="HS256"),
                  Settings(jwt_secret=SECRET))


def test_strict_permissions_need_the_type_permission_for_destructive_types() -> None:
    base = verify(mint(SECRET, ["o"]), Settings(jwt_secret=SECRET))
    for kind in ("WIPE", "RESET_PASSWORD", "DISENROLL", "RELINQUISH_OWNERSHIP"):
        base.require_type(kind, strict=False)
        with pytest.raises(AuthError, match=f"mdm.aosp.command.create.{kind}"):
            base.require_type(kind, strict=True)
    base.require_type("LOCK", strict=True)
    wiper = verify(mint(SECRET, ["o"], ["mdm.aosp.command.create",
                                         "mdm.aosp.command.create.WIPE"]),
                   Settings(jwt_secret=SECRET))
    wiper.require_type("WIPE", strict=True)
