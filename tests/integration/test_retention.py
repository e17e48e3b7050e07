"""Retention: finished commands leave the table; nothing else does, and a removed id
replayed from the topic is never pushed again.

Against the real PostgreSQL and broker: rows of every kind side by side (open, recently
finished, finished long ago with validity left, finished and past validity long ago,
held events), then purges by one process, by two side by side, and by one killed
mid-statement. Then the whole path through a running service: a command pushed, acked
DONE, kept while its id must still deduplicate, removed, replayed: recorded EXPIRED on
arrival, not pushed a second time.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from dispatcher.config import Settings
from dispatcher.metrics import Metrics
from dispatcher.retention import BATCH, Retention
from dispatcher.store import QUERIES, Store
from dispatcher_dev.fakepushy import FakePushy
from tests.support.events import ack_event, command_event, device_event, hex24, iso
from tests.support.kafka import Kafka
from tests.support.service import running
from tests.support.wait import until

DAY = 86_400.0
RETENTION_S = 30 * DAY

ROWS = """
INSERT INTO commands (id, organization, aos_enterprise, aos_device, command, params, status,
                      duration_s, expires_at, created_at, updated_at, finished_at)
SELECT $2 || g, 'org-ret', 'ent', 'dev-' || $2 || (g % 50), 'LOCK', '{}'::jsonb, $3,
       600, now() + $4 * interval '1 second', now() - interval '40 days', now(),
       CASE WHEN $5::float8 IS NOT NULL THEN now() + $5 * interval '1 second' END
FROM generate_series(1, $1) g
"""


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[Store]:
    s = await Store.connect(settings.database_url, 1, 4)
    yield s
    await s.close()


async def kinds(db: asyncpg.Pool, tag: str) -> dict[str, int]:
    rows = await db.fetch("SELECT left(id, 4) AS kind, count(*) AS n FROM commands "
                          "WHERE id LIKE '%' || $1 || '%' GROUP BY 1", tag)
    return {r["kind"]: r["n"] for r in rows}


async def test_only_commands_finished_and_past_validity_for_the_window_are_removed(
        db: asyncpg.Pool, store: Store) -> None:
    tag = hex24()[:6]
    past = -31 * DAY
    # kind prefix: open, fresh (finished now), long (finished long ago, validity left),
    # gone (finished and past validity for longer than the window)
    await db.execute(ROWS, 300, "open" + tag, "PENDING", past, None)
    await db.execute(ROWS, 300, "rcvd" + tag, "RECEIVED", past, None)
    await db.execute(ROWS, 300, "frsh" + tag, "DONE", -60, 0.0)
    await db.execute(ROWS, 300, "long" + tag, "DONE", 600, past)
    await db.execute(ROWS, 700, "gone" + tag, "EXPIRED", past, past)
    await db.execute(ROWS, 500, "gon2" + tag, "DONE", past - 10, past)
    await db.execute("INSERT INTO held_events (kind, command_id, payload, source) "
                     "VALUES ('ack', $1, '{}', $2)", "gone" + tag + "1",
                     '{"topic": "t", "partition": 0, "offset": 0}')
    metrics = Metrics()

    removed = await Retention(RETENTION_S, store, metrics).purge()

    assert removed == 1200
    assert metrics.commands_removed._value.get() == 1200
    assert await kinds(db, tag) == {"open": 300, "rcvd": 300, "frsh": 300, "long": 300}
    assert await db.fetchval("SELECT count(*) FROM held_events WHERE command_id = $1",
                             "gone" + tag + "1") == 1
    assert await Retention(RETENTION_S, store, metrics).purge() == 0


async def test_two_replicas_purge_side_by_side_without_double_work(
        db: asyncpg.Pool, settings: Settings) -> None:
    tag = hex24()[:6]
    n = 4 * BATCH + 123
    await db.execute(ROWS, n, "gone" + tag, "DONE", -31 * DAY, -31 * DAY)
    stores = [await Store.connect(settings.database_url, 1, 2) for _ in range(2)]
    metrics = [Metrics(), Metrics()]
    try:
        counts = await asyncio.gather(*(Retention(RETENTION_S, s, m).purge()
                                        for s, m in zip(stores, metrics, strict=True)))
    finally:
        for s in stores:
            await s.close()
    assert sum(counts) == n, counts
    assert [m.commands_removed._value.get() for m in metrics] == counts
    assert await kinds(db, tag) == {}


async def test_a_purge_killed_mid_statement_removes_its_batch_whole_or_not_at_all(
        db: asyncpg.Pool, store: Store, settings: Settings) -> None:
    tag = hex24()[:6]
    n = 60_000
    await db.execute(ROWS, n, "gone" + tag, "DONE", -31 * DAY, -31 * DAY)
    victim = await asyncpg.connect(settings.database_url)
    pid = victim.get_server_pid()
    purge = asyncio.create_task(victim.fetch(QUERIES["remove_finished"], RETENTION_S, n))
    await asyncio.sleep(0.05)
    await db.execute("SELECT pg_terminate_backend($1)", pid)
    with pytest.raises((asyncpg.PostgresError, ConnectionError, asyncpg.InterfaceError)):
        await purge
    victim.terminate()
    left = sum((await kinds(db, tag)).values())
    assert left in (0, n), f"a killed removal left {left} of {n} rows: not atomic"
    await Retention(RETENTION_S, store, Metrics()).purge(budget_s=60)
    assert await kinds(db, tag) == {}


async def test_a_removed_command_replayed_is_recorded_expired_and_never_pushed_again(
        settings: Settings, pushy: FakePushy, kafka: Kafka, db: asyncpg.Pool,
        store: Store) -> None:
    # The service itself purges with a one-second window (a second replica, in effect).
    async with running(dataclasses.replace(settings, retention_s=1.0), pushy):
        device = hex24()
        await kafka.send("devices", device_event(device))
        validity_left = 4
        created = datetime.now(UTC) - timedelta(seconds=600 - validity_left)
        lock = command_event(device, createdAt=iso(created), duration=600)
        await kafka.send("commands.created", lock)

        async def status() -> str | None:
            found: str | None = await db.fetchval("SELECT status FROM commands WHERE id = $1",
                                                  lock["id"])
            return found

        async def pushes() -> int:
            return sum(r.data.get("commandId") == lock["id"] for r in pushy.accepted)

        await until(pushes, timeout=15, what="the push")
        await kafka.send("device-acks", ack_event(lock["id"], device, "DONE"))
        await until(lambda: _is(status, "DONE"), timeout=15, what="DONE")

        # Within the window (validity not over): the same id again is the same command.
        await kafka.send("commands.created", lock)
        metrics = Metrics()
        await Retention(1.0, store, metrics).purge()
        await asyncio.sleep(1)
        assert await status() == "DONE"

        # Removed once past validity + window (by the service's own pass or this one).
        async def removed() -> bool:
            await Retention(1.0, store, metrics).purge()
            return await status() is None

        await until(removed, timeout=20, what="the command's removal")
        await kafka.send("commands.created", lock)
        await until(lambda: _is(status, "EXPIRED"), timeout=15, what="recorded EXPIRED")
        error = await db.fetchval("SELECT error_type FROM commands WHERE id = $1", lock["id"])
        assert error == "EXPIRED_ON_ARRIVAL"
        await asyncio.sleep(1)
        assert await pushes() == 1


async def _is(read: Callable[[], Awaitable[str | None]], want: str) -> bool:
    return await read() == want
