"""The status outbox written by a trigger (migration 010) against the statements' own
INSERTs (before 010), measured on the same work.

``python -m bench.status_trigger`` (``TRIGGER_ROWS``, ``TRIGGER_ROUNDS`` to change the
run). Two databases of one embedded PostgreSQL: ``before`` migrated up to 009 and run
with the statements as they were (each with its own ``INSERT INTO status_outbox``,
copied below), ``after`` migrated to the end and run with ``queries.sql``. Each round
empties both and, on each in turn, inserts :data:`ROWS` new commands in batches of
:data:`BATCH` (one transaction each, as ingest writes them: ``insert_commands``).
Printed: the median over the rounds of the seconds and rows per second, and the outbox
rows each wrote (both must write one event per row).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from dispatcher.lifecycle import Status
from dispatcher.store import MIGRATIONS_DIR, QUERIES, Store, migrate, migration_files
from dispatcher.store.records import NewCommand

ROWS = int(os.environ.get("TRIGGER_ROWS", "20000"))
ROUNDS = int(os.environ.get("TRIGGER_ROUNDS", "3"))
BATCH = 2000
"""Commands a transaction inserts (``DISPATCHER_BATCH_MAX``'s default)."""

BEFORE_INSERT = """
-- The same id twice is one command: a duplicate inserts nothing and emits nothing.
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                         $7::jsonb[], $8::bytea[], $9::text[], $10::int[], $11::timestamptz[],
                         $12::timestamptz[], $13::text[], $14::text[], $15::int[], $16::text[],
                         $17::text[])
        AS t(id, organization, aos_enterprise, aos_device, mdm_user, command, params, secret,
             status, duration_s, expires_at, created_at, source, user_name, duration_nanos,
             created_by, request_hash)
), inserted AS (
    INSERT INTO commands (id, organization, aos_enterprise, aos_device, mdm_user, command, params,
                          secret, status, duration_s, duration_nanos, expires_at, created_at,
                          updated_at, finished_at, next_push_at, source, user_name,
                          created_by, request_hash, error_type, error_message)
    SELECT id, organization, aos_enterprise, aos_device, mdm_user, command, params,
           CASE WHEN status = 'PENDING' THEN secret END, status, duration_s, duration_nanos,
           expires_at,
           created_at, now(),
           CASE WHEN status <> 'PENDING' THEN now() END,
           CASE WHEN status = 'PENDING' THEN now() END,
           source, user_name, created_by, request_hash,
           CASE status WHEN 'EXPIRED' THEN 'EXPIRED_ON_ARRIVAL'
                       WHEN 'CANCEL' THEN 'DEVICE_DISENROLLED' END,
           CASE status WHEN 'EXPIRED' THEN 'the command''s validity had run out when it arrived'
                       WHEN 'CANCEL' THEN 'the device is disenrolled' END
    FROM input
    ON CONFLICT (id) DO NOTHING
    RETURNING *
), events AS (
    INSERT INTO status_outbox (command_id, aos_device, payload)
    SELECT i.id, i.aos_device, dispatcher_status_event(i.id, i.organization, i.aos_device,
           i.command,
           i.status, NULL, i.updated_at, i.push_id, i.error_type, i.error_message,
           i.created_by, i.cancelled_by) FROM inserted i
)
SELECT id, status, command, created_at FROM inserted
"""
"""``insert_commands`` before migration 010: its own INSERT INTO status_outbox."""

def _commands(n: int) -> list[NewCommand]:
    now = datetime.now(UTC)
    return [NewCommand(id=secrets.token_hex(12), organization="org", aos_enterprise="ent",
                       aos_device=f"dev-{i % 2000}", mdm_user=None, command="LOCK",
                       params={"message": "x" * 40}, secret=None, status=Status.PENDING,
                       duration_s=600, expires_at=now + timedelta(seconds=600),
                       created_at=now) for i in range(n)]


async def _insert(store: Store, sql: str | None, commands: list[NewCommand]) -> float:
    started = time.perf_counter()
    for i in range(0, len(commands), BATCH):
        async with store.transaction() as tx:
            if sql is None:
                await tx.insert_commands(commands[i:i + BATCH])
            else:  # the same columns insert_commands transposes
                c = commands[i:i + BATCH]
                await tx.conn.fetch(sql, [x.id for x in c], [x.organization for x in c],
                               [x.aos_enterprise for x in c], [x.aos_device for x in c],
                               [x.mdm_user for x in c], [x.command for x in c],
                               [x.params for x in c], [x.secret for x in c],
                               [x.status.value for x in c], [x.duration_s for x in c],
                               [x.expires_at for x in c], [x.created_at for x in c],
                               [x.source for x in c], [x.user_name for x in c],
                               [x.duration_nanos for x in c], [x.created_by for x in c],
                               [x.request_hash for x in c])
    return time.perf_counter() - started


async def _round(store: Store, sql: str | None) -> tuple[float, int]:
    await store.pool.execute("TRUNCATE commands, status_outbox, held_events")
    await store.pool.execute("CHECKPOINT")  # neither side pays the other's writes
    ingest_s = await _insert(store, sql, _commands(ROWS))
    events = await store.pool.fetchval("SELECT count(*) FROM status_outbox")
    return ingest_s, int(events)


async def _databases(admin: str, work: Path) -> tuple[str, str]:
    before_dir = work / "before"
    before_dir.mkdir()
    for version, _, path in migration_files(MIGRATIONS_DIR):
        if version < 10:
            shutil.copy(path, before_dir / path.name)
    dsns = []
    conn = await asyncpg.connect(admin)
    try:
        for name in ("before", "after"):
            await conn.execute(f'DROP DATABASE IF EXISTS "trigger_{name}"')
            await conn.execute(f'CREATE DATABASE "trigger_{name}"')
            dsns.append(admin.rpartition("/")[0] + f"/trigger_{name}")
    finally:
        await conn.close()
    await migrate(dsns[0], before_dir)
    await migrate(dsns[1])
    return dsns[0], dsns[1]


async def measure(admin: str, work: Path) -> None:
    """Run the rounds on the server of ``admin`` and print the medians."""
    before_dsn, after_dsn = await _databases(admin, work)
    before, after = await Store.connect(before_dsn, 1, 2), await Store.connect(after_dsn, 1, 2)
    results: dict[str, list[tuple[float, int]]] = {"before": [], "after": []}
    try:
        for _ in range(ROUNDS):
            results["before"].append(await _round(before, BEFORE_INSERT))
            results["after"].append(await _round(after, None))
    finally:
        await before.close()
        await after.close()
    for name, runs in results.items():
        ingest = statistics.median(r[0] for r in runs)
        print(f"{name:6}: ingest {ROWS} in {ingest:.3f}s ({ROWS / ingest:,.0f}/s, median of "
              f"{[round(r[0], 3) for r in runs]}), outbox rows {[r[1] for r in runs]}")
    assert QUERIES["insert_commands"] != BEFORE_INSERT.strip()


def main() -> None:
    """Start an embedded PostgreSQL (or use ``DISPATCHER_DATABASE_URL``) and measure."""
    with tempfile.TemporaryDirectory(prefix="trigger-bench-") as tmp:
        work = Path(tmp)
        if os.environ.get("DISPATCHER_DATABASE_URL"):
            asyncio.run(measure(os.environ["DISPATCHER_DATABASE_URL"], work))
            return
        from dispatcher_dev.devstack import EmbeddedPostgres

        with EmbeddedPostgres(work / "data") as pg:
            asyncio.run(measure(pg.start(), work))


if __name__ == "__main__":
    main()
