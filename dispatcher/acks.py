"""Device acks -> guarded status updates.

A batch of acks is applied in one transaction: the touched commands are locked in id
order, the lifecycle decides each ack's effect in arrival order, and the changes are
written back as at most two guarded steps per command (PENDING -> RECEIVED -> DONE in
one batch still publishes both transitions). Every ack lands in ``results``; an ack that
was seen before (a redelivery) is skipped, so replaying a batch changes nothing.
An ack for a command not seen yet is held until it arrives (see ``held_events``).

Bounds: ``results`` keeps the newest :data:`RESULTS_MAX` entries within
:data:`RESULTS_MAX_BYTES` as JSON; past that the oldest entries lose their ``data``
first (``dataDropped``), then whole oldest entries go, counted in ``results_dropped``.
A redelivery is recognised by its fingerprint (``ack_keys``: the last
:data:`ACK_KEYS_MAX` acks' 64-bit hashes, looked up in a set), never by reading
``results``, so an ack costs the same however many came before it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from dispatcher import held
from dispatcher.deadletter import Source
from dispatcher.effects import Effects
from dispatcher.events import DeviceAck, json_size
from dispatcher.lifecycle import Status, on_ack
from dispatcher.store import Tx
from dispatcher.store.records import AckWrite, LockedCommand

log = logging.getLogger(__name__)

RESULTS_MAX = 50
"""Most entries ``results`` keeps per command (the newest)."""
RESULTS_MAX_BYTES = 64 * 1024
"""Most bytes ``results`` takes as compact JSON per command."""
ACK_KEYS_MAX = 1000
"""Acks per command whose fingerprints are kept to recognise a redelivery."""


@dataclass
class _Step:
    """One guarded write: from ``expected`` to ``status``."""

    expected: Status
    status: Status
    error_type: str | None = None
    error_message: str | None = None


@dataclass
class _Plan:
    device: str
    organization: str
    results: list[Any]
    dropped: int
    keys: list[int]
    steps: list[_Step]
    known: set[int] = field(default_factory=set)
    added: list[str] = field(default_factory=list)
    """The compact JSON of the entries appended to ``results`` by this batch."""

    @property
    def current(self) -> _Step:
        return self.steps[-1]

    @classmethod
    def of(cls, row: LockedCommand) -> _Plan:
        """The plan of a locked command."""
        status = Status(row.status)
        results = list(row.results)
        keys = list(row.ack_keys)
        if not keys and results:  # stored before fingerprints were kept
            keys = [fingerprint(e) for e in results if isinstance(e, dict)]
        return cls(row.aos_device, row.organization, results, row.results_dropped,
                   keys, [_Step(status, status)], known=set(keys))


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def fingerprint(entry: dict[str, Any]) -> int:
    """A 64-bit hash of a ``results`` entry (the same ack gives the same entry)."""
    return _keyed(entry)[0]


def _keyed(entry: dict[str, Any]) -> tuple[int, str]:
    """The fingerprint of an entry and its canonical JSON (reused to write it)."""
    text = _CANONICAL.encode(entry)
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True), text


def cap_results(results: list[Any], dropped: int, most: int = RESULTS_MAX,
                most_bytes: int = RESULTS_MAX_BYTES) -> tuple[list[Any], int]:
    """``results`` within ``most`` entries and ``most_bytes`` of JSON, and the new count of
    dropped entries. Oldest first: entries beyond ``most`` go, then the oldest entries lose
    their ``data`` (marked ``dataDropped``), then whole oldest entries go. The newest entry
    is always kept whole (an ack's own size is bounded well below ``most_bytes``)."""
    kept = list(results[-most:]) if most > 0 else []
    dropped += len(results) - len(kept)
    sizes = [json_size(e) for e in kept]

    def total() -> int:
        return 2 + sum(sizes) + max(len(sizes) - 1, 0)

    for i in range(len(kept) - 1):
        if total() <= most_bytes:
            break
        entry = kept[i]
        if isinstance(entry, dict) and "data" in entry:
            kept[i] = {**{k: v for k, v in entry.items() if k != "data"}, "dataDropped": True}
            sizes[i] = json_size(kept[i])
    while total() > most_bytes and len(kept) > 1:
        kept.pop(0)
        sizes.pop(0)
        dropped += 1
    return kept, dropped


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
    tx: Tx,
    items: list[tuple[DeviceAck, Source]],
    fx: Effects,
    hold_unknown: bool = True,
) -> None:
    """Apply acks in order; unknown commands are held (or dead-lettered if not holding)."""
    if not items:
        return
    ids = sorted({ack.commandId for ack, _ in items})
    plans = {row.id: _Plan.of(row) for row in await tx.lock_commands(ids)}
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
    await _write(tx, plans, fx)
    await held.hold(tx, "ack", to_hold, fx, hold_unknown)


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
    key, text = _keyed(entry)
    if key in plan.known:
        fx.accept(source, "duplicate")
        return "duplicate"
    plan.known.add(key)
    plan.keys.append(key)
    plan.results.append(entry)
    plan.added.append(text)
    step = plan.current
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


def _stored(plan: _Plan) -> tuple[str, int, str]:
    """The capped results (JSON), dropped count and fingerprints (array literal) to write."""
    results, dropped = plan.results, plan.dropped
    stored = results[:len(results) - len(plan.added)]
    text = "[" + ",".join([*map(_compact, stored), *plan.added]) + "]"
    if len(results) > RESULTS_MAX or len(text.encode()) > RESULTS_MAX_BYTES:
        results, dropped = cap_results(results, dropped)
        text = _compact(results)
    keys = plan.keys[-ACK_KEYS_MAX:]
    return text, dropped, "{" + ",".join(map(str, keys)) + "}"


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


async def _write(tx: Tx, plans: dict[str, _Plan], fx: Effects) -> None:
    """Write each plan's steps; the first step of a command also stores its new results."""
    for round_ in range(2):
        batch: list[AckWrite] = []
        for cid, plan in plans.items():
            if len(plan.steps) <= round_:
                continue
            step = plan.steps[round_]
            stored = _stored(plan) if round_ == 0 and plan.added else None
            if stored is not None or step.status != step.expected:
                results, dropped, keys = stored if stored is not None else (None, None, None)
                batch.append(AckWrite(cid, step.expected.value, step.status.value, results,
                                      dropped, keys, step.error_type, step.error_message))
        if not batch:
            return
        rows = await tx.apply_acks(batch)
        fx.moved([r for r in rows if r.status != r.previous])
