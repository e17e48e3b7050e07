"""Seed 000 over HTTP: create, read, list, cancel, idempotency, auth, and the pipeline."""

from __future__ import annotations

import base64
import re
import warnings
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import jwt
import pytest
from jwt.warnings import InsecureKeyLengthWarning

from dispatcher.auth import mint
from dispatcher.config import Settings
from dispatcher.runtime import Runtime
from dispatcher_dev.fakepushy import FakePushy
from tests.support.api import Register, Token
from tests.support.events import ORG, ack_event, hex24
from tests.support.kafka import Kafka
from tests.support.wait import wait_for

BASE = "/v1/organizations/{org}/mdm/aosp/enterprise/devices/{device}/commands"
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
FIELDS = {"id", "organization", "aosEnterprise", "aosDevice", "mdmUser", "command", "params",
          "status", "results", "updatedAt", "createdAt"}
"""What a new command's record of a device with a user carries; pushId, sentAt and
deliveryExpiresAt come once the push is accepted."""


def url(device: str, org: str = ORG, tail: str = "") -> str:
    return BASE.format(org=org, device=device) + tail


async def call(http: aiohttp.ClientSession, method: str, path: str, auth: str | None,
               body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    hdrs = dict(headers or {})
    if auth is not None:
        hdrs["Authorization"] = auth
    async with http.request(method, path, json=body, headers=hdrs) as resp:
        return resp.status, await resp.json()


def error(status: int, code: int) -> Any:
    def check(answer: tuple[int, Any]) -> None:
        got_status, body = answer
        assert (got_status, body["status"], body["error"]["code"]) == (status, False, code), body
    return check


async def test_create_answers_the_full_record_and_get_finds_it_at_once(
        service: Runtime, http: aiohttp.ClientSession, token: Token, register: Register) -> None:
    user = hex24()
    device = await register(mdm_user=user)
    for _ in range(10):
        status, body = await call(http, "POST", url(device), token(),
                                  {"command": "REBOOT", "duration": 0, "params": {}})
        assert status == 200, body
        assert body["status"] is True
        record = body["data"]
        assert set(record) >= FIELDS
        assert re.fullmatch(r"[a-f0-9]{24}", record["id"])
        assert (record["organization"], record["aosDevice"], record["mdmUser"]) == (
            ORG, device, user)
        assert (record["command"], record["status"], record["results"]) == ("REBOOT", "PENDING",
                                                                             [])
        assert record["duration"] == 600
        assert RFC3339.match(record["createdAt"])
        assert RFC3339.match(record["updatedAt"])
        got = await call(http, "GET", url(device, tail=f"/{record['id']}"), token())
        assert got[0] == 200
        assert got[1]["data"]["id"] == record["id"]


def nulls(value: Any, where: str = "") -> list[str]:
    """Where ``value`` holds a ``null``."""
    if value is None:
        return [where or "."]
    if isinstance(value, dict):
        return [n for k, v in value.items() for n in nulls(v, f"{where}.{k}")]
    if isinstance(value, list):
        return [n for i, v in enumerate(value) for n in nulls(v, f"{where}[{i}]")]
    return []


async def test_a_duration_keeps_its_fraction(
        service: Runtime, http: aiohttp.ClientSession, token: Token, register: Register) -> None:
    device = await register(push_token=None)
    _, body = await call(http, "POST", url(device), token(), {"command": "LOCK",
                                                              "duration": 2.5})
    record = body["data"]
    assert record["duration"] == 2.5
    created = datetime.fromisoformat(record["createdAt"])
    assert datetime.fromisoformat(record["expiresAt"]) - created == timedelta(seconds=2.5)


async def test_fields_without_a_value_are_omitted_not_null(
        service: Runtime, http: aiohttp.ClientSession, token: Token, register: Register,
        kafka: Kafka) -> None:
    device = await register(push_token=None)
    _, body = await call(http, "POST", url(device), token(), {"command": "LOCK"})
    record = body["data"]
    assert nulls(record) == []
    assert not {"mdmUser", "pushId", "sentAt", "deliveryExpiresAt", "errorType",
                "errorMessage"} & set(record), record
    cid = record["id"]
    await kafka.send("device-acks", ack_event(cid, device, "ERROR", errorType="NO_SPACE"))

    async def failed() -> Any:
        _, got = await call(http, "GET", url(device, tail=f"/{cid}"), token())
        return got["data"] if got["data"]["status"] == "ERROR" else None

    done = await wait_for(failed, what="the ERROR ack applied")
    assert (done["errorType"], "errorMessage" in done) == ("NO_SPACE", False)
    assert [{k: v for k, v in r.items() if k != "at"} for r in done["results"]] == [
        {"status": "ERROR", "errorType": "NO_SPACE", "data": {}}]
    _, page = await call(http, "GET", url(device), token())
    assert nulls(page["data"]) == []


async def test_http_command_is_pushed_and_emits_pending(
        service: Runtime, http: aiohttp.ClientSession, token: Token, register: Register,
        pushy: FakePushy, kafka: Kafka) -> None:
    device = await register()
    _, body = await call(http, "POST", url(device), token(),
                         {"command": "LOCK", "duration": 120})
    cid = body["data"]["id"]

    async def pushed() -> Any:
        return next((r for r in pushy.accepted if r.data.get("commandId") == cid), None)

    push = await wait_for(pushed, what="the push")
    assert push.to == f"tok-{device}"
    assert push.time_to_live <= 120

    async def pending_event() -> Any:
        return [e for e in await kafka.read("commands.status", timeout_s=0.3)
                if isinstance(e, dict) and e.get("id") == cid and e["status"] == "PENDING"]

    events = await wait_for(pending_event, what="the PENDING status event")
    assert events[0]["previousStatus"] is None
    _, after = await call(http, "GET", url(device, tail=f"/{cid}"), token())
    assert after["data"]["pushId"] == push.push_id
    assert RFC3339.match(after["data"]["sentAt"])


async def test_secrets_are_pushed_but_never_answered(
        service: Runtime, http: aiohttp.ClientSession, token: Token, register: Register,
        pushy: FakePushy) -> None:
    device = await register()
    secret = "s3cret-Pa55-" + hex24()
    status, body = await call(http, "POST", url(device), token(),
                              {"command": "RESET_PASSWORD",
                               "params": {"newPassword": secret, "lockNow": True}})
    assert status == 200
    cid = body["data"]["id"]
    assert body["data"]["params"] == {"newPassword": "***", "lockNow": True}  # masked
    for path in (url(device, tail=f"/{cid}"), url(device)):
        async with http.get(path, headers={"Authorization": token()}) as resp:
            assert secret not in await resp.text()

    async def pushed() -> Any:
        return next((r for r in pushy.accepted if r.data.get("commandId") == cid), None)

    push = await wait_for(pushed, what="the push")
    assert push.data["params"]["newPassword"] == secret


async def test_idempotency_key_gives_one_command(
        service: Runtime, http: aiohttp.ClientSession, token: Token, register: Register,
        settings: Settings) -> None:
    device, other = await register(), await register()
    key = {"Idempotency-Key": "order-" + hex24()}
    first = await call(http, "POST", url(device), token(), {"command": "LOCK"}, key)
    second = await call(http, "POST", url(device), token(), {"command": "LOCK"}, key)
    assert first[0] == second[0] == 200
    assert first[1]["data"]["id"] == second[1]["data"]["id"]
    conn = await asyncpg.connect(settings.database_url)
    try:
        count = await conn.fetchval("SELECT count(*) FROM commands WHERE aos_device = $1", device)
    finally:
        await conn.close()
    assert count == 1
    error(409, 4010)(await call(http, "POST", url(other), token(), {"command": "LOCK"}, key))
    fresh = await call(http, "POST", url(device), token(), {"command": "LOCK"},
                       {"Idempotency-Key": "other-" + hex24()})
    assert fresh[1]["data"]["id"] != first[1]["data"]["id"]
    error(400, 4000)(await call(http, "POST", url(device), token(), {"command": "LOCK"},
                                {"Idempotency-Key": "x" * 300}))


async def test_list_filters_by_status_and_pages_newest_first(
        service: Runtime, http: aiohttp.ClientSession, token: Token, register: Register) -> None:
    device = await register(push_token=None)
    ids = []
    for k in range(5):  # all stay open: a type that a newer one does not supersede
        body = {"command": "CLEAR_APP_DATA", "params": {"packageNames": [f"com.app{k}"]}}
        ids.append((await call(http, "POST", url(device), token(), body))[1]["data"]["id"])
    for cid in ids[:2]:
        assert (await call(http, "POST", url(device, tail=f"/{cid}/cancel"), token()))[0] == 200
    seen: list[str] = []
    cursor = None
    while True:
        query = "?limit=2" + (f"&cursor={cursor}" if cursor else "")
        status, page = await call(http, "GET", url(device) + query, token())
        assert status == 200
        assert len(page["data"]) <= 2
        seen += [r["id"] for r in page["data"]]
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    _, cancelled = await call(http, "GET", url(device) + "?status=CANCEL", token())
    assert sorted(r["id"] for r in cancelled["data"]) == sorted(ids[:2])
    _, pending = await call(http, "GET", url(device) + "?status=PENDING&limit=100", token())
    assert {r["status"] for r in pending["data"]} == {"PENDING"}
    assert len(pending["data"]) == 3
    error(400, 4000)(await call(http, "GET", url(device) + "?status=LOST", token()))
    error(400, 4000)(await call(http, "GET", url(device) + "?limit=0", token()))
    error(400, 4000)(await call(http, "GET", url(device) + "?limit=abc", token()))
    error(400, 4000)(await call(http, "GET", url(device) + "?cursor=not-a-cursor", token()))


async def test_cancel_moves_open_commands_and_refuses_finished_ones(
        service: Runtime, http: aiohttp.ClientSession, token: Token, register: Register,
        kafka: Kafka) -> None:
    device = await register(push_token=None)
    cid = (await call(http, "POST", url(device), token(), {"command": "REBOOT"}))[1]["data"]["id"]
    status, body = await call(http, "POST", url(device, tail=f"/{cid}/cancel"), token())
    assert status == 200
    assert body["data"]["status"] == "CANCEL"
    error(409, 4009)(await call(http, "POST", url(device, tail=f"/{cid}/cancel"), token()))

    async def cancel_event() -> Any:
        return [e for e in await kafka.read("commands.status", timeout_s=0.3)
                if isinstance(e, dict) and e.get("id") == cid and e["status"] == "CANCEL"]

    await wait_for(cancel_event, what="the CANCEL status event")
    error(403, 4003)(await call(http, "POST", url(device, tail=f"/{cid}/cancel"),
                                token(perms=["mdm.aosp.command.read"])))


async def test_auth_errors(
        service: Runtime, http: aiohttp.ClientSession, token: Token, register: Register,
        settings: Settings) -> None:
    device = await register()
    path = url(device)
    body = {"command": "LOCK"}
    error(401, 4002)(await call(http, "POST", path, None, body))
    error(401, 4002)(await call(http, "POST", path, "Bearer ", body))
    error(401, 4004)(await call(http, "POST", path, "Bearer not.a.jwt", body))
    error(401, 4004)(await call(http, "POST", path, "Basic dXNlcjpwYXNz", body))
    wrong_key = "Bearer " + mint("another-secret", [ORG])
    error(401, 4004)(await call(http, "POST", path, wrong_key, body))
    error(401, 4004)(await call(http, "POST", path, token(ttl_s=-10), body))
    no_exp = mint_raw({"org": [ORG], "permissions": ["mdm.aosp.command.create"]},
                        settings.jwt_secret)
    error(401, 4004)(await call(http, "POST", path, "Bearer " + no_exp, body))
    bad_claims = mint_raw({"org": ORG, "permissions": [], "exp": 2**40},
                            settings.jwt_secret)
    error(401, 4004)(await call(http, "GET", path, "Bearer " + bad_claims))
    error(403, 4003)(await call(http, "POST", path, token(perms=["mdm.aosp.command.read"]),
                                body))
    error(403, 4003)(await call(http, "GET", path, token(perms=["mdm.aosp.command.create"])))
    error(403, 4003)(await call(http, "POST", path, token(orgs=[hex24()]), body))
    assert (await call(http, "POST", path, token(orgs=["*"]), body))[0] == 200


async def test_unknown_entities_are_404(
        service: Runtime, http: aiohttp.ClientSession, token: Token, register: Register) -> None:
    device = await register()
    other_org_device = await register(org=hex24())
    star = token(orgs=["*"])
    error(404, 3001)(await call(http, "POST", url(hex24()), star, {"command": "LOCK"}))
    error(404, 3001)(await call(http, "POST", url(other_org_device), star, {"command": "LOCK"}))
    error(404, 3001)(await call(http, "POST", url(device, org="acme-corp"), star,
                                {"command": "LOCK"}))
    error(404, 3001)(await call(http, "GET", url(device, tail=f"/{hex24()}"), star))
    cid = (await call(http, "POST", url(device), star, {"command": "LOCK"}))[1]["data"]["id"]
    other = await register()
    error(404, 3001)(await call(http, "GET", url(other, tail=f"/{cid}"), star))
    error(404, 3001)(await call(http, "POST", url(other, tail=f"/{cid}/cancel"), star))
    error(404, 3001)(await call(http, "GET", url(hex24()), star))


@pytest.mark.parametrize(("body", "field"), [
    ({"command": "SELF_DESTRUCT"}, "command"),
    ({}, "command"),
    ({"command": "LOCK", "duration": -1}, "duration"),
    ({"command": "LOCK", "duration": "600"}, "duration"),
    ({"command": "LOCK", "duration": True}, "duration"),
    ({"command": "LOCK", "duration": 10**12}, "duration"),
    ({"command": "LOCK", "params": []}, "params"),
    ({"command": "LOCK", "params": {"blob": "x" * 5000}}, "params"),
    ({"command": "LOCK", "extra": 1}, "extra"),
    ({"command": "LOCK", "params": {"a": "nul\u0000here"}}, "NUL"),
    (["LOCK"], "body"),
])
async def test_invalid_bodies_name_the_field(
        service: Runtime, http: aiohttp.ClientSession, token: Token, register: Register, body: Any,
        field: str) -> None:
    device = await register()
    status, answer = await call(http, "POST", url(device), token(), body)
    error(400, 4000)((status, answer))
    assert field in answer["error"]["message"]


async def test_malformed_requests_answer_in_the_envelope(
        service: Runtime, http: aiohttp.ClientSession, token: Token, register: Register) -> None:
    device = await register()
    auth = {"Authorization": token()}
    deep_cursor = base64.urlsafe_b64encode(b"[" * 1500 + b"]" * 1500).decode().rstrip("=")
    cases: list[tuple[str, str, dict[str, str], bytes, int, int]] = [
        ("POST", url(device), {"Content-Type": "application/json"}, b"{not json", 400, 4000),
        ("POST", url(device), {"Content-Type": "application/json"}, b'{"command": NaN}', 400,
         4000),
        ("POST", url(device), {"Content-Type": "application/json"}, b"\xff\xfe", 400, 4000),
        ("POST", url(device), {"Content-Type": "application/json"},
         b'{"command": "LOCK", "params": {"a": 1e999}}', 400, 4000),
        ("POST", url(device), {"Content-Type": "application/json"},
         b'{"command": "LOCK", "params": {"a": "\\ud800"}}', 400, 4000),
        ("POST", url(device), {"Content-Type": "application/json"}, b"[" * 5000, 400, 4000),
        ("POST", url(device), {"Content-Type": "application/json"},
         b'{"command": "LOCK", "params": ' + b'{"a":' * 5000 + b"1" + b"}" * 5001, 400, 4000),
        ("POST", url(device), {"Content-Type": "application/json"},
         b'{"command": "LOCK", "command": "WIPE"}', 400, 4000),
        ("GET", url(device) + "?cursor=" + deep_cursor, {}, b"", 400, 4000),
        ("POST", url(device), {"Content-Type": "text/plain"}, b'{"command": "LOCK"}', 415, 4015),
        ("POST", url(device), {"Content-Type": "application/json"},
         b'{"command": "LOCK", "params": {"a": "' + b"x" * 200_000 + b'"}}', 413, 4013),
        ("POST", url(device), {}, b"", 400, 4000),
        ("DELETE", url(device), {}, b"", 405, 4005),
        ("GET", "/v1/nothing/here", {}, b"", 404, 3002),
        ("GET", url("not-hex"), {}, b"", 400, 4000),
        ("GET", url(device, org="a!"), {}, b"", 400, 4000),
        ("GET", url(device, tail="/zzz"), {}, b"", 400, 4000),
    ]
    for method, path, headers, raw, status, code in cases:
        async with http.request(method, path, data=raw, headers={**auth, **headers}) as resp:
            body = await resp.json()
            assert (resp.status, body["status"], body["error"]["code"]) == (status, False, code), (
                method, path, raw[:40], body)


def mint_raw(claims: dict[str, Any], secret: str) -> str:
    """A token with exactly these claims (short test secrets are fine here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        return jwt.encode(claims, secret, algorithm="HS256")


async def test_not_before_and_priority_are_taken_and_shown(
        service: Runtime, http: aiohttp.ClientSession, token: Token, register: Register) -> None:
    device = await register(push_token=None)
    later = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    status, body = await call(http, "POST", url(device), token(), {
        "command": "REBOOT", "duration": 60, "priority": "low",
        "notBefore": later.isoformat().replace("+00:00", "Z")})
    assert status == 200, body
    record = body["data"]
    assert (record["priority"], datetime.fromisoformat(record["notBefore"])) == ("low", later)
    assert datetime.fromisoformat(record["expiresAt"]) == later + timedelta(seconds=60)
    _, lock = await call(http, "POST", url(device), token(), {"command": "LOCK"})
    assert lock["data"]["priority"] == "high"  # the type's default
    assert "notBefore" not in lock["data"]
    error(400, 4000)(await call(http, "POST", url(device), token(),
                                {"command": "LOCK", "priority": "urgent"}))
    error(400, 4000)(await call(http, "POST", url(device), token(),
                                {"command": "LOCK", "notBefore": "tomorrow"}))


async def test_a_newer_lock_supersedes_the_unsent_one(
        service: Runtime, http: aiohttp.ClientSession, token: Token, register: Register) -> None:
    device = await register(push_token=None)  # offline: nothing is sent
    _, first = await call(http, "POST", url(device), token(), {"command": "LOCK"})
    _, second = await call(http, "POST", url(device), token(), {"command": "LOCK"})
    _, got = await call(http, "GET", url(device, tail=f"/{first['data']['id']}"), token())
    old = got["data"]
    assert (old["status"], old["errorType"]) == ("CANCEL", "SUPERSEDED")
    assert old["results"][-1]["data"] == {"supersededBy": second["data"]["id"]}
    _, page = await call(http, "GET", url(device, tail="?status=PENDING"), token())
    assert [r["id"] for r in page["data"]] == [second["data"]["id"]]
