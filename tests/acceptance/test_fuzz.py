"""Fuzz against `dispatcher run`: no input, however malformed, stops a partition or the process.

Every input topic receives a corpus drawn by hypothesis (``tests/fuzz.py``: arbitrary
bytes and JSON trees, nesting up to 20,000 deep, huge numbers, NaN, invalid UTF-8, lone
surrogates, duplicate keys, valid events damaged one field at a time), all on the same
partition as a device whose ordinary traffic is published right behind it. A user sees:
the process still up and ready; every fuzzed record either applied (it happened to be
valid: the command or device is stored) or on ``mdm.dead-letter`` with its topic,
partition and offset, and with the reason the dispatcher's own parser gives; and the
ordinary records behind the corpus, on every topic, applied.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import asyncpg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from dispatcher.config import Settings
from dispatcher.events import (
    INPUT_MODELS,
    CampaignCreated,
    CancelRequest,
    CommandCreated,
    DeviceAck,
    DeviceState,
    parse,
)
from dispatcher.exceptions import InvalidEvent
from tests.support import fuzz
from tests.support.events import (
    ORG,
    ack_event,
    command_event,
    device_event,
    hex24,
    iso,
    queued_event,
)
from tests.support.figures import report
from tests.support.process import Service, pushed, reaches
from tests.support.wait import until

pytestmark = pytest.mark.acceptance

PER_TOPIC = 120
PUBLIC_KEY = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
MAX_EVENT_BYTES = Settings().max_event_bytes  # the service runs with the default


def bases() -> dict[str, dict[str, Any]]:
    """A valid event per topic, about a device of its own (so a survivor disturbs nothing)."""
    other = hex24()
    return {
        # notBefore and priority too: damaged, each is dead-lettered like any other field
        "commands.created": command_event(other, notBefore=iso(), priority="low"),
        # publicKey too: a damaged key must be dead-lettered like any other bad field
        "devices": device_event(other, publicKey=PUBLIC_KEY, pushProvider="pushy"),
        "device-acks": ack_event(hex24(), other, "DONE"),
        "commands.cancel": {"commandId": hex24(), "aosDevice": other, "at": iso()},
        # an enterprise of its own: a campaign valid by chance reaches no device
        "campaigns.created": {"id": hex24(), "organization": ORG, "aosEnterprise": hex24(),
                              "command": "REBOOT", "params": {}, "duration": 60,
                              "notBefore": iso(), "target": {"devices": [other]},
                              "waves": {"size": 2, "intervalS": 1, "maxErrorRate": 0.5}},
        "campaigns.cancel": {"campaignId": hex24(), "at": iso()},
    }


def local_reason(topic: str, raw: bytes) -> str | None:
    """What the dispatcher's parser says of ``raw``: a reason, or None when it is valid."""
    try:
        parse(INPUT_MODELS[topic], raw, MAX_EVENT_BYTES)
    except InvalidEvent as exc:
        return exc.reason
    return None


async def test_fuzzed_records_on_every_topic_are_applied_or_dead_lettered(
        service: Service) -> None:
    dev = hex24()
    await service.kafka.send("devices", device_event(dev))
    open_cmd, acked_cmd = queued_event(dev), queued_event(dev)
    for cmd in (open_cmd, acked_cmd):
        await service.kafka.send("commands.created", cmd)
        await until(functools.partial(pushed, service, cmd["id"]), what="the first pushes")

    sent: dict[tuple[str, int, int], tuple[str, bytes]] = {}
    assert service.kafka.producer is not None
    for name, base in bases().items():
        for raw in [fuzz.nested(5000), fuzz.nested(5000, "{"), json.dumps(base).encode(),
                    b'{"id": ' + fuzz.nested(5000, "{") + b"}",
                    *fuzz.corpus(fuzz.values(base), PER_TOPIC)]:
            md = await service.kafka.producer.send_and_wait(
                service.kafka.topic(name), raw, key=dev.encode())
            sent[(service.kafka.topic(name), md.partition, md.offset)] = (name, raw)

    # ordinary traffic behind the corpus, on every topic and the same partition
    new_dev = hex24()
    await service.kafka.send("devices", device_event(new_dev), key=dev)
    behind = command_event(dev)
    to_new = command_event(new_dev)
    await service.kafka.send("commands.created", behind)
    await service.kafka.send("commands.created", to_new, key=dev)
    await service.kafka.send("device-acks", ack_event(acked_cmd["id"], dev, "DONE"))
    await service.kafka.send("commands.cancel",
                             {"commandId": open_cmd["id"], "aosDevice": dev, "at": iso()})
    await reaches(service, acked_cmd["id"], "DONE", timeout=60)
    await reaches(service, open_cmd["id"], "CANCEL", timeout=60)
    await until(lambda: pushed(service, behind["id"]), timeout=60, what="the command behind")
    await until(lambda: pushed(service, to_new["id"]), timeout=60,
                what="a command to the device registered behind the corpus")

    expected_letters = {k: v for k, v in sent.items() if local_reason(v[0], v[1]) is not None}
    held = {k: v for k, v in sent.items()
            if k not in expected_letters and v[0] in ("device-acks", "commands.cancel")}
    unknown_campaigns = {k: v for k, v in sent.items()
                         if k not in expected_letters and v[0] == "campaigns.cancel"}

    async def letters() -> dict[tuple[str, int, int], dict[str, Any]] | None:
        found = {(d["topic"], d["partition"], d["offset"]): d
                 for d in await service.kafka.read("dead-letter", timeout_s=0.5)
                 if isinstance(d, dict) and d.get("key") == dev}
        wanted = set(expected_letters) | set(held) | set(unknown_campaigns)
        return found if wanted <= set(found) else None

    found = await until(letters, timeout=60, what="a dead letter for every invalid record")
    wrong = [(name, raw[:60], found[k]["reason"], local_reason(name, raw))
             for k, (name, raw) in expected_letters.items()
             if found[k]["reason"] != local_reason(name, raw)]
    assert not wrong, wrong
    assert all(found[k]["reason"] == "unknown_command" for k in held)
    assert all(found[k]["reason"] == "unknown_campaign" for k in unknown_campaigns)

    applied = {k: v for k, v in sent.items() if k not in found}
    conn = await asyncpg.connect(service.database_url)
    try:
        for (_, _, offset), (name, raw) in applied.items():
            event = parse(INPUT_MODELS[name], raw, MAX_EVENT_BYTES)
            if name == "commands.created":
                assert isinstance(event, CommandCreated)
                row = await conn.fetchrow("SELECT 1 FROM commands WHERE id = $1", event.id)
            elif name == "campaigns.created":
                assert isinstance(event, CampaignCreated)
                row = await conn.fetchrow("SELECT 1 FROM campaigns WHERE id = $1", event.id)
            else:
                assert isinstance(event, DeviceState | DeviceAck | CancelRequest)
                row = await conn.fetchrow("SELECT 1 FROM devices WHERE aos_device = $1",
                                          event.aosDevice)
            assert row is not None, (name, offset, raw[:200])
    finally:
        await conn.close()

    assert service.proc.returncode is None, service.log_tail()
    status, _ = await service.get("/readyz")
    assert status == 200
    reasons = sorted({d["reason"] for k, d in found.items() if k in sent})
    report(f"fuzz: {len(sent)} malformed records on {len(bases())} topics -> "
           f"{len(found)} dead-lettered "
           f"({', '.join(reasons)}), {len(applied)} valid by chance and applied; "
           "the process stayed up and the records behind them flowed")
