"""Run the real service in-process (same code as `dispatcher run`) against the test servers."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from dispatcher.app import serve
from dispatcher.config import Settings
from dispatcher.metrics import Metrics
from dispatcher.runtime import Runtime
from dispatcher.secretbox import SecretBox
from dispatcher_dev.fakepushy import FakePushy
from tests.support.wait import wait_for

PUSHY_KEY = "test-pushy-key"


@asynccontextmanager
async def running(settings: Settings, pushy: FakePushy | None = None,
                  **overrides: Any) -> AsyncIterator[Runtime]:
    """Start the service; yield its runtime once it consumes; stop it gracefully after.

    The service pushes to ``pushy`` (started by the caller; its own one when ``None``), at
    ``pushy.url`` unless ``pushy_api_url`` is among the ``overrides``.
    """
    own_pushy = pushy is None
    fake = pushy or FakePushy(PUSHY_KEY)
    if own_pushy:
        await fake.start()
    url = overrides.pop("pushy_api_url", fake.url)
    s = dataclasses.replace(settings, pushy_api_url=url, pushy_api_key=PUSHY_KEY, **overrides)
    rt = Runtime(s, Metrics(), SecretBox(s.secret_keys))
    task = asyncio.create_task(serve(s, rt=rt))
    try:
        await wait_for(_consuming(rt, task), timeout=40, what="the service to consume")
        yield rt
    finally:
        rt.stop.set()
        await asyncio.wait_for(task, timeout=30)
        if own_pushy:
            await fake.stop()


def _consuming(rt: Runtime, task: asyncio.Task[None]) -> Any:
    async def check() -> bool:
        if task.done():
            task.result()
        return bool(rt.consumer is not None and rt.consumer.assigned)

    return check
