"""What bounds the claims: request slots, the rate limit, pauses, and the claim gate.

A claim asks for at most as many rows as there are free request slots (:class:`Slots`:
``DISPATCHER_PUSH_CONCURRENCY`` per provider, plus a few claimed ahead), so memory is
bounded and a backlog of a million pending pushes stays in PostgreSQL.
``DISPATCHER_PUSH_RATE_PER_MIN`` (:class:`RateBudget`, shared by all replicas through
PostgreSQL) is taken before claiming, so a claimed push never waits for it, and a
provider's ``Retry-After`` pauses every claim until it has passed. Claims and the
answers that wake parked commands never overlap in one process (:class:`ClaimGate`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from dispatcher.push.lanes import Lane, hold_s

if TYPE_CHECKING:
    from dispatcher.store import Store

CLAIM_GATHER_S = 0.005
"""With a backlog, how long to let requests finish before claiming fewer than a batch."""


class RateBudget:
    """``DISPATCHER_PUSH_RATE_PER_MIN``: one budget per provider for all replicas together.

    A token bucket per provider in PostgreSQL (``push_budget``, refilled by the
    database's clock): a claim takes tokens before it claims, so a claimed push never
    waits for the limit while its lease runs out, and gives back what it did not use. A
    replica may use the whole budget while the others are idle, the replicas together
    never more than it; one that dies holds at most the tokens of the claim it was
    making (no lease to run out). Bursts hold a tenth of a second's worth (at least one).
    """

    def __init__(self, store: Store, providers: list[str], per_min: int) -> None:
        self.store = store
        self.providers = providers
        self.per_s = per_min / 60.0
        self.capacity = max(1.0, self.per_s / 10)
        self._short = 0.0
        """Fraction of a token short after the last take that granted nothing."""

    async def take(self, most: int) -> dict[str, int]:
        """Up to ``most`` pushes per provider, as the shared budgets allow now."""
        grants: dict[str, int] = {}
        short = 1.0
        for provider in self.providers:
            budget = await self.store.take_push_budget(provider, most, self.per_s,
                                                       self.capacity)
            grants[provider] = budget.granted
            short = min(short, 1.0 - budget.left)
        self._short = short
        return grants

    async def give_back(self, grants: dict[str, int], used: dict[str, int]) -> None:
        """Return what a claim was granted and did not use."""
        for provider, granted in grants.items():
            unused = granted - used.get(provider, 0)
            if unused > 0:
                await self.store.give_push_budget(provider, unused, self.capacity)

    def wait_s(self) -> float:
        """After a take that granted nothing: how long until a provider has a token."""
        return max(self._short, 0.0) / self.per_s


def claim_ahead(concurrency: int) -> int:
    """How many pushes are claimed ahead of free request slots.

    A slot that frees takes the next claimed push at once instead of idling while a claim
    runs (measured at 50 ms provider latency: ~80% of concurrency/latency without, ~90%
    with). It is also how many pushes a provider's lane may queue (``lanes.py``).
    """
    return max(1, concurrency // 4)


class Slots:
    """The claimed pushes in flight and how many more may be claimed now.

    Free slots are the request slots of every provider plus :func:`claim_ahead`, less
    the pushes claimed and not yet answered; the providers' pauses and rate budgets
    (:class:`RateBudget`) then decide whether, and how many of them, a claim may take now.
    """

    def __init__(self, concurrency: int, lanes: dict[str, Lane]) -> None:
        self.tasks: set[asyncio.Task[None]] = set()
        self.lanes = lanes
        self.capacity = concurrency * len(lanes) + claim_ahead(concurrency)
        self.min_claim = max(1, concurrency // 8)

    def free(self) -> int:
        """Slots a claim may fill (0 or less: every slot is taken)."""
        return self.capacity - len(self.tasks)

    def should_gather(self, free: int, backlog: bool) -> bool:
        """More is due than there are free slots: let a few more requests finish so that
        one claim fills several slots (a claim per push would make the claim query, not
        the provider, the limit)."""
        return backlog and free < self.min_claim and bool(self.tasks)

    async def one_done(self) -> None:
        """Wait until a push in flight is done."""
        await asyncio.wait(self.tasks, return_when=asyncio.FIRST_COMPLETED)

    async def gather(self) -> None:
        """Let requests finish for a moment (see :meth:`should_gather`)."""
        await asyncio.wait(self.tasks, timeout=CLAIM_GATHER_S)

    async def drain(self, timeout_s: float) -> None:
        """Wait for every push in flight (at most ``timeout_s``)."""
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=timeout_s)

    def start(self, push: Coroutine[Any, Any, None]) -> None:
        """Run one claimed push in its slot until it is answered."""
        task = asyncio.create_task(push)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def pause_s(self) -> float:
        """How long to wait before claiming: every provider's Retry-After."""
        return hold_s(self.lanes)


class ClaimGate:
    """Claims exclusive, recorded answers shared: the two never overlap in one process.

    Recording an answer wakes the device's next parked command. A claim running at the
    same moment, from a snapshot taken before that answer, could park the command again
    and it would wait for the timer's repair (``wake_parked``), which stays the safety
    net between processes. Answers go first: a claim waits for the answers already
    waiting, so a busy pusher cannot starve the recording of answers (their leases keep
    devices blocked until they are recorded).
    """

    def __init__(self) -> None:
        self._cond = asyncio.Condition()
        self._sharing = 0
        self._sharing_waiting = 0
        self._claiming = False

    @asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        """Hold while recording an answer that may wake a parked command."""
        async with self._cond:
            self._sharing_waiting += 1
            try:
                await self._cond.wait_for(lambda: not self._claiming)
            finally:
                self._sharing_waiting -= 1
            self._sharing += 1
        try:
            yield
        finally:
            async with self._cond:
                self._sharing -= 1
                self._cond.notify_all()

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Hold while claiming."""
        async with self._cond:
            await self._cond.wait_for(
                lambda: not self._claiming and not self._sharing and not self._sharing_waiting)
            self._claiming = True
        try:
            yield
        finally:
            async with self._cond:
                self._claiming = False
                self._cond.notify_all()
