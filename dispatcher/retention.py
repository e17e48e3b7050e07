"""Retention: finished commands are removed, so the table stays as small as the open
commands plus the retention window, whatever the history.

A command is removed once it has been terminal for ``DISPATCHER_RETENTION_S`` *and* its
validity (``expires_at``) is over by as long. The second half is what makes removal
safe: the same id replayed from the topic after its removal arrives with its validity
run out, so it is recorded ``EXPIRED`` on arrival and never pushed (the contract's rule
for late commands). Within the window the id is still one command.

The removal walks ``commands_removable`` (migration 009) oldest first in batches of
:data:`BATCH` rows (``FOR UPDATE SKIP LOCKED``: replicas remove side by side without
double work, and a row an ack holds is left for the next pass), each batch its own
short transaction, for at most :data:`PASS_BUDGET_S` a pass, so ingest and the other
timer duties never wait behind a purge. A crash mid-purge loses nothing: a batch is
removed whole or not at all, and the next pass goes on from the oldest row left.

Plain batched ``DELETE`` was measured against time-partitioned tables; see
``docs/storage.md`` for the figures and the reasons.
"""

from __future__ import annotations

import asyncio
import logging
import time

from dispatcher.aio import Backoff, retrying, sleep_unless
from dispatcher.exceptions import StoreUnavailable
from dispatcher.metrics import Metrics
from dispatcher.store import Store

log = logging.getLogger(__name__)

BATCH = 5000
"""Rows a removal statement takes at most (one short transaction)."""
PASS_BUDGET_S = 2.0
"""A pass stops starting batches after this long; the next pass goes on."""
INTERVAL_S = 5.0
"""Time between passes (its own loop: a purge never delays expiry or the relay)."""


class Retention:
    """Removes finished commands past the retention window; :meth:`purge` is one pass."""

    def __init__(self, retention_s: float, store: Store, metrics: Metrics,
                 interval_s: float = INTERVAL_S) -> None:
        self.retention_s = retention_s
        self.store = store
        self.metrics = metrics
        self.interval_s = interval_s

    async def run(self, stop: asyncio.Event) -> None:
        """A pass every ``interval_s`` until ``stop``; back off while PostgreSQL is away."""
        backoff = Backoff(self.interval_s, 30.0, floor_s=self.interval_s)
        while not stop.is_set():
            try:
                await retrying(self.one_pass, stop, retry_on=StoreUnavailable,
                               backoff=backoff, on_retry=_failed)
            except StoreUnavailable:
                return  # stopping (retrying gives up only then)
            await sleep_unless(stop, self.interval_s)

    async def one_pass(self) -> None:
        """Remove what is due (commands, then settled campaigns), then refresh the table
        gauges."""
        await self.purge()
        await self.store.remove_campaigns(self.retention_s, BATCH)
        await self.table_gauges()

    async def purge(self, budget_s: float = PASS_BUDGET_S) -> int:
        """Remove what is due, batch by batch, until none is left or the budget is spent."""
        started = time.monotonic()
        total = 0
        while True:
            removed = await self.store.remove_finished(self.retention_s, BATCH)
            total += removed
            self.metrics.commands_removed.inc(removed)
            if removed < BATCH or time.monotonic() - started > budget_s:
                break
        if total:
            log.info("finished commands removed", extra={
                "removed": total, "retention_s": self.retention_s,
                "took_s": round(time.monotonic() - started, 3)})
        return total

    async def table_gauges(self) -> None:
        """The commands table's live and dead rows (the statistics collector's counts)."""
        rows = await self.store.table_rows()
        self.metrics.commands_table_rows.labels("live").set(rows.live)
        self.metrics.commands_table_rows.labels("dead").set(rows.dead)


def _failed(exc: BaseException, attempt: int, delay: float) -> None:
    if attempt == 1 or attempt % 10 == 0:  # an outage logs a line, not a flood
        log.warning("retention pass failed", extra={
            "error": str(exc)[:200], "failed_passes": attempt, "retry_in_s": round(delay, 2)})
