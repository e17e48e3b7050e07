"""The hot statements' plans do not depend on fresh statistics (the 30-second push stall).

The state the benchmark left before it measured a LOCK waiting 30 s: tens of thousands
of commands expired at once by the timer's own statement, then VACUUM ANALYZE (so the
planner believes nothing is open and every partial index is empty), then a burst:
commands parked for devices without a token, commands due for a push, overdue ones.
Each hot statement is run under EXPLAIN ANALYZE in a rolled-back transaction, once with
those stale statistics and once after a fresh ANALYZE. A user would notice any scan of
the whole table or of every open command as a stall, so each plan must read
``commands`` only through the statement's own index (``migrations/002_index_keys.sql``)
or the primary key, never by a sequential scan, and each probe must stop within its
LIMIT instead of reading every open command. Then a new command is pushed promptly by
the running service in the same state.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

from dispatcher.config import Settings
from dispatcher.runtime import Runtime
from dispatcher.store import ORDERED_WALK, QUERIES, SERVER_SETTINGS, WALKS, migrate
from dispatcher_dev.fakepushy import FakePushy
from tests.support.db import PgServer
from tests.support.events import command_event, device_event, hex24
from tests.support.kafka import Kafka
from tests.support.wait import until

EXPIRED = 30_000
PARKED = 3_000
DUE = 300
OVERDUE = 2_000
PROBE_MAX_ROWS = 100  # rows an ordered, limited probe may read; the open set is 5,300

BULK = """
INSERT INTO commands (id, organization, aos_enterprise, aos_device, command, params, status,
                      duration_s, expires_at, created_at, updated_at, next_push_at)
SELECT substr(md5(g::text || $2), 1, 24), 'org-plans', 'ent',
       substr(md5((g % $3)::text || $2 || 'dev'), 1, 24), 'LOCK', '{}'::jsonb, 'PENDING',
       600, now() + $4 * interval '1 second', now() - interval '1 hour',
       now() - interval '1 hour', CASE WHEN $5 THEN now() END
FROM generate_series(1, $1) g
"""

# statement -> (arguments, indexes of commands it may read, whether it is a bounded probe)
HOT: dict[str, tuple[tuple[Any, ...], set[str], bool]] = {
    "claim_pushes": ((64, 30.0, ["", "", ""], None, None, None),
                     {"commands_push_queue", "commands_device_open"}, True),
    "expire_due": ((5000,), {"commands_open_expires"}, False),
    "queue_new_commands": ((["SOME"], ["LOCK"], ["LOCK"]), {"commands_device_open"}, True),
    "wake_devices": ((["DEVICE"],), {"commands_device_open"}, True),
    "push_accepted": (("SOME", "p-1", None, 0.0, 1, 0), {"commands_device_open"}, True),
    "push_accepted_many": ((["SOME"], ["p-1"], [None], 0.0, 1, [0]),
                           {"commands_device_open"}, True),
    "push_rejected": (("SOME", "PUSH_REJECTED", "x", 0), {"commands_device_open"}, True),
    "push_retry": (("SOME", 1.0, 0), set(), True),
    "push_recovered": ((), {"commands_push_queue"}, False),
    "cancel_commands": ((["SOME"], ["someone"]), set(), True),
    "cancel_disenrolled": ((["DEVICE"],), {"commands_device_open"}, True),
    "wake_parked": ((), {"commands_parked"}, False),
    "open_gauges": ((), {"commands_open_expires"}, False),
    "remove_finished": ((3600.0, 5000), {"commands_removable"}, True),
}


def scans(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every plan node reading ``commands`` or the outbox (index names from index scans)."""
    if (node.get("Relation Name") in ("commands", "status_outbox")
            or node.get("Node Type") == "Bitmap Index Scan"):
        yield node
    for child in node.get("Plans", []):
        yield from scans(child)


@pytest.fixture(scope="module")
async def bench_state(db: asyncpg.Pool) -> dict[str, str]:
    """The benchmark's state after its mass expiry, vacuumed, then a burst (stale stats)."""
    async with db.acquire() as conn:
        await conn.execute("ALTER TABLE commands SET (autovacuum_enabled = off)")
        await conn.execute(BULK, EXPIRED, "expired", EXPIRED, -60, False)
        while await conn.fetch(QUERIES["expire_due"], 5000):
            pass
        await conn.execute("DELETE FROM status_outbox")
        await conn.execute("VACUUM ANALYZE commands")
        await conn.execute(BULK, PARKED, "parked", PARKED // 3, 600, False)
        await conn.execute(BULK, DUE, "due", DUE, 600, True)
        await conn.execute(BULK, OVERDUE, "overdue", OVERDUE, -60, False)
        await conn.execute("""INSERT INTO devices SELECT aos_device, 'org-plans', 'ent', NULL,
                                  'tok-' || aos_device, 'ACTIVE', now()
                              FROM commands WHERE next_push_at IS NOT NULL""")
        some = await conn.fetchval("SELECT id FROM commands WHERE next_push_at IS NOT NULL "
                                   "ORDER BY id LIMIT 1")
        device = await conn.fetchval("SELECT aos_device FROM commands WHERE id = $1", some)
        open_index = await conn.fetchval(
            "SELECT reltuples FROM pg_class WHERE relname = 'commands_open_expires'")
    assert open_index == 0, "the state must leave the planner believing nothing is open"
    return {"SOME": some, "DEVICE": device}


NESTED_PLANS = ["LOAD 'auto_explain'", "SET LOCAL auto_explain.log_min_duration = 0",
                "SET LOCAL auto_explain.log_analyze = on",
                "SET LOCAL auto_explain.log_nested_statements = on",
                "SET LOCAL auto_explain.log_format = json", "SET LOCAL client_min_messages = log"]
"""The plans of the statements a function runs (the claim's dispatcher_due_pushes), as
auto_explain reports them to the client: EXPLAIN shows a function as one node."""


async def plan_of(conn: asyncpg.Connection, name: str, args: tuple[Any, ...]) -> dict[str, Any]:
    """The statement's plan, with the plans of the statements its functions ran as
    children (``Nested Plans``)."""
    nested: list[dict[str, Any]] = []

    def heard(_: Any, message: Any) -> None:
        text = getattr(message, "message", "")
        if "plan:" in text:
            plan = json.loads(text.split("plan:", 1)[1])
            if "commands" in plan.get("Query Text", "") and "pg_catalog" not in text:
                nested.append(plan.get("Plan", plan))

    tr = conn.transaction()
    await tr.start()
    conn.add_log_listener(heard)
    try:
        if name in WALKS:  # as the service runs them
            await conn.execute(ORDERED_WALK)
        if "dispatcher_due_pushes" in QUERIES[name]:
            for line in NESTED_PLANS:
                await conn.execute(line)
        raw = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {QUERIES[name]}", *args)
    finally:
        conn.remove_log_listener(heard)
        await tr.rollback()
    plan: dict[str, Any] = json.loads(raw)[0]["Plan"]
    plan.setdefault("Plans", []).extend(nested)
    return plan


@pytest.mark.parametrize("statistics", ["stale", "fresh"])
async def test_hot_statements_read_only_their_own_index_within_their_limit(
        settings: Settings, bench_state: dict[str, str], statistics: str) -> None:
    # a session as the dispatcher opens them
    conn = await asyncpg.connect(settings.database_url, server_settings=SERVER_SETTINGS)
    try:
        if statistics == "fresh":
            await conn.execute("ANALYZE commands")
        problems = []
        for name, (template, allowed, probe) in HOT.items():
            args = tuple(_fill(a, bench_state) for a in template)
            nodes = list(scans(await plan_of(conn, name, args)))
            if name == "claim_pushes" and not any(
                    n.get("Index Name") == "commands_push_queue" for n in nodes):
                problems.append("claim_pushes: its queue walk was not seen (auto_explain)")
            for node in nodes:
                kind, index = node["Node Type"], node.get("Index Name")
                read = node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0)
                if kind == "Seq Scan":
                    problems.append(f"{name}: a sequential scan of commands")
                elif index is not None and index not in allowed | {"commands_pkey"}:
                    problems.append(f"{name}: reads {index}")
                elif probe and index != "commands_pkey" and read > PROBE_MAX_ROWS:
                    problems.append(f"{name}: {kind} on {index} read {read} rows per loop")
    finally:
        await conn.close()
    assert not problems, f"{statistics} statistics: " + "; ".join(problems)


async def test_on_a_table_never_analyzed_the_walks_stop_at_their_limit(
        pg_server: PgServer) -> None:
    """A new database (or one restored from a dump): no statistics at all. With an
    estimate of one row, the planner took a bitmap scan for the claim and read every due
    row to return 64; the walks' own overrides keep them ordered walks."""
    dsn = await pg_server.create_database(f"t_plans_fresh_{secrets.token_hex(3)}")
    await migrate(dsn)
    conn = await asyncpg.connect(dsn, server_settings=SERVER_SETTINGS)
    try:
        await conn.execute("ALTER TABLE commands SET (autovacuum_enabled = off)")
        await conn.execute(BULK, 2_000, "due", 2_000, 600, True)
        await conn.execute(BULK, 2_000, "overdue", 2_000, -60, False)
        await conn.execute("INSERT INTO status_outbox (command_id, aos_device, payload) "
                           "SELECT id, aos_device, '{}' FROM commands")
        problems = []
        for name, args, limit in [("claim_pushes", (64, 30.0, ["", "", ""], None, None, None), 64),
                                  ("expire_due", (100,), 100), ("take_outbox", (100,), 100)]:
            for node in scans(await plan_of(conn, name, args)):
                read = node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0)
                if node["Node Type"] in ("Seq Scan", "Bitmap Heap Scan", "Bitmap Index Scan"):
                    problems.append(f"{name}: {node['Node Type']} reading {read} rows")
                elif node.get("Index Name") != "commands_pkey" and read > 2 * limit:
                    problems.append(f"{name}: {node.get('Index Name')} read {read} rows")
        assert not problems, "; ".join(problems)
    finally:
        await conn.close()


def _fill(value: Any, state: dict[str, str]) -> Any:
    if isinstance(value, list):
        return [_fill(v, state) for v in value]
    return state.get(value, value) if isinstance(value, str) else value


async def test_a_new_command_is_pushed_promptly_in_that_state(
        bench_state: dict[str, str], service: Runtime, kafka: Kafka,
        pushy: FakePushy) -> None:
    device = hex24()
    await kafka.send("devices", device_event(device))
    lock = command_event(device, command="LOCK")
    await kafka.send("commands.created", lock)

    async def pushed() -> bool:
        return any(r.data.get("commandId") == lock["id"] for r in pushy.accepted)

    await until(pushed, timeout=15, what="the LOCK's push")
