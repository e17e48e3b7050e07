"""The core pipeline on a real broker and a real PostgreSQL."""

from __future__ import annotations

from typing import Any

import asyncpg

from dispatcher.config import Settings
from dispatcher.runtime import Runtime
from dispatcher_dev.fakepushy import FakePushy
from tests.support.events import ack_event, command_event, device_event, hex24
from tests.support.fakes import was_pushed
from tests.support.kafka import Kafka
from tests.support.wait import wait_for


async def status_of(dsn: str, command_id: str) -> str | None:
    conn = await asyncpg.connect(dsn)
    try:
        status: str | None = await conn.fetchval("SELECT status FROM commands WHERE id = $1",
                                                 command_id)
        return status
    finally:
        await conn.close()


async def test_command_is_pushed_and_acked_to_done(service: Runtime, kafka: Kafka, pushy: FakePushy,
                                                   settings: Settings) -> None:
    device = hex24()
    await kafka.send("devices", device_event(device))
    cmd = command_event(device, command="REBOOT")
    await kafka.send("commands.created", cmd)
    await wait_for(lambda: was_pushed(pushy, cmd["id"]), what="the push")
    push = next(r for r in pushy.accepted if r.data.get("commandId") == cmd["id"])
    assert push.to == f"tok-{device}"
    assert push.time_to_live is not None
    assert 590 <= push.time_to_live <= 600
    await kafka.send("device-acks", ack_event(cmd["id"], device, "RECEIVED"))
    await kafka.send("device-acks", ack_event(cmd["id"], device, "DONE"))
    await wait_for(lambda: _is(settings.database_url, cmd["id"], "DONE"), what="DONE")
    events = await wait_for(lambda: _status_events(kafka, cmd["id"], 3), what="3 status events")
    assert [(e["previousStatus"], e["status"]) for e in events] == [
        (None, "PENDING"), ("PENDING", "RECEIVED"), ("RECEIVED", "DONE")]
    assert events[-1]["pushId"] == push.push_id


async def _is(dsn: str, command_id: str, status: str) -> bool:
    return await status_of(dsn, command_id) == status


async def _status_events(kafka: Kafka, command_id: str, n: int) -> list[dict[str, Any]] | None:
    events = [e for e in await kafka.read("commands.status", timeout_s=0.3)
              if isinstance(e, dict) and e.get("id") == command_id]
    return events if len(events) >= n else None
