"""The pusher: claims due pushes from PostgreSQL and hands them to the providers.

Delivery is driven by PostgreSQL, not memory: the pusher claims due pushes with a
lease (``claim_pushes``: one per device, in creation order, never two in flight for a
device), sends them with at most ``DISPATCHER_PUSH_CONCURRENCY`` requests in flight per
provider (``delivery.py``, ``lanes.py``), and records each answer (``answers.py``). A
crash mid-request leaves a lease that runs out, and the push goes again: only requests
in flight at a crash can repeat, at most ``DISPATCHER_PUSH_CONCURRENCY`` per crash
(``dispatcher_push_repeats_total`` counts them); a request never outlives its lease.
A claim takes no more than the free request slots, the rate limit and the providers'
pauses allow (``limits.py``), and the first success after an outage brings the pushes
that were backing off forward.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from functools import partial
from typing import Any

from dispatcher.aio import Backoff, retrying, sleep_unless, wait_any
from dispatcher.config import Settings
from dispatcher.exceptions import StoreUnavailable
from dispatcher.metrics import Metrics
from dispatcher.push.answers import AnswerRecorder
from dispatcher.push.delivery import Delivery
from dispatcher.push.lanes import Lane, health, lane_of, make_lanes
from dispatcher.push.limits import ClaimGate, RateBudget, Slots, claim_ahead
from dispatcher.push.providers import Provider
from dispatcher.secretbox import SecretBox
from dispatcher.store import Store
from dispatcher.store.records import ClaimedPush, ClaimOrder

log = logging.getLogger("dispatcher.push")  # the push path logs as one logger, as before


class Claimer:
    """Claims due pushes into free slots until stopped, and starts each one's delivery."""

    def __init__(self, settings: Settings, store: Store, gate: ClaimGate, slots: Slots,
                 metrics: Metrics, deliver: Callable[[Any], Coroutine[Any, Any, None]],
                 wake: asyncio.Event) -> None:
        self.lease_s = settings.push_lease_s
        self.store = store
        self.gate = gate
        self.slots = slots
        self.metrics = metrics
        self.deliver = deliver
        self.wake = wake
        """Set when pushes may be due: new commands, answers that woke a device."""
        lanes = list(slots.lanes)
        self.budget = (RateBudget(store, lanes, settings.push_rate_per_min)
                       if settings.push_rate_per_min else None)
        self.cursors = ("", "", "")
        """Per rank, the organization the round-robin served last (``claim_pushes``)."""

    async def run(self, stop: asyncio.Event, poll_s: float) -> None:
        """Claim due pushes into free request slots until ``stop``; back off while the
        database is down (each retry looks at the free slots and pauses again)."""
        backlog = False
        while not stop.is_set():
            try:
                backlog = await retrying(
                    partial(self._claim_pass, stop, poll_s, backlog), stop,
                    retry_on=StoreUnavailable, backoff=Backoff(0.2, 5.0), on_retry=_claim_failed)
            except StoreUnavailable:
                return  # stopping (retrying gives up only then)

    async def _claim_pass(self, stop: asyncio.Event, poll_s: float, backlog: bool) -> bool:
        """Wait for free slots, claim once, wait for more work; return whether more is due."""
        slots = self.slots
        free = slots.free()
        if free <= 0:
            await slots.one_done()
            return backlog
        if slots.should_gather(free, backlog):
            await slots.gather()
            return backlog
        pause_s = slots.pause_s()
        if pause_s > 0:
            await sleep_unless(stop, pause_s)
            return backlog
        budget = self.budget
        grants = await budget.take(free) if budget is not None else None
        allowed = free if grants is None else min(free, sum(grants.values()))
        if budget is not None and allowed <= 0:
            await sleep_unless(stop, budget.wait_s())
            return backlog
        self.wake.clear()  # before the claim: a wake-up during it is not lost
        seen, used = 0, dict[str, int]()
        try:
            seen, used = await self.claim(allowed, grants)
        finally:
            if budget is not None and grants is not None:
                await budget.give_back(grants, used)
        if seen < allowed:
            await wait_any(stop, self.wake, timeout_s=poll_s)
        elif budget is not None and not used:
            # every push looked at waits for an exhausted provider's budget: one token
            await sleep_unless(stop, 1 / budget.per_s)
        return seen >= allowed

    async def claim(self, limit: int,
                    budgets: dict[str, int] | None = None) -> tuple[int, dict[str, int]]:
        """Claim up to ``limit`` due pushes and start sending them (``budgets``: how many
        each rate-limited provider may take).

        Return how many due rows were looked at (parked ones included) and how many were
        claimed per provider; fewer looked at than ``limit`` means nothing more is due now.
        """
        if limit <= 0:
            return 0, {}
        order = ClaimOrder(self.cursors, budgets, next(iter(self.slots.lanes)))
        async with self.gate.exclusive():
            rows = await self.store.claim_pushes(limit, self.lease_s, order)
        self.cursors = next_cursors(self.cursors, rows)
        used: Counter[str] = Counter()
        for row in rows:
            if not row.claimed:
                continue
            lane = lane_of(self.slots.lanes, row)
            used[lane.name if lane is not None else ""] += 1
            if row.reclaimed:
                self.metrics.push_repeats.inc()
            self.slots.start(self.deliver(row))
        return len(rows), dict(used)


def next_cursors(cursors: tuple[str, str, str],
                 rows: Sequence[ClaimedPush]) -> tuple[str, str, str]:
    """Where each rank's round-robin resumes: after the organization it served last.

    A claim serves the organizations after the cursor in id order, then wraps around to
    those up to it; the last served is the highest of the wrapped ones, if any."""
    out = list(cursors)
    for rank in range(3):
        served = {r.organization for r in rows if r.rank == rank}
        if served:
            wrapped = [o for o in served if o <= cursors[rank]]
            out[rank] = max(wrapped) if wrapped else max(served)
    return out[0], out[1], out[2]


def _claim_failed(exc: BaseException, attempt: int, delay: float) -> None:
    log.warning("cannot claim pushes", extra={"error": str(exc)[:200]})


class Pusher:
    """Claims due pushes from PostgreSQL and sends them with bounded concurrency.

    Composed of the lanes (one per provider), the slots and limits of the claims, the
    claimer, the delivery of each claimed push and the answer recorder.
    """

    def __init__(self, settings: Settings, store: Store, provider: Provider | Sequence[Provider],
                 metrics: Metrics, box: SecretBox) -> None:
        providers = list(provider) if isinstance(provider, Sequence) else [provider]
        concurrency = settings.push_concurrency
        self.settings = settings
        self.lanes: dict[str, Lane] = make_lanes(providers, concurrency,
                                                 claim_ahead(concurrency))
        self.slots = Slots(concurrency, self.lanes)
        gate, wake = ClaimGate(), asyncio.Event()
        self.answers = AnswerRecorder(settings, store, gate, metrics, wake)
        self.delivery = Delivery(settings, self.lanes, self.answers, metrics, box)
        self.claimer = Claimer(settings, store, gate, self.slots, metrics, self.delivery.push,
                               wake)

    @property
    def wake(self) -> asyncio.Event:
        """Set it when pushes may be due now (new commands): the claims look at once."""
        return self.claimer.wake

    @property
    def outbox_wake(self) -> asyncio.Event | None:
        """The outbox relay's wake-up, set when a push ends a command (``app.py``)."""
        return self.answers.outbox_wake

    @outbox_wake.setter
    def outbox_wake(self, event: asyncio.Event | None) -> None:
        self.answers.outbox_wake = event

    @property
    def inflight(self) -> set[asyncio.Task[None]]:
        """The claimed pushes not yet answered."""
        return self.slots.tasks

    @property
    def provider_healthy(self) -> bool:
        """False while a provider fails: several retriable failures in a row (an outage,
        a wrong key); :meth:`provider_health` says which."""
        return all(self.provider_health().values())

    def provider_health(self) -> dict[str, bool]:
        """Each configured provider and whether it is healthy."""
        return health(self.lanes)

    async def run(self, stop: asyncio.Event, poll_s: float = 0.25) -> None:
        """Claim and send until ``stop``; then wait for the requests in flight.

        The answer recorder runs beside the claims, supervised: when it fails (with any
        error but an outage, which it rides out), the pusher stops claiming and raises
        it, so the process stops loudly like any failed component (``app.py``) rather
        than piling answers up while every push repeats. Answers not yet written are
        pushed again when their leases run out (within :func:`repeat_bound`).
        """
        recorder = asyncio.create_task(self.answers.run(stop))
        claiming = asyncio.create_task(self.claimer.run(stop, poll_s))
        try:
            await asyncio.wait([recorder, claiming], return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            recorder.cancel()
            claiming.cancel()
            raise
        if recorder.done() and not recorder.cancelled() and recorder.exception():
            await _cancelled(claiming)
            log.error("the push answer recorder failed; stopping",
                      exc_info=recorder.exception())
            recorder.result()  # raises
        await claiming  # a failed claim loop raises here
        self.delivery.stopping = True  # claimed pushes still waiting for a slot go back
        await self.drain()
        await recorder
        await self.answers.flush()

    async def drain(self, timeout_s: float | None = None) -> None:
        """Wait for in-flight pushes (their answers are recorded)."""
        await self.slots.drain(timeout_s or self.settings.push_timeout_s + 1)


async def _cancelled(task: asyncio.Task[None]) -> None:
    """Cancel a task and wait until it has ended."""
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
