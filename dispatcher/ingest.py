"""Command-created, device-registry and cancel streams -> the store.

Each function runs inside the batch's transaction and records its consequences in
:class:`~dispatcher.effects.Effects`. Writes are idempotent: a redelivered batch
(a crash before its offsets were committed) inserts nothing new and moves nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg

from dispatcher import audit, lifecycle
from dispatcher.acks import apply_acks
from dispatcher.deadletter import Source
from dispatcher.effects import Effects
from dispatcher.events import CancelRequest, CommandCreated, DeviceAck, DeviceState
from dispatcher.held import hold
from dispatcher.lifecycle import Status
from dispatcher.secretbox import SecretBox, split
from dispatcher.store import QUERIES


@dataclass(frozen=True, slots=True)
class NewCommand:
    """A command ready to insert: secrets masked in ``params``, sealed in ``secret``."""

    id: str
    organization: str
    aos_enterprise: str
    aos_device: str
    mdm_user: str | None
    command: str
    params: dict[str, Any]
    secret: bytes | None
    status: Status
    duration_s: int
    expires_at: datetime
    created_at: datetime
    source: str = "kafka"
    user_name: str | None = None
    duration_nanos: int = 0
    """The fraction of a second of the validity (``duration_s`` is the whole seconds)."""
    created_by: str | None = None
    request_hash: str | None = None
    """Keyed hash of the HTTP request that created it (idempotency replays are compared)."""


def new_command(
    event: CommandCreated,
    seen_at: datetime,
    default_duration_s: int,
    box: SecretBox,
    source: str = "kafka",
    user_name: str | None = None,
    exact_duration: Decimal | None = None,
    created_by: str | None = None,
) -> NewCommand:
    """Decide the stored form of a command-created event (``exact_duration``: the
    duration as given in decimal, when the caller has it; else the event's;
    ``created_by``: the actor, else the event's ``createdBy``)."""
    created_at = event.createdAt or seen_at
    duration = lifecycle.effective_duration(
        exact_duration if exact_duration is not None else event.duration, default_duration_s)
    seconds, nanos = lifecycle.split_duration(duration)
    expires_at = lifecycle.deadline(created_at, duration)
    public, secrets = split(event.params)
    return NewCommand(
        id=event.id,
        organization=event.organization,
        aos_enterprise=event.aosEnterprise,
        aos_device=event.aosDevice,
        mdm_user=event.mdmUser,
        command=event.command.value,
        params=public,
        secret=box.seal(event.id, secrets),
        status=lifecycle.initial_status(expires_at, datetime.now(UTC)),
        duration_s=seconds,
        duration_nanos=nanos,
        expires_at=expires_at,
        created_at=created_at,
        source=source,
        user_name=user_name,
        created_by=created_by or event.createdBy,
    )


async def store_commands(
    conn: asyncpg.Connection, commands: list[NewCommand], fx: Effects
) -> set[str]:
    """Insert new commands (duplicates are no-ops); return the ids actually inserted."""
    if not commands:
        return set()
    disenrolled = {
        r["aos_device"]
        for r in await conn.fetch(
            "SELECT aos_device FROM devices WHERE aos_device = ANY($1::text[])"
            " AND state = 'DISENROLLED'",
            list({c.aos_device for c in commands}),
        )
    }
    statuses = [
        Status.CANCEL if c.status is Status.PENDING and c.aos_device in disenrolled else c.status
        for c in commands
    ]
    rows = await conn.fetch(
        QUERIES["insert_commands"],
        [c.id for c in commands],
        [c.organization for c in commands],
        [c.aos_enterprise for c in commands],
        [c.aos_device for c in commands],
        [c.mdm_user for c in commands],
        [c.command for c in commands],
        [c.params for c in commands],
        [c.secret for c in commands],
        [s.value for s in statuses],
        [c.duration_s for c in commands],
        [c.expires_at for c in commands],
        [c.created_at for c in commands],
        [c.source for c in commands],
        [c.user_name for c in commands],
        [c.duration_nanos for c in commands],
        [c.created_by for c in commands],
        [c.request_hash for c in commands],
    )
    fx.moved([dict(r, previous=None) for r in rows])
    if any(r["status"] == Status.PENDING for r in rows):
        fx.wake_push = True
    inserted = {r["id"] for r in rows}
    fx.audit.extend(audit.Entry(c.created_by, audit.CREATE, c.id, c.aos_device, c.organization)
                    for c in commands if c.id in inserted)
    await apply_held(conn, sorted(inserted), fx)
    return inserted


async def apply_created(
    conn: asyncpg.Connection,
    items: list[tuple[CommandCreated, Source]],
    fx: Effects,
    default_duration_s: int,
    box: SecretBox,
) -> None:
    """Persist command-created events; the same id twice is one command."""
    unique: dict[str, NewCommand] = {}
    for event, source in items:
        if event.id not in unique:
            unique[event.id] = new_command(event, source.seen_at, default_duration_s, box,
                                           created_by=event.createdBy or source.topic)
    inserted = await store_commands(conn, list(unique.values()), fx)
    counted: set[str] = set()
    for event, source in items:
        fresh = event.id in inserted and event.id not in counted
        counted.add(event.id)
        fx.accept(source, "ok" if fresh else "duplicate")


async def apply_devices(
    conn: asyncpg.Connection, items: list[tuple[DeviceState, Source]], fx: Effects
) -> None:
    """Upsert the device registry; a new token wakes parked pushes, DISENROLLED cancels."""
    latest: dict[str, tuple[DeviceState, datetime]] = {}
    for event, source in items:
        at = event.updatedAt or source.seen_at
        if event.aosDevice not in latest or latest[event.aosDevice][1] <= at:
            latest[event.aosDevice] = (event, at)
        fx.accept(source)
    if not latest:
        return
    events = list(latest.values())
    rows = await conn.fetch(
        QUERIES["upsert_devices"],
        [e.aosDevice for e, _ in events],
        [e.organization for e, _ in events],
        [e.aosEnterprise for e, _ in events],
        [e.mdmUser for e, _ in events],
        [e.pushToken for e, _ in events],
        [e.state for e, _ in events],
        [at for _, at in events],
        [e.publicKey for e, _ in events],
        [e.pushProvider for e, _ in events],
    )
    gone = [r["aos_device"] for r in rows if r["state"] == "DISENROLLED"]
    if gone:
        fx.moved(list(await conn.fetch(QUERIES["cancel_disenrolled"], gone)))
    ready = [r["aos_device"] for r in rows if r["state"] == "ACTIVE" and r["has_token"]]
    if ready and await conn.fetch(QUERIES["wake_devices"], ready):
        fx.wake_push = True


async def apply_cancels(
    conn: asyncpg.Connection,
    items: list[tuple[CancelRequest, Source]],
    fx: Effects,
    hold_unknown: bool = True,
) -> None:
    """Cancel open commands; unknown ones are held until their command arrives."""
    if not items:
        return
    known = {
        r["id"]: r
        for r in await conn.fetch(
            QUERIES["command_devices"], list({c.commandId for c, _ in items})
        )
    }
    targets: dict[str, str] = {}  # command id -> who cancels it (the first cancel's)
    to_hold: list[tuple[CancelRequest, Source]] = []
    for cancel, source in items:
        row = known.get(cancel.commandId)
        if row is None:
            to_hold.append((cancel, source))
        elif row["aos_device"] != cancel.aosDevice:
            fx.reject(source, "device_mismatch",
                      "the cancel's aosDevice is not the command's device")
        else:
            targets.setdefault(cancel.commandId, cancel.cancelledBy or source.topic)
            fx.accept(source, "ok" if row["status"] in lifecycle.OPEN else "no_change")
    if targets:
        ids = sorted(targets)
        fx.cancelled(list(await conn.fetch(QUERIES["cancel_commands"], ids,
                                           [targets[i] for i in ids])))
    await hold(conn, "cancel", to_hold, fx, hold_unknown)


async def apply_held(conn: asyncpg.Connection, command_ids: list[str], fx: Effects) -> None:
    """Apply acks and cancels that were waiting for these commands."""
    if not command_ids:
        return
    rows = await conn.fetch(QUERIES["take_held_for"], command_ids)
    await replay_held(conn, sorted(rows, key=lambda r: r["seq"]), fx)


async def replay_held(conn: asyncpg.Connection, rows: list[Any], fx: Effects) -> None:
    """Apply taken held rows in their arrival order."""
    acks = [(DeviceAck.model_validate(r["payload"]), Source.from_json(r["source"]))
            for r in rows if r["kind"] == "ack"]
    cancels = [(CancelRequest.model_validate(r["payload"]), Source.from_json(r["source"]))
               for r in rows if r["kind"] == "cancel"]
    for kind, n in (("ack", len(acks)), ("cancel", len(cancels))):
        if n:
            fx.held[(kind, "applied")] += n
    await apply_acks(conn, acks, fx, hold_unknown=False)
    await apply_cancels(conn, cancels, fx, hold_unknown=False)

