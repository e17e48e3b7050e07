"""The pure rules of campaigns: ids, waves, when the error budget is judged and spent."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.campaigns import command_id, judged, over_budget, waves_of
from dispatcher.events import CampaignCreated, parse
from dispatcher.exceptions import InvalidEvent


def campaign(targets: int, size: int | None, limit: float | None = None) -> dict[str, Any]:
    return {"targets": targets, "wave_size": size, "max_error_rate": limit}


def test_a_command_id_is_the_same_for_the_same_campaign_and_device_only() -> None:
    a, b, d = "a" * 24, "b" * 24, "d" * 24
    assert command_id(a, d) == command_id(a, d)
    assert len(command_id(a, d)) == 24
    assert int(command_id(a, d), 16) >= 0
    assert command_id(a, d) != command_id(b, d)
    assert command_id(a, d) != command_id(a, "e" * 24)


@given(st.integers(0, 10**7), st.one_of(st.none(), st.integers(1, 10**6)))
def test_the_waves_cover_every_target_and_no_wave_is_empty(targets: int, size: int | None) -> None:
    waves = waves_of(campaign(targets, size))
    assert waves >= 1
    if size is not None and targets:
        assert (waves - 1) * size < targets <= waves * size


def test_a_campaign_is_judged_once_half_a_wave_has_an_outcome() -> None:
    c = campaign(100, 10, 0.2)
    assert judged(c, {"ERROR": 4}) is None  # 4 of a wave of 10: not yet
    assert judged(c, {"ERROR": 4, "DONE": 1}) == pytest.approx(0.8)
    assert judged(c, {"PENDING": 90, "CANCEL": 10}) is None  # cancels are no outcome
    assert judged(campaign(3, None), {"EXPIRED": 1, "DONE": 1}) == pytest.approx(0.5)
    assert judged(campaign(1, None), {"DONE": 1}) == 0


def test_the_budget_is_spent_only_above_the_limit() -> None:
    assert over_budget(campaign(10, 2, 0.5), {"ERROR": 1, "DONE": 1}) is None  # 0.5 is not above
    assert over_budget(campaign(10, 2, 0.49), {"ERROR": 1, "DONE": 1}) == pytest.approx(0.5)
    assert over_budget(campaign(10, 2, None), {"ERROR": 2}) is None  # no limit: never halts


@pytest.mark.parametrize(("target", "reason"), [
    ({}, "validation"), ({"all": True, "devices": ["a" * 24]}, "validation"),
    ({"all": False}, "validation"), ({"devices": []}, "validation"),
    ({"devices": ["not-an-id"]}, "validation"),
])
def test_a_target_names_devices_or_all_and_nothing_else(target: Any, reason: str) -> None:
    raw = CampaignCreated(id="c" * 24, organization="a" * 24, aosEnterprise="e" * 24,
                          command="LOCK", target={"all": True}).model_dump(mode="json")
    raw["target"] = target
    with pytest.raises(InvalidEvent) as err:
        parse(CampaignCreated, json.dumps(raw).encode(), 1 << 20)
    assert err.value.reason == reason
