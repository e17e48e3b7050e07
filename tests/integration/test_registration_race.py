"""A device registering at the moment its first command is claimed: the command goes.

Found by the bench (stop 23): a few hundred of 4,000 pushes arrived ~3.5 s late in some
runs. The commands of a new device arrive on ``mdm.commands.created`` while its token
arrives on ``mdm.devices``, in other transactions. A claim whose snapshot predates the
registration parks the command (no token); the registration's wake-up, whose snapshot
predates that park, sees nothing to wake; the command then waited for the timer's repair
(every 10 s). Both interleavings are forced here, on a real PostgreSQL, through the
ingest's own ``apply_devices`` and the pusher's own ``claim_pushes``; each fails without
the device keys (``lock_devices``, ``try_lock_devices``, ``unpark_registered``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from dispatcher.deadletter import Source
from dispatcher.effects import Effects
from dispatcher.events import DeviceState
from dispatcher.ingest import apply_devices
from dispatcher.store import Store
from tests.support.events import hex24

LEASE_S = 30.0
BLOCKED_S = 0.5
"""How long the test lets the other transaction run into the one held open."""


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    s = await Store.connect(database_url)
    await s.pool.execute("TRUNCATE commands, devices, status_outbox")  # each test's own
    yield s
    await s.close()


async def command_of_unknown_device(store: Store) -> tuple[str, str]:
    """A command due now for a device the registry has not seen yet."""
    device, command = hex24(), hex24()
    await store.pool.execute(
        "INSERT INTO commands (id, organization, aos_enterprise, aos_device, command,"
        " status, duration_s, expires_at, created_at, updated_at, next_push_at)"
        " VALUES ($1, 'org', 'ent', $2, 'LOCK', 'PENDING', 600,"
        " now() + interval '600 seconds', now(), now(), now())", command, device)
    return device, command


async def register(store: Store, device: str, committed: asyncio.Event | None = None,
                   hold: asyncio.Event | None = None) -> Effects:
    """The ingest's registration of ``device`` with a token, in its own transaction
    (kept open until ``hold`` is set, when given)."""
    event = DeviceState(aosDevice=device, organization=hex24(), aosEnterprise=hex24(),
                        pushToken="tok-" + device, state="ACTIVE",
                        updatedAt=datetime.now(UTC))
    fx = Effects()
    async with store.transaction() as tx:
        await apply_devices(tx, [(event, Source("mdm.devices", 0, 0, None, None))], fx)
        if hold is not None:
            await hold.wait()
    if committed is not None:
        committed.set()
    return fx


async def parked(store: Store, command: str) -> bool:
    return bool(await store.pool.fetchval(
        "SELECT next_push_at IS NULL FROM commands WHERE id = $1", command))


async def test_a_registration_during_a_claim_that_parks_the_command_wakes_it(
        store: Store) -> None:
    device, command = await command_of_unknown_device(store)
    async with store.transaction() as claim:
        rows = await claim.claim_pushes(10, LEASE_S)
        assert [(r.id, r.claimed) for r in rows] == [(command, False)]  # parked: no token
        registration = asyncio.create_task(register(store, device))
        await asyncio.sleep(BLOCKED_S)  # it runs while the park is not committed
    await registration
    assert not await parked(store, command), "the command stayed parked"


async def test_a_claim_during_a_registration_in_progress_lets_the_command_go_again(
        store: Store) -> None:
    device, command = await command_of_unknown_device(store)
    hold, committed = asyncio.Event(), asyncio.Event()
    registration = asyncio.create_task(register(store, device, committed, hold))
    try:
        await asyncio.sleep(BLOCKED_S)  # registered and woken (nothing parked yet), open
        assert not committed.is_set()
        rows = await store.claim_pushes(10, LEASE_S)  # cannot see the registration yet
        assert [(r.id, r.claimed) for r in rows] == [(command, False)]
    finally:
        hold.set()
    await registration
    assert not await parked(store, command), "the command stayed parked"
    await asyncio.sleep(0.2)  # let go shortly (the key was held): due again, and claimed
    claimed = await store.claim_pushes(10, LEASE_S)
    assert [(r.id, r.claimed, r.push_token) for r in claimed] == [
        (command, True, "tok-" + device)]
