"""Typed statements of the pusher, the status relay, the gauges and the HTTP reads
(one method per named query).

The pusher and the HTTP modules still call the generic :meth:`Store.fetch` by query
name; these are the methods they move to (``claim_pushes``, the ``push_*`` answers,
``get_command``, ``get_device``, ``api_list_commands``).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime

import asyncpg

from dispatcher.store.base import Executor, affected
from dispatcher.store.records import (
    Accepted,
    Budget,
    ClaimedPush,
    ClaimOrder,
    OpenCount,
    OutboxBacklog,
    OutboxEvent,
    PushAnswer,
    RejectedPush,
    TableRows,
)


class PushStatements(Executor):
    """Push claims and answers, the status outbox, gauges and the HTTP reads."""

    @abstractmethod
    def _transaction(self) -> AbstractAsyncContextManager[PushStatements]:
        """A transaction to run several statements in (the open one, inside a ``Tx``)."""

    async def claim_pushes(self, limit: int, lease_s: float,
                           order: ClaimOrder | None = None) -> list[ClaimedPush]:
        """Claim due pushes (a lease of ``lease_s``); every row looked at, ``claimed`` or not.

        ``order``: where the round-robin over organizations resumes, and the providers'
        rate budgets (none: from the first organization, no budget).

        A command parked for want of a token is re-checked under its device's key: the
        claim's snapshot may predate a registration whose wake-up, in turn, did not see
        this park (two transactions, each blind to the other), and the command would
        wait for the timer's repair. The registration holds the key until it commits
        (``lock_devices``), so the re-check either sees its token or finds the key taken.
        """
        async with self._transaction() as tx:  # one: a failed re-check loses no claim
            o = order or ClaimOrder()
            rows = [ClaimedPush.from_row(r) for r in await tx._walk(
                "claim_pushes", limit, lease_s, list(o.cursors),
                list(o.budgets) if o.budgets is not None else None,
                list(o.budgets.values()) if o.budgets is not None else None, o.default_lane)]
            tokenless = [r for r in rows if not r.claimed and r.push_token is None]
            if tokenless:
                held = await tx.try_lock_devices(sorted({r.aos_device for r in tokenless}))
                await tx.unpark_registered([r.id for r in tokenless], held)
        return rows

    async def try_lock_devices(self, devices: Sequence[str]) -> list[str]:
        """The devices whose key this transaction holds now (taken without waiting)."""
        return [r["aos_device"] for r in await self._rows("try_lock_devices", list(devices))]

    async def unpark_registered(self, ids: Sequence[str], held: Sequence[str]) -> list[str]:
        """Let parked commands go whose device has a token now, or whose key (not in
        ``held``) a registration in progress holds; the ids let go."""
        rows = await self._rows("unpark_registered", list(ids), list(held))
        return [r["id"] for r in rows]

    async def take_push_budget(self, provider: str, want: int, per_s: float,
                               capacity: float) -> Budget:
        """Take up to ``want`` tokens of a provider's rate budget, shared by all replicas."""
        for _ in range(2):  # the first take of a provider creates its bucket
            row = await self._row("take_push_budget", provider, want, per_s, capacity)
            if row is not None:
                return Budget.from_row(row)
        raise AssertionError("push_budget: the bucket was created and is still missing")

    async def give_push_budget(self, provider: str, tokens: int, capacity: float) -> None:
        """Return tokens a claim took and did not use."""
        await self._status("give_push_budget", provider, tokens, capacity)

    async def push_accepted(self, command_id: str, push_id: str,
                            delivery_expires_at: datetime | None, repush_after_s: float,
                            max_pushes: int, claim: int) -> list[str]:
        """Record one accepted push (guarded by its claim token); the commands woken."""
        rows = await self._rows("push_accepted", command_id, push_id, delivery_expires_at,
                                repush_after_s, max_pushes, claim)
        return [r["woken"] for r in rows]

    async def push_accepted_many(self, answers: Sequence[PushAnswer], repush_after_s: float,
                                 max_pushes: int) -> Accepted:
        """Record accepted pushes (sorted by id by the caller: rows lock in id order)."""
        a = answers
        rows = await self._rows(
            "push_accepted_many", [x.id for x in a], [x.push_id for x in a],
            [x.delivery_expires_at for x in a], repush_after_s, max_pushes,
            [x.claim for x in a])
        return Accepted.from_rows(rows)

    async def push_retry(self, command_id: str, after_s: float, claim: int) -> bool:
        """Release a claim and retry the push in ``after_s``; False when its claim was
        taken over (or the command ended)."""
        return affected(await self._status("push_retry", command_id, after_s, claim)) > 0

    async def push_recovered(self) -> int:
        """Make the pushes backing off from a provider's outage due now; how many."""
        return affected(await self._status("push_recovered"))

    async def push_rejected(self, command_id: str, error_type: str, message: str,
                            claim: int) -> RejectedPush | None:
        """End a command in ERROR after a permanent rejection (guarded by its claim)."""
        row = await self._row("push_rejected", command_id, error_type, message, claim)
        return RejectedPush.from_row(row) if row is not None else None

    async def take_outbox(self, limit: int) -> list[OutboxEvent]:
        """Take up to ``limit`` status events in commit order (one relay at a time)."""
        return [OutboxEvent.from_row(r) for r in await self._walk("take_outbox", limit)]

    async def delete_outbox(self, seqs: Sequence[int]) -> None:
        """Delete relayed status events."""
        await self._status("delete_outbox", list(seqs))

    async def open_gauges(self) -> list[OpenCount]:
        """Open commands by status and the oldest of each."""
        return [OpenCount.from_row(r) for r in await self._rows("open_gauges")]

    async def outbox_gauges(self, cap: int) -> OutboxBacklog:
        """The status outbox's backlog (counted up to ``cap``) and its oldest event's age."""
        row = await self._row("outbox_gauges", cap)
        assert row is not None  # an aggregate: always one row
        return OutboxBacklog.from_row(row)

    async def table_rows(self) -> TableRows:
        """Live and dead rows of ``commands`` (the statistics collector's counts)."""
        row = await self._row("table_rows")
        assert row is not None  # an aggregate: always one row
        return TableRows.from_row(row)

    async def get_command(self, command_id: str) -> asyncpg.Record | None:
        """A whole ``commands`` row (the HTTP handlers render it), or None."""
        return await self._row("get_command", command_id)

    async def get_device(self, device: str) -> asyncpg.Record | None:
        """A whole ``devices`` row, or None."""
        return await self._row("get_device", device)

    async def api_list_commands(
        self, device: str, organizations: Sequence[str] | None, enterprise: str | None,
        status: str | None, after_at: datetime | None, after_id: str | None, limit: int,
    ) -> list[asyncpg.Record]:
        """A device's commands newest first, keyset-paginated after (``after_at``,
        ``after_id``); optionally only some organizations, one enterprise or status."""
        return await self._rows(
            "api_list_commands", device,
            list(organizations) if organizations is not None else None,
            enterprise, status, after_at, after_id, limit)
