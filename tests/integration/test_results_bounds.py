"""``results`` on a real database: bounded per command, redeliveries recognised by their
fingerprint (also once their entry was slimmed or dropped), rows from before kept working."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from dispatcher.acks import RESULTS_MAX, RESULTS_MAX_BYTES, apply_acks, result_entry
from dispatcher.deadletter import Source
from dispatcher.effects import Effects
from dispatcher.events import DeviceAck
from dispatcher.store import Tx, _init_connection
from tests.support.events import ENTERPRISE, ORG, hex24

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    c = await asyncpg.connect(database_url)
    await _init_connection(c)
    yield c
    await c.close()


async def new_command(conn: asyncpg.Connection) -> tuple[str, str]:
    cid, device = hex24(), hex24()
    await conn.execute(
        "INSERT INTO commands (id, organization, aos_enterprise, aos_device, command, status,"
        " duration_s, expires_at, created_at, updated_at) VALUES ($1, $2, $3, $4, 'LOCK',"
        " 'PENDING', 600, now() + interval '1 hour', now(), now())", cid, ORG, ENTERPRISE, device)
    return cid, device


def acks(cid: str, device: str, first: int, n: int, status: str = "RECEIVED",
         blob: int = 2000) -> list[tuple[DeviceAck, Source]]:
    return [(DeviceAck(commandId=cid, aosDevice=device, status=status,
                       at=T0 + timedelta(seconds=i), data={"n": i, "blob": "b" * blob}),
             Source("acks", 0, i, None, None, 1)) for i in range(first, first + n)]


async def apply(conn: asyncpg.Connection, items: list[tuple[DeviceAck, Source]]) -> Effects:
    fx = Effects()
    async with conn.transaction():
        await apply_acks(Tx(conn), items, fx)
    return fx


async def stored(conn: asyncpg.Connection, cid: str) -> Any:
    return await conn.fetchrow("SELECT status, results, results_dropped, pg_column_size(ack_keys)"
                               " AS keys_bytes FROM commands WHERE id = $1", cid)


async def test_results_stay_within_bounds_and_count_what_was_dropped(
        conn: asyncpg.Connection) -> None:
    cid, device = await new_command(conn)
    for first in range(0, 200, 40):
        await apply(conn, acks(cid, device, first, 40))
    await apply(conn, acks(cid, device, 200, 1, status="DONE"))
    row = await stored(conn, cid)
    results = row["results"]
    assert row["status"] == "DONE"
    assert len(results) <= RESULTS_MAX
    assert len(json.dumps(results, separators=(",", ":"))) <= RESULTS_MAX_BYTES
    assert row["results_dropped"] == 201 - len(results)
    assert results[-1]["status"] == "DONE"
    assert results[-1]["data"]["n"] == 200  # the newest keep their data
    assert [r["data"]["n"] for r in results if "data" in r] == list(
        range(201 - sum("data" in r for r in results), 201))
    assert all(r["at"] and r["status"] for r in results)  # slimmed ones keep at and status


async def test_redeliveries_change_nothing_even_past_the_bounds(conn: asyncpg.Connection) -> None:
    cid, device = await new_command(conn)
    everything = acks(cid, device, 0, 120)
    for first in range(0, 120, 30):
        await apply(conn, everything[first:first + 30])
    before = await stored(conn, cid)
    assert before["results_dropped"] > 0
    assert any(r.get("dataDropped") for r in before["results"])
    fx = await apply(conn, everything)  # oldest dropped, slimmed and kept ones alike
    assert fx.consumed == {("acks", "duplicate"): 120}
    assert await stored(conn, cid) == before


async def test_rows_stored_before_fingerprints_still_skip_redeliveries(
        conn: asyncpg.Connection) -> None:
    cid, device = await new_command(conn)
    old = acks(cid, device, 0, 3)
    legacy = [result_entry(ack, source) for ack, source in old]
    await conn.execute("UPDATE commands SET results = $2 WHERE id = $1", cid, legacy)
    fx = await apply(conn, [*old, *acks(cid, device, 3, 1)])
    assert fx.consumed == {("acks", "duplicate"): 3, ("acks", "ok"): 1}
    assert [r["data"]["n"] for r in (await stored(conn, cid))["results"]] == [0, 1, 2, 3]
