"""SIGKILL `dispatcher run` at random moments while 10,000 commands and their acks stream in.

The process is restarted right after each kill; the stream keeps flowing while it is
down. At the end every command is stored once, in the status its plan says, its status
events are complete and lawful, and pushes repeat only if they were in flight at a kill.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dispatcher.push import repeat_bound
from tests.support.db import PgServer, create_database
from tests.support.faults import (
    CONCURRENCY,
    Figures,
    Rig,
    assert_nothing_lost,
    open_rig,
    paced,
    settle,
    verify,
)

pytestmark = pytest.mark.acceptance

COMMANDS = int(os.environ.get("DISPATCHER_CRASH_COMMANDS", "10000"))
KILLS = int(os.environ.get("DISPATCHER_CRASH_KILLS", "20"))
DEVICES = 2000
STREAM_S = float(os.environ.get("DISPATCHER_CRASH_STREAM_S", "130"))
"""The commands are spread over this long; the kills happen meanwhile."""
UP_S = (1.0, 9.0)
"""A kill comes this long (uniformly drawn) after a start: before, during or after the join."""


@pytest.fixture(scope="module")
async def rig(kafka_bootstrap: str, pg_server: PgServer, log_dir: Path) -> AsyncIterator[Rig]:
    dsn = await create_database(pg_server.admin_dsn, f"faults_crash_{os.getpid()}")
    async for r in open_rig(bootstrap=kafka_bootstrap, test_bootstrap=kafka_bootstrap,
                            dsn=dsn, test_dsn=dsn, log_dir=log_dir,
                            devices=DEVICES, name="crash", seed_offset=1):
        yield r


async def kill_loop(rig: Rig, figures: Figures, streaming: asyncio.Task[None]) -> None:
    """Kill at random moments and restart at once, ``KILLS`` times (and while streaming)."""
    proc = rig.dispatcher
    while proc.kills < KILLS or not streaming.done():
        await asyncio.sleep(rig.rng.uniform(*UP_S))  # a random moment, not a synchronisation
        in_flight = rig.pushy.inflight
        await proc.kill()
        figures.extra["in_flight_at_kills"] = figures.extra.get("in_flight_at_kills", 0) + \
            in_flight
        await proc.start()


@pytest.mark.timeout(420)
async def test_sigkill_at_random_moments(rig: Rig) -> None:
    figures = Figures("crash")
    rig.pushy.latency_s = 0.05
    commands = rig.gateway.commands(rig.rng, rig.devices, COMMANDS)
    figures.events_sent = len(rig.devices) + len(commands)

    streaming = asyncio.create_task(paced(
        commands, COMMANDS / STREAM_S, lambda part: rig.kafka.send_many("commands.created",
                                                                       part)))
    await kill_loop(rig, figures, streaming)
    await streaming
    figures.kills = figures.faults = rig.dispatcher.kills
    figures.repeat_bound = figures.kills * repeat_bound(CONCURRENCY)
    killed_until = time.monotonic()

    await rig.dispatcher.wait_ready()
    await settle(rig.db, rig.gateway.expected(), timeout=120)
    figures.extra["settled_after_last_kill_s"] = round(time.monotonic() - killed_until, 1)
    figures.events_sent += rig.gateway.acks_sent
    await verify(figures, rig.kafka, rig.db, rig.gateway.expected(), rig.pushy)
    figures.extra["pushes_accepted"] = len(rig.pushy.accepted)
    assert rig.dispatcher.alive, rig.dispatcher.log_tail()
    assert figures.kills >= KILLS
    assert_nothing_lost(figures)
