"""The one retry loop: retries what it is told to, backs off with a growing, capped delay,
gives up after N failures when asked, and stops promptly on the stop event."""

from __future__ import annotations

import asyncio
import time

import pytest

from dispatcher.aio import Backoff, retrying
from dispatcher.exceptions import BrokerUnavailable, StoreUnavailable

FAST = Backoff(0.001, 0.004)


class Flaky:
    """Fails ``failures`` times with ``error``, then answers ``"ok"``."""

    def __init__(self, failures: int, error: BaseException | None = None) -> None:
        self.failures = failures
        self.error = error or StoreUnavailable("down")
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "ok"


async def test_retries_until_success_and_reports_each_retry() -> None:
    action, seen = Flaky(3), []
    result = await retrying(action, asyncio.Event(), retry_on=StoreUnavailable, backoff=FAST,
                            on_retry=lambda exc, n, delay: seen.append((type(exc), n, delay)))
    assert (result, action.calls) == ("ok", 4)
    assert [(kind, n) for kind, n, _ in seen] == [(StoreUnavailable, n) for n in (1, 2, 3)]
    assert all(0 < delay <= FAST.max_s for _, _, delay in seen)


async def test_other_errors_propagate_at_once() -> None:
    action = Flaky(1, TypeError("a bug"))
    with pytest.raises(TypeError):
        await retrying(action, asyncio.Event(), retry_on=(StoreUnavailable, BrokerUnavailable),
                       backoff=FAST)
    assert action.calls == 1


async def test_gives_up_after_the_attempts_asked_for() -> None:
    action = Flaky(100)
    with pytest.raises(StoreUnavailable):
        await retrying(action, None, retry_on=StoreUnavailable,
                       backoff=Backoff(0.001, 0.002, attempts=5))
    assert action.calls == 5


async def test_a_stop_set_before_raises_without_waiting() -> None:
    stop, action = asyncio.Event(), Flaky(100)
    stop.set()
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        await retrying(action, stop, retry_on=StoreUnavailable, backoff=Backoff(60, 60))
    assert action.calls == 1
    assert time.monotonic() - started < 1


async def test_a_stop_during_a_wait_ends_it_at_once() -> None:
    stop, action = asyncio.Event(), Flaky(100)
    asyncio.get_running_loop().call_later(0.05, stop.set)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        await retrying(action, stop, retry_on=StoreUnavailable, backoff=Backoff(60, 60))
    assert action.calls == 1, "no try after the stop"
    assert time.monotonic() - started < 5, "the 60 s wait was not cut short"


@pytest.mark.parametrize("backoff", [Backoff(0.2, 5.0), Backoff(0.5, 10.0), Backoff(1.0, 3.0)])
def test_the_delay_grows_and_is_capped(backoff: Backoff) -> None:
    for attempt in range(1, 40):
        bound = min(backoff.max_s, backoff.base_s * 2 ** (attempt - 1))
        delays = [backoff.delay_s(attempt) for _ in range(50)]
        assert all(bound / 2 <= d <= bound for d in delays), attempt
    assert max(backoff.delay_s(30) for _ in range(200)) <= backoff.max_s


def test_the_floor_holds() -> None:
    backoff = Backoff(0.2, 5.0, floor_s=1.0)
    assert all(backoff.delay_s(n) >= 1.0 for n in range(1, 20) for _ in range(20))
    assert all(backoff.delay_s(n) <= 5.0 for n in range(1, 20) for _ in range(20))
