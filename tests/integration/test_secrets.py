"""A reset password reaches the device's push and nothing else.

It is encrypted at rest (``commands.secret``), absent from ``commands.params``, erased
when the command ends whichever way it ends, and never appears in logs, status events,
dead letters or metrics.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest

from dispatcher.config import Settings
from dispatcher.logs import JsonFormatter
from dispatcher_dev.fakepushy import FakePushy
from tests.helpers import Kafka, ack_event, command_event, device_event, hex24, wait_for
from tests.service import PUSHY_KEY, running

PASSWORD = "Pw-" + secrets.token_hex(10)


@pytest.fixture(scope="module")
async def kafka(settings: Settings) -> AsyncIterator[Kafka]:
    k = Kafka(settings.kafka_bootstrap, settings.topic_prefix)
    await k.start()
    yield k
    await k.stop()


@pytest.fixture(scope="module")
async def pushy() -> AsyncIterator[FakePushy]:
    fake = FakePushy(PUSHY_KEY)
    fake.url = await fake.start()  # type: ignore[attr-defined]
    yield fake
    await fake.stop()


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(settings.database_url)
    yield conn
    await conn.close()


def reset(device: str, **over: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {"command": "RESET_PASSWORD",
                              "params": {"newPassword": PASSWORD, "lockNow": True}, **over}
    return command_event(device, **fields)


async def row(db: asyncpg.Connection, command_id: str) -> asyncpg.Record | None:
    return await db.fetchrow("SELECT status, params::text AS params, secret FROM commands "
                             "WHERE id = $1", command_id)


async def test_password_goes_to_the_push_only(
        settings: Settings, kafka: Kafka, pushy: FakePushy, db: asyncpg.Connection,
        caplog: pytest.LogCaptureFixture) -> None:
    # As logs.setup does: the Kafka client logs at WARNING at most (its DEBUG lines print
    # whole records, including the ones this test itself produces). Last, so that the
    # capturing handler itself takes DEBUG.
    caplog.set_level(logging.WARNING, logger="aiokafka")
    caplog.set_level(logging.DEBUG)
    good, invalid, silent, cancelled = hex24(), hex24(), hex24(), hex24()
    pushy.invalid_tokens = {f"tok-{invalid}"}
    async with running(settings, pushy, pushy_api_url=pushy.url) as rt:  # type: ignore[attr-defined]
        await kafka.send_many("devices", [device_event(good), device_event(invalid),
                                          device_event(silent, token=None),
                                          device_event(cancelled, token=None)])
        done, rejected, expiring, cancel = (reset(good), reset(invalid),
                                            reset(silent, duration=3), reset(cancelled))
        await kafka.send_many("commands.created", [done, rejected, expiring, cancel])
        # Inputs the dispatcher must refuse, carrying the password.
        await kafka.send_many("commands.created", [
            reset(good, id="not-an-id"),
            reset(good, params={"newPassword": PASSWORD, "pad": "x" * 5000}),
        ])
        await kafka.send("commands.created", b'{"id": "broken", "params": {"newPassword": "'
                         + PASSWORD.encode() + b'"')

        push = await wait_for(lambda: _push_of(pushy, done["id"]), what="the push")
        assert push.data["params"] == {"newPassword": PASSWORD, "lockNow": True}
        stored = await row(db, done["id"])
        assert stored is not None
        assert stored["status"] == "PENDING"
        assert json.loads(stored["params"]) == {"lockNow": True}
        assert stored["secret"] is not None
        assert PASSWORD.encode() not in stored["secret"]

        await kafka.send("device-acks", ack_event(done["id"], good, "DONE"))
        await kafka.send("commands.cancel", {"commandId": cancel["id"], "aosDevice": cancelled,
                                             "at": done["createdAt"]})
        ended = {done["id"]: "DONE", rejected["id"]: "ERROR", expiring["id"]: "EXPIRED",
                 cancel["id"]: "CANCEL"}

        async def all_ended() -> bool:
            rows = await db.fetch("SELECT id, status, secret FROM commands WHERE id = ANY($1)",
                                  list(ended))
            return {r["id"]: (r["status"], r["secret"]) for r in rows} == {
                k: (v, None) for k, v in ended.items()}

        await wait_for(all_ended, timeout=30, what="every command ended with its secret erased")
        letters = await wait_for(lambda: _records(kafka, "dead-letter", 3),
                                 what="three dead letters")
        events = await wait_for(lambda: _records(kafka, "commands.status", 8),
                                what="the status events")
        async with aiohttp.ClientSession() as http:
            for path in ("/metrics", "/readyz", "/healthz"):
                async with http.get(rt.http_url + path) as response:
                    assert PASSWORD not in await response.text(), path

    assert PASSWORD not in json.dumps(letters, default=repr)
    assert PASSWORD not in json.dumps(events, default=repr)
    dump = await db.fetchval(
        "SELECT concat((SELECT string_agg(c::text, ' ') FROM commands c),"
        " (SELECT string_agg(o::text, ' ') FROM status_outbox o),"
        " (SELECT string_agg(h::text, ' ') FROM held_events h))")
    assert PASSWORD not in (dump or "")
    formatter = JsonFormatter()
    names = {(r.name, r.levelno) for r in caplog.records}
    assert ("dispatcher.app", logging.INFO) in names
    assert ("dispatcher.push", logging.WARNING) in names  # the rejected push, with its fields
    for record in caplog.records:
        assert PASSWORD not in formatter.format(record), record.getMessage()
        assert PASSWORD not in repr(vars(record)), record.getMessage()


async def _push_of(pushy: FakePushy, command_id: str) -> Any:
    return next((r for r in pushy.accepted if r.data.get("commandId") == command_id), None)


async def _records(kafka: Kafka, topic: str, n: int) -> list[Any] | None:
    records = await kafka.read(topic, timeout_s=0.3)
    return records if len(records) >= n else None


async def test_log_provider_never_logs_params(
        settings: Settings, kafka: Kafka, db: asyncpg.Connection,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="aiokafka")
    caplog.set_level(logging.DEBUG)
    device = hex24()
    async with running(settings, push_provider="log"):
        await kafka.send("devices", device_event(device))
        cmd = reset(device)
        await kafka.send("commands.created", cmd)

        async def pushed() -> bool:
            return bool(await db.fetchval("SELECT push_id FROM commands WHERE id = $1", cmd["id"]))

        await wait_for(pushed, what="the log provider to accept the push")
    logged = [r for r in caplog.records if r.name == "dispatcher.push"]
    assert any(getattr(r, "command_id", None) == cmd["id"] for r in logged)
    for record in caplog.records:
        assert PASSWORD not in repr(vars(record)), record.getMessage()
        assert "lockNow" not in repr(vars(record)), record.getMessage()
