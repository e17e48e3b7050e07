"""Several push providers side by side: one lane each, so one's outage spares the others.

``DISPATCHER_PUSH_PROVIDER=pushy,fcm`` configures both; the first is the default, and a
device whose ``mdm.devices`` event names ``pushProvider`` is pushed through that one. A
device naming a provider that is not configured is never pushed through another: its
command ends ERROR ``PROVIDER_UNAVAILABLE``.

Each provider has its own lane: its own ``DISPATCHER_PUSH_CONCURRENCY`` request slots, its
own count of failures in a row (health: ``dependency_up{dependency="push_provider_<name>"}``
and the ``/readyz`` body) and its own Retry-After pause. A claimed push whose lane has no
free slot and already a full queue goes back to the table for a moment instead of
waiting, so a provider that hangs holds at most its own slots and queue, never the
capacity that the other providers' devices are claimed into.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dispatcher.metrics import Metrics
    from dispatcher.push.providers import Provider
    from dispatcher.store.records import ClaimedPush

UNHEALTHY_AFTER = 5
"""Retriable failures in a row after which a provider counts as failing."""
OVERFLOW_RETRY_S = 1.0
"""How soon a push handed back by a lane without room is due again."""


class RankedSlots:
    """A provider's request slots, handed to waiting pushes best rank first (0 high, 1
    normal, 2 low), then first come: a LOCK claimed while a backlog of ``low`` pushes
    waits for slots is sent next, not behind the pushes claimed ahead of it."""

    def __init__(self, slots: int) -> None:
        self._free = slots
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def locked(self) -> bool:
        """No slot is free now."""
        return self._free <= 0

    async def acquire(self, rank: int = 1) -> None:
        """Take a slot, waiting for one (behind better ranks) when none is free."""
        if self._free > 0 and not self._waiting:
            self._free -= 1
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (rank, next(self._order), turn))
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.release()  # handed over as it was cancelled: pass it on
            raise

    def release(self) -> None:
        """Give a slot back: to the best waiting push, else to the free ones."""
        while self._waiting:
            _, _, turn = heapq.heappop(self._waiting)
            if not turn.done():
                turn.set_result(None)
                return
        self._free += 1


@dataclass
class Lane:
    """One provider's share of the pusher: request slots, failures in a row, pause."""

    provider: Provider
    slots: RankedSlots
    queue_max: int
    waiting: int = 0
    failures: int = 0
    paused_until: float = 0.0

    @property
    def name(self) -> str:
        """The provider's name (``pushy``, ``fcm``, ``log``)."""
        return self.provider.name

    @property
    def healthy(self) -> bool:
        """False after several retriable failures in a row (an outage, wrong credentials)."""
        return self.failures < UNHEALTHY_AFTER

    def full(self) -> bool:
        """No free slot and already as many pushes waiting for one as the lane may queue."""
        return self.slots.locked() and self.waiting >= self.queue_max

    @asynccontextmanager
    async def slot(self, rank: int = 1) -> AsyncIterator[None]:
        """Hold one of the provider's request slots (counted as waiting until it is free;
        better ranks first)."""
        self.waiting += 1
        try:
            await self.slots.acquire(rank)
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            self.slots.release()

    def hold_s(self) -> float:
        """Seconds this provider asked to be left alone (Retry-After), 0 when none."""
        return max(self.paused_until - time.monotonic(), 0.0)

    def succeeded(self) -> bool:
        """Count an accepted push; return whether it ends a failing spell (recovered)."""
        recovered = not self.healthy
        self.failures = 0
        return recovered

    def failed(self, retry_after_s: float | None) -> None:
        """Count a retriable failure; the provider's Retry-After pauses the whole lane."""
        self.failures += 1
        if retry_after_s is not None:
            self.paused_until = max(self.paused_until, time.monotonic() + retry_after_s)


def make_lanes(providers: Sequence[Provider], concurrency: int, queue_max: int) -> dict[str, Lane]:
    """A lane per provider, in configuration order (the first is the default)."""
    return {p.name: Lane(p, RankedSlots(concurrency), max(1, queue_max))
            for p in providers}


def lane_of(lanes: dict[str, Lane], row: ClaimedPush) -> Lane | None:
    """The lane of a claimed row's device: its pushProvider, or the default.

    None when the device names a provider that is not configured (the ``log`` provider,
    a development stand-in, takes every device).
    """
    default = next(iter(lanes.values()))
    wanted = row.push_provider
    if wanted is None:
        return default
    return lanes.get(wanted) or (default if default.name == "log" else None)


def hold_s(lanes: dict[str, Lane]) -> float:
    """How long no claim may run: the shortest pause among the providers (0: none)."""
    return min(lane.hold_s() for lane in lanes.values())


def health(lanes: dict[str, Lane]) -> dict[str, bool]:
    """Each configured provider and whether it is healthy."""
    return {name: lane.healthy for name, lane in lanes.items()}


def report_health(lanes: dict[str, Lane], metrics: Metrics) -> None:
    """``dependency_up``: ``push_provider`` (all providers) and one per provider."""
    metrics.dependency_up.labels("push_provider").set(
        int(all(lane.healthy for lane in lanes.values())))
    for name, lane in lanes.items():
        metrics.dependency_up.labels(f"push_provider_{name}").set(int(lane.healthy))
