"""PostgreSQL: the pool, the named queries of ``queries.sql`` and the migration runner.

PostgreSQL holds all state. Driver errors are wrapped at this boundary: a lost
connection or a server shutting down becomes :class:`StoreUnavailable` (retriable); a
data error or a violated constraint (the input cannot be stored) becomes
:class:`StoreRejected`; anything else (a fault of the code or the schema) propagates as
the driver raised it.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import asyncpg

from dispatcher.exceptions import ConfigError, SchemaNotMigrated, StoreRejected, StoreUnavailable

_TRANSIENT = (
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.ConnectionFailureError,
    asyncpg.exceptions.PostgresConnectionError,
    ConnectionError,
    OSError,
    TimeoutError,
)

_REJECTED = (
    asyncpg.exceptions.DataError,  # class 22: out of range, invalid text, NUL, bad JSON
    asyncpg.exceptions.IntegrityConstraintViolationError,  # class 23: constraints
    asyncpg.exceptions.ProgramLimitExceededError,  # class 54: e.g. an index row too large
)
"""PostgreSQL's errors that mean "this input cannot be stored" (:class:`StoreRejected`)."""


@contextmanager
def _boundary() -> Iterator[None]:
    """Wrap driver errors: transient ones as StoreUnavailable, data ones as StoreRejected."""
    try:
        yield
    except asyncpg.exceptions._base.DataError as exc:
        # the driver refused an argument before sending it (e.g. a string for an int):
        # this input, not the connection
        raise StoreRejected(f"{type(exc).__name__}: {exc}") from exc
    except asyncpg.exceptions.InterfaceError as exc:
        if "arguments for this query" in str(exc):
            raise  # a statement called with the wrong number of arguments: a bug, not an outage
        raise StoreUnavailable(str(exc) or type(exc).__name__) from exc
    except _TRANSIENT as exc:
        raise StoreUnavailable(str(exc) or type(exc).__name__) from exc
    except _REJECTED as exc:
        raise StoreRejected(f"{type(exc).__name__}: {exc}") from exc


MIGRATIONS_DIR = Path(str(resources.files("dispatcher").joinpath("migrations")))
"""The numbered SQL files, shipped inside the package (package data): a checkout, an
editable install and an installed wheel read the same files, and nothing is copied by hand."""
_LOCK_KEY = 0x646973706174  # "dispat"


SERVER_SETTINGS = {"application_name": "dispatcher"}
"""Session settings of the dispatcher's connections: no planner switches (API reads and
everything else plan freely). The hot statements name their partial index
(``queries.sql``, "Index keys") and the ordered walks among them scope their overrides to
their own transaction (:data:`ORDERED_WALK`), so no plan depends on fresh statistics."""


ORDERED_WALK = "SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off"
"""Planner overrides for :data:`WALKS` only, scoped to their transaction (``SET LOCAL``).

These statements walk an index in order and stop at their LIMIT. A bitmap or sequential
scan cannot stop early: it reads every matching row and sorts them, O(backlog) per call.
With an estimate of one row (a table never analyzed, or just vacuumed) the planner
picks one as often as not: on a fresh table the push claim chose a Bitmap Heap Scan
that read all 1,000 due rows to return 64 (``tests/integration/test_plans.py``). The
index keys (``queries.sql``) choose the index; this keeps the walk a walk.
"""
WALKS = frozenset({"claim_pushes", "expire_due", "take_outbox", "take_held_ready",
                   "take_held_overdue", "remove_finished"})


async def walk(conn: asyncpg.Connection, name: str, *args: Any) -> list[asyncpg.Record]:
    """Run one of :data:`WALKS` inside the caller's transaction."""
    await conn.execute(ORDERED_WALK)
    rows: list[asyncpg.Record] = await conn.fetch(QUERIES[name], *args)
    return rows


def load_queries(text: str) -> dict[str, str]:
    """Split a file of ``-- name: x`` blocks into {name: sql}."""
    queries: dict[str, str] = {}
    for block in re.split(r"^-- name: ", text, flags=re.MULTILINE)[1:]:
        name, _, body = block.partition("\n")
        queries[name.strip()] = body.strip().rstrip(";")
    return queries


QUERIES = load_queries(resources.files(__package__).joinpath("queries.sql").read_text())


def is_transient(exc: BaseException) -> bool:
    """Whether a database error may go away by retrying."""
    return isinstance(exc, _TRANSIENT)


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """No session reset on release: the dispatcher keeps no session state (its locks are
    transaction-scoped), and asyncpg's default reset costs a round trip per query."""


class Store:
    """The asyncpg pool and the named queries. ``Q`` maps a query name to its SQL."""

    Q = QUERIES

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @classmethod
    async def connect(cls, dsn: str, min_size: int = 2, max_size: int = 10) -> Store:
        """Open a pool; raise StoreUnavailable when the server cannot be reached."""
        try:
            pool = await asyncpg.create_pool(
                dsn,
                min_size=min_size,
                max_size=max_size,
                init=_init_connection,
                reset=_keep_session,
                server_settings=SERVER_SETTINGS,
                command_timeout=60,
                max_inactive_connection_lifetime=60,
            )
        except _TRANSIENT as exc:
            raise StoreUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc
        return cls(pool)

    async def close(self) -> None:
        """Close the pool, waiting briefly for connections in use."""
        await self.pool.close()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection inside a transaction; driver errors wrapped (:func:`_boundary`)."""
        with _boundary():
            async with self.pool.acquire() as conn, conn.transaction():
                yield conn

    async def fetch(self, name: str, *args: Any) -> list[asyncpg.Record]:
        """Run a named query in a transaction of its own (:data:`WALKS` as ordered walks)."""
        if name in WALKS:
            async with self.transaction() as conn:
                return await walk(conn, name, *args)
        with _boundary():
            rows: list[asyncpg.Record] = await self.pool.fetch(self.Q[name], *args)
        return rows

    async def execute(self, name: str, *args: Any) -> str:
        """Run a named statement outside an explicit transaction."""
        with _boundary():
            status: str = await self.pool.execute(self.Q[name], *args)
        return status

    async def ping(self) -> bool:
        """Whether the database answers and the schema is migrated."""
        try:
            async with self.pool.acquire(timeout=2) as conn:
                missing = await pending(conn)
        except (asyncpg.PostgresError, *_TRANSIENT):
            return False
        return not missing


def migration_files(directory: Path = MIGRATIONS_DIR) -> list[tuple[int, str, Path]]:
    """Numbered ``NNN_name.sql`` files in order."""
    found = []
    for path in sorted(directory.glob("*.sql")):
        number, _, name = path.stem.partition("_")
        if number.isdigit():
            found.append((int(number), name, path))
    return found


async def pending(conn: asyncpg.Connection, directory: Path = MIGRATIONS_DIR) -> list[int]:
    """Versions of the migration files not applied to the database (all when none is)."""
    wanted = [version for version, _, _ in migration_files(directory)]
    table = await conn.fetchval("SELECT to_regclass('schema_migrations')", timeout=5)
    if table is None:
        return wanted
    done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations",
                                                   timeout=5)}
    return [version for version in wanted if version not in done]


async def check_migrated(dsn: str, directory: Path = MIGRATIONS_DIR) -> None:
    """Raise :class:`SchemaNotMigrated` unless every migration is applied (no DDL needed)."""
    try:
        conn = await asyncpg.connect(dsn)
    except _TRANSIENT as exc:
        raise StoreUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc
    try:
        missing = await pending(conn, directory)
    finally:
        await conn.close()
    if missing:
        raise SchemaNotMigrated(
            f"the database lacks migrations {missing}: run `dispatcher migrate` with a role "
            "that may change the schema (DISPATCHER_AUTO_MIGRATE=false: `run` does not migrate)")


async def migrate(dsn: str, directory: Path = MIGRATIONS_DIR) -> list[int]:
    """Apply pending migrations under an advisory lock; return the versions applied.

    Safe to run concurrently: the second runner waits for the lock, then finds
    nothing left to do. Each migration runs in its own transaction.
    """
    try:
        conn = await asyncpg.connect(dsn)
    except _TRANSIENT as exc:
        raise StoreUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc
    applied: list[int] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        files = migration_files(directory)
        if not files:
            raise ConfigError(f"no migrations found in {directory}")
        for version, name, path in files:
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(path.read_text())
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
                )
            applied.append(version)
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    finally:
        await conn.close()
    return applied
