"""Typed statements of campaigns (migration 013): accepting one, expanding its targets into
commands a page at a time, releasing its waves, counting, stopping and reporting it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from dispatcher.store.base import Executor
from dispatcher.store.records import NewCampaign, Transition


class CampaignStatements(Executor):
    """Campaigns and their commands."""

    async def insert_campaign(self, c: NewCampaign) -> bool:
        """Store a new campaign; False when its id is known (a replay: one campaign)."""
        return await self._row(
            "insert_campaign", c.id, c.organization, c.aos_enterprise, c.command, c.params,
            c.secret, c.duration_s, c.duration_nanos, c.not_before, c.target_all, c.wave_size,
            c.interval_s, c.max_error_rate, c.created_at, c.created_by, c.source) is not None

    async def snapshot_campaign_targets(self, campaign: str, devices: Sequence[str] | None,
                                        organization: str, enterprise: str) -> int:
        """Take the campaign's targets (``devices``, or None: every ACTIVE device of the
        enterprise) registered to its organization and enterprise; how many."""
        row = await self._row("snapshot_campaign_targets", campaign,
                              None if devices is None else list(devices), organization,
                              enterprise)
        return int(row["targets"]) if row else 0

    async def campaign_dry_run(self, devices: Sequence[str] | None, organization: str,
                               enterprise: str) -> dict[str, int]:
        """What a campaign over ``devices`` (None: the whole enterprise) would reach."""
        row = await self._row("campaign_dry_run", None if devices is None else list(devices),
                              organization, enterprise)
        assert row is not None  # an aggregate always answers one row
        return dict(row)

    async def active_campaigns(self) -> list[str]:
        """Ids of the campaigns with work left."""
        return [r["id"] for r in await self._rows("active_campaigns")]

    async def lock_campaign(self, campaign: str) -> asyncpg.Record | None:
        """The campaign, locked for this transaction; None when another replica holds it
        (or it is settled)."""
        return await self._row("lock_campaign", campaign)

    async def get_campaign(self, campaign: str) -> asyncpg.Record | None:
        """A whole ``campaigns`` row, or None."""
        return await self._row("get_campaign", campaign)

    async def list_campaigns(self, organization: str, after_at: datetime | None,
                             after_id: str | None, limit: int) -> list[asyncpg.Record]:
        """An organization's campaigns, newest first, after the cursor."""
        return await self._rows("list_campaigns", organization, after_at, after_id, limit)

    async def campaign_targets_page(self, campaign: str, after: int,
                                    limit: int) -> list[asyncpg.Record]:
        """The next targets to make commands of: ``seq``, ``aos_device``, ``mdm_user``."""
        return await self._rows("campaign_targets_page", campaign, after, limit)

    async def campaign_expanded(self, campaign: str, upto: int) -> None:
        """Targets up to ``upto`` are commands now."""
        await self._status("campaign_expanded", campaign, upto)

    async def release_wave(self, campaign: str, wave: int, validity_s: float) -> list[str]:
        """Release a wave's held commands; their ids."""
        return [r["id"] for r in await self._rows("release_wave", campaign, wave, validity_s)]

    async def campaign_released(self, campaign: str, interval_s: float) -> None:
        """Count one more wave released; the next is due ``interval_s`` from now."""
        await self._status("campaign_released", campaign, interval_s)

    async def count_campaign(self, campaign: str) -> dict[str, int]:
        """Count the campaign's commands by status and store the counts on it."""
        row = await self._row("count_campaign", campaign)
        return dict(row["counts"]) if row else {}

    async def stop_campaign(self, campaign: str, state: str, reason: str | None = None,
                            actor: str | None = None) -> asyncpg.Record | None:
        """End a RUNNING campaign in ``state``; the row after, or None if it was not
        RUNNING."""
        return await self._row("stop_campaign", campaign, state, reason, actor)

    async def settle_campaign(self, campaign: str) -> None:
        """Mark a campaign settled: nothing left to do."""
        await self._status("settle_campaign", campaign)

    async def end_campaign_commands(self, campaign: str, error_type: str, message: str, *,
                                    sent_too: bool, limit: int,
                                    actor: str | None = None) -> list[Transition]:
        """CANCEL up to ``limit`` open commands of a campaign (``sent_too``: also those
        pushed already); the commands moved."""
        rows = await self._rows("end_campaign_commands", campaign, error_type, message,
                                sent_too, limit, actor)
        return [Transition.from_row(r) for r in rows]

    async def report_campaign(self, campaign: str) -> None:
        """Write the campaign's ``mdm.campaigns.status`` event into the outbox."""
        await self._status("report_campaign", campaign)

    async def campaign_gauges(self) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
        """Campaigns by state, and their commands by (campaign state, command status)."""
        states: dict[str, int] = {}
        commands: dict[tuple[str, str], int] = {}
        for row in await self._rows("campaign_gauges"):
            states[row["state"]] = row["n"]
            for counts in row["counts"] or []:
                for status, n in counts.items():
                    key = (row["state"], status)
                    commands[key] = commands.get(key, 0) + n
        return states, commands

    async def remove_campaigns(self, retention_s: float, limit: int) -> int:
        """Remove up to ``limit`` campaigns settled for longer than ``retention_s``."""
        rows: list[Any] = await self._walk("remove_campaigns", retention_s, limit)
        return int(rows[0]["n"])
