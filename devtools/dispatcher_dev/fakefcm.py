"""A fake Firebase Cloud Messaging HTTP v1 server, with its own OAuth2 token endpoint.

It generates an RSA key pair and writes a Google service-account JSON file whose
``token_uri`` points at itself (:meth:`FakeFcm.write_credentials`), so the real
google-auth library signs the assertion and calls it exactly as it would call Google.

* ``POST /token`` (form: ``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer``,
  ``assertion``) verifies the assertion: RS256 under the account's public key,
  ``iss`` = ``client_email``, ``aud`` = ``token_uri`` or Google's token endpoint (which
  google-auth always writes), unexpired, scope including
  ``firebase.messaging``. It answers ``{"access_token", "expires_in", "token_type"}``, or
  400 ``{"error": "invalid_grant", "error_description"}`` as Google's endpoint does.
* ``POST /v1/projects/{project}/messages:send`` checks the bearer token (401
  ``UNAUTHENTICATED`` when unknown, expired or revoked), validates the v1 message (``token``
  present, ``data`` values strings only, ``android.ttl`` as ``"<seconds>s"``, ``android.priority``
  ``normal|high``, data at most 4096 bytes) and answers ``{"name":
  "projects/<project>/messages/<id>"}``.

Errors have FCM's documented shape: ``{"error": {"code", "message", "status", "details":
[{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode"}]}}``
(https://firebase.google.com/docs/cloud-messaging/error-codes,
https://firebase.google.com/docs/reference/fcm/rest/v1/ErrorCode; the HTTP statuses of
:data:`ERRORS` are the ones that table gives). Field errors carry a ``google.rpc.BadRequest``
detail instead. The fake never logs tokens or keys and runs without an access log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from dispatcher_dev.fakepushy import Callbacks, serve_app

__all__ = ["ERRORS", "SCOPE", "FakeFcm", "MessageRecord"]

log = logging.getLogger(__name__)

SCOPE: Final = "https://www.googleapis.com/auth/firebase.messaging"
GRANT_TYPE: Final = "urn:ietf:params:oauth:grant-type:jwt-bearer"
GOOGLE_TOKEN_URI: Final = "https://oauth2.googleapis.com/token"  # noqa: S105 (a URL)
"""The audience google-auth writes into every service-account assertion, whatever the
file's token_uri (Google's endpoint accepts it; so does this fake)."""
FCM_ERROR: Final = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST: Final = "type.googleapis.com/google.rpc.BadRequest"
DATA_LIMIT_BYTES: Final = 4096
_TTL = re.compile(r"^\d{1,10}(\.\d{1,9})?s$")

ERRORS: Final[dict[str, tuple[int, str, str]]] = {
    "INVALID_ARGUMENT": (400, "INVALID_ARGUMENT",
                         "The registration token is not a valid FCM registration token"),
    "UNREGISTERED": (404, "NOT_FOUND", "Requested entity was not found."),
    "SENDER_ID_MISMATCH": (403, "PERMISSION_DENIED", "SenderId mismatch"),
    "QUOTA_EXCEEDED": (429, "RESOURCE_EXHAUSTED", "Quota exceeded for quota metric."),
    "UNAVAILABLE": (503, "UNAVAILABLE", "The service is currently unavailable."),
    "INTERNAL": (500, "INTERNAL", "Internal error encountered."),
    "THIRD_PARTY_AUTH_ERROR": (401, "UNAUTHENTICATED", "Auth error from APNS or Web Push."),
}
"""FCM error code -> (HTTP status, google.rpc status, message)."""
_CODE_FOR_STATUS: Final = {400: "INVALID_ARGUMENT", 403: "SENDER_ID_MISMATCH",
                           404: "UNREGISTERED", 429: "QUOTA_EXCEEDED", 500: "INTERNAL",
                           503: "UNAVAILABLE"}


@dataclass
class MessageRecord:
    """One ``messages:send`` as the fake saw it; ``status`` 0 while it is being answered."""

    name: str | None
    token: str
    data: dict[str, Any]
    android: dict[str, Any]
    status: int
    at: float


@dataclass(frozen=True)
class _Answer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def fcm_error(code: str, detail: str | None = None) -> _Answer:
    """An FCM-shaped error answer with an ``FcmError`` detail naming ``code``."""
    status, rpc_status, message = ERRORS[code]
    return _Answer(status, {"error": {"code": status, "message": detail or message,
                                      "status": rpc_status,
                                      "details": [{"@type": FCM_ERROR, "errorCode": code}]}})


def unauthenticated() -> _Answer:
    """The 401 of a missing, unknown or expired access token (no FcmError detail)."""
    return _Answer(401, {"error": {
        "code": 401, "status": "UNAUTHENTICATED",
        "message": "Request had invalid authentication credentials. Expected OAuth 2 access "
                   "token, login cookie or other valid authentication credential."}})


def bad_field(field_name: str, description: str) -> _Answer:
    """A 400 INVALID_ARGUMENT naming the offending field (``google.rpc.BadRequest``)."""
    return _Answer(400, {"error": {
        "code": 400, "message": description, "status": "INVALID_ARGUMENT",
        "details": [{"@type": BAD_REQUEST, "fieldViolations": [
            {"field": field_name, "description": description}]}]}})


def validate_message(body: Any) -> _Answer | None:
    """The 400 a v1 ``messages:send`` body earns, or None when FCM would take it."""
    message = body.get("message") if isinstance(body, dict) else None
    if not isinstance(message, dict):
        return bad_field("message", "Invalid JSON payload: 'message' is required.")
    token = message.get("token")
    if not isinstance(token, str) or not token:
        return bad_field("message.token", "Recipient of the message is not set.")
    data = message.get("data", {})
    if not isinstance(data, dict):
        return bad_field("message.data", "Invalid value at 'message.data' (map).")
    for index, (key, value) in enumerate(data.items()):
        if not isinstance(value, str):
            return bad_field(f"message.data[{index}].value",
                             f"Invalid value at 'message.data[{index}].value' (TYPE_STRING), "
                             f"{key}")
    if len(json.dumps(data, separators=(",", ":")).encode()) > DATA_LIMIT_BYTES:
        return bad_field("message.data", "Message is too big.")
    android = message.get("android", {})
    if not isinstance(android, dict):
        return bad_field("message.android", "Invalid value at 'message.android'.")
    ttl = android.get("ttl")
    if ttl is not None and (not isinstance(ttl, str) or not _TTL.match(ttl)):
        return bad_field("message.android.ttl", "Invalid value at 'message.android.ttl' "
                         "(type.googleapis.com/google.protobuf.Duration)")
    if android.get("priority", "normal") not in ("normal", "high", "NORMAL", "HIGH"):
        return bad_field("message.android.priority",
                         "Invalid value at 'message.android.priority'")
    return None


def _retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(0, math.ceil(seconds)))}


OnSend = Callable[["MessageRecord"], Awaitable[None] | None]


class FakeFcm:
    """An in-process FCM HTTP v1 server with a verifying OAuth2 token endpoint.

    Fault-injection attributes may change at any time; each request reads them on arrival.

    Attributes:
        latency_s: Seconds slept before answering each ``messages:send``.
        fail_next: Queue of faults for the next sends, one per request: an HTTP status
            (429, 500, 503, 404, 401, ...) or an FCM error code (``"SENDER_ID_MISMATCH"``);
            200 means "no fault". A 401 is an unauthenticated access token.
        retry_after_s: ``Retry-After`` sent with injected 429s and 503s (whole seconds).
        unregistered_tokens: Device tokens answered 404 ``UNREGISTERED``.
        outage: When true, every send is answered 503 ``UNAVAILABLE``.
        token_lifetime_s: ``expires_in`` of the access tokens issued.
        token_fail_next: How many token requests to refuse with ``invalid_grant``.
        token_requests: Token requests received (valid or not).
        tokens_issued: Access tokens issued.
        requests / accepted: Every send, and those answered 200.
        inflight / max_inflight: Sends being answered now, and the most at once.
    """

    def __init__(self, project_id: str = "fake-project", *,
                 client_email: str = "dispatcher@fake-project.iam.gserviceaccount.com",
                 clock: Callable[[], float] = time.monotonic,
                 on_send: OnSend | None = None) -> None:
        """Create the fake and its service account's key pair; ``on_send`` runs for each
        accepted message (the fleet simulator answers with acks)."""
        self.project_id = project_id
        self._on_send = on_send
        self._callbacks = Callbacks(log, "fakefcm on_send callback failed for %s")
        self.client_email = client_email
        self._clock = clock
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._key_id = secrets.token_hex(20)
        self.latency_s = 0.0
        self.fail_next: list[int | str] = []
        self.retry_after_s: float | None = None
        self.unregistered_tokens: set[str] = set()
        self.outage = False
        self.token_lifetime_s = 3600
        self.token_fail_next = 0
        self.token_requests = 0
        self.tokens_issued = 0
        self.requests: list[MessageRecord] = []
        self.accepted: list[MessageRecord] = []
        self.inflight = 0
        self.max_inflight = 0
        self._tokens: dict[str, float] = {}  # access token -> expiry (clock)
        self.url = ""
        self._runner: web.AppRunner | None = None
        self.app = web.Application()
        self.app.router.add_post("/token", self._handle_token)
        self.app.router.add_post("/v1/projects/{project}/messages:send", self._handle_send)

    def __repr__(self) -> str:
        """Describe the fake without any key or token."""
        return f"<FakeFcm requests={len(self.requests)} accepted={len(self.accepted)}>"

    @property
    def token_uri(self) -> str:
        """The OAuth2 token endpoint written into the service account."""
        return f"{self.url}/token"

    def service_account(self) -> dict[str, str]:
        """The service-account key (as Google's console downloads it), pointing here."""
        pem = self._key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()).decode()
        return {"type": "service_account", "project_id": self.project_id,
                "private_key_id": self._key_id, "private_key": pem,
                "client_email": self.client_email, "client_id": "100000000000000000001",
                "token_uri": self.token_uri}

    def write_credentials(self, path: str | Path) -> str:
        """Write the service-account JSON (mode 0600) once started; return its path."""
        if not self.url:
            raise RuntimeError("start FakeFcm before writing its credentials")
        target = Path(path)
        target.touch(mode=0o600, exist_ok=True)
        target.write_text(json.dumps(self.service_account()))
        return str(target)

    def expire_tokens(self) -> None:
        """Make every access token issued so far invalid (FCM then answers 401)."""
        self._tokens.clear()

    def accepted_for(self, token: str) -> list[MessageRecord]:
        """The accepted messages sent to device ``token``."""
        return [r for r in self.accepted if r.token == token]

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0: a free port); return the base URL."""
        if self._runner is not None:
            raise RuntimeError("FakeFcm is already started")
        self._runner = runner = await serve_app(self.app, host, port)
        self.url = f"http://{host}:{runner.addresses[0][1]}"
        return self.url

    async def stop(self) -> None:
        """Stop serving; safe to call twice."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        await self._callbacks.cancel()

    # -- the token endpoint -----------------------------------------------------------------

    async def _handle_token(self, request: web.Request) -> web.Response:
        self.token_requests += 1
        form = await request.post()
        refused = self._refuse_grant(str(form.get("grant_type", "")),
                                     str(form.get("assertion", "")))
        if refused is not None:
            return web.json_response({"error": "invalid_grant", "error_description": refused},
                                     status=400)
        access = "ya29.fake-" + secrets.token_urlsafe(32)
        self._tokens[access] = self._clock() + self.token_lifetime_s
        self.tokens_issued += 1
        return web.json_response({"access_token": access, "expires_in": self.token_lifetime_s,
                                  "token_type": "Bearer"})

    def _refuse_grant(self, grant_type: str, assertion: str) -> str | None:
        """Why the grant is refused (Google's ``error_description``), or None."""
        if self.token_fail_next > 0:
            self.token_fail_next -= 1
            return "Invalid grant: account not found"
        if grant_type != GRANT_TYPE:
            return "Invalid grant_type"
        try:
            claims = jwt.decode(assertion, self._key.public_key(), algorithms=["RS256"],
                                audience=[self.token_uri, GOOGLE_TOKEN_URI],
                                issuer=self.client_email,
                                options={"require": ["iss", "aud", "iat", "exp"]})
        except jwt.InvalidTokenError as exc:
            return f"Invalid JWT: {type(exc).__name__}"
        if SCOPE not in str(claims.get("scope", "")).split():
            return "Invalid JWT: the scope does not include firebase.messaging"
        return None

    # -- messages:send ----------------------------------------------------------------------

    async def _handle_send(self, request: web.Request) -> web.Response:
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            raw = await request.read()
            record = MessageRecord(None, "", {}, {}, 0, self._clock())
            self.requests.append(record)
            answer = self._decide(request, raw, record)
            if self.latency_s > 0:
                await asyncio.sleep(self.latency_s)
            record.status = answer.status
            if answer.status == 200:
                record.name = str(answer.body["name"])
                self.accepted.append(record)
                if self._on_send is not None:
                    self._callbacks.start(self._on_send, record, record.name)
            return web.json_response(answer.body, status=answer.status, headers=answer.headers)
        finally:
            self.inflight -= 1

    def _decide(self, request: web.Request, raw: bytes, record: MessageRecord) -> _Answer:
        """Auth, injected faults, validation, then delivery."""
        if not self._authorized(request.headers.get("Authorization", "")):
            return unauthenticated()
        fault = self._injected_fault()
        if fault is not None:
            return fault
        if request.match_info["project"] != self.project_id:
            return _Answer(404, {"error": {"code": 404, "status": "NOT_FOUND",
                                           "message": "Requested entity was not found."}})
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return bad_field("message", "Invalid JSON payload received.")
        _fill(record, body)
        invalid = validate_message(body)
        if invalid is not None:
            return invalid
        if record.token in self.unregistered_tokens:
            return fcm_error("UNREGISTERED")
        name = f"projects/{self.project_id}/messages/0:{secrets.token_hex(8)}"
        return _Answer(200, {"name": name})

    def _authorized(self, header: str) -> bool:
        scheme, _, token = header.partition(" ")
        expiry = self._tokens.get(token) if scheme.lower() == "bearer" else None
        return expiry is not None and self._clock() < expiry

    def _injected_fault(self) -> _Answer | None:
        if self.outage:
            return self._with_retry_after(fcm_error("UNAVAILABLE"))
        if not self.fail_next:
            return None
        fault = self.fail_next.pop(0)
        if fault == 200:
            return None
        if fault == 401:
            return unauthenticated()
        code = fault if isinstance(fault, str) else _CODE_FOR_STATUS.get(fault, "INTERNAL")
        return self._with_retry_after(fcm_error(code))

    def _with_retry_after(self, answer: _Answer) -> _Answer:
        if answer.status in (429, 503) and self.retry_after_s is not None:
            answer.headers.update(_retry_after(self.retry_after_s))
        return answer


def _fill(record: MessageRecord, body: Any) -> None:
    """Copy what is readable of a message into ``record``, even when FCM would refuse it."""
    message = body.get("message") if isinstance(body, dict) else None
    if not isinstance(message, dict):
        return
    if isinstance(message.get("token"), str):
        record.token = message["token"]
    if isinstance(message.get("data"), dict):
        record.data = message["data"]
    if isinstance(message.get("android"), dict):
        record.android = message["android"]
