"""Which push goes next, on a real PostgreSQL: superseding, notBefore, priority, fairness
across organizations and the rate budget all replicas share (CONTRACT.md "Superseding",
"Order and fairness", ``DISPATCHER_PUSH_RATE_PER_MIN``).

Commands enter through the ingest's own ``apply_created`` (the path of Kafka and both
HTTP dialects) and leave through the pusher's own ``claim_pushes``.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dispatcher.deadletter import Source
from dispatcher.effects import Effects
from dispatcher.events import CommandCreated, DeviceState
from dispatcher.ingest import apply_created, apply_devices, wake_freed
from dispatcher.push.pusher import next_cursors
from dispatcher.secretbox import SecretBox, generate_keys
from dispatcher.store import Store
from dispatcher.store.records import ClaimedPush, ClaimOrder
from tests.support.events import hex24

LEASE_S = 30.0
BOX = SecretBox(generate_keys())
START: dict[str, datetime] = {}
"""When the running test's commands were created (set per test: a module-level time
would be long past their validity by the time a full run reaches these tests)."""


def t0() -> datetime:
    return START["t0"]


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    START["t0"] = datetime.now(UTC) - timedelta(seconds=30)
    s = await Store.connect(database_url)
    await s.pool.execute("TRUNCATE commands, devices, status_outbox, push_budget")
    yield s
    await s.close()


async def register(store: Store, *devices: str, org: str = "a" * 24) -> None:
    fx = Effects()
    events = [(DeviceState(aosDevice=d, organization=org, aosEnterprise="e" * 24,
                           pushToken="tok-" + d, state="ACTIVE", updatedAt=t0()),
               Source("mdm.devices", 0, 0, None, None)) for d in devices]
    async with store.transaction() as tx:
        await apply_devices(tx, events, fx)


async def create(store: Store, *commands: dict[str, Any]) -> Effects:
    """Commands as one batch of mdm.commands.created, committed (as the consumer does)."""
    fx = Effects()
    items = [(CommandCreated(**{"id": hex24(), "organization": "a" * 24,
                                "aosEnterprise": "e" * 24, "createdAt": t0(), **c}),
              Source("mdm.commands.created", 0, i, None, None)) for i, c in enumerate(commands)]
    async with store.transaction() as tx:
        await apply_created(tx, items, fx, 600, BOX)
        await wake_freed(tx, fx)
    return fx


def cmd(device: str, command: str = "LOCK", at: int = 0, **over: Any) -> dict[str, Any]:
    """A command of ``device`` created ``at`` milliseconds after the test's start."""
    return {"aosDevice": device, "command": command,
            "createdAt": t0() + timedelta(milliseconds=at), **over}


async def row(store: Store, command_id: str) -> Any:
    return await store.pool.fetchrow("SELECT * FROM commands WHERE id = $1", command_id)


async def claim(store: Store, limit: int, order: ClaimOrder | None = None) -> list[ClaimedPush]:
    return [r for r in await store.claim_pushes(limit, LEASE_S, order) if r.claimed]


# -- superseding -----------------------------------------------------------------------


async def test_a_second_lock_supersedes_the_first_unsent_one(store: Store) -> None:
    device = hex24()
    first, second = cmd(device, at=0, id=hex24()), cmd(device, at=1, id=hex24())
    await create(store, first)
    fx = await create(store, second)
    old = await row(store, first["id"])
    assert (old["status"], old["error_type"]) == ("CANCEL", "SUPERSEDED")
    assert second["id"] in old["error_message"]
    assert old["results"][-1]["data"] == {"supersededBy": second["id"]}
    assert old["results"][-1]["errorType"] == "SUPERSEDED"
    assert fx.superseded == ["LOCK"]
    event = await store.pool.fetchval(
        "SELECT payload FROM status_outbox WHERE command_id = $1 ORDER BY seq DESC LIMIT 1",
        first["id"])
    assert (event["status"], event["previousStatus"], event["errorType"]) == (
        "CANCEL", "PENDING", "SUPERSEDED")
    await register(store, device)
    assert [r.id for r in await claim(store, 10)] == [second["id"]]  # never the first


async def test_the_rules_of_the_contract_hold_between_commands_of_one_device(
        store: Store) -> None:
    device = hex24()
    start = cmd(device, "START_LOST_MODE", 0, id=hex24(), params={"message": "lost"})
    clear1 = cmd(device, "CLEAR_APP_DATA", 1, id=hex24(), params={"packageNames": ["a.b"]})
    clear2 = cmd(device, "CLEAR_APP_DATA", 2, id=hex24(), params={"packageNames": ["c.d"]})
    reboot = cmd(device, "REBOOT", 3, id=hex24())
    stop = cmd(device, "STOP_LOST_MODE", 4, id=hex24())
    await create(store, start, clear1, clear2, reboot)
    await create(store, stop)  # supersedes START_LOST_MODE only
    status = {c["command"] + str(c["createdAt"]): (await row(store, c["id"]))["status"]
              for c in (start, clear1, clear2, reboot, stop)}
    assert list(status.values()) == ["CANCEL", "PENDING", "PENDING", "PENDING", "PENDING"]
    wipe = cmd(device, "WIPE", 5, id=hex24())
    await create(store, wipe)  # supersedes every other PENDING command of the device
    left = await store.pool.fetch(
        "SELECT command, status, error_type FROM commands WHERE aos_device = $1 "
        "ORDER BY created_at", device)
    assert [(r["command"], r["status"]) for r in left] == [
        ("START_LOST_MODE", "CANCEL"), ("CLEAR_APP_DATA", "CANCEL"), ("CLEAR_APP_DATA", "CANCEL"),
        ("REBOOT", "CANCEL"), ("STOP_LOST_MODE", "CANCEL"), ("WIPE", "PENDING")]
    assert {r["error_type"] for r in left[:-1]} == {"SUPERSEDED"}


async def test_a_received_command_is_not_superseded_and_a_late_arrival_is(
        store: Store) -> None:
    device = hex24()
    received, newer = cmd(device, at=0, id=hex24()), cmd(device, at=10, id=hex24())
    await create(store, received)
    await store.pool.execute("UPDATE commands SET status = 'RECEIVED' WHERE id = $1",
                             received["id"])
    await create(store, newer)
    assert (await row(store, received["id"]))["status"] == "RECEIVED"
    late = cmd(device, at=5, id=hex24())  # created before `newer`, arrives after it
    await create(store, late)
    assert (await row(store, late["id"]))["error_type"] == "SUPERSEDED"
    assert (await row(store, newer["id"]))["status"] == "PENDING"


async def test_a_command_scheduled_for_later_takes_no_part_in_superseding(
        store: Store) -> None:
    device = hex24()
    later = datetime.now(UTC) + timedelta(hours=1)
    tonight = cmd(device, "REBOOT", 0, id=hex24(), notBefore=later)
    now = cmd(device, "REBOOT", 1, id=hex24())
    await create(store, tonight, now)
    assert [(await row(store, c["id"]))["status"] for c in (tonight, now)] == [
        "PENDING", "PENDING"]


async def test_superseding_the_head_lets_the_device_s_next_command_go(store: Store) -> None:
    device = hex24()
    await register(store, device)
    lock = cmd(device, "LOCK", 0, id=hex24())
    clear = cmd(device, "CLEAR_APP_DATA", 1, id=hex24(), params={"packageNames": ["a.b"]})
    await create(store, lock, clear)
    await store.pool.execute("UPDATE commands SET next_push_at = NULL WHERE id = $1",
                             clear["id"])  # parked behind the LOCK, as a claim leaves it
    await create(store, cmd(device, "WIPE", 2, id=hex24()))
    assert (await row(store, clear["id"]))["status"] == "CANCEL"
    assert [r.command for r in await claim(store, 10)] == ["WIPE"]


# -- notBefore -------------------------------------------------------------------------


async def test_not_before_holds_the_push_and_starts_the_validity(store: Store) -> None:
    device = hex24()
    await register(store, device)
    soon = datetime.now(UTC) + timedelta(seconds=1.5)
    later = cmd(device, "REBOOT", 0, id=hex24(), notBefore=soon, duration=60)
    at_once = cmd(device, "LOCK", 1, id=hex24())
    await create(store, later, at_once)
    stored = await row(store, later["id"])
    assert stored["expires_at"] == soon + timedelta(seconds=60)
    assert stored["not_before"] == soon
    # the LOCK, created after it, is not held behind a command that is not due yet
    assert [r.id for r in await claim(store, 10)] == [at_once["id"]]
    await store.pool.execute("UPDATE commands SET status = 'DONE', push_lease_until = NULL "
                             "WHERE id = $1", at_once["id"])
    assert await claim(store, 10) == []
    await asyncio.sleep((soon - datetime.now(UTC)).total_seconds() + 0.05)
    assert [r.id for r in await claim(store, 10)] == [later["id"]]


# -- priority --------------------------------------------------------------------------


async def test_high_goes_before_a_backlog_of_low_and_normal(store: Store) -> None:
    devices = [hex24() for _ in range(301)]
    await register(store, *devices)
    await create(store, *[cmd(d, "REBOOT", i, priority="low") for i, d in enumerate(devices[:200])])
    await create(store, *[cmd(d, "REBOOT", i) for i, d in enumerate(devices[200:300])])
    lock = cmd(devices[300], "LOCK", 999, id=hex24())  # high by default, created last
    await create(store, lock)
    first = await claim(store, 1)
    assert [r.id for r in first] == [lock["id"]]
    assert (first[0].priority, first[0].rank) == ("high", 0)
    batch = await claim(store, 150)
    assert Counter(r.priority for r in batch) == {"normal": 100, "low": 50}


async def test_a_high_command_lifts_the_older_command_it_waits_behind(store: Store) -> None:
    """A device gets its commands in creation order: the stolen phone's LOCK behind a
    low campaign REBOOT would otherwise wait for the whole campaign."""
    busy, phone = [hex24() for _ in range(100)], hex24()
    await register(store, *busy, phone)
    await create(store, *[cmd(d, "REBOOT", i, priority="low") for i, d in enumerate(busy)])
    reboot = cmd(phone, "REBOOT", 200, id=hex24(), priority="low")
    await create(store, reboot)
    await create(store, cmd(phone, "LOCK", 300, id=hex24()))
    assert (await row(store, reboot["id"]))["push_rank"] == 0
    assert (await row(store, reboot["id"]))["priority"] == "low"  # the record keeps its own
    assert [r.id for r in await claim(store, 1)] == [reboot["id"]]


async def test_the_request_s_priority_wins_over_the_type_s_default(store: Store) -> None:
    device = hex24()
    lock = cmd(device, "LOCK", 0, id=hex24(), priority="low")
    reboot = cmd(hex24(), "REBOOT", 1, id=hex24())
    await create(store, lock, reboot)
    assert [(await row(store, c["id"]))["priority"] for c in (lock, reboot)] == ["low", "normal"]


# -- fairness --------------------------------------------------------------------------


async def backlog(store: Store, org: str, n: int, command: str = "REBOOT") -> list[str]:
    devices = [hex24() for _ in range(n)]
    await register(store, *devices, org=org)
    await create(store, *[cmd(d, command, i, organization=org) for i, d in enumerate(devices)])
    return devices


async def test_a_backlog_of_one_organization_does_not_hold_another_back(store: Store) -> None:
    big, small = "b" * 24, "c" * 24
    await backlog(store, big, 2000)
    await backlog(store, small, 10)
    cursors = ("", "", "")
    rounds_until_small = None
    for k in range(1, 5):
        rows = await store.claim_pushes(64, LEASE_S, ClaimOrder(cursors))
        cursors = next_cursors(cursors, rows)
        if any(r.organization == small for r in rows):
            rounds_until_small = k
            got = Counter(r.organization for r in rows if r.claimed)
            assert got[small] == 10  # all of it: its share is more than it has
            assert got[big] == 54  # the rest of the claim is not left empty
            break
    assert rounds_until_small == 1


async def test_organizations_take_turns_when_each_has_more_than_a_claim(
        store: Store) -> None:
    orgs = [f"{k:024x}" for k in range(1, 9)]
    for org in orgs:
        await backlog(store, org, 40)
    cursors, served = ("", "", ""), Counter[str]()
    for _ in range(4):  # 4 claims of 4: each serves the next 4 organizations, one each
        rows = await store.claim_pushes(4, LEASE_S, ClaimOrder(cursors))
        cursors = next_cursors(cursors, rows)
        served.update(r.organization for r in rows if r.claimed)
    assert served == dict.fromkeys(orgs, 2)


# -- the rate budget all replicas share ------------------------------------------------


async def test_the_budget_is_shared_and_refills_by_the_database_clock(store: Store) -> None:
    per_s, capacity = 10.0, 5.0
    first = await store.take_push_budget("pushy", 100, per_s, capacity)
    assert first.granted == 5  # a full bucket
    other_replica = await store.take_push_budget("pushy", 100, per_s, capacity)
    assert other_replica.granted == 0  # the same budget, not one each
    assert (await store.take_push_budget("fcm", 100, per_s, capacity)).granted == 5
    await asyncio.sleep(0.35)
    refilled = await store.take_push_budget("pushy", 100, per_s, capacity)
    assert 3 <= refilled.granted <= 4
    await store.give_push_budget("pushy", 2, capacity)
    assert (await store.take_push_budget("pushy", 100, per_s, capacity)).granted >= 2


async def test_a_claim_takes_no_more_of_a_provider_than_its_budget(store: Store) -> None:
    devices = [hex24() for _ in range(20)]
    await register(store, *devices)
    await create(store, *[cmd(d, "REBOOT", i) for i, d in enumerate(devices)])
    rows = await store.claim_pushes(20, LEASE_S, ClaimOrder(budgets={"pushy": 3},
                                                           default_lane="pushy"))
    assert sum(r.claimed for r in rows) == 3
    due = await store.pool.fetchval(
        "SELECT count(*) FROM commands WHERE next_push_at <= now() AND push_lease_until IS NULL")
    assert due == 17  # the rest stays due, not parked
    rows = await store.claim_pushes(20, LEASE_S, ClaimOrder(budgets={"fcm": 0},
                                                           default_lane="pushy"))
    assert sum(r.claimed for r in rows) == 17  # another provider's budget does not bind
