"""A fake Pushy push API server, speaking Pushy's real HTTP API, for tests and the fleet simulator.

It serves ``POST /push?api_key=SECRET_API_KEY`` with Pushy's JSON request and answer shapes,
records every request, and lets the caller inject faults (latency, queued error statuses,
outage, rate limiting, permanently invalid tokens) while it runs.

Pushy facts this fake follows, and where they were found
---------------------------------------------------------
Confirmed in Pushy's own material:

* Endpoint ``POST https://api.pushy.me/push?api_key=SECRET_API_KEY`` with
  ``Content-type: application/json``; the key is a query parameter on every API.
  (https://pushy.me/docs/api/send-notifications, https://pushy.me/docs/api)
* Body: ``to`` (required) is a device token, an array of tokens, or a topic prefixed with
  ``/topics/``; ``data`` (required) is an object "limited to 4kb"; ``time_to_live`` (optional)
  is an integer number of seconds, default 30 days, "maximum value is 365 days";
  ``notification`` (iOS) is an object; ``tokens`` / ``registration_ids`` are alternatives
  to ``to``. (https://pushy.me/docs/api/send-notifications,
  https://cdn.pushy.me/docs/api/send-notifications)
* Success answer: 200 ``{"success": true, "id": "<push id>", "info": {"devices": N,
  "failed": [...]}}``, where ``info.failed`` lists "invalid device tokens passed in which
  could not be found" -- that is, Pushy answers **200** for a request naming unknown tokens
  and reports them in ``info.failed``. (pushy/pushy-node ``index.d.ts``,
  ``SendPushNotificationResult``)
* Push ids are 24 lowercase hex characters, e.g. ``5ea9b214b47cad768a35f13a``.
  (https://cdn.pushy.me/docs/api/notification-status)
* Error body shape ``{"code": "INVALID_API_KEY", "error": "The Secret API Key you used to
  authenticate is invalid."}``. (https://cdn.pushy.me/docs/api/pubsub-subscribers,
  "API Error Reference")
* Default rate limit 800 requests per minute; past it requests fail with
  "HTTP error 429 Too Many Requests". One request may target many devices.
  (https://support.pushy.me/hc/en-us/articles/360043864711-Is-there-an-API-rate-limit-)

NOT confirmed (Pushy's general error table was not retrievable from the reference search);
these follow the brief and are isolated in :data:`ERRORS` so they are easy to correct:

* HTTP 401 for ``INVALID_API_KEY`` (the code string is confirmed, the status is not).
* ``RATE_LIMIT_EXCEEDED`` as the 429 code, and a ``Retry-After`` header on 429s.
* ``INVALID_PARAM`` / ``MISSING_PARAM`` (400) for malformed or missing parameters.
* ``PAYLOAD_LIMIT_EXCEEDED`` with HTTP 413 for ``data`` over 4096 bytes.
* ``NO_RECIPIENTS`` (400) when *every* recipient is unknown. When only some are unknown the
  fake answers 200 with ``info.failed`` (confirmed behaviour above).
* ``INTERNAL_SERVER_ERROR`` as the code for every 5xx, including the 503 of an outage.

The fake never logs the api key and runs without an access log (aiohttp's access log would
print the query string, which carries the key).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import math
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from aiohttp import web

__all__ = [
    "DATA_LIMIT_BYTES",
    "DEFAULT_RATE_LIMIT_PER_MIN",
    "ERRORS",
    "MAX_TIME_TO_LIVE_S",
    "Callbacks",
    "FakePushy",
    "PushRecord",
    "serve_app",
]

log = logging.getLogger(__name__)

DATA_LIMIT_BYTES: Final = 4096
"""Largest ``data`` object accepted, as compact UTF-8 JSON (Pushy: "limited to 4kb")."""
MAX_TIME_TO_LIVE_S: Final = 365 * 24 * 3600
"""Largest ``time_to_live`` accepted (Pushy: "The maximum value is 365 days")."""
DEFAULT_RATE_LIMIT_PER_MIN: Final = 800
"""Pushy's default API rate limit, for callers that want the real figure."""
RATE_WINDOW_S: Final = 60.0

ERRORS: Final[dict[str, tuple[int, str]]] = {
    "INVALID_API_KEY": (401, "The Secret API Key you used to authenticate is invalid."),
    "MISSING_PARAM": (400, "Please provide all required parameters."),
    "INVALID_PARAM": (400, "One or more of the parameters you provided is invalid."),
    "NO_RECIPIENTS": (400, "None of the recipients you specified could be found."),
    "PAYLOAD_LIMIT_EXCEEDED": (413, "The push payload data exceeds the 4kb limit."),
    "RATE_LIMIT_EXCEEDED": (429, "You have exceeded your API rate limit."),
    "INTERNAL_SERVER_ERROR": (500, "An internal server error occurred."),
}
"""Pushy error code -> (default HTTP status, message). See the module docstring for sources."""

OnPush = Callable[["PushRecord"], Awaitable[None] | None]
R = TypeVar("R")


@dataclass
class PushRecord:
    """One request as the fake saw it, accepted or refused.

    ``status`` is 0 while the request is still being handled (during injected latency),
    then the HTTP status answered. ``to`` is ``""`` and ``data`` is ``{}`` when the body
    could not be read. ``at`` is the ``time.monotonic()`` (or injected clock) arrival time.
    """

    push_id: str | None
    to: str | list[str]
    data: dict[str, Any]
    time_to_live: int | None
    status: int
    at: float


@dataclass(frozen=True)
class _Decision:
    """What to answer: a status, a JSON body and extra headers."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


class _BadRequest(Exception):
    """A body that Pushy would refuse; carries the Pushy error code."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class _Push:
    """A validated push request body."""

    to: str | list[str]
    data: dict[str, Any]
    time_to_live: int | None


def _error(code: str, *, status: int | None = None, detail: str | None = None) -> _Decision:
    """Build a Pushy-shaped error answer for ``code``."""
    default_status, message = ERRORS[code]
    return _Decision(status or default_status, {"code": code, "error": detail or message})


def _code_for_status(status: int) -> str:
    """The Pushy error code the fake uses for an injected HTTP status."""
    if status == 429:
        return "RATE_LIMIT_EXCEEDED"
    if status in (401, 403):
        return "INVALID_API_KEY"
    if status == 413:
        return "PAYLOAD_LIMIT_EXCEEDED"
    if 400 <= status < 500:
        return "INVALID_PARAM"
    return "INTERNAL_SERVER_ERROR"


def _retry_after_header(seconds: float) -> dict[str, str]:
    """A ``Retry-After`` header; HTTP wants whole non-negative seconds, so round up."""
    return {"Retry-After": str(max(0, math.ceil(seconds)))}


def _recipients(body: dict[str, Any]) -> str | list[str]:
    """Read ``to`` (or its alternatives ``tokens`` / ``registration_ids``) from a body."""
    for key in ("to", "tokens", "registration_ids"):
        if key in body:
            value = body[key]
            break
    else:
        raise _BadRequest("MISSING_PARAM", "Please provide the 'to' parameter.")
    if isinstance(value, str) and value:
        return value
    if isinstance(value, list) and value and all(isinstance(t, str) and t for t in value):
        return list(value)
    raise _BadRequest(
        "INVALID_PARAM", "'to' must be a non-empty string or a non-empty array of strings."
    )


def _payload(body: dict[str, Any]) -> dict[str, Any]:
    """Read and size-check the required ``data`` object."""
    if "data" not in body:
        raise _BadRequest("MISSING_PARAM", "Please provide the 'data' parameter.")
    data = body["data"]
    if not isinstance(data, dict):
        raise _BadRequest("INVALID_PARAM", "'data' must be a JSON object.")
    size = len(json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode())
    if size > DATA_LIMIT_BYTES:
        raise _BadRequest("PAYLOAD_LIMIT_EXCEEDED", f"'data' is {size} bytes, over 4096.")
    return data


def _time_to_live(body: dict[str, Any]) -> int | None:
    """Read the optional ``time_to_live`` (integer seconds, 0 .. 365 days)."""
    ttl = body.get("time_to_live")
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 <= ttl <= MAX_TIME_TO_LIVE_S:
        raise _BadRequest("INVALID_PARAM", "'time_to_live' must be an integer 0 .. 31536000.")
    return ttl


def _parse_push(raw: bytes) -> _Push:
    """Decode and validate a push body the way Pushy does."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _BadRequest("INVALID_PARAM", "The request body is not valid JSON.") from exc
    if not isinstance(body, dict):
        raise _BadRequest("INVALID_PARAM", "The request body must be a JSON object.")
    if "notification" in body and not isinstance(body["notification"], dict):
        raise _BadRequest("INVALID_PARAM", "'notification' must be a JSON object.")
    return _Push(_recipients(body), _payload(body), _time_to_live(body))


def _fill_seen(record: PushRecord, raw: bytes) -> None:
    """Copy what is readable of a body into ``record``, even when Pushy would refuse it."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return
    if not isinstance(body, dict):
        return
    with contextlib.suppress(_BadRequest):
        record.to = _recipients(body)
    if isinstance(body.get("data"), dict):
        record.data = body["data"]
    ttl = body.get("time_to_live")
    if isinstance(ttl, int) and not isinstance(ttl, bool):
        record.time_to_live = ttl


class Callbacks:
    """A fake's callback on each accepted request (``on_push``, ``on_send``): one task per
    call, awaited if it returns an awaitable, its failures logged, all cancelled at stop."""

    def __init__(self, logger: logging.Logger, failed: str) -> None:
        """``failed``: the message logged when a call raises (``%s``: the request's id)."""
        self._log = logger
        self._failed = failed
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, callback: Callable[[R], Awaitable[None] | None], record: R,
              name: str | None) -> None:
        """Run ``callback(record)`` in a task of its own; ``name`` identifies it in the log."""
        task = asyncio.get_running_loop().create_task(self._run(callback, record, name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, callback: Callable[[R], Awaitable[None] | None], record: R,
                   name: str | None) -> None:
        try:
            result = callback(record)
            if inspect.isawaitable(result):
                await result
        except Exception:
            self._log.exception(self._failed, name)

    async def cancel(self) -> None:
        """Cancel every pending call and wait for them to end."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def serve_app(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Serve ``app`` on ``host:port`` without an access log (in-flight requests get 1 s at
    cleanup); the runner, already cleaned up if the port cannot be bound."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


def _as_list(to: str | list[str]) -> list[str]:
    """Recipients as a list."""
    return [to] if isinstance(to, str) else to


class FakePushy:
    """An in-process HTTP server that behaves like Pushy's Send Notifications API.

    All fault-injection attributes may be changed at any time while it runs; each request
    reads them when it arrives. Decisions (faults, auth, rate limit, validation) are made on
    arrival; ``latency_s`` is then slept before the answer is sent.

    Attributes:
        latency_s: Seconds added before answering each request.
        fail_next: Queue of HTTP statuses to answer next, one consumed per request
            (a 200 in the queue means "no fault" for that request).
        retry_after_s: ``Retry-After`` sent with injected 429s; with rate-limit 429s it
            overrides the computed wait. Sent as whole seconds, rounded up.
        rate_limit_per_min: Answer 429 past this many admitted requests in a sliding
            60 s window (``None``: unlimited; Pushy's default is 800).
        invalid_tokens: Tokens Pushy does not know. A request naming only such tokens is
            refused 400 ``NO_RECIPIENTS``; a mixed one is accepted with ``info.failed``.
        outage: When true, every request is answered 503.
        requests: Every request, in arrival order.
        accepted: The requests answered 200, in answer order.
        inflight: Requests being handled right now.
        max_inflight: The most requests ever handled at the same time.
        app: The aiohttp application (mountable elsewhere if wanted).
        url: The base URL it serves on once started (``""`` before), as :meth:`start`
            returns it.
    """

    def __init__(
        self,
        api_key: str = "test-key",
        *,
        on_push: OnPush | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Create the fake; ``on_push`` runs for each accepted push, ``clock`` stamps times."""
        self._api_key = api_key
        self._on_push = on_push
        self._clock = clock
        self.latency_s: float = 0.0
        self.fail_next: list[int] = []
        self.retry_after_s: float | None = None
        self.rate_limit_per_min: int | None = None
        self.invalid_tokens: set[str] = set()
        self.outage: bool = False
        self.requests: list[PushRecord] = []
        self.accepted: list[PushRecord] = []
        self.inflight: int = 0
        self.max_inflight: int = 0
        self._window: deque[float] = deque()
        self._callbacks = Callbacks(log, "fakepushy on_push callback failed for push %s")
        self._runner: web.AppRunner | None = None
        self.url: str = ""
        self.app = web.Application()
        self.app.router.add_post("/push", self._handle_push)

    def __repr__(self) -> str:
        """Describe the fake without revealing the api key."""
        return f"<FakePushy requests={len(self.requests)} accepted={len(self.accepted)}>"

    def accepted_for(self, token: str) -> list[PushRecord]:
        """The accepted pushes that named ``token`` (or topic) among their recipients."""
        return [r for r in self.accepted if token in _as_list(r.to)]

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0 picks a free port); return the base URL."""
        if self._runner is not None:
            raise RuntimeError("FakePushy is already started")
        self._runner = runner = await serve_app(self.app, host, port)
        bound_port = runner.addresses[0][1]
        shown_host = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown_host}:{bound_port}"
        return self.url

    async def stop(self) -> None:
        """Stop serving (in-flight answers get 1 s), then cancel pending ``on_push`` callbacks.

        Safe to call twice.
        """
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        await self._callbacks.cancel()

    # -- request handling -------------------------------------------------------------------

    async def _handle_push(self, request: web.Request) -> web.Response:
        """Answer one ``POST /push``."""
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            raw = await request.read()
            record = PushRecord(None, "", {}, None, 0, self._clock())
            self.requests.append(record)
            decision = self._decide(request.query.get("api_key"), raw)
            _fill_seen(record, raw)
            if self.latency_s > 0:
                await asyncio.sleep(self.latency_s)
            self._finish(record, decision)
            return web.json_response(
                decision.body, status=decision.status, headers=decision.headers
            )
        finally:
            self.inflight -= 1

    def _decide(self, api_key: str | None, raw: bytes) -> _Decision:
        """Choose the answer: injected fault, auth, rate limit, validation, then delivery."""
        fault = self._injected_fault()
        if fault is not None:
            return fault
        if not self._key_ok(api_key):
            return _error("INVALID_API_KEY")
        limited = self._rate_limited()
        if limited is not None:
            return limited
        try:
            push = _parse_push(raw)
        except _BadRequest as exc:
            return _error(exc.code, detail=exc.detail)
        return self._deliver(push)

    def _key_ok(self, api_key: str | None) -> bool:
        """Whether ``api_key`` is the configured key (constant-time comparison)."""
        return api_key is not None and secrets.compare_digest(
            api_key.encode(), self._api_key.encode()
        )

    def _injected_fault(self) -> _Decision | None:
        """The outage answer, or the next queued status from ``fail_next``."""
        if self.outage:
            return _error("INTERNAL_SERVER_ERROR", status=503)
        if not self.fail_next:
            return None
        status = self.fail_next.pop(0)
        if status == 200:
            return None
        decision = _error(_code_for_status(status), status=status)
        if status == 429 and self.retry_after_s is not None:
            decision.headers.update(_retry_after_header(self.retry_after_s))
        return decision

    def _rate_limited(self) -> _Decision | None:
        """A 429 when this request is past the sliding-minute limit; else count it."""
        limit = self.rate_limit_per_min
        if limit is None:
            return None
        now = self._clock()
        while self._window and now - self._window[0] >= RATE_WINDOW_S:
            self._window.popleft()
        if len(self._window) < limit:
            self._window.append(now)
            return None
        wait = self._window[0] + RATE_WINDOW_S - now if self._window else RATE_WINDOW_S
        if self.retry_after_s is not None:
            wait = self.retry_after_s
        decision = _error("RATE_LIMIT_EXCEEDED")
        decision.headers.update(_retry_after_header(wait))
        return decision

    def _deliver(self, push: _Push) -> _Decision:
        """Accept a valid push unless none of its recipients is known."""
        recipients = _as_list(push.to)
        failed = [t for t in recipients if t in self.invalid_tokens]
        if len(failed) == len(recipients):
            return _error("NO_RECIPIENTS")
        info: dict[str, Any] = {"devices": len(recipients) - len(failed)}
        if failed:
            info["failed"] = failed
        return _Decision(200, {"success": True, "id": secrets.token_hex(12), "info": info})

    def _finish(self, record: PushRecord, decision: _Decision) -> None:
        """Stamp the answer on the record; on success keep it and schedule ``on_push``."""
        record.status = decision.status
        if decision.status != 200:
            return
        record.push_id = str(decision.body["id"])
        self.accepted.append(record)
        if self._on_push is not None:
            self._callbacks.start(self._on_push, record, record.push_id)
