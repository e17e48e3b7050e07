"""A sustained run at a fixed rate: bounded memory, and consumer lag back to zero after.

``DISPATCHER_SOAK_S`` (default 300) seconds at ``DISPATCHER_SOAK_RATE`` (default 1000)
commands per second, each answered RECEIVED then DONE by the device once pushed. The
process's RSS is sampled every second: the last minute's peak may exceed the first
minute's by at most 20%. After the load stops every command ends DONE within 120 s (what
the push path had not caught up with drains), and once the device's last acks are sent
``dispatcher_consumer_lag`` sums to 0 within 30 s. (The lag is not asked to reach 0 while
commands are still being pushed: each push makes the device send two more acks.)
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

from dispatcher_dev.devstack import EmbeddedKafka
from dispatcher_dev.fakepushy import PushRecord
from tests.support.db import PgServer, create_database
from tests.support.events import ack_event, queued_event
from tests.support.faults import Figures, Rig, open_rig
from tests.support.figures import report
from tests.support.wait import wait_for

pytestmark = pytest.mark.acceptance

SOAK_S = float(os.environ.get("DISPATCHER_SOAK_S", "300"))
RATE = float(os.environ.get("DISPATCHER_SOAK_RATE", "1000"))
DEVICES = 5000
TICK_S = 0.1
WINDOW_S = 60.0
GROWTH = 1.20
DRAIN_S = 120.0
"""How long after the load every command must be DONE (pushed and acked)."""


@pytest.fixture(scope="module")
async def rig(own_kafka: EmbeddedKafka, pg_server: PgServer,
              log_dir: Path) -> AsyncIterator[Rig]:
    dsn = await create_database(pg_server.admin_dsn, f"faults_load_{os.getpid()}")
    async for r in open_rig(bootstrap=own_kafka.bootstrap, test_bootstrap=own_kafka.bootstrap,
                            dsn=dsn, test_dsn=dsn, log_dir=log_dir, devices=DEVICES,
                            name="load", seed_offset=5, DISPATCHER_PUSH_CONCURRENCY="64",
                            DISPATCHER_LOG_LEVEL="WARNING"):
        yield r


class Device:
    """Answers every push at once with RECEIVED and DONE (no per-command plan kept)."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.acks = 0
        self.pushes = 0

    async def on_push(self, record: PushRecord) -> None:
        cid = str(record.data.get("commandId"))
        self.pushes += 1
        device = self.rig.gateway.devices.pop(cid, None)
        if device is None:
            return
        await self.rig.kafka.send_many("device-acks", [
            ack_event(cid, device, "RECEIVED"), ack_event(cid, device, "DONE")])
        self.acks += 2


async def produce(rig: Rig, seconds: float, rate: float) -> int:
    """Commands at ``rate`` per second for ``seconds``, paced by deadline; return how many."""
    started = time.monotonic()
    sent = 0
    while (elapsed := time.monotonic() - started) < seconds:
        due = int(elapsed * rate) + int(rate * TICK_S) - sent
        if due > 0:
            batch = [queued_event(rig.rng.choice(rig.devices), duration=3600)
                     for _ in range(due)]
            for cmd in batch:
                rig.gateway.devices[cmd["id"]] = cmd["aosDevice"]
            await rig.kafka.send_many("commands.created", batch)
            sent += due
        await asyncio.sleep(TICK_S)  # pacing, not a synchronisation
    return sent


async def sample_rss(pid: int, stop: asyncio.Event, rig: Rig) -> list[tuple[float, int]]:
    process = psutil.Process(pid)
    samples: list[tuple[float, int]] = []
    started = time.monotonic()
    while not stop.is_set():
        samples.append((time.monotonic() - started, process.memory_info().rss))
        rig.pushy.requests.clear()  # the fake keeps every request; the test does not need them
        rig.pushy.accepted.clear()
        await asyncio.sleep(1)  # one sample a second
    return samples


async def lag(rig: Rig) -> float:
    return await rig.dispatcher.metric("dispatcher_consumer_lag")


@pytest.mark.timeout(SOAK_S + 300)
async def test_sustained_rate(rig: Rig) -> None:
    figures = Figures(f"load {RATE:g}/s for {SOAK_S:g}s")
    device = Device(rig)
    rig.pushy._on_push = device.on_push
    assert rig.dispatcher.proc is not None
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_rss(rig.dispatcher.proc.pid, stop, rig))
    sent = await produce(rig, SOAK_S, RATE)
    stop.set()
    samples = await sampler
    load_ended = time.monotonic()
    lag_at_end = await lag(rig)

    async def counts() -> dict[str, int]:
        return {r["status"]: r["n"] for r in await rig.db.fetch(
            "SELECT status, count(*) AS n FROM commands GROUP BY status")}

    async def all_stored() -> bool:
        return sum((await counts()).values()) >= sent

    await wait_for(all_stored, timeout=30, interval=0.5, what="every command stored")
    at_end = await counts()
    pushes_during_load = device.pushes
    first = max(rss for t, rss in samples if t < WINDOW_S)
    last = max(rss for t, rss in samples if t >= samples[-1][0] - WINDOW_S)

    async def all_done() -> bool:
        return (await counts()).get("DONE", 0) >= sent

    done = True
    try:
        await wait_for(all_done, timeout=DRAIN_S, interval=0.5, what="every command DONE")
    except AssertionError:
        done = False
    done_took = time.monotonic() - load_ended

    async def drained() -> bool:
        return await lag(rig) == 0

    lag_zero = True
    try:
        await wait_for(drained, timeout=30, interval=0.5, what="consumer lag 0")
    except AssertionError:
        lag_zero = False
    lag_took = time.monotonic() - load_ended
    final = await counts()
    figures.events_sent = sent + device.acks + len(rig.devices)
    figures.lost = sent - sum(final.values())
    figures.extra.update(
        commands=sent, acks=device.acks, first_minute_max_rss_mb=round(first / 2**20, 1),
        last_minute_max_rss_mb=round(last / 2**20, 1), lag_at_load_end=lag_at_end,
        push_rate_during_load=round(pushes_during_load / SOAK_S, 1),
        statuses_at_load_end=at_end, statuses_final=final,
        all_done_after_s=round(done_took, 1) if done else f"not within {DRAIN_S:g} s",
        lag_zero_after_s=round(lag_took, 1) if lag_zero else "not within 30 s of the last ack",
        duplicate_transitions="not read back at this volume (see the other fault tests)")
    report(figures.show())
    assert rig.dispatcher.alive, rig.dispatcher.log_tail()
    assert figures.lost == 0
    assert last <= first * GROWTH, (first, last)
    assert done, (f"{final.get('PENDING', 0)} commands still PENDING {DRAIN_S:g} s after the "
                  f"load ({pushes_during_load / SOAK_S:.0f} pushes/s during it)")
    assert lag_zero, f"lag still {await lag(rig)} 30 s after the last acks"
