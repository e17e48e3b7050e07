"""The fault suite's harness: the dispatcher under fault, the device side, the checks.

The test plays upstream (commands on ``commands.created``), the registry (``devices``) and
the device gateway: when the fake Pushy accepts a push, the "device" answers on
``device-acks`` as the command's plan says. Plans are drawn from a seeded RNG
(``DISPATCHER_FAULT_SEED``); a command with no final ack has a short validity and expires.

"Nothing lost" is judged from outside, as a user would: every command is in PostgreSQL
once, in the status its plan says; its events on ``commands.status`` are transitions of
the lifecycle that lead there, at least once each, never two different events into one
status (tests/support/lifecycle.py); a push repeats only if it was in flight when the
process was killed. The servers a fault module owns alone are tests/faults/conftest.py's.
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from dispatcher.secretbox import generate_keys
from dispatcher_dev.fakepushy import FakePushy, PushRecord
from tests.support.db import statuses
from tests.support.events import ack_event, device_event, hex24, queued_event
from tests.support.figures import report
from tests.support.kafka import Kafka
from tests.support.lifecycle import check, histories
from tests.support.process import PUSHY_KEY, Dispatcher, service_env
from tests.support.wait import wait_for

SEED = int(os.environ.get("DISPATCHER_FAULT_SEED", "20261123"))
CONCURRENCY = 16
LEASE_S = 3


def base_env(bootstrap: str, dsn: str, prefix: str, pushy_url: str,
             **extra: str) -> dict[str, str]:
    """The environment of a `dispatcher run` under fault: quick timers, small timeouts."""
    env = {
        "DISPATCHER_KAFKA_BOOTSTRAP": bootstrap, "DISPATCHER_DATABASE_URL": dsn,
        "DISPATCHER_TOPIC_PREFIX": prefix, "DISPATCHER_CONSUMER_GROUP": f"faults-{prefix}",
        "DISPATCHER_PUSHY_API_URL": pushy_url, "DISPATCHER_PUSHY_API_KEY": PUSHY_KEY,
        "DISPATCHER_PUSH_CONCURRENCY": str(CONCURRENCY), "DISPATCHER_PUSH_LEASE_S": str(LEASE_S),
        "DISPATCHER_PUSH_TIMEOUT_S": "2", "DISPATCHER_PUSH_BACKOFF_BASE_S": "0.1",
        "DISPATCHER_PUSH_BACKOFF_MAX_S": "1", "DISPATCHER_REPUSH_AFTER_S": "0",
        "DISPATCHER_KAFKA_SESSION_TIMEOUT_MS": "6000",
        "DISPATCHER_KAFKA_REBALANCE_TIMEOUT_MS": "6000",
        "DISPATCHER_KAFKA_HEARTBEAT_INTERVAL_MS": "1000", "DISPATCHER_EXPIRY_INTERVAL_S": "0.2",
        "DISPATCHER_HOLD_WINDOW_S": "3", "DISPATCHER_SHUTDOWN_TIMEOUT_S": "10",
        "DISPATCHER_SECRET_KEYS": generate_keys("flt1"),
        "DISPATCHER_JWT_SECRET": "faults-jwt-secret-" + secrets.token_hex(16),
        "DISPATCHER_LOG_LEVEL": "INFO"}
    env.update(extra)
    return service_env(**env)


# ------------------------------------------------------------------ the device side


@dataclass(frozen=True)
class Plan:
    """What the device answers to a command's push, and the status the command ends in."""

    acks: tuple[str, ...]
    duration: int
    final: str


PLANS: list[tuple[float, Plan]] = [
    (0.50, Plan(("RECEIVED", "DONE"), 600, "DONE")),
    (0.10, Plan(("DONE",), 600, "DONE")),
    (0.10, Plan(("RECEIVED", "ERROR"), 600, "ERROR")),
    (0.05, Plan(("ERROR",), 600, "ERROR")),
    (0.15, Plan((), 3, "EXPIRED")),
    (0.10, Plan(("RECEIVED",), 4, "EXPIRED")),
]


def draw_plan(rng: random.Random) -> Plan:
    return rng.choices([p for _, p in PLANS], weights=[w for w, _ in PLANS])[0]


@dataclass
class Gateway:
    """The device side: answers each command's first accepted push as its plan says."""

    kafka: Kafka
    delay_s: float = 0.05
    plans: dict[str, Plan] = field(default_factory=dict)
    devices: dict[str, str] = field(default_factory=dict)
    answered: set[str] = field(default_factory=set)
    acks_sent: int = 0

    async def on_push(self, record: PushRecord) -> None:
        cid = str(record.data.get("commandId"))
        plan = self.plans.get(cid)
        if plan is None or cid in self.answered:
            return
        self.answered.add(cid)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        for status in plan.acks:
            extra: dict[str, Any] = (
                {"errorType": "APP_FAILED", "errorMessage": "the app refused"}
                if status == "ERROR" else {})
            await self.kafka.send("device-acks", ack_event(cid, self.devices[cid], status,
                                                           **extra))
            self.acks_sent += 1

    def commands(self, rng: random.Random, devices: list[str], n: int) -> list[dict[str, Any]]:
        """``n`` commands on random devices, their plans registered."""
        out = []
        for _ in range(n):
            plan = draw_plan(rng)
            dev = rng.choice(devices)
            # several go to one device: a type that a newer one does not supersede
            cmd = queued_event(dev, id=rng.randbytes(12).hex(), duration=plan.duration)
            self.plans[cmd["id"]] = plan
            self.devices[cmd["id"]] = dev
            out.append(cmd)
        return out

    def expected(self) -> dict[str, str]:
        return {cid: plan.final for cid, plan in self.plans.items()}


# ------------------------------------------------------------------ the checks


@dataclass
class Figures:
    """What a fault test measured; printed at its end."""

    name: str
    started: float = field(default_factory=time.monotonic)
    events_sent: int = 0
    faults: int = 0
    kills: int = 0
    lost: int = 0
    duplicate_transitions: int = 0
    bad_transitions: int = 0
    repeated_pushes: int = 0
    repeat_bound: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def show(self) -> str:
        took = time.monotonic() - self.started
        extra = "".join(f", {k}={v}" for k, v in self.extra.items())
        return (f"\n[{self.name}] {took:.1f}s: events sent {self.events_sent}, faults injected "
                f"{self.faults}, kills {self.kills}, commands lost {self.lost}, duplicate "
                f"transitions {self.duplicate_transitions}, transitions outside the lifecycle "
                f"{self.bad_transitions}, repeated pushes {self.repeated_pushes} (bound "
                f"{self.repeat_bound}){extra}")


async def settle(db: asyncpg.Connection, expected: dict[str, str], timeout: float) -> None:
    """Until every command is in its expected status and the outbox is empty."""
    ids = list(expected)
    last: dict[str, Any] = {}

    async def done() -> bool:
        now = await statuses(db, ids)
        backlog = await db.fetchval("SELECT count(*) FROM status_outbox")
        wrong = {cid: (now.get(cid), want) for cid, want in expected.items()
                 if now.get(cid) != want}
        last.update(wrong=len(wrong), sample=dict(list(wrong.items())[:5]), outbox=backlog)
        return not wrong and backlog == 0

    try:
        await wait_for(done, timeout=timeout, interval=0.5, what="every command settled")
    except AssertionError as exc:
        raise AssertionError(f"not settled after {timeout}s: {last}") from exc


async def verify(figures: Figures, kafka: Kafka, db: asyncpg.Connection,
                 expected: dict[str, str], pushy: FakePushy) -> None:
    """Fill ``figures`` from the database, the status topic and the fake provider."""
    rows = await db.fetch("SELECT id FROM commands WHERE id = ANY($1)", list(expected))
    stored = Counter(r["id"] for r in rows)
    now = await statuses(db, list(expected))
    events = await kafka.read("commands.status", timeout_s=2)
    by_id = histories(events)
    incomplete = []
    for cid, final in expected.items():
        verdict = check(by_id.get(cid, []), final)
        figures.duplicate_transitions += verdict.duplicates
        figures.bad_transitions += len(verdict.bad)
        if not verdict.complete:
            incomplete.append((cid, final, by_id.get(cid, [])))
    figures.lost = sum(1 for cid, want in expected.items()
                       if stored[cid] != 1 or now.get(cid) != want)
    pushes = Counter(str(r.data.get("commandId")) for r in pushy.accepted)
    figures.repeated_pushes = sum(n - 1 for cid, n in pushes.items() if cid in expected)
    figures.extra["incomplete_histories"] = len(incomplete)
    figures.extra["status_events"] = len(events)
    figures.extra["sample_incomplete"] = [
        (c, f, [(e["previousStatus"], e["status"]) for e in h]) for c, f, h in incomplete[:3]]


def assert_nothing_lost(figures: Figures) -> None:
    report(figures.show())
    assert figures.lost == 0, figures.show()
    assert figures.duplicate_transitions == 0, figures.show()
    assert figures.bad_transitions == 0, figures.show()
    assert figures.extra["incomplete_histories"] == 0, figures.show()
    assert figures.repeated_pushes <= figures.repeat_bound, figures.show()


# ------------------------------------------------------------------ servers and clients


@dataclass
class Rig:
    """A dispatcher under test and everything around it."""

    dispatcher: Dispatcher
    kafka: Kafka
    pushy: FakePushy
    gateway: Gateway
    db: asyncpg.Connection
    dsn: str
    devices: list[str]
    rng: random.Random

    async def register_devices(self) -> None:
        await self.kafka.send_many("devices", [device_event(d) for d in self.devices])


@dataclass
class RigParts:
    """What a module's ``rig`` fixture builds before starting the process."""

    bootstrap: str
    dsn: str
    pushy: FakePushy = field(default_factory=lambda: FakePushy(PUSHY_KEY))
    prefix: str = field(default_factory=lambda: f"flt{hex24()[:8]}.")


async def open_rig(*, bootstrap: str, test_bootstrap: str, dsn: str, test_dsn: str,
                   log_dir: Path, devices: int, name: str,
                   route_pushy: Callable[[int], Awaitable[str]] | None = None,
                   seed_offset: int = 0, gateway_delay_s: float = 0.05,
                   **env: str) -> AsyncIterator[Rig]:
    """Start a dispatcher (bootstrap/dsn as it sees them) and the test's clients."""
    rng = random.Random(SEED + seed_offset)
    prefix = f"flt{hex24()[:8]}."  # fresh topics even on a long-lived broker
    kafka = Kafka(test_bootstrap, prefix)
    await kafka.start()
    gateway = Gateway(kafka, delay_s=gateway_delay_s)
    pushy = FakePushy(PUSHY_KEY, on_push=gateway.on_push)
    pushy_url = await pushy.start()
    proc: Dispatcher | None = None
    rig: Rig | None = None
    try:
        if route_pushy is not None:
            pushy_url = await route_pushy(int(pushy_url.rsplit(":", 1)[1]))
        proc = Dispatcher(base_env(bootstrap, dsn, prefix, pushy_url, **env),
                          log_dir / f"{name}.log")
        await proc.start()
        await proc.wait_ready()
        rig = Rig(proc, kafka, pushy, gateway, await asyncpg.connect(test_dsn), test_dsn,
                  [rng.randbytes(12).hex() for _ in range(devices)], rng)
        await rig.register_devices()
        yield rig
    finally:
        if proc is not None:
            code = await proc.stop()
            print(f"\n[{name}] dispatcher stopped with exit code {code}; log {proc.log_path}")
        if rig is not None:
            await rig.db.close()
        await kafka.stop()
        await pushy.stop()


async def paced(items: list[Any], rate_per_s: float, send: Any, chunk: int = 50) -> None:
    """Send ``items`` in chunks at ``rate_per_s`` (by deadline, not by sleeping blindly)."""
    started = time.monotonic()
    for i in range(0, len(items), chunk):
        due = started + i / rate_per_s
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await send(items[i:i + chunk])
