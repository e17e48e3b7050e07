"""Relay of ``mdm.commands.status`` (and ``mdm.campaigns.status``): the transactional outbox,
drained to Kafka.

Every transition's status event is written into ``status_outbox`` in the same
transaction that moves the command (migrations 010 and 011: a trigger for new rows, the
moving statement itself for a change). The relay takes rows in order (one relay at a
time, see ``take_outbox``), sends them, waits for the broker's acknowledgement and only
then deletes them in the same transaction. A crash before the delete sends them again:
status events are at-least-once, never lost.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Mapping

from dispatcher.aio import Backoff, retrying, wait_any
from dispatcher.exceptions import BrokerUnavailable, StoreUnavailable
from dispatcher.kafka import Producer
from dispatcher.metrics import Metrics
from dispatcher.store import Store

log = logging.getLogger(__name__)


class OutboxRelay:
    """Publishes status events in commit order, as soon as they are committed."""

    def __init__(
        self, store: Store, producer: Producer, topic: str, metrics: Metrics, batch: int = 1000,
        topics: Mapping[str, str] | None = None,
    ) -> None:
        self.store = store
        self.producer = producer
        self.topic = topic
        self.topics = dict(topics or {})
        """Full names of the other topics an outbox row may name (``campaigns.status``)."""
        self.metrics = metrics
        self.batch = batch
        self.wake = asyncio.Event()

    async def relay_once(self) -> int:
        """Send and delete one batch; return how many events went out."""
        async with self.store.transaction() as tx:
            rows = await tx.take_outbox(self.batch)
            if not rows:
                return 0
            for topic, run in itertools.groupby(rows, key=lambda r: r.topic):
                await self.producer.send_all(
                    self.topics[topic] if topic else self.topic,
                    [(r.aos_device.encode(), r.payload.encode()) for r in run])
            await tx.delete_outbox([r.seq for r in rows])
        self.metrics.status_published.inc(len(rows))
        return len(rows)

    async def run(self, stop: asyncio.Event, poll_s: float = 0.5) -> None:
        """Relay until ``stop``; woken early by :attr:`wake` after each committed batch."""
        while not stop.is_set():
            try:
                sent = await retrying(self.relay_once, stop,
                                      retry_on=(StoreUnavailable, BrokerUnavailable),
                                      backoff=Backoff(0.2, 5.0), on_retry=_relay_failed)
            except (StoreUnavailable, BrokerUnavailable):
                return  # stopping (retrying gives up only then)
            if sent >= self.batch:
                continue
            self.wake.clear()
            await wait_any(stop, self.wake, timeout_s=poll_s)



def _relay_failed(exc: BaseException, attempt: int, delay: float) -> None:
    log.warning("status relay failed, retrying", extra={"error": str(exc)[:200]})
