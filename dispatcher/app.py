"""Wiring, and the orderly start and stop of every component of `dispatcher run`.

Start: HTTP (so /healthz answers at once) -> PostgreSQL (migrated) -> Kafka (topics,
producer) -> loops: stream consumer, outbox relay, pusher, timer, retention,
campaigns. Dependencies that
are down are retried with backoff while /readyz says what is missing.

Stop (SIGTERM/SIGINT): the consumer finishes its batch and commits, the pusher waits
for requests in flight and records their answers, the relay flushes, then connections
close. The whole stop is bounded by ``DISPATCHER_SHUTDOWN_TIMEOUT_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from dispatcher.aio import Backoff, retrying
from dispatcher.campaigns import CampaignWorker
from dispatcher.config import Settings
from dispatcher.consumer import BatchProcessor, StreamConsumer
from dispatcher.deadletter import DeadLetters
from dispatcher.exceptions import BrokerUnavailable, SchemaNotMigrated, StoreUnavailable
from dispatcher.expiry import Timer
from dispatcher.http.app import build_app
from dispatcher.kafka import INPUTS, Producer, ensure_topics
from dispatcher.metrics import Metrics
from dispatcher.outbox import OutboxRelay
from dispatcher.push import Provider, Pusher, make_providers
from dispatcher.retention import Retention
from dispatcher.runtime import Runtime
from dispatcher.secretbox import SecretBox
from dispatcher.store import Store, check_migrated, migrate

log = logging.getLogger(__name__)


async def _with_retry(what: str, stop: asyncio.Event, action: Any) -> Any:
    def warn(exc: BaseException, attempt: int, delay: float) -> None:
        log.warning(f"{what} unavailable, retrying", extra={"error": str(exc)[:500],
                                                           "retry_in_s": round(delay, 2)})

    return await retrying(action, stop, retry_on=(StoreUnavailable, BrokerUnavailable, OSError),
                          backoff=Backoff(0.5, 10.0), on_retry=warn)


async def connect(rt: Runtime, auto_migrate: bool | None = None,
                  create_topics: bool = True) -> None:
    """Connect to PostgreSQL and Kafka (retrying), migrate and create topics.

    With ``DISPATCHER_AUTO_MIGRATE=false`` nothing is migrated: a database that lacks a
    migration stops the start with :class:`SchemaNotMigrated`.
    """
    s = rt.settings
    if auto_migrate is None:
        auto_migrate = s.auto_migrate
    if auto_migrate:
        applied = await _with_retry("PostgreSQL", rt.stop, lambda: migrate(s.database_url))
        if applied:
            log.info("migrations applied", extra={"versions": applied})
    else:
        await _with_retry("PostgreSQL", rt.stop, lambda: check_migrated(s.database_url))
    rt.store = await _with_retry(
        "PostgreSQL", rt.stop, lambda: Store.connect(s.database_url, s.db_pool_min, s.db_pool_max))
    if create_topics:
        await _with_retry("Kafka", rt.stop, lambda: ensure_topics(s))
    producer = Producer(s)
    await _with_retry("Kafka", rt.stop, producer.start)
    rt.producer = producer


def build_loops(rt: Runtime, providers: Sequence[Provider]) -> list[Any]:
    """The long-running loops of the service, each stopping on ``rt.stop``."""
    s = rt.settings
    assert rt.store is not None
    assert rt.producer is not None
    for provider in providers:
        rt.metrics.zero([s.topic(name) for name in INPUTS], provider.name)
    rt.relay = OutboxRelay(rt.store, rt.producer, s.topic("commands.status"), rt.metrics,
                           topics={"campaigns.status": s.topic("campaigns.status")})
    rt.pusher = Pusher(s, rt.store, providers, rt.metrics, rt.box)
    rt.pusher.outbox_wake = rt.relay.wake
    dead_letters = DeadLetters(rt.producer, s.topic("dead-letter"), rt.metrics, stop=rt.stop)
    rt.processor = BatchProcessor(s, rt.store, dead_letters, rt.metrics, rt.box, rt.on_effects,
                                  stop=rt.stop)
    rt.consumer = StreamConsumer(s, rt.processor, rt.metrics)
    timer = Timer(s, rt.store, rt.metrics, dead_letters, rt.on_effects)
    retention = Retention(s.retention_s, rt.store, rt.metrics)
    rt.campaigns = CampaignWorker(s, rt.store, rt.metrics, rt.box, rt.on_effects)
    return [rt.consumer.run(rt.stop), rt.relay.run(rt.stop), rt.pusher.run(rt.stop),
            timer.run(rt.stop), retention.run(rt.stop), rt.campaigns.run(rt.stop)]


async def serve(settings: Settings, provider: Provider | Sequence[Provider] | None = None,
                rt: Runtime | None = None) -> None:
    """Run the whole service until SIGTERM/SIGINT (or ``rt.stop``); ``provider``: the
    providers to push through instead of those the settings name (tests)."""
    if rt is None:
        rt = Runtime(settings, Metrics(), SecretBox(settings.secret_keys))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, rt.stop.set)
    runner = await _start_http(rt)
    if provider is None:
        providers = make_providers(settings)
    else:
        providers = list(provider) if isinstance(provider, Sequence) else [provider]
    tasks: list[asyncio.Task[Any]] = []
    try:
        try:
            await connect(rt)
        except SchemaNotMigrated as exc:
            log.error("refusing to start: %s", exc)
            raise
        tasks = [asyncio.create_task(c, name=c.__qualname__) for c in build_loops(rt, providers)]
        rt.started.set()
        log.info("dispatcher running", extra={"http": rt.http_url})
        await _until_stop_or_crash(rt.stop, tasks)
    finally:
        rt.stop.set()
        await _shutdown(rt, tasks, providers, runner)


async def _until_stop_or_crash(stop: asyncio.Event, tasks: list[asyncio.Task[Any]]) -> None:
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    for task in done:
        if task is stopper:
            continue
        if task.cancelled():  # nothing here cancels a component: someone else did
            raise RuntimeError(f"{task.get_name()} was cancelled")
        if (exc := task.exception()) is not None:
            log.error("a component failed; stopping", exc_info=exc)
            raise exc


async def _shutdown(rt: Runtime, tasks: list[asyncio.Task[Any]],
                    providers: Sequence[Provider], runner: web.AppRunner) -> None:
    timeout = rt.settings.shutdown_timeout_s
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    for provider in providers:
        await provider.close()
    if rt.producer is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(rt.producer.stop(), timeout=5)
    if rt.store is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(rt.store.close(), timeout=5)
    await runner.cleanup()
    log.info("dispatcher stopped")


async def _start_http(rt: Runtime) -> web.AppRunner:
    runner = web.AppRunner(build_app(rt), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, rt.settings.http_host, rt.settings.http_port)
    await site.start()
    sockets = getattr(site._server, "sockets", None) or []
    port = sockets[0].getsockname()[1] if sockets else rt.settings.http_port
    rt.http_url = f"http://{rt.settings.http_host}:{port}"
    return runner
