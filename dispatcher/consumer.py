"""The input stream: one consumer group over the input topics, batch by batch.

Offset rule: an offset is committed only after everything before it is durable.
Each ``getmany`` batch is parsed, written to PostgreSQL in one transaction, its dead
letters are acknowledged by the broker, and only then are the batch's offsets
committed (the next offset of each partition). A crash anywhere before the commit
replays the batch; every write is idempotent, so a replay changes nothing twice.

Nothing blocks a partition: an input that cannot be parsed (however malformed: deep
nesting is refused before parsing, see :mod:`dispatcher.safejson`), or that the database
rejects (:class:`StoreRejected`), is dead-lettered with its reason and the stream moves
on. When PostgreSQL or the broker is unavailable the batch is retried with backoff,
offsets stay where they are, and ``/readyz`` says so. Any other error while writing is
a fault of the code, not of the input: it is never dead-lettered (that would lose good
input); it propagates, the batch stays uncommitted and the process stops (``app.py``)
to be restarted.

Why aiokafka and not faust-streaming: see the README (measured on the embedded broker:
faust's ``take_events`` acknowledges a batch in a ``finally`` even when the agent body
failed or was cancelled, which would commit offsets of work that never became durable).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import ConsumerRecord

from dispatcher import acks, campaigns, ingest
from dispatcher.aio import Backoff, retrying
from dispatcher.config import Settings
from dispatcher.deadletter import DeadLetters, Source
from dispatcher.effects import Effects
from dispatcher.events import INPUT_MODELS, parse
from dispatcher.exceptions import (
    BrokerUnavailable,
    InvalidEvent,
    StoreRejected,
    StoreUnavailable,
)
from dispatcher.kafka import client_security, input_topics, unavailable
from dispatcher.metrics import Metrics
from dispatcher.secretbox import SecretBox
from dispatcher.store import Store

log = logging.getLogger(__name__)


class Parsed:
    """One batch's valid inputs by kind, and the invalid ones with their reasons."""

    def __init__(self) -> None:
        self.by_kind: dict[str, list[tuple[Any, Source]]] = defaultdict(list)
        self.sources: list[Source] = []


class BatchProcessor:
    """Makes a batch of input records durable; see the module docstring for the rules."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        dead_letters: DeadLetters,
        metrics: Metrics,
        box: SecretBox,
        on_effects: Callable[[Effects], None],
        *,
        stop: asyncio.Event | None = None,
    ) -> None:
        self.settings = settings
        self.stop = stop or asyncio.Event()
        """Set on shutdown: retries end, and the batch in progress is not committed."""
        self.store = store
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.box = box
        self.on_effects = on_effects
        self._kinds = {settings.topic(name): name for name in INPUT_MODELS}

    async def process(self, records: list[Source]) -> None:
        """Make a batch durable: parse, write, dead-letter, count. Retries transient failures."""
        started = time.monotonic()
        fx = Effects()
        parsed = self._parse(records, fx)
        await self._write_resilient(parsed, fx)
        await self.dead_letters.publish(fx.dead)
        self.metrics.batch_duration.observe(time.monotonic() - started)
        self.on_effects(fx)

    def _parse(self, records: list[Source], fx: Effects) -> Parsed:
        parsed = Parsed()
        for source in records:
            kind = self._kinds[source.topic]
            try:
                event = parse(INPUT_MODELS[kind], source.value, self.settings.max_event_bytes)
            except InvalidEvent as exc:
                fx.reject(source, exc.reason, exc.detail)
                continue
            except Exception as exc:  # a parser bug must not stop the partition on every replica
                log.exception("an input could not be parsed; dead-lettered", extra={
                    "topic": source.topic, "partition": source.partition,
                    "offset": source.offset})
                fx.reject(source, "parse_failed", f"{type(exc).__name__}: {exc}"[:300])
                continue
            parsed.by_kind[kind].append((event, source))
            parsed.sources.append(source)
        return parsed

    async def _write_resilient(self, parsed: Parsed, fx: Effects) -> None:
        """Write the batch; on a data error, write record by record and dead-letter the culprit."""
        try:
            await self._retrying(lambda: self._write(parsed, fx))
        except StoreRejected as exc:  # a rejection of this data: isolate the culprit
            log.warning("a batch was rejected; writing it record by record", extra={
                "records": len(parsed.sources), "error": f"{type(exc).__name__}: {exc}"[:300]})
            if len(parsed.sources) <= 1:
                for source in parsed.sources:
                    log.exception("store rejected an input", extra={"topic": source.topic,
                                  "partition": source.partition, "offset": source.offset})
                    fx.reject(source, "store_rejected", str(exc)[:500])
                return
            for kind, items in parsed.by_kind.items():
                for item in items:
                    single = Parsed()
                    single.by_kind[kind].append(item)
                    single.sources.append(item[1])
                    await self._write_resilient(single, fx)

    async def _write(self, parsed: Parsed, fx: Effects) -> None:
        attempt = Effects()
        async with self.store.transaction() as tx:
            await ingest.apply_devices(tx, parsed.by_kind["devices"], attempt)
            await ingest.apply_created(
                tx, parsed.by_kind["commands.created"], attempt,
                self.settings.default_duration_s, self.box,
            )
            await ingest.apply_cancels(tx, parsed.by_kind["commands.cancel"], attempt)
            await acks.apply_acks(tx, parsed.by_kind["device-acks"], attempt)
            await campaigns.apply_created(
                tx, parsed.by_kind["campaigns.created"], attempt,
                self.settings.default_duration_s, self.box)
            await campaigns.apply_cancels(tx, parsed.by_kind["campaigns.cancel"], attempt)
            await ingest.wake_freed(tx, attempt)
        fx.absorb(attempt)

    async def _retrying(self, work: Callable[[], Awaitable[None]]) -> None:
        def down(exc: BaseException, attempt: int, delay: float) -> None:
            self.metrics.dependency_up.labels("postgres").set(0)
            log.warning("database unavailable, retrying", extra={
                "error": str(exc)[:200], "retry_in_s": round(delay, 2)})

        await retrying(work, self.stop, retry_on=StoreUnavailable, backoff=Backoff(0.2, 5.0),
                       on_retry=down)
        self.metrics.dependency_up.labels("postgres").set(1)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Waits for the batch in progress before partitions are handed to another member."""

    def __init__(self, lock: asyncio.Lock, metrics: Metrics) -> None:
        self.lock = lock
        self.metrics = metrics

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        async with self.lock:
            for tp in revoked:
                with contextlib.suppress(KeyError):
                    self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        log.info("partitions assigned", extra={"partitions": [f"{t.topic}/{t.partition}"
                                                            for t in assigned]})


def _kafka_unreachable(exc: BaseException, attempt: int, delay: float) -> None:
    log.warning("cannot reach Kafka, retrying", extra={"error": str(exc)})


def _client_failed(exc: BaseException, attempt: int, delay: float) -> None:
    log.warning("the Kafka consumer failed; replacing it", extra={
        "error": str(exc), "attempt": attempt, "retry_in_s": round(delay, 2)})


class StreamConsumer:
    """The consume -> process -> commit loop."""

    def __init__(self, settings: Settings, processor: BatchProcessor, metrics: Metrics) -> None:
        self.settings = settings
        self.processor = processor
        self.metrics = metrics
        self.consumer: AIOKafkaConsumer | None = None
        self.assigned = False
        self._lock = asyncio.Lock()

    def _make_consumer(self) -> AIOKafkaConsumer:
        s = self.settings
        return AIOKafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap,
            **client_security(s),
            group_id=s.consumer_group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=s.kafka_session_timeout_ms,
            heartbeat_interval_ms=s.kafka_heartbeat_interval_ms,
            rebalance_timeout_ms=s.kafka_rebalance_timeout_ms,
            max_poll_interval_ms=max(300000, s.kafka_rebalance_timeout_ms),
            fetch_max_bytes=16 * 1024 * 1024,
            fetch_max_wait_ms=50,  # a command waits at most this long in the broker
            max_partition_fetch_bytes=4 * 1024 * 1024,
            metadata_max_age_ms=30000,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; commit each batch after it is durable.

        A client that fails beneath the loop is closed and replaced after a backoff.
        aiokafka's group coordinator ends for good on an error it does not expect (seen
        during a broker cut: a transport closed in the middle of a coordinator lookup);
        from then on every ``getmany`` raises. The new client rejoins the group and
        consumes again what the old one had not committed.
        """
        try:
            await retrying(partial(self._consume, stop), stop, retry_on=BrokerUnavailable,
                           backoff=Backoff(0.5, 10.0), on_retry=_client_failed)
        except BrokerUnavailable:  # raised by retrying() only once stop is set
            log.info("stopped while the Kafka consumer was unavailable")

    async def _consume(self, stop: asyncio.Event) -> None:
        consumer = self._make_consumer()
        self.consumer = consumer
        await self._start(consumer, stop)
        try:
            consumer.subscribe(input_topics(self.settings),
                               listener=_Rebalance(self._lock, self.metrics))
            last_lag = 0.0
            while not stop.is_set():
                batches = await self._fetch(consumer)
                self.assigned = bool(consumer.assignment())
                if batches and not await self._handle_unless_stopped(consumer, batches, stop):
                    break
                if time.monotonic() - last_lag > 2:
                    last_lag = time.monotonic()
                    await self._report_lag(consumer)
        finally:
            self.consumer = None
            try:
                await consumer.stop()
            except Exception as exc:  # a broken client may fail to close; it is dropped anyway
                log.warning("the Kafka consumer did not close cleanly",
                            extra={"error": repr(exc)[:200]})

    async def _fetch(self, consumer: AIOKafkaConsumer) -> dict[TopicPartition,
                                                               list[ConsumerRecord]]:
        try:
            batches: dict[TopicPartition, list[ConsumerRecord]] = await consumer.getmany(
                timeout_ms=200, max_records=self.settings.batch_max)
        except Exception as exc:  # the client itself is broken: run() replaces it
            raise BrokerUnavailable(f"the Kafka consumer failed: {exc!r}"[:300]) from exc
        return batches

    async def _start(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> None:
        async def start() -> None:
            try:
                await consumer.start()
            except Exception as exc:  # any failure to start: see kafka.unavailable()
                raise await unavailable(self.settings, "cannot start the consumer", exc) from exc

        await retrying(start, stop, retry_on=BrokerUnavailable, backoff=Backoff(0.5, 10.0),
                       on_retry=_kafka_unreachable)

    async def _handle_unless_stopped(
        self, consumer: AIOKafkaConsumer, batches: dict[TopicPartition, list[ConsumerRecord]],
        stop: asyncio.Event,
    ) -> bool:
        """Handle a batch; False when a stop ended its retries (it is left uncommitted)."""
        try:
            async with self._lock:
                await self._handle(consumer, batches)
        except (StoreUnavailable, BrokerUnavailable):
            if not stop.is_set():
                raise
            log.info("stopping with a batch not yet durable; it is consumed again at the start")
            return False
        return True

    async def _handle(
        self, consumer: AIOKafkaConsumer, batches: dict[TopicPartition, list[ConsumerRecord]]
    ) -> None:
        records = [
            Source(r.topic, r.partition, r.offset, r.key, r.value, r.timestamp)
            for tp_records in batches.values()
            for r in tp_records
        ]
        await self.processor.process(records)
        offsets = {tp: recs[-1].offset + 1 for tp, recs in batches.items() if recs}
        try:
            await consumer.commit(offsets)
        except CommitFailedError as exc:
            # The partitions moved to another member mid-batch; it replays them, idempotently.
            log.warning("offset commit refused after a rebalance", extra={"error": str(exc)})
        except KafkaError as exc:
            log.warning("offset commit failed; the batch will be replayed", extra={
                "error": str(exc)})

    async def _report_lag(self, consumer: AIOKafkaConsumer) -> None:
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is None:
                continue
            try:
                position = await consumer.position(tp)
            except KafkaError:
                continue
            self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(
                max(high - position, 0))
