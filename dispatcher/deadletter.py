"""Dead letters: every input the dispatcher cannot accept, with the reason and the raw value.

The raw value is kept so nothing is lost, with secrets redacted (a reset password in a
rejected command must not leak through the dead-letter topic). Values that are not
UTF-8 are carried as base64; values past :data:`VALUE_MAX_BYTES` are truncated.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from dispatcher import safejson
from dispatcher.aio import Backoff, retrying
from dispatcher.events import DeadLetter
from dispatcher.exceptions import BrokerUnavailable
from dispatcher.secretbox import redact, redact_raw

if TYPE_CHECKING:
    from dispatcher.kafka import Producer
    from dispatcher.metrics import Metrics

log = logging.getLogger(__name__)

VALUE_MAX_BYTES = 512 * 1024


@dataclass(frozen=True, slots=True)
class Source:
    """Where an input came from: enough to find it again and to dead-letter it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None = None

    @property
    def seen_at(self) -> datetime:
        """The broker's timestamp of the record (stable across redeliveries), else now."""
        if self.timestamp_ms and self.timestamp_ms > 0:
            return datetime.fromtimestamp(self.timestamp_ms / 1000, tz=UTC)
        return datetime.now(UTC)

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe form (redacted value) kept with held events."""
        letter = build(self, "held", "")
        kept = letter.model_dump(mode="json", exclude={"reason", "detail", "at"})
        kept["timestampMs"] = self.timestamp_ms
        return kept

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Source:
        """Rebuild what :meth:`to_json` kept (the value stays redacted)."""
        value = data.get("value")
        raw = None
        if value is not None:
            is_b64 = data.get("valueEncoding") == "base64"
            raw = base64.b64decode(value) if is_b64 else str(value).encode()
        key = data.get("key")
        return cls(
            topic=data["topic"],
            partition=int(data["partition"]),
            offset=int(data["offset"]),
            key=key.encode() if isinstance(key, str) else None,
            value=raw,
            timestamp_ms=data.get("timestampMs"),
        )


def build(source: Source, reason: str, detail: str) -> DeadLetter:
    """The dead letter of one input."""
    value: str | None = None
    encoding = "utf-8"
    truncated = False
    if source.value is not None:
        raw = _redacted(source.value)
        if len(raw) > VALUE_MAX_BYTES:
            raw, truncated = raw[:VALUE_MAX_BYTES], True
        try:
            value = raw.decode()
        except UnicodeDecodeError:
            value, encoding = base64.b64encode(raw).decode(), "base64"
    return DeadLetter(
        reason=reason,
        detail=detail,
        topic=source.topic,
        partition=source.partition,
        offset=source.offset,
        key=source.key.decode(errors="replace") if source.key is not None else None,
        value=value,
        valueEncoding=encoding,
        valueTruncated=truncated,
        at=datetime.now(UTC),
    )


def _redacted(raw: bytes) -> bytes:
    """The raw value byte for byte, unless it holds a secret (then redacted).

    Cannot fail: a value that does not parse (too deep, not JSON, not UTF-8) is redacted
    as text, which walks nothing recursively.
    """
    try:
        decoded = safejson.loads(raw)
    except ValueError:
        return redact_raw(raw)
    return raw if redact(decoded) == decoded else redact_raw(raw)


def encode(letter: DeadLetter) -> bytes:
    """The Kafka value of a dead letter."""
    return letter.model_dump_json().encode()


class DeadLetters:
    """The one dead-letter publisher: the stream consumer's rejects and the timer's
    overdue held events go out through it (``app.py`` builds it and hands it to both).

    :meth:`publish` waits until the broker has every letter (retrying while it is away,
    until ``stop``) and then counts them; :meth:`send` tries once, for a caller whose
    transaction rolls back when the broker does not take them, and :meth:`count` counts
    them once that transaction has committed.
    """

    def __init__(self, producer: Producer, topic: str, metrics: Metrics,
                 stop: asyncio.Event | None = None) -> None:
        self.producer = producer
        self.topic = topic
        self.metrics = metrics
        self.stop = stop

    async def send(self, letters: Sequence[tuple[Source, DeadLetter]]) -> None:
        """Send once; raise :class:`BrokerUnavailable` when the broker does not take them."""
        await self.producer.send_all(
            self.topic, [(source.key, encode(letter)) for source, letter in letters])

    async def publish(self, letters: Sequence[tuple[Source, DeadLetter]]) -> None:
        """Send and count; wait until the broker has them (retrying until ``stop``)."""
        if not letters:
            return
        await retrying(lambda: self.send(letters), self.stop, retry_on=BrokerUnavailable,
                       backoff=Backoff(0.2, 5.0), on_retry=_publish_failed)
        self.count(letters)

    def count(self, letters: Sequence[tuple[Source, DeadLetter]]) -> None:
        """Count (and log) dead letters the broker has."""
        for source, letter in letters:
            self.metrics.dead_letters.labels(source.topic, letter.reason).inc()
            log.info("dead-lettered an input", extra={
                "topic": source.topic, "partition": source.partition, "offset": source.offset,
                "reason": letter.reason, "detail": letter.detail[:300]})


def _publish_failed(exc: BaseException, attempt: int, delay: float) -> None:
    log.warning("cannot publish dead letters, retrying", extra={"error": str(exc)})
