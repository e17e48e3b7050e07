"""Small asyncio helpers shared by the long-running loops, and the one retry loop."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from dispatcher.lifecycle import backoff_s

T = TypeVar("T")


async def wait_any(*events: asyncio.Event, timeout_s: float) -> None:
    """Return when any event is set or after ``timeout_s``, whichever comes first."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


async def sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    """Sleep, but wake at once when ``stop`` is set."""
    await wait_any(stop, timeout_s=seconds)


@dataclass(frozen=True, slots=True)
class Backoff:
    """How long to wait before each retry: exponential with jitter (``lifecycle.backoff_s``)
    from ``base_s`` up to ``max_s``, never under ``floor_s``; ``attempts`` failures at
    most (``None``: no limit)."""

    base_s: float
    max_s: float
    floor_s: float = 0.0
    attempts: int | None = None

    def delay_s(self, attempt: int) -> float:
        """Seconds to wait after failure number ``attempt`` (1-based)."""
        return max(self.floor_s, backoff_s(attempt, self.base_s, self.max_s))


RetryHook = Callable[[BaseException, int, float], None]
"""Called as ``hook(error, attempt, delay_s)`` before each wait: logs, gauges."""


async def retrying(action: Callable[[], Awaitable[T]], stop: asyncio.Event | None, *,
                   retry_on: type[BaseException] | tuple[type[BaseException], ...],
                   backoff: Backoff, on_retry: RetryHook | None = None) -> T:
    """Await ``action()`` until it succeeds, waiting ``backoff`` after each ``retry_on`` error.

    Stops promptly on ``stop``: set before a wait or during one, the last error is raised
    at once (callers treat it as "stopping"). Also raises the last error after
    ``backoff.attempts`` failures. Any other error propagates at the first failure.
    ``stop=None`` is for work that must outlive the stop signal (see its caller).
    """
    attempt = 0
    while True:
        try:
            return await action()
        except retry_on as exc:
            attempt += 1
            if _stopped(stop) or (backoff.attempts is not None and attempt >= backoff.attempts):
                raise
            delay = backoff.delay_s(attempt)
            if on_retry is not None:
                on_retry(exc, attempt, delay)
            if stop is None:
                await asyncio.sleep(delay)
            else:
                await sleep_unless(stop, delay)
            if _stopped(stop):
                raise


def _stopped(stop: asyncio.Event | None) -> bool:
    return stop is not None and stop.is_set()
