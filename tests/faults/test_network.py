"""Network faults between `dispatcher run` and the broker, PostgreSQL and the push provider.

A TCP proxy (``proxy.py``) sits in front of each server; the broker advertises the proxy,
so every Kafka connection of the dispatcher goes through it. The test's own clients are
exempt: the upstream keeps producing commands and the device gateway keeps acking while
the dispatcher's side is broken. One process lives through every fault: it recovers by
itself once the fault ends, ``/readyz`` answers 503 while Kafka or PostgreSQL cannot be
reached and 200 after, and every command sent before and during the fault ends in its
status with complete status events.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dispatcher.push import repeat_bound
from dispatcher_dev.devstack import EmbeddedKafka, EmbeddedPostgres, free_port
from tests.support.db import create_database
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
from tests.support.proxy import Proxy, own_process_peers

pytestmark = pytest.mark.acceptance

COMMANDS = 300
DEVICES = 300
FAULT_S = float(os.environ.get("DISPATCHER_NETWORK_FAULT_S", "7"))
SLOW_DELAY_S = 0.05


class Net:
    """The rig and a proxy per server."""

    def __init__(self, rig: Rig, proxies: dict[str, Proxy]) -> None:
        self.rig = rig
        self.proxies = proxies


@pytest.fixture(scope="module")
async def net(own_postgres: EmbeddedPostgres, log_dir: Path,
              tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Net]:
    exempt = own_process_peers()
    broker_port = free_port()
    proxies = {"kafka": Proxy(broker_port, exempt=exempt),
               "postgres": Proxy(own_postgres.port, exempt=exempt)}
    broker: EmbeddedKafka | None = None

    async def route_pushy(port: int) -> str:
        proxies["pushy"] = Proxy(port, exempt=exempt)
        return f"http://127.0.0.1:{await proxies['pushy'].start()}"

    try:
        kafka_proxy_port = await proxies["kafka"].start()
        pg_proxy_port = await proxies["postgres"].start()
        broker = EmbeddedKafka(broker_port,
                               tmp_path_factory.mktemp("net-kafka") / "tansu.log",
                               advertised=f"127.0.0.1:{kafka_proxy_port}")
        await asyncio.to_thread(broker.start)  # the proxy answers its readiness probe meanwhile
        dsn = await create_database(own_postgres.dsn(), "faults_network")
        proxied_dsn = dsn.replace(f":{own_postgres.port}/", f":{pg_proxy_port}/")
        async for rig in open_rig(bootstrap=f"127.0.0.1:{kafka_proxy_port}",
                                  test_bootstrap=broker.bootstrap, dsn=proxied_dsn,
                                  test_dsn=dsn, log_dir=log_dir, devices=DEVICES,
                                  name="network", seed_offset=2, route_pushy=route_pushy):
            yield Net(rig, proxies)
    finally:
        for proxy in proxies.values():
            await proxy.stop()
        if broker is not None:
            await asyncio.to_thread(broker.stop)


async def timed_out(rig: Rig) -> float:
    """Push requests the dispatcher gave up waiting for."""
    return await rig.dispatcher.metric("dispatcher_push_requests_total", outcome="timeout")


def inject(proxy: Proxy, mode: str) -> None:
    if mode == "outage":
        proxy.set_mode("refuse")
        proxy.cut()
    elif mode == "slow":
        proxy.set_mode("slow", SLOW_DELAY_S)
    else:
        proxy.set_mode(mode)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("target", ["kafka", "postgres", "pushy"])
@pytest.mark.parametrize("mode", ["outage", "stall", "slow"])
async def test_fault_and_recovery(net: Net, target: str, mode: str) -> None:
    rig, proxy = net.rig, net.proxies[target]
    figures = Figures(f"network {target} {mode}")
    commands = rig.gateway.commands(rig.rng, rig.devices, COMMANDS)
    expected = {c["id"]: rig.gateway.plans[c["id"]].final for c in commands}
    half = COMMANDS // 2
    await rig.kafka.send_many("commands.created", commands[:half])

    timed_out_before = await timed_out(rig)
    cuts_before, refused_before = proxy.cuts, proxy.refused
    inject(proxy, mode)
    figures.faults = 1
    fault_started = time.monotonic()
    sending = asyncio.create_task(paced(
        commands[half:], (COMMANDS - half) / FAULT_S,
        lambda part: rig.kafka.send_many("commands.created", part), chunk=10))
    seen: list[int] = []
    while time.monotonic() - fault_started < FAULT_S or not sending.done():
        seen.append(await rig.dispatcher.readyz())
        await asyncio.sleep(0.5)  # polling cadence of /readyz, not a synchronisation
    await sending
    proxy.set_mode("pass")
    fault_ended = time.monotonic()

    await rig.dispatcher.wait_ready(timeout_s=60)
    ready_after = time.monotonic() - fault_ended
    await settle(rig.db, expected, timeout=90)
    settled_after = time.monotonic() - fault_ended
    figures.events_sent = COMMANDS
    await verify(figures, rig.kafka, rig.db, expected, rig.pushy)
    figures.extra.update(readyz_seen=dict(sorted({s: seen.count(s) for s in seen}.items())),
                         ready_after_s=round(ready_after, 1),
                         settled_after_s=round(settled_after, 1),
                         connections_cut=proxy.cuts - cuts_before,
                         connections_refused=proxy.refused - refused_before)
    # A push repeats only when its request timed out or its connection was cut under it
    # (the provider may still have taken it: an at-least-once hand-off), or when its
    # answer could not be recorded because the database was away (one per push slot).
    # A refused connection never reaches the provider, so it cannot repeat a push.
    figures.repeat_bound = int(await timed_out(rig) - timed_out_before)
    if target == "pushy":
        figures.repeat_bound += proxy.cuts - cuts_before
    if target == "postgres":
        figures.repeat_bound += repeat_bound(CONCURRENCY)
    assert rig.dispatcher.alive, rig.dispatcher.log_tail()
    assert rig.dispatcher.starts == 1
    assert_nothing_lost(figures)
    if target in ("kafka", "postgres") and mode in ("outage", "stall"):
        assert 503 in seen, seen
    if target == "pushy" or mode == "slow":
        assert 503 not in seen, seen
