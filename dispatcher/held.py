"""Acks and cancels that arrive before their command: held in PostgreSQL until it does.

A held event is applied when its command is stored (same transaction) or by the timer's
pass; one whose command never comes within ``DISPATCHER_HOLD_WINDOW_S`` is dead-lettered
with reason ``unknown_command``. When replaying held events nothing is held again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import asyncpg

from dispatcher.deadletter import Source
from dispatcher.effects import Effects
from dispatcher.store import QUERIES


class _Event(Protocol):
    @property
    def commandId(self) -> str: ...

    def model_dump(self, *, mode: str) -> dict[str, object]: ...


async def hold(
    conn: asyncpg.Connection,
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
    await conn.execute(
        QUERIES["hold_events"],
        [kind] * len(items),
        [event.commandId for event, _ in items],
        [event.model_dump(mode="json") for event, _ in items],
        [source.to_json() for _, source in items],
    )
    for _, source in items:
        fx.accept(source, "held")
        fx.held[(kind, "held")] += 1
