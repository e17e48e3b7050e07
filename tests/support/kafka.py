"""An outside client of the dispatcher's topics: produce events, read a topic from the start."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition


class Kafka:
    """Produce events and read topics from the beginning, as an outside client would."""

    def __init__(self, bootstrap: str, prefix: str,
                 security: dict[str, Any] | None = None) -> None:
        """``security``: aiokafka TLS/SASL keyword arguments (``kafka.client_security``)."""
        self.bootstrap = bootstrap
        self.prefix = prefix
        self.security = security or {}
        self.producer: AIOKafkaProducer | None = None

    def topic(self, name: str) -> str:
        return f"{self.prefix}{name}"

    async def start(self) -> None:
        self.producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all",
                                         enable_idempotence=False, linger_ms=2,
                                         **self.security)
        await self.producer.start()

    async def stop(self) -> None:
        if self.producer is not None:
            await self.producer.stop()

    async def send(self, name: str, value: Any, key: str | bytes | None = None) -> None:
        assert self.producer is not None
        raw = value if isinstance(value, bytes | type(None)) else json.dumps(value).encode()
        if key is None and isinstance(value, dict):
            key = value.get("aosDevice")
        kbytes = key.encode() if isinstance(key, str) else key
        await self.producer.send_and_wait(self.topic(name), raw, key=kbytes)

    async def send_many(self, name: str, values: list[Any]) -> None:
        assert self.producer is not None
        futures = []
        for value in values:
            key = value.get("aosDevice") if isinstance(value, dict) else None
            raw = json.dumps(value).encode() if isinstance(value, dict) else value
            futures.append(await self.producer.send(self.topic(name), raw,
                                                    key=key.encode() if key else None))
        await asyncio.gather(*futures)

    async def read(self, name: str, timeout_s: float = 1.0) -> list[Any]:
        """Every record of a topic so far (no consumer group), decoded from JSON when possible."""
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                                    **self.security)
        await consumer.start()
        try:
            parts = consumer.partitions_for_topic(self.topic(name))
            if not parts:
                await consumer._client.force_metadata_update()
                parts = consumer.partitions_for_topic(self.topic(name)) or set()
            tps = [TopicPartition(self.topic(name), p) for p in parts]
            if not tps:
                return []
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            out: list[Any] = []
            quiet_until = time.monotonic() + timeout_s
            while time.monotonic() < quiet_until:
                batch = await consumer.getmany(timeout_ms=100, max_records=5000)
                for records in batch.values():
                    quiet_until = time.monotonic() + 0.3
                    for r in records:
                        try:
                            out.append(json.loads(r.value))
                        except (ValueError, TypeError):
                            out.append(r.value)
            return out
        finally:
            await consumer.stop()
