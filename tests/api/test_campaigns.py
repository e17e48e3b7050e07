"""Campaigns through the real service: HTTP (create, dryRun, read, list, cancel, errors)
and Kafka (mdm.campaigns.created / cancel in, mdm.campaigns.status out), pushed through
the fake Pushy and finished by device acks."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from dispatcher.auth import ALL_PERMISSIONS, PERMISSIONS
from dispatcher.campaigns import command_id
from dispatcher.http.campaigns import CampaignAnswer, CampaignPage, DryRunAnswer
from dispatcher.runtime import Runtime
from dispatcher.secretbox import REDACTED
from dispatcher_dev.fakepushy import FakePushy
from tests.api.test_aosp import call, error
from tests.support.api import Register, Token
from tests.support.events import ENTERPRISE, ORG, ack_event, hex24
from tests.support.kafka import Kafka
from tests.support.wait import wait_for

BASE = f"/v1/organizations/{ORG}/mdm/aosp/enterprise/campaigns"
ALL = ALL_PERMISSIONS


def pushed_ids(pushy: FakePushy) -> set[str]:
    return {str(r.data.get("commandId")) for r in pushy.accepted}


async def get(http: aiohttp.ClientSession, token: Token, campaign: str) -> Any:
    status, body = await call(http, "GET", f"{BASE}/{campaign}", token(perms=ALL))
    assert status == 200, body
    return CampaignAnswer.model_validate(body).data


async def test_a_campaign_over_http_pushes_each_device_once_and_ends_done(
        service: Runtime, http: aiohttp.ClientSession, token: Token, register: Register,
        pushy: FakePushy, kafka: Kafka) -> None:
    devices = [await register() for _ in range(5)]
    status, body = await call(http, "POST", BASE, token(perms=ALL), {
        "aosEnterprise": ENTERPRISE, "command": "REBOOT", "duration": 600,
        "target": {"devices": devices}, "waves": {"size": 2, "intervalS": 0.2}})
    assert status == 200, body
    created = CampaignAnswer.model_validate(body).data
    assert (created.state, created.targets, created.released) == ("RUNNING", 5, 2)
    ids = {command_id(created.id, d) for d in devices}

    async def all_pushed() -> bool:
        return ids <= pushed_ids(pushy)

    await wait_for(all_pushed, what="every wave pushed")
    for device in devices:
        cid = command_id(created.id, device)
        await kafka.send("device-acks", ack_event(cid, device, "DONE"))
    done = await wait_for(lambda: _state(http, token, created.id, "DONE"), timeout=30,
                          what="the campaign DONE")
    assert (done.released, done.counts.DONE, done.counts.PENDING) == (5, 5, 0)
    assert sum(1 for r in pushy.accepted if r.data.get("commandId") in ids) == 5
    record = (await call(http, "GET", f"/v1/organizations/{ORG}/mdm/aosp/enterprise/devices/"
                         f"{devices[0]}/commands/{command_id(created.id, devices[0])}",
                         token()))[1]["data"]
    assert (record["campaign"], record["priority"]) == (created.id, "low")
    events = await kafka.read("campaigns.status")
    mine = [e for e in events if e["id"] == created.id]
    assert mine[0]["state"] == "RUNNING"
    assert mine[-1]["state"] == "DONE"


async def _state(http: aiohttp.ClientSession, token: Token, campaign: str, state: str) -> Any:
    """The campaign once it is in ``state``; None before (or while it is not there yet: a
    Kafka campaign exists once the consumer has taken it)."""
    status, body = await call(http, "GET", f"{BASE}/{campaign}", token(perms=ALL))
    if status == 404:
        return None
    assert status == 200, body
    got = CampaignAnswer.model_validate(body).data
    return got if got.state == state else None


async def test_a_dry_run_answers_the_reach_and_creates_nothing(
        service: Runtime, http: aiohttp.ClientSession, token: Token,
        register: Register) -> None:
    enterprise = hex24()
    ok = await register(enterprise=enterprise)
    tokenless = await register(enterprise=enterprise, push_token=None)
    gone = await register(enterprise=enterprise, state="DISENROLLED")
    status, body = await call(http, "POST", BASE, token(perms=ALL), {
        "aosEnterprise": enterprise, "command": "LOCK", "dryRun": True,
        "target": {"devices": [ok, tokenless, gone, hex24()]}})
    assert status == 200, body
    reach = DryRunAnswer.model_validate(body).data
    assert (reach.targets, reach.withoutPushToken, reach.disenrolled, reach.notRegistered) == (
        3, 1, 1, 1)
    status, body = await call(http, "POST", BASE, token(perms=ALL), {
        "aosEnterprise": enterprise, "command": "LOCK", "dryRun": True, "target": {"all": True}})
    assert DryRunAnswer.model_validate(body).data.targets == 2
    listed = CampaignPage.model_validate((await call(http, "GET", BASE, token(perms=ALL)))[1])
    assert all(c.aosEnterprise != enterprise for c in listed.data)


async def test_cancel_over_http_ends_open_commands_then_answers_409(
        service: Runtime, http: aiohttp.ClientSession, token: Token,
        register: Register) -> None:
    enterprise = hex24()
    for _ in range(3):
        await register(enterprise=enterprise)
    status, body = await call(http, "POST", BASE, token(perms=ALL), {
        "aosEnterprise": enterprise, "command": "REBOOT", "target": {"all": True},
        "waves": {"size": 1, "intervalS": 3600}})
    assert status == 200, body
    campaign = body["data"]["id"]
    status, body = await call(http, "POST", f"{BASE}/{campaign}/cancel", token(perms=ALL))
    assert (status, body["data"]["state"]) == (200, "CANCELLED")
    ended = await wait_for(
        lambda: _cancelled(http, token, campaign), what="the campaign's commands cancelled")
    assert ended.counts.CANCEL == 3
    error(409, 4009)(await call(http, "POST", f"{BASE}/{campaign}/cancel", token(perms=ALL)))


async def _cancelled(http: aiohttp.ClientSession, token: Token, campaign: str) -> Any:
    got = await get(http, token, campaign)
    return got if got.targets == got.counts.CANCEL and got.counts.PENDING == 0 else None


@pytest.mark.parametrize(("perms", "org", "code"), [
    (PERMISSIONS, ORG, (403, 4003)),  # command permissions are not campaign ones
    (ALL, hex24(), (403, 4003)),  # another organization
])
async def test_campaign_routes_need_their_permission_and_organization(
        service: Runtime, http: aiohttp.ClientSession, token: Token,
        perms: tuple[str, ...], org: str, code: tuple[int, int]) -> None:
    body = {"aosEnterprise": ENTERPRISE, "command": "LOCK", "target": {"all": True},
            "dryRun": True}
    error(*code)(await call(http, "POST", BASE, token(orgs=[org], perms=perms), body))
    error(*code)(await call(http, "GET", BASE, token(orgs=[org], perms=perms)))
    error(401, 4002)(await call(http, "GET", BASE, None))


@pytest.mark.parametrize("body", [
    {"aosEnterprise": ENTERPRISE, "command": "LOCK", "target": {}},
    {"aosEnterprise": ENTERPRISE, "command": "LOCK", "target": {"all": True, "devices": ["a"]}},
    {"aosEnterprise": ENTERPRISE, "command": "NAP", "target": {"all": True}},
    {"aosEnterprise": ENTERPRISE, "command": "LOCK", "target": {"all": True},
     "waves": {"size": 0}},
    {"aosEnterprise": ENTERPRISE, "command": "LOCK", "target": {"all": True},
     "waves": {"size": 5, "maxErrorRate": 1.5}},
    {"aosEnterprise": ENTERPRISE, "command": "LOCK", "target": {"all": True},
     "params": {"x": "y" * 5000}},
    {"command": "LOCK", "target": {"all": True}},
])
async def test_an_invalid_campaign_gets_the_seed_envelope_and_creates_nothing(
        service: Runtime, http: aiohttp.ClientSession, token: Token, body: Any) -> None:
    error(400, 4000)(await call(http, "POST", BASE, token(perms=ALL), body))


async def test_an_unknown_campaign_is_3001(
        service: Runtime, http: aiohttp.ClientSession, token: Token) -> None:
    error(404, 3001)(await call(http, "GET", f"{BASE}/{hex24()}", token(perms=ALL)))
    error(404, 3001)(await call(http, "POST", f"{BASE}/{hex24()}/cancel", token(perms=ALL)))


async def test_a_campaign_over_kafka_replayed_is_one_and_its_cancel_ends_it(
        service: Runtime, http: aiohttp.ClientSession, token: Token, register: Register,
        kafka: Kafka) -> None:
    enterprise = hex24()
    devices = [await register(enterprise=enterprise) for _ in range(4)]
    campaign = hex24()
    event = {"id": campaign, "organization": ORG, "aosEnterprise": enterprise,
             "command": "REQUEST_DEVICE_INFO", "params": {"newPassword": "hunter2-secret"},
             "target": {"all": True}, "waves": {"size": 2, "intervalS": 3600}}
    await kafka.send("campaigns.created", event, key=campaign)
    await kafka.send("campaigns.created", event, key=campaign)
    running = await wait_for(lambda: _state(http, token, campaign, "RUNNING"), what="accepted")
    assert (running.targets, running.released) == (4, 2)
    assert running.params == {"newPassword": REDACTED}
    await kafka.send("campaigns.cancel", {"campaignId": campaign, "cancelledBy": "ops"},
                     key=campaign)
    ended = await wait_for(lambda: _cancelled(http, token, campaign), what="cancelled")
    assert (ended.state, ended.cancelledBy, ended.counts.CANCEL) == ("CANCELLED", "ops", 4)
    status_events = [e for e in await kafka.read("campaigns.status") if e["id"] == campaign]
    assert status_events[-1]["state"] == "CANCELLED"
    assert "hunter2" not in str(await kafka.read("campaigns.status"))
    assert "hunter2" not in str(await kafka.read("commands.status"))
    rows = [command_id(campaign, d) for d in devices]
    assert len(set(rows)) == 4
