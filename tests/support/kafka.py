"""Test helpers: event factories, a topic reader, waiting for a condition with a deadline."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

T = TypeVar("T")


def hex24() -> str:
    return secrets.token_hex(12)


def iso(dt: datetime | None = None) -> str:
    return (dt or datetime.now(UTC)).isoformat().replace("+00:00", "Z")


ORG = "5f1e2d3c4b5a69788796a5b4"
ENTERPRISE = "5f1e2d3c4b5a69788796a5b5"


def command_event(device: str, **over: Any) -> dict[str, Any]:
    event = {"id": hex24(), "organization": ORG, "aosEnterprise": ENTERPRISE,
             "aosDevice": device, "mdmUser": None, "command": "LOCK", "params": {},
             "duration": 600, "createdAt": iso()}
    event.update(over)
    return event


def device_event(device: str, token: str | None = "tok-", state: str = "ACTIVE",
                 **over: Any) -> dict[str, Any]:
    event = {"aosDevice": device, "organization": ORG, "aosEnterprise": ENTERPRISE,
             "mdmUser": None, "pushToken": (token + device) if token == "tok-" else token,
             "state": state, "updatedAt": iso()}
    event.update(over)
    return event


def ack_event(command_id: str, device: str, status: str, at: datetime | None = None,
              **over: Any) -> dict[str, Any]:
    event = {"commandId": command_id, "aosDevice": device, "status": status,
             "at": iso(at), "data": {}}
    event.update(over)
    return event


async def wait_for(check: Callable[[], Awaitable[T]], timeout: float = 30.0,
                   interval: float = 0.1, what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last={last!r}")


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


async def until(check: Callable[[], Awaitable[T | None]], timeout: float = 30.0,
                what: str = "condition") -> T:
    """:func:`wait_for` typed for checks that answer ``None`` until they find something."""
    found = await wait_for(check, timeout=timeout, what=what)
    assert found is not None
    return found


def overdue(seconds: int = 3600) -> str:
    return iso(datetime.now(UTC) - timedelta(seconds=seconds))


FIGURES: list[str] = []
"""What the fault, crash and replica tests measured, shown at the end of the run."""


def report(text: str) -> None:
    """Print a measured figure and keep it for the run's summary (``-q`` hides prints)."""
    FIGURES.append(text.strip())
    print(text)
