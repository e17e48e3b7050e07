"""Push fan-out on a real broker and PostgreSQL, against the fake Pushy server.

Each test gets its own database, topics and consumer group, so faults injected in one
(an outage, a wrong key) never leak into another.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import re
import secrets
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from dispatcher.config import Settings
from dispatcher.exceptions import PUSH_ERROR_MESSAGES
from dispatcher_dev.fakepushy import FakePushy, PushRecord
from tests.support.db import statuses
from tests.support.events import (
    ack_event,
    command_event,
    device_event,
    hex24,
    iso,
    queued_event,
)
from tests.support.fixtures import fresh_db, fresh_kafka
from tests.support.kafka import Kafka
from tests.support.service import PUSHY_KEY, running
from tests.support.wait import wait_for


class TrackingPushy(FakePushy):
    """The fake Pushy, also recording when each request started and ended, per token."""

    def __init__(self, api_key: str = PUSHY_KEY) -> None:
        super().__init__(api_key)
        self.intervals: dict[str, list[tuple[float, float]]] = defaultdict(list)
        self.peers: set[Any] = set()

    async def _handle_push(self, request: web.Request) -> web.Response:
        if request.transport is not None:
            self.peers.add(request.transport.get_extra_info("peername"))
        raw = await request.read()  # aiohttp caches the body: the fake reads it again
        match = re.search(rb'"to"\s*:\s*"([^"]*)"', raw)
        started = time.monotonic()
        try:
            return await super()._handle_push(request)
        finally:
            if match:
                self.intervals[match.group(1).decode()].append((started, time.monotonic()))


kafka = pytest.fixture(fresh_kafka)  # per test, like the database: see ``fresh``
db = pytest.fixture(fresh_db)


@pytest.fixture
async def pushy() -> AsyncIterator[TrackingPushy]:
    fake = TrackingPushy()
    await fake.start()
    yield fake
    await fake.stop()


def serve(settings: Settings, pushy: FakePushy, **overrides: Any) -> Any:
    return running(settings, pushy, **overrides)


async def fleet(kafka: Kafka, devices: int, per_device: int = 1,
                **over: Any) -> tuple[list[str], list[dict[str, Any]]]:
    """Register ``devices`` devices with tokens and send ``per_device`` commands to each.

    Commands of a device get strictly increasing ``createdAt`` values; several per device
    are of a type that a newer one does not supersede, unless ``over`` names one.
    """
    if per_device > 1 and "command" not in over:
        over = {"command": "CLEAR_APP_DATA", "params": {"packageNames": ["com.example.app"]},
                **over}
    ids = [hex24() for _ in range(devices)]
    await kafka.send_many("devices", [device_event(d) for d in ids])
    base = datetime.now(UTC)
    cmds = [command_event(d, createdAt=iso(base + timedelta(milliseconds=k)), **over)
            for k in range(per_device) for d in ids]
    await kafka.send_many("commands.created", cmds)
    return ids, cmds


def accepted_ids(pushy: FakePushy) -> Counter[str]:
    return Counter(str(r.data.get("commandId")) for r in pushy.accepted)


async def all_pushed(pushy: FakePushy, cmds: list[dict[str, Any]], timeout: float = 60) -> None:
    wanted = {c["id"] for c in cmds}

    async def check() -> bool:
        return wanted <= set(accepted_ids(pushy))

    await wait_for(check, timeout=timeout, what=f"{len(wanted)} pushes")


async def http_get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


async def push_outcomes(rt: Any) -> dict[str, float]:
    _, text = await http_get(rt.http_url + "/metrics")
    out: dict[str, float] = {}
    for m in re.finditer(r'^dispatcher_push_requests_total\{([^}]*)\} (\S+)$', text, re.M):
        outcome = re.search(r'outcome="([^"]*)"', m.group(1))
        if outcome and float(m.group(2)):  # every outcome is exported, at 0 until it happens
            out[outcome.group(1)] = float(m.group(2))
    return out


# -- request shape ---------------------------------------------------------------------------


async def test_push_request_has_pushy_shape_and_is_recorded(
        fresh: Settings, kafka: Kafka, pushy: TrackingPushy, db: asyncpg.Connection) -> None:
    async with serve(fresh, pushy):
        (device,), (cmd,) = await fleet(kafka, 1, command="CLEAR_APP_DATA",
                                        params={"packageName": "com.example"}, duration=900)
        await all_pushed(pushy, [cmd])
    push = pushy.accepted[0]
    assert push.to == f"tok-{device}"
    assert set(push.data) == {"commandId", "command", "params", "expiresAt"}
    assert push.data["commandId"] == cmd["id"]
    assert push.data["command"] == "CLEAR_APP_DATA"
    assert push.data["params"] == {"packageName": "com.example"}
    assert push.time_to_live is not None
    assert 880 <= push.time_to_live <= 900
    row = await db.fetchrow("SELECT * FROM commands WHERE id = $1", cmd["id"])
    assert row["push_id"] == push.push_id
    assert row["sent_at"] is not None
    assert row["delivery_expires_at"] == row["expires_at"]
    expires = datetime.fromisoformat(push.data["expiresAt"].replace("Z", "+00:00"))
    assert abs((expires - row["expires_at"]).total_seconds()) < 0.01


# -- concurrency, rate, a slow provider ------------------------------------------------------


async def test_concurrency_is_bounded_and_everything_is_pushed(
        fresh: Settings, kafka: Kafka, pushy: TrackingPushy) -> None:
    pushy.latency_s = 0.2
    async with serve(fresh, pushy, push_concurrency=8):
        _, cmds = await fleet(kafka, 300)
        started = time.monotonic()
        await all_pushed(pushy, cmds, timeout=90)
        took = time.monotonic() - started
    print(f"\n300 pushes at 0.2 s latency, concurrency 8: {took:.1f} s, "
          f"max in flight {pushy.max_inflight}, {len(pushy.peers)} connections")
    assert pushy.max_inflight <= 8
    assert pushy.max_inflight >= 6  # devices are served in parallel
    # Connections are kept alive and reused, not opened per push.
    assert len(pushy.peers) <= 16
    assert sorted(accepted_ids(pushy).values()) == [1] * 300


async def test_rate_limit_is_respected(fresh: Settings, kafka: Kafka,
                                       pushy: TrackingPushy) -> None:
    per_min = 300  # 5 a second, bursts of at most one
    async with serve(fresh, pushy, push_concurrency=16, push_rate_per_min=per_min):
        _, cmds = await fleet(kafka, 30)
        await all_pushed(pushy, cmds)
    times = sorted(r.at for r in pushy.requests)
    rate_s = per_min / 60
    # In any window of w seconds at most 1 + w * rate requests leave.
    for i, t in enumerate(times):
        for w in (1.0, 3.0):
            in_window = sum(1 for u in times[i:] if u < t + w)
            assert in_window <= 1 + w * rate_s, (w, in_window)
    span = times[-1] - times[0]
    observed = (len(times) - 1) / span * 60
    print(f"\n30 pushes at {per_min}/min took {span:.1f} s ({observed:.0f}/min observed)")
    assert observed <= per_min


def most_in_any_window(times: list[float], window_s: float) -> int:
    """The most requests that started within any ``window_s`` seconds."""
    times = sorted(times)
    return max((sum(1 for u in times[i:] if u < t + window_s) for i, t in enumerate(times)),
               default=0)


def accepted_by(rt: Any) -> float:
    return float(rt.metrics.push_requests.labels("pushy", "accepted")._value.get())


async def test_two_replicas_share_one_rate_limit_and_one_left_uses_all_of_it(
        fresh: Settings, kafka: Kafka, pushy: TrackingPushy) -> None:
    """DISPATCHER_PUSH_RATE_PER_MIN is one limit for all replicas together: two replicas
    at 600/min send 600 a minute between them, not 1,200; when one stops, the other
    sends at the whole limit (a stopped replica holds no budget)."""
    per_min, window_s = 600, 10.0
    async with contextlib.AsyncExitStack() as stack:
        first = await stack.enter_async_context(
            serve(fresh, pushy, push_concurrency=16, push_rate_per_min=per_min))
        async with serve(fresh, pushy, push_concurrency=16, push_rate_per_min=per_min) as second:
            _, cmds = await fleet(kafka, 230)
            await wait_for(lambda: _pushed_at_least(pushy, 110), timeout=30, what="110 pushes")
            both = (accepted_by(first), accepted_by(second))
        stopped_at = time.monotonic()
        await all_pushed(pushy, cmds, timeout=60)
    times = sorted(r.at for r in pushy.requests)
    most = most_in_any_window(times, window_s)
    print(f"\n230 pushes, two replicas then one, at {per_min}/min: at most {most} in any "
          f"{window_s:.0f} s; {both} accepted by each while both ran")
    assert most <= per_min / 60 * window_s + 1  # the limit, plus one token of burst
    assert min(both) > 0, "both replicas pushed while both ran"
    alone = [t for t in times if t > stopped_at + 1.0]
    assert len(alone) >= 40
    rate_alone = (len(alone) - 1) / (alone[-1] - alone[0])
    assert rate_alone >= 0.8 * per_min / 60, f"one replica left sent {rate_alone:.1f}/s"


async def _pushed_at_least(pushy: FakePushy, n: int) -> bool:
    return len(pushy.accepted) >= n


async def test_slow_provider_does_not_stall_ingest_or_acks(
        fresh: Settings, kafka: Kafka, pushy: TrackingPushy, db: asyncpg.Connection) -> None:
    pushy.latency_s = 2.0
    async with serve(fresh, pushy, push_concurrency=2, push_timeout_s=5.0):
        _devices, cmds = await fleet(kafka, 40)
        ids = [c["id"] for c in cmds]

        async def stored() -> bool:
            return len(await statuses(db, ids)) == 40

        await wait_for(stored, timeout=15, what="40 commands persisted")
        await kafka.send_many("device-acks", [ack_event(c["id"], c["aosDevice"], "RECEIVED")
                                              for c in cmds[:20]])

        async def acked() -> bool:
            return list((await statuses(db, ids[:20])).values()) == ["RECEIVED"] * 20

        await wait_for(acked, timeout=15, what="acks applied")
        assert len(pushy.accepted) < 20  # the provider is far behind, ingest and acks are not


# -- per device order ------------------------------------------------------------------------


async def test_one_device_one_push_at_a_time_in_creation_order(
        fresh: Settings, kafka: Kafka, pushy: TrackingPushy) -> None:
    pushy.latency_s = 0.1
    async with serve(fresh, pushy, push_concurrency=8):
        _devices, cmds = await fleet(kafka, 20, per_device=5)
        await all_pushed(pushy, cmds, timeout=60)
    expected: dict[str, list[str]] = defaultdict(list)
    for c in sorted(cmds, key=lambda c: c["createdAt"]):
        expected[f"tok-{c['aosDevice']}"].append(c["id"])
    sent: dict[str, list[str]] = defaultdict(list)
    for r in pushy.requests:
        sent[str(r.to)].append(str(r.data["commandId"]))
    assert sent == expected
    gaps = [b[0] - a[1] for spans in pushy.intervals.values()
            for a, b in itertools.pairwise(sorted(spans))]
    print(f"\nlongest wait between two pushes to one device: {max(gaps):.2f} s")
    assert max(gaps) < 2.5  # the next command goes when the previous is answered
    for token, spans in pushy.intervals.items():
        spans.sort()
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert start >= end, f"two pushes in flight for {token}"
    assert pushy.max_inflight >= 4  # different devices in parallel


async def test_when_the_head_command_ends_unsent_the_next_one_goes_at_once(
        fresh: Settings, kafka: Kafka, pushy: TrackingPushy) -> None:
    """A device's first command cancelled while its push keeps failing: the second is not
    held back behind it (no wait for the timer's 10 s repair)."""
    async with serve(fresh, pushy, push_backoff_base_s=5.0, push_backoff_max_s=5.0):
        device = hex24()
        pushy.fail_next = [503]
        await kafka.send("devices", device_event(device))
        base = datetime.now(UTC)
        first = queued_event(device, createdAt=iso(base))
        second = queued_event(device, createdAt=iso(base + timedelta(milliseconds=5)))
        await kafka.send_many("commands.created", [first, second])

        async def first_failed() -> bool:
            return any(r.status == 503 for r in pushy.requests)

        await wait_for(first_failed, timeout=30, what="the first push to fail")
        started = time.monotonic()
        await kafka.send("commands.cancel", {"commandId": first["id"], "aosDevice": device,
                                             "at": iso()})
        await all_pushed(pushy, [second], timeout=30)
        waited = time.monotonic() - started
    assert first["id"] not in accepted_ids(pushy)
    assert waited < 4.0, f"the next command waited {waited:.1f} s behind a cancelled one"


# -- retries, rejections ---------------------------------------------------------------------


async def test_429_retry_after_is_honoured_then_5xx_backs_off_then_accepted(
        fresh: Settings, kafka: Kafka, pushy: TrackingPushy, db: asyncpg.Connection) -> None:
    pushy.fail_next = [429, 503, 500]
    pushy.retry_after_s = 2
    async with serve(fresh, pushy) as rt:
        _, (cmd,) = await fleet(kafka, 1)
        await all_pushed(pushy, [cmd])
        outcomes = await push_outcomes(rt)
    assert [r.status for r in pushy.requests] == [429, 503, 500, 200]
    at = [r.at for r in pushy.requests]
    assert at[1] - at[0] >= 2.0, "the next attempt came before Retry-After"
    assert all(b > a for a, b in itertools.pairwise(at))
    assert outcomes == {"rate_limited": 1, "server_error": 2, "accepted": 1}
    row = await db.fetchrow("SELECT status, push_id, push_attempts FROM commands WHERE id = $1",
                            cmd["id"])
    assert (row["status"], row["push_id"], row["push_attempts"]) == (
        "PENDING", pushy.accepted[0].push_id, 4)


async def test_timeout_is_retried(fresh: Settings, kafka: Kafka, pushy: TrackingPushy,
                                  db: asyncpg.Connection) -> None:
    pushy.latency_s = 1.5
    async with serve(fresh, pushy, push_timeout_s=0.5) as rt:
        _, (cmd,) = await fleet(kafka, 1)
        await wait_for(lambda: _at_least(pushy.requests, 1), what="the first request")
        pushy.latency_s = 0
        await wait_for(lambda: _pushed_to_row(db, cmd["id"]), what="the retry to be recorded")
        outcomes = await push_outcomes(rt)
    assert outcomes["timeout"] >= 1
    assert outcomes["accepted"] == 1
    row_push = await db.fetchval("SELECT push_id FROM commands WHERE id = $1", cmd["id"])
    assert row_push == pushy.requests[-1].push_id


async def _at_least(records: list[PushRecord], n: int) -> bool:
    return len(records) >= n


async def _pushed_to_row(db: asyncpg.Connection, command_id: str) -> bool:
    return bool(await db.fetchval("SELECT push_id FROM commands WHERE id = $1", command_id))


async def test_retries_never_duplicate_an_accepted_push(
        fresh: Settings, kafka: Kafka, pushy: TrackingPushy, db: asyncpg.Connection) -> None:
    pushy.latency_s = 0.02
    pushy.fail_next = [503, 500, 429, 502, 200, 503] * 15
    pushy.retry_after_s = 1
    async with serve(fresh, pushy, push_concurrency=8):
        _, cmds = await fleet(kafka, 60)
        await all_pushed(pushy, cmds)
    counts = accepted_ids(pushy)
    assert sorted(counts.values()) == [1] * 60
    assert len(pushy.requests) > 60
    rows = await db.fetch("SELECT id, push_id FROM commands")
    by_push = {r.push_id: str(r.data["commandId"]) for r in pushy.accepted}
    assert {r["id"]: by_push.get(r["push_id"]) for r in rows} == {r["id"]: r["id"] for r in rows}


class InfoFailedPushy(TrackingPushy):
    """Answers 200 with ``info.failed`` (Pushy's answer for unknown tokens among others)."""

    def _deliver(self, push: Any) -> Any:
        decision = super()._deliver(push)
        if decision.status == 400 and decision.body.get("code") == "NO_RECIPIENTS":
            failed = [push.to] if isinstance(push.to, str) else push.to
            return dataclasses.replace(decision, status=200, body={
                "success": True, "id": secrets.token_hex(12),
                "info": {"devices": 0, "failed": failed}})
        return decision


@pytest.mark.parametrize("fake", [TrackingPushy, InfoFailedPushy], ids=["400", "200-failed"])
async def test_invalid_token_ends_the_command_in_error(
        fresh: Settings, kafka: Kafka, db: asyncpg.Connection, fake: type[TrackingPushy],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="dispatcher.push")
    pushy = fake()
    await pushy.start()
    device, good = hex24(), hex24()
    pushy.invalid_tokens = {f"tok-{device}"}
    try:
        async with serve(fresh, pushy):
            await kafka.send_many("devices", [device_event(device), device_event(good)])
            cmds = [queued_event(device), queued_event(device), command_event(good)]
            await kafka.send_many("commands.created", cmds)
            ids = [c["id"] for c in cmds]

            async def settled() -> bool:
                return await statuses(db, ids) == {
                    ids[0]: "ERROR", ids[1]: "ERROR", ids[2]: "PENDING"}

            # The second command of the device goes as soon as the first is rejected
            # (not after the timer's parked-push repair).
            started = time.monotonic()
            await wait_for(settled, timeout=20, what="both commands of the device in ERROR")
            assert time.monotonic() - started < 8
            await all_pushed(pushy, [cmds[2]])
            events = await wait_for(lambda: _status_events(kafka, ids[0], "ERROR"),
                                    what="the ERROR status event")
    finally:
        await pushy.stop()
    row = await db.fetchrow("SELECT error_type, error_message, secret FROM commands WHERE id = $1",
                            ids[0])
    assert row["error_type"] == "INVALID_TOKEN"
    # a fixed message, not the provider's text ("None of the recipients you specified ...")
    assert row["error_message"] == PUSH_ERROR_MESSAGES["INVALID_TOKEN"]
    assert events[0]["errorType"] == "INVALID_TOKEN"
    assert events[0]["previousStatus"] == "PENDING"
    assert events[0]["errorMessage"] == row["error_message"]
    logged = [getattr(r, "error", "") for r in caplog.records
              if r.getMessage() == "push rejected permanently"]
    assert logged
    if fake is TrackingPushy:  # Pushy's own words are for the operator's logs
        assert any("None of the recipients" in text for text in logged), logged


async def _status_events(kafka: Kafka, command_id: str, status: str) -> list[dict[str, Any]]:
    return [e for e in await kafka.read("commands.status", timeout_s=0.3)
            if isinstance(e, dict) and e.get("id") == command_id and e.get("status") == status]


# -- outages ---------------------------------------------------------------------------------


async def test_outage_fails_no_command_and_delivers_after(
        fresh: Settings, kafka: Kafka, pushy: TrackingPushy, db: asyncpg.Connection) -> None:
    pushy.outage = True
    async with serve(fresh, pushy) as rt:
        _, cmds = await fleet(kafka, 10)
        ids = [c["id"] for c in cmds]

        async def failing() -> bool:
            return (await push_outcomes(rt)).get("server_error", 0) >= 20

        await wait_for(failing, what="failed push requests in the metrics")
        status, body = await http_get(rt.http_url + "/readyz")
        assert status == 200
        assert '"pushProvider": "failing"' in body
        assert set((await statuses(db, ids)).values()) == {"PENDING"}
        pushy.outage = False
        await all_pushed(pushy, cmds)
        status, body = await http_get(rt.http_url + "/readyz")
        assert '"pushProvider": "ok"' in body
    assert sorted(accepted_ids(pushy).values()) == [1] * 10


async def test_after_an_outage_backed_off_pushes_go_at_once(
        fresh: Settings, kafka: Kafka, pushy: TrackingPushy) -> None:
    pushy.outage = True
    # Each failed push backs off 10-20 s; the first one to succeed brings the others forward.
    async with serve(fresh, pushy, push_backoff_base_s=20.0, push_backoff_max_s=60.0) as rt:
        _, cmds = await fleet(kafka, 10)

        async def all_failed_once() -> bool:
            return (await push_outcomes(rt)).get("server_error", 0) >= 10

        await wait_for(all_failed_once, what="every push to fail once")
        pushy.outage = False
        await all_pushed(pushy, cmds, timeout=40)
    times = sorted(r.at for r in pushy.accepted)
    print(f"\nafter the outage: {len(times)} pushes within {times[-1] - times[0]:.1f} s")
    assert times[-1] - times[0] < 3


async def test_wrong_api_key_fails_no_command_until_fixed(
        fresh: Settings, kafka: Kafka, db: asyncpg.Connection) -> None:
    wrong = TrackingPushy(api_key="not-the-dispatchers-key")
    await wrong.start()
    try:
        async with serve(fresh, wrong) as rt:
            _, cmds = await fleet(kafka, 5)

            async def refused() -> bool:
                return (await push_outcomes(rt)).get("auth_error", 0) >= 10

            await wait_for(refused, what="auth errors in the metrics")
            _, body = await http_get(rt.http_url + "/readyz")
            assert '"pushProvider": "failing"' in body
    finally:
        await wrong.stop()
    ids = [c["id"] for c in cmds]
    assert set((await statuses(db, ids)).values()) == {"PENDING"}
    right = TrackingPushy()
    await right.start()
    try:
        async with serve(fresh, right):
            await all_pushed(right, cmds)
    finally:
        await right.stop()


# -- re-push ---------------------------------------------------------------------------------


async def test_repush_while_pending_up_to_the_limit(
        fresh: Settings, kafka: Kafka, pushy: TrackingPushy, db: asyncpg.Connection) -> None:
    async with serve(fresh, pushy, repush_after_s=1.0, repush_max=2):
        _, (quiet, answered) = await fleet(kafka, 2)
        await all_pushed(pushy, [answered])
        await kafka.send("device-acks", ack_event(answered["id"], answered["aosDevice"],
                                                  "RECEIVED"))

        async def three() -> bool:
            return accepted_ids(pushy)[quiet["id"]] >= 3

        await wait_for(three, timeout=20, what="three pushes of the silent command")

        async def settled() -> bool:
            row = await db.fetchrow("SELECT pushes, next_push_at FROM commands WHERE id = $1",
                                    quiet["id"])
            return row["pushes"] == 3 and row["next_push_at"] is None

        # No further push is planned: a claim needs next_push_at.
        await wait_for(settled, what="the re-push plan to end")
        pushes = await db.fetchval("SELECT pushes FROM commands WHERE id = $1", answered["id"])
    counts = accepted_ids(pushy)
    assert counts[quiet["id"]] == 3
    assert counts[answered["id"]] == 1
    assert pushes == 1
    quiet_at = [r.at for r in pushy.accepted if r.data["commandId"] == quiet["id"]]
    assert all(b - a >= 1.0 for a, b in itertools.pairwise(quiet_at))
