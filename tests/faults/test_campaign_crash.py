"""SIGKILL `dispatcher run` while it expands a campaign into commands and releases its waves.

A campaign over every device of the enterprise (20,000 by default) is expanded a small
page at a time, so the kills land mid-expansion; then more kills land while its waves go
out and the devices answer. At the end every target has exactly one command, each pushed
and answered, the campaign is DONE with counts that add up, and pushes repeat only if
they were in flight at a kill.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dispatcher.campaigns import command_id
from dispatcher.push import repeat_bound
from tests.support.db import PgServer, create_database
from tests.support.events import ENTERPRISE, ORG, hex24
from tests.support.faults import CONCURRENCY, Plan, Rig, open_rig
from tests.support.wait import wait_for

pytestmark = pytest.mark.acceptance

DEVICES = int(os.environ.get("DISPATCHER_CAMPAIGN_CRASH_DEVICES", "20000"))
PAGE = 250
EXPANSION_KILLS = 3
RELEASE_KILLS = 2


@pytest.fixture(scope="module")
async def rig(kafka_bootstrap: str, pg_server: PgServer, log_dir: Path) -> AsyncIterator[Rig]:
    dsn = await create_database(pg_server.admin_dsn, f"faults_campaign_{os.getpid()}")
    async for r in open_rig(bootstrap=kafka_bootstrap, test_bootstrap=kafka_bootstrap,
                            dsn=dsn, test_dsn=dsn, log_dir=log_dir, devices=DEVICES,
                            name="campaign-crash", seed_offset=7,
                            DISPATCHER_CAMPAIGN_PAGE=str(PAGE),
                            DISPATCHER_CAMPAIGN_STATUS_INTERVAL_S="0.5"):
        yield r


async def expanded(rig: Rig, campaign: str) -> int:
    return int(await rig.db.fetchval(
        "SELECT coalesce((SELECT expanded FROM campaigns WHERE id = $1), -1)", campaign))


@pytest.mark.timeout(600)
async def test_sigkill_mid_expansion_and_mid_release_loses_and_duplicates_nothing(
        rig: Rig) -> None:
    async def registered() -> bool:
        return int(await rig.db.fetchval("SELECT count(*) FROM devices")) == DEVICES

    await wait_for(registered, timeout=120, what="the registry")
    campaign = hex24()
    for device in rig.devices:
        cid = command_id(campaign, device)
        rig.gateway.plans[cid] = Plan(("RECEIVED", "DONE"), 600, "DONE")
        rig.gateway.devices[cid] = device
    await rig.kafka.send("campaigns.created", {
        "id": campaign, "organization": ORG, "aosEnterprise": ENTERPRISE, "command": "REBOOT",
        "duration": 600, "target": {"all": True},
        "waves": {"size": DEVICES // 4, "intervalS": 1, "maxErrorRate": 0.5}}, key=campaign)
    points = []
    for k in range(EXPANSION_KILLS):  # at a quarter, a half, three quarters of the targets
        goal = DEVICES * (k + 1) // (EXPANSION_KILLS + 1)

        async def reached(goal: int = goal) -> bool:
            return await expanded(rig, campaign) >= goal

        await wait_for(reached, timeout=180, interval=0.02, what=f"{goal} targets expanded")
        points.append(await expanded(rig, campaign))
        await rig.dispatcher.kill()
        await rig.dispatcher.start()
    assert all(0 < p < DEVICES for p in points), points
    for _ in range(RELEASE_KILLS):  # while the waves go out and the devices answer
        await asyncio.sleep(1.5)
        await rig.dispatcher.kill()
        await rig.dispatcher.start()
    await rig.dispatcher.wait_ready()

    async def done() -> bool:
        state = await rig.db.fetchval("SELECT state FROM campaigns WHERE id = $1", campaign)
        return str(state) == "DONE"

    await wait_for(done, timeout=300, interval=0.5, what="the campaign DONE")
    rows = await rig.db.fetch(
        "SELECT aos_device, id, status, pushes FROM commands WHERE campaign = $1", campaign)
    assert len(rows) == DEVICES
    assert {r["aos_device"] for r in rows} == set(rig.devices)
    assert {r["id"] for r in rows} == {command_id(campaign, d) for d in rig.devices}
    assert {r["status"] for r in rows} == {"DONE"}
    got = await rig.db.fetchrow("SELECT * FROM campaigns WHERE id = $1", campaign)
    assert (got["targets"], got["expanded"], got["waves_released"]) == (DEVICES, DEVICES, 4)
    assert json.loads(got["counts"]) == {"DONE": DEVICES}
    accepted = [r.data.get("commandId") for r in rig.pushy.accepted]
    mine = {command_id(campaign, d) for d in rig.devices}
    repeats = sum(1 for c in accepted if c in mine) - DEVICES
    kills = EXPANSION_KILLS + RELEASE_KILLS
    assert 0 <= repeats <= kills * repeat_bound(CONCURRENCY), repeats
    print(f"\n[campaign-crash] {DEVICES} targets, kills at expanded={points} and "
          f"{RELEASE_KILLS} during release: {repeats} repeated pushes (bound "
          f"{kills * repeat_bound(CONCURRENCY)})")
