"""Kafka plumbing: topic names, client security, topic creation and the producer.

Every Kafka client of the process (stream consumer, producer, admin, `dispatcher send`,
`dispatcher watch`) takes its TLS and SASL arguments from :func:`client_security`, the one
place that reads the ``DISPATCHER_KAFKA_SECURITY_PROTOCOL``/``_SSL_*``/``_SASL_*`` settings.

aiokafka errors are wrapped here: anything the broker may get over becomes
:class:`BrokerUnavailable` (retriable). aiokafka reports a failed bootstrap as "Unable to
bootstrap"; :func:`explain` asks the first broker directly so the log line says what
failed (a TLS handshake, a SASL login).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.helpers import create_ssl_context

from dispatcher.config import Settings
from dispatcher.exceptions import BrokerUnavailable, ConfigError

log = logging.getLogger(__name__)

INPUTS = ("commands.created", "devices", "device-acks", "commands.cancel", "campaigns.created",
          "campaigns.cancel")
OUTPUTS = ("commands.status", "dead-letter", "campaigns.status")
COMPACTED = frozenset({"devices"})


def input_topics(settings: Settings) -> list[str]:
    """Full names of the topics the dispatcher consumes."""
    return [settings.topic(name) for name in INPUTS]


def all_topics(settings: Settings) -> list[str]:
    """Full names of every topic the dispatcher uses."""
    return [settings.topic(name) for name in (*INPUTS, *OUTPUTS)]


def client_security(settings: Settings) -> dict[str, Any]:
    """The TLS and SASL keyword arguments of every aiokafka client, from the settings.

    ``SSL``/``SASL_SSL`` verify the brokers against ``DISPATCHER_KAFKA_SSL_CAFILE`` (the
    system CAs when unset) and present a client certificate when one is set (mutual TLS).
    A file that cannot be read is a :class:`ConfigError` naming its variable.
    """
    protocol = settings.kafka_security_protocol
    kwargs: dict[str, Any] = {"security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        kwargs["ssl_context"] = _ssl_context(settings)
    if protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        kwargs["sasl_mechanism"] = settings.kafka_sasl_mechanism
        kwargs["sasl_plain_username"] = settings.kafka_sasl_username
        kwargs["sasl_plain_password"] = settings.kafka_sasl_password
    return kwargs


def _ssl_context(settings: Settings) -> ssl.SSLContext:
    files = {"DISPATCHER_KAFKA_SSL_CAFILE": settings.kafka_ssl_cafile,
             "DISPATCHER_KAFKA_SSL_CERTFILE": settings.kafka_ssl_certfile,
             "DISPATCHER_KAFKA_SSL_KEYFILE": settings.kafka_ssl_keyfile}
    for name, path in files.items():
        if path and not Path(path).is_file():
            raise ConfigError(f"{name}={path!r}: no such file")
    try:
        context: ssl.SSLContext = create_ssl_context(
            cafile=settings.kafka_ssl_cafile or None,
            certfile=settings.kafka_ssl_certfile or None,
            keyfile=settings.kafka_ssl_keyfile or None)
    except (ssl.SSLError, OSError) as exc:
        named = ", ".join(name for name, path in files.items() if path)
        raise ConfigError(f"cannot load the Kafka TLS files ({named}): {exc}") from exc
    return context


async def explain(settings: Settings, timeout_s: float = 5.0) -> str:
    """Why the first bootstrap server refuses us, in words (a TLS or SASL failure), or ""."""
    host, _, port = settings.kafka_bootstrap.split(",")[0].strip().rpartition(":")
    where = f"{host}:{port}"
    try:
        conn = await asyncio.wait_for(create_conn(
            host, int(port), request_timeout_ms=int(timeout_s * 1000),
            **client_security(settings)), timeout=timeout_s)
    except ssl.SSLError as exc:
        return f"TLS handshake with {where} failed: {exc}"
    except (OSError, TimeoutError) as exc:
        return f"cannot connect to {where}: {type(exc).__name__}: {exc}"
    except Exception as exc:  # aiokafka's SCRAM raises KeyError on a refusal
        shown = str(exc) if isinstance(exc, KafkaError) else f"{type(exc).__name__}: {exc}"
        if settings.kafka_security_protocol.startswith("SASL_"):
            return (f"SASL {settings.kafka_sasl_mechanism} login as "
                    f"{settings.kafka_sasl_username!r} at {where} failed: {shown}")
        return f"{where}: {shown}"
    conn.close()
    return ""


async def unavailable(settings: Settings, what: str, exc: BaseException) -> BrokerUnavailable:
    """A :class:`BrokerUnavailable` whose message says what failed, when the broker says it.

    A client's ``start()`` that fails in any way is this: aiokafka raises KafkaError for
    most refusals but a bare KeyError when a SCRAM login is refused, and neither must end
    the process (/readyz says Kafka is not ready, the start is retried).
    """
    shown = str(exc) if isinstance(exc, KafkaError) else f"{type(exc).__name__}: {exc}"
    why = await explain(settings) if not isinstance(exc, KafkaError) or "bootstrap" in shown \
        else ""
    return BrokerUnavailable(f"{what}: {why or shown}")


async def ensure_topics(settings: Settings, replication: int = 1) -> list[str]:
    """Create missing topics (``devices`` compacted); return the ones created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap,
                                **client_security(settings))
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
    except Exception as exc:  # any failure to start: see unavailable()
        raise await unavailable(settings, "cannot create topics", exc) from exc
    finally:
        await admin.close()


class Producer:
    """An acks=all producer that waits for every record it sends."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap,
            **client_security(settings),
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
        except Exception as exc:  # any failure to start: see unavailable()
            raise await unavailable(self._settings, "cannot start the producer", exc) from exc

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
