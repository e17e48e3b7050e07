"""The status outbox written once (migrations 010 and 011: a statement trigger for new
rows, one set-based call from each statement that moves a status) against the statements'
own INSERTs (before 010), measured on the same work.

``python -m bench.status_trigger`` (``TRIGGER_ROWS``, ``TRIGGER_ROUNDS`` to change the
run). Two databases of one embedded PostgreSQL: ``before`` migrated up to 009 and run
with the statements as they were (each with its own ``INSERT INTO status_outbox``, read
from git at :data:`BEFORE_COMMIT`), ``after`` migrated to the end and run with
``queries.sql``. Each round empties both and, on each in turn, inserts :data:`ROWS` new
commands in batches of :data:`BATCH` (one transaction each, as ingest writes them:
``insert_commands``), then expires them all :data:`EXPIRE_BATCH` at a time as the timer
does (``expire_due``: the case 010's row trigger made x0.60 slower, 011 removed).
Printed: the median over the rounds of the seconds and rows per second of each phase,
and the outbox rows each wrote (both must write two events per command: PENDING and
EXPIRED).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import statistics
import subprocess
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from dispatcher.lifecycle import Status
from dispatcher.store import MIGRATIONS_DIR, ORDERED_WALK, QUERIES, Store, migrate, migration_files
from dispatcher.store.base import load_queries
from dispatcher.store.records import NewCommand

ROWS = int(os.environ.get("TRIGGER_ROWS", "20000"))
ROUNDS = int(os.environ.get("TRIGGER_ROUNDS", "3"))
BATCH = 2000
"""Commands a transaction inserts (``DISPATCHER_BATCH_MAX``'s default)."""

BEFORE_COMMIT = "e127037"
"""The last commit before migration 010: its ``queries.sql`` holds the statements with
their own ``INSERT INTO status_outbox`` (read from git, not copied here)."""
EXPIRE_BATCH = 5000
"""Commands one ``expire_due`` statement expires (the timer's batch)."""


def before_queries() -> dict[str, str]:
    """The named statements of :data:`BEFORE_COMMIT` (run from a git checkout)."""
    root = Path(__file__).resolve().parents[1]
    text = subprocess.run(
        ["git", "-C", str(root), "show", f"{BEFORE_COMMIT}:dispatcher/store/queries.sql"],
        check=True, capture_output=True, text=True).stdout
    return load_queries(text)

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


async def _expire(store: Store, sql: str | None) -> float:
    """Expire every command (all past their deadline), :data:`EXPIRE_BATCH` a statement,
    as the timer does: ``expire_due`` of ``queries.sql``, or ``sql`` (the old one)."""
    await store.pool.execute("UPDATE commands SET expires_at = now() - interval '1 second'")
    await store.pool.execute("VACUUM ANALYZE commands")
    started = time.perf_counter()
    while True:
        async with store.transaction() as tx:
            if sql is None:
                moved = len(await tx.expire_due(EXPIRE_BATCH))
            else:
                await tx.conn.execute(ORDERED_WALK)
                moved = len(await tx.conn.fetch(sql, EXPIRE_BATCH))
        if not moved:
            return time.perf_counter() - started


async def _round(store: Store, before: dict[str, str] | None) -> tuple[float, float, int]:
    await store.pool.execute("TRUNCATE commands, status_outbox, held_events")
    await store.pool.execute("CHECKPOINT")  # neither side pays the other's writes
    old = before or {}
    ingest_s = await _insert(store, old.get("insert_commands"), _commands(ROWS))
    expire_s = await _expire(store, old.get("expire_due"))
    events = await store.pool.fetchval("SELECT count(*) FROM status_outbox")
    return ingest_s, expire_s, int(events)


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
    old = before_queries()
    results: dict[str, list[tuple[float, float, int]]] = {"before": [], "after": []}
    try:
        for _ in range(ROUNDS):
            results["before"].append(await _round(before, old))
            results["after"].append(await _round(after, None))
    finally:
        await before.close()
        await after.close()
    for name, runs in results.items():
        ingest = statistics.median(r[0] for r in runs)
        expire = statistics.median(r[1] for r in runs)
        print(f"{name:6}: ingest {ROWS} in {ingest:.3f}s ({ROWS / ingest:,.0f}/s, median of "
              f"{[round(r[0], 3) for r in runs]}); expire them in {expire:.3f}s "
              f"({ROWS / expire:,.0f}/s, median of {[round(r[1], 3) for r in runs]}); "
              f"outbox rows {[r[2] for r in runs]} (two events a command)")
    assert QUERIES["insert_commands"] != old["insert_commands"]


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
