"""Kafka plumbing: topic names, topic creation and the producer.

aiokafka errors are wrapped here: anything the broker may get over becomes
:class:`BrokerUnavailable` (retriable).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from dispatcher.config import Settings
from dispatcher.exceptions import BrokerUnavailable

log = logging.getLogger(__name__)

INPUTS = ("commands.created", "devices", "device-acks", "commands.cancel")
OUTPUTS = ("commands.status", "dead-letter")
COMPACTED = frozenset({"devices"})


def input_topics(settings: Settings) -> list[str]:
    """Full names of the topics the dispatcher consumes."""
    return [settings.topic(name) for name in INPUTS]


def all_topics(settings: Settings) -> list[str]:
    """Full names of every topic the dispatcher uses."""
    return [settings.topic(name) for name in (*INPUTS, *OUTPUTS)]


async def ensure_topics(settings: Settings, replication: int = 1) -> list[str]:
    """Create missing topics (``devices`` compacted); return the ones created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(
                name=settings.topic(name),
                num_partitions=settings.topic_partitions,
                replication_factor=replication,
                topic_configs={"cleanup.policy": "compact"} if name in COMPACTED else {},
            )
            for name in (*INPUTS, *OUTPUTS)
            if settings.topic(name) not in existing
        ]
        if wanted:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(wanted)
        return [t.name for t in wanted]
    except KafkaError as exc:
        raise BrokerUnavailable(f"cannot create topics: {exc}") from exc
    finally:
        await admin.close()


class Producer:
    """An acks=all producer that waits for every record it sends."""

    def __init__(self, settings: Settings) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap,
            acks="all",
            enable_idempotence=settings.kafka_enable_idempotence,
            linger_ms=2,
            max_batch_size=256 * 1024,
            max_request_size=2 * 1024 * 1024,
            request_timeout_ms=15000,
        )

    async def start(self) -> None:
        """Connect; raise BrokerUnavailable when the broker cannot be reached."""
        try:
            await self._producer.start()
        except KafkaError as exc:
            raise BrokerUnavailable(f"cannot start the producer: {exc}") from exc

    async def stop(self) -> None:
        """Flush and close."""
        await self._producer.stop()

    async def send_all(
        self, topic: str, records: Sequence[tuple[bytes | None, bytes]]
    ) -> None:
        """Send records and wait until the broker has every one of them."""
        if not records:
            return
        try:
            futures = [
                await self._producer.send(topic, value=value, key=key) for key, value in records
            ]
            await asyncio.gather(*futures)
        except KafkaError as exc:
            raise BrokerUnavailable(f"cannot produce to {topic}: {exc}") from exc

    async def ping(self) -> bool:
        """Whether the broker answers a metadata request."""
        try:
            await asyncio.wait_for(self._producer.client.fetch_all_metadata(), timeout=3)
        except (KafkaError, TimeoutError, OSError):
            return False
        return True
