"""PostgreSQL stops and starts again (same port) while commands and acks stream in.

Once with a clean stop, once with a crash (SIGKILL of the postmaster). The dispatcher is
never restarted: ``/readyz`` says 503 while the database is away, it recovers by itself,
and nothing sent before, during or after the outages is lost.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from dispatcher_dev.devstack import EmbeddedPostgres
from tests.support.db import create_database
from tests.support.faults import Figures, Rig, assert_nothing_lost, open_rig, paced, settle, verify

pytestmark = pytest.mark.acceptance

COMMANDS = 2000
DEVICES = 400
STREAM_S = 30.0
DOWN_S = float(os.environ.get("DISPATCHER_DB_DOWN_S", "4"))


@pytest.fixture(scope="module")
async def rig(kafka_bootstrap: str, own_postgres: EmbeddedPostgres,
              log_dir: Path) -> AsyncIterator[Rig]:
    dsn = await create_database(own_postgres.dsn(), "faults_db_restart")
    async for r in open_rig(bootstrap=kafka_bootstrap, test_bootstrap=kafka_bootstrap,
                            dsn=dsn, test_dsn=dsn, log_dir=log_dir, devices=DEVICES,
                            name="db-restart", seed_offset=3):
        yield r


async def outage(rig: Rig, pg: EmbeddedPostgres, how: str) -> list[int]:
    """Take the database away for ``DOWN_S`` seconds; return the /readyz answers meanwhile."""
    await rig.db.close()
    await asyncio.to_thread(pg.stop if how == "stop" else pg.kill)
    seen: list[int] = []
    down_until = time.monotonic() + DOWN_S
    while time.monotonic() < down_until:
        seen.append(await rig.dispatcher.readyz())
        await asyncio.sleep(0.5)  # polling cadence of /readyz, not a synchronisation
    await asyncio.to_thread(pg.start)
    rig.db = await asyncpg.connect(rig.dsn)
    return seen


@pytest.mark.timeout(240)
async def test_database_restarts_mid_stream(rig: Rig, own_postgres: EmbeddedPostgres) -> None:
    figures = Figures("database restart")
    commands = rig.gateway.commands(rig.rng, rig.devices, COMMANDS)
    streaming = asyncio.create_task(paced(
        commands, COMMANDS / STREAM_S,
        lambda part: rig.kafka.send_many("commands.created", part), chunk=20))
    seen: dict[str, list[int]] = {}
    recovered: dict[str, float] = {}
    for how in ("stop", "kill"):
        await asyncio.sleep(STREAM_S / 4)  # let the stream flow a while first
        seen[how] = await outage(rig, own_postgres, how)
        back = time.monotonic()
        await rig.dispatcher.wait_ready(timeout_s=60)
        recovered[how] = round(time.monotonic() - back, 1)
        figures.faults += 1
    await streaming
    await settle(rig.db, rig.gateway.expected(), timeout=120)
    figures.events_sent = len(commands) + len(rig.devices) + rig.gateway.acks_sent
    await verify(figures, rig.kafka, rig.db, rig.gateway.expected(), rig.pushy)
    figures.extra.update(readyz_while_down={k: sorted(set(v)) for k, v in seen.items()},
                         ready_again_after_s=recovered)
    assert rig.dispatcher.alive, rig.dispatcher.log_tail()
    assert rig.dispatcher.starts == 1
    assert_nothing_lost(figures)
    for answers in seen.values():
        assert 503 in answers, answers
