"""Poison messages: every invalid input is dead-lettered and the stream moves on.

Each invalid value goes to the topic it pretends to belong to, with the same key as
valid messages published right behind it (so they share a partition and the valid ones
can only be processed if the poison did not block it). A user sees: one record per
invalid input on ``mdm.dead-letter`` with the reason, the source topic, partition and
offset and the raw value; every valid input applied; the service still running; and
``dispatcher_dead_letters_total`` counting them.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import asyncpg

from dispatcher.runtime import Runtime
from dispatcher_dev.fakepushy import FakePushy
from tests.support.events import ack_event, command_event, device_event, hex24, iso, queued_event
from tests.support.fakes import was_pushed
from tests.support.kafka import Kafka
from tests.support.wait import until

T = TypeVar("T")











@dataclass
class Sent:
    topic: str
    partition: int
    offset: int
    raw: bytes
    reason: str
    what: str


def compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


async def send_raw(kafka: Kafka, name: str, raw: bytes, key: str) -> tuple[int, int]:
    assert kafka.producer is not None
    md = await kafka.producer.send_and_wait(kafka.topic(name), raw, key=key.encode())
    return md.partition, md.offset


def without(event: dict[str, Any], field: str) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k != field}


def poison_cases(device: str, command_id: str) -> list[tuple[str, bytes, str, str]]:
    """(topic, raw value, expected reason, description) of every kind of poison."""
    cmd = command_event(device)
    dev = device_event(device)
    ack = ack_event(command_id, device, "RECEIVED")
    cancel = {"commandId": command_id, "aosDevice": device, "at": iso()}
    return [
        ("commands.created", b"{not json", "invalid_json", "not JSON"),
        ("commands.created", b"\xff\xfe\x00garbage", "invalid_json", "not UTF-8"),
        ("commands.created", b"[1, 2, 3]", "validation", "a JSON array"),
        ("commands.created", compact({**cmd, "duration": "600"}), "validation", "wrong type"),
        ("commands.created", compact({**cmd, "params": []}), "validation", "params not object"),
        ("commands.created", compact(without(cmd, "organization")), "validation", "missing"),
        ("commands.created", compact({**cmd, "urgency": 1}), "validation", "extra field"),
        ("commands.created", compact({**cmd, "priority": "urgent"}), "validation",
         "unknown priority"),
        ("commands.created", compact({**cmd, "notBefore": "2026-11-23T10:00:00"}),
         "validation", "notBefore without a zone"),
        ("commands.created", compact({**cmd, "command": "FORMAT_DISK"}), "unknown_command",
         "unknown command"),
        ("commands.created", compact({**cmd, "id": "xyz"}), "validation", "short id"),
        ("commands.created", compact({**cmd, "id": "g" * 24}), "validation", "non-hex id"),
        ("commands.created", compact({**cmd, "params": {"blob": "x" * 300_000}}), "too_large",
         "a ~300 KB value"),
        ("commands.created", compact({**cmd, "params": {"blob": "x" * 5000}}), "too_large",
         "params over 4 KB"),
        ("commands.created", compact({**cmd, "params": {"note": "a\x00b"}}), "validation",
         "NUL in params"),
        ("commands.created", compact({**cmd, "createdAt": "2026-11-23T10:00:00"}), "validation",
         "timestamp without a zone"),
        ("commands.created", compact({**cmd, "params": {"note": "\ud800"}}), "invalid_json",
         "a lone surrogate in params"),
        ("commands.created", b"[" * 5000 + b"]" * 5000, "too_deep", "arrays 5,000 deep"),
        ("commands.created", b'{"id": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5001, "too_deep",
         "objects 5,000 deep"),
        ("commands.created", compact(cmd)[:-1] + b',"command":"WIPE"}', "duplicate_key",
         "a key given twice"),
        ("device-acks", b'{"commandId": ' + b"[" * 5000 + b"]" * 5000 + b"}", "too_deep",
         "an ack 5,000 deep"),
        ("commands.cancel", b"[" * 5000 + b"]" * 5000, "too_deep", "a cancel 5,000 deep"),
        ("devices", b"", "empty", "empty value"),
        ("devices", compact({**dev, "state": "LOST"}), "validation", "unknown state"),
        ("devices", compact({**dev, "aosDevice": device[:-1] + "Z"}), "validation", "bad id"),
        ("devices", compact({**dev, "updatedAt": "2026-11-23 10:00:00"}), "validation",
         "timestamp without a zone"),
        ("devices", compact({**dev, "pushToken": "tok\x00"}), "validation", "NUL in token"),
        ("device-acks", b"   ", "empty", "blank value"),
        ("device-acks", compact({**ack, "status": "FAILED"}), "unknown_status",
         "unknown ack status"),
        ("device-acks", compact({**ack, "errorMessage": "bad\x00"}), "validation", "NUL"),
        ("device-acks", compact({**ack, "data": [1]}), "validation", "data not object"),
        ("device-acks", compact({**ack, "errorMessage": "\udfff"}), "invalid_json",
         "a lone surrogate in a text field"),
        ("device-acks", compact({**ack, "data": {"n": float("nan")}}), "invalid_json",
         "NaN (not JSON)"),
        ("commands.created", compact({**cmd, "params": {"n": 1}}).replace(b'"n":1', b'"n":1e400'),
         "invalid_json", "a number out of range"),
        # parses, but cannot be stored: isolated from its batch, then rejected alone
        ("commands.created", compact({**cmd, "createdAt": "9999-12-31T23:59:59Z"}),
         "store_rejected", "a deadline past year 9999"),
        ("device-acks", compact({**ack, "at": "2026-11-23T10:00:00"}), "validation",
         "timestamp without a zone"),
        ("commands.cancel", b"", "empty", "empty value"),
        ("commands.cancel", b'"cancel"', "validation", "a JSON string"),
        ("commands.cancel", compact({**cancel, "commandId": "1234"}), "validation", "bad id"),
        ("commands.cancel", compact(without(cancel, "aosDevice")), "validation", "missing"),
        ("commands.cancel", compact({**cancel, "reason": "x"}), "validation", "extra field"),
    ]


async def fetch_status(db: asyncpg.Pool, command_id: str) -> str | None:
    status: str | None = await db.fetchval("SELECT status FROM commands WHERE id = $1",
                                           command_id)
    return status


async def test_poison_is_dead_lettered_and_the_stream_flows(
        service: Runtime, kafka: Kafka, db: asyncpg.Pool, pushy: FakePushy) -> None:
    device = hex24()
    await kafka.send("devices", device_event(device))
    targets = [queued_event(device) for _ in range(16)]  # all stay open side by side
    await kafka.send_many("commands.created", targets)
    for target in targets:
        await until(partial(fetch_status, db, target["id"]), what="targets stored")

    cases = poison_cases(device, targets[0]["id"])
    sent: list[Sent] = []
    valid_commands: list[str] = []
    valid_devices: list[str] = []
    acked: list[str] = []
    cancelled: list[str] = []
    spare = iter(targets)
    for name, raw, reason, what in cases:
        partition, offset = await send_raw(kafka, name, raw, device)
        sent.append(Sent(kafka.topic(name), partition, offset, raw, reason, what))
        # a valid message right behind it, on the same partition
        if name == "commands.created":
            good = queued_event(device)
            valid_commands.append(good["id"])
            await send_raw(kafka, name, compact(good), device)
        elif name == "devices":
            other = hex24()
            valid_devices.append(other)
            await send_raw(kafka, name, compact(device_event(other)), device)
        elif name == "device-acks":
            target_id = next(spare)["id"]
            acked.append(target_id)
            await send_raw(kafka, name, compact(ack_event(target_id, device, "RECEIVED")), device)
        else:
            target_id = next(spare)["id"]
            cancelled.append(target_id)
            await send_raw(kafka, name, compact({"commandId": target_id, "aosDevice": device}),
                           device)

    letters = await until(lambda: _letters_for(kafka, device, len(sent)), timeout=30,
                             what="every dead letter")
    by_place = {(d["topic"], d["partition"], d["offset"]): d for d in letters}
    assert len(by_place) == len(sent) == len(letters)
    for s in sent:
        letter = by_place.get((s.topic, s.partition, s.offset))
        assert letter is not None, f"no dead letter for {s.what} at {s.topic}/{s.offset}"
        assert letter["reason"] == s.reason, s.what
        assert letter["key"] == device
        assert letter["detail"], s.what
        assert _raw_of(letter) == s.raw, s.what
        assert letter["valueTruncated"] is False

    for cid in valid_commands:
        assert await fetch_status(db, cid) == "PENDING"
    for other in valid_devices:
        assert await db.fetchval("SELECT state FROM devices WHERE aos_device = $1",
                                 other) == "ACTIVE"
    for cid in acked:
        assert await until(partial(_is, db, cid, "RECEIVED"), what="ack applied")
    for cid in cancelled:
        assert await until(partial(_is, db, cid, "CANCEL"), what="cancel applied")

    expected = Counter((s.topic, s.reason) for s in sent)
    for (topic, reason), n in expected.items():
        value = service.metrics.registry.get_sample_value(
            "dispatcher_dead_letters_total", {"topic": topic, "reason": reason})
        assert value == n, (topic, reason)

    # still running: a new command is pushed
    fresh = hex24()
    await kafka.send("devices", device_event(fresh))
    cmd = command_event(fresh)
    await kafka.send("commands.created", cmd)
    await until(lambda: was_pushed(pushy, cmd["id"]), what="a push after the poison")


async def test_rejected_reset_password_does_not_leak_the_password(
        service: Runtime, kafka: Kafka) -> None:
    password = "Hunter2-very-secret-Pa55"
    device = hex24()
    bad = command_event(device, command="RESET_PASSWORD", aosDevice="not-a-device-id",
                        params={"newPassword": password, "lockNow": True})
    partition, offset = await send_raw(kafka, "commands.created", compact(bad), device)
    letters = await until(lambda: _letters_for(kafka, device, 1), what="the dead letter")

    letter = letters[0]
    assert (letter["partition"], letter["offset"]) == (partition, offset)
    assert letter["reason"] == "validation"
    assert password not in json.dumps(letter)
    value = json.loads(letter["value"])
    assert value["params"]["newPassword"] != password
    assert value["params"]["lockNow"] is True
    assert value["id"] == bad["id"]


async def _letters_for(kafka: Kafka, key: str, n: int) -> list[dict[str, Any]] | None:
    letters = [d for d in await kafka.read("dead-letter", timeout_s=0.3)
               if isinstance(d, dict) and d.get("key") == key]
    return letters if len(letters) >= n else None


def _raw_of(letter: dict[str, Any]) -> bytes:
    if letter["valueEncoding"] == "base64":
        return base64.b64decode(letter["value"])
    return str(letter["value"]).encode()


async def _is(db: asyncpg.Pool, command_id: str, status: str) -> bool:
    return await fetch_status(db, command_id) == status
