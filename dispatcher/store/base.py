"""The named queries of ``queries.sql`` and the four ways a typed statement runs them.

:class:`Executor` is what every typed statement (``commands.py``, ``pushes.py``) is
written against: run a named query and return its rows, its first row or its status, or
run it as an ordered walk (:data:`WALKS`). :class:`~dispatcher.store.Store` runs them
on the pool (a walk in a transaction of its own); :class:`~dispatcher.store.Tx` runs
them on the connection of the caller's transaction.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from importlib import resources
from typing import Any

import asyncpg


def load_queries(text: str) -> dict[str, str]:
    """Split a file of ``-- name: x`` blocks into {name: sql}."""
    queries: dict[str, str] = {}
    for block in re.split(r"^-- name: ", text, flags=re.MULTILINE)[1:]:
        name, _, body = block.partition("\n")
        queries[name.strip()] = body.strip().rstrip(";")
    return queries


QUERIES = load_queries(resources.files(__package__).joinpath("queries.sql").read_text())


ORDERED_WALK = ("SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off; "
                "SET LOCAL plan_cache_mode = force_custom_plan")
"""Planner overrides for :data:`WALKS` only, scoped to their transaction (``SET LOCAL``).

These statements walk an index in order and stop at their LIMIT. A bitmap or sequential
scan cannot stop early: it reads every matching row and sorts them, O(backlog) per call.
With an estimate of one row (a table never analyzed, or just vacuumed) the planner
picks one as often as not: on a fresh table the push claim chose a Bitmap Heap Scan
that read all 1,000 due rows to return 64 (``tests/integration/test_plans.py``). The
index keys (``queries.sql``) choose the index; this keeps the walk a walk. And each
runs with a plan made for it (``force_custom_plan``): a generic plan cached by the
connection (asyncpg prepares every statement; PL/pgSQL caches its own) outlives the
table it was made for. Measured (``make bench``, *high LOCK p99 under a low backlog*): a
claim planned while the table held a few hundred rows drained a 100,000-row backlog
at 115 push/s instead of ~2,600.
"""
WALKS = frozenset({"claim_pushes", "expire_due", "take_outbox", "take_held_ready",
                   "take_held_overdue", "remove_finished", "remove_campaigns"})


def affected(status: str) -> int:
    """The row count of a command status such as ``UPDATE 3``."""
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


class Executor(ABC):
    """Runs named queries; the typed statements are written against this."""

    @abstractmethod
    async def _rows(self, name: str, *args: Any) -> list[asyncpg.Record]:
        """The rows of a named query."""

    @abstractmethod
    async def _status(self, name: str, *args: Any) -> str:
        """Run a named statement; its command status (``UPDATE 3``)."""

    @abstractmethod
    async def _walk(self, name: str, *args: Any) -> list[asyncpg.Record]:
        """The rows of one of :data:`WALKS`, run with :data:`ORDERED_WALK` in a transaction."""

    async def _row(self, name: str, *args: Any) -> asyncpg.Record | None:
        rows = await self._rows(name, *args)
        return rows[0] if rows else None
