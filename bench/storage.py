"""Retention designs measured side by side: batched DELETE against dropped partitions.

``python -m bench.storage`` (``make bench-storage``; ``STORAGE_ROWS``, ``STORAGE_RATE``,
``STORAGE_WINDOW_S`` to change the run). Each design takes the same steady churn on the
real schema of an embedded PostgreSQL: finished commands written at a fixed rate in
batches of 1,000 (one statement each, as ingest writes them), removed once older than a
short window, while a probe measures the write's latency. Printed per design: rows
written and removed, write p50/p99 (and while a removal ran), the table's size and dead
rows sampled every 10 s (first and last steady-state sample, the ratio), and the
removal's cost. ``docs/storage.md`` holds the figures and the choice.

- ``delete``: the service's own removal (:class:`dispatcher.retention.Retention`, the
  ``remove_finished`` statement and migration 009, which also tunes the table's
  autovacuum); ``default``: the same with PostgreSQL's default autovacuum.
- ``partitions``: a copy of ``commands`` partitioned by ``finished_at`` in buckets of a
  tenth of the window; whole partitions older than the window are dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from dispatcher.metrics import Metrics
from dispatcher.retention import Retention
from dispatcher.store import Store, migrate

BATCH = 1000
INSERT = """
INSERT INTO {table} (id, organization, aos_enterprise, aos_device, command, params, status,
                     results, duration_s, expires_at, created_at, updated_at, finished_at)
SELECT md5(g::text || $2), 'org', 'ent', substr(md5((g % 100000)::text), 1, 24), 'LOCK',
       '{{"message": "storage bench"}}'::jsonb, 'DONE',
       '[{{"status": "DONE", "at": "2026-12-02T00:00:00Z", "data": {{}}}}]'::jsonb,
       600, now(), now(), now(), now()
FROM generate_series($1::bigint, $1::bigint + $3 - 1) g
"""
SIZE = ("SELECT coalesce(sum(pg_total_relation_size(oid)), 0)::bigint AS bytes, "
        "coalesce((SELECT sum(n_dead_tup) FROM pg_stat_user_tables "
        "WHERE relname LIKE $1), 0)::bigint AS dead "
        "FROM pg_class WHERE relkind = 'r' AND relname LIKE $1")


@dataclass
class Run:
    design: str
    written: int = 0
    removed: int = 0
    write_ms: list[float] = field(default_factory=list)
    write_ms_removing: list[float] = field(default_factory=list)
    sizes: list[tuple[float, int, int]] = field(default_factory=list)
    remove_s: float = 0.0
    removing: bool = False
    seconds: float = 0.0

    def report(self, window_s: float) -> str:
        seconds = self.seconds
        steady = [s for s in self.sizes if s[0] >= 2 * window_s] or self.sizes
        first, last = steady[0], steady[-1]
        p = statistics.quantiles(self.write_ms, n=100)
        during = self.write_ms_removing
        dp = statistics.quantiles(during, n=100) if len(during) >= 2 else [float("nan")] * 99
        return (f"{self.design}: {self.written:,} written in {seconds:.0f}s "
                f"({self.written / seconds:,.0f}/s), {self.removed:,} removed "
                f"({self.remove_s:.1f}s spent removing, "
                f"{self.removed / max(self.remove_s, 1e-9):,.0f} rows/s); write of {BATCH} "
                f"p50 {p[49]:.1f} ms p99 {p[98]:.1f} ms, while removing p99 {dp[98]:.1f} ms "
                f"({len(during)} writes); size first/last steady {first[1] / 2**20:.0f}/"
                f"{last[1] / 2**20:.0f} MB (x{last[1] / first[1]:.2f}), max "
                f"{max(s[1] for s in steady) / 2**20:.0f} MB; dead rows last {last[2]:,}; "
                f"MB by 30 s: {[round(s[1] / 2**20) for s in self.sizes[::3]]}")


async def churn(dsn: str, run: Run, table: str, rows: int, rate: int,
                remove: asyncio.Task[None] | None) -> None:
    """Write ``rows`` finished commands at ``rate`` a second; sample the table's size."""
    conn = await asyncpg.connect(dsn)
    # the table's churn alone, as measured before migration 010: its status trigger
    # would add an event per row to status_outbox, which no relay drains here
    await conn.execute("SET session_replication_role = replica")
    salt = secrets.token_hex(4)
    started = time.monotonic()
    next_sample = 0.0
    try:
        for i in range(0, rows, BATCH):
            due = started + i / rate
            if (delay := due - time.monotonic()) > 0:
                await asyncio.sleep(delay)
            t0 = time.perf_counter()
            await conn.execute(INSERT.format(table=table), i, salt, BATCH)
            ms = (time.perf_counter() - t0) * 1000
            run.write_ms.append(ms)
            if run.removing:
                run.write_ms_removing.append(ms)
            run.written += BATCH
            if (now := time.monotonic() - started) >= next_sample:
                row = await conn.fetchrow(SIZE, table + "%")
                run.sizes.append((now, row["bytes"], row["dead"]))
                next_sample += 10
    finally:
        await conn.close()
        if remove is not None:
            remove.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await remove
    run.seconds = time.monotonic() - started


DEFAULTS = ("ALTER TABLE commands RESET (autovacuum_vacuum_scale_factor, "
            "autovacuum_vacuum_threshold, autovacuum_vacuum_cost_limit)")


async def delete_default_design(dsn: str, rows: int, rate: int, window_s: float) -> Run:
    """The same removal with PostgreSQL's default autovacuum (migration 009 tunes it)."""
    conn = await asyncpg.connect(dsn)
    await conn.execute(DEFAULTS)
    await conn.close()
    return await delete_design(dsn, rows, rate, window_s, "delete, default autovacuum")


async def delete_design(dsn: str, rows: int, rate: int, window_s: float,
                        label: str = "delete (the service's, migration 009)") -> Run:
    run = Run(label)
    store = await Store.connect(dsn, 1, 2)
    retention = Retention(window_s, store, Metrics())

    async def remover() -> None:
        while True:
            await asyncio.sleep(5)
            run.removing = True
            t0 = time.perf_counter()
            run.removed += await retention.purge()
            run.remove_s += time.perf_counter() - t0
            run.removing = False

    try:
        await churn(dsn, run, "commands", rows, rate, asyncio.create_task(remover()))
    finally:
        await store.close()
    return run


async def partition_design(dsn: str, rows: int, rate: int, window_s: float) -> Run:
    run = Run("partitions (dropped whole)")
    bucket = window_s / 10
    conn = await asyncpg.connect(dsn)
    await conn.execute("CREATE TABLE pcommands (LIKE commands INCLUDING DEFAULTS) "
                       "PARTITION BY RANGE (finished_at)")
    await conn.execute("ALTER TABLE pcommands ALTER COLUMN seq DROP NOT NULL")
    # the id can only be unique per partition (a unique key must hold the partition key)
    await conn.execute("CREATE INDEX ON pcommands (id)")
    await conn.execute("CREATE INDEX ON pcommands (aos_device, created_at DESC, id)")
    parts: list[tuple[float, str]] = []

    async def ensure_parts() -> None:
        now = time.time()
        start = (parts[-1][0] + bucket) if parts else now - now % bucket
        while start < now + 3 * bucket:
            name = f"pcommands_{int(start * 1000)}"
            await conn.execute(
                f"CREATE TABLE {name} PARTITION OF pcommands FOR VALUES FROM "
                f"(to_timestamp({start})) TO (to_timestamp({start + bucket}))")
            parts.append((start, name))
            start += bucket

    async def remover() -> None:
        while True:
            await ensure_parts()
            await asyncio.sleep(min(5.0, bucket))
            run.removing = True
            t0 = time.perf_counter()
            while parts and parts[0][0] + bucket < time.time() - window_s:
                _, name = parts.pop(0)
                run.removed += await conn.fetchval(f"SELECT count(*) FROM {name}")
                await conn.execute(f"DROP TABLE {name}")
            run.remove_s += time.perf_counter() - t0
            run.removing = False

    await ensure_parts()
    try:
        await churn(dsn, run, "pcommands", rows, rate, asyncio.create_task(remover()))
    finally:
        await conn.close()
    return run


async def main() -> None:
    from dispatcher_dev.devstack import EmbeddedPostgres

    rows = int(os.environ.get("STORAGE_ROWS", "2000000"))
    rate = int(os.environ.get("STORAGE_RATE", "10000"))
    window_s = float(os.environ.get("STORAGE_WINDOW_S", "30"))
    print(f"storage: {rows:,} finished commands per design at {rate:,}/s, "
          f"window {window_s:g}s", flush=True)
    with EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="dispatcher-storage-")) / "pg") as pg:
        admin = pg.start()
        designs = {"default": delete_default_design, "delete": delete_design,
                   "partitions": partition_design}
        chosen = os.environ.get("STORAGE_DESIGNS", "default,delete,partitions").split(",")
        for name, design in ((n, designs[n]) for n in chosen):
            conn = await asyncpg.connect(admin)
            await conn.execute(f"CREATE DATABASE storage_{name}")
            await conn.close()
            dsn = admin.rpartition("/")[0] + f"/storage_{name}"
            await migrate(dsn)
            run = await design(dsn, rows, rate, window_s)
            print(run.report(window_s), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
