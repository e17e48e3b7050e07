"""Three `dispatcher run` processes side by side: one consumer group, one database.

The test plays the upstream (commands on ``mdm.commands.created``), the device registry
and the device gateway: when the fake Pushy accepts a push, the "device" answers a moment
later on ``mdm.device-acks`` as its plan says (RECEIVED then DONE, RECEIVED then ERROR,
DONE or ERROR alone, RECEIVED only, or nothing). Commands that get no final ack have a
short validity, so they expire while the replicas share the expiry timer.

1. One replica is SIGKILLed mid-stream with pushes in flight; the others take over its
   partitions and its leases. Checked as the contract says: every command is stored
   once, ends in the status its acks and deadline call for, every transition is on
   ``mdm.commands.status`` (no status twice, nothing after a terminal one), and a push
   repeats only if it was in flight at the kill.
2. A replica is SIGTERMed with slow pushes in flight: it exits 0 in time, its answers
   are recorded, and nothing is lost or pushed twice.
3. The replicas' own output: one JSON object a line, command and device ids on the ack
   and push paths, DEBUG only where it was asked for, and no secret anywhere.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from dispatcher.push import repeat_bound
from dispatcher.secretbox import generate_keys
from dispatcher_dev.devstack import free_port
from dispatcher_dev.fakepushy import FakePushy
from tests.support.db import PgServer, statuses
from tests.support.events import ORG, command_event, device_event, hex24, iso, queued_event
from tests.support.fakes import accepted_at_least
from tests.support.faults import Gateway, Plan
from tests.support.figures import report
from tests.support.kafka import Kafka
from tests.support.lifecycle import check, histories
from tests.support.process import (
    DISPATCHER,
    PUSHY_KEY,
    Service,
    metric_sum,
    service_env,
    stop_process,
    wait_ready,
)
from tests.support.wait import wait_for

pytestmark = pytest.mark.acceptance

CONCURRENCY = 16
LEASE_S = 3
SHUTDOWN_TIMEOUT_S = 10.0
DEVICES = 500
COMMANDS = 3000
KILL_AFTER_PUSHES = 500
PUSH_LATENCY_S = 0.1
DEVICE_DELAY_S = 0.3
"""A device answers this long after the provider took its push (as a phone would)."""
PASSWORD = "Pw-" + secrets.token_hex(8)
SECRET_KEYS = generate_keys("rep1")
JWT_SECRET = "replicas-jwt-" + secrets.token_hex(16)
LEVELS = {"a": "DEBUG", "b": "INFO", "c": "INFO"}
VICTIM = "c"
STOPPED = "b"


def plan_for(i: int) -> Plan:
    kind = i % 20
    if kind < 11:
        return Plan(("RECEIVED", "DONE"), 600, "DONE")
    if kind < 13:
        return Plan(("DONE",), 600, "DONE")
    if kind < 15:
        return Plan(("RECEIVED", "ERROR"), 600, "ERROR")
    if kind < 16:
        return Plan(("ERROR",), 600, "ERROR")
    if kind < 19:
        return Plan((), 2 + i % 3, "EXPIRED")
    return Plan(("RECEIVED",), 3, "EXPIRED")


@dataclass
class Cluster:
    """The replicas by name, and the clients that drive and observe them."""

    replicas: dict[str, Service]
    kafka: Kafka
    pushy: FakePushy
    gateway: Gateway
    db: asyncpg.Connection
    devices: list[str]
    figures: dict[str, Any] = field(default_factory=dict)
    leased_at_kill: set[str] = field(default_factory=set)


async def metric(svc: Service, name: str, **labels: str) -> float:
    """Sum of a metric's samples on one replica whose labels include ``labels``."""
    status, text = await svc.get("/metrics")
    assert status == 200
    return metric_sum(text, name, labels)


async def start_replica(name: str, env: dict[str, str], log_dir: Any, kafka: Kafka,
                        pushy: FakePushy, dsn: str) -> Service:
    port = free_port()
    log_path = log_dir / f"replica-{name}.log"
    with log_path.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            str(DISPATCHER), "run", stdout=out, stderr=subprocess.STDOUT,
            env={**env, "DISPATCHER_HTTP_PORT": str(port), "DISPATCHER_LOG_LEVEL": LEVELS[name]})
    return Service(proc, f"http://127.0.0.1:{port}", kafka, pushy, log_path, dsn)


@pytest.fixture(scope="module")
async def cluster(kafka_bootstrap: str, pg_server: PgServer,
                  tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    dsn = await pg_server.create_database(f"acc_replicas_{secrets.token_hex(4)}")
    prefix = f"rep{secrets.token_hex(4)}."
    kafka = Kafka(kafka_bootstrap, prefix)
    await kafka.start()
    gateway = Gateway(kafka, delay_s=DEVICE_DELAY_S)
    pushy = FakePushy(PUSHY_KEY, on_push=gateway.on_push)
    pushy.latency_s = PUSH_LATENCY_S
    env = service_env(
        DISPATCHER_KAFKA_BOOTSTRAP=kafka_bootstrap, DISPATCHER_DATABASE_URL=dsn,
        DISPATCHER_TOPIC_PREFIX=prefix, DISPATCHER_TOPIC_PARTITIONS="6",
        DISPATCHER_CONSUMER_GROUP=f"replicas-{prefix}",
        DISPATCHER_PUSHY_API_URL=await pushy.start(), DISPATCHER_PUSHY_API_KEY=PUSHY_KEY,
        DISPATCHER_PUSH_CONCURRENCY=str(CONCURRENCY), DISPATCHER_PUSH_LEASE_S=str(LEASE_S),
        DISPATCHER_PUSH_BACKOFF_BASE_S="0.1", DISPATCHER_PUSH_BACKOFF_MAX_S="1",
        DISPATCHER_REPUSH_AFTER_S="0",
        DISPATCHER_KAFKA_SESSION_TIMEOUT_MS="6000", DISPATCHER_KAFKA_REBALANCE_TIMEOUT_MS="6000",
        DISPATCHER_KAFKA_HEARTBEAT_INTERVAL_MS="1000", DISPATCHER_EXPIRY_INTERVAL_S="0.2",
        DISPATCHER_SHUTDOWN_TIMEOUT_S=str(SHUTDOWN_TIMEOUT_S),
        DISPATCHER_SECRET_KEYS=SECRET_KEYS, DISPATCHER_JWT_SECRET=JWT_SECRET,
    )
    log_dir = tmp_path_factory.mktemp("replicas")
    replicas = {name: await start_replica(name, env, log_dir, kafka, pushy, dsn)
                for name in LEVELS}
    db = await asyncpg.connect(dsn)
    try:
        for svc in replicas.values():
            await wait_ready(svc, timeout_s=90)
        await wait_for(lambda: _all_assigned(replicas), timeout=60,
                       what="every replica to get partitions")
        yield Cluster(replicas, kafka, pushy, gateway, db, [hex24() for _ in range(DEVICES)])
    finally:
        for svc in replicas.values():
            await stop_process(svc.proc)
        await db.close()
        await kafka.stop()
        await pushy.stop()


async def _all_assigned(replicas: dict[str, Service]) -> bool:
    return all('"partitions assigned"' in svc.log_path.read_text(errors="replace")
               for svc in replicas.values())


def commands_for(cluster: Cluster, n: int, start: int = 0) -> list[dict[str, Any]]:
    """``n`` commands over the devices, with their plans registered at the gateway."""
    out = []
    now = datetime.now(UTC)
    for i in range(start, start + n):
        plan = plan_for(i)
        dev = cluster.devices[i % DEVICES]
        # Deadlines spread over a second, so every replica's timer finds some due.
        created = now - timedelta(seconds=(i % 10) / 10) if plan.final == "EXPIRED" else now
        cmd = queued_event(dev, duration=plan.duration, createdAt=iso(created))
        if i % 101 == 0:  # ~30, each to a device of its own (a second would supersede it)
            cmd.update(command="RESET_PASSWORD", params={"newPassword": PASSWORD})
        cluster.gateway.plans[cmd["id"]] = plan
        cluster.gateway.devices[cmd["id"]] = dev
        out.append(cmd)
    return out


async def consumed(svc: Service, topic: str | None = None) -> float:
    labels = {"topic": svc.kafka.topic(topic)} if topic else {}
    return await metric(svc, "dispatcher_events_consumed_total", **labels)


async def snapshot(cluster: Cluster, names: list[str]) -> dict[str, dict[str, float]]:
    out = {}
    for name in names:
        svc = cluster.replicas[name]
        out[name] = {
            "consumed": await consumed(svc),
            "acks": await consumed(svc, "device-acks"),
            "expired": await metric(svc, "dispatcher_expired_total"),
            "pushes": await metric(svc, "dispatcher_push_requests_total", outcome="accepted"),
        }
    return out


async def kill_with_pushes_in_flight(cluster: Cluster) -> dict[str, float]:
    """SIGKILL the victim at a moment it has pushes in flight; return what was in flight."""
    victim = cluster.replicas[VICTIM]

    inflight = await wait_for(lambda: metric(victim, "dispatcher_push_inflight"), timeout=120,
                              interval=0.02, what="the victim to have pushes in flight")
    at_fake = cluster.pushy.inflight
    victim.proc.kill()
    await victim.proc.wait()
    leased = await cluster.db.fetch(
        "SELECT id FROM commands WHERE push_lease_until > now() AND status = 'PENDING'")
    cluster.leased_at_kill = {r["id"] for r in leased}
    return {"victim_inflight": inflight, "fake_inflight": at_fake}


async def settled(cluster: Cluster, expected: dict[str, str]) -> bool:
    now = await statuses(cluster.db, list(expected))
    backlog = await cluster.db.fetchval("SELECT count(*) FROM status_outbox")
    return now == expected and backlog == 0


def out_of_order(events: list[Any]) -> int:
    """Commands whose events reached the topic in another order than their transitions."""
    order: dict[str, list[tuple[str | None, str]]] = defaultdict(list)
    for e in events:
        if isinstance(e, dict) and "id" in e and (e["previousStatus"], e["status"]) not in order[
                e["id"]]:
            order[e["id"]].append((e["previousStatus"], e["status"]))
    return sum(1 for steps in order.values()
               if any(steps[i][1] != steps[i + 1][0] for i in range(len(steps) - 1)))


def repeated_ids(pushy: FakePushy, ids: set[str]) -> set[str]:
    counts = Counter(str(r.data.get("commandId")) for r in pushy.accepted)
    return {cid for cid, n in counts.items() if n > 1 and cid in ids}


def repeats(pushy: FakePushy, ids: set[str]) -> int:
    counts = Counter(str(r.data.get("commandId")) for r in pushy.accepted)
    return sum(n - 1 for cid, n in counts.items() if cid in ids)


async def test_sigkill_one_replica_mid_stream(cluster: Cluster) -> None:
    kafka, pushy = cluster.kafka, cluster.pushy
    cmds = commands_for(cluster, COMMANDS)
    expected = {c["id"]: cluster.gateway.plans[c["id"]].final for c in cmds}
    await kafka.send_many("devices", [device_event(d) for d in cluster.devices])
    pushy.fail_next = [500, 500, 500]  # a few retries: the push path logs them
    await kafka.send_many("commands.created", cmds[:1200])

    await wait_for(lambda: accepted_at_least(pushy, KILL_AFTER_PUSHES), timeout=120,
                   what=f"{KILL_AFTER_PUSHES} pushes before the kill")
    pre = cluster.figures["before_kill"] = await snapshot(cluster, list(LEVELS))
    in_flight = await kill_with_pushes_in_flight(cluster)
    killed_at = time.monotonic()
    survivors = [n for n in LEVELS if n != VICTIM]
    before = await snapshot(cluster, survivors)
    for start in range(1200, COMMANDS, 600):
        await kafka.send_many("commands.created", cmds[start:start + 600])
    await wait_for(lambda: settled(cluster, expected), timeout=180, interval=0.5,
                   what="every command in its final status, every event relayed")
    took = time.monotonic() - killed_at
    after = cluster.figures["after"] = await snapshot(cluster, survivors)

    rows = await cluster.db.fetch("SELECT id, organization, command FROM commands")
    assert len(rows) == len({r["id"] for r in rows}) == COMMANDS
    assert {r["id"] for r in rows} == set(expected)

    events = await kafka.read("commands.status", timeout_s=2)
    by_id = histories(events)
    problems = {cid: p for cid, final in expected.items()
                if (p := check(by_id.get(cid, []), final).problems)}
    assert not problems, dict(list(problems.items())[:10])
    assert all(e["organization"] == ORG for h in by_id.values() for e in h)
    expiries = Counter(cid for cid, h in by_id.items() for e in h if e["status"] == "EXPIRED")
    assert {cid for cid, f in expected.items() if f == "EXPIRED"} == set(expiries)
    assert set(expiries.values()) == {1}

    repeated = repeats(pushy, set(expected))
    unrecorded = await cluster.db.fetchval(
        "SELECT count(*) FROM commands WHERE status IN ('DONE', 'ERROR') AND push_id IS NULL")
    report(f"\n{COMMANDS} commands on {DEVICES} devices, 3 replicas, one SIGKILLed: "
          f"{len(pushy.requests)} push requests, {len(pushy.accepted)} accepted, "
          f"{repeated} repeated, {unrecorded} acked commands without a recorded push id "
          f"(in flight at the kill: victim gauge "
          f"{in_flight['victim_inflight']:g}, fake {in_flight['fake_inflight']}); "
          f"settled {took:.1f}s after the kill; {len(events)} status events, "
          f"{out_of_order(events)} commands with events out of order on the topic; "
          f"per replica before the kill {pre}; survivors before/after {before} / {after}")
    # A push may repeat only if its claim was open at the kill: in flight at the
    # provider, or answered and not yet written (answers are written in batches).
    assert repeated_ids(pushy, set(expected)) <= cluster.leased_at_kill
    assert repeated <= repeat_bound(CONCURRENCY)
    split = [n for n, m in pre.items() if m["consumed"] > 0]
    assert len(split) >= 2, pre
    expiring = [n for n in LEVELS if (after.get(n) or pre[n])["expired"] > 0]
    assert len(expiring) >= 2, (pre, after)
    assert all(after[n]["consumed"] > before[n]["consumed"] for n in survivors)


async def test_sigterm_with_pushes_in_flight(cluster: Cluster) -> None:
    pushy, stopped = cluster.pushy, cluster.replicas[STOPPED]
    pushy.latency_s = 1.0
    cmds = [command_event(dev, duration=600) for dev in cluster.devices[:150]]
    ids = {c["id"] for c in cmds}
    await cluster.kafka.send_many("commands.created", cmds)

    inflight = await wait_for(lambda: metric(stopped, "dispatcher_push_inflight"), timeout=60,
                              interval=0.05, what="the replica to have pushes in flight")
    code, took = await stop_process(stopped.proc, timeout_s=SHUTDOWN_TIMEOUT_S + 5)
    assert code == 0, stopped.log_tail()
    assert took < SHUTDOWN_TIMEOUT_S

    async def all_pushed() -> bool:
        n = await cluster.db.fetchval(
            "SELECT count(*) FROM commands WHERE id = ANY($1) AND push_id IS NOT NULL "
            "AND push_lease_until IS NULL", list(ids))
        return bool(n == len(ids))

    await wait_for(all_pushed, timeout=90, what="every command pushed and recorded")
    rows = await cluster.db.fetch("SELECT id, status, push_id FROM commands WHERE id = ANY($1)",
                                  list(ids))
    accepted = {str(r.data.get("commandId")): r.push_id for r in pushy.accepted}
    repeated = repeats(pushy, ids)
    report(f"\nSIGTERM with {inflight:g} pushes in flight (1 s each): exit {code} in {took:.1f}s; "
          f"{len(ids)} commands, {repeated} repeated pushes")
    assert {r["id"] for r in rows} == ids
    assert {r["status"] for r in rows} == {"PENDING"}
    assert all(accepted[r["id"]] == r["push_id"] for r in rows)
    assert repeated == 0
    assert '"dispatcher stopped"' in stopped.log_path.read_text()


def log_lines(svc: Service) -> list[dict[str, Any]]:
    lines = []
    for raw in svc.log_path.read_text(errors="replace").splitlines():
        if raw.strip():
            line = json.loads(raw)
            assert isinstance(line, dict), raw
            assert {"time", "level", "logger", "message"} <= line.keys(), raw
            lines.append(line)
    return lines


async def test_logs_are_json_with_ids_and_no_secrets(cluster: Cluster) -> None:
    logs = {name: log_lines(svc) for name, svc in cluster.replicas.items()}
    everything = "\n".join(svc.log_path.read_text() for svc in cluster.replicas.values())
    for secret in (PASSWORD, PUSHY_KEY, JWT_SECRET, SECRET_KEYS.split(":", 1)[1]):
        assert secret not in everything

    acks = [line for line in logs["a"] if line["logger"] == "dispatcher.acks"]
    assert acks, "the DEBUG replica logs each ack"
    assert all(line["level"] == "DEBUG" and line["command_id"] in cluster.gateway.plans
               and line["device_id"] == cluster.gateway.devices[line["command_id"]]
               and line["organization"] == ORG for line in acks)
    # The INFO replica applied acks too, and wrote no DEBUG line about them.
    assert cluster.figures["after"]["b"]["acks"] > 0
    assert logs["b"]
    assert all(line["level"] != "DEBUG" for line in logs["b"])
    retries = [line for lines in logs.values() for line in lines
               if line["message"] == "push failed, will retry"]
    assert retries
    assert all(line["command_id"] in cluster.gateway.plans and line["device_id"]
               for line in retries)
