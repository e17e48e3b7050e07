"""Push: provider clients (Pushy, log) and the bounded-concurrency fan-out.

Delivery is driven by PostgreSQL, not memory: the pusher claims due pushes with a
lease (``claim_pushes``: one per device, in creation order, never two in flight for a
device), sends them with at most ``DISPATCHER_PUSH_CONCURRENCY`` requests in flight,
and records each answer. A crash mid-request leaves a lease that runs out, and the
push goes again: only requests in flight at a crash can repeat, at most
``DISPATCHER_PUSH_CONCURRENCY`` per crash (``dispatcher_push_repeats_total`` counts
them); a request never outlives its lease. Retriable failures back off with jitter
until the command expires; a ``Retry-After`` is a floor for that push and pauses every
claim until it has passed, and the first success after an outage brings the pushes
that were backing off forward. Permanent rejections end the command in ERROR with an
``errorType`` a person can act on and a fixed message for it (the provider's own text
is logged, never stored or answered). ``DISPATCHER_PUSH_RATE_PER_MIN`` is enforced before
claiming, so a claimed push never waits for it.

A provider is one class with ``name``, ``send`` and ``close`` (Pushy and log here, FCM
HTTP v1 in ``fcm.py``). Several run side by side, each in its own lane (``lanes.py``):
request slots, health and Retry-After pauses are per provider.
"""

from __future__ import annotations

import asyncio
import logging
import secrets as stdlib_secrets
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, Protocol

import aiohttp

from dispatcher import sealing
from dispatcher.aio import Backoff, retrying, sleep_unless, wait_any
from dispatcher.config import Settings
from dispatcher.exceptions import (
    PUSH_ERROR_MESSAGES,
    NoDeviceKey,
    PushError,
    SecretRefused,
    SecretUnreadable,
    StoreUnavailable,
)
from dispatcher.lanes import OVERFLOW_RETRY_S, Lane, lane_of, make_lanes
from dispatcher.lifecycle import retry_delay_s
from dispatcher.metrics import Metrics
from dispatcher.secretbox import SecretBox, reveal, strip
from dispatcher.store import Store

log = logging.getLogger(__name__)

PERMANENT_TOKEN_CODES = frozenset({"NO_RECIPIENTS", "INVALID_TOKEN", "DEVICE_NOT_FOUND"})
_CLAIM_GATHER_S = 0.005
_ANSWER_GATHER_S = 0.003
"""How long accepted answers gather before they are recorded together."""
_ANSWER_BATCH = 500
"""With a backlog, how long to let requests finish before claiming fewer than a batch."""
_RECORD_BACKOFF = Backoff(0.2, 2.0, attempts=21)
"""Writing an answer: 20 retries through an outage, then the lease retries the push."""
WAKING_QUERIES = frozenset({"push_accepted", "push_accepted_many", "push_rejected"})
"""Answers that wake the device's next parked command (see :class:`ClaimGate`)."""


@dataclass(frozen=True, slots=True)
class PushRequest:
    """One push to one device token."""

    command_id: str
    token: str
    data: dict[str, Any]
    ttl_s: int


class Provider(Protocol):
    """What a push provider implements."""

    name: str

    async def send(self, request: PushRequest) -> str:
        """Send one push; return the provider's push id or raise PushError."""

    async def close(self) -> None:
        """Release connections."""


class PushyProvider:
    """Pushy's REST API: ``POST /push?api_key=...`` with ``to``, ``data``, ``time_to_live``."""

    name = "pushy"

    def __init__(self, base_url: str, api_key: str, timeout_s: float, concurrency: int) -> None:
        self._url = base_url.rstrip("/") + "/push"
        self._api_key = api_key
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._limit = concurrency

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._limit, keepalive_timeout=60)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        return self._session

    async def send(self, request: PushRequest) -> str:
        """POST one push; classify every failure as retriable or permanent."""
        body = {"to": request.token, "data": request.data, "time_to_live": request.ttl_s}
        try:
            async with self._client().post(
                self._url, params={"api_key": self._api_key}, json=body
            ) as response:
                payload = await _json_or_empty(response)
                return pushy_answer(response.status, payload, request.token,
                                    retry_after_s(response.headers.get("Retry-After")))
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise transport_error(exc) from exc

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _json_or_empty(response: aiohttp.ClientResponse) -> dict[str, Any]:
    try:
        data = await response.json(content_type=None)
    except (ValueError, aiohttp.ContentTypeError):
        return {}
    return data if isinstance(data, dict) else {}


def transport_error(exc: BaseException) -> PushError:
    """What a failed request (no answer at all) means: always retriable."""
    if isinstance(exc, TimeoutError):
        return PushError("push request timed out", error_type="PUSH_TIMEOUT",
                         retriable=True, outcome="timeout")
    return PushError(f"cannot reach the push provider: {type(exc).__name__}",
                     error_type="PUSH_UNREACHABLE", retriable=True, outcome="connection_error")


def pushy_answer(status: int, payload: Mapping[str, Any], token: str,
                 retry_after: float | None = None) -> str:
    """The push id of Pushy's answer, or the :class:`PushError` it means (raised).

    The one decision "permanent or retriable" for Pushy, pure: an unknown token and a
    refused push are permanent; rate limits, server errors, timeouts and a refused API
    key are retriable (``retry_after``, the parsed ``Retry-After``, only for 429/5xx/408).
    """
    code = str(payload.get("code") or "")[:64]
    message = str(payload.get("error") or f"HTTP {status}")[:300]
    if token:
        message = message.replace(token, "<token>")  # logged: no device token in the logs
    if status == 200 and payload.get("id"):
        info = payload.get("info")
        info = info if isinstance(info, Mapping) else {}
        if token in (info.get("failed") or []) or info.get("devices") == 0:
            raise PushError("the push provider does not know this device token",
                            error_type="INVALID_TOKEN", retriable=False, outcome="rejected")
        return _clean_id(payload["id"])
    if status == 429:
        raise PushError("the push provider is rate limiting", error_type="RATE_LIMITED",
                        retriable=True, retry_after_s=retry_after, outcome="rate_limited")
    if status in (401, 403):
        raise PushError(f"the push provider refused the API key: {message}",
                        error_type="PROVIDER_AUTH", retriable=True, outcome="auth_error")
    if status >= 500 or status == 408:
        raise PushError(f"the push provider failed: {message}", error_type="PROVIDER_ERROR",
                        retriable=True, retry_after_s=retry_after, outcome="server_error")
    if code in PERMANENT_TOKEN_CODES:
        raise PushError(f"invalid device token: {message}", error_type="INVALID_TOKEN",
                        retriable=False, outcome="rejected")
    raise PushError(f"the push provider rejected the push ({code or status}): {message}",
                    error_type="PUSH_REJECTED", retriable=False, outcome="rejected")


def _clean_id(value: Any) -> str:
    """A provider's push id as PostgreSQL stores it: a failure to write the answer stops
    the process (see :meth:`Pusher.run`), so no answer may carry a NUL, a lone surrogate
    or an unbounded length."""
    text = str(value).encode("utf-8", "replace").decode("utf-8").replace("\x00", "")
    return text[:200]


def retry_after_s(value: str | None) -> float | None:
    """Seconds of a ``Retry-After`` header given in seconds (an HTTP date is ignored)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class LogProvider:
    """Development provider: logs each push (never its parameters) and accepts it."""

    name = "log"

    async def send(self, request: PushRequest) -> str:
        """Accept the push and log that it happened."""
        push_id = stdlib_secrets.token_hex(12)
        log.info("push (log provider)", extra={"command_id": request.command_id,
                                               "push_id": push_id, "ttl_s": request.ttl_s})
        return push_id

    async def close(self) -> None:
        """Nothing to release."""


class RateLimiter:
    """A token bucket: at most ``per_min`` sends a minute, bursts of a tenth of a second's worth.

    Tokens are taken *before* pushes are claimed, so a claimed push never waits for the
    limiter while its lease runs out.
    """

    def __init__(self, per_min: int) -> None:
        self.rate = per_min / 60.0
        self.capacity = max(1.0, self.rate / 10)
        self.tokens = self.capacity
        self.updated = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def take(self, most: int) -> int:
        """Take up to ``most`` whole tokens now; return how many were taken."""
        self._refill()
        taken = min(most, int(self.tokens))
        self.tokens -= taken
        return taken

    def give_back(self, n: int) -> None:
        """Return tokens taken but not used."""
        self.tokens = min(self.capacity, self.tokens + n)

    def wait_s(self) -> float:
        """Seconds until one whole token is available."""
        self._refill()
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate


class ClaimGate:
    """Claims exclusive, recorded answers shared: the two never overlap in one process.

    Recording an answer wakes the device's next parked command. A claim running at the
    same moment, from a snapshot taken before that answer, could park the command again
    and it would wait for the timer's repair (``wake_parked``), which stays the safety
    net between processes. Answers go first: a claim waits for the answers already
    waiting, so a busy pusher cannot starve the recording of answers (their leases keep
    devices blocked until they are recorded).
    """

    def __init__(self) -> None:
        self._cond = asyncio.Condition()
        self._sharing = 0
        self._sharing_waiting = 0
        self._claiming = False

    @asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        """Hold while recording an answer that may wake a parked command."""
        async with self._cond:
            self._sharing_waiting += 1
            try:
                await self._cond.wait_for(lambda: not self._claiming)
            finally:
                self._sharing_waiting -= 1
            self._sharing += 1
        try:
            yield
        finally:
            async with self._cond:
                self._sharing -= 1
                self._cond.notify_all()

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Hold while claiming."""
        async with self._cond:
            await self._cond.wait_for(
                lambda: not self._claiming and not self._sharing and not self._sharing_waiting)
            self._claiming = True
        try:
            yield
        finally:
            async with self._cond:
                self._claiming = False
                self._cond.notify_all()


async def _cancelled(task: asyncio.Task[None]) -> None:
    """Cancel a task and wait until it has ended."""
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


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


class Pusher:
    """Claims due pushes from PostgreSQL and sends them with bounded concurrency.

    Memory is bounded by ``DISPATCHER_PUSH_CONCURRENCY``: a claim asks for at most as
    many rows as there are free request slots, so a backlog of a million pending pushes
    stays in PostgreSQL.
    """

    def __init__(self, settings: Settings, store: Store, provider: Provider | Sequence[Provider],
                 metrics: Metrics, box: SecretBox) -> None:
        self.settings = settings
        self.store = store
        providers = list(provider) if isinstance(provider, Sequence) else [provider]
        self.provider = providers[0]  # the default
        self.metrics = metrics
        self.box = box
        self.wake = asyncio.Event()
        self.outbox_wake: asyncio.Event | None = None
        rate = settings.push_rate_per_min
        self.limiter = RateLimiter(rate) if rate else None
        self.inflight: set[asyncio.Task[None]] = set()
        self.gate = ClaimGate()
        self._min_claim = max(1, settings.push_concurrency // 8)
        # Claimed ahead of free request slots: a slot that frees takes the next claimed
        # push at once instead of idling while a claim runs (measured at 50 ms provider
        # latency: ~80% of concurrency/latency without, ~90% with).
        self._ahead = max(1, settings.push_concurrency // 4)
        self.lanes: dict[str, Lane] = make_lanes(providers, settings.push_concurrency,
                                                 self._ahead)
        self._capacity = settings.push_concurrency * len(self.lanes)
        self._sending = 0
        self._stopping = False
        self._accepted: list[Accepted] = []
        self._accepted_ready = asyncio.Event()

    @property
    def provider_healthy(self) -> bool:
        """False while a provider fails: several retriable failures in a row (an outage,
        a wrong key); :meth:`provider_health` says which."""
        return all(lane.healthy for lane in self.lanes.values())

    def provider_health(self) -> dict[str, bool]:
        """Each configured provider and whether it is healthy."""
        return {name: lane.healthy for name, lane in self.lanes.items()}

    async def run(self, stop: asyncio.Event, poll_s: float = 0.25) -> None:
        """Claim and send until ``stop``; then wait for the requests in flight.

        The answer recorder runs beside the claims, supervised: when it fails (with any
        error but an outage, which it rides out), the pusher stops claiming and raises
        it, so the process stops loudly like any failed component (``app.py``) rather
        than piling answers up while every push repeats. Answers not yet written are
        pushed again when their leases run out (within :func:`repeat_bound`).
        """
        recorder = asyncio.create_task(self._record_accepted_loop(stop))
        claiming = asyncio.create_task(self._claim_loop(stop, poll_s))
        try:
            await asyncio.wait([recorder, claiming], return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            recorder.cancel()
            claiming.cancel()
            raise
        if recorder.done() and not recorder.cancelled() and recorder.exception():
            await _cancelled(claiming)
            log.error("the push answer recorder failed; stopping",
                      exc_info=recorder.exception())
            recorder.result()  # raises
        await claiming  # a failed claim loop raises here
        self._stopping = True  # claimed pushes still waiting for a slot are handed back
        await self.drain()
        await recorder
        await self._flush_accepted()

    async def _claim_loop(self, stop: asyncio.Event, poll_s: float) -> None:
        """Claim due pushes into free request slots until ``stop``; back off while the
        database is down (each retry looks at the free slots and pauses again)."""
        backlog = False
        while not stop.is_set():
            try:
                backlog = await retrying(
                    partial(self._claim_pass, stop, poll_s, backlog), stop,
                    retry_on=StoreUnavailable, backoff=Backoff(0.2, 5.0), on_retry=_claim_failed)
            except StoreUnavailable:
                return  # stopping (retrying gives up only then)

    async def _claim_pass(self, stop: asyncio.Event, poll_s: float, backlog: bool) -> bool:
        """Wait for free slots, claim once, wait for more work; return whether more is due."""
        free = self._capacity + self._ahead - len(self.inflight)
        if free <= 0:
            await asyncio.wait(self.inflight, return_when=asyncio.FIRST_COMPLETED)
            return backlog
        if backlog and free < self._min_claim and self.inflight:
            # More is due than there are free slots: let a few more requests finish
            # so that one claim fills several slots (a claim per push would make the
            # claim query, not the provider, the limit).
            await asyncio.wait(self.inflight, timeout=_CLAIM_GATHER_S)
            return backlog
        pause_s = self._pause_s()
        if pause_s > 0:
            await sleep_unless(stop, pause_s)
            return backlog
        allowed = self.limiter.take(free) if self.limiter is not None else free
        seen = claimed = 0
        self.wake.clear()  # before the claim: a wake-up during it is not lost
        try:
            seen, claimed = await self.claim(allowed)
        finally:
            if self.limiter is not None:
                self.limiter.give_back(allowed - claimed)
        if seen < allowed:
            await wait_any(stop, self.wake, timeout_s=poll_s)
        return seen >= allowed

    def _pause_s(self) -> float:
        """How long to wait before claiming: every provider's Retry-After, or the rate limit."""
        pause = min(lane.hold_s() for lane in self.lanes.values())
        if self.limiter is not None:
            pause = max(pause, self.limiter.wait_s())
        return pause

    async def drain(self, timeout_s: float | None = None) -> None:
        """Wait for in-flight pushes (their answers are recorded)."""
        if self.inflight:
            await asyncio.wait(self.inflight, timeout=timeout_s or self.settings.push_timeout_s + 1)

    async def claim(self, limit: int) -> tuple[int, int]:
        """Claim up to ``limit`` due pushes and start sending them.

        Return how many due rows were looked at (parked ones included) and how many were
        claimed; fewer looked at than ``limit`` means nothing more is due now.
        """
        if limit <= 0:
            return 0, 0
        async with self.gate.exclusive():
            rows = await self.store.fetch("claim_pushes", limit, self.settings.push_lease_s)
        claimed = [row for row in rows if row["claimed"]]
        for row in claimed:
            if row["reclaimed"]:
                self.metrics.push_repeats.inc()
            task = asyncio.create_task(self._push(row))
            self.inflight.add(task)
            task.add_done_callback(self._done)
        return len(rows), len(claimed)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.inflight.discard(task)

    def _request(self, row: Any) -> PushRequest:
        """The push of a claimed row, its secrets put back (or sealed to the device's key).

        Raises SecretRefused when the secret cannot go: it is never pushed without it.
        """
        ttl = int((row["expires_at"] - datetime.now(UTC)).total_seconds())
        data: dict[str, Any] = {"commandId": row["id"], "command": row["command"],
                                "params": row["params"],
                                "expiresAt": row["expires_at"].isoformat().replace("+00:00", "Z")}
        if row["secret"] is not None:
            key = row["public_key"]
            if key is None and self.settings.require_sealed_secrets:
                raise NoDeviceKey("the device has no publicKey and "
                                  "DISPATCHER_REQUIRE_SEALED_SECRETS refuses secrets in clear")
            secrets = self.box.open(row["id"], row["secret"])
            if key is None:
                data["params"] = reveal(row["params"], secrets)
            else:
                data["params"] = strip(row["params"], secrets)
                try:
                    data["sealed"] = sealing.seal(key, row["id"], secrets)
                except ValueError as exc:  # validated at ingest: only a key edited in place
                    raise NoDeviceKey(f"the device's publicKey {exc}") from exc
        return PushRequest(row["id"], row["push_token"], data, max(ttl, 1))

    async def _push(self, row: Any) -> None:
        """Send one claimed push and record the answer; a bug here leaves the lease to retry."""
        claimed_at = time.monotonic()
        try:
            lane = lane_of(self.lanes, row)
            if lane is None:
                await self._unavailable(row)
                return
            if lane.full():
                # This provider has no room (slow or hanging): the push goes back to the
                # table for a moment rather than hold capacity the other providers need.
                await self._record("push_retry", row["id"], max(lane.hold_s(), OVERFLOW_RETRY_S),
                                   row["push_attempts"])
                return
            async with lane.slot():
                waited = time.monotonic() - claimed_at
                hold_s = lane.hold_s()
                if self._stopping or hold_s > 0 or waited > self.settings.push_lease_s * 0.1:
                    # Not sent: shutting down, the provider asked for a pause, or the
                    # lease ran down while waiting (the request must not outlive it).
                    await self._record("push_retry", row["id"], hold_s, row["push_attempts"])
                    return
                self._sending += 1
                self.metrics.push_inflight.set(self._sending)
                try:
                    await self._send(row, lane)
                finally:
                    self._sending -= 1
                    self.metrics.push_inflight.set(self._sending)
        except Exception:
            log.exception("push failed unexpectedly; its lease will retry it",
                          extra={"command_id": row["id"], "device_id": row["aos_device"]})

    async def _send(self, row: Any, lane: Lane) -> None:
        try:
            request = self._request(row)
        except SecretRefused as exc:
            await self._refuse(row, exc)
            return
        started = time.monotonic()
        try:
            push_id = await lane.provider.send(request)
        except PushError as exc:
            self._observe(lane.name, started, exc.outcome)
            await self._record_failure(row, exc, lane)
            return
        self._observe(lane.name, started, "accepted")
        self.metrics.pushed(lane.name, row["created_at"], first=not row["pushes"])
        log.debug("push accepted", extra={
            "command_id": row["id"], "device_id": row["aos_device"],
            "organization": row["organization"], "push_id": push_id})
        recovered = not lane.healthy
        lane.failures = 0
        self._health()
        # The request slot is free now; the answer is recorded with others in one
        # statement (the command's lease keeps its device blocked until then).
        self._accepted.append(Accepted(row["id"], push_id, row["expires_at"],
                                       row["push_attempts"]))
        self._accepted_ready.set()
        if recovered:
            log.info("the push provider accepts pushes again; retrying pushes now",
                     extra={"provider": lane.name})
            await self._record("push_recovered")
            self.wake.set()

    def _observe(self, provider: str, started: float, outcome: str) -> None:
        self.metrics.push_duration.labels(provider).observe(time.monotonic() - started)
        self.metrics.push_requests.labels(provider, outcome).inc()

    def _health(self) -> None:
        """``dependency_up``: ``push_provider`` (all providers) and one per provider."""
        self.metrics.dependency_up.labels("push_provider").set(int(self.provider_healthy))
        for name, lane in self.lanes.items():
            self.metrics.dependency_up.labels(f"push_provider_{name}").set(int(lane.healthy))

    async def _unavailable(self, row: Any) -> None:
        """A device naming a provider that is not configured: ERROR, never sent elsewhere."""
        log.warning("push refused: the device's push provider is not configured", extra={
            "command_id": row["id"], "device_id": row["aos_device"],
            "organization": row["organization"], "provider": row["push_provider"],
            "error_type": "PROVIDER_UNAVAILABLE", "configured": list(self.lanes)})
        await self._end_in_error(row, "PROVIDER_UNAVAILABLE",
                                 PUSH_ERROR_MESSAGES["PROVIDER_UNAVAILABLE"])

    async def _record_failure(self, row: Any, exc: PushError, lane: Lane) -> None:
        extra = {"command_id": row["id"], "device_id": row["aos_device"],
                 "organization": row["organization"], "provider": lane.name,
                 "error_type": exc.error_type, "attempt": row["push_attempts"]}
        if exc.retriable:
            lane.failures += 1
            if not lane.healthy:
                self._health()
            delay = retry_delay_s(row["push_attempts"], self.settings.push_backoff_base_s,
                                  self.settings.push_backoff_max_s, exc.retry_after_s)
            if exc.retry_after_s is not None:
                # The provider's Retry-After is a floor for this push and a pause for all.
                delay = max(delay, exc.retry_after_s)
                lane.paused_until = max(lane.paused_until, time.monotonic() + exc.retry_after_s)
            log.warning("push failed, will retry", extra={**extra, "error": str(exc),
                                                          "retry_in_s": round(delay, 2)})
            await self._record("push_retry", row["id"], delay, row["push_attempts"])
            return
        # The provider's text is for operators only: the tenant sees a fixed message.
        log.warning("push rejected permanently", extra={**extra, "error": str(exc)})
        await self._end_in_error(row, exc.error_type, exc.public_message)

    async def _refuse(self, row: Any, exc: SecretRefused) -> None:
        """A push whose secret cannot go (unreadable, or no device key): ERROR, not sent."""
        if isinstance(exc, SecretUnreadable):
            self.metrics.secret_unreadable.inc()
        log.error("push refused: its secret cannot be sent", extra={
            "command_id": row["id"], "device_id": row["aos_device"],
            "organization": row["organization"], "error_type": exc.error_type,
            "error": str(exc), "key_ids": self.box.key_ids})
        await self._end_in_error(row, exc.error_type, str(exc))

    async def _end_in_error(self, row: Any, error_type: str, message: str) -> None:
        """End the command ERROR (guarded: a terminal command stays), wake what follows."""
        moved = await self._record("push_rejected", row["id"], error_type, message[:500],
                                   row["push_attempts"])
        self.metrics.transitions(moved)
        if moved and self.outbox_wake is not None:
            self.outbox_wake.set()
        if any(r["woke_next"] for r in moved):
            self.wake.set()

    async def _record_accepted_loop(self, stop: asyncio.Event) -> None:
        """Record accepted pushes in batches, soon after they are accepted, until ``stop``."""
        while not stop.is_set():
            await wait_any(stop, self._accepted_ready, timeout_s=1.0)
            if len(self._accepted) < _ANSWER_BATCH:
                await asyncio.sleep(_ANSWER_GATHER_S)  # let a few more answers arrive
            await self._flush_accepted()

    async def _flush_accepted(self) -> None:
        while self._accepted:
            batch, self._accepted = self._accepted[:_ANSWER_BATCH], self._accepted[_ANSWER_BATCH:]
            if not self._accepted:
                self._accepted_ready.clear()
            batch.sort()  # lock rows in id order, like every other batch
            rows = await self._record(
                "push_accepted_many", [b.command_id for b in batch], [b.push_id for b in batch],
                [b.expires_at for b in batch], self.settings.repush_after_s,
                self.settings.repush_max + 1, [b.claim for b in batch])
            if any(r["woken"] for r in rows):
                self.wake.set()  # the devices' next commands may go now
            _log_stale(batch, {r["stale"] for r in rows if r["stale"]})

    async def _record(self, name: str, *args: Any) -> list[Any]:
        """Record an answer; keep trying through a database outage (the lease is the bound).

        Not cut short by the stop signal: writing the answers of the requests in flight
        is what a graceful stop waits for. ``_RECORD_ATTEMPTS`` and
        ``DISPATCHER_SHUTDOWN_TIMEOUT_S`` bound it; an answer given up is pushed again
        when its lease runs out.
        """
        try:
            return await retrying(partial(self._write_answer, name, *args), None,
                                  retry_on=StoreUnavailable, backoff=_RECORD_BACKOFF)
        except StoreUnavailable:
            log.error("could not record a push answer; the lease will retry it",
                      extra={"query": name, "command_id": args[0] if args else None})
            return []

    async def _write_answer(self, name: str, *args: Any) -> list[Any]:
        if name in WAKING_QUERIES:
            async with self.gate.shared():
                return list(await self.store.fetch(name, *args))
        return list(await self.store.fetch(name, *args))


def _claim_failed(exc: BaseException, attempt: int, delay: float) -> None:
    log.warning("cannot claim pushes", extra={"error": str(exc)[:200]})
