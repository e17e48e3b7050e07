"""The schema the migrations build is the one the code expects.

On a fresh database migrated from the package's files: PostgreSQL itself prepares every
named statement of ``queries.sql`` (so every table, column, function and type they use
exists, with types that fit); the partial indexes whose keys the statements repeat
("Index keys", ``queries.sql``) exist and carry their key; migrating again changes
nothing; every migration file has a number of its own; every statement that changes a
command's status writes its events (``dispatcher_emit_moved``, migration 011).
"""

from __future__ import annotations

import re
import secrets
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import pytest

from dispatcher.store import MIGRATIONS_DIR, QUERIES, migrate, migration_files
from tests.support.db import PgServer

MIGRATION_NAME = re.compile(r"^(\d+)_[a-z0-9_]+\.sql$")
INDEX_KEYS_MIGRATION = "002_index_keys.sql"
EXTRA_INDEX_KEYS = {"commands_removable": "greatest(finished_at, expires_at)",
                    "commands_push_queue": "push_attempts >= 0"}
"""Keyed indexes outside 002's table: retention's removal walk (009_retention.sql), the
push claim's queue (012_push_order.sql, with the key of the index it replaced)."""
REPLACED_INDEXES = {"commands_push_due"}
"""Indexes of 002's table a later migration dropped (012: commands_push_queue)."""


@dataclass(frozen=True)
class Migrated:
    """A fresh database and the versions its first migration applied."""

    dsn: str
    applied: list[int]


@pytest.fixture(scope="module")
async def migrated(pg_server: PgServer) -> Migrated:
    dsn = await pg_server.create_database(f"schema_{secrets.token_hex(4)}")
    return Migrated(dsn, await migrate(dsn))


@pytest.fixture
async def conn(migrated: Migrated) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(migrated.dsn)
    yield connection
    await connection.close()


def index_keys() -> dict[str, str]:
    """Index name -> key clause, from the table in 002_index_keys.sql's header (and 009)."""
    text = (MIGRATIONS_DIR / INDEX_KEYS_MIGRATION).read_text()
    rows = re.findall(r"^--\s+(commands_\w+)\s+(\S+ [>=]+ 0)\s", text, flags=re.MULTILINE)
    assert rows, f"no index table in {INDEX_KEYS_MIGRATION}"
    return {**{k: v for k, v in rows if k not in REPLACED_INDEXES}, **EXTRA_INDEX_KEYS}


def squeeze(sql: str) -> str:
    """Lower case without blanks or parentheses, to compare clauses as PostgreSQL prints them."""
    return re.sub(r"[\s()]", "", sql).lower()


def test_every_migration_file_has_a_number_of_its_own() -> None:
    names = sorted(p.name for p in MIGRATIONS_DIR.glob("*.sql"))
    assert names, "no migrations in the package"
    unnumbered = [n for n in names if not MIGRATION_NAME.match(n)]
    assert not unnumbered, f"migration files without a NNN_name.sql name: {unnumbered}"
    numbers = Counter(int(m.group(1)) for m in map(MIGRATION_NAME.match, names) if m)
    assert not [n for n, k in numbers.items() if k > 1], f"migration numbers used twice: {numbers}"
    files = migration_files()
    assert [p.name for _, _, p in files] == names, "a migration file the runner would skip"
    versions = [v for v, _, _ in files]
    assert versions == sorted(set(versions))


async def test_a_fresh_database_gets_every_migration_in_order(
        migrated: Migrated, conn: asyncpg.Connection) -> None:
    assert migrated.applied == [v for v, _, _ in migration_files()]
    rows = await conn.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
    assert [(r["version"], r["name"]) for r in rows] == [(v, n) for v, n, _ in migration_files()]


async def test_every_named_query_prepares_against_the_migrated_schema(
        conn: asyncpg.Connection) -> None:
    assert QUERIES, "no named queries"
    refused: dict[str, str] = {}
    for name, sql in QUERIES.items():
        try:
            await conn.prepare(sql)
        except asyncpg.PostgresError as exc:
            refused[name] = f"{type(exc).__name__}: {exc}"
    assert not refused, refused


async def test_the_indexes_the_statements_key_exist_with_their_key(
        conn: asyncpg.Connection) -> None:
    keys = index_keys()
    assert set(keys) >= {"commands_open_expires", "commands_push_queue", "commands_device_open",
                         "commands_parked", "commands_removable"}
    rows = await conn.fetch("SELECT indexname, indexdef FROM pg_indexes "
                            "WHERE schemaname = 'public' AND tablename = 'commands'")
    defs = {r["indexname"]: squeeze(r["indexdef"]) for r in rows}
    missing = sorted(set(keys) - set(defs))
    assert not missing, f"keyed indexes the migrations do not create: {missing}"
    keyless = {name: defs[name] for name, key in keys.items() if squeeze(key) not in defs[name]}
    assert not keyless, f"indexes without their key clause: {keyless}"
    statements = {name: squeeze(sql) for name, sql in QUERIES.items()}
    unused = [key for key in keys.values()
              if not any(squeeze(key) in sql for sql in statements.values())]
    assert not unused, f"index keys no statement repeats: {unused}"


MOVES_STATUS = re.compile(r"UPDATE commands c\s+SET status =", flags=re.IGNORECASE)
STATUS_MOVERS = {"apply_acks", "cancel_commands", "cancel_disenrolled", "end_campaign_commands",
                 "expire_due", "push_rejected", "queue_new_commands"}
"""The statements that change a status (a new one must join this list, and emit)."""


def test_every_statement_that_changes_a_status_writes_its_events() -> None:
    movers = {name for name, sql in QUERIES.items() if MOVES_STATUS.search(sql)}
    assert movers == STATUS_MOVERS
    for name in sorted(movers):
        sql = squeeze(QUERIES[name])
        call = "dispatcher_emit_movedarray_aggm.moved,array_aggm.previous"
        assert call in sql, f"{name} does not emit its moves"
        assert sql.rstrip(";").endswith("frommoved,emitted"), f"{name} does not join its call"


async def test_only_new_rows_reach_a_trigger_on_commands(conn: asyncpg.Connection) -> None:
    """A status change emits from its statement: no row trigger costs a call per row."""
    rows = await conn.fetch("SELECT tgname, tgtype FROM pg_trigger "
                            "WHERE tgrelid = 'commands'::regclass AND NOT tgisinternal")
    assert [r["tgname"] for r in rows] == ["commands_status_inserted"]
    row_level = 1  # TRIGGER_TYPE_ROW in pg_trigger.tgtype
    assert not rows[0]["tgtype"] & row_level


SCHEMA_QUERIES = {
    "columns": "SELECT table_name, column_name, data_type, is_nullable, column_default "
               "FROM information_schema.columns WHERE table_schema = 'public' "
               "ORDER BY table_name, ordinal_position",
    "indexes": "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' "
               "ORDER BY indexname",
    "constraints": "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) "
                   "FROM pg_constraint WHERE connamespace = 'public'::regnamespace "
                   "ORDER BY 1, 2",
    "functions": "SELECT p.proname, pg_get_functiondef(p.oid) FROM pg_proc p "
                 "WHERE p.pronamespace = 'public'::regnamespace AND p.prokind = 'f' "
                 "ORDER BY 1, 2",
    "options": "SELECT relname, reloptions::text FROM pg_class "
               "WHERE relnamespace = 'public'::regnamespace ORDER BY relname",
    "migrations": "SELECT version, name, applied_at FROM schema_migrations ORDER BY version",
}


async def schema(conn: asyncpg.Connection) -> dict[str, list[tuple[object, ...]]]:
    """Tables, columns, indexes, constraints, functions and table options of ``public``."""
    return {name: [tuple(r) for r in await conn.fetch(sql)]
            for name, sql in SCHEMA_QUERIES.items()}


async def test_migrating_twice_changes_nothing(migrated: Migrated,
                                               conn: asyncpg.Connection) -> None:
    before = await schema(conn)
    assert before["columns"], "the migrations created no table"
    assert await migrate(migrated.dsn) == []
    assert await schema(conn) == before
