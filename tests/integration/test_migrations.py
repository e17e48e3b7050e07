"""Migrations ship inside the package; DISPATCHER_AUTO_MIGRATE=false only checks them.

The service's runtime role then needs no DDL rights: a role that may only read and write
the tables starts against a migrated database and is refused, with a clear message,
against one that lacks a migration.
"""

from __future__ import annotations

import dataclasses
import secrets
from pathlib import Path

import asyncpg
import pytest

import dispatcher
from dispatcher.app import connect
from dispatcher.config import Settings
from dispatcher.exceptions import SchemaNotMigrated
from dispatcher.metrics import Metrics
from dispatcher.runtime import Runtime
from dispatcher.secretbox import SecretBox, generate_keys
from dispatcher.store import MIGRATIONS_DIR, check_migrated, migrate, migration_files, pending
from tests.support.db import PgServer

RUNTIME_GRANTS = """
GRANT USAGE ON SCHEMA public TO {role};
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role};
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role};
"""
"""What deploy/README.md tells an operator to grant the runtime role (no CREATE, no owner)."""


def test_migrations_are_package_data() -> None:
    package = Path(dispatcher.__file__).resolve().parent
    assert MIGRATIONS_DIR.resolve() == package / "migrations"
    assert migration_files(), "no migrations in the package"
    assert not (package.parent / "migrations").exists(), "one place defines the migrations"


async def _empty_database(pg_server: PgServer) -> str:
    return await pg_server.create_database(f"mig_{secrets.token_hex(4)}")


async def test_run_without_auto_migrate_refuses_an_unmigrated_database(
        pg_server: PgServer, settings: Settings) -> None:
    dsn = await _empty_database(pg_server)
    with pytest.raises(SchemaNotMigrated, match="dispatcher migrate"):
        await check_migrated(dsn)
    rt = Runtime(dataclasses.replace(settings, database_url=dsn, auto_migrate=False),
                 Metrics(), SecretBox(generate_keys()))
    with pytest.raises(SchemaNotMigrated, match=r"lacks migrations \[1"):
        await connect(rt)
    assert rt.store is None
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT to_regclass('commands')") is None, "it migrated"
    finally:
        await conn.close()


async def test_a_role_without_ddl_rights_runs_a_migrated_database(
        pg_server: PgServer, settings: Settings) -> None:
    dsn = await _empty_database(pg_server)
    assert await migrate(dsn) == [v for v, _, _ in migration_files()]
    role = f"rt_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"CREATE ROLE {role} LOGIN")
        await conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        await conn.execute(RUNTIME_GRANTS.format(role=role))
        assert await pending(conn) == []
    finally:
        await conn.close()
    runtime_dsn = dsn.replace("://postgres@", f"://{role}@", 1)
    assert runtime_dsn != dsn
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await migrate(runtime_dsn)  # what `run` used to do at every start
    rt = Runtime(dataclasses.replace(settings, database_url=runtime_dsn, auto_migrate=False),
                 Metrics(), SecretBox(generate_keys()))
    try:
        await connect(rt)
        assert rt.store is not None
        assert await rt.store.ping()
    finally:
        if rt.producer is not None:
            await rt.producer.stop()
        if rt.store is not None:
            await rt.store.close()
