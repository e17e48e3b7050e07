"""The one checker of a command's status events against the lifecycle (dispatcher.lifecycle).

A command's events on ``commands.status``, as an outside consumer sees them: each is a
transition the lifecycle allows (``previousStatus -> status``, never a status into
itself); no two different events lead into one status; chained from ``None`` they lead,
each once, to the status the command ended in. A relay may resend an event: the same
event twice counts once (:func:`histories`).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from dispatcher.lifecycle import Status, allowed


def histories(events: list[Any]) -> dict[str, list[dict[str, Any]]]:
    """Distinct status events by command id (a relay resend is the same event again)."""
    seen: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for e in events:
        if isinstance(e, dict) and "id" in e:
            seen[e["id"]].setdefault(json.dumps(e, sort_keys=True), e)
    return {cid: list(by_text.values()) for cid, by_text in seen.items()}


@dataclass(frozen=True)
class Verdict:
    """What is wrong with one command's status events."""

    into_twice: dict[str, int]
    """Statuses that more than one different event leads into, with how many events."""
    bad: list[str]
    """The transitions outside the lifecycle, as ``"PREV -> STATUS"``."""
    complete: bool
    """Whether the events chain from ``None``, each once, to the final status."""
    chain: list[tuple[str | None, str]]
    """The events' ``(previousStatus, status)`` pairs, sorted (for messages)."""
    final: str

    @property
    def duplicates(self) -> int:
        """Different events into one status, beyond the first."""
        return sum(n - 1 for n in self.into_twice.values())

    @property
    def problems(self) -> list[str]:
        """Every problem in words; empty when the history is right."""
        out = [f"two different events into {s}" for s in self.into_twice]
        out += [f"{t} is not in the lifecycle" for t in self.bad]
        if not self.complete:
            out.append(f"events {self.chain} do not lead to {self.final}")
        return out


def check(history: list[dict[str, Any]], final: str) -> Verdict:
    """Judge one command's distinct status events against the lifecycle and its final status."""
    into = Counter(e["status"] for e in history)
    bad = []
    for e in history:
        prev = Status(e["previousStatus"]) if e["previousStatus"] else None
        if prev == e["status"] or not allowed(prev, Status(e["status"])):
            bad.append(f"{prev} -> {e['status']}")
    by_prev = {e["previousStatus"]: e["status"] for e in history}
    chain: list[str] = []
    current: str | None = None
    while current in by_prev and len(chain) <= len(history):
        current = by_prev[current]
        chain.append(current)
    return Verdict(into_twice={s: n for s, n in into.items() if n > 1}, bad=bad,
                   complete=len(chain) == len(history) and current == final,
                   chain=sorted(by_prev.items(), key=str), final=final)
