"""One claimed push: through its device's lane to the provider, and what the answer means.

A claimed push goes through the lane of its device's provider (``lanes.py``). It is
handed back to the table, not sent, when that lane has no room, the provider asked for
a pause, the pusher is stopping, or its lease ran down while it waited for a slot (a
request never outlives its lease). An accepted push is queued for the answer recorder;
a retriable failure backs off with jitter (``lifecycle.retry_delay_s``; a
``Retry-After`` is a floor for that push and pauses its lane); a permanent one ends the
command in ERROR with an ``errorType`` a person can act on and a fixed message for it
(the provider's own text is logged, never stored or answered). A push whose secret
cannot go ends in ERROR unsent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from dispatcher.config import Settings
from dispatcher.exceptions import PUSH_ERROR_MESSAGES, PushError, SecretRefused, SecretUnreadable
from dispatcher.lifecycle import retry_delay_s
from dispatcher.metrics import Metrics
from dispatcher.push.answers import Accepted, AnswerRecorder
from dispatcher.push.lanes import OVERFLOW_RETRY_S, Lane, lane_of, report_health
from dispatcher.push.payload import build_request
from dispatcher.secretbox import SecretBox
from dispatcher.store.records import ClaimedPush

log = logging.getLogger("dispatcher.push")  # the push path logs as one logger, as before


class Delivery:
    """Sends claimed pushes through their lanes and records what each answer means."""

    def __init__(self, settings: Settings, lanes: dict[str, Lane], answers: AnswerRecorder,
                 metrics: Metrics, box: SecretBox) -> None:
        self.settings = settings
        self.lanes = lanes
        self.answers = answers
        self.metrics = metrics
        self.box = box
        self.stopping = False
        """Set once the claims have stopped: pushes still waiting for a slot go back."""
        self._sending = 0

    async def push(self, row: ClaimedPush) -> None:
        """Send one claimed push and record the answer; a bug here leaves the lease to retry."""
        claimed_at = time.monotonic()
        try:
            await self._through_lane(row, claimed_at)
        except Exception:
            log.exception("push failed unexpectedly; its lease will retry it",
                          extra={"command_id": row.id, "device_id": row.aos_device})

    async def _through_lane(self, row: ClaimedPush, claimed_at: float) -> None:
        lane = lane_of(self.lanes, row)
        if lane is None:
            await self._unavailable(row)
            return
        if lane.full():
            # This provider has no room (slow or hanging): the push goes back to the
            # table for a moment rather than hold capacity the other providers need.
            await self.answers.retry(row, max(lane.hold_s(), OVERFLOW_RETRY_S))
            return
        async with lane.slot(row.rank):
            waited = time.monotonic() - claimed_at
            hold_s = lane.hold_s()
            if self.stopping or hold_s > 0 or waited > self.settings.push_lease_s * 0.1:
                # Not sent: shutting down, the provider asked for a pause, or the
                # lease ran down while waiting (the request must not outlive it).
                await self.answers.retry(row, hold_s)
                return
            with self._in_flight():
                await self._send(row, lane)

    @contextmanager
    def _in_flight(self) -> Iterator[None]:
        """Count a request being sent (``dispatcher_push_inflight``)."""
        self._sending += 1
        self.metrics.push_inflight.set(self._sending)
        try:
            yield
        finally:
            self._sending -= 1
            self.metrics.push_inflight.set(self._sending)

    async def _send(self, row: ClaimedPush, lane: Lane) -> None:
        try:
            request = build_request(row, self.box, self.settings.require_sealed_secrets)
        except SecretRefused as exc:
            await self._refuse(row, exc)
            return
        if row.due_at is not None:  # the database's clock against ours: never below 0
            waited = (datetime.now(UTC) - row.due_at).total_seconds()
            self.metrics.push_wait.labels(row.priority).observe(max(waited, 0.0))
        started = time.monotonic()
        try:
            push_id = await lane.provider.send(request)
        except PushError as exc:
            self._observe(lane.name, started, exc.outcome)
            await self._failed(row, exc, lane)
            return
        self._observe(lane.name, started, "accepted")
        await self._accepted(row, push_id, lane)

    async def _accepted(self, row: ClaimedPush, push_id: str, lane: Lane) -> None:
        self.metrics.pushed(lane.name, row.created_at, first=not row.pushes)
        self.metrics.pushes_by_priority.labels(row.priority).inc()
        log.debug("push accepted", extra={
            "command_id": row.id, "device_id": row.aos_device,
            "organization": row.organization, "push_id": push_id})
        recovered = lane.succeeded()
        report_health(self.lanes, self.metrics)
        # The request slot is free now; the answer is recorded with others in one
        # statement (the command's lease keeps its device blocked until then).
        self.answers.accepted(Accepted(row.id, push_id, row.expires_at,
                                       row.push_attempts))
        if recovered:
            log.info("the push provider accepts pushes again; retrying pushes now",
                     extra={"provider": lane.name})
            await self.answers.recovered()

    def _observe(self, provider: str, started: float, outcome: str) -> None:
        self.metrics.push_duration.labels(provider).observe(time.monotonic() - started)
        self.metrics.push_requests.labels(provider, outcome).inc()

    async def _unavailable(self, row: ClaimedPush) -> None:
        """A device naming a provider that is not configured: ERROR, never sent elsewhere."""
        log.warning("push refused: the device's push provider is not configured", extra={
            "command_id": row.id, "device_id": row.aos_device,
            "organization": row.organization, "provider": row.push_provider,
            "error_type": "PROVIDER_UNAVAILABLE", "configured": list(self.lanes)})
        await self.answers.end_in_error(row, "PROVIDER_UNAVAILABLE",
                                        PUSH_ERROR_MESSAGES["PROVIDER_UNAVAILABLE"])

    async def _failed(self, row: ClaimedPush, exc: PushError, lane: Lane) -> None:
        extra = {"command_id": row.id, "device_id": row.aos_device,
                 "organization": row.organization, "provider": lane.name,
                 "error_type": exc.error_type, "attempt": row.push_attempts}
        if exc.retriable:
            await self._retry_later(row, exc, lane, extra)
            return
        # The provider's text is for operators only: the tenant sees a fixed message.
        log.warning("push rejected permanently", extra={**extra, "error": str(exc)})
        await self.answers.end_in_error(row, exc.error_type, exc.public_message)

    async def _retry_later(self, row: ClaimedPush, exc: PushError, lane: Lane,
                           extra: dict[str, Any]) -> None:
        lane.failed(exc.retry_after_s)
        if not lane.healthy:
            report_health(self.lanes, self.metrics)
        delay = retry_delay_s(row.push_attempts, self.settings.push_backoff_base_s,
                              self.settings.push_backoff_max_s, exc.retry_after_s)
        if exc.retry_after_s is not None:
            # The provider's Retry-After is a floor for this push and a pause for all.
            delay = max(delay, exc.retry_after_s)
        log.warning("push failed, will retry", extra={**extra, "error": str(exc),
                                                      "retry_in_s": round(delay, 2)})
        await self.answers.retry(row, delay)

    async def _refuse(self, row: ClaimedPush, exc: SecretRefused) -> None:
        """A push whose secret cannot go (unreadable, or no device key): ERROR, not sent."""
        if isinstance(exc, SecretUnreadable):
            self.metrics.secret_unreadable.inc()
        log.error("push refused: its secret cannot be sent", extra={
            "command_id": row.id, "device_id": row.aos_device,
            "organization": row.organization, "error_type": exc.error_type,
            "error": str(exc), "key_ids": self.box.key_ids})
        await self.answers.end_in_error(row, exc.error_type, str(exc))
