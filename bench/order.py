"""`make bench` rows of the push order (README "Push order"): how long a stolen phone's
LOCK waits while another organization's backlog of ``low`` commands drains at the push
ceiling, and what a claim costs when 10,000 organizations hold due pushes.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time

import aiohttp
import asyncpg

from bench.harness import (
    ENT,
    PUSHY_KEY,
    Harness,
    Result,
    command,
    device_event,
    hexid,
    percentile,
)

BACKLOG_ORG = "0000000000000000000000bb"
BACKLOG = """
INSERT INTO devices (aos_device, organization, aos_enterprise, push_token, state, updated_at)
SELECT substr(md5(g::text || $2 || 'dev'), 1, 24), $3, $4,
       'tok-' || substr(md5(g::text || $2 || 'dev'), 1, 24), 'ACTIVE', now()
FROM generate_series(1, $1) g;
"""
BACKLOG_COMMANDS = """
INSERT INTO commands (id, organization, aos_enterprise, aos_device, command, params, status,
                      duration_s, expires_at, created_at, updated_at, next_push_at, priority,
                      push_rank)
SELECT substr(md5(g::text || $2 || 'cmd'), 1, 24), $3, $4,
       substr(md5(g::text || $2 || 'dev'), 1, 24), 'REBOOT', '{}'::jsonb, 'PENDING', 3600,
       now() + interval '1 hour', now(), now(), now(), 'low', 2
FROM generate_series(1, $1) g;
"""
"""A campaign-sized backlog of ``low`` REBOOTs, one per device, all due at once."""
LOCKS_PER_S, LOCK_SECONDS = 20, 10
CLAIMS, CLAIM_SIZE = 60, 64


async def lock_under_backlog(h: Harness, backlog: int) -> list[Result]:
    """p99 created -> pushed of ``high`` LOCKs (20/s for 10 s), first with nothing else
    to push, then while ``backlog`` ``low`` commands of another organization drain as fast
    as the service goes (0 ms provider, the default 64 requests in flight: the process and
    the machine are saturated, the LOCK shares them)."""
    dsn, prefix = await h.fresh("order")
    url, fake = await h.start_fake(0.0)
    devs = [hexid(d, "odev" + prefix) for d in range(2 * LOCKS_PER_S * LOCK_SECONDS)]
    await h.produce(prefix + "devices", [device_event(d) for d in devs], "aosDevice")
    svc = h.spawn(dsn, prefix, DISPATCHER_PUSH_PROVIDER="pushy",
                  DISPATCHER_PUSHY_API_URL=url, DISPATCHER_PUSHY_API_KEY=PUSHY_KEY)
    try:
        await h.ready(svc)
        await h._warm_up(prefix, devs[0], url)
        idle = await _locks(h, url, prefix, devs[::2], "idle")
        conn = await asyncpg.connect(dsn)
        try:
            async with conn.transaction():  # the whole backlog due at once
                await conn.execute("SET LOCAL session_replication_role = replica")
                await conn.execute(BACKLOG, backlog, prefix, BACKLOG_ORG, ENT)
                await conn.execute(BACKLOG_COMMANDS, backlog, prefix, BACKLOG_ORG, ENT)
            await asyncio.sleep(1.0)  # draining at the ceiling
            before, started = (await h.fake_get(url, "stats"))["accepted"], time.monotonic()
            loaded = await _locks(h, url, prefix, devs[1::2], "loaded")
            drained = (await h.fake_get(url, "stats"))["accepted"] - before - len(loaded)
            rate = drained / (time.monotonic() - started)
            left = await conn.fetchval(
                "SELECT count(*) FROM commands WHERE organization = $1 AND sent_at IS NULL",
                BACKLOG_ORG)
        finally:
            await conn.close()
    finally:
        await h.stop(svc)
        fake.terminate()
        fake.wait()
    idle_p99, loaded_p99 = percentile(idle, 0.99), percentile(loaded, 0.99)
    return [
        Result("high LOCK p99, idle", idle_p99, "ms",
               note=f"{len(idle)} LOCKs at {LOCKS_PER_S}/s, nothing else to push"),
        Result(f"high LOCK p99, {backlog:,} low draining", loaded_p99, "ms", idle_p99 + 50,
               "max", note=f"backlog of another organization drained at {rate:,.0f} push/s "
                           f"meanwhile, {left:,} still unsent after; goal: idle p99 + 50 ms"),
    ]


async def _locks(h: Harness, url: str, prefix: str, devs: list[str], tag: str) -> list[float]:
    """Send LOCKs at LOCKS_PER_S for LOCK_SECONDS; their created -> pushed times in ms."""
    assert h._producer is not None
    sent: dict[str, float] = {}
    start = time.monotonic()
    for i in range(LOCKS_PER_S * LOCK_SECONDS):
        delay = start + i / LOCKS_PER_S - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        event = command(i, devs[i % len(devs)], tag + prefix, kind="LOCK")  # high
        sent[event["id"]] = time.time()
        await h._producer.send(prefix + "commands.created", json.dumps(event).encode(),
                               key=event["aosDevice"].encode())
    await h._producer.flush()
    arrived: dict[str, float] = {}
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline and len(arrived) < len(sent):
            async with http.post(f"{url}/_arrivals", json=list(sent)) as r:
                arrived = await r.json()
            await asyncio.sleep(0.2)
    return [(arrived[c] - sent[c]) * 1000 for c in sent if c in arrived]


CLAIM_ROWS = """
INSERT INTO devices (aos_device, organization, aos_enterprise, push_token, state, updated_at)
SELECT substr(md5(g::text || 'cdev'), 1, 24), lpad(to_hex(g % $2), 24, '0'), $3,
       'tok-' || g, 'ACTIVE', now()
FROM generate_series(1, $1) g;
INSERT INTO commands (id, organization, aos_enterprise, aos_device, command, params, status,
                      duration_s, expires_at, created_at, updated_at, next_push_at, priority,
                      push_rank)
SELECT substr(md5(g::text || 'ccmd'), 1, 24), lpad(to_hex(g % $2), 24, '0'), $3,
       substr(md5(g::text || 'cdev'), 1, 24), 'REBOOT', '{}'::jsonb, 'PENDING', 3600,
       now() + interval '1 hour', now(), now(), now(), 'normal', 1
FROM generate_series(1, $1) g;
"""


async def claim_cost(h: Harness, organizations: int = 10_000, per_org: int = 3) -> list[Result]:
    """Median time of a claim of 64 (the service's own ``claim_pushes``, round-robin
    cursors carried from claim to claim) with the same due pushes held by one
    organization, then by ``organizations``."""
    from dispatcher.push.pusher import next_cursors
    from dispatcher.store import Store
    from dispatcher.store.records import ClaimOrder

    rows = organizations * per_org
    medians: dict[int, float] = {}
    for orgs in (1, organizations):
        dsn, _ = await h.fresh(f"claims{orgs}")
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("SET session_replication_role = replica")
            for statement in CLAIM_ROWS.strip().split(";\n"):
                await conn.execute(statement.rstrip(";"), rows, orgs, ENT)
            await conn.execute("VACUUM ANALYZE commands")
        finally:
            await conn.close()
        store = await Store.connect(dsn)
        try:
            cursors, took = ("", "", ""), []
            for _ in range(CLAIMS):
                started = time.perf_counter()
                claimed = await store.claim_pushes(CLAIM_SIZE, 30.0, ClaimOrder(cursors))
                took.append((time.perf_counter() - started) * 1000)
                cursors = next_cursors(cursors, claimed)
        finally:
            await store.close()
        medians[orgs] = statistics.median(took)
    many, one = medians[organizations], medians[1]
    return [Result(f"claim of {CLAIM_SIZE}, {organizations:,} orgs with due pushes", many, "ms",
                   20, "max", note=f"{rows:,} due; the same held by 1 organization: "
                                   f"{one:.1f} ms (x{many / one:.1f})")]
