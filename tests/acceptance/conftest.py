"""`dispatcher run` as a subprocess, driven only through Kafka and HTTP.

One service process per test module (starting one costs a consumer-group join), with
its own fresh database (the service migrates it), fresh topics, a free HTTP port and a
fake Pushy served from the test process. Its output goes to a log file whose tail is
shown when something fails.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from dispatcher.secretbox import generate_keys
from dispatcher_dev.devstack import free_port
from dispatcher_dev.fakepushy import FakePushy
from tests.conftest import PgServer
from tests.helpers import Kafka

PUSHY_KEY = "acceptance-pushy-key"
SHUTDOWN_TIMEOUT_S = 15.0
DISPATCHER = Path(sys.executable).with_name("dispatcher")


def service_env(**values: str) -> dict[str, str]:
    """The parent environment without any DISPATCHER_* variable, plus ``values``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
    env.update(values)
    return env


@dataclass
class Service:
    """The running `dispatcher run` process and the clients that drive it."""

    proc: asyncio.subprocess.Process
    http: str
    kafka: Kafka
    pushy: FakePushy
    log_path: Path
    database_url: str

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    async def get(self, path: str) -> tuple[int, str]:
        async with aiohttp.ClientSession() as session, session.get(self.http + path) as resp:
            return resp.status, await resp.text()


async def wait_ready(service: Service, timeout_s: float = 60.0) -> None:
    """Until /readyz answers 200; fail early (with the log) if the process exits."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if service.proc.returncode is not None:
            raise AssertionError(f"dispatcher exited {service.proc.returncode}:\n"
                                 f"{service.log_tail()}")
        try:
            status, body = await service.get("/readyz")
            if status == 200:
                return
            last = f"{status} {body}"
        except aiohttp.ClientError as exc:
            last = repr(exc)
        await asyncio.sleep(0.2)
    raise AssertionError(f"/readyz not 200 after {timeout_s}s ({last}):\n{service.log_tail()}")


async def stop_process(proc: asyncio.subprocess.Process,
                       timeout_s: float = SHUTDOWN_TIMEOUT_S) -> tuple[int, float]:
    """SIGTERM, then SIGKILL if it has not ended after ``timeout_s``.

    Returns the exit code and the seconds the process took to end.
    """
    started = time.monotonic()
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, time.monotonic() - started


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
