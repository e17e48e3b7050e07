"""A valid batch is made durable in one transaction, whatever its shape.

A batch that the store rejects is replayed record by record (so one bad record cannot
block the partition). That fallback is correct but about fifty times slower, so a valid
batch must never take it: this guards the bulk statements themselves.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

import asyncpg
import pytest

from dispatcher.config import Settings
from dispatcher.consumer import BatchProcessor
from dispatcher.deadletter import Source
from dispatcher.kafka import Producer, ensure_topics
from dispatcher.metrics import Metrics
from dispatcher.secretbox import SecretBox, generate_keys
from dispatcher.store import Store
from tests.helpers import ack_event, command_event, hex24


@pytest.fixture(scope="module")
async def processor(settings: Settings) -> AsyncIterator[BatchProcessor]:
    await ensure_topics(settings)
    store = await Store.connect(settings.database_url)
    producer = Producer(settings)
    await producer.start()
    yield BatchProcessor(settings, store, producer, Metrics(), SecretBox(generate_keys()),
                         lambda fx: None)
    await producer.stop()
    await store.close()


def records(topic: str, events: list[dict]) -> list[Source]:
    return [Source(topic, 0, i, e["aosDevice"].encode(), json.dumps(e).encode(), 0)
            for i, e in enumerate(events)]


async def test_a_batch_of_several_acks_per_command_is_one_write(
        processor: BatchProcessor, settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    devices = [hex24() for _ in range(20)]
    cmds = [command_event(d) for d in devices for _ in range(5)]
    acks = [ack_event(c["id"], c["aosDevice"], s) for c in cmds
            for s in ("RECEIVED", "DONE", "RECEIVED")]
    with caplog.at_level(logging.WARNING, logger="dispatcher.consumer"):
        await processor.process(records(settings.topic("commands.created"), cmds))
        await processor.process(records(settings.topic("device-acks"), acks))
    assert not [r for r in caplog.records if "record by record" in r.getMessage()]
    conn = await asyncpg.connect(settings.database_url)
    try:
        rows = await conn.fetch("SELECT status, jsonb_array_length(results) AS n FROM commands"
                                " WHERE id = ANY($1)", [c["id"] for c in cmds])
    finally:
        await conn.close()
    assert {(r["status"], r["n"]) for r in rows} == {("DONE", 3)}
