"""A valid batch is made durable in one transaction, whatever its shape.

A batch that the store rejects is replayed record by record (so one bad record cannot
block the partition). That fallback is correct but about fifty times slower, so a valid
batch must never take it: this guards the bulk statements themselves.

Only PostgreSQL's rejection of the data (``StoreRejected``) isolates and dead-letters an
input; an error of the code propagates and dead-letters nothing, so good input is never
lost to a bug: the batch is replayed once the code is fixed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from dispatcher import ingest
from dispatcher.config import Settings
from dispatcher.consumer import BatchProcessor
from dispatcher.deadletter import DeadLetters, Source
from dispatcher.exceptions import StoreUnavailable
from dispatcher.kafka import Producer, ensure_topics
from dispatcher.metrics import Metrics
from dispatcher.secretbox import SecretBox, generate_keys
from dispatcher.store import Store
from tests.support.events import ack_event, command_event, hex24
from tests.support.wait import wait_for


@pytest.fixture(scope="module")
async def processor(settings: Settings) -> AsyncIterator[BatchProcessor]:
    await ensure_topics(settings)
    store = await Store.connect(settings.database_url)
    producer = Producer(settings)
    await producer.start()
    metrics = Metrics()
    letters = DeadLetters(producer, settings.topic("dead-letter"), metrics)
    yield BatchProcessor(settings, store, letters, metrics, SecretBox(generate_keys()),
                         lambda fx: None)
    await producer.stop()
    await store.close()


def records(topic: str, events: list[dict[str, Any]]) -> list[Source]:
    return [Source(topic, 0, i, e["aosDevice"].encode(), json.dumps(e).encode(), 0)
            for i, e in enumerate(events)]


async def test_a_batch_of_several_acks_per_command_is_one_write(
        processor: BatchProcessor, settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    devices = [hex24() for _ in range(20)]
    cmds = [command_event(d, command="CLEAR_APP_DATA", params={"packageName": "com.example"})
            for d in devices for _ in range(5)]  # not superseded by their own type
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


def dead_letters(processor: BatchProcessor, topic: str, reason: str) -> float:
    value = processor.metrics.registry.get_sample_value(
        "dispatcher_dead_letters_total", {"topic": topic, "reason": reason})
    return value or 0.0


async def stored(settings: Settings, ids: list[str]) -> set[str]:
    conn = await asyncpg.connect(settings.database_url)
    try:
        rows = await conn.fetch("SELECT id FROM commands WHERE id = ANY($1)", ids)
    finally:
        await conn.close()
    return {r["id"] for r in rows}


async def test_a_rejected_input_is_isolated_and_dead_lettered(
        processor: BatchProcessor, settings: Settings) -> None:
    topic = settings.topic("commands.created")
    cmds = [command_event(hex24()) for _ in range(3)]
    poison = cmds[1]["id"]
    conn = await asyncpg.connect(settings.database_url)
    try:  # PostgreSQL itself refuses this one input (a check violation)
        await conn.execute("ALTER TABLE commands ADD CONSTRAINT no_poison"
                           f" CHECK (id <> '{poison}') NOT VALID")
        before = dead_letters(processor, topic, "store_rejected")
        await processor.process(records(topic, cmds))
    finally:
        await conn.execute("ALTER TABLE commands DROP CONSTRAINT no_poison")
        await conn.close()
    assert await stored(settings, [c["id"] for c in cmds]) == {cmds[0]["id"], cmds[2]["id"]}
    assert dead_letters(processor, topic, "store_rejected") == before + 1


async def test_a_programming_error_is_not_dead_lettered(
        processor: BatchProcessor, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    topic = settings.topic("commands.created")
    cmds = [command_event(hex24()) for _ in range(2)]
    apply_created = ingest.apply_created

    async def broken(*args: object, **kwargs: object) -> None:
        raise TypeError("a bug in the code, not in the input")

    monkeypatch.setattr(ingest, "apply_created", broken)
    before = dead_letters(processor, topic, "store_rejected")
    with pytest.raises(TypeError, match="a bug in the code"):
        await processor.process(records(topic, cmds))
    assert dead_letters(processor, topic, "store_rejected") == before
    assert await stored(settings, [c["id"] for c in cmds]) == set()
    # the code fixed, the same batch replayed: nothing was lost
    monkeypatch.setattr(ingest, "apply_created", apply_created)
    await processor.process(records(topic, cmds))
    assert await stored(settings, [c["id"] for c in cmds]) == {c["id"] for c in cmds}


async def test_a_stop_ends_the_retries_of_a_batch_at_once(
        processor: BatchProcessor, settings: Settings) -> None:
    store = await Store.connect(settings.database_url)
    await store.close()  # the database is gone for this processor: every write fails
    stop = asyncio.Event()
    processor = BatchProcessor(settings, store, processor.dead_letters, Metrics(),
                               SecretBox(generate_keys()), lambda fx: None, stop=stop)
    topic = settings.topic("commands.created")
    writing = asyncio.create_task(processor.process(records(topic, [command_event(hex24())])))
    await wait_for(lambda: _retried(processor), what="a retry")
    stop.set()
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        await asyncio.wait_for(writing, timeout=10)
    assert time.monotonic() - started < 1, "the retry did not stop promptly"


async def _retried(processor: BatchProcessor) -> bool:
    up = processor.metrics.registry.get_sample_value("dispatcher_dependency_up",
                                                     {"dependency": "postgres"})
    return up == 0
