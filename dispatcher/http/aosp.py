"""Seed 000: the vendor's AOS command API under ``/v1/organizations/{organizationId}/...``.

Answers ``{"status": true, "data": ...}``; errors use the seed's envelope (see
:mod:`dispatcher.http.common`). Commands are created, listed and cancelled through the
pipeline both dialects share (:mod:`dispatcher.http.commands`).
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.json_schema import SkipJsonSchema

from dispatcher import auth
from dispatcher.events import NotBefore, Params, PushPriority, seconds_or_none
from dispatcher.http.commands import Order, cancel_command, create_command, list_page
from dispatcher.http.common import (
    ApiError,
    Code,
    authorize,
    hex_id,
    invalid,
    iso,
    not_found,
    ok,
    query_int,
    read_json,
    store_of,
    validate,
)
from dispatcher.lifecycle import MAX_DURATION_S, CommandType, Priority, Status
from dispatcher.secretbox import redact

ORG_PATTERN = r"^(([a-fA-F0-9]{24})|([a-zA-Z0-9\-]{3,}))$"
HEX_PATTERN = r"^[a-fA-F0-9]{24}$"
ORG_RE = re.compile(ORG_PATTERN)
BASE = "/v1/organizations/{organizationId}/mdm/aosp/enterprise/devices/{aosDeviceId}/commands"
SeedCommand = Literal["REBOOT", "LOCK", "CLEAR_APP_DATA", "RESET_PASSWORD", "DISENROLL",
                      "RELINQUISH_OWNERSHIP"]
LIST_DEFAULT, LIST_MAX = 50, 100


class CreateCommandRequest(BaseModel):
    """Body of ``POST .../commands``."""

    model_config = ConfigDict(extra="forbid")

    command: SeedCommand = Field(description="Command type to enqueue for the device.")
    duration: float | None = Field(
        default=None, ge=0, le=MAX_DURATION_S,
        description="Seconds of validity; absent or 0 means DISPATCHER_DEFAULT_DURATION_S.")
    params: Params | None = Field(
        default=None, description="Command-specific parameters (at most 4 KB as JSON); "
        "secret keys such as newPassword are never echoed.")
    notBefore: NotBefore = None
    priority: PushPriority = None

    _number = field_validator("duration", mode="before")(seconds_or_none)


Absent = SkipJsonSchema[None]
"""An optional field: omitted from answers when it has no value, never ``null``."""


class Result(BaseModel):
    """One device ack recorded for a command."""

    at: str
    status: str | Absent = None
    data: dict[str, Any] | Absent = None
    errorMessage: str | Absent = None
    errorType: str | Absent = None
    dataDropped: bool | Absent = Field(
        default=None, description="true: this older entry's data was dropped to keep "
        "results within its bounds")


class CommandRecord(BaseModel):
    """A command as the API shows it (times RFC 3339 UTC; secrets never included).

    A field without a value is omitted, not sent as ``null``."""

    id: str = Field(pattern=HEX_PATTERN)
    organization: str = Field(pattern=HEX_PATTERN)
    aosEnterprise: str = Field(pattern=HEX_PATTERN)
    aosDevice: str = Field(pattern=HEX_PATTERN)
    mdmUser: str | Absent = Field(default=None, pattern=HEX_PATTERN)
    command: CommandType
    params: dict[str, Any] | Absent = None
    pushId: str | Absent = None
    status: Status
    results: list[Result] | Absent = Field(
        default=None, description="the newest acks: at most 50 entries and 64 KB of JSON")
    resultsDropped: int | Absent = Field(
        default=None, description="how many older entries were dropped from results")
    deliveryExpiresAt: str | Absent = None
    sentAt: str | Absent = None
    expiresAt: str
    duration: float = Field(description="seconds of validity, fractions kept (3.5)")
    errorType: str | Absent = None
    errorMessage: str | Absent = None
    updatedAt: str
    createdAt: str
    createdBy: str | Absent = Field(
        default=None, description="who created it: the token's sub, or for a Kafka command "
        "the event's createdBy, else its topic")
    cancelledBy: str | Absent = Field(
        default=None, description="who cancelled it: the token's sub, or the cancel event's "
        "cancelledBy, else its topic")
    priority: Priority | Absent = Field(
        default=None, description="high, normal or low (the request's, else the type's "
        "default)")
    notBefore: str | Absent = Field(default=None, description="not pushed before this time")
    campaign: str | Absent = Field(default=None, description="the campaign it belongs to")


class CommandAnswer(BaseModel):
    """``{"status": true, "data": record}``."""

    status: Literal[True]
    data: CommandRecord


class CommandPage(BaseModel):
    """One page of a device's commands, newest first."""

    status: Literal[True]
    data: list[CommandRecord]
    nextCursor: str | None = Field(description="pass as ?cursor= for the next page; null: last")


class ErrorDetail(BaseModel):
    """What went wrong."""

    code: int
    message: str


class ErrorAnswer(BaseModel):
    """``{"status": false, "error": {...}}``."""

    status: Literal[False]
    error: ErrorDetail


def record(row: Any) -> dict[str, Any]:
    """The API form of a ``commands`` row; fields without a value are left out."""
    full = {
        "id": row["id"], "organization": row["organization"],
        "aosEnterprise": row["aos_enterprise"], "aosDevice": row["aos_device"],
        "mdmUser": row["mdm_user"], "command": row["command"],
        "params": redact(row["params"] or {}), "pushId": row["push_id"],
        "status": row["status"], "results": redact(row["results"] or []),
        "resultsDropped": row["results_dropped"] or None,
        "deliveryExpiresAt": iso(row["delivery_expires_at"]), "sentAt": iso(row["sent_at"]),
        "expiresAt": iso(row["expires_at"]),
        "duration": _seconds(row["duration_s"], row["duration_nanos"]),
        "errorType": row["error_type"], "errorMessage": row["error_message"],
        "updatedAt": iso(row["updated_at"]), "createdAt": iso(row["created_at"]),
        "createdBy": row["created_by"], "cancelledBy": row["cancelled_by"],
        "priority": row["priority"], "notBefore": iso(row["not_before"]),
        "campaign": row["campaign"],
    }
    return {key: value for key, value in full.items() if value is not None}


def _seconds(seconds: int, nanos: int) -> int | float:
    return seconds if not nanos else float(Decimal(seconds) + Decimal(nanos) / 10**9)


def organization_of(request: web.Request) -> str:
    """The path's ``organizationId``, or 400 naming it."""
    org = request.match_info.get("organizationId", "")
    if not ORG_RE.fullmatch(org):
        raise invalid(f"organizationId: must match {ORG_PATTERN}")
    return org


def require_covers(principal: auth.Principal, org: str) -> None:
    """403 unless the token may act for ``org``."""
    if not principal.covers(org):
        raise ApiError(403, Code.PERMISSION_DENIED,
                       "Permission denied: the token does not cover this organization")


def _scope(request: web.Request, permission: str) -> tuple[auth.Principal, str, str]:
    """Auth, path parameters and organization scope: (principal, organizationId,
    aosDeviceId)."""
    principal = authorize(request, permission)
    org = organization_of(request)
    device = hex_id(request, "aosDeviceId")
    require_covers(principal, org)
    return principal, org, device


async def _device(request: web.Request, org: str, device_id: str) -> Any:
    """The registered device of the organization, or 404 3001."""
    device = await store_of(request).get_device(device_id)
    if device is None or device["organization"] != org:
        raise not_found()
    return device


async def _command(request: web.Request, org: str, device_id: str) -> Any:
    """The command of the path, which must belong to the device and organization."""
    cid = hex_id(request, "commandId")
    row = await store_of(request).get_command(cid)
    if row is None or row["aos_device"] != device_id or row["organization"] != org:
        raise not_found()
    return row


async def create(request: web.Request) -> web.Response:
    """``POST .../commands``: enqueue a command (``Idempotency-Key`` supported)."""
    principal, org, device_id = _scope(request, auth.CREATE)
    body = validate(CreateCommandRequest, await read_json(request))
    device = await _device(request, org, device_id)
    row = await create_command(request, principal, device, body.command, body.params or {},
                               body.duration, source="http",
                               order=Order(body.notBefore, body.priority))
    return ok(record(row))


async def read(request: web.Request) -> web.Response:
    """``GET .../commands/{commandId}``."""
    _, org, device_id = _scope(request, auth.READ)
    return ok(record(await _command(request, org, device_id)))


async def listing(request: web.Request) -> web.Response:
    """``GET .../commands?status=&limit=&cursor=``: newest first, keyset-paginated."""
    _, org, device_id = _scope(request, auth.READ)
    status = request.query.get("status") or None
    if status is not None and status not in Status.__members__:
        raise invalid(f"status: must be one of {', '.join(Status)}")
    limit = query_int(request, "limit", LIST_DEFAULT, 1, LIST_MAX)
    await _device(request, org, device_id)
    rows, cursor = await list_page(
        request, device_id, organizations=[org], enterprise=None, status=status, limit=limit,
        cursor=request.query.get("cursor"), cursor_name="cursor")
    return web.json_response({"status": True, "data": [record(r) for r in rows],
                              "nextCursor": cursor})


async def cancel(request: web.Request) -> web.Response:
    """``POST .../commands/{commandId}/cancel``: PENDING/RECEIVED -> CANCEL; else 409 4009."""
    principal, org, device_id = _scope(request, auth.CANCEL)
    row = await _command(request, org, device_id)
    return ok(record(await cancel_command(request, principal, row)))


def register(app: web.Application) -> None:
    """Add seed 000's routes."""
    app.router.add_post(BASE, create)
    app.router.add_get(BASE, listing)
    app.router.add_get(BASE + "/{commandId}", read)
    app.router.add_post(BASE + "/{commandId}/cancel", cancel)
