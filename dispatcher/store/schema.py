"""The migration runner: numbered SQL files applied forward only, under an advisory lock.

Its few statements (the lock, ``schema_migrations``) are written here, not in
``queries.sql``: they run on a bare connection before the schema exists (they create
the table they read), they are the runner's own bookkeeping rather than statements of
the service, and ``queries.sql`` holds only statements that run against a migrated
schema (``tests/integration/test_plans.py`` plans each of them on one).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import asyncpg

from dispatcher.exceptions import ConfigError, SchemaNotMigrated, StoreUnavailable
from dispatcher.store.boundary import TRANSIENT

MIGRATIONS_DIR = Path(str(resources.files("dispatcher").joinpath("migrations")))
"""The numbered SQL files, shipped inside the package (package data): a checkout, an
editable install and an installed wheel read the same files, and nothing is copied by hand."""
_LOCK_KEY = 0x646973706174  # "dispat"


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
    except TRANSIENT as exc:
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
    except TRANSIENT as exc:
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
