"""What a batch of work did, gathered while its transaction runs and acted on after commit.

Handlers run inside one database transaction and only *record* their consequences
here; the caller publishes dead letters, counts metrics and wakes the pusher once the
transaction has committed, so nothing is announced that might still roll back.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from dispatcher import audit
from dispatcher.deadletter import Source, build
from dispatcher.events import DeadLetter
from dispatcher.store.records import Transition


@dataclass
class Effects:
    """Consequences of one batch, to act on after it is durable."""

    dead: list[tuple[Source, DeadLetter]] = field(default_factory=list)
    transitions: list[Transition] = field(default_factory=list)
    consumed: Counter[tuple[str, str]] = field(default_factory=Counter)
    held: Counter[tuple[str, str]] = field(default_factory=Counter)
    wake_push: bool = False
    wake_outbox: bool = False
    wake_campaigns: bool = False
    campaigns_halted: int = 0
    audit: list[audit.Entry] = field(default_factory=list)
    superseded: list[str] = field(default_factory=list)
    """The types of the commands superseded (``dispatcher_commands_superseded_total``)."""

    def reject(self, source: Source, reason: str, detail: str) -> None:
        """Dead-letter one input."""
        self.dead.append((source, build(source, reason, detail)))
        self.consumed[(source.topic, "dead_letter")] += 1

    def accept(self, source: Source, outcome: str = "ok") -> None:
        """Count one input as handled."""
        self.consumed[(source.topic, outcome)] += 1

    def absorb(self, part: Effects) -> None:
        """Add the effects of a committed part of the batch (a retried write's last try)."""
        self.dead.extend(part.dead)
        self.transitions.extend(part.transitions)
        self.consumed.update(part.consumed)
        self.held.update(part.held)
        self.wake_push |= part.wake_push
        self.wake_outbox |= part.wake_outbox
        self.wake_campaigns |= part.wake_campaigns
        self.campaigns_halted += part.campaigns_halted
        self.audit.extend(part.audit)
        self.superseded.extend(part.superseded)

    def freed_devices(self) -> list[str]:
        """Devices whose PENDING command just ended: their next parked command may go."""
        return sorted({
            t.aos_device for t in self.transitions
            if t.previous == "PENDING" and t.status not in ("PENDING", "RECEIVED")
        })

    def moved(self, rows: Iterable[Transition]) -> None:
        """Record transitions."""
        moved = list(rows)
        if moved:
            self.transitions.extend(moved)
            self.wake_outbox = True

    def cancelled(self, rows: Iterable[Transition]) -> None:
        """Record the transitions of ``cancel_commands`` and their audit entries."""
        moved = list(rows)
        self.moved(moved)
        self.audit.extend(
            audit.Entry(t.cancelled_by, audit.CANCEL, t.id, t.aos_device,
                        t.organization or "") for t in moved)
