"""Campaigns on a real PostgreSQL: targets snapshot, expansion in pages with deterministic
ids, waves, the error budget's halt, cancel, dry run, counts and status events
(CONTRACT.md "mdm.campaigns.*").

Campaigns enter through :func:`dispatcher.campaigns.apply_created` (the consumer's path)
and the worker is stepped by hand (:meth:`CampaignWorker.pass_once`); pushes leave
through the pusher's own ``claim_pushes``.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dispatcher import campaigns
from dispatcher.acks import apply_acks
from dispatcher.campaigns import CampaignWorker
from dispatcher.config import Settings
from dispatcher.deadletter import Source
from dispatcher.effects import Effects
from dispatcher.events import CampaignCancel, CampaignCreated, DeviceAck, DeviceState
from dispatcher.ingest import apply_devices
from dispatcher.metrics import Metrics
from dispatcher.secretbox import SecretBox, generate_keys
from dispatcher.store import Store
from tests.support.events import hex24

ORG, ENT = "a" * 24, "e" * 24
BOX = SecretBox(generate_keys())


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    s = await Store.connect(database_url)
    await s.pool.execute("TRUNCATE commands, devices, status_outbox, push_budget, campaigns, "
                         "campaign_targets")
    yield s
    await s.close()


def worker(store: Store, settings: Settings, page: int = 1000, interval_s: float = 0.0,
           committed: list[Effects] | None = None) -> CampaignWorker:
    """The worker; ``committed`` collects the effects of each committed step."""
    s = dataclasses.replace(settings, campaign_page=page,
                            campaign_status_interval_s=interval_s or 0.001)
    return CampaignWorker(s, store, Metrics(), BOX,
                          (committed if committed is not None else []).append)


async def register(store: Store, devices: list[str], *, state: str = "ACTIVE",
                   token: bool = True, org: str = ORG) -> None:
    fx = Effects()
    now = datetime.now(UTC)
    events = [(DeviceState(aosDevice=d, organization=org, aosEnterprise=ENT,
                           pushToken=("tok-" + d) if token else None, state=state,
                           updatedAt=now), Source("mdm.devices", 0, 0, None, None))
              for d in devices]
    async with store.transaction() as tx:
        await apply_devices(tx, events, fx)


async def launch(store: Store, **over: Any) -> tuple[str, Effects]:
    """A campaign as one mdm.campaigns.created event, committed (as the consumer does)."""
    body = {"id": hex24(), "organization": ORG, "aosEnterprise": ENT, "command": "REBOOT",
            "duration": 600, "target": {"all": True}, **over}
    fx = Effects()
    async with store.transaction() as tx:
        await campaigns.apply_created(
            tx, [(CampaignCreated(**body), Source("mdm.campaigns.created", 0, 0, None, None))],
            fx, 600, BOX)
    return body["id"], fx


async def settle(w: CampaignWorker, rounds: int = 200) -> None:
    """Step the worker until it has nothing to do at once."""
    for _ in range(rounds):
        if not await w.pass_once():
            return
    raise AssertionError("the campaign worker never settled")


async def stored(store: Store, campaign_id: str) -> Any:
    row = await store.get_campaign(campaign_id)
    assert row is not None
    return row


async def commands_of(store: Store, campaign: str) -> list[Any]:
    return await store.pool.fetch(  # type: ignore[no-any-return]
        "SELECT * FROM commands WHERE campaign = $1 ORDER BY wave, aos_device", campaign)


async def ack(store: Store, rows: list[Any], status: str) -> None:
    fx = Effects()
    items = [(DeviceAck(commandId=r["id"], aosDevice=r["aos_device"], status=status),
              Source("mdm.device-acks", 0, i, None, None)) for i, r in enumerate(rows)]
    async with store.transaction() as tx:
        await apply_acks(tx, items, fx)


async def finished_campaign(store: Store, settings: Settings,
                            devices: int) -> tuple[str, CampaignWorker]:
    """A campaign over ``devices`` new devices whose every command was acked DONE, settled
    by its worker; the campaign's id and that worker."""
    await register(store, sorted(hex24() for _ in range(devices)))
    campaign, _ = await launch(store)
    w = worker(store, settings)
    await settle(w)
    await ack(store, await commands_of(store, campaign), "DONE")
    await settle(w)
    return campaign, w


async def campaign_events(store: Store, campaign: str) -> list[dict[str, Any]]:
    return [r["payload"] for r in await store.pool.fetch(
        "SELECT payload FROM status_outbox WHERE topic = 'campaigns.status' "
        "AND command_id = $1 ORDER BY seq", campaign)]


async def test_all_active_devices_become_one_low_command_each_with_a_stable_id(
        store: Store, settings: Settings) -> None:
    active = sorted(hex24() for _ in range(25))
    await register(store, active)
    await register(store, [hex24()], state="DISENROLLED")
    await register(store, [hex24()], org="b" * 24)  # another organization's device
    campaign, _ = await launch(store)
    await settle(worker(store, settings, page=7))  # four pages
    rows = await commands_of(store, campaign)
    assert sorted(r["aos_device"] for r in rows) == active
    assert {r["id"] for r in rows} == {campaigns.command_id(campaign, d) for d in active}
    assert {(r["priority"], r["status"], r["campaign"]) for r in rows} == {
        ("low", "PENDING", campaign)}
    assert await store.pool.fetchval("SELECT count(*) FROM campaign_targets") == 0
    got = await stored(store, campaign)
    assert (got["targets"], got["expanded"], got["state"]) == (25, 25, "RUNNING")
    event = await store.pool.fetchval(
        "SELECT payload FROM status_outbox WHERE command_id = $1", rows[0]["id"])
    assert event["campaign"] == campaign


async def test_a_replayed_campaign_is_one_campaign(store: Store, settings: Settings) -> None:
    devices = [hex24() for _ in range(5)]
    await register(store, devices)
    campaign, fx = await launch(store, target={"devices": devices})
    await settle(worker(store, settings))
    _, again = await launch(store, id=campaign, target={"devices": devices})
    await settle(worker(store, settings))
    assert fx.consumed[("mdm.campaigns.created", "ok")] == 1
    assert again.consumed[("mdm.campaigns.created", "duplicate")] == 1
    assert len(await commands_of(store, campaign)) == 5
    assert await store.pool.fetchval("SELECT count(*) FROM campaigns") == 1


async def test_a_device_list_keeps_its_order_and_skips_what_is_not_the_enterprises(
        store: Store, settings: Settings) -> None:
    devices = [hex24() for _ in range(6)]
    await register(store, devices)
    stranger, foreign = hex24(), hex24()
    await register(store, [foreign], org="b" * 24)
    listed = [devices[3], stranger, devices[0], devices[3], foreign, devices[5]]
    campaign, _ = await launch(store, target={"devices": listed},
                               waves={"size": 1, "intervalS": 3600})
    await settle(worker(store, settings))
    rows = await commands_of(store, campaign)
    assert [(r["wave"], r["aos_device"]) for r in rows] == [
        (0, devices[3]), (1, devices[0]), (2, devices[5])]


async def test_waves_go_one_by_one_and_held_commands_are_never_claimed(
        store: Store, settings: Settings) -> None:
    devices = sorted(hex24() for _ in range(9))
    await register(store, devices)
    campaign, _ = await launch(store, waves={"size": 4, "intervalS": 3600})
    w = worker(store, settings)
    await settle(w)
    rows = await commands_of(store, campaign)
    assert Counter(r["wave"] for r in rows) == {0: 4, 1: 4, 2: 1}
    held = [r for r in rows if r["wave"] > 0]
    assert {r["next_push_at"].year for r in held} == {9999}
    claimed = [c for c in await store.claim_pushes(100, 30.0) if c.claimed]
    assert sorted(c.id for c in claimed) == sorted(r["id"] for r in rows if r["wave"] == 0)
    # the interval passes: wave 1 goes, wave 2 still waits
    await store.pool.execute("UPDATE campaigns SET next_release_at = now() WHERE id = $1",
                             campaign)
    await settle(w)
    claimed = [c for c in await store.claim_pushes(100, 30.0) if c.claimed]
    assert sorted(c.id for c in claimed) == sorted(r["id"] for r in rows if r["wave"] == 1)
    released = (await commands_of(store, campaign))[4]
    assert released["not_before"] <= datetime.now(UTC) < released["expires_at"]
    assert (await stored(store, campaign))["waves_released"] == 2
    assert [e["released"] for e in await campaign_events(store, campaign)][-1] == 8


async def test_an_error_rate_above_the_budget_halts_the_campaign(
        store: Store, settings: Settings) -> None:
    devices = sorted(hex24() for _ in range(12))
    await register(store, devices)
    campaign, _ = await launch(store, waves={"size": 4, "intervalS": 3600,
                                             "maxErrorRate": 0.25})
    committed: list[Effects] = []
    w = worker(store, settings, committed=committed)
    await settle(w)
    first = [r for r in await commands_of(store, campaign) if r["wave"] == 0]
    await ack(store, first[:1], "ERROR")  # 1 of 1 finished: not enough to judge
    await settle(w)
    assert (await stored(store, campaign))["state"] == "RUNNING"
    await ack(store, first[1:2], "DONE")  # 1 error of 2 finished: 0.5 > 0.25
    await settle(w)
    got = await stored(store, campaign)
    assert got["state"] == "HALTED"
    assert "0.500" in got["halt_reason"]
    rows = {r["id"]: r for r in await commands_of(store, campaign)}
    halted = [r for r in rows.values() if r["error_type"] == "CAMPAIGN_HALTED"]
    assert len(halted) == 10  # 2 unacked of wave 0 (never pushed) and 8 held
    assert {r["status"] for r in halted} == {"CANCEL"}
    assert [c for c in await store.claim_pushes(100, 30.0) if c.claimed] == []
    states = [e["state"] for e in await campaign_events(store, campaign)]
    assert states[0] == "RUNNING"
    assert states[-1] == "HALTED"
    assert (await campaign_events(store, campaign))[-1]["counts"] == {
        "PENDING": 0, "RECEIVED": 0, "DONE": 1, "ERROR": 1, "EXPIRED": 0, "CANCEL": 10}
    assert (await stored(store, campaign))["settled"]
    assert sum(fx.campaigns_halted for fx in committed) == 1  # dispatcher_campaigns_halted_total


async def test_a_cancel_ends_every_open_command_and_a_second_changes_nothing(
        store: Store, settings: Settings) -> None:
    devices = sorted(hex24() for _ in range(6))
    await register(store, devices)
    campaign, _ = await launch(store)
    w = worker(store, settings, page=2)
    await settle(w)
    rows = await commands_of(store, campaign)
    await ack(store, rows[:1], "RECEIVED")
    await ack(store, rows[1:2], "DONE")
    fx = Effects()
    cancel = CampaignCancel(campaignId=campaign, cancelledBy="ops")
    async with store.transaction() as tx:
        await campaigns.apply_cancels(tx, [(cancel, Source("t", 0, 0, None, None))] * 2, fx)
        await campaigns.apply_cancels(
            tx, [(CampaignCancel(campaignId=hex24()), Source("t", 0, 1, None, None))], fx)
    assert fx.consumed[("t", "ok")] == 1
    assert fx.consumed[("t", "no_change")] == 1
    assert [d.reason for _, d in fx.dead] == ["unknown_campaign"]
    await settle(w)
    after = Counter((r["status"], r["error_type"]) for r in await commands_of(store, campaign))
    assert after == {("CANCEL", "CAMPAIGN_CANCELLED"): 5, ("DONE", None): 1}
    got = await stored(store, campaign)
    assert (got["state"], got["cancelled_by"], got["settled"]) == ("CANCELLED", "ops", True)


async def test_a_campaign_whose_commands_all_finish_is_done(
        store: Store, settings: Settings) -> None:
    campaign, _ = await finished_campaign(store, settings, 3)
    got = await stored(store, campaign)
    assert (got["state"], got["settled"]) == ("DONE", True)
    last = (await campaign_events(store, campaign))[-1]
    assert (last["state"], last["counts"]["DONE"], last["targets"]) == ("DONE", 3, 3)


async def test_a_dry_run_counts_without_creating(store: Store) -> None:
    ok, no_token, gone, stranger = hex24(), hex24(), hex24(), hex24()
    await register(store, [ok])
    await register(store, [no_token], token=False)
    await register(store, [gone], state="DISENROLLED")
    listed = await store.campaign_dry_run([ok, no_token, gone, stranger], ORG, ENT)
    assert listed == {"targets": 3, "without_push_token": 1, "disenrolled": 1,
                      "not_registered": 1}
    everyone = await store.campaign_dry_run(None, ORG, ENT)
    assert everyone == {"targets": 2, "without_push_token": 1, "disenrolled": 0,
                        "not_registered": 0}
    assert await store.pool.fetchval("SELECT count(*) FROM campaigns") == 0


async def test_wave_zero_takes_the_campaigns_validity(
        store: Store, settings: Settings) -> None:
    device = hex24()
    await register(store, [device])
    campaign, _ = await launch(store, command="LOCK", notBefore=None,
                               waves={"size": 1, "intervalS": 3600})
    await settle(worker(store, settings))
    (row,) = await commands_of(store, campaign)
    assert row["not_before"] is None or row["not_before"] <= datetime.now(UTC)
    assert row["expires_at"] - row["created_at"] == timedelta(seconds=600)


async def test_nothing_of_a_halted_campaign_is_pushed_even_before_its_commands_end(
        store: Store, settings: Settings) -> None:
    devices = sorted(hex24() for _ in range(4))
    await register(store, devices)
    campaign, _ = await launch(store)
    await settle(worker(store, settings))
    assert len([c for c in await store.claim_pushes(2, 30.0) if c.claimed]) == 2
    await store.stop_campaign(campaign, "HALTED", reason="test")  # the worker has not run
    assert [c for c in await store.claim_pushes(100, 30.0) if c.claimed] == []
    open_ = [r for r in await commands_of(store, campaign) if r["sent_at"] is None]
    assert len(open_) == 4
    assert {r["status"] for r in open_} == {"PENDING"}


async def test_waves_are_released_while_the_targets_are_still_being_expanded(
        store: Store, settings: Settings) -> None:
    devices = sorted(hex24() for _ in range(9))
    await register(store, devices)
    campaign, _ = await launch(store, waves={"size": 3, "intervalS": 0})
    w = worker(store, settings, page=2)
    assert await w.pass_once()  # the first page: wave 0 released, wave 1 due already
    assert (await stored(store, campaign))["waves_released"] == 2
    await settle(w)
    rows = await commands_of(store, campaign)
    assert len(rows) == 9
    assert [r for r in rows if r["next_push_at"] is not None and r["next_push_at"].year == 9999
            ] == []
    assert (await stored(store, campaign))["waves_released"] == 3


async def test_retention_removes_settled_campaigns_only_after_the_window(
        store: Store, settings: Settings) -> None:
    done, w = await finished_campaign(store, settings, 2)
    running, _ = await launch(store, waves={"size": 1, "intervalS": 3600})
    await settle(w)
    assert await store.remove_campaigns(3600.0, 100) == 0  # settled just now: kept
    await store.pool.execute(
        "UPDATE campaigns SET finished_at = now() - interval '2 hours', "
        "updated_at = now() - interval '2 hours' WHERE id = ANY($1)", [done, running])
    assert await store.remove_campaigns(3600.0, 100) == 1
    assert await store.get_campaign(done) is None
    assert (await stored(store, running))["state"] == "RUNNING"  # work left: never removed
