"""FakeFcm over real HTTP: the token endpoint verifies google-auth's signed assertion, and
messages:send validates the v1 message and injects FCM's documented faults."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from dispatcher.exceptions import PushError
from dispatcher.push.fcm import FCM_ERROR, AccessTokens
from dispatcher_dev.fakefcm import SCOPE, FakeFcm
from tests.support.fixtures import serving_fcm

DEVICE = "fcm-token-abc"


@pytest.fixture
async def fcm(tmp_path: Path) -> AsyncIterator[FakeFcm]:
    async with serving_fcm("proj-1", tmp_path / "sa.json") as fake:
        yield fake


@pytest.fixture
async def tokens(fcm: FakeFcm, tmp_path: Path) -> AccessTokens:
    return AccessTokens(str(tmp_path / "sa.json"), 5.0)


def message(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"token": DEVICE, "data": {"commandId": "c1", "params": "{}"},
                            "android": {"ttl": "30s", "priority": "high"}}
    body.update(over)
    return {"message": body}


async def send(fcm: FakeFcm, bearer: str, body: Any = None,
               project: str = "proj-1") -> tuple[int, dict[str, Any], dict[str, str]]:
    url = f"{fcm.url}/v1/projects/{project}/messages:send"
    async with aiohttp.ClientSession() as http, http.post(
            url, json=message() if body is None else body,
            headers={"Authorization": f"Bearer {bearer}"}) as resp:
        return resp.status, await resp.json(), dict(resp.headers)


async def test_the_credentials_file_is_a_service_account_pointing_at_the_fake(
        fcm: FakeFcm, tmp_path: Path) -> None:
    info = json.loads((tmp_path / "sa.json").read_text())
    assert info["type"] == "service_account"
    assert info["token_uri"] == f"{fcm.url}/token"
    assert info["project_id"] == "proj-1"
    assert info["private_key"].startswith("-----BEGIN PRIVATE KEY-----")
    assert (tmp_path / "sa.json").stat().st_mode & 0o077 == 0
    assert "PRIVATE" not in repr(fcm)


async def test_google_auth_gets_a_token_and_the_message_is_accepted(
        fcm: FakeFcm, tokens: AccessTokens) -> None:
    bearer = await tokens.get()
    assert fcm.token_requests == fcm.tokens_issued == 1
    assert tokens.project_id == "proj-1"
    status, body, _ = await send(fcm, bearer)
    assert status == 200
    assert body["name"].startswith("projects/proj-1/messages/")
    record = fcm.accepted_for(DEVICE)[0]
    assert (record.name, record.data["commandId"], record.android["ttl"]) == (
        body["name"], "c1", "30s")


def _assertion(key: Any, fcm: FakeFcm, **over: Any) -> str:
    now = int(time.time())
    claims = {"iss": fcm.client_email, "aud": fcm.token_uri, "iat": now, "exp": now + 600,
              "scope": SCOPE}
    claims.update(over)
    return jwt.encode(claims, key, algorithm="RS256")


async def _grant(fcm: FakeFcm, assertion: str) -> tuple[int, dict[str, Any]]:
    form = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion}
    async with aiohttp.ClientSession() as http, http.post(fcm.token_uri, data=form) as resp:
        return resp.status, await resp.json()


async def test_the_token_endpoint_verifies_the_assertion(fcm: FakeFcm, tmp_path: Path) -> None:
    own = serialization.load_pem_private_key(
        json.loads((tmp_path / "sa.json").read_text())["private_key"].encode(), None)
    forged = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    status, body = await _grant(fcm, _assertion(own, fcm))
    assert status == 200
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    for bad in (_assertion(forged, fcm), _assertion(own, fcm, iss="other@x"),
                _assertion(own, fcm, aud="https://elsewhere/token"),
                _assertion(own, fcm, exp=int(time.time()) - 60),
                _assertion(own, fcm, scope="https://www.googleapis.com/auth/cloud-platform")):
        status, body = await _grant(fcm, bad)
        assert (status, body["error"]) == (400, "invalid_grant")
    assert fcm.tokens_issued == 1


async def test_unknown_expired_or_revoked_tokens_are_401(
        fcm: FakeFcm, tokens: AccessTokens) -> None:
    status, body, _ = await send(fcm, "ya29.made-up")
    assert (status, body["error"]["status"]) == (401, "UNAUTHENTICATED")
    bearer = await tokens.get()
    fcm.expire_tokens()
    assert (await send(fcm, bearer))[0] == 401
    fcm.token_lifetime_s = 0
    assert (await send(fcm, await tokens.renew(bearer)))[0] == 401


@pytest.mark.parametrize(("body", "field"), [
    (message(token=""), "message.token"),
    (message(data={"n": 1}), "message.data[0].value"),
    (message(data={"a": "x", "params": {"nested": True}}), "message.data[1].value"),
    (message(android={"ttl": "30"}), "message.android.ttl"),
    (message(android={"ttl": 30}), "message.android.ttl"),
    (message(android={"priority": "urgent"}), "message.android.priority"),
    (message(data={"big": "x" * 5000}), "message.data"),
    ({"to": DEVICE}, "message"),
])
async def test_messages_of_the_wrong_shape_are_400_naming_the_field(
        fcm: FakeFcm, tokens: AccessTokens, body: Any, field: str) -> None:
    status, answer, _ = await send(fcm, await tokens.get(), body)
    assert (status, answer["error"]["status"]) == (400, "INVALID_ARGUMENT")
    violation = answer["error"]["details"][0]["fieldViolations"][0]
    assert violation["field"] == field
    assert not fcm.accepted


@pytest.mark.parametrize(("fault", "status", "code"), [
    (429, 429, "QUOTA_EXCEEDED"), (503, 503, "UNAVAILABLE"), (500, 500, "INTERNAL"),
    (404, 404, "UNREGISTERED"), ("SENDER_ID_MISMATCH", 403, "SENDER_ID_MISMATCH"),
    ("THIRD_PARTY_AUTH_ERROR", 401, "THIRD_PARTY_AUTH_ERROR"),
])
async def test_injected_faults_have_fcms_error_shape(
        fcm: FakeFcm, tokens: AccessTokens, fault: int | str, status: int, code: str) -> None:
    fcm.fail_next = [fault, 200]
    fcm.retry_after_s = 2.5
    bearer = await tokens.get()
    got, body, headers = await send(fcm, bearer)
    assert got == status
    assert body["error"]["details"] == [{"@type": FCM_ERROR, "errorCode": code}]
    assert headers.get("Retry-After") == ("3" if status in (429, 503) else None)
    assert (await send(fcm, bearer))[0] == 200


async def test_unregistered_tokens_outage_and_latency(
        fcm: FakeFcm, tokens: AccessTokens) -> None:
    bearer = await tokens.get()
    fcm.unregistered_tokens = {DEVICE}
    status, body, _ = await send(fcm, bearer)
    assert (status, body["error"]["details"][0]["errorCode"]) == (404, "UNREGISTERED")
    fcm.unregistered_tokens = set()
    fcm.outage = True
    assert (await send(fcm, bearer))[0] == 503
    fcm.outage = False
    fcm.latency_s = 0.3
    started = time.monotonic()
    assert (await send(fcm, bearer))[0] == 200
    assert time.monotonic() - started >= 0.3
    assert (await send(fcm, bearer, project="other"))[0] == 404


async def test_refused_grants_are_counted(fcm: FakeFcm, tokens: AccessTokens) -> None:
    fcm.token_fail_next = 1
    with pytest.raises(PushError, match="token endpoint refused"):
        await tokens.get()
    assert await tokens.get()
    assert (fcm.token_requests, fcm.tokens_issued) == (2, 1)
