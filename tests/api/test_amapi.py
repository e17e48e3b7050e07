"""Seed 001 over HTTP: issueCommand and operations in the Android Management API dialect."""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from dispatcher.runtime import Runtime
from dispatcher.secretbox import redact
from tests.support.api import Register, Token
from tests.support.events import ENTERPRISE, ack_event, hex24
from tests.support.kafka import Kafka
from tests.support.wait import wait_for

COMMAND_TYPE = "type.googleapis.com/google.android.devicemanagement.v1.Command"


def dev(device: str, enterprise: str = ENTERPRISE) -> str:
    return f"/v1/enterprises/{enterprise}/devices/{device}"


async def call(http: aiohttp.ClientSession, method: str, path: str, auth: str | None,
               body: Any = None) -> tuple[int, Any]:
    headers = {"Authorization": auth} if auth is not None else {}
    async with http.request(method, path, json=body, headers=headers) as resp:
        return resp.status, await resp.json()


def google_error(answer: tuple[int, Any], status: int, name: str) -> str:
    got, body = answer
    assert (got, body["error"]["code"], body["error"]["status"]) == (status, status, name), body
    assert "status" not in body
    return str(body["error"]["message"])


async def issue(http: aiohttp.ClientSession, device: str, auth: str, body: Any) -> Any:
    status, op = await call(http, "POST", dev(device) + ":issueCommand", auth, body)
    assert status == 200, op
    return op


async def test_issue_get_and_list_an_operation(
        service: Runtime, http: aiohttp.ClientSession, token: Token, register: Register) -> None:
    user = hex24()
    device = await register(mdm_user=user)
    op = await issue(http, device, token(), {"type": "LOCK"})
    match = re.fullmatch(rf"enterprises/{ENTERPRISE}/devices/{device}/operations/([a-f0-9]{{24}})",
                         op["name"])
    assert match, op["name"]
    meta = op["metadata"]
    assert (meta["@type"], meta["type"], meta["duration"]) == (COMMAND_TYPE, "LOCK", "600s")
    assert meta["userName"] == f"enterprises/{ENTERPRISE}/users/{user}"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", meta["createTime"])
    assert op["done"] is False
    assert "error" not in op
    got = await call(http, "GET", "/v1/" + op["name"], token())
    assert got == (200, op)
    assert "null" not in json.dumps(op)
    no_user = await issue(http, await register(), token(), {"type": "LOCK"})
    assert "userName" not in no_user["metadata"]
    assert "null" not in json.dumps(no_user)
    _, listed = await call(http, "GET", dev(device) + "/operations", token())
    assert [o["name"] for o in listed["operations"]] == [op["name"]]
    assert "nextPageToken" not in listed


async def test_every_command_type_with_its_parameters(
        service: Runtime, http: aiohttp.ClientSession, token: Token, register: Register) -> None:
    device = await register()
    bodies: list[tuple[dict[str, Any], str, str | None]] = [
        ({"type": "REBOOT", "duration": "30s"}, "REBOOT", None),
        ({"type": "RELINQUISH_OWNERSHIP"}, "RELINQUISH_OWNERSHIP", None),
        ({"clearAppsDataParams": {"packageNames": ["com.example.app"]}}, "CLEAR_APP_DATA",
         "clearAppsDataParams"),
        ({"type": "START_LOST_MODE", "startLostModeParams": {
            "lostMessage": {"defaultMessage": "Please return me"},
            "lostPhoneNumber": {"defaultMessage": "+1 555 0100"},
            "lostEmailAddress": "it@example.com",
            "lostOrganization": {"defaultMessage": "Example Inc."}}},
         "START_LOST_MODE", "startLostModeParams"),
        ({"type": "STOP_LOST_MODE"}, "STOP_LOST_MODE", None),
        ({"addEsimParams": {"activationCode": "LPA:1$smdp.example.com$ABC",
                            "activationState": "ACTIVATED"}}, "ADD_ESIM", "addEsimParams"),
        ({"type": "REMOVE_ESIM", "removeEsimParams": {"iccId": "8944500102198304826"}},
         "REMOVE_ESIM", "removeEsimParams"),
        ({"requestDeviceInfoParams": {"deviceInfo": "EID"}}, "REQUEST_DEVICE_INFO",
         "requestDeviceInfoParams"),
        ({"type": "WIPE", "wipeParams": {"wipeDataFlags": ["WIPE_EXTERNAL_STORAGE"],
                                         "wipeReason": {"defaultMessage": "stolen"}}},
         "WIPE", "wipeParams"),
    ]
    for body, kind, field in bodies:
        op = await issue(http, device, token(), body)
        assert op["metadata"]["type"] == kind
        if field is not None:
            assert op["metadata"][field] == redact(body[field])  # activationCode masked
    for given, answered in (("3.5s", "3.5s"), ("0.000000001s", "0.000000001s"),
                            ("600.250s", "600.25s"), ("60.0s", "60s")):
        op = await issue(http, device, token(), {"type": "REBOOT", "duration": given})
        assert op["metadata"]["duration"] == answered
        _, got = await call(http, "GET", "/v1/" + op["name"], token())
        assert got["metadata"]["duration"] == answered


async def test_new_password_is_never_answered(
        service: Runtime, http: aiohttp.ClientSession, token: Token, register: Register) -> None:
    device = await register()
    secret = "Pa55-" + hex24()
    op = await issue(http, device, token(), {
        "type": "RESET_PASSWORD", "newPassword": secret,
        "resetPasswordFlags": ["REQUIRE_ENTRY", "LOCK_NOW"]})
    assert op["metadata"]["resetPasswordFlags"] == ["REQUIRE_ENTRY", "LOCK_NOW"]
    for path in ("/v1/" + op["name"], dev(device) + "/operations"):
        async with http.get(path, headers={"Authorization": token()}) as resp:
            assert secret not in await resp.text()
    assert secret not in str(op)


@pytest.mark.parametrize(("body", "field"), [
    ({}, "type"),
    ({"type": "COMMAND_TYPE_UNSPECIFIED"}, "type"),
    ({"type": "FORMAT_C"}, "type"),
    ({"type": "LOCK", "duration": "10m"}, "duration"),
    ({"type": "LOCK", "duration": 600}, "duration"),
    ({"type": "LOCK", "newPassword": "x"}, "newPassword"),
    ({"type": "RESET_PASSWORD", "resetPasswordFlags": ["SHOUT"]}, "resetPasswordFlags"),
    ({"type": "CLEAR_APP_DATA"}, "clearAppsDataParams"),
    ({"clearAppsDataParams": {"packageNames": []}}, "packageNames"),
    ({"clearAppsDataParams": {"packageNames": ["not a package"]}}, "packageNames"),
    ({"type": "LOCK", "clearAppsDataParams": {"packageNames": ["a.b"]}}, "clearAppsDataParams"),
    ({"clearAppsDataParams": {"packageNames": ["a.b"]}, "wipeParams": {}}, "only one"),
    ({"type": "START_LOST_MODE", "startLostModeParams": {}}, "startLostModeParams"),
    ({"type": "ADD_ESIM", "addEsimParams": {}}, "activationCode"),
    ({"type": "REMOVE_ESIM", "removeEsimParams": {"iccId": "x"}}, "iccId"),
    ({"requestDeviceInfoParams": {"deviceInfo": "DEVICE_INFO_UNSPECIFIED"}}, "deviceInfo"),
    ({"type": "WIPE", "wipeParams": {"wipeDataFlags": ["ALL"]}}, "wipeDataFlags"),
    ({"type": "LOCK", "surprise": True}, "surprise"),
])
async def test_invalid_commands_are_invalid_argument(
        service: Runtime, http: aiohttp.ClientSession, token: Token, register: Register, body: Any,
        field: str) -> None:
    device = await register()
    answer = await call(http, "POST", dev(device) + ":issueCommand", token(), body)
    assert field in google_error(answer, 400, "INVALID_ARGUMENT")


async def test_bodies_and_page_tokens_nested_too_deep_are_invalid_argument(
        service: Runtime, http: aiohttp.ClientSession, token: Token, register: Register) -> None:
    device = await register()
    deep = b'{"type": "LOCK", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    async with http.post(dev(device) + ":issueCommand", data=deep, headers={
            "Authorization": token(), "Content-Type": "application/json"}) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["status"] == "INVALID_ARGUMENT"
    page_token = base64.urlsafe_b64encode(b"[" * 1500 + b"]" * 1500).decode().rstrip("=")
    answer = await call(http, "GET", dev(device) + f"/operations?pageToken={page_token}",
                        token())
    assert "pageToken" in google_error(answer, 400, "INVALID_ARGUMENT")


async def test_acks_fill_status_error_code_and_done(
        service: Runtime, http: aiohttp.ClientSession, token: Token, register: Register,
        kafka: Kafka) -> None:
    device = await register()
    clear = await issue(http, device, token(),
                        {"clearAppsDataParams": {"packageNames": ["com.a.b", "com.c.d"]}})
    failing = await issue(http, device, token(), {"type": "REBOOT"})
    odd = await issue(http, device, token(), {"type": "LOCK"})
    results = {"results": {"com.a.b": {"clearingResult": "SUCCESS"},
                           "com.c.d": {"clearingResult": "APP_NOT_FOUND"}}}
    cid = clear["name"].rsplit("/", 1)[1]
    await kafka.send("device-acks", ack_event(cid, device, "DONE",
                                              data={"clearAppsDataStatus": results}))
    await kafka.send("device-acks", ack_event(failing["name"].rsplit("/", 1)[1], device, "ERROR",
                                              errorType="API_LEVEL", errorMessage="too old"))
    await kafka.send("device-acks", ack_event(odd["name"].rsplit("/", 1)[1], device, "ERROR",
                                              errorType="DISK_ON_FIRE"))

    async def done(name: str) -> Any:
        async def check() -> Any:
            _, op = await call(http, "GET", "/v1/" + name, token())
            return op if op["done"] else None
        return await wait_for(check, what=f"{name} done")

    cleared = await done(clear["name"])
    assert cleared["metadata"]["clearAppsDataStatus"] == results
    assert "error" not in cleared
    failed = await done(failing["name"])
    assert failed["metadata"]["errorCode"] == "API_LEVEL"
    assert failed["error"] == {"code": 2, "message": "too old"}
    assert (await done(odd["name"]))["metadata"]["errorCode"] == "UNKNOWN"


async def test_cancel_answers_empty_and_refuses_finished(
        service: Runtime, http: aiohttp.ClientSession, token: Token, register: Register) -> None:
    device = await register(push_token=None)
    op = await issue(http, device, token(), {"type": "LOCK"})
    assert await call(http, "POST", "/v1/" + op["name"] + ":cancel", token()) == (200, {})
    _, after = await call(http, "GET", "/v1/" + op["name"], token())
    assert after["done"] is True
    assert after["error"]["code"] == 1
    assert "errorCode" not in after["metadata"]
    again = await call(http, "POST", "/v1/" + op["name"] + ":cancel", token())
    google_error(again, 400, "FAILED_PRECONDITION")
    google_error(await call(http, "POST", "/v1/" + op["name"] + ":cancel",
                            token(perms=["mdm.aosp.command.read"])), 403, "PERMISSION_DENIED")


async def test_list_pages_with_tokens(
        service: Runtime, http: aiohttp.ClientSession, token: Token, register: Register) -> None:
    device = await register(push_token=None)
    names = [(await issue(http, device, token(), {"type": "LOCK"}))["name"] for _ in range(5)]
    seen: list[str] = []
    page_token = ""
    while True:
        _, page = await call(http, "GET", dev(device) + f"/operations?pageSize=2&pageToken="
                             f"{page_token}", token())
        seen += [o["name"] for o in page["operations"]]
        page_token = page.get("nextPageToken", "")
        if not page_token:
            break
    assert seen == list(reversed(names))
    google_error(await call(http, "GET", dev(device) + "/operations?pageToken=zz", token()),
                 400, "INVALID_ARGUMENT")


async def test_page_size_above_the_maximum_is_clamped(
        service: Runtime, http: aiohttp.ClientSession, token: Token, register: Register) -> None:
    device = await register(push_token=None)
    for _ in range(3):
        await issue(http, device, token(), {"type": "LOCK"})
    for size in ("0", "101", "1000", "2147483647"):
        status, page = await call(http, "GET", dev(device) + f"/operations?pageSize={size}",
                                  token())
        assert (status, len(page["operations"])) == (200, 3), (size, page)
    for size in ("-1", "x", "2147483648"):
        answer = await call(http, "GET", dev(device) + f"/operations?pageSize={size}", token())
        assert "pageSize" in google_error(answer, 400, "INVALID_ARGUMENT")


async def test_scope_and_auth_in_google_envelope(
        service: Runtime, http: aiohttp.ClientSession, token: Token, register: Register) -> None:
    device = await register()
    other_org = await register(org=hex24())
    body = {"type": "LOCK"}
    google_error(await call(http, "POST", dev(device) + ":issueCommand", None, body),
                 401, "UNAUTHENTICATED")
    google_error(await call(http, "POST", dev(device) + ":issueCommand", "Bearer x.y.z", body),
                 401, "UNAUTHENTICATED")
    google_error(await call(http, "POST", dev(device) + ":issueCommand",
                            token(perms=["mdm.aosp.command.read"]), body), 403,
                 "PERMISSION_DENIED")
    google_error(await call(http, "POST", dev(other_org) + ":issueCommand", token(), body),
                 404, "NOT_FOUND")
    google_error(await call(http, "POST", dev(device) + ":issueCommand", token([hex24()]), body),
                 404, "NOT_FOUND")
    google_error(await call(http, "POST", dev(device, enterprise=hex24()) + ":issueCommand",
                            token(), body), 404, "NOT_FOUND")
    assert (await call(http, "POST", dev(other_org) + ":issueCommand", token(["*"]), body)
            )[0] == 200
    google_error(await call(http, "GET", dev(device) + f"/operations/{hex24()}", token()),
                 404, "NOT_FOUND")
    google_error(await call(http, "POST", dev(device) + ":explode", token(), body),
                 404, "NOT_FOUND")
    google_error(await call(http, "GET", dev(device) + ":issueCommand", token()),
                 405, "UNIMPLEMENTED")
    google_error(await call(http, "POST", dev("short") + ":issueCommand", token(), body),
                 400, "INVALID_ARGUMENT")


async def test_not_before_and_priority_extensions(
        service: Runtime, http: aiohttp.ClientSession, token: Token, register: Register) -> None:
    device = await register(push_token=None)
    op = await issue(http, device, token(), {"type": "REBOOT", "priority": "low",
                                             "notBefore": "2099-01-01T00:00:00Z",
                                             "duration": "60s"})
    meta = op["metadata"]
    assert meta["priority"] == "low"
    assert datetime.fromisoformat(meta["notBefore"]) == datetime(2099, 1, 1, tzinfo=UTC)
    lock = await issue(http, device, token(), {"type": "LOCK"})
    assert lock["metadata"]["priority"] == "high"
    assert "notBefore" not in lock["metadata"]
    bad = await call(http, "POST", dev(device) + ":issueCommand", token(),
                     {"type": "LOCK", "priority": "urgent"})
    assert "priority" in google_error(bad, 400, "INVALID_ARGUMENT")
