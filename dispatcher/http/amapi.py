"""Seed 001: the Android Management API dialect (``enterprises.devices.issueCommand``).

``enterpriseId`` is the device's ``aosEnterprise`` and ``deviceId`` its ``aosDevice``; the
device must be registered with that enterprise and the token's ``org`` must cover its
organization (otherwise 404, so a token never learns that another organization's device
exists). A ``Command`` becomes a stored command whose ``params`` hold the command's
parameters under their AMAPI names; it is answered as an ``Operation`` named
``enterprises/{e}/devices/{d}/operations/{commandId}``.

Ack data convention: a device gateway reports the output-only status objects of a
command in the ``data`` of its DONE or ERROR ack under their AMAPI names
(``clearAppsDataStatus``, ``startLostModeStatus``, ``stopLostModeStatus``,
``esimStatus``, ``requestDeviceInfoStatus``), e.g.
``{"clearAppsDataStatus": {"results": {"com.example": {"clearingResult": "SUCCESS"}}}}``;
the latest such ack's objects appear in the operation's metadata. An ERROR ack's
``errorType`` becomes ``errorCode`` when it is a CommandErrorCode, else ``UNKNOWN``.

The request and answer models are in :mod:`dispatcher.http.amapi_models`.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from aiohttp import web

from dispatcher import auth
from dispatcher.http.amapi_models import CommandRequest
from dispatcher.http.commands import Order, cancel_command, create_command, list_page
from dispatcher.http.common import (
    ApiError,
    Code,
    authorize,
    hex_id,
    invalid,
    iso,
    query_int,
    read_json,
    store_of,
    validate,
)
from dispatcher.lifecycle import MAX_DURATION_S, Status
from dispatcher.secretbox import redact

PREFIX = "/v1/enterprises/{enterpriseId}/devices/"
COMMAND_TYPE = "type.googleapis.com/google.android.devicemanagement.v1.Command"
"""The ``@type`` of ``Operation.metadata`` in the real API's answers."""
DURATION = re.compile(r"^([0-9]{1,12})(\.[0-9]{1,9})?s$")
PAGE_DEFAULT, PAGE_MAX = 50, 100
"""``pageSize`` absent or 0 means the default; a larger one is clamped to the maximum."""
INT32_MAX = 2**31 - 1
ERROR_CODES = frozenset({"UNKNOWN", "API_LEVEL", "MANAGEMENT_MODE", "INVALID_VALUE",
                         "UNSUPPORTED"})
PARAM_FIELDS: dict[str, str] = {
    "clearAppsDataParams": "CLEAR_APP_DATA", "startLostModeParams": "START_LOST_MODE",
    "stopLostModeParams": "STOP_LOST_MODE", "addEsimParams": "ADD_ESIM",
    "removeEsimParams": "REMOVE_ESIM", "requestDeviceInfoParams": "REQUEST_DEVICE_INFO",
    "wipeParams": "WIPE",
}
REQUIRED_PARAMS = {"CLEAR_APP_DATA", "START_LOST_MODE", "ADD_ESIM", "REMOVE_ESIM",
                   "REQUEST_DEVICE_INFO"}
STATUS_FIELDS = ("clearAppsDataStatus", "startLostModeStatus", "stopLostModeStatus",
                 "esimStatus", "requestDeviceInfoStatus")


def plan(cmd: CommandRequest) -> tuple[str, dict[str, Any], Decimal | None]:
    """The stored (command type, params, exact duration seconds) of a valid Command, or 400."""
    given = [f for f in PARAM_FIELDS if getattr(cmd, f) is not None]
    if len(given) > 1:
        raise invalid(f"only one of {', '.join(PARAM_FIELDS)} may be set")
    kind: str | None = cmd.type if cmd.type != "COMMAND_TYPE_UNSPECIFIED" else None
    if kind is None and given:
        kind = PARAM_FIELDS[given[0]]
    if kind is None:
        raise invalid("type: COMMAND_TYPE_UNSPECIFIED is not allowed")
    if given and PARAM_FIELDS[given[0]] != kind:
        raise invalid(f"{given[0]}: only valid with type {PARAM_FIELDS[given[0]]}")
    if kind in REQUIRED_PARAMS and not given:
        field = next(f for f, t in PARAM_FIELDS.items() if t == kind)
        raise invalid(f"{field}: required for type {kind}")
    if kind != "RESET_PASSWORD" and (cmd.newPassword is not None or cmd.resetPasswordFlags):
        raise invalid("newPassword, resetPasswordFlags: only valid with type RESET_PASSWORD")
    params: dict[str, Any] = {}
    if cmd.newPassword is not None:
        params["newPassword"] = cmd.newPassword
    flags = [f for f in cmd.resetPasswordFlags or [] if f != "RESET_PASSWORD_FLAG_UNSPECIFIED"]
    if flags:
        params["resetPasswordFlags"] = flags
    if given:
        params[given[0]] = getattr(cmd, given[0]).model_dump(exclude_none=True)
    return kind, params, _seconds(cmd.duration)


def _seconds(duration: str | None) -> Decimal | None:
    if duration is None:
        return None
    match = DURATION.fullmatch(duration)
    if match is None:
        raise invalid("duration: must be a Duration such as \"600s\" or \"3.5s\"")
    value = Decimal(match.group(1) + (match.group(2) or ""))
    if value > MAX_DURATION_S:
        raise invalid(f"duration: at most {MAX_DURATION_S}s")
    return value


def operation(row: Any) -> dict[str, Any]:
    """The ``Operation`` of a ``commands`` row (never with a secret)."""
    e, d = row["aos_enterprise"], row["aos_device"]
    status = Status(row["status"])
    op: dict[str, Any] = {"name": f"enterprises/{e}/devices/{d}/operations/{row['id']}",
                          "metadata": _metadata(row, status),
                          "done": status not in (Status.PENDING, Status.RECEIVED)}
    error = _operation_error(status, row["error_message"])
    if error is not None:
        op["error"] = error
    return op


def _metadata(row: Any, status: Status) -> dict[str, Any]:
    """The ``Command`` of a row: what was asked, by and for whom, and what the device
    reported (the status objects of its final ack, the error code of an ERROR)."""
    meta: dict[str, Any] = {"@type": COMMAND_TYPE, "type": row["command"],
                            "createTime": iso(row["created_at"]),
                            "duration": duration_text(row["duration_s"], row["duration_nanos"])}
    user = row["user_name"] or (f"enterprises/{row['aos_enterprise']}/users/{row['mdm_user']}"
                                if row["mdm_user"] else None)
    if user:
        meta["userName"] = user
    for key, column in (("createdBy", "created_by"), ("cancelledBy", "cancelled_by"),
                        ("priority", "priority"), ("campaign", "campaign")):
        if row[column]:
            meta[key] = row[column]
    if iso(row["not_before"]) is not None:
        meta["notBefore"] = iso(row["not_before"])
    params = redact(row["params"] or {})
    for key in ("resetPasswordFlags", *PARAM_FIELDS):
        if key in params:
            meta[key] = params[key]
    final = _final_ack(row["results"] or [])
    data: dict[str, Any] = final["data"] if isinstance(final.get("data"), dict) else {}
    for key in STATUS_FIELDS:
        if isinstance(data.get(key), dict):
            meta[key] = redact(data[key])
    if status is Status.ERROR:
        error_type = _last_error_type(row["results"] or [])
        meta["errorCode"] = error_type if error_type in ERROR_CODES else "UNKNOWN"
    return meta


def duration_text(seconds: int, nanos: int) -> str:
    """A google.protobuf.Duration in JSON: ``"600s"``, ``"3.5s"``."""
    if not nanos:
        return f"{seconds}s"
    return f"{seconds}.{nanos:09d}".rstrip("0") + "s"


def _final_ack(results: list[Any]) -> dict[str, Any]:
    for entry in reversed(results):
        if isinstance(entry, dict) and entry.get("status") in ("DONE", "ERROR"):
            return entry
    return {}


def _last_error_type(results: list[Any]) -> str | None:
    for entry in reversed(results):
        if isinstance(entry, dict) and entry.get("status") == "ERROR":
            value = entry.get("errorType")
            return value if isinstance(value, str) else None
    return None


def _operation_error(status: Status, message: str | None) -> dict[str, Any] | None:
    if status is Status.ERROR:
        return {"code": 2, "message": message or "The device could not execute the command"}
    if status is Status.EXPIRED:
        return {"code": 4, "message": "The command expired before the device executed it"}
    if status is Status.CANCEL:
        return {"code": 1, "message": message or "The command was cancelled"}
    return None


def _not_found(what: str = "Device") -> ApiError:
    return ApiError(404, Code.ENTITY_NOT_FOUND, f"{what} not found")


async def _device(request: web.Request, principal: auth.Principal) -> Any:
    """Path and scope: the registered device of the enterprise, in an organization the
    token covers now (where a new command goes), or 404."""
    enterprise = hex_id(request, "enterpriseId")
    device_id = hex_id(request, "deviceId")
    device = await store_of(request).get_device(device_id)
    if (device is None or device["aos_enterprise"] != enterprise
            or not principal.covers(device["organization"])):
        raise _not_found()
    return device


async def _operation_row(request: web.Request, principal: auth.Principal) -> Any:
    """The operation of the path, scoped by the command's OWN organization (not the
    device's current one: a device moved to another organization does not take the
    commands sent to it before along), or 404."""
    enterprise = hex_id(request, "enterpriseId")
    device_id = hex_id(request, "deviceId")
    op = hex_id(request, "operationId")
    row = await store_of(request).get_command(op)
    if (row is None or row["aos_device"] != device_id or row["aos_enterprise"] != enterprise
            or not principal.covers(row["organization"])):
        raise _not_found("Operation")
    return row


async def issue_command(request: web.Request) -> web.Response:
    """``POST .../devices/{d}:issueCommand``: a Command in, an Operation out."""
    principal = authorize(request, auth.CREATE)
    device = await _device(request, principal)
    body = validate(CommandRequest, await read_json(request))
    kind, params, duration = plan(body)
    user = (f"enterprises/{device['aos_enterprise']}/users/{device['mdm_user']}"
            if device["mdm_user"] else None)
    row = await create_command(request, principal, device, kind, params, duration,
                               source="amapi", user_name=user,
                               order=Order(body.notBefore, body.priority))
    return web.json_response(operation(row))


async def get_operation(request: web.Request) -> web.Response:
    """``GET .../operations/{op}``."""
    principal = authorize(request, auth.READ)
    return web.json_response(operation(await _operation_row(request, principal)))


async def list_operations(request: web.Request) -> web.Response:
    """``GET .../operations?pageSize=&pageToken=``: newest first, only the commands of the
    organizations the token covers (each command's own). 404 when the device is not in a
    covered organization now and no command of one is listed (no existence leak)."""
    principal = authorize(request, auth.READ)
    enterprise = hex_id(request, "enterpriseId")
    device_id = hex_id(request, "deviceId")
    size = min(query_int(request, "pageSize", 0, 0, INT32_MAX) or PAGE_DEFAULT, PAGE_MAX)
    orgs = None if auth.ANY_ORG in principal.orgs else sorted(principal.orgs)
    rows, token = await list_page(
        request, device_id, organizations=orgs, enterprise=enterprise, status=None,
        limit=size, cursor=request.query.get("pageToken"), cursor_name="pageToken")
    if not rows:
        await _device(request, principal)
    body: dict[str, Any] = {"operations": [operation(r) for r in rows]}
    if token is not None:
        body["nextPageToken"] = token
    return web.json_response(body)


async def cancel_operation(request: web.Request) -> web.Response:
    """``POST .../operations/{op}:cancel``: ``{}``; 400 FAILED_PRECONDITION when finished
    (Google's HTTP mapping of that code)."""
    principal = authorize(request, auth.CANCEL)
    await read_json(request, required=False)
    try:
        await cancel_command(request, principal, await _operation_row(request, principal))
    except ApiError as err:
        if err.code is not Code.NOT_OPEN:
            raise
        raise ApiError(400, Code.NOT_OPEN, err.message,
                       google_status="FAILED_PRECONDITION") from err
    return web.json_response({})


def register(app: web.Application) -> None:
    """Add seed 001's routes."""
    app.router.add_post(PREFIX + "{deviceId:[^/:]+}:issueCommand", issue_command)
    app.router.add_get(PREFIX + "{deviceId}/operations", list_operations)
    app.router.add_get(PREFIX + "{deviceId}/operations/{operationId:[^/:]+}", get_operation)
    app.router.add_post(PREFIX + "{deviceId}/operations/{operationId:[^/:]+}:cancel",
                        cancel_operation)
