"""Who did what, and who may: createdBy/cancelledBy, the audit line, strict permissions,
token lifetime, idempotency replays and each command's own organization (issue 11).

This module's dispatcher runs with ``DISPATCHER_STRICT_PERMISSIONS=true`` and
``DISPATCHER_JWT_MAX_TTL_S=7200``; the other API modules run with the defaults.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest

from dispatcher import logs
from dispatcher.auth import PERMISSIONS, mint
from dispatcher.config import Settings
from dispatcher.runtime import Runtime
from tests.support.api import Register
from tests.support.events import ENTERPRISE, ORG, device_event, hex24, queued_event
from tests.support.kafka import Kafka
from tests.support.wait import wait_for

AOSP = "/v1/organizations/{org}/mdm/aosp/enterprise/devices/{device}/commands"
MAX_TTL_S = 7200
PASSWORD = "Pw-never-in-a-log-7f3a"


@pytest.fixture(scope="module")
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, strict_permissions=True, jwt_max_ttl_s=MAX_TTL_S)


def bearer(settings: Settings, sub: str, orgs: list[str] | None = None,
           perms: tuple[str, ...] | list[str] = PERMISSIONS, ttl_s: int = 3600) -> str:
    return "Bearer " + mint(settings.jwt_secret, orgs or [ORG], perms, ttl_s=ttl_s,
                            subject=sub)


def aosp(device: str, org: str = ORG, tail: str = "") -> str:
    return AOSP.format(org=org, device=device) + tail


def amapi(device: str, enterprise: str = ENTERPRISE, tail: str = "") -> str:
    return f"/v1/enterprises/{enterprise}/devices/{device}{tail}"


async def call(http: aiohttp.ClientSession, method: str, path: str, auth: str,
               body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with http.request(method, path, json=body,
                            headers={"Authorization": auth, **(headers or {})}) as resp:
        return resp.status, await resp.json()


def seed_error(answer: tuple[int, Any], status: int, code: int) -> None:
    got, body = answer
    assert (got, body["status"], body["error"]["code"]) == (status, False, code), body


def google_error(answer: tuple[int, Any], status: int, name: str) -> None:
    got, body = answer
    assert (got, body["error"]["code"], body["error"]["status"]) == (status, status, name), body


async def row_of(settings: Settings, cid: str) -> Any:
    conn = await asyncpg.connect(settings.database_url)
    try:
        return await conn.fetchrow("SELECT * FROM commands WHERE id = $1", cid)
    finally:
        await conn.close()


def audit_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The audit records as the JSON formatter writes them."""
    fmt = logs.JsonFormatter()
    return [json.loads(fmt.format(r)) for r in caplog.records if r.name == "dispatcher.audit"]


# -- createdBy / cancelledBy and the audit line ---------------------------------------------

async def test_http_creates_and_cancels_record_their_actor_in_both_dialects(
        service: Runtime, http: aiohttp.ClientSession, register: Register, settings: Settings,
        kafka: Kafka,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dispatcher.audit")
    device = await register(push_token=None)
    alice, bob = bearer(settings, "alice@example.com"), bearer(settings, "bob@example.com")
    status, body = await call(http, "POST", aosp(device), alice,
                              {"command": "LOCK", "params": {"newPassword": PASSWORD}})
    assert status == 200, body
    created = body["data"]
    assert created["createdBy"] == "alice@example.com"
    assert "cancelledBy" not in created
    assert "null" not in json.dumps(created)
    status, body = await call(http, "POST", aosp(device, tail=f"/{created['id']}/cancel"), bob)
    assert (status, body["data"]["cancelledBy"]) == (200, "bob@example.com"), body
    assert (await call(http, "GET", aosp(device, tail=f"/{created['id']}"), alice)
            )[1]["data"]["cancelledBy"] == "bob@example.com"

    status, op = await call(http, "POST", amapi(device, tail=":issueCommand"), alice,
                            {"type": "REBOOT"})
    assert (status, op["metadata"]["createdBy"]) == (200, "alice@example.com"), op
    assert "cancelledBy" not in op["metadata"]
    assert (await call(http, "POST", "/v1/" + op["name"] + ":cancel", bob, {}))[0] == 200
    _, got = await call(http, "GET", "/v1/" + op["name"], alice)
    assert got["metadata"]["cancelledBy"] == "bob@example.com"
    op_id = op["name"].rsplit("/", 1)[1]

    want = [("alice@example.com", "create", created["id"]),
            ("bob@example.com", "cancel", created["id"]),
            ("alice@example.com", "create", op_id), ("bob@example.com", "cancel", op_id)]
    lines = audit_lines(caplog)
    assert [(x["actor"], x["action"], x["command"]) for x in lines] == want
    assert all((x["device"], x["organization"]) == (device, ORG) for x in lines)
    assert PASSWORD not in caplog.text
    assert all(PASSWORD not in json.dumps(x) for x in lines)

    async def status_events() -> list[Any] | None:
        events = [e for e in await kafka.read("commands.status", timeout_s=0.3)
                  if isinstance(e, dict) and e.get("id") in (created["id"], op_id)]
        return events if len(events) == 4 else None

    events = await wait_for(status_events)
    assert {(e["id"], e["status"], e["createdBy"], e.get("cancelledBy")) for e in events} == {
        (created["id"], "PENDING", "alice@example.com", None),
        (created["id"], "CANCEL", "alice@example.com", "bob@example.com"),
        (op_id, "PENDING", "alice@example.com", None),
        (op_id, "CANCEL", "alice@example.com", "bob@example.com")}
    assert all("cancelledBy" not in e for e in events if e["status"] == "PENDING")


async def test_kafka_commands_and_cancels_name_their_actor_or_the_topic(
        service: Runtime, http: aiohttp.ClientSession, register: Register, settings: Settings,
        kafka: Kafka,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dispatcher.audit")
    device = await register(push_token=None)
    named, unnamed = (queued_event(device, createdBy="billing-service"),
                      queued_event(device))  # both stay open: the second supersedes nothing
    await kafka.send("commands.created", named, key=device)
    await kafka.send("commands.created", unnamed, key=device)
    reader = bearer(settings, "reader")

    async def record(cid: str, field: str) -> Any:
        status, body = await call(http, "GET", aosp(device, tail=f"/{cid}"), reader)
        return body["data"] if status == 200 and field in body["data"] else None

    assert (await wait_for(lambda: record(named["id"], "createdBy")))["createdBy"] == \
        "billing-service"
    assert (await wait_for(lambda: record(unnamed["id"], "createdBy")))["createdBy"] == \
        kafka.topic("commands.created")
    await kafka.send("commands.cancel", {"commandId": named["id"], "aosDevice": device,
                                         "cancelledBy": "ops-console"}, key=device)
    await kafka.send("commands.cancel", {"commandId": unnamed["id"], "aosDevice": device},
                     key=device)
    assert (await wait_for(lambda: record(named["id"], "cancelledBy")))["cancelledBy"] == \
        "ops-console"
    assert (await wait_for(lambda: record(unnamed["id"], "cancelledBy")))["cancelledBy"] == \
        kafka.topic("commands.cancel")
    lines = {(x["actor"], x["action"], x["command"]) for x in audit_lines(caplog)}
    assert lines >= {("billing-service", "create", named["id"]),
                     (kafka.topic("commands.created"), "create", unnamed["id"]),
                     ("ops-console", "cancel", named["id"]),
                     (kafka.topic("commands.cancel"), "cancel", unnamed["id"])}


# -- strict permissions -------------------------------------------------------------------

async def test_strict_permissions_guard_destructive_types_in_both_dialects(
        service: Runtime, http: aiohttp.ClientSession, register: Register,
        settings: Settings) -> None:
    device = await register(push_token=None)
    plain = bearer(settings, "plain")
    seed_error(await call(http, "POST", aosp(device), plain, {"command": "RESET_PASSWORD",
                                                               "params": {"newPassword": "x"}}),
               403, 4003)
    seed_error(await call(http, "POST", aosp(device), plain, {"command": "DISENROLL"}), 403, 4003)
    google_error(await call(http, "POST", amapi(device, tail=":issueCommand"), plain,
                            {"type": "WIPE"}), 403, "PERMISSION_DENIED")
    google_error(await call(http, "POST", amapi(device, tail=":issueCommand"), plain,
                            {"type": "RELINQUISH_OWNERSHIP"}), 403, "PERMISSION_DENIED")
    conn = await asyncpg.connect(settings.database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM commands WHERE aos_device = $1",
                                   device) == 0
    finally:
        await conn.close()
    assert (await call(http, "POST", aosp(device), plain, {"command": "LOCK"}))[0] == 200
    assert (await call(http, "POST", amapi(device, tail=":issueCommand"), plain,
                       {"type": "REBOOT"}))[0] == 200
    wiper = bearer(settings, "wiper", perms=[*PERMISSIONS, "mdm.aosp.command.create.WIPE",
                                             "mdm.aosp.command.create.DISENROLL"])
    assert (await call(http, "POST", amapi(device, tail=":issueCommand"), wiper,
                       {"type": "WIPE"}))[0] == 200
    assert (await call(http, "POST", aosp(device), wiper, {"command": "DISENROLL"}))[0] == 200
    seed_error(await call(http, "POST", aosp(device), wiper, {"command": "RESET_PASSWORD"}),
               403, 4003)


# -- token lifetime -----------------------------------------------------------------------

async def test_a_token_living_longer_than_the_max_ttl_is_refused(
        service: Runtime, http: aiohttp.ClientSession, register: Register,
        settings: Settings) -> None:
    device = await register()
    seed_error(await call(http, "GET", aosp(device), bearer(settings, "x",
                                                             ttl_s=MAX_TTL_S + 1)), 401, 4004)
    google_error(await call(http, "GET", amapi(device, tail="/operations"),
                            bearer(settings, "x", ttl_s=MAX_TTL_S + 1)), 401, "UNAUTHENTICATED")
    assert (await call(http, "GET", aosp(device), bearer(settings, "x", ttl_s=MAX_TTL_S))
            )[0] == 200


# -- idempotency replays ------------------------------------------------------------------

async def test_an_idempotency_key_replayed_with_another_body_is_409(
        service: Runtime, http: aiohttp.ClientSession, register: Register,
        settings: Settings) -> None:
    device = await register(push_token=None)
    auth = bearer(settings, "idem")
    key = {"Idempotency-Key": "k-" + hex24()}
    body = {"command": "LOCK", "duration": 60, "params": {"newPassword": PASSWORD}}
    first = await call(http, "POST", aosp(device), auth, body, key)
    assert first[0] == 200, first
    again = await call(http, "POST", aosp(device), auth, body, key)
    assert (again[0], again[1]["data"]["id"]) == (200, first[1]["data"]["id"])
    for other in ({**body, "duration": 61}, {**body, "params": {"newPassword": "other"}},
                  {"command": "LOCK", "duration": 60}):
        seed_error(await call(http, "POST", aosp(device), auth, other, key), 409, 4010)
    row = await row_of(settings, first[1]["data"]["id"])
    assert row["request_hash"].startswith("t1:")
    assert PASSWORD not in row["request_hash"]
    assert row["duration_s"] == 60

    gkey = {"Idempotency-Key": "g-" + hex24()}
    gbody = {"type": "RESET_PASSWORD", "newPassword": PASSWORD}
    resetter = bearer(settings, "idem", perms=[*PERMISSIONS,
                                               "mdm.aosp.command.create.RESET_PASSWORD"])
    op = await call(http, "POST", amapi(device, tail=":issueCommand"), resetter, gbody, gkey)
    assert op[0] == 200, op
    assert await call(http, "POST", amapi(device, tail=":issueCommand"), resetter, gbody,
                      gkey) == op
    google_error(await call(http, "POST", amapi(device, tail=":issueCommand"), resetter,
                            {**gbody, "newPassword": "different"}, gkey), 409, "ABORTED")


# -- each command's own organization (AMAPI) -----------------------------------------------

async def test_a_device_moved_to_another_organization_does_not_take_its_commands_along(
        service: Runtime, http: aiohttp.ClientSession, register: Register, settings: Settings,
        kafka: Kafka) -> None:
    org_a, org_b = hex24(), hex24()
    device = await register(org=org_a, push_token=None)
    a = bearer(settings, "a", orgs=[org_a])
    b = bearer(settings, "b", orgs=[org_b])
    status, op = await call(http, "POST", amapi(device, tail=":issueCommand"), a,
                            {"type": "LOCK"})
    assert status == 200, op
    later = (datetime.now(UTC) + timedelta(seconds=1)).isoformat().replace("+00:00", "Z")
    await kafka.send("devices", device_event(device, token=None, organization=org_b,
                                             updatedAt=later), key=device)

    async def moved() -> bool | None:
        conn = await asyncpg.connect(settings.database_url)
        try:
            org = await conn.fetchval("SELECT organization FROM devices WHERE aos_device = $1",
                                      device)
        finally:
            await conn.close()
        return org == org_b or None

    await wait_for(moved)
    google_error(await call(http, "GET", "/v1/" + op["name"], b), 404, "NOT_FOUND")
    google_error(await call(http, "POST", "/v1/" + op["name"] + ":cancel", b, {}),
                 404, "NOT_FOUND")
    status, listed = await call(http, "GET", amapi(device, tail="/operations"), b)
    assert (status, listed["operations"]) == (200, [])
    # the organization that sent it still sees it, and may cancel it
    assert (await call(http, "GET", "/v1/" + op["name"], a)) == (200, op)
    status, listed = await call(http, "GET", amapi(device, tail="/operations"), a)
    assert (status, [o["name"] for o in listed["operations"]]) == (200, [op["name"]])
    assert (await call(http, "POST", "/v1/" + op["name"] + ":cancel", a, {}))[0] == 200
    # B's own new command is B's alone
    status, mine = await call(http, "POST", amapi(device, tail=":issueCommand"), b,
                              {"type": "REBOOT"})
    assert status == 200, mine
    _, listed = await call(http, "GET", amapi(device, tail="/operations"), b)
    assert [o["name"] for o in listed["operations"]] == [mine["name"]]
    google_error(await call(http, "GET", amapi(device, tail="/operations"),
                            bearer(settings, "c", orgs=[hex24()])), 404, "NOT_FOUND")

