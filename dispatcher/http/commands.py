"""The command pipeline both HTTP dialects share: list a device's commands a page at a
time, create one (``Idempotency-Key`` supported) and cancel one.

A command is created in the same transaction-and-effects pipeline as a
``mdm.commands.created`` event, so it is pushed and its status events are published
exactly like one; the insert is committed before the answer, so reading it right after
creating it never misses.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from aiohttp import web
from pydantic import ValidationError

from dispatcher import auth
from dispatcher.effects import Effects
from dispatcher.events import CommandCreated
from dispatcher.http.common import (
    ApiError,
    Code,
    decode_cursor,
    describe,
    encode_cursor,
    invalid,
    runtime,
    store_of,
)
from dispatcher.ingest import NewCommand, new_command, store_commands, wake_freed
from dispatcher.lifecycle import Priority, effective_duration

if TYPE_CHECKING:

    from dispatcher.runtime import Runtime

IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")

async def list_page(request: web.Request, device: str, *, organizations: list[str] | None,
                    enterprise: str | None, status: str | None, limit: int,
                    cursor: str | None, cursor_name: str) -> tuple[list[Any], str | None]:
    """One page of a device's commands, newest first, and the cursor of the next page
    (``organizations``: only commands of these, by the command's own organization)."""
    after_at, after_id = decode_cursor(cursor, cursor_name)
    rows = await store_of(request).api_list_commands(
        device, organizations, enterprise, status, after_at, after_id, limit + 1)
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


@dataclass(frozen=True, slots=True)
class Order:
    """Where a new command stands among the pushes: ``notBefore`` and ``priority`` (None:
    at once, the type's default)."""

    not_before: datetime | None = None
    priority: Priority | None = None


def request_fingerprint(source: str, device: str, command: str, params: dict[str, Any],
                        duration: Decimal, order: Order = Order()) -> bytes:
    """The canonical form of a create request (dialect, device, type, params, validity,
    and notBefore and priority when given: a request without them keeps its old form)."""
    parts: list[Any] = [source, device, command, params, str(duration)]
    if order != Order():
        parts.append([order.not_before.isoformat() if order.not_before else None,
                      order.priority.value if order.priority else None])
    return json.dumps(parts, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode()


async def create_command(request: web.Request, principal: auth.Principal, device: Any,
                         command: str, params: dict[str, Any],
                         duration: Decimal | float | None, source: str,
                         user_name: str | None = None, order: Order = Order()) -> Any:
    """Create a command for a registered device (or find its idempotent twin); its row.

    Under strict permissions a destructive type needs its own permission (403). A replay
    of an ``Idempotency-Key`` with a different request answers 409 4010."""
    rt = runtime(request)
    principal.require_type(command, rt.settings.strict_permissions)
    store = store_of(request)
    key = request.headers.get("Idempotency-Key")
    cid = command_id(device["organization"], key)
    event = _event(cid, device, command, params, duration, order)
    exact = duration if isinstance(duration, Decimal) else None
    cmd = new_command(event, datetime.now(UTC), rt.settings.default_duration_s, rt.box,
                      exact_duration=exact, source=source, user_name=user_name,
                      created_by=principal.subject or None)
    canonical = request_fingerprint(source, cmd.aos_device, command, params,
                                    effective_duration(exact if exact is not None else duration,
                                                       rt.settings.default_duration_s), order)
    if key is not None:
        cmd = dataclasses.replace(cmd, request_hash=rt.box.fingerprint(canonical))
    inserted, row = await _insert(rt, store, cmd, cid)
    if cid not in inserted and not _same_request(rt, row, cmd, canonical):
        raise ApiError(409, Code.IDEMPOTENCY_CONFLICT,
                       "Idempotency-Key was already used for a different request")
    return row


def _event(cid: str, device: Any, command: str, params: dict[str, Any],
           duration: Decimal | float | None, order: Order) -> CommandCreated:
    """The request as the ``mdm.commands.created`` event it stands for, or 400 naming the
    field that failed."""
    try:
        return CommandCreated(
            id=cid, organization=device["organization"], aosEnterprise=device["aos_enterprise"],
            aosDevice=device["aos_device"], mdmUser=device["mdm_user"], command=command,
            params=params, duration=None if duration is None else float(duration),
            notBefore=order.not_before, priority=order.priority)
    except ValidationError as exc:
        raise invalid(describe(exc)) from exc


async def _insert(rt: Runtime, store: Any, cmd: NewCommand, cid: str) -> tuple[set[str], Any]:
    """Store the command (a duplicate id inserts nothing) and act on the effects once
    committed: (the ids inserted, the stored row of ``cid``)."""
    fx = Effects()
    async with store.transaction() as tx:
        inserted = await store_commands(tx, [cmd], fx)
        await wake_freed(tx, fx)
        row = await tx.get_command(cid)
    rt.on_effects(fx)
    return inserted, row


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
    async with store_of(request).transaction() as tx:
        moved = await tx.cancel_commands({row["id"]: principal.subject or None})
        fx.cancelled(moved)
        await wake_freed(tx, fx)
        after = await tx.get_command(row["id"])
    assert after is not None  # read in the transaction that found it
    rt.on_effects(fx)
    if not moved:
        raise ApiError(409, Code.NOT_OPEN, f"Command is already {after['status']}",
                       google_status="FAILED_PRECONDITION")
    return after

