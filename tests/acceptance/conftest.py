"""`dispatcher run` as a subprocess, driven only through Kafka and HTTP.

One service process per test module (starting one costs a consumer-group join), with
its own fresh database (the service migrates it), fresh topics, a free HTTP port and a
fake Pushy served from the test process. Its output goes to a log file whose tail is
shown when something fails. The process helpers are in tests/support/process.py.
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
from collections.abc import AsyncIterator

import pytest

from dispatcher.secretbox import generate_keys
from dispatcher_dev.devstack import free_port
from dispatcher_dev.fakepushy import FakePushy
from tests.support.db import PgServer
from tests.support.kafka import Kafka
from tests.support.process import (
    DISPATCHER,
    PUSHY_KEY,
    Service,
    service_env,
    stop_process,
    wait_ready,
)


@pytest.fixture(scope="module")
async def service(kafka_bootstrap: str, pg_server: PgServer,
                  tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Service]:
    """A `dispatcher run` subprocess, ready (/readyz 200)."""
    database_url = await pg_server.create_database(f"acc_{secrets.token_hex(4)}")
    prefix = f"acc{secrets.token_hex(4)}."
    pushy = FakePushy(PUSHY_KEY)
    pushy_url = await pushy.start()
    kafka = Kafka(kafka_bootstrap, prefix)
    await kafka.start()
    port = free_port()
    log_path = tmp_path_factory.mktemp("dispatcher-run") / "dispatcher.log"
    env = service_env(
        DISPATCHER_KAFKA_BOOTSTRAP=kafka_bootstrap,
        DISPATCHER_DATABASE_URL=database_url,
        DISPATCHER_TOPIC_PREFIX=prefix,
        DISPATCHER_HTTP_PORT=str(port),
        DISPATCHER_PUSHY_API_URL=pushy_url,
        DISPATCHER_PUSHY_API_KEY=PUSHY_KEY,
        DISPATCHER_KAFKA_SESSION_TIMEOUT_MS="6000",
        DISPATCHER_KAFKA_REBALANCE_TIMEOUT_MS="6000",
        DISPATCHER_KAFKA_HEARTBEAT_INTERVAL_MS="1000",
        DISPATCHER_EXPIRY_INTERVAL_S="0.2",
        DISPATCHER_HOLD_WINDOW_S="3",
        DISPATCHER_SHUTDOWN_TIMEOUT_S="10",
        DISPATCHER_SECRET_KEYS=generate_keys("acc1"),
        DISPATCHER_JWT_SECRET="acceptance-jwt-secret-of-32-bytes-or-more",
    )
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            str(DISPATCHER), "run", env=env, stdout=log_file, stderr=subprocess.STDOUT)
    svc = Service(proc, f"http://127.0.0.1:{port}", kafka, pushy, log_path, database_url)
    try:
        await wait_ready(svc)
        yield svc
    finally:
        await stop_process(proc)
        await kafka.stop()
        await pushy.stop()
