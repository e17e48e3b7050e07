"""After a quiet spell, a burst of commands must not be planned as if none were open.

A VACUUM while every command is finished records the open-command indexes as empty; the
planner then treats any of them as free to scan in full, and each push claim reads every
open command per candidate (650 ms instead of 1 ms with 50,000 open, measured by the
benchmark). The timer notices and refreshes the statistics.
"""

from __future__ import annotations

import asyncio

import asyncpg

from dispatcher.config import Settings
from dispatcher.expiry import Timer
from dispatcher.metrics import Metrics
from dispatcher.store import Store

INSERT = """
INSERT INTO commands (id, organization, aos_enterprise, aos_device, command, params, status,
                      duration_s, expires_at, created_at, updated_at, finished_at, next_push_at)
SELECT substr(md5(g::text || $2), 1, 24), 'org-planner', 'ent', substr(md5((g % 500)::text), 1, 24),
       'LOCK', '{}'::jsonb, $3, 600, now() + interval '1 hour', now(), now(),
       CASE WHEN $3 = 'DONE' THEN now() END, CASE WHEN $3 = 'PENDING' THEN now() END
FROM generate_series(1, $1) g
"""
OPEN_INDEX_ROWS = "SELECT reltuples FROM pg_class WHERE oid = 'commands_open_expires'::regclass"


async def test_a_burst_after_a_quiet_spell_gets_fresh_statistics(
    settings: Settings, db: asyncpg.Pool
) -> None:
    await db.execute(INSERT, 500, "finished", "DONE")
    await db.execute("VACUUM commands")  # the quiet spell: nothing open
    assert await db.fetchval(OPEN_INDEX_ROWS) == 0
    await db.execute(INSERT, 20_000, "burst", "PENDING")

    store = await Store.connect(settings.database_url)
    try:
        timer = Timer(settings, store, Metrics(), None, lambda fx: None)  # type: ignore[arg-type]
        refreshed = False
        for _ in range(50):  # the activity counters reach pg_stat within about a second
            if refreshed := await timer.refresh_planner_stats():
                break
            await asyncio.sleep(0.2)
        assert refreshed
        assert await db.fetchval(OPEN_INDEX_ROWS) > 10_000
        # once is enough: no second ANALYZE within the minute, whatever changes
        await db.execute(INSERT, 20_000, "more", "PENDING")
        await asyncio.sleep(1.5)
        assert not await timer.refresh_planner_stats()
    finally:
        await store.close()
