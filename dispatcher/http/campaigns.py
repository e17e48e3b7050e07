"""Campaigns over HTTP, in seed 000's dialect: create (or ``dryRun``), read, list, cancel
under ``/v1/organizations/{organizationId}/mdm/aosp/enterprise/campaigns``.

A campaign is accepted in the same transaction-and-effects pipeline as a
``mdm.campaigns.created`` event (:func:`dispatcher.campaigns.accept`): its targets are a
snapshot taken when the answer is given, and its commands follow in the background.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field

from dispatcher import auth, campaigns
from dispatcher.effects import Effects
from dispatcher.events import CampaignCounts, CampaignSpec, Waves
from dispatcher.http.aosp import Absent, _seconds, organization_of, require_covers
from dispatcher.http.commands import command_id
from dispatcher.http.common import (
    ApiError,
    Code,
    authorize,
    decode_cursor,
    encode_cursor,
    hex_id,
    iso,
    not_found,
    ok,
    query_int,
    read_json,
    runtime,
    store_of,
    validate,
)
from dispatcher.lifecycle import CommandType
from dispatcher.secretbox import redact

BASE = "/v1/organizations/{organizationId}/mdm/aosp/enterprise/campaigns"
CAMPAIGN_BODY_BYTES = 4 * 1024 * 1024
"""Largest campaign body: about 150,000 listed devices (``{"all": true}`` has no limit)."""
LIST_DEFAULT, LIST_MAX = 50, 100
STATUSES = ("PENDING", "RECEIVED", "DONE", "ERROR", "EXPIRED", "CANCEL")


class CreateCampaignRequest(CampaignSpec):
    """Body of ``POST .../campaigns``: the ``mdm.campaigns.created`` event without ``id``
    and ``organization``, and ``dryRun``."""

    dryRun: bool = Field(default=False, description="answer the targets and create nothing")


class CampaignRecord(BaseModel):
    """A campaign: what it sends, to how many, and how far it is."""

    id: str
    organization: str
    aosEnterprise: str
    command: CommandType
    params: dict[str, Any] = Field(description="secret keys such as newPassword are never echoed")
    duration: int | float
    notBefore: str | Absent = None
    target: dict[str, Any] = Field(description='{"all": true}, or {"devices": N}: N listed '
                                   "devices registered to the enterprise")
    waves: Waves | Absent = None
    state: Literal["RUNNING", "HALTED", "DONE", "CANCELLED"]
    targets: int = Field(description="devices the campaign reaches (a snapshot at acceptance)")
    released: int = Field(description="targets in the waves released so far")
    counts: CampaignCounts = Field(description="its commands by status (refreshed every "
                                   "DISPATCHER_CAMPAIGN_STATUS_INTERVAL_S)")
    haltReason: str | Absent = None
    nextReleaseAt: str | Absent = None
    createdAt: str
    updatedAt: str
    finishedAt: str | Absent = None
    createdBy: str | Absent = None
    cancelledBy: str | Absent = None


class CampaignAnswer(BaseModel):
    """``{"status": true, "data": campaign}``."""

    status: Literal[True]
    data: CampaignRecord


class CampaignPage(BaseModel):
    """A page of campaigns, newest first."""

    status: Literal[True]
    data: list[CampaignRecord]
    nextCursor: str | None


class DryRun(BaseModel):
    """Whom a campaign would reach; nothing is created."""

    dryRun: Literal[True]
    targets: int
    withoutPushToken: int
    disenrolled: int
    notRegistered: int = Field(description="listed devices not registered to the enterprise "
                               "(not targets)")


class DryRunAnswer(BaseModel):
    """``{"status": true, "data": dry run}``."""

    status: Literal[True]
    data: DryRun


def record(row: Any) -> dict[str, Any]:
    """The API form of a ``campaigns`` row; fields without a value are left out."""
    waves = None if row["wave_size"] is None else {
        "size": row["wave_size"], "intervalS": row["interval_s"],
        **({"maxErrorRate": row["max_error_rate"]}
           if row["max_error_rate"] is not None else {})}
    full = {
        "id": row["id"], "organization": row["organization"],
        "aosEnterprise": row["aos_enterprise"], "command": row["command"],
        "params": redact(row["params"] or {}),
        "duration": _seconds(row["duration_s"], row["duration_nanos"]),
        "notBefore": iso(row["not_before"]),
        "target": {"all": True} if row["target_all"] else {"devices": row["targets"]},
        "waves": waves, "state": row["state"], "targets": row["targets"],
        "released": row["released"], "counts": {s: int(row["counts"].get(s, 0)) for s in STATUSES},
        "haltReason": row["halt_reason"],
        "nextReleaseAt": iso(row["next_release_at"]) if row["state"] == "RUNNING" else None,
        "createdAt": iso(row["created_at"]), "updatedAt": iso(row["updated_at"]),
        "finishedAt": iso(row["finished_at"]), "createdBy": row["created_by"],
        "cancelledBy": row["cancelled_by"],
    }
    return {key: value for key, value in full.items() if value is not None}


def _scope(request: web.Request, permission: str) -> tuple[auth.Principal, str]:
    principal = authorize(request, permission)
    org = organization_of(request)
    require_covers(principal, org)
    return principal, org


async def _campaign(request: web.Request, org: str) -> Any:
    row = await store_of(request).get_campaign(hex_id(request, "campaignId"))
    if row is None or row["organization"] != org:
        raise not_found()
    return row


async def create(request: web.Request) -> web.Response:
    """``POST .../campaigns``: accept a campaign (``Idempotency-Key`` supported: the same
    key is the same campaign), or with ``dryRun`` say whom it would reach."""
    principal, org = _scope(request, auth.CAMPAIGN_CREATE)
    body = validate(CreateCampaignRequest,
                    await read_json(request, limit=CAMPAIGN_BODY_BYTES))
    rt = runtime(request)
    principal.require_type(body.command.value, rt.settings.strict_permissions)
    store = store_of(request)
    if body.dryRun:
        reach = await store.campaign_dry_run(body.target.devices, org, body.aosEnterprise)
        return ok({"dryRun": True, "targets": reach["targets"],
                   "withoutPushToken": reach["without_push_token"],
                   "disenrolled": reach["disenrolled"],
                   "notRegistered": reach["not_registered"]})
    cid = command_id(org, request.headers.get("Idempotency-Key"))
    campaign = campaigns.new_campaign(
        body, id=cid, organization=org, created_at=datetime.now(UTC),
        created_by=principal.subject or None, source="http",
        default_duration_s=rt.settings.default_duration_s, box=rt.box)
    fx = Effects()
    async with store.transaction() as tx:
        await campaigns.accept(tx, campaign, body.target.devices, fx)
        row = await tx.get_campaign(cid)
    rt.on_effects(fx)
    return ok(record(row))


async def read(request: web.Request) -> web.Response:
    """``GET .../campaigns/{campaignId}``."""
    _, org = _scope(request, auth.CAMPAIGN_READ)
    return ok(record(await _campaign(request, org)))


async def listing(request: web.Request) -> web.Response:
    """``GET .../campaigns?limit=&cursor=``: newest first, keyset-paginated."""
    _, org = _scope(request, auth.CAMPAIGN_READ)
    limit = query_int(request, "limit", LIST_DEFAULT, 1, LIST_MAX)
    after_at, after_id = decode_cursor(request.query.get("cursor"), "cursor")
    rows = await store_of(request).list_campaigns(org, after_at, after_id, limit + 1)
    page = list(rows[:limit])
    return web.json_response({"status": True, "data": [record(r) for r in page],
                              "nextCursor": encode_cursor(page[-1]) if len(rows) > limit
                              else None})


async def cancel(request: web.Request) -> web.Response:
    """``POST .../campaigns/{campaignId}/cancel``: RUNNING -> CANCELLED (its open commands
    end CANCEL); 409 4009 when it has already ended."""
    principal, org = _scope(request, auth.CAMPAIGN_CANCEL)
    row = await _campaign(request, org)
    rt = runtime(request)
    fx = Effects()
    async with store_of(request).transaction() as tx:
        done = await campaigns.cancel(tx, row["id"], principal.subject or None, fx)
        after = await tx.get_campaign(row["id"])
    rt.on_effects(fx)
    if not done:
        raise ApiError(409, Code.NOT_OPEN, f"Campaign is already {after['state']}")
    return ok(record(after))


def register(app: web.Application) -> None:
    """Add the campaign routes."""
    app.router.add_post(BASE, create)
    app.router.add_get(BASE, listing)
    app.router.add_get(BASE + "/{campaignId}", read)
    app.router.add_post(BASE + "/{campaignId}/cancel", cancel)
