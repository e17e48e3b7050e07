"""Push providers and what their answers mean: Pushy and the log provider (FCM in ``fcm.py``).

A provider is one class with ``name``, ``send`` and ``close``: ``send`` turns one
:class:`PushRequest` into the provider's push id, or raises :class:`PushError` saying
whether the refusal is permanent or retriable. That decision is one pure function per
provider (:func:`pushy_answer` here, :func:`dispatcher.push.fcm.classify`), and a request
that got no answer at all is always retriable (:func:`transport_error`).
"""

from __future__ import annotations

import json
import logging
import secrets as stdlib_secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import yarl

from dispatcher.exceptions import PushError

log = logging.getLogger("dispatcher.push")  # the push path logs as one logger, as before

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


class HttpSession:
    """A provider's HTTP session, opened on first use (inside the event loop): at most
    ``concurrency`` connections, kept alive 60 s, each request bounded by ``timeout_s``."""

    def __init__(self, timeout_s: float, concurrency: int) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._limit = concurrency
        self._session: aiohttp.ClientSession | None = None

    def get(self) -> aiohttp.ClientSession:
        """The session, opened now if it is not open."""
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._limit, keepalive_timeout=60)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        return self._session

    async def close(self) -> None:
        """Close the session (a later request opens a new one)."""
        if self._session is not None:
            await self._session.close()
            self._session = None


class PushyProvider:
    """Pushy's REST API: ``POST /push?api_key=...`` with ``to``, ``data``, ``time_to_live``."""

    name = "pushy"

    def __init__(self, base_url: str, api_key: str, timeout_s: float, concurrency: int) -> None:
        # built once: a URL and its query per request were a measurable share of a push's
        # CPU (README "Tests and benchmark", the push ceiling)
        self._url = yarl.URL(base_url.rstrip("/") + "/push").with_query(api_key=api_key)
        self._http = HttpSession(timeout_s, concurrency)

    async def send(self, request: PushRequest) -> str:
        """POST one push; classify every failure as retriable or permanent."""
        body = {"to": request.token, "data": request.data, "time_to_live": request.ttl_s}
        try:
            async with self._http.get().post(
                self._url, data=json_body(body), headers=JSON_HEADERS
            ) as response:
                payload = await _json_or_empty(response)
                return pushy_answer(response.status, payload, request.token,
                                    retry_after_s(response.headers.get("Retry-After")))
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise transport_error(exc) from exc

    async def close(self) -> None:
        """Close the HTTP session."""
        await self._http.close()


JSON_HEADERS = {"Content-Type": "application/json"}


def json_body(value: Any) -> bytes:
    """A request body as compact JSON bytes (cheaper per request than aiohttp's ``json=``)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


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
    the process (see :meth:`dispatcher.push.Pusher.run`), so no answer may carry a NUL, a
    lone surrogate or an unbounded length."""
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
