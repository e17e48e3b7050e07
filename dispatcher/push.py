"""Push: provider clients (Pushy, log) and the bounded-concurrency fan-out.

Delivery is driven by PostgreSQL, not memory: the pusher claims due pushes with a
lease (``claim_pushes``: one per device, in creation order, never two in flight for a
device), sends them with at most ``DISPATCHER_PUSH_CONCURRENCY`` requests in flight,
and records each answer. A crash mid-request leaves a lease that runs out, and the
push goes again: only requests in flight at a crash can repeat
(``dispatcher_push_repeats_total`` counts them). Retriable failures back off with
jitter (honouring ``Retry-After``) until the command expires; permanent rejections end
the command in ERROR with an ``errorType`` a person can act on.

A provider is one class with ``name``, ``send`` and ``close``: FCM HTTP v1 fits as one
more module.
"""

from __future__ import annotations

import asyncio
import logging
import secrets as stdlib_secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import aiohttp

from dispatcher.aio import sleep_unless, wait_any
from dispatcher.config import Settings
from dispatcher.exceptions import PushError, StoreUnavailable
from dispatcher.lifecycle import backoff_s, retry_delay_s
from dispatcher.metrics import Metrics
from dispatcher.secretbox import SecretBox
from dispatcher.store import Store

log = logging.getLogger(__name__)

PERMANENT_TOKEN_CODES = frozenset({"NO_RECIPIENTS", "INVALID_TOKEN", "DEVICE_NOT_FOUND"})


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
                return _pushy_answer(response, payload, request.token)
        except TimeoutError as exc:
            raise PushError("push request timed out", error_type="PUSH_TIMEOUT",
                            retriable=True, outcome="timeout") from exc
        except aiohttp.ClientError as exc:
            raise PushError(f"cannot reach the push provider: {type(exc).__name__}",
                            error_type="PUSH_UNREACHABLE", retriable=True,
                            outcome="connection_error") from exc

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


def _pushy_answer(response: aiohttp.ClientResponse, payload: dict[str, Any], token: str) -> str:
    """The push id of a success, or the PushError that the answer means."""
    status = response.status
    code = str(payload.get("code") or "")
    message = str(payload.get("error") or f"HTTP {status}")[:300]
    if status == 200 and payload.get("id"):
        failed = (payload.get("info") or {}).get("failed") or []
        if token in failed or (payload.get("info") or {}).get("devices") == 0:
            raise PushError("the push provider does not know this device token",
                            error_type="INVALID_TOKEN", retriable=False, outcome="rejected")
        return str(payload["id"])
    if status == 429:
        raise PushError("the push provider is rate limiting", error_type="RATE_LIMITED",
                        retriable=True, retry_after_s=_retry_after(response),
                        outcome="rate_limited")
    if status in (401, 403):
        raise PushError(f"the push provider refused the API key: {message}",
                        error_type="PROVIDER_AUTH", retriable=True, outcome="auth_error")
    if status >= 500 or status == 408:
        raise PushError(f"the push provider failed: {message}", error_type="PROVIDER_ERROR",
                        retriable=True, retry_after_s=_retry_after(response),
                        outcome="server_error")
    if code in PERMANENT_TOKEN_CODES:
        raise PushError(f"invalid device token: {message}", error_type="INVALID_TOKEN",
                        retriable=False, outcome="rejected")
    raise PushError(f"the push provider rejected the push ({code or status}): {message}",
                    error_type="PUSH_REJECTED", retriable=False, outcome="rejected")


def _retry_after(response: aiohttp.ClientResponse) -> float | None:
    value = response.headers.get("Retry-After")
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


def make_provider(settings: Settings) -> Provider:
    """The provider the settings name."""
    if settings.push_provider == "log":
        return LogProvider()
    return PushyProvider(settings.pushy_api_url, settings.pushy_api_key,
                         settings.push_timeout_s, settings.push_concurrency)


class RateLimiter:
    """A token bucket: at most ``per_min`` acquisitions a minute, bursts up to a second's worth."""

    def __init__(self, per_min: int) -> None:
        self.rate = per_min / 60.0
        self.capacity = max(1.0, self.rate)
        self.tokens = self.capacity
        self.updated = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        """Wait for a token."""
        async with self._lock:
            while True:
                now = time.monotonic()
                self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
                self.updated = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                await asyncio.sleep((1 - self.tokens) / self.rate)


class Pusher:
    """Claims due pushes from PostgreSQL and sends them with bounded concurrency."""

    def __init__(self, settings: Settings, store: Store, provider: Provider,
                 metrics: Metrics, box: SecretBox) -> None:
        self.settings = settings
        self.store = store
        self.provider = provider
        self.metrics = metrics
        self.box = box
        self.wake = asyncio.Event()
        self.outbox_wake: asyncio.Event | None = None
        rate = settings.push_rate_per_min
        self.limiter = RateLimiter(rate) if rate else None
        self.inflight: set[asyncio.Task[None]] = set()
        self.provider_failures = 0

    @property
    def provider_healthy(self) -> bool:
        """False after several retriable failures in a row (an outage, a wrong key)."""
        return self.provider_failures < 5

    async def run(self, stop: asyncio.Event, poll_s: float = 0.25) -> None:
        """Claim and send until ``stop``; then wait for the requests in flight."""
        failures = 0
        while not stop.is_set():
            free = self.settings.push_concurrency - len(self.inflight)
            if free <= 0:
                await asyncio.wait(self.inflight, return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                claimed = await self.claim(free)
                failures = 0
            except StoreUnavailable as exc:
                failures += 1
                log.warning("cannot claim pushes", extra={"error": str(exc)[:200]})
                await sleep_unless(stop, backoff_s(failures, 0.2, 5.0))
                continue
            if claimed < free:
                self.wake.clear()
                await wait_any(stop, self.wake, timeout_s=poll_s)
        await self.drain()

    async def drain(self, timeout_s: float | None = None) -> None:
        """Wait for in-flight pushes (their answers are recorded)."""
        if self.inflight:
            await asyncio.wait(self.inflight, timeout=timeout_s or self.settings.push_timeout_s + 1)

    async def claim(self, limit: int) -> int:
        """Claim up to ``limit`` due pushes and start sending them; return how many."""
        rows = await self.store.fetch("claim_pushes", limit, self.settings.push_lease_s)
        for row in rows:
            if row["reclaimed"]:
                self.metrics.push_repeats.inc()
            task = asyncio.create_task(self._push(row))
            self.inflight.add(task)
            task.add_done_callback(self.inflight.discard)
        self.metrics.push_inflight.set(len(self.inflight))
        return len(rows)

    def _request(self, row: Any) -> PushRequest:
        ttl = int((row["expires_at"] - datetime.now(UTC)).total_seconds())
        params = {**row["params"], **self.box.open(row["secret"])}
        data = {"commandId": row["id"], "command": row["command"], "params": params,
                "expiresAt": row["expires_at"].isoformat().replace("+00:00", "Z")}
        return PushRequest(row["id"], row["push_token"], data, max(ttl, 1))

    async def _push(self, row: Any) -> None:
        request = self._request(row)
        if self.limiter is not None:
            await self.limiter.acquire()
        started = time.monotonic()
        try:
            push_id = await self.provider.send(request)
        except PushError as exc:
            self._observe(started, exc.outcome)
            await self._record_failure(row, exc)
            return
        finally:
            self.metrics.push_inflight.set(max(len(self.inflight) - 1, 0))
        self._observe(started, "accepted")
        self.provider_failures = 0
        self.metrics.dependency_up.labels("push_provider").set(1)
        await self._record(
            "push_accepted", row["id"], push_id, row["expires_at"],
            self.settings.repush_after_s, self.settings.repush_max + 1,
        )

    def _observe(self, started: float, outcome: str) -> None:
        self.metrics.push_duration.labels(self.provider.name).observe(time.monotonic() - started)
        self.metrics.push_requests.labels(self.provider.name, outcome).inc()

    async def _record_failure(self, row: Any, exc: PushError) -> None:
        extra = {"command_id": row["id"], "device_id": row["aos_device"],
                 "error_type": exc.error_type, "attempt": row["push_attempts"]}
        if exc.retriable:
            self.provider_failures += 1
            if not self.provider_healthy:
                self.metrics.dependency_up.labels("push_provider").set(0)
            delay = retry_delay_s(row["push_attempts"], self.settings.push_backoff_base_s,
                                  self.settings.push_backoff_max_s, exc.retry_after_s)
            log.warning("push failed, will retry", extra={**extra, "retry_in_s": round(delay, 2)})
            await self._record("push_retry", row["id"], delay)
            return
        log.warning("push rejected permanently", extra={**extra, "error": str(exc)})
        await self._record("push_rejected", row["id"], exc.error_type, str(exc)[:500])
        self.metrics.transitions([{"command": row["command"], "status": "ERROR",
                                   "previous": "PENDING", "created_at": row["created_at"]}])
        if self.outbox_wake is not None:
            self.outbox_wake.set()

    async def _record(self, name: str, *args: Any) -> None:
        """Record an answer; keep trying through a database outage (the lease is the bound)."""
        attempt = 0
        while True:
            try:
                await self.store.execute(name, *args)
                return
            except StoreUnavailable:
                attempt += 1
                if attempt > 20:
                    log.error("could not record a push answer; the lease will retry it",
                              extra={"command_id": args[0]})
                    return
                await asyncio.sleep(backoff_s(attempt, 0.2, 2.0))
