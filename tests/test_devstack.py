"""Real-server tests for dispatcher_dev.devstack (no mocks: Tansu and PostgreSQL subprocesses)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from dispatcher_dev.devstack import EmbeddedKafka, EmbeddedPostgres, free_port


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


async def _fetch_val(dsn: str, sql: str) -> object:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


async def _execute(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _kafka_roundtrip(bootstrap: str, topic: str) -> tuple[bytes | None, bytes | None]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"hello", key=b"k1")
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id="devstack-test",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        msg = await asyncio.wait_for(consumer.getone(), timeout=15)
        return msg.key, msg.value
    finally:
        await consumer.stop()


@pytest.fixture
def pg(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(tmp_path / "pg", fast=True)
    try:
        yield server
    finally:
        server.stop()


def test_free_port_is_bindable() -> None:
    port = free_port()
    assert 1024 < port < 65536
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_kafka_produce_and_consume(tmp_path: Path) -> None:
    log_path = tmp_path / "tansu.log"
    with EmbeddedKafka(log_path=log_path) as kafka:
        assert kafka.bootstrap == f"127.0.0.1:{kafka.port}"
        key, value = asyncio.run(_kafka_roundtrip(kafka.bootstrap, "devstack.test"))
        assert (key, value) == (b"k1", b"hello")
    assert not kafka.running
    assert not _accepts(kafka.port)
    assert log_path.exists()
    kafka.stop()  # idempotent


def test_kafka_kill_then_restart_on_same_port() -> None:
    kafka = EmbeddedKafka()
    try:
        bootstrap = kafka.start()
        kafka.kill()
        assert not _accepts(kafka.port)
        assert kafka.start() == bootstrap
    finally:
        kafka.stop()
    kafka.kill()  # idempotent


def test_kafka_refuses_busy_port() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        kafka = EmbeddedKafka(port=sock.getsockname()[1])
        with pytest.raises(RuntimeError, match="already in use"):
            kafka.start()


def test_postgres_query_create_database_and_restart(pg: EmbeddedPostgres) -> None:
    dsn = pg.start()
    assert dsn == f"postgresql://postgres@127.0.0.1:{pg.port}/postgres"
    assert asyncio.run(_fetch_val(dsn, "SELECT 1")) == 1

    app_dsn = pg.create_database("devstack_app")
    assert app_dsn == pg.dsn("devstack_app")
    assert pg.create_database("devstack_app") == app_dsn  # idempotent
    asyncio.run(_execute(app_dsn, "CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)"))

    port = pg.port
    pg.stop()
    assert not _accepts(port)
    pg.stop()  # idempotent

    assert pg.start() == dsn
    assert pg.port == port
    assert asyncio.run(_fetch_val(app_dsn, "SELECT v FROM kept")) == 42


def test_postgres_kill_then_start(pg: EmbeddedPostgres) -> None:
    pg.start()
    asyncio.run(_execute(pg.dsn(), "CREATE TABLE crash (v int); INSERT INTO crash VALUES (7)"))
    pg.kill()
    assert (pg.data_dir / "postmaster.pid").exists()  # left behind, like after a crash
    assert not _accepts(pg.port)

    pg.start()
    assert asyncio.run(_fetch_val(pg.dsn(), "SELECT v FROM crash")) == 7


def test_postgres_ignores_stale_pidfile_from_dead_process(pg: EmbeddedPostgres) -> None:
    pg.start()
    pg.stop()
    pidfile = pg.data_dir / "postmaster.pid"
    pidfile.write_text("999999999\n")  # no such pid
    pg.start()
    assert asyncio.run(_fetch_val(pg.dsn(), "SELECT 1")) == 1


def test_postgres_takes_over_orphaned_server_on_same_dir(pg: EmbeddedPostgres) -> None:
    # Simulates `make run` having been SIGKILLed: its postgres still runs on the data dir.
    pg.start()
    successor = EmbeddedPostgres(pg.data_dir, port=pg.port, fast=True)
    try:
        assert successor.start() == pg.dsn()
        assert not pg.running  # the orphan was shut down (fast shutdown) by the successor
        assert asyncio.run(_fetch_val(successor.dsn(), "SELECT 1")) == 1
    finally:
        successor.stop()
