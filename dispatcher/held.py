"""Acks and cancels that arrive before their command: held in PostgreSQL until it does.

Everything about held events lives here: holding them (:func:`hold`), applying them
when their command is stored, in the same transaction (:func:`apply_held`), the timer's
pass that applies those whose command has arrived since (:func:`replay_ready`), and
dead-letters with reason ``unknown_command`` those whose command never came within
``DISPATCHER_HOLD_WINDOW_S`` (:func:`expire_overdue`). When replaying held events
nothing is held again.

``acks`` and ``ingest`` hold events through this module, so it imports neither: a replay
applies acks and cancels with the functions its caller names (:class:`Appliers`,
``ingest.REPLAY``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from dispatcher import deadletter
from dispatcher.deadletter import DeadLetters, Source
from dispatcher.effects import Effects
from dispatcher.events import CancelRequest, DeviceAck
from dispatcher.store import Store, Tx
from dispatcher.store.records import HeldEvent, NewHeld


class _Event(Protocol):
    @property
    def commandId(self) -> str: ...

    def model_dump(self, *, mode: str) -> dict[str, object]: ...


@dataclass(frozen=True, slots=True)
class Appliers:
    """How a replay applies held events: ``acks.apply_acks`` and ``ingest.apply_cancels``."""

    acks: Callable[..., Awaitable[None]]
    cancels: Callable[..., Awaitable[None]]


async def hold(
    tx: Tx,
    kind: str,
    items: Sequence[tuple[_Event, Source]],
    fx: Effects,
    hold_unknown: bool,
) -> None:
    """Hold events for commands not seen yet (or dead-letter them when replaying)."""
    if not items:
        return
    if not hold_unknown:
        for _, source in items:
            fx.reject(source, "unknown_command", "no command with this commandId arrived in time")
        return
    await tx.hold_events([NewHeld(kind, event.commandId, event.model_dump(mode="json"),
                                  source.to_json()) for event, source in items])
    for _, source in items:
        fx.accept(source, "held")
        fx.held[(kind, "held")] += 1


async def apply_held(tx: Tx, command_ids: list[str], fx: Effects, apply: Appliers) -> None:
    """Apply acks and cancels that were waiting for these commands."""
    if not command_ids:
        return
    await replay(tx, await tx.take_held_for(command_ids), fx, apply)


async def replay(tx: Tx, events: list[HeldEvent], fx: Effects, apply: Appliers) -> None:
    """Apply taken held events in their arrival order (nothing is held again)."""
    events = sorted(events, key=lambda e: e.seq)
    ack_items = [(DeviceAck.model_validate(e.payload), Source.from_json(e.source))
                 for e in events if e.kind == "ack"]
    cancels = [(CancelRequest.model_validate(e.payload), Source.from_json(e.source))
               for e in events if e.kind == "cancel"]
    for kind, n in (("ack", len(ack_items)), ("cancel", len(cancels))):
        if n:
            fx.held[(kind, "applied")] += n
    await apply.acks(tx, ack_items, fx, hold_unknown=False)
    await apply.cancels(tx, cancels, fx, hold_unknown=False)


async def replay_ready(store: Store, limit: int, apply: Appliers) -> Effects:
    """Apply up to ``limit`` held events whose command exists now (one transaction)."""
    fx = Effects()
    async with store.transaction() as tx:
        await replay(tx, await tx.take_held_ready(limit), fx, apply)
    return fx


async def expire_overdue(store: Store, letters: DeadLetters, window_s: float,
                         limit: int) -> Effects:
    """Dead-letter up to ``limit`` held events older than ``window_s``.

    Deleted and dead-lettered in one transaction: if the broker does not take the dead
    letters, the delete rolls back and the next pass tries again.
    """
    late = Effects()
    async with store.transaction() as tx:
        for event in await tx.take_held_overdue(window_s, limit):
            source = Source.from_json(event.source)
            late.dead.append((source, deadletter.build(
                source, "unknown_command",
                f"no command {event.command_id} arrived within "
                f"{window_s:g}s of this {event.kind}")))
            late.held[(event.kind, "expired")] += 1
        await letters.send(late.dead)
    letters.count(late.dead)
    return late
