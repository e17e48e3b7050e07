"""Who did what, and who may: createdBy/cancelledBy, the audit line, strict permissions,
token lifetime, idempotency replays and each command's own organization (issue 11).

This module's dispatcher runs with ``DISPATCHER_JWT_MAX_TTL_S=7200``; the other API
modules run with the defaults.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest

from dispatcher import logs
from dispatcher.auth import PERMISSIONS, mint
from dispatcher.config import Settings
from tests.helpers import ENTERPRISE, ORG, Kafka, device_event, hex24, wait_for

AOSP = "/v1/organizations/{org}/mdm/aosp/enterprise/devices/{device}/commands"
MAX_TTL_S = 7200
PASSWORD = "Pw-never-in-a-log-7f3a"


@pytest.fixture(scope="module")
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, jwt_max_ttl_s=MAX_TTL_S)


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


# -- token lifetime -----------------------------------------------------------------------

async def test_a_token_living_longer_than_the_max_ttl_is_refused(
        service, http, register, settings: Settings) -> None:
    device = await register()
    seed_error(await call(http, "GET", aosp(device), bearer(settings, "x",
                                                             ttl_s=MAX_TTL_S + 1)), 401, 4004)
    google_error(await call(http, "GET", amapi(device, tail="/operations"),
                            bearer(settings, "x", ttl_s=MAX_TTL_S + 1)), 401, "UNAUTHENTICATED")
    assert (await call(http, "GET", aosp(device), bearer(settings, "x", ttl_s=MAX_TTL_S))
            )[0] == 200


# -- each command's own organization (AMAPI) -----------------------------------------------

async def test_a_device_moved_to_another_organization_does_not_take_its_commands_along(
        service, http, register, settings: Settings, kafka: Kafka) -> None:
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

