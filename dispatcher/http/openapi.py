"""The OpenAPI 3.1 document of the HTTP API, built from the pydantic models of the routes.

Served at ``GET /openapi.json`` and checked in as ``schemas/openapi.json``; a test fails
when they differ. Regenerate with ``python -m dispatcher.http.openapi > schemas/openapi.json``.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from dispatcher.http import amapi, amapi_models, aosp, campaigns
from dispatcher.http.commands import IDEMPOTENCY_KEY
from dispatcher.lifecycle import Status

REF = "#/components/schemas/{model}"
HEX = {"type": "string", "pattern": aosp.HEX_PATTERN}
SEED_ERRORS = {
    "400": "Invalid request (4000): the message names the field",
    "401": "No auth token (4002) or Invalid Token (4004)",
    "403": "Permission denied (4003): permission missing or organization not in the token",
    "404": "Entity not found (3001)",
    "409": "Command or campaign already finished (4009) or Idempotency-Key reused (4010)",
    "413": "Request body too large (4013)",
    "415": "Unsupported media type (4015)",
}
GOOGLE_ERRORS = {
    "400": "INVALID_ARGUMENT, or FAILED_PRECONDITION (cancelling an operation already done)",
    "401": "UNAUTHENTICATED", "403": "PERMISSION_DENIED",
    "404": "NOT_FOUND: no such device/operation in an organization the token covers",
    "409": "ABORTED (Idempotency-Key reused for another command)",
    "413": "INVALID_ARGUMENT: request body too large",
    "415": "INVALID_ARGUMENT: unsupported media type",
}

_MODELS: list[type[BaseModel]] = [
    aosp.CreateCommandRequest, aosp.CommandAnswer, aosp.CommandPage,
    aosp.ErrorAnswer, amapi_models.CommandRequest, amapi_models.Operation,
    amapi_models.ListOperationsResponse, amapi_models.GoogleError,
    campaigns.CreateCampaignRequest, campaigns.CampaignAnswer, campaigns.CampaignPage,
    campaigns.DryRunAnswer,
]


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _path_param(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


IDEMPOTENCY = {"name": "Idempotency-Key", "in": "header", "required": False,
               "schema": {"type": "string", "pattern": IDEMPOTENCY_KEY.pattern},
               "description": "the same key for the same organization creates one command"}


def _op(summary: str, permission: str, ok: dict[str, Any], google: bool,
        params: list[dict[str, Any]], body: type[BaseModel] | None = None) -> dict[str, Any]:
    errors = GOOGLE_ERRORS if google else SEED_ERRORS
    envelope = _ref(amapi_models.GoogleError if google else aosp.ErrorAnswer)
    out: dict[str, Any] = {
        "summary": summary, "description": f"Required permission: {permission}",
        "parameters": params,
        "responses": {"200": ok, **{k: _json(envelope, v) for k, v in errors.items()}},
    }
    if body is not None:
        out["requestBody"] = {"required": True,
                              "content": {"application/json": {"schema": _ref(body)}}}
    return out


def _seed_paths() -> dict[str, Any]:
    base = aosp.BASE
    where = [_path_param("organizationId", {"type": "string", "pattern": aosp.ORG_PATTERN}),
             _path_param("aosDeviceId", HEX)]
    one = [*where, _path_param("commandId", HEX)]
    answer = _json(_ref(aosp.CommandAnswer))
    listing = [
        _query("status", {"type": "string", "enum": [s.value for s in Status]},
               "only commands in this status"),
        _query("limit", {"type": "integer", "minimum": 1, "maximum": aosp.LIST_MAX},
               f"page size (default {aosp.LIST_DEFAULT})"),
        _query("cursor", {"type": "string"}, "nextCursor of the previous page"),
    ]
    return {
        base: {
            "post": _op("Create AOS command", "mdm.aosp.command.create", answer, False,
                        [*where, IDEMPOTENCY], aosp.CreateCommandRequest),
            "get": _op("List a device's commands, newest first", "mdm.aosp.command.read",
                       _json(_ref(aosp.CommandPage)), False, [*where, *listing]),
        },
        base + "/{commandId}": {
            "get": _op("Get a command", "mdm.aosp.command.read", answer, False, one)},
        base + "/{commandId}/cancel": {
            "post": _op("Cancel an open command", "mdm.aosp.command.cancel", answer, False, one)},
    }


def _campaign_paths() -> dict[str, Any]:
    base = campaigns.BASE
    where = [_path_param("organizationId", {"type": "string", "pattern": aosp.ORG_PATTERN})]
    one = [*where, _path_param("campaignId", HEX)]
    answer = _json(_ref(campaigns.CampaignAnswer))
    created = _json({"oneOf": [_ref(campaigns.CampaignAnswer), _ref(campaigns.DryRunAnswer)]},
                    "the campaign, or with dryRun whom it would reach")
    listing = [
        _query("limit", {"type": "integer", "minimum": 1, "maximum": campaigns.LIST_MAX},
               f"page size (default {campaigns.LIST_DEFAULT})"),
        _query("cursor", {"type": "string"}, "nextCursor of the previous page"),
    ]
    return {
        base: {
            "post": _op("Create a campaign: one command for many devices, in waves",
                        "mdm.aosp.campaign.create", created, False, [*where, IDEMPOTENCY],
                        campaigns.CreateCampaignRequest),
            "get": _op("List campaigns, newest first", "mdm.aosp.campaign.read",
                       _json(_ref(campaigns.CampaignPage)), False, [*where, *listing]),
        },
        base + "/{campaignId}": {
            "get": _op("Get a campaign", "mdm.aosp.campaign.read", answer, False, one)},
        base + "/{campaignId}/cancel": {
            "post": _op("Cancel a running campaign: its open commands end CANCEL",
                        "mdm.aosp.campaign.cancel", answer, False, one)},
    }


def _google_paths() -> dict[str, Any]:
    base = "/v1/enterprises/{enterpriseId}/devices/{deviceId}"
    where = [_path_param("enterpriseId", HEX), _path_param("deviceId", HEX)]
    one = [*where, _path_param("operationId", HEX)]
    op = _json(_ref(amapi_models.Operation))
    paging = [
        _query("pageSize", {"type": "integer", "minimum": 0, "maximum": amapi.INT32_MAX},
               f"page size: absent or 0 is {amapi.PAGE_DEFAULT}, more than "
               f"{amapi.PAGE_MAX} is {amapi.PAGE_MAX}"),
        _query("pageToken", {"type": "string"}, "nextPageToken of the previous page"),
    ]
    return {
        base + ":issueCommand": {
            "post": _op("enterprises.devices.issueCommand", "mdm.aosp.command.create", op, True,
                        [*where, IDEMPOTENCY], amapi_models.CommandRequest)},
        base + "/operations": {
            "get": _op("enterprises.devices.operations.list", "mdm.aosp.command.read",
                       _json(_ref(amapi_models.ListOperationsResponse)), True, [*where, *paging])},
        base + "/operations/{operationId}": {
            "get": _op("enterprises.devices.operations.get", "mdm.aosp.command.read", op, True,
                       one)},
        base + "/operations/{operationId}:cancel": {
            "post": _op("enterprises.devices.operations.cancel", "mdm.aosp.command.cancel",
                        _json({"type": "object", "maxProperties": 0}), True, one)},
    }


@functools.cache
def document() -> dict[str, Any]:
    """The whole OpenAPI document."""
    _, defs = models_json_schema([(m, "validation") for m in _MODELS], ref_template=REF)
    plain = {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "dispatcher", "version": "1",
                 "description": "MDM command dispatcher: seed 000 (AOS commands) and seed 001 "
                                "(Android Management API issueCommand). See docs/http-api.md."},
        "components": {
            "schemas": defs["$defs"],
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                               "bearerFormat": "JWT"}},
        },
        "security": [{"bearerAuth": []}],
        "paths": {
            **_seed_paths(), **_campaign_paths(), **_google_paths(),
            "/healthz": {"get": {"summary": "process up", "security": [],
                                 "responses": {"200": plain}}},
            "/openapi.json": {"get": {"summary": "this document", "security": [],
                                      "responses": {"200": plain}}},
        },
    }


def render() -> str:
    """The document as the checked-in text."""
    return json.dumps(document(), indent=2, sort_keys=True) + "\n"


async def serve(request: web.Request) -> web.Response:
    """``GET /openapi.json``."""
    return web.Response(text=render(), content_type="application/json")


if __name__ == "__main__":
    print(render(), end="")
