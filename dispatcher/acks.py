"""Device acks -> guarded status updates.

A batch of acks is applied in one transaction: the touched commands are locked in id
order, the lifecycle decides each ack's effect in arrival order, and the changes are
written back as at most two guarded steps per command (PENDING -> RECEIVED -> DONE in
one batch still publishes both transitions). Every ack lands in ``results``; an ack that
is already there (a redelivery) is skipped, so replaying a batch changes nothing.
An ack for a command not seen yet is held until it arrives (see ``held_events``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from dispatcher.deadletter import Source
from dispatcher.effects import Effects
from dispatcher.events import DeviceAck
from dispatcher.held import hold
from dispatcher.lifecycle import Status, on_ack
from dispatcher.store import QUERIES

log = logging.getLogger(__name__)


@dataclass
class _Step:
    """One guarded write: from ``expected`` to ``status``, appending ``results``."""

    expected: Status
    status: Status
    results: list[dict[str, Any]] = field(default_factory=list)
    error_type: str | None = None
    error_message: str | None = None


@dataclass
class _Plan:
    device: str
    organization: str
    seen: list[dict[str, Any]]
    steps: list[_Step]

    @property
    def current(self) -> _Step:
        return self.steps[-1]


def result_entry(ack: DeviceAck, source: Source) -> dict[str, Any]:
    """The ``results`` item of an ack; ``at`` defaults to the record's broker timestamp."""
    at = (ack.at or source.seen_at).isoformat().replace("+00:00", "Z")
    entry: dict[str, Any] = {"at": at, "status": ack.status.value}
    if ack.data is not None:
        entry["data"] = ack.data
    if ack.errorType is not None:
        entry["errorType"] = ack.errorType
    if ack.errorMessage is not None:
        entry["errorMessage"] = ack.errorMessage
    return entry


async def apply_acks(
    conn: asyncpg.Connection,
    items: list[tuple[DeviceAck, Source]],
    fx: Effects,
    hold_unknown: bool = True,
) -> None:
    """Apply acks in order; unknown commands are held (or dead-lettered if not holding)."""
    if not items:
        return
    ids = sorted({ack.commandId for ack, _ in items})
    plans: dict[str, _Plan] = {}
    for row in await conn.fetch(QUERIES["lock_commands"], ids):
        status = Status(row["status"])
        plans[row["id"]] = _Plan(row["aos_device"], row["organization"], list(row["results"]),
                                 [_Step(status, status)])
    to_hold: list[tuple[DeviceAck, Source]] = []
    for ack, source in items:
        plan = plans.get(ack.commandId)
        if plan is None:
            to_hold.append((ack, source))
            outcome = "held" if hold_unknown else "unknown_command"
        elif plan.device != ack.aosDevice:
            fx.reject(source, "device_mismatch", "the ack's aosDevice is not the command's device")
            outcome = "device_mismatch"
        else:
            outcome = _plan_ack(plan, ack, source, fx)
        _log_ack(ack, plan, outcome)
    await _write(conn, plans, fx)
    await hold(conn, "ack", to_hold, fx, hold_unknown)


def _log_ack(ack: DeviceAck, plan: _Plan | None, outcome: str) -> None:
    if not log.isEnabledFor(logging.DEBUG):
        return
    log.debug("ack", extra={
        "command_id": ack.commandId, "device_id": ack.aosDevice,
        "organization": plan.organization if plan is not None else None,
        "ack_status": ack.status.value, "outcome": outcome,
        "status": plan.current.status.value if plan is not None else None})


def _plan_ack(plan: _Plan, ack: DeviceAck, source: Source, fx: Effects) -> str:
    """Plan one ack's effect; return its outcome (``ok``, ``duplicate``, ``no_change``)."""
    entry = result_entry(ack, source)
    if entry in plan.seen:
        fx.accept(source, "duplicate")
        return "duplicate"
    plan.seen.append(entry)
    step = plan.current
    step.results.append(entry)
    target = on_ack(step.status, ack.status)
    if target is None:
        fx.accept(source, "no_change")
        return "no_change"
    fx.accept(source)
    if step.status != step.expected:
        plan.steps.append(_Step(step.status, step.status))
        step = plan.current
    step.status = target
    if target is Status.ERROR:
        step.error_type = ack.errorType or "DEVICE_ERROR"
        step.error_message = ack.errorMessage
    return "ok"


async def _write(conn: asyncpg.Connection, plans: dict[str, _Plan], fx: Effects) -> None:
    for round_ in range(2):
        batch = [(cid, p.steps[round_]) for cid, p in plans.items() if len(p.steps) > round_]
        batch = [(cid, s) for cid, s in batch if s.results or s.status != s.expected]
        if not batch:
            return
        rows = await conn.fetch(
            QUERIES["apply_acks"],
            [cid for cid, _ in batch],
            [s.expected.value for _, s in batch],
            [s.status.value for _, s in batch],
            [json.dumps(s.results) for _, s in batch],
            [s.error_type for _, s in batch],
            [s.error_message for _, s in batch],
        )
        fx.moved([r for r in rows if r["status"] != r["previous"]])

