"""Acceptance: the real `dispatcher run` process, driven as an upstream service and a
device gateway would drive it — Kafka in, ``mdm.commands.status`` / ``mdm.dead-letter``
out, the fake Pushy for pushes, and HTTP for ``/readyz`` and ``/metrics``.

"No further status event" is shown with a barrier: a marker command of the same device
(same partition of every topic, in and out) is moved by a message on the same input topic
published after the one under test; once the marker's event is on the status topic, any
event the earlier message caused would be there before it.

The module shares one process; the last test stops it with SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
from typing import Any

import asyncpg
import pytest

from dispatcher.store import migration_files
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
from tests.support.process import (
    DISPATCHER,
    SHUTDOWN_TIMEOUT_S,
    Service,
    events_of,
    pushed,
    reaches,
    service_env,
    stop_process,
)
from tests.support.wait import until

pytestmark = pytest.mark.acceptance

Transition = tuple[str | None, str]

CONTRACT_METRICS = (
    "dispatcher_events_consumed_total",
    "dispatcher_command_status_total",
    "dispatcher_push_requests_total",
    "dispatcher_push_duration_seconds",
    "dispatcher_push_inflight",
    "dispatcher_dead_letters_total",
    "dispatcher_command_completion_seconds",
    "dispatcher_consumer_lag",
)

def transitions(events: list[dict[str, Any]]) -> list[Transition]:
    return [(e["previousStatus"], e["status"]) for e in events]


async def device(svc: Service) -> str:
    dev = hex24()
    await svc.kafka.send("devices", device_event(dev))
    return dev


async def pushed_command(svc: Service, **over: Any) -> tuple[str, dict[str, Any]]:
    dev = await device(svc)
    cmd = command_event(dev, **over)
    await svc.kafka.send("commands.created", cmd)
    await until(lambda: pushed(svc, cmd["id"]), what="the push")
    return dev, cmd


async def barrier(svc: Service, dev: str, topic: str) -> None:
    """Wait until every message published so far on ``topic`` for ``dev`` was applied."""
    marker = queued_event(dev)  # supersedes nothing it is sent after
    await svc.kafka.send("commands.created", marker)
    await reaches(svc, marker["id"], "PENDING")
    if topic == "device-acks":
        await svc.kafka.send(topic, ack_event(marker["id"], dev, "DONE"))
        await reaches(svc, marker["id"], "DONE")
    elif topic == "commands.cancel":
        await svc.kafka.send(topic, {"commandId": marker["id"], "aosDevice": dev, "at": iso()})
        await reaches(svc, marker["id"], "CANCEL")


async def test_ready_and_happy_path(service: Service) -> None:
    status, body = await service.get("/readyz")
    assert status == 200, body
    dev, cmd = await pushed_command(service, command="REBOOT")
    push = (await pushed(service, cmd["id"]))[0]
    assert push.to == f"tok-{dev}"
    assert push.data["command"] == "REBOOT"
    await service.kafka.send("device-acks", ack_event(cmd["id"], dev, "RECEIVED"))
    await reaches(service, cmd["id"], "RECEIVED")
    await service.kafka.send("device-acks", ack_event(cmd["id"], dev, "DONE"))
    events = await reaches(service, cmd["id"], "DONE")

    assert transitions(events) == [(None, "PENDING"), ("PENDING", "RECEIVED"),
                                   ("RECEIVED", "DONE")]
    assert events[-1]["pushId"] == push.push_id
    assert events[-1]["organization"] == cmd["organization"]
    assert events[-1]["command"] == "REBOOT"


async def test_duplicates_are_one_command(service: Service) -> None:
    dev, cmd = await pushed_command(service)
    await service.kafka.send("commands.created", cmd)
    await service.kafka.send_many("commands.created", [cmd, cmd])
    await barrier(service, dev, "commands.created")

    assert len(await pushed(service, cmd["id"])) == 1
    assert transitions(await events_of(service, cmd["id"])) == [(None, "PENDING")]


async def test_out_of_order_acks(service: Service) -> None:
    dev, cmd = await pushed_command(service)
    await service.kafka.send("device-acks", ack_event(cmd["id"], dev, "DONE"))
    await reaches(service, cmd["id"], "DONE")
    await service.kafka.send("device-acks", ack_event(cmd["id"], dev, "RECEIVED"))
    await barrier(service, dev, "device-acks")

    assert transitions(await events_of(service, cmd["id"])) == [
        (None, "PENDING"), ("PENDING", "DONE")]


async def test_late_ack_after_expired(service: Service) -> None:
    dev, cmd = await pushed_command(service, duration=1)
    await reaches(service, cmd["id"], "EXPIRED", timeout=15)
    await service.kafka.send("device-acks", ack_event(cmd["id"], dev, "DONE"))
    await barrier(service, dev, "device-acks")

    assert transitions(await events_of(service, cmd["id"])) == [
        (None, "PENDING"), ("PENDING", "EXPIRED")]


async def test_expired_on_arrival(service: Service) -> None:
    dev = await device(service)
    stale = command_event(dev, createdAt=overdue(3600), duration=60)
    await service.kafka.send("commands.created", stale)
    events = await reaches(service, stale["id"], "EXPIRED")
    await barrier(service, dev, "commands.created")

    assert transitions(events) == [(None, "EXPIRED")]
    assert await pushed(service, stale["id"]) == []


async def test_cancel(service: Service) -> None:
    dev, open_cmd = await pushed_command(service)
    await service.kafka.send("commands.cancel", {"commandId": open_cmd["id"], "aosDevice": dev})
    events = await reaches(service, open_cmd["id"], "CANCEL")
    assert transitions(events) == [(None, "PENDING"), ("PENDING", "CANCEL")]

    done = command_event(dev)
    await service.kafka.send("commands.created", done)
    await until(lambda: pushed(service, done["id"]), what="the second push")
    await service.kafka.send("device-acks", ack_event(done["id"], dev, "DONE"))
    await reaches(service, done["id"], "DONE")
    await service.kafka.send("commands.cancel", {"commandId": done["id"], "aosDevice": dev})
    await barrier(service, dev, "commands.cancel")

    assert transitions(await events_of(service, done["id"])) == [
        (None, "PENDING"), ("PENDING", "DONE")]


async def test_poison_goes_to_dead_letter_and_good_messages_flow(service: Service) -> None:
    dev = await device(service)
    poison = [
        ("commands.created", b"{not json", "invalid_json"),
        ("commands.created", json.dumps({**command_event(dev), "command": "FORMAT"}).encode(),
         "unknown_command"),
        ("commands.created", json.dumps({**command_event(dev), "id": "nothex"}).encode(),
         "validation"),
        ("device-acks", json.dumps(ack_event(hex24(), dev, "LOST")).encode(), "unknown_status"),
        ("commands.cancel", b"", "empty"),
    ]
    good: list[dict[str, Any]] = []
    for name, raw, _ in poison:
        await service.kafka.send(name, raw, key=dev)
        cmd = queued_event(dev)
        good.append(cmd)
        await service.kafka.send("commands.created", cmd)

    async def letters() -> list[dict[str, Any]] | None:
        found = [d for d in await service.kafka.read("dead-letter", timeout_s=0.3)
                 if isinstance(d, dict) and d.get("key") == dev]
        return found if len(found) >= len(poison) else None

    found = await until(letters, what="the dead letters")
    assert sorted((d["topic"], d["reason"], d["value"]) for d in found) == sorted(
        (service.kafka.topic(name), reason, raw.decode()) for name, raw, reason in poison)
    assert all(isinstance(d["offset"], int) and isinstance(d["partition"], int) for d in found)
    for cmd in good:
        await reaches(service, cmd["id"], "PENDING")
    status, _ = await service.get("/readyz")
    assert status == 200


async def test_metrics_have_the_contract_names(service: Service) -> None:
    async def exposed() -> str | None:
        status, text = await service.get("/metrics")
        assert status == 200
        samples = {line.split("{")[0].split(" ")[0] for line in text.splitlines()
                   if line and not line.startswith("#")}
        wanted = {"dispatcher_push_duration_seconds_bucket",
                  "dispatcher_command_completion_seconds_bucket",
                  *(n for n in CONTRACT_METRICS if not n.endswith("_seconds"))}
        return text if wanted <= samples else None

    text = await until(exposed, timeout=15, what="every contract metric with samples")
    assert 'reason="invalid_json"' in text
    assert 'outcome="accepted"' in text


async def test_sigterm_stops_cleanly(service: Service) -> None:
    code, took = await stop_process(service.proc, timeout_s=SHUTDOWN_TIMEOUT_S)
    assert code == 0, service.log_tail()
    assert took < SHUTDOWN_TIMEOUT_S
    assert "dispatcher stopped" in service.log_path.read_text()


async def test_concurrent_migrate(pg_server: PgServer) -> None:
    dsn = await pg_server.create_database(f"acc_migrate_{secrets.token_hex(3)}")
    env = service_env(DISPATCHER_DATABASE_URL=dsn)
    procs = [await asyncio.create_subprocess_exec(
        str(DISPATCHER), "migrate", env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]
    outputs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), 60)

    assert [p.returncode for p in procs] == [0, 0], outputs
    texts = sorted(out.decode() for out, _ in outputs)
    assert any("applied migrations" in t for t in texts), texts
    assert any("up to date" in t for t in texts), texts
    conn = await asyncpg.connect(dsn)
    try:
        versions = [r["version"] for r in await conn.fetch(
            "SELECT version FROM schema_migrations ORDER BY version")]
        tables = await conn.fetchval(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'commands'")
    finally:
        await conn.close()
    assert versions == [v for v, _, _ in migration_files()]
    assert tables == 1


@pytest.mark.parametrize("keys", [None, "k1:not-32-bytes"])
async def test_run_refuses_to_start_without_secret_keys(keys: str | None) -> None:
    env = service_env(DISPATCHER_KAFKA_BOOTSTRAP="127.0.0.1:1",
                      DISPATCHER_DATABASE_URL="postgresql://nobody@127.0.0.1:1/none")
    if keys is not None:
        env["DISPATCHER_SECRET_KEYS"] = keys
    proc = await asyncio.create_subprocess_exec(
        str(DISPATCHER), "run", env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2, out
    assert b"DISPATCHER_SECRET_KEYS" in out
