"""The pure lifecycle: transitions, deadlines and backoff, property-based, without servers."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from dispatcher import lifecycle
from dispatcher.lifecycle import OPEN, TERMINAL, AckStatus, CommandType, Priority, Status

statuses = st.sampled_from(list(Status))
acks = st.sampled_from(list(AckStatus))
ack_sequences = st.lists(acks, max_size=12)


def run(acks_seen: list[AckStatus], start: Status = Status.PENDING) -> list[Status]:
    """Statuses visited by applying acks in order (the first is the start)."""
    visited = [start]
    for ack in acks_seen:
        nxt = lifecycle.on_ack(visited[-1], ack)
        if nxt is not None:
            visited.append(nxt)
    return visited


@given(ack_sequences)
def test_every_path_is_allowed_and_never_repeats_a_status(seq: list[AckStatus]) -> None:
    path = run(seq)
    for before, after in itertools.pairwise(path):
        assert lifecycle.allowed(before, after)
    assert len(path) == len(set(path)), "a command never moves to the same status twice"


@given(ack_sequences)
def test_terminal_states_never_move(seq: list[AckStatus]) -> None:
    path = run(seq)
    for i, status in enumerate(path):
        if status in TERMINAL:
            assert i == len(path) - 1


@given(statuses, acks)
def test_acks_after_terminal_change_nothing(status: Status, ack: AckStatus) -> None:
    if status in TERMINAL:
        assert lifecycle.on_ack(status, ack) is None


@given(ack_sequences)
def test_done_before_received_ends_done(seq: list[AckStatus]) -> None:
    path = run([AckStatus.DONE, *seq])
    assert path == [Status.PENDING, Status.DONE]


def test_the_contract_transitions() -> None:
    assert lifecycle.on_ack(Status.PENDING, AckStatus.RECEIVED) is Status.RECEIVED
    assert lifecycle.on_ack(Status.RECEIVED, AckStatus.DONE) is Status.DONE
    assert lifecycle.on_ack(Status.RECEIVED, AckStatus.ERROR) is Status.ERROR
    assert lifecycle.on_ack(Status.PENDING, AckStatus.ERROR) is Status.ERROR
    assert lifecycle.on_ack(Status.RECEIVED, AckStatus.RECEIVED) is None
    assert {s for s in Status if lifecycle.can_expire(s)} == set(OPEN)
    assert {s for s in Status if lifecycle.can_cancel(s)} == set(OPEN)


@given(st.one_of(st.none(), st.just(0), st.floats(min_value=0.001, max_value=1e8)),
       st.integers(min_value=1, max_value=10**6))
def test_duration_absent_or_zero_means_default(duration: float | None, default: int) -> None:
    got = lifecycle.effective_duration(duration, default)
    if not duration:
        assert got == default
    else:
        assert abs(got - Decimal(repr(duration))) <= Decimal("5e-10")  # fractions kept
        seconds, nanos = lifecycle.split_duration(got)
        assert Decimal(seconds) + Decimal(nanos) / 10**9 == got
        assert 0 <= nanos < 10**9


def test_fractions_of_a_second_are_kept() -> None:
    assert lifecycle.effective_duration(3.5, 600) == Decimal("3.5")
    assert lifecycle.split_duration(lifecycle.effective_duration(0.1, 600)) == (0, 100_000_000)
    assert lifecycle.split_duration(
        lifecycle.effective_duration(Decimal("12.000000001"), 600)) == (12, 1)
    created = datetime(2026, 1, 1, tzinfo=UTC)
    assert lifecycle.deadline(created, Decimal("3.5")) - created == timedelta(seconds=3.5)


@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1),
                    timezones=st.just(UTC)),
       st.integers(min_value=1, max_value=lifecycle.MAX_DURATION_S))
def test_deadline_and_initial_status(created: datetime, duration: int) -> None:
    expires = lifecycle.deadline(created, duration)
    assert expires - created == timedelta(seconds=duration)
    assert lifecycle.initial_status(expires, expires - timedelta(microseconds=1)) is Status.PENDING
    assert lifecycle.initial_status(expires, expires) is Status.EXPIRED


@given(st.integers(min_value=1, max_value=200), st.floats(min_value=0.01, max_value=10),
       st.floats(min_value=10, max_value=600), st.integers(min_value=0, max_value=2**32))
def test_backoff_grows_within_bounds(attempt: int, base: float, cap: float, seed: int) -> None:
    delay = lifecycle.backoff_s(attempt, base, cap, random.Random(seed))
    bound = min(cap, base * 2 ** min(attempt - 1, 32))
    assert bound / 2 <= delay <= bound


@given(st.integers(min_value=1, max_value=50), st.floats(min_value=0, max_value=1000))
def test_retry_after_is_a_floor(attempt: int, retry_after: float) -> None:
    delay = lifecycle.retry_delay_s(attempt, 0.1, 300.0, retry_after, random.Random(1))
    assert delay >= min(retry_after, 300.0)


# Superseding, priority and notBefore (CONTRACT.md "Superseding", "Order and fairness")

PARAMS_CARRIERS = {CommandType.CLEAR_APP_DATA, CommandType.ADD_ESIM, CommandType.REMOVE_ESIM}


@given(st.sampled_from(CommandType), st.sampled_from(CommandType))
def test_supersede_rules_follow_the_contract(newer: CommandType, older: CommandType) -> None:
    expected = (
        newer in {CommandType.WIPE, CommandType.DISENROLL, CommandType.RELINQUISH_OWNERSHIP}
        or (newer == older and newer not in PARAMS_CARRIERS)
        or {newer, older} == {CommandType.START_LOST_MODE, CommandType.STOP_LOST_MODE}
    )
    assert lifecycle.supersedes(newer, older) is expected


def test_commands_that_carry_params_are_superseded_only_by_the_device_enders() -> None:
    for carrier in PARAMS_CARRIERS:
        by = {t for t in CommandType if lifecycle.supersedes(t, carrier)}
        assert by == {CommandType.WIPE, CommandType.DISENROLL, CommandType.RELINQUISH_OWNERSHIP}


def test_a_lock_does_not_make_a_pending_wipe_moot() -> None:
    assert lifecycle.supersedes(CommandType.WIPE, CommandType.LOCK)
    assert not lifecycle.supersedes(CommandType.LOCK, CommandType.WIPE)
    assert not lifecycle.supersedes(CommandType.REBOOT, CommandType.LOCK)


def test_the_pairs_given_to_the_store_are_exactly_the_rule() -> None:
    pairs = set(lifecycle.supersede_pairs())
    assert pairs == {(n, o) for n in CommandType for o in CommandType
                     if lifecycle.supersedes(n, o)}
    assert (CommandType.STOP_LOST_MODE, CommandType.START_LOST_MODE) in pairs
    assert (CommandType.CLEAR_APP_DATA, CommandType.CLEAR_APP_DATA) not in pairs


@given(st.sampled_from(Status))
def test_only_pending_commands_can_be_superseded(status: Status) -> None:
    assert lifecycle.can_be_superseded(status) is (status is Status.PENDING)


@given(st.sampled_from(CommandType), st.booleans())
def test_default_priority(command: CommandType, campaign: bool) -> None:
    got = lifecycle.default_priority(command, campaign=campaign)
    if campaign:
        assert got is Priority.LOW
    elif command.value in {"LOCK", "WIPE", "START_LOST_MODE", "RESET_PASSWORD", "DISENROLL"}:
        assert got is Priority.HIGH
    else:
        assert got is Priority.NORMAL


def test_priority_ranks_put_high_first() -> None:
    assert sorted(Priority, key=lambda p: p.rank) == [Priority.HIGH, Priority.NORMAL,
                                                      Priority.LOW]


@given(st.datetimes(timezones=st.just(UTC)), st.none() | st.datetimes(timezones=st.just(UTC)))
def test_validity_starts_at_the_later_of_created_and_not_before(
        created: datetime, not_before: datetime | None) -> None:
    start = lifecycle.validity_start(created, not_before)
    assert start >= created
    assert start in (created, not_before)
    if not_before is not None:
        assert start >= not_before
