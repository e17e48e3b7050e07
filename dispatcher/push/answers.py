"""Push answers written to PostgreSQL: each guarded by its claim, accepted ones in batches.

Every answer carries the claim it answers (``push_attempts`` as claimed): a late answer
from a claim another claim took over changes nothing (the current claim records its own).
Accepted pushes are recorded together by :meth:`AnswerRecorder.run`, a task beside the
claims that the pusher supervises: when it fails with anything but an outage, the pusher
stops and raises it. Writing an answer rides out a database outage for a while
(``_RECORD_BACKOFF``); an answer given up is pushed again when its lease runs out, and a
crash repeats at most :func:`repeat_bound` pushes. Answers that wake the device's next
parked command go through the claim gate (``limits.ClaimGate``) and wake the claims.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import TypeVar

from dispatcher.aio import Backoff, retrying, wait_any
from dispatcher.config import Settings
from dispatcher.exceptions import StoreUnavailable
from dispatcher.metrics import Metrics
from dispatcher.push.limits import ClaimGate
from dispatcher.store import Store
from dispatcher.store.records import ClaimedPush, PushAnswer

T = TypeVar("T")

log = logging.getLogger("dispatcher.push")  # the push path logs as one logger, as before

_ANSWER_GATHER_S = 0.003
"""How long accepted answers gather before they are recorded together."""
_ANSWER_BATCH = 500
"""Most accepted pushes one statement records."""
_RECORD_BACKOFF = Backoff(0.2, 2.0, attempts=21)
"""Writing an answer: 20 retries through an outage, then the lease retries the push."""


def repeat_bound(concurrency: int) -> int:
    """What a crash of one process can make the next claim push again: the requests in
    flight, plus answers received and not yet written (they are written in batches
    every few milliseconds, and a slot freed by an answer takes the next claimed push)."""
    return concurrency + max(1, concurrency // 4)


@dataclass(frozen=True, slots=True, order=True)
class Accepted:
    """A push the provider accepted, waiting to be recorded with its claim token."""

    command_id: str
    push_id: str
    expires_at: datetime
    claim: int
    """``push_attempts`` as claimed: the answer applies only to that claim."""


def _log_stale(batch: list[Accepted], stale: set[str]) -> None:
    """Accepted pushes whose claim another claim took over: not recorded (the current
    claim pushes again and records its own), so their push ids are logged here."""
    for answer in batch:
        if answer.command_id in stale:
            log.warning("a push was accepted after its claim was taken over; the current "
                        "claim records its own push", extra={
                            "command_id": answer.command_id, "push_id": answer.push_id})


class AnswerRecorder:
    """Writes push answers; wakes the claims (``wake``) and the relay (``outbox_wake``)."""

    def __init__(self, settings: Settings, store: Store, gate: ClaimGate, metrics: Metrics,
                 wake: asyncio.Event) -> None:
        self.settings = settings
        self.store = store
        self.gate = gate
        self.metrics = metrics
        self.wake = wake
        self.outbox_wake: asyncio.Event | None = None
        self._accepted: list[Accepted] = []
        self._ready = asyncio.Event()

    def accepted(self, answer: Accepted) -> None:
        """Queue an accepted push: recorded with others in one statement, soon."""
        self._accepted.append(answer)
        self._ready.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Record accepted pushes in batches, soon after they are accepted, until ``stop``."""
        while not stop.is_set():
            await wait_any(stop, self._ready, timeout_s=1.0)
            if len(self._accepted) < _ANSWER_BATCH:
                await asyncio.sleep(_ANSWER_GATHER_S)  # let a few more answers arrive
            await self.flush()

    async def flush(self) -> None:
        """Record every accepted push queued so far."""
        while self._accepted:
            batch, self._accepted = self._accepted[:_ANSWER_BATCH], self._accepted[_ANSWER_BATCH:]
            if not self._accepted:
                self._ready.clear()
            batch.sort()  # lock rows in id order, like every other batch
            answers = [PushAnswer(b.command_id, b.push_id, b.expires_at, b.claim) for b in batch]
            done = await self.record(
                "push_accepted_many", partial(
                    self._waking, self.store.push_accepted_many, answers,
                    self.settings.repush_after_s, self.settings.repush_max + 1))
            if done is None:
                continue
            if done.woken:
                self.wake.set()  # the devices' next commands may go now
            _log_stale(batch, set(done.stale))

    async def retry(self, row: ClaimedPush, delay_s: float) -> None:
        """Hand a claimed push back: due again in ``delay_s`` (guarded by its claim)."""
        await self.record("push_retry", partial(self.store.push_retry, row.id, delay_s,
                                                row.push_attempts), row.id)

    async def recovered(self) -> None:
        """A provider accepts pushes again: the pushes backing off go now."""
        await self.record("push_recovered", self.store.push_recovered)
        self.wake.set()

    async def end_in_error(self, row: ClaimedPush, error_type: str, message: str) -> None:
        """End the command ERROR (guarded: a terminal command stays), wake what follows."""
        moved = await self.record("push_rejected", partial(
            self._waking, self.store.push_rejected, row.id, error_type, message[:500],
            row.push_attempts), row.id)
        if moved is None:
            return
        self.metrics.transitions([moved.transition])
        if self.outbox_wake is not None:
            self.outbox_wake.set()
        if moved.woke_next:
            self.wake.set()

    async def record(self, what: str, write: Callable[[], Awaitable[T]],
                     command_id: str | None = None) -> T | None:
        """Record an answer; keep trying through a database outage (the lease is the bound).

        Not cut short by the stop signal: writing the answers of the requests in flight
        is what a graceful stop waits for. ``_RECORD_BACKOFF`` and
        ``DISPATCHER_SHUTDOWN_TIMEOUT_S`` bound it; an answer given up (None) is pushed
        again when its lease runs out.
        """
        try:
            return await retrying(write, None, retry_on=StoreUnavailable,
                                  backoff=_RECORD_BACKOFF)
        except StoreUnavailable:
            log.error("could not record a push answer; the lease will retry it",
                      extra={"query": what, "command_id": command_id})
            return None

    async def _waking(self, write: Callable[..., Awaitable[T]], *args: object) -> T:
        """An answer that may wake the device's next parked command: under the claim
        gate's shared side, so no claim runs between its write and the wake-up
        (:class:`ClaimGate`)."""
        async with self.gate.shared():
            return await write(*args)
