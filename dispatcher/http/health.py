"""Health, readiness and metrics: ``/healthz``, ``/readyz`` and ``/metrics``.

``/healthz`` answers while the process runs; ``/readyz`` answers 200 only when
PostgreSQL answers with every migration applied and Kafka answers, 503 otherwise,
with each check named in the body (and each push provider's health, which does not
decide readiness: ``pushProvider`` for all, ``pushProviders`` one by one);
``/metrics`` is the Prometheus text format.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from dispatcher.http.common import RUNTIME


def register(app: web.Application) -> None:
    """Add ``/healthz``, ``/readyz`` and ``/metrics``."""
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)


async def healthz(request: web.Request) -> web.Response:
    """The process is up."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Kafka and PostgreSQL reachable, migrations applied."""
    rt = request.app[RUNTIME]
    postgres, kafka = await asyncio.gather(
        rt.store.ping() if rt.store is not None else _false(),
        rt.producer.ping() if rt.producer is not None else _false(),
    )
    consuming = rt.consumer is not None and rt.consumer.consumer is not None
    checks = {"postgres": postgres, "kafka": kafka, "consumer": consuming}
    ready = all(checks.values())
    rt.metrics.readiness(checks)
    body: dict[str, Any] = {"status": "ready" if ready else "not ready", "checks": checks}
    if rt.pusher is not None:
        body["pushProvider"] = "ok" if rt.pusher.provider_healthy else "failing"
        body["pushProviders"] = {name: "ok" if healthy else "failing"
                                 for name, healthy in rt.pusher.provider_health().items()}
    return web.json_response(body, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition."""
    rt = request.app[RUNTIME]
    if rt.store is not None:
        pool = rt.store.pool
        rt.metrics.pool(pool.get_size(), pool.get_idle_size(), pool.get_max_size())
    return web.Response(body=rt.metrics.render(),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _false() -> bool:
    return False
