"""`dispatcher run` killed with SIGKILL mid-stream, several times: nothing lost, few repeats.

The real CLI runs as a subprocess against the test broker, a fresh database and a fake
Pushy with some latency. Commands stream in while the process is killed and restarted.
At the end every command is in PostgreSQL exactly once and was pushed; a push goes
twice only when it was in flight at a kill, so repeats are at most concurrency x kills.
"""

from __future__ import annotations

import asyncio
import functools
import os
import secrets
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from dispatcher.push import repeat_bound
from dispatcher.secretbox import generate_keys
from dispatcher_dev.devstack import free_port
from dispatcher_dev.fakepushy import FakePushy
from tests.support.events import device_event, hex24, queued_event
from tests.support.fakes import accepted_at_least
from tests.support.figures import report
from tests.support.kafka import Kafka
from tests.support.service import PUSHY_KEY
from tests.support.wait import wait_for

DISPATCHER = Path(sys.executable).with_name("dispatcher")
CONCURRENCY = 16
DEVICES = 200
COMMANDS = 2000
KILL_AFTER_PUSHES = (300, 900, 1500)
PASSWORD = "Pw-" + secrets.token_hex(10)


class Service:
    """`dispatcher run` as a child process, its output kept in one file across restarts."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(DISPATCHER), "run"], env=self.env, stdout=out, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=10)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
async def pushy() -> AsyncIterator[FakePushy]:
    fake = FakePushy(PUSHY_KEY)
    fake.latency_s = 0.05
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def service(kafka_bootstrap: str, pg_server: Any, pushy: FakePushy,
                  tmp_path: Path) -> AsyncIterator[tuple[Service, str, str]]:
    dsn = await pg_server.create_database(f"crash_{secrets.token_hex(5)}")
    prefix = f"t{secrets.token_hex(4)}."
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
    env.update({
        "DISPATCHER_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "DISPATCHER_DATABASE_URL": dsn,
        "DISPATCHER_TOPIC_PREFIX": prefix,
        "DISPATCHER_HTTP_PORT": str(free_port()),
        "DISPATCHER_PUSHY_API_URL": pushy.url,
        "DISPATCHER_PUSHY_API_KEY": PUSHY_KEY,
        "DISPATCHER_PUSH_CONCURRENCY": str(CONCURRENCY),
        "DISPATCHER_PUSH_LEASE_S": "3",
        "DISPATCHER_REPUSH_AFTER_S": "0",
        "DISPATCHER_KAFKA_SESSION_TIMEOUT_MS": "6000",
        "DISPATCHER_KAFKA_REBALANCE_TIMEOUT_MS": "6000",
        "DISPATCHER_KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
        "DISPATCHER_JWT_SECRET": "crash-test-jwt-secret-of-32-bytes-or-more",
        "DISPATCHER_SECRET_KEYS": generate_keys("crash1"),
    })
    svc = Service(env, tmp_path / "dispatcher.log")
    try:
        yield svc, dsn, prefix
    finally:
        await asyncio.to_thread(svc.stop)


async def test_sigkill_mid_stream_loses_nothing_and_repeats_little(
        service: tuple[Service, str, str], kafka_bootstrap: str, pushy: FakePushy) -> None:
    svc, dsn, prefix = service
    kafka = Kafka(kafka_bootstrap, prefix)
    await kafka.start()
    devices = [hex24() for _ in range(DEVICES)]
    # several per device, each pushed: a type that a newer one does not supersede, and
    # RESET_PASSWORDs each to a device of its own (a second one would supersede it)
    cmds = [queued_event(devices[i % DEVICES]) for i in range(COMMANDS)]
    for c in cmds[::101]:
        c.update(command="RESET_PASSWORD", params={"newPassword": PASSWORD})
    chunks = [cmds[i:i + 200] for i in range(0, COMMANDS, 200)]
    in_flight_at_kills: list[int] = []
    try:
        svc.start()
        await kafka.send_many("devices", [device_event(d) for d in devices])
        for kill_at in KILL_AFTER_PUSHES:
            await kafka.send_many("commands.created", chunks.pop(0))
            await kafka.send_many("commands.created", chunks.pop(0))
            await wait_for(functools.partial(accepted_at_least, pushy, kill_at),
                           timeout=120, what=f"{kill_at} pushes before the kill")
            await kafka.send_many("commands.created", chunks.pop(0))  # some not yet consumed
            in_flight_at_kills.append(pushy.inflight)
            svc.kill()
            svc.start()
        for chunk in chunks:
            await kafka.send_many("commands.created", chunk)
        await wait_for(lambda: _all_pushed(pushy, cmds), timeout=180, what="every command pushed")
    finally:
        await kafka.stop()
    # A graceful stop waits for pushes to the fake, which answers from this event loop.
    assert await asyncio.to_thread(svc.stop) == 0

    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT id, status, push_id, pushes FROM commands")
    finally:
        await conn.close()
    counts = Counter(str(r.data["commandId"]) for r in pushy.accepted)
    repeats = sum(n - 1 for n in counts.values())
    report(f"\n{COMMANDS} commands, {len(KILL_AFTER_PUSHES)} SIGKILLs, concurrency {CONCURRENCY}: "
          f"{len(pushy.requests)} requests, {len(pushy.accepted)} accepted, "
          f"{repeats} repeated pushes; in flight at the fake at each kill: {in_flight_at_kills}")
    assert sorted(r["id"] for r in rows) == sorted(c["id"] for c in cmds)
    assert {r["status"] for r in rows} == {"PENDING"}
    assert all(r["push_id"] for r in rows)
    assert set(counts) == {c["id"] for c in cmds}
    assert repeats <= repeat_bound(CONCURRENCY) * len(KILL_AFTER_PUSHES)
    assert PASSWORD not in svc.output()
    assert PUSHY_KEY not in svc.output()


async def _all_pushed(pushy: FakePushy, cmds: list[dict[str, Any]]) -> bool:
    return {c["id"] for c in cmds} <= {str(r.data.get("commandId")) for r in pushy.accepted}
