"""Command-created, device-registry and cancel streams -> the store.

Each function runs inside the batch's transaction and records its consequences in
:class:`~dispatcher.effects.Effects`. Writes are idempotent: a redelivered batch
(a crash before its offsets were committed) inserts nothing new and moves nothing.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from decimal import Decimal

from dispatcher import acks, audit, held, lifecycle
from dispatcher.deadletter import Source
from dispatcher.effects import Effects
from dispatcher.events import CancelRequest, CommandCreated, DeviceState
from dispatcher.lifecycle import Status
from dispatcher.secretbox import SecretBox, split
from dispatcher.store import Tx
from dispatcher.store.records import DeviceUpsert, NewCommand

__all__ = ["NewCommand", "apply_cancels", "apply_created", "apply_devices", "new_command",
           "queue", "store_commands", "wake_freed"]


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
    expires_at = lifecycle.deadline(lifecycle.validity_start(created_at, event.notBefore),
                                    duration)
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
        priority=(event.priority or lifecycle.default_priority(event.command)).value,
        not_before=event.notBefore,
    )


async def store_commands(tx: Tx, commands: list[NewCommand], fx: Effects) -> set[str]:
    """Insert new commands (duplicates are no-ops); return the ids actually inserted."""
    if not commands:
        return set()
    disenrolled = await tx.disenrolled_devices(sorted({c.aos_device for c in commands}))
    rows = await tx.insert_commands([
        dataclasses.replace(c, status=Status.CANCEL)
        if c.status is Status.PENDING and c.aos_device in disenrolled else c
        for c in commands])
    fx.moved(rows)
    if any(r.status == Status.PENDING for r in rows):
        fx.wake_push = True
        await queue(tx, [r.id for r in rows if r.status == Status.PENDING], fx)
    inserted = {r.id for r in rows}
    fx.audit.extend(audit.Entry(c.created_by, audit.CREATE, c.id, c.aos_device, c.organization)
                    for c in commands if c.id in inserted)
    await held.apply_held(tx, sorted(inserted), fx, REPLAY)
    return inserted


SUPERSEDE_PAIRS = [(newer.value, older.value) for newer, older in lifecycle.supersede_pairs()]


async def queue(tx: Tx, new: list[str], fx: Effects) -> None:
    """Supersede what the new PENDING commands make moot (and lift the rank of older
    commands queued before them); their devices' next commands go (:func:`wake_freed`)."""
    superseded = await tx.queue_new_commands(new, SUPERSEDE_PAIRS)
    fx.moved(superseded)
    fx.superseded.extend(r.command for r in superseded)


async def wake_freed(tx: Tx, fx: Effects) -> None:
    """Before a batch commits: the devices whose PENDING command it ended (an ack, a
    cancel, a superseding command) let their next parked command go."""
    freed = fx.freed_devices()
    if freed and await tx.wake_devices(freed):
        fx.wake_push = True


async def apply_created(
    tx: Tx,
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
    inserted = await store_commands(tx, list(unique.values()), fx)
    counted: set[str] = set()
    for event, source in items:
        fresh = event.id in inserted and event.id not in counted
        counted.add(event.id)
        fx.accept(source, "ok" if fresh else "duplicate")


async def apply_devices(
    tx: Tx, items: list[tuple[DeviceState, Source]], fx: Effects
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
    await tx.lock_devices(sorted(latest))  # a claim parking their commands sees it
    changed = await tx.upsert_devices([
        DeviceUpsert(e.aosDevice, e.organization, e.aosEnterprise, e.mdmUser, e.pushToken,
                     e.state, at, e.publicKey, e.pushProvider) for e, at in latest.values()])
    gone = [d.aos_device for d in changed if d.state == "DISENROLLED"]
    if gone:
        fx.moved(await tx.cancel_disenrolled(gone))
    ready = [d.aos_device for d in changed if d.state == "ACTIVE" and d.has_token]
    if ready and await tx.wake_devices(ready):
        fx.wake_push = True


async def apply_cancels(
    tx: Tx,
    items: list[tuple[CancelRequest, Source]],
    fx: Effects,
    hold_unknown: bool = True,
) -> None:
    """Cancel open commands; unknown ones are held until their command arrives."""
    if not items:
        return
    known = {r.id: r for r in await tx.command_devices(sorted({c.commandId for c, _ in items}))}
    targets: dict[str, str] = {}  # command id -> who cancels it (the first cancel's)
    to_hold: list[tuple[CancelRequest, Source]] = []
    for cancel, source in items:
        row = known.get(cancel.commandId)
        if row is None:
            to_hold.append((cancel, source))
        elif row.aos_device != cancel.aosDevice:
            fx.reject(source, "device_mismatch",
                      "the cancel's aosDevice is not the command's device")
        else:
            targets.setdefault(cancel.commandId, cancel.cancelledBy or source.topic)
            fx.accept(source, "ok" if row.status in lifecycle.OPEN else "no_change")
    if targets:
        fx.cancelled(await tx.cancel_commands(targets))
    await held.hold(tx, "cancel", to_hold, fx, hold_unknown)


REPLAY = held.Appliers(acks=acks.apply_acks, cancels=apply_cancels)
"""How held acks and cancels are applied when their command is there (``held.replay``)."""
