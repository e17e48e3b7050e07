"""Test databases: where they are created, and how."""

from __future__ import annotations

import asyncpg


def dsn_for(admin_dsn: str, name: str) -> str:
    """The DSN of database ``name`` on the server of ``admin_dsn``."""
    base, _, _ = admin_dsn.rpartition("/")
    return f"{base}/{name}"


async def create_database(admin_dsn: str, name: str) -> str:
    """Create database ``name`` on the server of ``admin_dsn``; return its DSN."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return dsn_for(admin_dsn, name)


class PgServer:
    """Where test databases are created."""

    def __init__(self, admin_dsn: str, embedded: object | None = None) -> None:
        self.admin_dsn = admin_dsn
        self.embedded = embedded

    def dsn_for(self, name: str) -> str:
        return dsn_for(self.admin_dsn, name)

    async def create_database(self, name: str) -> str:
        return await create_database(self.admin_dsn, name)


async def statuses(db: asyncpg.Connection, ids: list[str]) -> dict[str, str]:
    """The stored status of each of these commands (those stored)."""
    rows = await db.fetch("SELECT id, status FROM commands WHERE id = ANY($1)", ids)
    return {r["id"]: r["status"] for r in rows}
