"""Typed statements of the input streams and the timer: devices, commands, acks,
cancels, held events, expiry and retention (one method per named query)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from dispatcher.store.base import Executor
from dispatcher.store.records import (
    AckWrite,
    CommandRef,
    DeviceUpsert,
    DeviceUpserted,
    HeldEvent,
    LockedCommand,
    NewCommand,
    NewHeld,
    Transition,
)


def _moved(rows: Sequence[Mapping[str, object]]) -> list[Transition]:
    return [Transition.from_row(r) for r in rows]


class CommandStatements(Executor):
    """Devices, commands, acks, cancels, held events, expiry and retention."""

    async def lock_devices(self, devices: Sequence[str]) -> None:
        """Hold the devices' keys until this transaction ends (before their registry state
        changes: see ``claim_pushes``)."""
        await self._rows("lock_devices", list(devices))

    async def upsert_devices(self, devices: Sequence[DeviceUpsert]) -> list[DeviceUpserted]:
        """Store the registry state of devices (newer wins); the devices that changed."""
        rows = await self._rows(
            "upsert_devices",
            [d.aos_device for d in devices], [d.organization for d in devices],
            [d.aos_enterprise for d in devices], [d.mdm_user for d in devices],
            [d.push_token for d in devices], [d.state for d in devices],
            [d.updated_at for d in devices], [d.public_key for d in devices],
            [d.push_provider for d in devices])
        return [DeviceUpserted.from_row(r) for r in rows]

    async def disenrolled_devices(self, devices: Sequence[str]) -> set[str]:
        """Which of these devices are disenrolled."""
        return {r["aos_device"] for r in await self._rows("disenrolled_devices", list(devices))}

    async def wake_devices(self, devices: Sequence[str]) -> list[str]:
        """Make each device's oldest parked command due now; the ids woken."""
        return [r["id"] for r in await self._rows("wake_devices", list(devices))]

    async def wake_parked(self) -> list[str]:
        """Safety net: wake the oldest parked command of every device with a token."""
        return [r["id"] for r in await self._rows("wake_parked")]

    async def cancel_disenrolled(self, devices: Sequence[str]) -> list[Transition]:
        """Cancel the open commands of disenrolled devices."""
        return _moved(await self._rows("cancel_disenrolled", list(devices)))

    async def insert_commands(self, commands: Sequence[NewCommand]) -> list[Transition]:
        """Insert new commands (a known id inserts nothing); the inserted ones."""
        c = commands
        rows = await self._rows(
            "insert_commands",
            [x.id for x in c], [x.organization for x in c], [x.aos_enterprise for x in c],
            [x.aos_device for x in c], [x.mdm_user for x in c], [x.command for x in c],
            [x.params for x in c], [x.secret for x in c], [x.status.value for x in c],
            [x.duration_s for x in c], [x.expires_at for x in c], [x.created_at for x in c],
            [x.source for x in c], [x.user_name for x in c], [x.duration_nanos for x in c],
            [x.created_by for x in c], [x.request_hash for x in c], [x.priority for x in c],
            [x.not_before for x in c], [x.campaign for x in c], [x.wave for x in c])
        return _moved(rows)

    async def queue_new_commands(self, ids: Sequence[str],
                                 pairs: Sequence[tuple[str, str]]) -> list[Transition]:
        """Supersede the older commands the new ones ``ids`` make moot (``pairs``: the
        (newer, older) types of the rules) and lift the rank of those that stay; the
        commands superseded."""
        rows = await self._rows("queue_new_commands", list(ids), [n for n, _ in pairs],
                                [o for _, o in pairs])
        return _moved(rows)

    async def lock_commands(self, ids: Sequence[str]) -> list[LockedCommand]:
        """Lock the commands an ack batch touches, in id order; their current state."""
        return [LockedCommand.from_row(r) for r in await self._rows("lock_commands", list(ids))]

    async def apply_acks(self, writes: Sequence[AckWrite]) -> list[Transition]:
        """Write guarded ack steps; every row written (``previous``: its expected status)."""
        w = writes
        rows = await self._rows(
            "apply_acks",
            [x.id for x in w], [x.expected for x in w], [x.status for x in w],
            [x.results for x in w], [x.results_dropped for x in w], [x.ack_keys for x in w],
            [x.error_type for x in w], [x.error_message for x in w])
        return _moved(rows)

    async def cancel_commands(self, actors: Mapping[str, str | None]) -> list[Transition]:
        """Cancel open commands, each on behalf of its actor ({id: actor})."""
        ids = sorted(actors)
        return _moved(await self._rows("cancel_commands", ids, [actors[i] for i in ids]))

    async def command_devices(self, ids: Sequence[str]) -> list[CommandRef]:
        """The device and status of the known commands among ``ids``."""
        return [CommandRef.from_row(r) for r in await self._rows("command_devices", list(ids))]

    async def hold_events(self, events: Sequence[NewHeld]) -> None:
        """Hold acks and cancels whose command has not arrived."""
        await self._status(
            "hold_events", [e.kind for e in events], [e.command_id for e in events],
            [e.payload for e in events], [e.source for e in events])

    async def take_held_for(self, ids: Sequence[str]) -> list[HeldEvent]:
        """Take (delete) the events held for these commands."""
        return [HeldEvent.from_row(r) for r in await self._rows("take_held_for", list(ids))]

    async def take_held_ready(self, limit: int) -> list[HeldEvent]:
        """Take up to ``limit`` held events whose command exists now, oldest first."""
        return [HeldEvent.from_row(r) for r in await self._walk("take_held_ready", limit)]

    async def take_held_overdue(self, window_s: float, limit: int) -> list[HeldEvent]:
        """Take up to ``limit`` held events older than the hold window."""
        rows = await self._walk("take_held_overdue", window_s, limit)
        return [HeldEvent.from_row(r) for r in rows]

    async def expire_due(self, limit: int) -> list[Transition]:
        """Expire up to ``limit`` open commands past their deadline."""
        return _moved(await self._walk("expire_due", limit))

    async def remove_finished(self, retention_s: float, limit: int) -> int:
        """Remove up to ``limit`` commands finished for longer than ``retention_s``."""
        rows = await self._walk("remove_finished", retention_s, limit)
        return int(rows[0]["n"])
