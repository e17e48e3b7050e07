"""PostgreSQL: the pool, one typed method per named query of ``queries.sql``, migrations.

PostgreSQL holds all state. Every statement of the service is a named block of
``queries.sql`` and has exactly one typed method (``commands.py``, ``pushes.py``,
``campaigns.py``) that
takes and returns frozen records (``records.py``). A method runs the same way on the
:class:`Store` (its own statement, or a transaction of its own for the ordered walks)
and on the :class:`Tx` that :meth:`Store.transaction` yields, which runs it inside the
caller's transaction::

    rows = await store.expire_due(5000)            # a statement of its own
    async with store.transaction() as tx:          # several, in one transaction
        moved = await tx.insert_commands(commands)
        await tx.wake_devices(devices)

Driver errors are wrapped at this boundary (``boundary.py``): a lost connection or a
server shutting down becomes :class:`StoreUnavailable` (retriable); a data error or a
violated constraint becomes :class:`StoreRejected`; anything else propagates as raised.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from typing import Any

import asyncpg

from dispatcher.exceptions import StoreUnavailable
from dispatcher.store.base import ORDERED_WALK, QUERIES, WALKS, load_queries
from dispatcher.store.boundary import TRANSIENT, boundary, is_transient
from dispatcher.store.campaigns import CampaignStatements
from dispatcher.store.commands import CommandStatements
from dispatcher.store.pushes import PushStatements
from dispatcher.store.schema import (
    MIGRATIONS_DIR,
    check_migrated,
    migrate,
    migration_files,
    pending,
)

_boundary = boundary  # the name the tests know

__all__ = [
    "MIGRATIONS_DIR", "ORDERED_WALK", "QUERIES", "SERVER_SETTINGS", "WALKS", "Store", "Tx",
    "check_migrated", "is_transient", "load_queries", "migrate", "migration_files", "pending",
]


SERVER_SETTINGS = {"application_name": "dispatcher"}
"""Session settings of the dispatcher's connections: no planner switches (API reads and
everything else plan freely). The hot statements name their partial index
(``queries.sql``, "Index keys") and the ordered walks among them scope their overrides to
their own transaction (:data:`ORDERED_WALK`), so no plan depends on fresh statistics."""


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """No session reset on release: the dispatcher keeps no session state (its locks are
    transaction-scoped), and asyncpg's default reset costs a round trip per query."""


class Tx(CommandStatements, PushStatements, CampaignStatements):
    """The typed statements, run on the connection of one open transaction."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def _rows(self, name: str, *args: Any) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await self.conn.fetch(QUERIES[name], *args)
        return rows

    async def _status(self, name: str, *args: Any) -> str:
        status: str = await self.conn.execute(QUERIES[name], *args)
        return status

    def _transaction(self) -> AbstractAsyncContextManager[Tx]:
        return nullcontext(self)

    async def _walk(self, name: str, *args: Any) -> list[asyncpg.Record]:
        await self.conn.execute(ORDERED_WALK)
        return await self._rows(name, *args)


class Store(CommandStatements, PushStatements, CampaignStatements):
    """The asyncpg pool; the typed statements each run on their own."""

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
        except TRANSIENT as exc:
            raise StoreUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc
        return cls(pool)

    async def close(self) -> None:
        """Close the pool, waiting briefly for connections in use."""
        await self.pool.close()

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection, driver errors wrapped (:func:`boundary`). One that a server
        going away left mid-operation ("another operation is in progress") is terminated
        rather than handed back: the pool's reset would not notice, and every later use
        of it would fail the same way."""
        with boundary():
            async with self.pool.acquire() as conn:
                try:
                    yield conn
                except asyncpg.exceptions._base.InternalClientError:
                    conn.terminate()
                    raise

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Tx]:
        """A :class:`Tx` inside a transaction; driver errors wrapped (:func:`boundary`)."""
        async with self._connection() as conn, conn.transaction():
            yield Tx(conn)

    def _transaction(self) -> AbstractAsyncContextManager[Tx]:
        return self.transaction()

    async def _rows(self, name: str, *args: Any) -> list[asyncpg.Record]:
        async with self._connection() as conn:
            rows: list[asyncpg.Record] = await conn.fetch(QUERIES[name], *args)
        return rows

    async def _status(self, name: str, *args: Any) -> str:
        async with self._connection() as conn:
            status: str = await conn.execute(QUERIES[name], *args)
        return status

    async def _walk(self, name: str, *args: Any) -> list[asyncpg.Record]:
        async with self.transaction() as tx:
            return await tx._walk(name, *args)

    async def ping(self) -> bool:
        """Whether the database answers and the schema is migrated."""
        try:
            async with self.pool.acquire(timeout=2) as conn:
                missing = await pending(conn)
        except (asyncpg.PostgresError, *TRANSIENT):
            return False
        return not missing
