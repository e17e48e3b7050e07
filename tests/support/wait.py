"""Waiting for a condition with a deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def wait_for(check: Callable[[], Awaitable[T | None]], timeout: float = 30.0,
                   interval: float = 0.1, what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy, or fail after ``timeout`` seconds.

    What it returns is that truthy answer, so never ``None``: a check that answers
    ``X | None`` gives an ``X``.
    """
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last={last!r}")


async def until(check: Callable[[], Awaitable[T | None]], timeout: float = 30.0,
                what: str = "condition") -> T:
    """:func:`wait_for` typed for checks that answer ``None`` until they find something."""
    found = await wait_for(check, timeout=timeout, what=what)
    assert found is not None
    return found
