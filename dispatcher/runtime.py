"""The record of the live components of a running service, which the HTTP handlers read.

:mod:`dispatcher.app` fills it in as the components start; the HTTP layer reaches it
through ``dispatcher.http.common.RUNTIME``. The component classes are named for the type
checker only: none of their modules imports this one or the HTTP layer.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dispatcher import audit

if TYPE_CHECKING:
    from dispatcher.campaigns import CampaignWorker
    from dispatcher.config import Settings
    from dispatcher.consumer import BatchProcessor, StreamConsumer
    from dispatcher.effects import Effects
    from dispatcher.kafka import Producer
    from dispatcher.metrics import Metrics
    from dispatcher.outbox import OutboxRelay
    from dispatcher.push import Pusher
    from dispatcher.secretbox import SecretBox
    from dispatcher.store import Store


@dataclass
class Runtime:
    """The live components, shared with the HTTP handlers."""

    settings: Settings
    metrics: Metrics
    box: SecretBox
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    store: Store | None = None
    producer: Producer | None = None
    consumer: StreamConsumer | None = None
    pusher: Pusher | None = None
    relay: OutboxRelay | None = None
    processor: BatchProcessor | None = None
    campaigns: CampaignWorker | None = None
    started: asyncio.Event = field(default_factory=asyncio.Event)
    http_url: str = ""

    def on_effects(self, fx: Effects) -> None:
        """Act on a committed batch: metrics, and wake the loops that have work now."""
        for (topic, outcome), n in fx.consumed.items():
            self.metrics.events_consumed.labels(topic, outcome).inc(n)
        for (kind, outcome), n in fx.held.items():
            self.metrics.held_events.labels(kind, outcome).inc(n)
        self.metrics.transitions(fx.transitions)
        for command in fx.superseded:
            self.metrics.superseded.labels(command).inc()
        self.metrics.campaigns_halted.inc(fx.campaigns_halted)
        audit.write(fx.audit)
        if fx.wake_push and self.pusher is not None:
            self.pusher.wake.set()
        if fx.wake_outbox and self.relay is not None:
            self.relay.wake.set()
        if fx.wake_campaigns and self.campaigns is not None:
            self.campaigns.wake.set()
