"""The seed HTTP APIs: shared plumbing (errors, auth, JSON bodies, cursors) and registration.

Two dialects answer errors differently, chosen by path: seed 000 routes
(``/v1/organizations/...`` and everything else) answer
``{"status": false, "error": {"code": N, "message": "..."}}`` with the codes of
:class:`Code`; seed 001 routes (``/v1/enterprises/...``) answer Google's
``{"error": {"code": <http status>, "message": "...", "status": "INVALID_ARGUMENT"}}``.
A middleware renders every error, including unknown paths, wrong methods and bodies
that are too large, in the right envelope; an unexpected exception is logged and answers
500 in the envelope (the tests show none happens). ``docs/http-api.md`` lists the codes.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from enum import IntEnum
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from dispatcher import api, auth, safejson
from dispatcher.effects import Effects
from dispatcher.events import CommandCreated
from dispatcher.exceptions import DispatcherError, StoreUnavailable
from dispatcher.ingest import new_command, store_commands
from dispatcher.lifecycle import effective_duration
from dispatcher.store import QUERIES

if TYPE_CHECKING:
    import asyncpg

    from dispatcher.app import Runtime

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
"""Largest request body read; ``params`` itself is limited to 4 KB of JSON."""
MAX_JSON_DEPTH = 32
HEX24 = re.compile(r"^[a-fA-F0-9]{24}$")
IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
GOOGLE_PREFIX = "/v1/enterprises/"

M = TypeVar("M", bound=BaseModel)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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


def _from_http(exc: web.HTTPException) -> ApiError:
    if exc.status == 404:
        return ApiError(404, Code.ROUTE_NOT_FOUND, "Route not found")
    if exc.status == 405:
        return ApiError(405, Code.METHOD_NOT_ALLOWED, "Method not allowed")
    if exc.status == 413:
        return ApiError(413, Code.BODY_TOO_LARGE, "Request body too large")
    return ApiError(exc.status, Code.INVALID_REQUEST, exc.reason or "Invalid request")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error in the right envelope; nothing escapes as a bare 500."""
    try:
        return await handler(request)
    except ApiError as err:
        return error_response(request, err)
    except auth.AuthError as err:
        return error_response(request, _from_auth(err))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(request, _from_http(exc))
    except StoreUnavailable as exc:
        log.warning("store unavailable during a request", extra={"error": str(exc)[:200]})
        return error_response(request, ApiError(503, Code.UNAVAILABLE, "Service unavailable"))
    except Exception:
        log.exception("unexpected error answering a request",
                      extra={"method": request.method, "path": request.path[:200]})
        return error_response(request, ApiError(500, Code.INTERNAL, "Internal error"))


def ok(data: Any) -> web.Response:
    """A seed 000 success envelope."""
    return web.json_response({"status": True, "data": data})


def iso(value: datetime | None) -> str | None:
    """RFC 3339 UTC with microseconds, ``Z`` suffix."""
    if value is None:
        return None
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# -- auth ----------------------------------------------------------------------------------

def _from_auth(err: auth.AuthError) -> ApiError:
    if err.kind == "missing":
        return ApiError(401, Code.NO_AUTH_TOKEN, "No auth token")
    if err.kind == "invalid":
        return ApiError(401, Code.INVALID_TOKEN, "Invalid Token")
    return ApiError(403, Code.PERMISSION_DENIED, err.message)


def authorize(request: web.Request, permission: str) -> auth.Principal:
    """The request's principal, which must hold ``permission`` (else 401/403)."""
    principal = auth.authenticate(request.headers.get("Authorization"),
                                  runtime(request).settings)
    principal.require(permission)
    return principal


def runtime(request: web.Request) -> Runtime:
    """The service's runtime."""
    rt: Runtime = request.app[api.RUNTIME]
    return rt


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


async def read_json(request: web.Request, required: bool = True) -> dict[str, Any]:
    """The request's JSON object body (``{}`` when optional and empty), or 400/413/415."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise ApiError(413, Code.BODY_TOO_LARGE, f"Request body larger than {MAX_BODY_BYTES} bytes")
    raw = await request.read()
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, Code.BODY_TOO_LARGE, f"Request body larger than {MAX_BODY_BYTES} bytes")
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
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error["loc"]) or "body"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)[:1000]


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


async def list_page(request: web.Request, device: str, *, organizations: list[str] | None,
                    enterprise: str | None, status: str | None, limit: int,
                    cursor: str | None, cursor_name: str) -> tuple[list[Any], str | None]:
    """One page of a device's commands, newest first, and the cursor of the next page
    (``organizations``: only commands of these, by the command's own organization)."""
    after_at, after_id = decode_cursor(cursor, cursor_name)
    rows = await store_of(request).fetch(
        "api_list_commands", device, organizations, enterprise, status, after_at, after_id,
        limit + 1)
    page = list(rows[:limit])
    return page, (encode_cursor(page[-1]) if len(rows) > limit else None)


# -- creating and cancelling -----------------------------------------------------------

def command_id(organization: str, key: str | None) -> str:
    """A new command id: random, or derived from an Idempotency-Key within the organization."""
    if key is None:
        return secrets.token_hex(12)
    if not IDEMPOTENCY_KEY.fullmatch(key):
        raise invalid("Idempotency-Key: must be 1 to 255 visible ASCII characters")
    return hashlib.sha256(f"{organization}\n{key}".encode()).hexdigest()[:24]


def request_fingerprint(source: str, device: str, command: str, params: dict[str, Any],
                        duration: Decimal) -> bytes:
    """The canonical form of a create request (dialect, device, type, params, validity)."""
    return json.dumps([source, device, command, params, str(duration)], sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False).encode()


async def create_command(request: web.Request, principal: auth.Principal, device: Any,
                         command: str, params: dict[str, Any],
                         duration: Decimal | float | None, source: str,
                         user_name: str | None = None) -> Any:
    """Create a command for a registered device (or find its idempotent twin); its row.

    Under strict permissions a destructive type needs its own permission (403). A replay
    of an ``Idempotency-Key`` with a different request answers 409 4010."""
    rt = runtime(request)
    principal.require_type(command, rt.settings.strict_permissions)
    store = store_of(request)
    key = request.headers.get("Idempotency-Key")
    cid = command_id(device["organization"], key)
    try:
        event = CommandCreated(
            id=cid, organization=device["organization"], aosEnterprise=device["aos_enterprise"],
            aosDevice=device["aos_device"], mdmUser=device["mdm_user"], command=command,
            params=params, duration=None if duration is None else float(duration))
    except ValidationError as exc:
        raise invalid(describe(exc)) from exc
    exact = duration if isinstance(duration, Decimal) else None
    cmd = new_command(event, datetime.now(UTC), rt.settings.default_duration_s, rt.box,
                      exact_duration=exact, source=source, user_name=user_name,
                      created_by=principal.subject or None)
    canonical = request_fingerprint(source, cmd.aos_device, command, params,
                                    effective_duration(exact if exact is not None else duration,
                                                       rt.settings.default_duration_s))
    if key is not None:
        cmd = dataclasses.replace(cmd, request_hash=rt.box.fingerprint(canonical))
    fx = Effects()
    async with store.transaction() as conn:
        inserted = await store_commands(conn, [cmd], fx)
        row = await conn.fetchrow(QUERIES["get_command"], cid)
    rt.on_effects(fx)
    if cid not in inserted and not _same_request(rt, row, cmd, canonical):
        raise ApiError(409, Code.IDEMPOTENCY_CONFLICT,
                       "Idempotency-Key was already used for a different request")
    return row


def _same_request(rt: Runtime, row: Any, cmd: Any, canonical: bytes) -> bool:
    """Whether the stored command of a replayed key was created by this very request."""
    if row["aos_device"] != cmd.aos_device or row["command"] != cmd.command:
        return False
    stored = row["request_hash"]
    if stored is None:  # stored before request fingerprints, or by a Kafka event
        return True
    return rt.box.same_fingerprint(canonical, stored) is not False


async def cancel_command(request: web.Request, principal: auth.Principal, row: Any) -> Any:
    """Cancel an open command on behalf of ``principal``; the row after. 409 4009 when it
    is already finished."""
    rt = runtime(request)
    fx = Effects()
    async with store_of(request).transaction() as conn:
        moved = await conn.fetch(QUERIES["cancel_commands"], [row["id"]],
                                 [principal.subject or None])
        fx.cancelled(list(moved))
        after: asyncpg.Record = await conn.fetchrow(QUERIES["get_command"], row["id"])
    rt.on_effects(fx)
    if not moved:
        raise ApiError(409, Code.NOT_OPEN, f"Command is already {after['status']}",
                       google_status="FAILED_PRECONDITION")
    return after


# -- registration --------------------------------------------------------------------------

def register(app: web.Application) -> None:
    """Add the error middleware, both seed APIs and ``GET /openapi.json``."""
    from dispatcher import api_amapi, api_aosp, openapi

    app.middlewares.append(error_middleware)
    api_aosp.register(app)
    api_amapi.register(app)
    app.router.add_get("/openapi.json", openapi.serve)
