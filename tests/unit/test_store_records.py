"""The typed store: one method per named query, and the records read from driver rows."""

from __future__ import annotations

import inspect
from datetime import UTC, datetime

from dispatcher.lifecycle import Status
from dispatcher.store import QUERIES, Store, Tx
from dispatcher.store.campaigns import CampaignStatements
from dispatcher.store.commands import CommandStatements
from dispatcher.store.pushes import PushStatements
from dispatcher.store.records import (
    Accepted,
    Budget,
    ClaimedPush,
    CommandRef,
    DeviceUpserted,
    HeldEvent,
    LockedCommand,
    OpenCount,
    OutboxBacklog,
    OutboxEvent,
    RejectedPush,
    TableRows,
    Transition,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
STATEMENTS = (CommandStatements, PushStatements, CampaignStatements)


def _typed_methods() -> dict[str, list[type]]:
    found: dict[str, list[type]] = {}
    for cls in STATEMENTS:
        for name, member in vars(cls).items():
            if not name.startswith("_") and inspect.iscoroutinefunction(member):
                found.setdefault(name, []).append(cls)
    return found


def test_every_named_query_has_exactly_one_typed_method_and_vice_versa() -> None:
    methods = _typed_methods()
    assert sorted(set(QUERIES) - set(methods)) == [], "named queries without a typed method"
    assert sorted(set(methods) - set(QUERIES)) == [], "typed methods without a named query"
    assert {n: c for n, c in methods.items() if len(c) > 1} == {}, "defined twice"


def test_each_typed_method_runs_its_own_query() -> None:
    for name, (cls,) in _typed_methods().items():
        source = inspect.getsource(vars(cls)[name])
        assert f'"{name}"' in source, f"{name} does not run the query {name}"
        others = [q for q in QUERIES if q != name and f'"{q}"' in source]
        assert others == [], f"{name} runs other queries too: {others}"


def test_store_and_transaction_carry_the_same_typed_methods() -> None:
    for name in QUERIES:
        assert getattr(Store, name) is getattr(Tx, name)


def test_a_transition_reads_moved_rows_with_or_without_their_optional_columns() -> None:
    inserted = {"id": "c1", "aos_device": "d1", "status": "PENDING", "command": "LOCK",
                "created_at": T0}
    assert Transition.from_row(inserted) == Transition("c1", "d1", "LOCK", "PENDING", None, T0)
    cancelled = {**inserted, "status": "CANCEL", "previous": "PENDING", "organization": "o1",
                 "cancelled_by": "ops"}
    t = Transition.from_row(cancelled)
    assert (t.previous, t.organization, t.cancelled_by) == ("PENDING", "o1", "ops")


def test_records_of_the_input_streams_read_their_rows() -> None:
    assert DeviceUpserted.from_row({"aos_device": "d", "state": "ACTIVE", "has_token": True}) \
        == DeviceUpserted("d", "ACTIVE", True)
    assert CommandRef.from_row({"id": "c", "aos_device": "d", "status": "DONE"}) \
        == CommandRef("c", "d", "DONE")
    locked = LockedCommand.from_row({"id": "c", "aos_device": "d", "organization": "o",
                                     "status": "PENDING", "results": ({"a": 1},),
                                     "results_dropped": 2, "ack_keys": (7, 8)})
    assert locked == LockedCommand("c", "d", "o", "PENDING", [{"a": 1}], 2, [7, 8])
    row = {"kind": "ack", "command_id": "c", "payload": {"x": 1}, "source": {"topic": "t"},
           "seq": 9}
    assert HeldEvent.from_row(row) == HeldEvent("ack", "c", {"x": 1}, {"topic": "t"}, 9)


def test_records_of_the_pusher_read_their_rows() -> None:
    row = {"id": "c", "organization": "o", "aos_device": "d", "command": "LOCK",
           "params": {"p": 1}, "secret": b"s", "public_key": None, "status": "PENDING",
           "expires_at": T0, "created_at": T0, "push_attempts": 3, "pushes": 1,
           "push_token": "tok", "push_provider": "pushy", "reclaimed": False, "claimed": True,
           "priority": "high", "rank": 0, "due_at": T0}
    claimed = ClaimedPush.from_row(row)
    assert (claimed.id, claimed.push_attempts, claimed.claimed, claimed.secret) \
        == ("c", 3, True, b"s")
    assert (claimed.priority, claimed.rank, claimed.due_at) == ("high", 0, T0)
    assert Budget.from_row({"granted": 2, "left_tokens": 0.5}) == Budget(2, 0.5)
    answers = Accepted.from_rows([{"woken": "c2", "stale": None},
                                  {"woken": None, "stale": "c3"}])
    assert answers == Accepted(["c2"], ["c3"])
    rejected = RejectedPush.from_row({"id": "c", "aos_device": "d", "command": "LOCK",
                                      "status": "ERROR", "previous": "PENDING",
                                      "created_at": T0, "woke_next": True})
    assert rejected.woke_next
    assert rejected.transition.status == Status.ERROR


def test_records_of_the_relay_and_the_gauges_read_their_rows() -> None:
    assert OutboxEvent.from_row({"seq": 1, "command_id": "c", "aos_device": "d",
                                 "payload": "{}"}) == OutboxEvent(1, "c", "d", "{}")
    assert OpenCount.from_row({"status": "PENDING", "n": 4, "oldest": T0}) \
        == OpenCount("PENDING", 4, T0)
    assert OutboxBacklog.from_row({"n": 5, "oldest_age_s": 1.5}) == OutboxBacklog(5, 1.5)
    assert TableRows.from_row({"live": 10, "dead": 2}) == TableRows(10, 2)
