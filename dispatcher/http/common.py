"""Plumbing both HTTP dialects share: error codes and envelopes, auth, JSON bodies, cursors.

Two dialects answer errors differently, chosen by path: seed 000 routes
(``/v1/organizations/...`` and everything else) answer
``{"status": false, "error": {"code": N, "message": "..."}}`` with the codes of
:class:`Code`; seed 001 routes (``/v1/enterprises/...``) answer Google's
``{"error": {"code": <http status>, "message": "...", "status": "INVALID_ARGUMENT"}}``.
:func:`error_response` renders an :class:`ApiError` in the request's envelope (the
middleware of :mod:`dispatcher.http.app` sends every error through it).
``docs/http-api.md`` lists the codes. This module imports neither dialect.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import UTC, datetime
from enum import IntEnum
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from dispatcher import auth, events, safejson
from dispatcher.exceptions import DispatcherError
from dispatcher.runtime import Runtime

RUNTIME: web.AppKey[Runtime] = web.AppKey("runtime", Runtime)
"""The service's live components, in the application of :func:`dispatcher.http.app.build_app`."""
MAX_BODY_BYTES = 64 * 1024
"""Largest request body read; ``params`` itself is limited to 4 KB of JSON."""
MAX_JSON_DEPTH = 32
HEX24 = re.compile(r"^[a-fA-F0-9]{24}$")
GOOGLE_PREFIX = "/v1/enterprises/"

M = TypeVar("M", bound=BaseModel)


class Code(IntEnum):
    """Error codes of the seed 000 envelope (``error.code``)."""

    ENTITY_NOT_FOUND = 3001
    ROUTE_NOT_FOUND = 3002
    INVALID_REQUEST = 4000
    NO_AUTH_TOKEN = 4002
    PERMISSION_DENIED = 4003
    INVALID_TOKEN = 4004
    METHOD_NOT_ALLOWED = 4005
    NOT_OPEN = 4009
    IDEMPOTENCY_CONFLICT = 4010
    BODY_TOO_LARGE = 4013
    UNSUPPORTED_MEDIA_TYPE = 4015
    INTERNAL = 5000
    UNAVAILABLE = 5003


GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
    404: "NOT_FOUND", 405: "UNIMPLEMENTED", 409: "ABORTED", 413: "INVALID_ARGUMENT",
    415: "INVALID_ARGUMENT", 500: "INTERNAL", 503: "UNAVAILABLE",
}


class ApiError(DispatcherError):
    """An error answer: HTTP status, seed 000 code, message, optional Google status."""

    def __init__(self, status: int, code: Code, message: str,
                 google_status: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.google_status = google_status or GOOGLE_STATUS.get(status, "UNKNOWN")


def invalid(message: str, google_status: str | None = None) -> ApiError:
    """400: the request is malformed; ``message`` names the field."""
    return ApiError(400, Code.INVALID_REQUEST, message, google_status)


def not_found(message: str = "Entity not found") -> ApiError:
    """404 3001."""
    return ApiError(404, Code.ENTITY_NOT_FOUND, message)


# -- rendering ---------------------------------------------------------------------------

def is_google(request: web.Request) -> bool:
    """Whether the request speaks seed 001's (Google's) dialect."""
    return request.path.startswith(GOOGLE_PREFIX)


def error_response(request: web.Request, err: ApiError) -> web.Response:
    """The error in the envelope of the request's dialect."""
    if is_google(request):
        body: dict[str, Any] = {"error": {"code": err.status, "message": err.message,
                                          "status": err.google_status}}
    else:
        body = {"status": False, "error": {"code": int(err.code), "message": err.message}}
    headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
    return web.json_response(body, status=err.status, headers=headers)


def ok(data: Any) -> web.Response:
    """A seed 000 success envelope."""
    return web.json_response({"status": True, "data": data})


def iso(value: datetime | None) -> str | None:
    """RFC 3339 UTC with microseconds, ``Z`` suffix; None for none, and for 'infinity'
    (the notBefore and deadline of a campaign's command whose wave is not released)."""
    if value is None or value.year == 9999:
        return None
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# -- auth ----------------------------------------------------------------------------------

def authorize(request: web.Request, permission: str) -> auth.Principal:
    """The request's principal, which must hold ``permission`` (else 401/403)."""
    principal = auth.authenticate(request.headers.get("Authorization"),
                                  runtime(request).settings)
    principal.require(permission)
    return principal


def runtime(request: web.Request) -> Runtime:
    """The service's runtime."""
    return request.app[RUNTIME]


def store_of(request: web.Request) -> Any:
    """The store, or 503 while the service is still connecting."""
    store = runtime(request).store
    if store is None:
        raise ApiError(503, Code.UNAVAILABLE, "Service unavailable: still starting")
    return store


# -- input ---------------------------------------------------------------------------------

def hex_id(request: web.Request, name: str) -> str:
    """A 24-hex path parameter, or 400 naming it."""
    value = request.match_info.get(name, "")
    if not HEX24.fullmatch(value):
        raise invalid(f"{name}: must match ^[a-fA-F0-9]{{24}}$")
    return value


def _check_tree(value: Any, depth: int = 0) -> None:
    if depth > MAX_JSON_DEPTH:
        raise invalid(f"body: nested deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, str):
        if "\x00" in value:
            raise invalid("body: NUL characters are not allowed in strings")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_tree(key, depth + 1)
            _check_tree(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_tree(item, depth + 1)


async def read_json(request: web.Request, required: bool = True,
                    limit: int = MAX_BODY_BYTES) -> dict[str, Any]:
    """The request's JSON object body (``{}`` when optional and empty), or 400/413/415
    (``limit``: the largest body read)."""
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, Code.BODY_TOO_LARGE, f"Request body larger than {limit} bytes")
    raw = await request.read()
    if len(raw) > limit:
        raise ApiError(413, Code.BODY_TOO_LARGE, f"Request body larger than {limit} bytes")
    if not raw.strip():
        if required:
            raise invalid("body: a JSON object is required")
        return {}
    ctype = request.content_type
    if ctype != "application/json" and not ctype.endswith("+json"):
        raise ApiError(415, Code.UNSUPPORTED_MEDIA_TYPE,
                       "Content-Type must be application/json")
    try:
        value = safejson.loads(raw, MAX_JSON_DEPTH)
        json.dumps(value, ensure_ascii=False).encode("utf-8")  # lone surrogates
    except safejson.TooDeep as exc:
        raise invalid(f"body: {exc}") from exc
    except (UnicodeError, ValueError) as exc:
        raise invalid(f"body: not valid UTF-8 JSON ({str(exc)[:120]})") from exc
    if not isinstance(value, dict):
        raise invalid("body: must be a JSON object")
    _check_tree(value)
    return value


def describe(exc: ValidationError) -> str:
    """A short message naming the fields that failed (never their values)."""
    return events.describe(exc, "body")


def validate(model: type[M], value: Any) -> M:
    """``value`` as ``model``, or 400 naming the fields that failed."""
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise invalid(describe(exc)) from exc


def query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter within bounds, or 400."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if not re.fullmatch(r"[0-9]{1,10}", raw) or not low <= int(raw) <= high:
        raise invalid(f"{name}: must be an integer from {low} to {high}")
    return int(raw)


# -- cursors -------------------------------------------------------------------------------

def encode_cursor(row: Any) -> str:
    """An opaque keyset cursor after ``row`` (newest-first order by created_at, id)."""
    raw = json.dumps([iso(row["created_at"]), row["id"]]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(token: str | None, name: str) -> tuple[datetime | None, str | None]:
    """The (created_at, id) a cursor stands for; 400 naming ``name`` when it is not ours."""
    if not token:
        return None, None
    try:
        padded = token + "=" * (-len(token) % 4)
        at, cid = safejson.loads(base64.urlsafe_b64decode(padded.encode("ascii")), 1)
        when = datetime.strptime(at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    except (ValueError, TypeError, UnicodeError, binascii.Error) as exc:
        raise invalid(f"{name}: not a cursor this API gave out") from exc
    if not isinstance(cid, str) or not HEX24.fullmatch(cid):
        raise invalid(f"{name}: not a cursor this API gave out")
    return when, cid
