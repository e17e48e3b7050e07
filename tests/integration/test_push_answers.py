"""Push answers, on a real PostgreSQL: each guarded by its claim, all written by a
supervised recorder.

A replica's answer can come late: its request outlived the lease, the push was claimed
again (by another replica, here a direct ``claim_pushes`` call) and is in flight there.
That late answer must leave the current claim alone: its lease stays, the command is
neither rescheduled nor ended, and the current claim's own answer is the one recorded.
An answer whose lease ran out but whose push nobody claimed again is still recorded.

The recorder that writes accepted answers in batches must not die silently: a failure
other than an outage stops the pusher with the error, logged, so the process stops.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from dispatcher.config import Settings
from dispatcher.exceptions import PushError, StoreRejected
from dispatcher.metrics import Metrics
from dispatcher.push import Pusher, PushRequest
from dispatcher.secretbox import SecretBox, generate_keys
from dispatcher.store import Store
from dispatcher.store.records import PushAnswer
from tests.support.events import hex24
from tests.support.wait import wait_for

LEASE_S = 1.0


class GatedProvider:
    """A provider whose every request waits until the test answers it."""

    name = "pushy"

    def __init__(self) -> None:
        self.requests: list[tuple[PushRequest, asyncio.Future[str]]] = []

    async def send(self, request: PushRequest) -> str:
        answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.requests.append((request, answer))
        return await answer

    async def close(self) -> None:
        """Nothing to release."""


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    s = await Store.connect(database_url)
    # each test's own commands, and its own rate budget (one push a minute, shared by
    # every pusher of the database: a token another test took would hold this one back)
    await s.pool.execute("TRUNCATE commands, devices, status_outbox, push_budget")
    yield s
    await s.close()


@pytest.fixture
def short_lease(database_url: str) -> Settings:
    # One claim a minute: the pusher under test claims once and never takes the push
    # back itself; the second claim is the other replica's.
    return Settings(database_url=database_url, push_lease_s=LEASE_S, push_rate_per_min=1,
                    push_concurrency=4, repush_after_s=0, secret_keys=generate_keys("t1"))


async def due_command(store: Store) -> str:
    """A command due for a push now, to a device with a token."""
    device, command = hex24(), hex24()
    async with store.transaction() as tx:
        await tx.conn.execute(
            "INSERT INTO devices (aos_device, organization, aos_enterprise, push_token, state,"
            " updated_at) VALUES ($1, 'org', 'ent', 'tok-' || $1, 'ACTIVE', now())", device)
        await tx.conn.execute(
            "INSERT INTO commands (id, organization, aos_enterprise, aos_device, command,"
            " status, duration_s, expires_at, created_at, updated_at, next_push_at)"
            " VALUES ($1, 'org', 'ent', $2, 'LOCK', 'PENDING', 600,"
            " now() + interval '600 seconds', now(), now(), now())", command, device)
    return command


async def state(store: Store, command: str) -> dict[str, Any]:
    rows = await store.pool.fetch(
        "SELECT status, push_id, push_lease_until, next_push_at, push_attempts, pushes"
        " FROM commands WHERE id = $1", command)
    return dict(rows[0])


async def lease_ran_out(store: Store, command: str) -> bool:
    return bool(await store.pool.fetchval(
        "SELECT push_lease_until < now() FROM commands WHERE id = $1", command))


def answer_of(outcome: str) -> str | PushError:
    if outcome == "accepted":
        return "push-late"
    return PushError("late", error_type="PROVIDER_ERROR" if outcome == "retry" else
                     "PUSH_REJECTED", retriable=outcome == "retry")


@pytest.mark.parametrize("outcome", ["accepted", "retry", "rejected"])
async def test_a_late_answer_leaves_the_claim_that_took_over_alone(
        short_lease: Settings, store: Store, outcome: str,
        caplog: pytest.LogCaptureFixture) -> None:
    command = await due_command(store)
    provider = GatedProvider()
    pusher = Pusher(short_lease, store, provider, Metrics(), SecretBox(short_lease.secret_keys))
    stop = asyncio.Event()
    running = asyncio.create_task(pusher.run(stop, poll_s=0.05))
    try:
        await wait_for(lambda: _at_least(provider.requests, 1), what="the first request")
        await wait_for(lambda: lease_ran_out(store, command), what="the lease to run out")
        (taken,) = await store.claim_pushes(10, 60.0)  # the other replica
        assert (taken.id, taken.claimed, taken.reclaimed) == (command, True, True)
        current = await state(store, command)

        with caplog.at_level(logging.WARNING, logger="dispatcher.push"):
            _, late = provider.requests[0]
            answer = answer_of(outcome)
            if isinstance(answer, str):
                late.set_result(answer)
                await wait_for(lambda: _logged(caplog, "claim was taken over"),
                               what="the late answer to be written")
            else:
                late.set_exception(answer)
                await wait_for(lambda: _idle(pusher), what="the late answer to be written")
        assert await state(store, command) == current, "a late answer changed the claim"

        done = await store.push_accepted_many(
            [PushAnswer(command, "push-current", taken.expires_at, taken.push_attempts)], 0.0, 1)
        assert not done.stale
        after = await state(store, command)
        assert (after["status"], after["push_id"], after["push_lease_until"],
                after["pushes"]) == ("PENDING", "push-current", None, 1)
    finally:
        stop.set()
        await running


async def test_an_answer_after_its_lease_is_recorded_while_nobody_took_the_push(
        short_lease: Settings, store: Store) -> None:
    command = await due_command(store)
    (claim,) = await store.claim_pushes(10, 0.2)
    await wait_for(lambda: lease_ran_out(store, command), what="the lease to run out")
    done = await store.push_accepted_many(
        [PushAnswer(command, "push-late", claim.expires_at, claim.push_attempts)], 0.0, 1)
    assert not done.stale
    after = await state(store, command)
    assert (after["push_id"], after["push_lease_until"], after["pushes"]) == (
        "push-late", None, 1)


async def test_a_late_rejection_does_not_end_a_command_claimed_again(store: Store) -> None:
    command = await due_command(store)
    (first,) = await store.claim_pushes(10, 0.2)
    await wait_for(lambda: lease_ran_out(store, command), what="the lease to run out")
    (second,) = await store.claim_pushes(10, 60.0)
    moved = await store.push_rejected(command, "INVALID_TOKEN", "x", first.push_attempts)
    assert moved is None
    assert (await state(store, command))["status"] == "PENDING"
    moved = await store.push_rejected(command, "INVALID_TOKEN", "x", second.push_attempts)
    assert moved is not None
    assert moved.transition.status == "ERROR"


async def test_a_failing_answer_recorder_stops_the_pusher_loudly(
        short_lease: Settings, store: Store, caplog: pytest.LogCaptureFixture) -> None:
    await due_command(store)
    poison = f"poison-{hex24()}"  # a push id PostgreSQL refuses (not an outage)
    await store.pool.execute("ALTER TABLE commands ADD CONSTRAINT no_poison"
                             f" CHECK (push_id IS DISTINCT FROM '{poison}') NOT VALID")
    provider = GatedProvider()
    pusher = Pusher(short_lease, store, provider, Metrics(), SecretBox(short_lease.secret_keys))
    stop = asyncio.Event()
    running = asyncio.create_task(pusher.run(stop, poll_s=0.05))
    try:
        with caplog.at_level(logging.ERROR, logger="dispatcher.push"):
            await wait_for(lambda: _at_least(provider.requests, 1), what="the request")
            provider.requests[0][1].set_result(poison)
            await wait_for(lambda: _done(running), timeout=10, what="the pusher to stop")
        assert not stop.is_set()
        with pytest.raises(StoreRejected, match="CheckViolationError"):
            running.result()
        (failure,) = [r for r in caplog.records if "recorder failed" in r.getMessage()]
        assert failure.levelno == logging.ERROR
        assert failure.exc_info
    finally:
        stop.set()
        await asyncio.gather(running, return_exceptions=True)
        await store.pool.execute("ALTER TABLE commands DROP CONSTRAINT no_poison")


async def _done(task: asyncio.Task[None]) -> bool:
    return task.done()


async def _at_least(items: list[Any], n: int) -> bool:
    return len(items) >= n


async def _idle(pusher: Pusher) -> bool:
    return not pusher.inflight


async def _logged(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return any(text in r.getMessage() for r in caplog.records)

