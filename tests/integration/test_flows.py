"""User-visible flows of the core pipeline on a real broker and a real PostgreSQL.

Each test publishes events as an upstream service or a device gateway would and checks
what a user notices: the command row in PostgreSQL, ``mdm.commands.status`` events,
``mdm.dead-letter`` records and the pushes the fake Pushy saw.

"Exactly these status events" is checked behind a barrier: once the command row shows
the last input applied and ``status_outbox`` holds nothing for the command, every status
event it will ever get for those inputs is on the topic (the outbox is written in the
transition's statement and deleted only after the broker acknowledged the event).
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, TypeVar

import asyncpg

from dispatcher.config import Settings
from dispatcher.deadletter import Source
from dispatcher.runtime import Runtime
from dispatcher.store import migrate
from dispatcher_dev.fakepushy import FakePushy
from tests.support.db import PgServer
from tests.support.events import (
    ack_event,
    command_event,
    device_event,
    hex24,
    iso,
    overdue,
    queued_event,
)
from tests.support.kafka import Kafka
from tests.support.service import running
from tests.support.wait import until

Transition = tuple[str | None, str]

T = TypeVar("T")











# -- what a user can see -----------------------------------------------------------------


async def row(db: asyncpg.Pool, command_id: str) -> dict[str, Any] | None:
    record = await db.fetchrow("SELECT * FROM commands WHERE id = $1", command_id)
    if record is None:
        return None
    out = dict(record)
    if isinstance(out["results"], str):
        out["results"] = json.loads(out["results"])
    return out


async def status_is(db: asyncpg.Pool, command_id: str, status: str) -> dict[str, Any] | None:
    found = await row(db, command_id)
    return found if found is not None and found["status"] == status else None


async def results_count(db: asyncpg.Pool, command_id: str, n: int) -> dict[str, Any] | None:
    found = await row(db, command_id)
    return found if found is not None and len(found["results"]) >= n else None


async def outbox_empty(db: asyncpg.Pool, command_id: str) -> bool:
    n = await db.fetchval("SELECT count(*) FROM status_outbox WHERE command_id = $1", command_id)
    return bool(n == 0)


async def status_events(kafka: Kafka, command_id: str) -> list[dict[str, Any]]:
    return [e for e in await kafka.read("commands.status", timeout_s=0.3)
            if isinstance(e, dict) and e.get("id") == command_id]


async def settled_events(db: asyncpg.Pool, kafka: Kafka, command_id: str) -> list[dict[str, Any]]:
    """Every status event of the command, after the outbox has drained for it."""
    await until(lambda: outbox_empty(db, command_id), what=f"outbox drained for {command_id}")
    return await status_events(kafka, command_id)


def transitions(events: list[dict[str, Any]]) -> list[Transition]:
    return [(e["previousStatus"], e["status"]) for e in events]


async def events_n(kafka: Kafka, command_id: str, n: int) -> list[dict[str, Any]] | None:
    events = await status_events(kafka, command_id)
    return events if len(events) >= n else None


def pushes(pushy: FakePushy, command_id: str) -> list[Any]:
    return [r for r in pushy.accepted if r.data.get("commandId") == command_id]


async def pushed(pushy: FakePushy, command_id: str) -> list[Any]:
    return pushes(pushy, command_id)


async def dead_letters(kafka: Kafka, **match: Any) -> list[dict[str, Any]]:
    return [d for d in await kafka.read("dead-letter", timeout_s=0.3)
            if isinstance(d, dict) and all(d.get(k) == v for k, v in match.items())]


async def registered(kafka: Kafka, db: asyncpg.Pool, token: str | None = "tok-") -> str:
    """A new device in the registry (visible in PostgreSQL)."""
    device = hex24()
    await kafka.send("devices", device_event(device, token=token))

    async def stored() -> bool:
        return bool(await db.fetchval("SELECT 1 FROM devices WHERE aos_device = $1", device))

    await until(stored, what="the device in the registry")
    return device


async def pushed_command(kafka: Kafka, db: asyncpg.Pool, pushy: FakePushy,
                         **over: Any) -> tuple[str, dict[str, Any]]:
    device = await registered(kafka, db)
    cmd = command_event(device, **over)
    await kafka.send("commands.created", cmd)
    await until(lambda: pushed(pushy, cmd["id"]), what="the push")
    return device, cmd


# -- duplicates ----------------------------------------------------------------------------


async def test_duplicate_ids_are_one_command(service: Runtime, kafka: Kafka, db: asyncpg.Pool,
                                             pushy: FakePushy) -> None:
    device = await registered(kafka, db)
    cmd = command_event(device)
    await kafka.send("commands.created", cmd)
    await kafka.send("commands.created", cmd)
    await kafka.send_many("commands.created", [cmd, cmd])
    await until(lambda: pushed(pushy, cmd["id"]), what="the push")
    # once more after it was processed (and with another body: the id decides)
    await kafka.send("commands.created", {**cmd, "command": "REBOOT"})
    marker = queued_event(device)  # supersedes nothing
    await kafka.send("commands.created", marker)
    await until(lambda: pushed(pushy, marker["id"]), what="the marker's push")

    assert await db.fetchval("SELECT count(*) FROM commands WHERE id = $1", cmd["id"]) == 1
    stored = await row(db, cmd["id"])
    assert stored is not None
    assert stored["command"] == "LOCK"
    assert len(pushes(pushy, cmd["id"])) == 1
    assert transitions(await settled_events(db, kafka, cmd["id"])) == [(None, "PENDING")]
    metric = service.metrics.registry.get_sample_value(
        "dispatcher_events_consumed_total",
        {"topic": kafka.topic("commands.created"), "outcome": "duplicate"})
    assert metric is not None
    assert metric >= 4


# -- acks ----------------------------------------------------------------------------------


async def test_done_before_received(service: Runtime, kafka: Kafka, db: asyncpg.Pool,
                                    pushy: FakePushy) -> None:
    device, cmd = await pushed_command(kafka, db, pushy)
    now = datetime.now(UTC)
    await kafka.send("device-acks", ack_event(cmd["id"], device, "DONE", at=now))
    await until(lambda: status_is(db, cmd["id"], "DONE"), what="DONE")
    await kafka.send("device-acks", ack_event(cmd["id"], device, "RECEIVED",
                                              at=now - timedelta(seconds=1)))
    stored = await until(lambda: results_count(db, cmd["id"], 2), what="both acks in results")

    assert stored["status"] == "DONE"
    assert [r["status"] for r in stored["results"]] == ["DONE", "RECEIVED"]
    assert transitions(await settled_events(db, kafka, cmd["id"])) == [
        (None, "PENDING"), ("PENDING", "DONE")]


async def test_received_then_done_back_to_back(service: Runtime, kafka: Kafka,
                                               db: asyncpg.Pool, pushy: FakePushy) -> None:
    device, cmd = await pushed_command(kafka, db, pushy)
    await kafka.send_many("device-acks", [ack_event(cmd["id"], device, "RECEIVED"),
                                          ack_event(cmd["id"], device, "DONE")])
    await until(lambda: status_is(db, cmd["id"], "DONE"), what="DONE")

    events = await settled_events(db, kafka, cmd["id"])
    assert transitions(events) == [(None, "PENDING"), ("PENDING", "RECEIVED"),
                                   ("RECEIVED", "DONE")]
    assert events[-1]["pushId"] == pushes(pushy, cmd["id"])[0].push_id
    stored = await row(db, cmd["id"])
    assert stored is not None
    assert [r["status"] for r in stored["results"]] == ["RECEIVED", "DONE"]


async def test_error_ack(service: Runtime, kafka: Kafka, db: asyncpg.Pool,
                         pushy: FakePushy) -> None:
    device, cmd = await pushed_command(kafka, db, pushy, command="CLEAR_APP_DATA")
    await kafka.send("device-acks", ack_event(
        cmd["id"], device, "ERROR", errorType="APP_NOT_FOUND",
        errorMessage="no such package", data={"package": "com.example"}))
    stored = await until(lambda: status_is(db, cmd["id"], "ERROR"), what="ERROR")

    assert stored["error_type"] == "APP_NOT_FOUND"
    assert stored["error_message"] == "no such package"
    assert stored["results"][0]["errorType"] == "APP_NOT_FOUND"
    assert stored["results"][0]["data"] == {"package": "com.example"}
    events = await settled_events(db, kafka, cmd["id"])
    assert transitions(events) == [(None, "PENDING"), ("PENDING", "ERROR")]
    assert events[-1]["errorType"] == "APP_NOT_FOUND"
    assert events[-1]["errorMessage"] == "no such package"


async def test_late_ack_after_expired(service: Runtime, kafka: Kafka, db: asyncpg.Pool,
                                      pushy: FakePushy) -> None:
    device, cmd = await pushed_command(kafka, db, pushy, duration=1)
    await until(lambda: status_is(db, cmd["id"], "EXPIRED"), timeout=15, what="EXPIRED")
    await until(lambda: events_n(kafka, cmd["id"], 2), what="the EXPIRED event")
    await kafka.send("device-acks", ack_event(cmd["id"], device, "DONE"))
    stored = await until(lambda: results_count(db, cmd["id"], 1), what="the late ack kept")

    assert stored["status"] == "EXPIRED"
    assert stored["results"][0]["status"] == "DONE"
    assert transitions(await settled_events(db, kafka, cmd["id"])) == [
        (None, "PENDING"), ("PENDING", "EXPIRED")]


async def test_expired_on_arrival_is_never_pushed(service: Runtime, kafka: Kafka,
                                                  db: asyncpg.Pool, pushy: FakePushy) -> None:
    device = await registered(kafka, db)
    stale = command_event(device, createdAt=overdue(3600), duration=60)
    fresh = command_event(device)
    await kafka.send_many("commands.created", [stale, fresh])
    await until(lambda: pushed(pushy, fresh["id"]), what="the fresh command's push")
    stored = await until(lambda: status_is(db, stale["id"], "EXPIRED"), what="EXPIRED")

    assert stored["sent_at"] is None
    assert pushes(pushy, stale["id"]) == []
    assert transitions(await settled_events(db, kafka, stale["id"])) == [(None, "EXPIRED")]


# -- cancel, registry ----------------------------------------------------------------------


async def test_cancel_open_and_done(service: Runtime, kafka: Kafka, db: asyncpg.Pool,
                                    pushy: FakePushy) -> None:
    device, open_cmd = await pushed_command(kafka, db, pushy)
    await kafka.send("commands.cancel", {"commandId": open_cmd["id"], "aosDevice": device,
                                         "at": iso()})
    await until(lambda: status_is(db, open_cmd["id"], "CANCEL"), what="CANCEL")
    assert transitions(await settled_events(db, kafka, open_cmd["id"])) == [
        (None, "PENDING"), ("PENDING", "CANCEL")]

    done = command_event(device)
    await kafka.send("commands.created", done)
    await until(lambda: pushed(pushy, done["id"]), what="the second push")
    await kafka.send("device-acks", ack_event(done["id"], device, "DONE"))
    await until(lambda: status_is(db, done["id"], "DONE"), what="DONE")
    await kafka.send("commands.cancel", {"commandId": done["id"], "aosDevice": device})
    marker = queued_event(device)  # same partition, behind the cancel
    await kafka.send("commands.created", marker)
    await until(lambda: pushed(pushy, marker["id"]), what="the marker's push")

    stored = await row(db, done["id"])
    assert stored is not None
    assert stored["status"] == "DONE"
    assert transitions(await settled_events(db, kafka, done["id"])) == [
        (None, "PENDING"), ("PENDING", "DONE")]


async def test_device_without_token_waits_for_one(service: Runtime, kafka: Kafka,
                                                  db: asyncpg.Pool, pushy: FakePushy) -> None:
    device = await registered(kafka, db, token=None)
    cmd = command_event(device)
    await kafka.send("commands.created", cmd)
    await until(lambda: status_is(db, cmd["id"], "PENDING"), what="PENDING")
    # barrier: a command of another device published after it has been pushed
    other = await registered(kafka, db)
    marker = command_event(other)
    await kafka.send("commands.created", marker)
    await until(lambda: pushed(pushy, marker["id"]), what="the other device's push")
    assert pushes(pushy, cmd["id"]) == []

    await kafka.send("devices", device_event(device, token=f"late-{device}"))
    push = (await until(lambda: pushed(pushy, cmd["id"]), what="the push after the token"))[0]
    assert push.to == f"late-{device}"
    assert (await row(db, cmd["id"]) or {})["status"] == "PENDING"


async def test_disenrolled_device_cancels_open_commands(
        service: Runtime, kafka: Kafka, db: asyncpg.Pool, pushy: FakePushy) -> None:
    device, first = await pushed_command(kafka, db, pushy)
    await kafka.send("device-acks", ack_event(first["id"], device, "RECEIVED"))
    await until(lambda: status_is(db, first["id"], "RECEIVED"), what="first RECEIVED")
    second = command_event(device)
    await kafka.send("commands.created", second)
    await until(lambda: status_is(db, second["id"], "PENDING"), what="second stored")
    await kafka.send("devices", device_event(device, state="DISENROLLED"))

    for cmd, previous in ((first, "RECEIVED"), (second, "PENDING")):
        stored = await until(partial(status_is, db, cmd["id"], "CANCEL"), what="CANCEL")
        assert stored["error_type"] == "DEVICE_DISENROLLED"
        events = await settled_events(db, kafka, cmd["id"])
        assert transitions(events)[-1] == (previous, "CANCEL")
        assert events[-1]["errorType"] == "DEVICE_DISENROLLED"


# -- acks before their command -------------------------------------------------------------


async def test_ack_before_command_is_held(service: Runtime, kafka: Kafka, db: asyncpg.Pool,
                                          pushy: FakePushy) -> None:
    device = await registered(kafka, db)
    cmd = command_event(device)
    await kafka.send("device-acks", ack_event(cmd["id"], device, "RECEIVED"))

    async def held() -> bool:
        n = await db.fetchval("SELECT count(*) FROM held_events WHERE command_id = $1", cmd["id"])
        return bool(n == 1)

    await until(held, what="the ack held")
    await kafka.send("commands.created", cmd)
    stored = await until(lambda: status_is(db, cmd["id"], "RECEIVED"), what="RECEIVED")

    assert [r["status"] for r in stored["results"]] == ["RECEIVED"]
    assert transitions(await settled_events(db, kafka, cmd["id"])) == [
        (None, "PENDING"), ("PENDING", "RECEIVED")]
    assert await dead_letters(kafka, reason="unknown_command",
                              key=device) == []


async def test_cancel_before_command_is_held(service: Runtime, kafka: Kafka, db: asyncpg.Pool,
                                             pushy: FakePushy) -> None:
    device = await registered(kafka, db)
    cmd = command_event(device)
    await kafka.send("commands.cancel", {"commandId": cmd["id"], "aosDevice": device})

    async def held() -> bool:
        n = await db.fetchval("SELECT count(*) FROM held_events WHERE command_id = $1", cmd["id"])
        return bool(n == 1)

    await until(held, what="the cancel held")
    await kafka.send("commands.created", cmd)
    await until(lambda: status_is(db, cmd["id"], "CANCEL"), what="CANCEL")
    assert transitions(await settled_events(db, kafka, cmd["id"])) == [
        (None, "PENDING"), ("PENDING", "CANCEL")]
    assert pushes(pushy, cmd["id"]) == []


async def test_ack_for_a_command_that_never_comes(service: Runtime, kafka: Kafka,
                                                  db: asyncpg.Pool) -> None:
    device = hex24()
    ack = ack_event(hex24(), device, "DONE")
    await kafka.send("device-acks", ack)
    letters = await until(lambda: dead_letters(kafka, reason="unknown_command", key=device),
                             timeout=20, what="the dead letter")

    assert len(letters) == 1
    letter = letters[0]
    assert letter["topic"] == kafka.topic("device-acks")
    assert json.loads(letter["value"]) == ack
    assert isinstance(letter["partition"], int)
    assert isinstance(letter["offset"], int)
    assert await db.fetchval("SELECT count(*) FROM held_events WHERE command_id = $1",
                             ack["commandId"]) == 0


# -- order ---------------------------------------------------------------------------------


async def test_commands_of_a_device_are_pushed_in_creation_order(
        service: Runtime, kafka: Kafka, db: asyncpg.Pool, pushy: FakePushy) -> None:
    device = await registered(kafka, db, token=None)
    start = datetime.now(UTC) - timedelta(seconds=30)
    cmds = [queued_event(device, createdAt=iso(start + timedelta(seconds=i)))
            for i in range(5)]
    await kafka.send_many("commands.created", cmds)
    for cmd in cmds:
        await until(partial(status_is, db, cmd["id"], "PENDING"), what="stored")
    await kafka.send("devices", device_event(device))
    await until(lambda: pushed(pushy, cmds[-1]["id"]), what="the last push")

    order = [r.data["commandId"] for r in pushy.accepted_for(f"tok-{device}")]
    assert order == [c["id"] for c in cmds]


# -- restart -------------------------------------------------------------------------------


async def test_restart_processes_everything_once(settings: Settings, pg_server: PgServer,
                                                 pushy: FakePushy) -> None:
    """Its own database, topics and group: stopped and started again like a deploy."""
    name = f"t_restart_{secrets.token_hex(3)}"
    dsn = await pg_server.create_database(name)
    await migrate(dsn)
    prefix = f"t{secrets.token_hex(4)}."
    s = dataclasses.replace(settings, database_url=dsn, topic_prefix=prefix,
                            consumer_group=f"dispatcher-{prefix}")
    k = Kafka(s.kafka_bootstrap, prefix)
    await k.start()
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        await _restart_scenario(s, k, pool, pushy)
    finally:
        await pool.close()
        await k.stop()


async def _restart_scenario(s: Settings, k: Kafka, pool: asyncpg.Pool, pushy: FakePushy) -> None:
    device = hex24()
    first = command_event(device)
    async with running(s, pushy):
        await k.send("devices", device_event(device))
        await k.send("commands.created", first)
        await until(lambda: pushed(pushy, first["id"]), what="the first push")
        await k.send("device-acks", ack_event(first["id"], device, "RECEIVED"))
        await until(lambda: status_is(pool, first["id"], "RECEIVED"), what="RECEIVED")

    second = command_event(device)
    await k.send("device-acks", ack_event(first["id"], device, "DONE"))
    await k.send("commands.created", second)
    await k.send("commands.created", first)  # a duplicate while stopped

    async with running(s, pushy) as rt:
        await until(lambda: status_is(pool, first["id"], "DONE"), what="DONE after restart")
        await until(lambda: pushed(pushy, second["id"]), what="the second push")
        first_events = await settled_events(pool, k, first["id"])
        second_events = await settled_events(pool, k, second["id"])
        consumed = _consumed(rt, k)

    # offsets were committed at the stop: the second run read only what came after
    assert consumed == {("commands.created", "ok"): 1, ("commands.created", "duplicate"): 1,
                        ("device-acks", "ok"): 1}

    assert transitions(first_events) == [(None, "PENDING"), ("PENDING", "RECEIVED"),
                                         ("RECEIVED", "DONE")]
    assert transitions(second_events) == [(None, "PENDING")]
    assert len(pushes(pushy, first["id"])) == 1
    assert len(pushes(pushy, second["id"])) == 1
    stored = await row(pool, first["id"])
    assert stored is not None
    assert [r["status"] for r in stored["results"]] == ["RECEIVED", "DONE"]


async def test_held_acks_settled_by_the_timer(service: Runtime, kafka: Kafka, db: asyncpg.Pool,
                                              pushy: FakePushy) -> None:
    """Acks another replica held while this one stored their command (a race between
    replicas) are settled by the timer: applied, or dead-lettered when invalid."""
    device, cmd = await pushed_command(kafka, db, pushy)
    stranger = hex24()
    good = ack_event(cmd["id"], device, "RECEIVED")
    wrong = ack_event(cmd["id"], stranger, "DONE")
    for offset, ack in ((900_001, good), (900_002, wrong)):
        raw = json.dumps(ack).encode()
        source = Source(kafka.topic("device-acks"), 0, offset, ack["aosDevice"].encode(), raw,
                        int(datetime.now(UTC).timestamp() * 1000))
        await db.execute(
            "INSERT INTO held_events (kind, command_id, payload, source)"
            " VALUES ('ack', $1, $2::jsonb, $3::jsonb)",
            cmd["id"], json.dumps(ack), json.dumps(source.to_json()))

    await until(lambda: status_is(db, cmd["id"], "RECEIVED"), what="the held ack applied")
    letters = await until(lambda: dead_letters(kafka, key=stranger), timeout=15,
                             what="the mismatched ack dead-lettered")
    assert [(d["reason"], d["offset"]) for d in letters] == [("device_mismatch", 900_002)]
    assert transitions(await settled_events(db, kafka, cmd["id"])) == [
        (None, "PENDING"), ("PENDING", "RECEIVED")]


def _consumed(rt: Runtime, k: Kafka) -> dict[tuple[str, str], float]:
    """Input events this runtime consumed, by (topic without prefix, outcome)."""
    out: dict[tuple[str, str], float] = {}
    for metric in rt.metrics.registry.collect():
        if metric.name != "dispatcher_events_consumed":
            continue
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.value:
                topic = sample.labels["topic"].removeprefix(k.prefix)
                out[(topic, sample.labels["outcome"])] = sample.value
    return out
