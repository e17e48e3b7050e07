"""Campaigns: one command for a whole fleet, released in waves, halted on an error budget.

A campaign (``mdm.campaigns.created`` or ``POST .../campaigns``) is accepted in one
transaction: its row, and a snapshot of its targets taken by the database
(``campaign_targets``: the listed devices, or every ACTIVE device of the enterprise, in
order). Nothing else happens then, so accepting a million targets costs one statement
and no memory here.

:class:`CampaignWorker` (every replica runs one) does the rest, one campaign per
transaction with the campaign's row locked (``SKIP LOCKED``: replicas share campaigns,
never one step of the same one):

- **Expansion.** The next page of targets becomes ordinary commands through
  :func:`dispatcher.ingest.store_commands`, the path every command takes (disenrolled
  devices, superseding, held acks), with a deterministic id (:func:`command_id`: a
  replayed campaign, or a page replayed after a crash, inserts nothing twice). The page
  and the campaign's progress commit together: a kill -9 mid-expansion resumes at the
  first page not committed. A command of a wave not yet released is *held*: never due,
  out of its device's order, never expired (:data:`HELD`).
- **Waves.** Wave 0 goes at once; wave *k* ``intervalS`` after wave *k-1*, unless the
  campaign halted: its held commands take the release time as ``notBefore`` and their
  validity from then, and meet the superseding rules as new commands do.
- **Error budget.** Counts by status are refreshed every
  ``DISPATCHER_CAMPAIGN_STATUS_INTERVAL_S`` (and before each release) by an index walk
  of the campaign's own commands, and kept on its row: reads never count. Once at least
  half a wave (:func:`judged`) has an outcome (DONE, ERROR, EXPIRED), an error rate
  (ERROR + EXPIRED over those) above ``maxErrorRate`` halts the campaign.
- **Halt and cancel.** The state changes at once (``stop_campaign``) and the commands
  follow a page at a time: a halt ends those not yet pushed (``CAMPAIGN_HALTED``), a
  cancel every open one (``CAMPAIGN_CANCELLED``). Targets not yet expanded get no command.
- **Progress.** ``mdm.campaigns.status`` on every change of state, and while counts move
  at most once per interval, through the status outbox (at least once, in order).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from dispatcher import audit, ingest, lifecycle
from dispatcher.aio import Backoff, retrying, wait_any
from dispatcher.config import Settings
from dispatcher.deadletter import Source
from dispatcher.effects import Effects
from dispatcher.events import CampaignCancel, CampaignCreated, CampaignSpec
from dispatcher.exceptions import SecretUnreadable, StoreUnavailable
from dispatcher.lifecycle import Status
from dispatcher.metrics import Metrics
from dispatcher.secretbox import SecretBox, split
from dispatcher.store import Store, Tx
from dispatcher.store.records import NewCampaign, NewCommand

log = logging.getLogger(__name__)

HELD = datetime.max.replace(tzinfo=UTC)
"""``notBefore`` and ``expiresAt`` of a command whose wave is not released ('infinity')."""
HALTED, CANCELLED = "CAMPAIGN_HALTED", "CAMPAIGN_CANCELLED"
FINISHED = ("DONE", "ERROR", "EXPIRED")
FAILED = ("ERROR", "EXPIRED")
OPEN = ("PENDING", "RECEIVED")
STATES = ("RUNNING", "HALTED", "DONE", "CANCELLED")


def command_id(campaign: str, device: str) -> str:
    """The id of a campaign's command for a device: the same campaign and device, the
    same command (a replay inserts nothing)."""
    return hashlib.sha256(f"campaign\n{campaign}\n{device}".encode()).hexdigest()[:24]


def new_campaign(spec: CampaignSpec, *, id: str, organization: str, created_at: datetime,
                 created_by: str | None, source: str, default_duration_s: int,
                 box: SecretBox) -> NewCampaign:
    """The stored form of a campaign: secrets of its params sealed to its id."""
    seconds, nanos = lifecycle.split_duration(
        lifecycle.effective_duration(spec.duration, default_duration_s))
    public, secrets = split(spec.params)
    waves = spec.waves
    return NewCampaign(
        id=id, organization=organization, aos_enterprise=spec.aosEnterprise,
        command=spec.command.value, params=public, secret=box.seal(id, secrets),
        duration_s=seconds, duration_nanos=nanos, not_before=spec.notBefore,
        target_all=spec.target.all is True, wave_size=waves.size if waves else None,
        interval_s=waves.intervalS if waves else 0.0,
        max_error_rate=waves.maxErrorRate if waves else None, created_at=created_at,
        created_by=created_by, source=source)


async def accept(tx: Tx, campaign: NewCampaign, devices: list[str] | None,
                 fx: Effects) -> bool:
    """Store a campaign and the snapshot of its targets; False when it is known already."""
    if not await tx.insert_campaign(campaign):
        return False
    await tx.snapshot_campaign_targets(campaign.id, devices, campaign.organization,
                                       campaign.aos_enterprise)
    await tx.report_campaign(campaign.id)
    fx.audit.append(audit.Entry(campaign.created_by, audit.CREATE_CAMPAIGN, campaign.id, "",
                                campaign.organization))
    fx.wake_outbox = True
    fx.wake_campaigns = True
    return True


async def apply_created(tx: Tx, items: list[tuple[CampaignCreated, Source]], fx: Effects,
                        default_duration_s: int, box: SecretBox) -> None:
    """Accept ``mdm.campaigns.created`` events; the same id twice is one campaign."""
    for event, source in items:
        campaign = new_campaign(
            event, id=event.id, organization=event.organization,
            created_at=event.createdAt or source.seen_at,
            created_by=event.createdBy or source.topic, source="kafka",
            default_duration_s=default_duration_s, box=box)
        fresh = await accept(tx, campaign, event.target.devices, fx)
        fx.accept(source, "ok" if fresh else "duplicate")


async def apply_cancels(tx: Tx, items: list[tuple[CampaignCancel, Source]],
                        fx: Effects) -> None:
    """``mdm.campaigns.cancel``: a RUNNING campaign ends CANCELLED (its commands follow);
    an unknown campaign is dead-lettered (nothing to cancel)."""
    for event, source in items:
        outcome = await cancel(tx, event.campaignId, event.cancelledBy or source.topic, fx)
        if outcome is None:
            fx.reject(source, "unknown_campaign", "no campaign has this campaignId")
        else:
            fx.accept(source, "ok" if outcome else "no_change")


async def cancel(tx: Tx, campaign: str, actor: str | None, fx: Effects) -> bool | None:
    """Cancel a RUNNING campaign: True; False when it had already ended; None: unknown."""
    row = await tx.stop_campaign(campaign, "CANCELLED", actor=actor)
    if row is None:
        return None if await tx.get_campaign(campaign) is None else False
    await tx.report_campaign(campaign)
    fx.audit.append(audit.Entry(actor, audit.CANCEL_CAMPAIGN, campaign, "",
                                row["organization"]))
    fx.wake_outbox = True
    fx.wake_campaigns = True
    return True


def waves_of(row: Mapping[str, Any]) -> int:
    """How many waves a campaign has (at least one)."""
    size = row["wave_size"]
    return 1 if size is None else max(1, math.ceil(row["targets"] / size))


def judged(row: Mapping[str, Any], counts: Mapping[str, int]) -> float | None:
    """The error rate of a campaign's finished commands, once there are enough to judge:
    at least half a wave (and at least one) has an outcome. None before."""
    finished = sum(counts.get(s, 0) for s in FINISHED)
    wave = row["wave_size"] or row["targets"]
    if finished == 0 or finished < math.ceil(min(wave, row["targets"]) / 2):
        return None
    return sum(counts.get(s, 0) for s in FAILED) / finished


def over_budget(row: Mapping[str, Any], counts: Mapping[str, int]) -> float | None:
    """The error rate that halts the campaign, or None."""
    limit = row["max_error_rate"]
    rate = judged(row, counts)
    return rate if limit is not None and rate is not None and rate > limit else None


class CampaignWorker:
    """Expands, releases, judges, stops and reports the campaigns with work left."""

    def __init__(self, settings: Settings, store: Store, metrics: Metrics, box: SecretBox,
                 on_effects: Callable[[Effects], None]) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.box = box
        self.on_effects = on_effects
        self.wake = asyncio.Event()

    async def run(self, stop: asyncio.Event, tick_s: float = 0.5) -> None:
        """Work until ``stop``: at once while a campaign has pages to expand or commands
        to end, else every ``tick_s`` or when woken."""
        while not stop.is_set():
            self.wake.clear()
            try:
                busy = await retrying(self.pass_once, stop, retry_on=StoreUnavailable,
                                      backoff=Backoff(0.2, 5.0), on_retry=_failed)
            except StoreUnavailable:
                return  # stopping
            if not busy:
                await wait_any(stop, self.wake, timeout_s=tick_s)

    async def pass_once(self) -> bool:
        """One step of every campaign with work left; whether any has more to do now."""
        busy = False
        for campaign in await self.store.active_campaigns():
            busy |= await self.step(campaign)
        await self._gauges()
        return busy

    async def step(self, campaign: str) -> bool:
        """One transaction of work on a campaign; whether more is due at once."""
        fx = Effects()
        async with self.store.transaction() as tx:
            row = await tx.lock_campaign(campaign)
            if row is None:
                return False
            if row["state"] == "RUNNING":
                busy = await self._run(tx, row, fx)
            else:
                busy = await self._wind_down(tx, row, fx)
        self.on_effects(fx)
        return busy

    async def _run(self, tx: Tx, row: Mapping[str, Any], fx: Effects) -> bool:
        expanding = row["expanded"] < row["targets"]
        if expanding:  # a page, and the waves go on meanwhile
            await self._expand(tx, row, fx)
        release_due = (row["waves_released"] < waves_of(row)
                       and row["next_release_at"] <= datetime.now(UTC))
        counts = dict(row["counts"])
        if release_due or self._stale(row):
            counts = await tx.count_campaign(row["id"])
        rate = over_budget(row, counts)
        if rate is not None:
            return await self._halt(tx, row, rate, fx)
        if release_due:
            await self._release(tx, row, fx)
        elif (not expanding and row["waves_released"] >= waves_of(row)
              and not any(counts.get(s) for s in OPEN)):
            await tx.stop_campaign(row["id"], "DONE")
            await tx.settle_campaign(row["id"])
            await self._report(tx, row["id"], fx)
        elif self._stale(row) and row["reported"] != {"state": row["state"], "counts": counts}:
            await self._report(tx, row["id"], fx)
        return bool(expanding)

    def _stale(self, row: Mapping[str, Any]) -> bool:
        counted = row["counted_at"]
        return counted is None or (datetime.now(UTC) - counted).total_seconds() >= (
            self.settings.campaign_status_interval_s)

    async def _expand(self, tx: Tx, row: Mapping[str, Any], fx: Effects) -> None:
        page = await tx.campaign_targets_page(row["id"], row["expanded"],
                                              self.settings.campaign_page)
        commands = self._commands(row, page)
        done = len(fx.audit)
        inserted = await ingest.store_commands(tx, commands, fx)
        del fx.audit[done:]  # the campaign is audited once, when it is accepted
        upto = page[-1]["seq"] if page else row["targets"]
        await tx.campaign_expanded(row["id"], upto)
        self.metrics.campaign_commands_created.inc(len(inserted))

    def _commands(self, row: Mapping[str, Any], page: list[Any]) -> list[NewCommand]:
        now = datetime.now(UTC)
        duration = Decimal(row["duration_s"]) + Decimal(row["duration_nanos"]) / 10**9
        first = lifecycle.deadline(lifecycle.validity_start(row["created_at"],
                                                            row["not_before"]), duration)
        made = []
        for target in page:
            wave = (target["seq"] - 1) // row["wave_size"] if row["wave_size"] else 0
            not_before, expires = (
                (row["not_before"], first) if wave == 0 else
                (now, lifecycle.deadline(now, duration)) if wave < row["waves_released"] else
                (HELD, HELD))
            cid = command_id(row["id"], target["aos_device"])
            made.append(NewCommand(
                id=cid, organization=row["organization"],
                aos_enterprise=row["aos_enterprise"], aos_device=target["aos_device"],
                mdm_user=target["mdm_user"], command=row["command"], params=row["params"],
                secret=self._reseal(row, cid), status=lifecycle.initial_status(expires, now),
                duration_s=row["duration_s"], duration_nanos=row["duration_nanos"],
                expires_at=expires, created_at=row["created_at"], source=row["source"],
                created_by=row["created_by"], priority=lifecycle.Priority.LOW.value,
                not_before=not_before, campaign=row["id"], wave=wave))
        return made

    def _reseal(self, row: Mapping[str, Any], command: str) -> bytes | None:
        """The campaign's secrets sealed to one command (kept as they are when they cannot
        be read: the command then ends ERROR SECRET_UNREADABLE instead of being pushed)."""
        try:
            return self.box.seal(command, self.box.open(row["id"], row["secret"]))
        except SecretUnreadable:
            return bytes(row["secret"])

    async def _release(self, tx: Tx, row: Mapping[str, Any], fx: Effects) -> None:
        validity = row["duration_s"] + row["duration_nanos"] / 1e9
        released = await tx.release_wave(row["id"], row["waves_released"], validity)
        if released:
            await ingest.queue(tx, released, fx)
            fx.wake_push = True
        await tx.campaign_released(row["id"], row["interval_s"])
        await self._report(tx, row["id"], fx)

    async def _halt(self, tx: Tx, row: Mapping[str, Any], rate: float, fx: Effects) -> bool:
        reason = (f"error rate {rate:.3f} above maxErrorRate {row['max_error_rate']}")
        await tx.stop_campaign(row["id"], "HALTED", reason=reason)
        log.warning("campaign halted", extra={"campaign": row["id"], "reason": reason})
        fx.campaigns_halted += 1
        await self._report(tx, row["id"], fx)
        return True

    async def _wind_down(self, tx: Tx, row: Mapping[str, Any], fx: Effects) -> bool:
        """A halted or cancelled campaign: end its commands a page at a time, then count
        until those already pushed have their outcome."""
        cancelled = row["state"] == "CANCELLED"
        error = CANCELLED if cancelled else HALTED
        message = ("the campaign was cancelled" if cancelled
                   else f"the campaign halted: {row['halt_reason']}")
        moved = await tx.end_campaign_commands(
            row["id"], error, message, sent_too=cancelled, limit=self.settings.campaign_page,
            actor=row["cancelled_by"])
        fx.moved(moved)  # audited once, as the campaign's cancel
        await ingest.wake_freed(tx, fx)
        if moved:
            return True
        if self._stale(row):
            counts = await tx.count_campaign(row["id"])
            if row["reported"] != {"state": row["state"], "counts": counts}:
                await self._report(tx, row["id"], fx)
            if not any(counts.get(s) for s in OPEN):
                await tx.settle_campaign(row["id"])
        return False

    async def _report(self, tx: Tx, campaign: str, fx: Effects) -> None:
        await tx.report_campaign(campaign)
        fx.wake_outbox = True

    async def _gauges(self) -> None:
        states, commands = await self.store.campaign_gauges()
        for state in STATES:
            self.metrics.campaigns.labels(state).set(states.get(state, 0))
            for status in Status:
                self.metrics.campaign_commands.labels(state, status.value).set(
                    commands.get((state, status.value), 0))


def _failed(exc: BaseException, attempt: int, delay: float) -> None:
    log.warning("campaign worker: database unavailable, retrying", extra={
        "error": str(exc)[:200], "retry_in_s": round(delay, 2)})


__all__ = ["HELD", "CampaignWorker", "accept", "apply_cancels", "apply_created", "cancel",
           "command_id", "judged", "new_campaign", "waves_of"]
