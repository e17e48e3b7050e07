"""The push path's parts without a server: the payload of a claimed row, a lane's health
and pause, the slots and rate limit a claim may fill."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from dispatcher import sealing
from dispatcher.exceptions import NoDeviceKey
from dispatcher.push import LogProvider
from dispatcher.push.lanes import UNHEALTHY_AFTER, RankedSlots, health, make_lanes
from dispatcher.push.limits import Slots
from dispatcher.push.payload import build_request
from dispatcher.push.pusher import next_cursors
from dispatcher.secretbox import SecretBox, generate_keys, split
from dispatcher.store.records import ClaimedPush
from tests.support.push import claimed_push

CMD = "c" * 24


def claimed_row(params: dict[str, Any], box: SecretBox, public_key: str | None = None,
                expires_in_s: float = 600) -> ClaimedPush:
    masked, secrets = split(params)
    return claimed_push(id=CMD, command="RESET_PASSWORD", params=masked,
                        secret=box.seal(CMD, secrets), public_key=public_key, push_token="tok",
                        expires_at=datetime.now(UTC) + timedelta(seconds=expires_in_s))


def test_the_payload_carries_the_command_and_a_ttl_of_at_least_one_second() -> None:
    box = SecretBox(generate_keys())
    row = claimed_row({"n": 1}, box, expires_in_s=-5)  # already past: still 1 s, never 0
    request = build_request(row, box, require_sealed=False)
    assert (request.command_id, request.token, request.ttl_s) == (CMD, "tok", 1)
    assert request.data["params"] == {"n": 1}
    assert request.data["expiresAt"].endswith("Z")
    assert list(request.data) == ["commandId", "command", "params", "expiresAt"]


def test_secrets_go_in_clear_without_a_key_and_sealed_with_one() -> None:
    box = SecretBox(generate_keys())
    clear = build_request(claimed_row({"newPassword": "p@ss"}, box), box, require_sealed=False)
    assert clear.data["params"] == {"newPassword": "p@ss"}
    assert "sealed" not in clear.data
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    sealed = build_request(claimed_row({"newPassword": "p@ss"}, box, pem), box,
                           require_sealed=True)
    assert sealed.data["params"] == {}
    opened = sealing.open_sealed(private, CMD, sealed.data["sealed"])
    assert [secret["value"] for secret in opened] == ["p@ss"]


def test_a_secret_is_never_sent_in_clear_when_sealing_is_required() -> None:
    box = SecretBox(generate_keys())
    with pytest.raises(NoDeviceKey):
        build_request(claimed_row({"newPassword": "p@ss"}, box), box, require_sealed=True)


async def test_a_lane_fails_after_failures_in_a_row_pauses_and_recovers() -> None:
    lanes = make_lanes([LogProvider()], 2, 1)
    lane = lanes["log"]
    for _ in range(UNHEALTHY_AFTER):
        lane.failed(None)
    assert health(lanes) == {"log": False}
    assert lane.hold_s() == 0
    lane.failed(30.0)
    assert 29 < lane.hold_s() <= 30
    assert lane.succeeded() is True  # the first success after failing: recovered
    assert lane.succeeded() is False
    assert health(lanes) == {"log": True}


async def test_slots_bound_a_claim_by_free_slots() -> None:
    lanes = make_lanes([LogProvider()], 8, 2)
    slots = Slots(8, lanes)
    assert slots.free() == 8 + 2  # the request slots, plus the pushes claimed ahead
    gate = asyncio.Event()

    async def push() -> None:
        await gate.wait()

    slots.start(push())
    assert slots.free() == 9
    gate.set()
    await slots.drain(1.0)
    await asyncio.sleep(0)
    assert slots.free() == 10


async def test_a_freed_request_slot_goes_to_the_best_ranked_push_waiting() -> None:
    """A LOCK claimed while low pushes claimed ahead of it wait for a slot is sent next."""
    slots = RankedSlots(1)
    await slots.acquire(2)  # the one slot is taken
    order: list[str] = []

    async def push(name: str, rank: int) -> None:
        await slots.acquire(rank)
        order.append(name)
        slots.release()

    waiting = [asyncio.create_task(push(n, r))
               for n, r in (("low-1", 2), ("low-2", 2), ("normal", 1), ("high", 0))]
    await asyncio.sleep(0)
    assert slots.locked()
    assert not order
    slots.release()
    await asyncio.gather(*waiting)
    assert order == ["high", "normal", "low-1", "low-2"]
    assert not slots.locked()


async def test_a_push_cancelled_while_waiting_for_a_slot_loses_no_slot() -> None:
    slots = RankedSlots(1)
    await slots.acquire(1)
    gone = asyncio.create_task(slots.acquire(0))
    kept = asyncio.create_task(slots.acquire(2))
    await asyncio.sleep(0)
    gone.cancel()
    slots.release()  # passes over the cancelled waiter to the next one
    await kept
    slots.release()
    assert not slots.locked()
    await slots.acquire(1)  # the one slot is there to take, no more
    assert slots.locked()


def claimed(org: str, rank: int) -> ClaimedPush:
    at = datetime.now(UTC)
    return ClaimedPush("c", org, "d", "LOCK", None, None, None, "PENDING", at, at, 1, 0, None,
                       None, False, True, "high", rank, at)


def test_the_round_robin_resumes_after_the_last_organization_served() -> None:
    a, b, c = "a" * 24, "b" * 24, "c" * 24
    # from the start: a, b, c served; the next claim starts after c
    assert next_cursors(("", "", ""), [claimed(o, 1) for o in (a, b, c)]) == ("", c, "")
    # after b: c, then wrapped around to a; the next claim starts after a
    assert next_cursors(("", b, ""), [claimed(c, 1), claimed(a, 1)]) == ("", a, "")
    # ranks keep their own place; a rank not served keeps its cursor
    assert next_cursors((b, b, b), [claimed(c, 0), claimed(a, 2)]) == (c, b, a)
