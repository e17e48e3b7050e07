"""The status outbox gauges show what the relay cannot get out while the broker is cut.

`dispatcher run` talks to a broker of its own through a proxy. Commands that expire while
the proxy refuses every connection write their EXPIRED events into ``status_outbox``; the
relay cannot send them, and ``dispatcher_status_outbox_backlog`` and
``dispatcher_status_outbox_oldest_age_seconds`` on ``/metrics`` say so (the timer reads
them from PostgreSQL every 10 s). Once the broker is back, the relay drains the outbox
and the gauges fall back to 0.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.db import PgServer
from tests.support.events import command_event, hex24
from tests.support.faults import Rig, open_rig
from tests.support.figures import report
from tests.support.proxy import Proxy, proxied_broker
from tests.support.wait import wait_for

pytestmark = pytest.mark.acceptance

COMMANDS = 60
VALIDITY_S = 8  # long enough to be stored and announced before the cut, short enough to wait
BACKLOG = "dispatcher_status_outbox_backlog"
OLDEST = "dispatcher_status_outbox_oldest_age_seconds"


@pytest.fixture(scope="module")
async def cut(pg_server: PgServer, log_dir: Path,
              tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[Rig, Proxy]]:
    log_path = tmp_path_factory.mktemp("outbox-kafka") / "tansu.log"
    async with proxied_broker(log_path) as (broker, proxy):
        dsn = await pg_server.create_database(f"faults_outbox_{hex24()[:6]}")
        async for rig in open_rig(bootstrap=f"127.0.0.1:{proxy.port}",
                                  test_bootstrap=broker.bootstrap, dsn=dsn, test_dsn=dsn,
                                  log_dir=log_dir, devices=COMMANDS, name="outbox-backlog"):
            yield rig, proxy


@pytest.mark.timeout(180)
async def test_outbox_backlog_and_age_while_the_broker_is_cut(cut: tuple[Rig, Proxy]) -> None:
    rig, proxy = cut
    # no plan in the gateway: the devices never answer, every command expires
    commands = [command_event(device, duration=VALIDITY_S) for device in rig.devices]
    ids = [c["id"] for c in commands]
    await rig.kafka.send_many("commands.created", commands)

    async def stored_and_announced() -> bool:
        stored: int = await rig.db.fetchval("SELECT count(*) FROM commands WHERE id = ANY($1)",
                                            ids)
        waiting: int = await rig.db.fetchval("SELECT count(*) FROM status_outbox")
        return stored == COMMANDS and waiting == 0

    await wait_for(stored_and_announced, timeout=30, what="commands stored, PENDING relayed")
    assert await rig.dispatcher.metric(BACKLOG) == 0

    proxy.set_mode("refuse")
    proxy.cut()
    cut_at = time.monotonic()
    try:
        async def backed_up() -> float:
            backlog = await rig.dispatcher.metric(BACKLOG)
            return backlog if backlog >= COMMANDS else 0.0

        backlog = await wait_for(backed_up, timeout=60, interval=0.5,
                                 what=f"{BACKLOG} >= {COMMANDS}")
        seen_after = time.monotonic() - cut_at
        oldest = await rig.dispatcher.metric(OLDEST)
        in_table = await rig.db.fetchval("SELECT count(*) FROM status_outbox")
        expired = await rig.db.fetchval(
            "SELECT count(*) FROM commands WHERE id = ANY($1) AND status = 'EXPIRED'", ids)
    finally:
        proxy.set_mode("pass")
    assert expired == COMMANDS
    assert backlog == in_table == COMMANDS  # nothing else happened meanwhile
    assert 0 < oldest < seen_after + 1
    assert rig.dispatcher.alive, rig.dispatcher.log_tail()

    async def drained() -> bool:
        return await rig.dispatcher.metric(BACKLOG) == 0 and \
            await rig.dispatcher.metric(OLDEST) == 0

    await wait_for(drained, timeout=60, interval=0.5, what="outbox gauges back to 0")
    assert await rig.db.fetchval("SELECT count(*) FROM status_outbox") == 0
    report(f"\n[outbox backlog] broker cut: {BACKLOG} {backlog:.0f} seen {seen_after:.1f}s "
           f"after the cut, oldest {oldest:.1f}s; drained "
           f"{time.monotonic() - cut_at - seen_after:.1f}s after it was seen")
