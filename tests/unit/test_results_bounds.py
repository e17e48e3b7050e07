"""The bounds of ``results`` (pure): newest entries kept, oldest data dropped first, counted."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from dispatcher.acks import RESULTS_MAX, RESULTS_MAX_BYTES, cap_results, fingerprint
from dispatcher.events import json_size


def entry(i: int, data_bytes: int = 0, text: int = 0) -> dict[str, Any]:
    e: dict[str, Any] = {"at": f"2026-01-01T00:00:{i % 60:02d}Z", "status": "RECEIVED",
                         "data": {"i": i, "blob": "d" * data_bytes}}
    if text:
        e["errorMessage"] = "m" * text
    return e


def test_more_than_the_most_entries_keeps_the_newest_and_counts_the_rest() -> None:
    results = [entry(i) for i in range(RESULTS_MAX + 12)]
    kept, dropped = cap_results(results, 3)
    assert kept == results[-RESULTS_MAX:]
    assert dropped == 3 + 12


def test_past_the_byte_bound_the_oldest_lose_their_data_first() -> None:
    results = [entry(i, data_bytes=4000) for i in range(30)]  # about 120 KB
    kept, dropped = cap_results(results, 0)
    assert dropped == 0
    assert [e["at"] for e in kept] == [e["at"] for e in results]
    assert json_size(kept) <= RESULTS_MAX_BYTES
    slimmed = [i for i, e in enumerate(kept) if e.get("dataDropped")]
    assert slimmed == list(range(len(slimmed)))  # the oldest ones, in order
    assert all("data" not in kept[i] for i in slimmed)
    assert kept[len(slimmed):] == results[len(slimmed):]  # the newer ones untouched
    assert kept[-1] == results[-1]


def test_when_data_is_not_enough_whole_oldest_entries_go() -> None:
    results = [entry(i, data_bytes=100, text=2000) for i in range(RESULTS_MAX)]
    kept, dropped = cap_results(results, 0)
    assert json_size(kept) <= RESULTS_MAX_BYTES
    assert dropped == RESULTS_MAX - len(kept) > 0
    assert [e["at"] for e in kept] == [e["at"] for e in results[dropped:]]
    assert kept[-1] == results[-1]


entries = st.builds(entry, st.integers(0, 10_000), st.integers(0, 16_000), st.integers(0, 2000))


@given(st.lists(entries, max_size=80), st.integers(0, 1000))
def test_bounds_hold_and_nothing_is_lost_uncounted(results: list[dict[str, Any]],
                                                    before: int) -> None:
    kept, dropped = cap_results(results, before)
    assert len(kept) <= RESULTS_MAX
    assert json_size(kept) <= RESULTS_MAX_BYTES
    assert dropped == before + len(results) - len(kept)
    assert [e["at"] for e in kept] == [e["at"] for e in results[len(results) - len(kept):]]
    if results:
        assert kept[-1] == results[-1]


def test_fingerprint_ignores_key_order_and_sees_every_field() -> None:
    a = {"at": "2026-01-01T00:00:00Z", "status": "DONE", "data": {"x": 1, "y": [1, 2]}}
    b = {"data": {"y": [1, 2], "x": 1}, "status": "DONE", "at": "2026-01-01T00:00:00Z"}
    assert fingerprint(a) == fingerprint(b)
    assert fingerprint(a) != fingerprint({**a, "data": {"x": 2, "y": [1, 2]}})
    assert -(2**63) <= fingerprint(a) < 2**63
