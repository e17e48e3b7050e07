"""serve() stops when one of its loops ends: a failure is raised, naming what failed."""

from __future__ import annotations

import asyncio

import pytest

from dispatcher.app import _until_stop_or_crash


async def test_a_component_cancelled_from_outside_stops_the_service_naming_it() -> None:
    """Before: task.exception() of a cancelled task raised CancelledError, which read as
    a cancellation of serve() itself instead of a failure of one loop."""
    task = asyncio.create_task(asyncio.sleep(10), name="Pusher.run")
    task.cancel()
    with pytest.raises(RuntimeError, match=r"Pusher\.run was cancelled"):
        await _until_stop_or_crash(asyncio.Event(), [task])


async def test_a_component_that_fails_stops_the_service_with_its_error() -> None:
    async def fails() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await _until_stop_or_crash(asyncio.Event(), [asyncio.create_task(fails())])


async def test_the_stop_event_ends_the_wait_without_an_error() -> None:
    stop = asyncio.Event()
    loop = asyncio.create_task(asyncio.sleep(10))
    stop.set()
    await _until_stop_or_crash(stop, [loop])
    assert not loop.done()
    loop.cancel()
