"""Firebase Cloud Messaging HTTP v1: the FCM provider, its access tokens and its answers.

``POST {DISPATCHER_FCM_API_URL}/v1/projects/{project_id}/messages:send`` with a bearer
token that google-auth obtains from the service account's ``token_uri`` (a signed JWT
assertion, scope :data:`SCOPE`). The token is cached until shortly before it expires and
refreshed once for all concurrent requests; a 401 (other than THIRD_PARTY_AUTH_ERROR,
which is about the device platform's credentials) refreshes it once and repeats that one
request once. Failures are classified from FCM's own error code
(``error.details[].errorCode`` of the ``FcmError`` detail, else ``error.status``), not
from the HTTP status alone (:func:`classify`, pure). The access token, the private key and
the device token never reach the logs: FCM's text is logged with the device token masked.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import google.auth.exceptions
import google.auth.transport.requests
import requests
import yarl
from google.oauth2 import service_account

from dispatcher.exceptions import PushError
from dispatcher.push.providers import JSON_HEADERS, HttpSession, PushRequest, json_body
from dispatcher.push.providers import retry_after_s as parse_retry_after  # Pushy's reading

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"
_REFRESH_MARGIN_S = 60.0
"""A token is renewed this long before it expires (at most a quarter of its lifetime)."""

_STATUS_CODES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                 404: "NOT_FOUND", 429: "QUOTA_EXCEEDED", 500: "INTERNAL", 503: "UNAVAILABLE"}
"""The code an answer without any FCM error body stands for."""

_PERMANENT = {
    "UNREGISTERED": ("INVALID_TOKEN", "the device token is no longer registered"),
    "SENDER_ID_MISMATCH": ("SENDER_ID_MISMATCH", "the token belongs to another sender"),
    "THIRD_PARTY_AUTH_ERROR": ("THIRD_PARTY_AUTH_ERROR", "APNs or web push credentials refused"),
}
_RETRIABLE = {
    "QUOTA_EXCEEDED": ("RATE_LIMITED", "rate_limited", "FCM quota exceeded"),
    "RESOURCE_EXHAUSTED": ("RATE_LIMITED", "rate_limited", "FCM quota exceeded"),
    "UNAVAILABLE": ("PROVIDER_ERROR", "server_error", "FCM is unavailable"),
    "INTERNAL": ("PROVIDER_ERROR", "server_error", "FCM failed"),
    "UNAUTHENTICATED": ("PROVIDER_AUTH", "auth_error", "FCM refused the access token"),
    "PERMISSION_DENIED": ("PROVIDER_AUTH", "auth_error", "the service account may not send"),
    "NOT_FOUND": ("PROVIDER_ERROR", "server_error", "FCM answered 404 without an error code "
                  "(wrong project or URL?)"),
}


def build_message(request: PushRequest, priority: str = "high") -> dict[str, Any]:
    """The v1 ``messages:send`` body: data values are strings (objects as JSON text)."""
    data = {key: value if isinstance(value, str)
            else json.dumps(value, separators=(",", ":"), ensure_ascii=False)
            for key, value in request.data.items()}
    return {"message": {"token": request.token, "data": data,
                        "android": {"ttl": f"{max(request.ttl_s, 0)}s", "priority": priority}}}


def error_code(payload: Any) -> str:
    """FCM's error code: the ``FcmError`` detail's ``errorCode``, else ``error.status``."""
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        return ""
    for detail in error.get("details") or []:
        if isinstance(detail, dict) and detail.get("@type") == FCM_ERROR and detail.get(
                "errorCode"):
            return str(detail["errorCode"])[:64]
    return str(error.get("status") or "")[:64]


def _names_other_field(payload: dict[str, Any]) -> bool:
    """An INVALID_ARGUMENT whose ``BadRequest`` detail names a field other than the token."""
    details = (payload.get("error") or {}).get("details") or []
    fields = [str(v.get("field", "")) for d in details
              if isinstance(d, dict) and d.get("@type") == BAD_REQUEST
              for v in d.get("fieldViolations") or [] if isinstance(v, dict)]
    return bool(fields) and "message.token" not in fields


def classify(status: int, payload: Any, retry_after_s: float | None, token: str = "") -> PushError:
    """The PushError an FCM error answer means (pure; ``token`` is masked in the text)."""
    payload = payload if isinstance(payload, dict) else {}
    code = error_code(payload) or _STATUS_CODES.get(status, "")
    text = str((payload.get("error") or {}).get("message") or f"HTTP {status}")[:300]
    if token:
        text = text.replace(token, "<token>")
    if code in _PERMANENT:
        error_type, what = _PERMANENT[code]
        return PushError(f"FCM {code}: {what}: {text}", error_type=error_type,
                         retriable=False, outcome="rejected")
    if code == "INVALID_ARGUMENT":
        error_type = "PUSH_REJECTED" if _names_other_field(payload) else "INVALID_TOKEN"
        return PushError(f"FCM INVALID_ARGUMENT: {text}", error_type=error_type,
                         retriable=False, outcome="rejected")
    if code in _RETRIABLE or status >= 500 or status in (408, 429):
        error_type, outcome, what = _RETRIABLE.get(
            code, ("PROVIDER_ERROR", "server_error", "FCM failed"))
        return PushError(f"FCM {code or status}: {what}: {text}", error_type=error_type,
                         retriable=True, retry_after_s=retry_after_s, outcome=outcome)
    return PushError(f"FCM rejected the push ({code or status}): {text}",
                     error_type="PUSH_REJECTED", retriable=False, outcome="rejected")


class _TimedRequest(google.auth.transport.requests.Request):
    """google-auth's requests transport with our timeout (its default is 120 s)."""

    def __init__(self, session: requests.Session, timeout_s: float) -> None:
        super().__init__(session)
        self._timeout_s = timeout_s

    def __call__(self, url: str, method: str = "GET", body: Any = None, headers: Any = None,
                 timeout: float | None = None, **kwargs: Any) -> Any:
        return super().__call__(url, method, body, headers,  # type: ignore[no-untyped-call]
                                timeout=min(timeout or self._timeout_s, self._timeout_s),
                                **kwargs)


class AccessTokens:
    """OAuth2 access tokens of a service account, cached and refreshed once for everyone.

    google-auth signs the assertion and calls the account's ``token_uri`` (blocking, so
    in a thread); an asyncio lock makes concurrent callers share one refresh.
    """

    def __init__(self, credentials_file: str, timeout_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._credentials = service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
            credentials_file, scopes=[SCOPE])
        self.project_id: str = str(self._credentials.project_id or "")
        self._clock = clock
        self._lock = asyncio.Lock()
        self._token = ""
        self._valid_until = 0.0
        self._session = requests.Session()
        self._request = _TimedRequest(self._session, timeout_s)
        self.refreshes = 0

    def _fresh(self) -> bool:
        return bool(self._token) and self._clock() < self._valid_until

    async def get(self) -> str:
        """A valid access token, refreshed first when it is about to expire."""
        if self._fresh():
            return self._token
        async with self._lock:
            if not self._fresh():
                await self._refresh()
            return self._token

    async def renew(self, rejected: str) -> str:
        """A new token after FCM refused ``rejected`` (one refresh however many callers)."""
        async with self._lock:
            if self._token == rejected:
                await self._refresh()
            return self._token

    async def _refresh(self) -> None:
        try:
            await asyncio.to_thread(self._credentials.refresh, self._request)
        except google.auth.exceptions.RefreshError as exc:
            self._token = ""
            raise PushError(f"the FCM token endpoint refused the service account: "
                            f"{str(exc)[:200]}", error_type="PROVIDER_AUTH", retriable=True,
                            outcome="auth_error") from exc
        except (google.auth.exceptions.TransportError, requests.RequestException) as exc:
            self._token = ""
            raise PushError(f"cannot reach the FCM token endpoint: {type(exc).__name__}",
                            error_type="PUSH_UNREACHABLE", retriable=True,
                            outcome="connection_error") from exc
        self.refreshes += 1
        self._token = str(self._credentials.token)
        expiry = self._credentials.expiry  # naive UTC, google-auth's convention
        lifetime = 3600.0 if expiry is None else (
            expiry.replace(tzinfo=UTC) - datetime.now(UTC)).total_seconds()
        self._valid_until = self._clock() + lifetime - min(_REFRESH_MARGIN_S, lifetime / 4)

    def close(self) -> None:
        """Close the token endpoint's connections."""
        self._session.close()


class FcmProvider:
    """FCM HTTP v1 ``messages:send``; the answer's ``name`` is the push id."""

    name = "fcm"

    def __init__(self, api_url: str, tokens: AccessTokens, timeout_s: float,
                 concurrency: int) -> None:
        self.tokens = tokens
        self._url = yarl.URL(f"{api_url.rstrip('/')}/v1/projects/{tokens.project_id}"
                             "/messages:send")
        self._http = HttpSession(timeout_s, concurrency)

    async def send(self, request: PushRequest) -> str:
        """Send one message; a 401 renews the access token and sends it once more."""
        body = build_message(request)
        token = await self.tokens.get()
        status, payload, retry_after = await self._post(body, token)
        if status == 401 and error_code(payload) != "THIRD_PARTY_AUTH_ERROR":
            token = await self.tokens.renew(token)
            status, payload, retry_after = await self._post(body, token)
        if status == 200 and isinstance(payload, dict) and payload.get("name"):
            return str(payload["name"])
        raise classify(status, payload, retry_after, request.token)

    async def _post(self, body: dict[str, Any], token: str) -> tuple[int, Any, float | None]:
        headers = {**JSON_HEADERS, "Authorization": f"Bearer {token}"}
        try:
            async with self._http.get().post(self._url, data=json_body(body),
                                             headers=headers) as response:
                try:
                    payload = await response.json(content_type=None)
                except ValueError:
                    payload = {}
                return (response.status, payload,
                        parse_retry_after(response.headers.get("Retry-After")))
        except TimeoutError as exc:
            raise PushError("FCM did not answer in time", error_type="PUSH_TIMEOUT",
                            retriable=True, outcome="timeout") from exc
        except aiohttp.ClientError as exc:
            raise PushError(f"cannot reach FCM: {type(exc).__name__}",
                            error_type="PUSH_UNREACHABLE", retriable=True,
                            outcome="connection_error") from exc

    async def close(self) -> None:
        """Close the HTTP session and the token endpoint's connections."""
        await self._http.close()
        self.tokens.close()
