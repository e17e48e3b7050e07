"""Bad input at volume: a seeded corpus of invalid events mixed into a valid stream.

Every invalid event lands on ``dead-letter`` with its reason (counted by reason and matched
one by one against the corpus by raw value); every valid command is processed; the
process never dies. An ack that arrives before its command is held and applied once the
command exists; one whose command comes only after the hold window is dead-lettered
``unknown_command``.
"""

from __future__ import annotations

import base64
import json
import os
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.db import PgServer, create_database
from tests.support.events import ack_event, queued_event
from tests.support.faults import PLANS, Figures, Rig, assert_nothing_lost, open_rig, settle, verify
from tests.support.wait import wait_for

pytestmark = pytest.mark.acceptance

VALID = 3000
INVALID = 3000
DEVICES = 500
HELD = 50
HOLD_WINDOW_S = 3
DONE_PLAN = PLANS[0][1]

Item = tuple[str, str, bytes]
"""(topic, expected dead-letter reason, raw value)."""


def _j(value: Any) -> bytes:
    return json.dumps(value).encode()


def generators(rng: random.Random, devices: list[str],
               known: list[str]) -> list[Callable[[int], Item]]:
    """One factory per kind of bad input; each makes a unique raw value from ``i``."""
    def cmd(i: int, **over: Any) -> dict[str, Any]:
        event = queued_event(rng.choice(devices), id=rng.randbytes(12).hex())
        event["params"] = {"n": i}
        event.update(over)
        return event

    def ack(i: int, **over: Any) -> dict[str, Any]:
        event = ack_event(rng.randbytes(12).hex(), rng.choice(devices), "DONE", data={"n": i})
        event.update(over)
        return event

    def missing(i: int) -> dict[str, Any]:
        event = cmd(i)
        del event["aosDevice"]
        return event

    return [
        lambda i: ("commands.created", "invalid_json", f'{{"id": "broken {i}"'.encode()),
        lambda i: ("device-acks", "invalid_json", b"\xff\xfe garbage " + str(i).encode()),
        lambda i: ("commands.created", "invalid_json",
                   f'{{"duration": NaN, "n": {i}}}'.encode()),
        lambda i: ("commands.created", "empty", b" " * (i % 3)),
        lambda i: ("commands.cancel", "validation", _j([i, "not an object"])),
        lambda i: ("commands.created", "validation", _j(cmd(i, duration=f"ten-{i}"))),
        lambda i: ("commands.created", "validation", _j(cmd(i, organization=i))),
        lambda i: ("commands.created", "validation", _j(missing(i))),
        lambda i: ("commands.created", "validation", _j(cmd(i, extra=i))),
        lambda i: ("commands.created", "validation", _j(cmd(i, id=f"zz{i:022d}"))),
        lambda i: ("commands.created", "validation", _j(cmd(i, duration=10**12 + i))),
        lambda i: ("commands.created", "validation",
                   _j(cmd(i, createdAt=f"2026-11-23T10:00:{i % 60:02d}"))),
        lambda i: ("commands.created", "unknown_command", _j(cmd(i, command="TELEPORT"))),
        lambda i: ("commands.created", "too_large", _j(cmd(i, params={"blob": "x" * 5000,
                                                                      "n": i}))),
        lambda i: ("commands.created", "too_large", _j(cmd(i, params={"n": i},
                                                           pad="y" * 70000))),
        lambda i: ("device-acks", "unknown_status", _j(ack(i, status="MAYBE"))),
        lambda i: ("device-acks", "validation", _j(ack(i, at="yesterday"))),
        lambda i: ("device-acks", "validation", _j(ack(i, errorMessage=f"nul\u0000{i}"))),
        lambda i: ("device-acks", "validation", _j(ack(i, commandId=f"short{i}"))),
        lambda i: ("device-acks", "unknown_command", _j(ack(i))),
        lambda i: ("commands.cancel", "unknown_command",
                   _j({"commandId": rng.randbytes(12).hex(), "aosDevice": devices[i % 7],
                       "at": f"2026-11-23T10:00:{i % 60:02d}.{i:06d}Z"})),
        lambda i: ("devices", "validation", _j({"aosDevice": rng.randbytes(12).hex(),
                                                "organization": "o" * (i % 5 + 1),
                                                "aosEnterprise": "x", "state": "BROKEN"})),
        lambda i: ("device-acks", "device_mismatch",
                   _j(ack_event(known[i % len(known)], rng.randbytes(12).hex(), "RECEIVED",
                                data={"n": i}))),
    ]


def make_corpus(rng: random.Random, devices: list[str], known: list[str]) -> list[Item]:
    makers = generators(rng, devices, known)
    return [makers[i % len(makers)](i) for i in range(INVALID)]


def raw_of(letter: dict[str, Any]) -> bytes:
    value = letter.get("value") or ""
    if letter.get("valueEncoding") == "base64":
        return base64.b64decode(value)
    return str(value).encode()


@pytest.fixture(scope="module")
async def rig(kafka_bootstrap: str, pg_server: PgServer, log_dir: Path) -> AsyncIterator[Rig]:
    dsn = await create_database(pg_server.admin_dsn, f"faults_bad_{os.getpid()}")
    async for r in open_rig(bootstrap=kafka_bootstrap, test_bootstrap=kafka_bootstrap,
                            dsn=dsn, test_dsn=dsn, log_dir=log_dir,
                            devices=DEVICES, name="bad-input", seed_offset=4,
                            DISPATCHER_HOLD_WINDOW_S=str(HOLD_WINDOW_S)):
        yield r


async def dead_letters(rig: Rig) -> list[dict[str, Any]]:
    return [e for e in await rig.kafka.read("dead-letter", timeout_s=1)
            if isinstance(e, dict) and "reason" in e]


async def send_mixed(rig: Rig, valid: list[dict[str, Any]], corpus: list[Item]) -> None:
    """Valid commands and the corpus, interleaved at random, in chunks per topic."""
    stream: list[tuple[str, Any]] = [("commands.created", c) for c in valid]
    stream += [(topic, raw) for topic, _, raw in corpus]
    rig.rng.shuffle(stream)
    for start in range(0, len(stream), 200):
        by_topic: dict[str, list[Any]] = {}
        for topic, value in stream[start:start + 200]:
            by_topic.setdefault(topic, []).append(value)
        for topic, values in by_topic.items():
            await rig.kafka.send_many(topic, values)


@pytest.mark.timeout(300)
async def test_invalid_events_at_volume(rig: Rig) -> None:
    figures = Figures("bad-input")
    valid = rig.gateway.commands(rig.rng, rig.devices, VALID)
    corpus = make_corpus(rig.rng, rig.devices, [c["id"] for c in valid])
    await send_mixed(rig, valid, corpus)
    figures.events_sent = len(valid) + len(corpus) + len(rig.devices)
    figures.faults = len(corpus)
    expected_reasons = Counter(reason for _, reason, _ in corpus)

    async def all_dead() -> list[dict[str, Any]] | None:
        letters = await dead_letters(rig)
        return letters if len(letters) >= len(corpus) else None

    found = await wait_for(all_dead, timeout=120, interval=1, what="every dead letter")
    letters: list[dict[str, Any]] = found or []
    await settle(rig.db, rig.gateway.expected(), timeout=120)
    figures.events_sent += rig.gateway.acks_sent
    await verify(figures, rig.kafka, rig.db, rig.gateway.expected(), rig.pushy)

    got = Counter((e["topic"], e["reason"], raw_of(e)) for e in letters)
    want = Counter((rig.kafka.topic(t), reason, raw) for t, reason, raw in corpus)
    figures.extra["dead_letters_by_reason"] = dict(Counter(e["reason"] for e in letters))
    figures.extra["corpus_by_reason"] = dict(expected_reasons)
    assert_nothing_lost(figures)
    missing, unexpected = want - got, got - want
    assert not missing, [(t, r, v[:80]) for t, r, v in list(missing)[:5]]
    assert not unexpected, [(t, r, v[:80]) for t, r, v in list(unexpected)[:5]]
    assert all(e["detail"] for e in letters)
    assert rig.dispatcher.alive, rig.dispatcher.log_tail()
    assert rig.dispatcher.starts == 1


async def test_ack_before_its_command(rig: Rig) -> None:
    """Held within the window and applied; past the window, dead-lettered unknown_command."""
    figures = Figures("held-acks")
    early = [queued_event(rig.rng.choice(rig.devices), id=rig.rng.randbytes(12).hex())
             for _ in range(HELD)]
    late = [queued_event(rig.rng.choice(rig.devices), id=rig.rng.randbytes(12).hex())
            for _ in range(HELD)]
    await rig.kafka.send_many("device-acks", [
        ack_event(c["id"], c["aosDevice"], "DONE") for c in early + late])

    async def held() -> bool:
        n = await rig.db.fetchval("SELECT count(*) FROM held_events WHERE command_id = ANY($1)",
                                  [c["id"] for c in early])
        return bool(n == HELD)

    await wait_for(held, timeout=30, what="the early acks to be held")
    await rig.kafka.send_many("commands.created", early)
    late_ids = {c["id"] for c in late}

    async def late_dead() -> bool:
        ids = {json.loads(e["value"])["commandId"] for e in await dead_letters(rig)
               if e["reason"] == "unknown_command" and e["topic"].endswith("device-acks")
               and e["value"].startswith("{")}
        return late_ids <= ids

    await wait_for(late_dead, timeout=HOLD_WINDOW_S + 30, what="late acks dead-lettered")
    for cmd in late:  # the device answers the push as usual
        rig.gateway.plans[cmd["id"]] = DONE_PLAN
        rig.gateway.devices[cmd["id"]] = cmd["aosDevice"]
    await rig.kafka.send_many("commands.created", late)
    expected = {c["id"]: "DONE" for c in early + late}
    await settle(rig.db, expected, timeout=60)
    await verify(figures, rig.kafka, rig.db, expected, rig.pushy)
    early_pushed = {str(r.data.get("commandId")) for r in rig.pushy.accepted} & \
        {c["id"] for c in early}
    figures.events_sent = 4 * HELD
    figures.extra["early_acks_applied"] = HELD
    figures.extra["late_acks_dead_lettered"] = HELD
    figures.extra["early_commands_pushed"] = len(early_pushed)
    assert_nothing_lost(figures)
    assert not early_pushed
