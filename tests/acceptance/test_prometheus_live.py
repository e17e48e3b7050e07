"""The Grafana dashboard and the alert rules, answered by a real Prometheus.

Two `dispatcher run` replicas (one consumer group, one database, a broker of their own
behind a proxy) are scraped every second by a temporary Prometheus that evaluates the
real ``deploy/prometheus/alerts.yml`` every second. The test plays upstream, the device
gateway and a kubelet (it probes each replica's ``/readyz`` every second, which is what
refreshes ``dispatcher_dependency_up`` for Kafka and PostgreSQL) through this scenario:

1. traffic: commands that devices answer DONE, RECEIVED then DONE, RECEIVED then ERROR,
   or never (they expire); one command an hour old that cannot be pushed (no token);
   two values that are not JSON and an ack for a command that never comes (dead letters
   ``invalid_json`` and, after the hold window, ``unknown_command``);
2. a provider outage (the fake Pushy answers 503) while commands wait to be pushed;
3. a broker cut (the proxy refuses every connection) while 1,200 commands expire, so
   their EXPIRED events back up in the status outbox;
4. both replicas killed, one after the other.

Then every query of the dashboard (panels and annotations, its ``$instance`` variable
resolved through Prometheus and substituted as Grafana does, ``$__rate_interval``
included) is run over the scenario's window through the HTTP API: each returns data,
and the values agree with what the scenario did (transitions by status against the
status events published, dead letters by reason against the dead-letter topic, push
outcomes against the fake provider's answers, the provider's ``dependency_up`` at 0
during the outage, the outbox backlog at 1,200 during the cut, ...).

Alerts seen pending or firing in ``/api/v1/alerts`` during the scenario:
DispatcherDeadLetters (``for: 1m``: firing), and pending (their ``for:`` is 2 to 15
minutes, longer than this test; ``deploy/prometheus/alerts_test.yml`` proves their
firing with promtool): DispatcherPushProviderFailing, DispatcherPushErrorRateHigh,
DispatcherCommandsStuck, DispatcherExpiryRateHigh, DispatcherNotReady,
DispatcherOutboxBacklogGrowing, DispatcherReplicaDown, DispatcherNoReplicaUp.
Not triggered live, proven by promtool only: DispatcherConsumerLagGrowing (a lag over
1,000 growing across minutes) and DispatcherDatabasePoolSaturated (the pool over 90%
busy for 10 minutes).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from dispatcher.campaigns import command_id
from dispatcher_dev.fakepushy import FakePushy
from tests.support.db import PgServer
from tests.support.events import (
    ENTERPRISE,
    ORG,
    ack_event,
    command_event,
    device_event,
    hex24,
    iso,
)
from tests.support.faults import Gateway, Plan, base_env
from tests.support.figures import report
from tests.support.kafka import Kafka
from tests.support.lifecycle import histories
from tests.support.process import PUSHY_KEY, Dispatcher
from tests.support.promserver import Prometheus, binary, dashboard, interpolate, targets, values
from tests.support.promserver import variable_values as resolve_variables
from tests.support.proxy import Proxy, proxied_broker

pytestmark = pytest.mark.acceptance

GOOD = 50  # devices with a push token, answered by the gateway (the last 5: a campaign's)
SILENT = 1200  # devices without one: their commands wait, then expire during the cut
EXPIRING_IN_CUT_S = 10  # validity of the SILENT commands: stored and announced before the cut
ALERTS_LIVE = {
    "DispatcherDeadLetters", "DispatcherPushProviderFailing", "DispatcherPushErrorRateHigh",
    "DispatcherCommandsStuck", "DispatcherExpiryRateHigh", "DispatcherNotReady",
    "DispatcherOutboxBacklogGrowing", "DispatcherReplicaDown", "DispatcherNoReplicaUp",
}
ALERTS_PROMTOOL_ONLY = {"DispatcherConsumerLagGrowing", "DispatcherDatabasePoolSaturated",
                        "DispatcherSecretUnreadable", "DispatcherCampaignHalted"}


@dataclass
class Stack:
    """Everything the scenario drives and reads."""

    replicas: list[Dispatcher]
    prometheus: Prometheus
    kafka: Kafka
    gateway: Gateway
    pushy: FakePushy
    proxy: Proxy
    db: asyncpg.Connection
    started: float = field(default_factory=time.time)
    seen: dict[str, dict[str, Any]] = field(default_factory=dict)
    marks: dict[str, float] = field(default_factory=dict)
    campaign_commands: set[str] = field(default_factory=set)

    def mark(self, what: str) -> None:
        self.marks[what] = round(time.time() - self.started, 1)


@pytest.fixture(scope="module")
async def stack(pg_server: PgServer,
                tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    binary("prometheus")  # skip (loudly) before starting anything when it is missing
    workdir = tmp_path_factory.mktemp("prometheus-live")
    async with proxied_broker(workdir / "tansu.log") as (broker, proxy):
        dsn = await pg_server.create_database(f"acc_prom_{hex24()[:6]}")
        prefix = f"prom{hex24()[:8]}."
        kafka = Kafka(broker.bootstrap, prefix)
        await kafka.start()
        gateway = Gateway(kafka, delay_s=0.05)
        pushy = FakePushy(PUSHY_KEY, on_push=gateway.on_push)
        env = base_env(f"127.0.0.1:{proxy.port}", dsn, prefix, await pushy.start())
        replicas = [Dispatcher(env, workdir / f"dispatcher-{n}.log") for n in (1, 2)]
        prometheus = Prometheus(workdir, [f"127.0.0.1:{r.port}" for r in replicas])
        db: asyncpg.Connection | None = None
        try:
            for replica in replicas:
                await replica.start()
            await prometheus.start()
            await asyncio.gather(*(r.wait_ready() for r in replicas))
            await prometheus.wait_scraping()
            db = await asyncpg.connect(dsn)
            yield Stack(replicas, prometheus, kafka, gateway, pushy, proxy, db)
        finally:
            for replica in replicas:
                await replica.stop()
            prometheus.stop()
            if db is not None:
                await db.close()
            await kafka.stop()
            await pushy.stop()


async def until(check: Any, timeout: float, what: str, stack: Stack) -> None:
    """Wait for ``check()`` with a deadline; the replicas' and Prometheus's logs on failure."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.5)
    logs = "\n".join(f"--- {r.log_path.name}\n{r.log_tail(15)}" for r in stack.replicas)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; seen alerts "
                         f"{sorted(stack.seen)}\n{logs}\n--- prometheus\n"
                         f"{stack.prometheus.log_tail(10)}")


async def watch(stack: Stack) -> None:
    """Every second: probe /readyz of each live replica (a kubelet's job) and record every
    alert Prometheus shows pending or firing, with when it was first seen in each state."""
    while True:
        for replica in stack.replicas:
            if replica.alive:
                await replica.readyz()
        with contextlib.suppress(Exception):
            for alert in await stack.prometheus.alerts():
                active_at = _epoch(alert["activeAt"])
                if active_at < stack.started:
                    continue  # e.g. "no replica up" before the first scrape
                name, state = alert["labels"]["alertname"], alert["state"]
                entry = stack.seen.setdefault(name, {"alert": alert, "states": {},
                                                     "active_at": active_at})
                entry["states"].setdefault(state, round(time.time() - stack.started, 1))
                if active_at >= entry["active_at"]:  # the latest activation's labels
                    entry["alert"], entry["active_at"] = alert, active_at
        await asyncio.sleep(1)


def _epoch(rfc3339: str) -> float:
    """Prometheus's activeAt (nanoseconds, Z) as a Unix time."""
    text = re.sub(r"(\.\d{6})\d*", r"\1", rfc3339).replace("Z", "+00:00")
    return datetime.fromisoformat(text).timestamp()


def plan_commands(stack: Stack, devices: list[str], plan: Plan) -> list[dict[str, Any]]:
    commands = []
    for device in devices:
        command = command_event(device, duration=plan.duration)
        stack.gateway.plans[command["id"]] = plan
        stack.gateway.devices[command["id"]] = device
        commands.append(command)
    return commands


async def settled(stack: Stack, expected: dict[str, str]) -> bool:
    rows = await stack.db.fetch("SELECT id, status FROM commands WHERE id = ANY($1)",
                                list(expected))
    return {r["id"]: r["status"] for r in rows} == expected


async def prom_value(stack: Stack, expr: str) -> float:
    value = await stack.prometheus.value(expr)
    return math.nan if value is None else value


def prom(stack: Stack, expr: str, test: Callable[[float], bool]) -> Callable[[], Awaitable[bool]]:
    """A check that the instant value of ``expr`` passes ``test``."""
    async def check() -> bool:
        return test(await prom_value(stack, expr))

    return check


def seen_in(stack: Stack, alert: str) -> bool:
    return alert in stack.seen


# ------------------------------------------------------------------ the scenario


async def traffic(stack: Stack, good: list[str], stuck_device: str) -> dict[str, str]:
    """Commands answered in every way, one stuck for an hour, three dead letters."""
    await stack.kafka.send("commands.created", b'{"id": "cut short', key=b"bad-1")
    await stack.kafka.send("commands.created", b"\xff\xfe not JSON at all", key=b"bad-2")
    await stack.kafka.send("device-acks", ack_event(hex24(), good[0], "DONE"))  # no command
    commands = (
        plan_commands(stack, good[:15], Plan(("RECEIVED", "DONE"), 600, "DONE"))
        + plan_commands(stack, good[15:20], Plan(("DONE",), 600, "DONE"))
        + plan_commands(stack, good[20:25], Plan(("RECEIVED", "ERROR"), 600, "ERROR"))
        + plan_commands(stack, good[25:30], Plan((), 3, "EXPIRED"))
    )
    stuck = command_event(stuck_device, duration=7200,
                          createdAt=iso(datetime.now(UTC) - timedelta(hours=1)))
    await stack.kafka.send_many("commands.created", [*commands, stuck])
    expected = {c["id"]: stack.gateway.plans[c["id"]].final for c in commands}
    expected |= await campaign(stack, good[45:50])
    expected[stuck["id"]] = "PENDING"
    await until(lambda: settled(stack, expected), 60, "traffic settled", stack)
    await until(prom(stack, 'sum(dispatcher_dead_letters_total{job="dispatcher"})',
                     lambda v: v == 3), 30, "3 dead letters in Prometheus", stack)
    stack.mark("traffic settled")
    return expected


async def campaign(stack: Stack, devices: list[str]) -> dict[str, str]:
    """A campaign over ``devices`` in two waves, each command answered DONE."""
    campaign_id = hex24()
    plan = Plan(("RECEIVED", "DONE"), 600, "DONE")
    for device in devices:
        stack.gateway.plans[command_id(campaign_id, device)] = plan
        stack.gateway.devices[command_id(campaign_id, device)] = device
    await stack.kafka.send("campaigns.created", {
        "id": campaign_id, "organization": ORG, "aosEnterprise": ENTERPRISE,
        "command": "REBOOT", "target": {"devices": devices},
        "waves": {"size": 3, "intervalS": 1}}, key=campaign_id)
    ids = {command_id(campaign_id, d): "DONE" for d in devices}
    stack.campaign_commands |= set(ids)
    return ids


async def provider_outage(stack: Stack, good: list[str]) -> dict[str, str]:
    """The provider answers 503 until Prometheus sees it down; then it recovers."""
    commands = plan_commands(stack, good[30:45], Plan(("RECEIVED", "DONE"), 600, "DONE"))
    stack.pushy.outage = True
    stack.mark("provider outage")
    try:
        await stack.kafka.send_many("commands.created", commands)
        down = 'min(dispatcher_dependency_up{job="dispatcher", dependency="push_provider"})'
        await until(prom(stack, down, lambda v: v == 0), 60, "provider down in Prometheus",
                    stack)

        async def alerted() -> bool:
            return seen_in(stack, "DispatcherPushProviderFailing") and \
                seen_in(stack, "DispatcherPushErrorRateHigh")

        await until(alerted, 30, "provider alerts pending", stack)
    finally:
        stack.pushy.outage = False
    stack.mark("provider back")
    expected = {c["id"]: "DONE" for c in commands}
    await until(lambda: settled(stack, expected), 60, "outage commands DONE", stack)
    return expected


async def broker_cut(stack: Stack, silent: list[str]) -> dict[str, str]:
    """Commands expire while the broker is cut: their events back up in the outbox."""
    commands = [command_event(d, duration=EXPIRING_IN_CUT_S) for d in silent]
    await stack.kafka.send_many("commands.created", commands)

    async def stored_and_announced() -> bool:
        # the campaign's last status event must be out before the cut too: the backlog
        # during the cut is then exactly the silent commands' EXPIRED events
        stored: int = await stack.db.fetchval(
            "SELECT count(*) FROM commands WHERE id = ANY($1)", [c["id"] for c in commands])
        running: int = await stack.db.fetchval(
            "SELECT count(*) FROM campaigns WHERE state = 'RUNNING'")
        waiting: int = await stack.db.fetchval("SELECT count(*) FROM status_outbox")
        return stored == len(commands) and running == 0 and waiting == 0

    await until(stored_and_announced, 30, "silent commands stored and announced", stack)
    early = await stack.db.fetchval("SELECT count(*) FROM commands WHERE id = ANY($1) AND "
                                    "status = 'EXPIRED'", [c["id"] for c in commands])
    assert early == 0, f"{early} expired before the cut: raise EXPIRING_IN_CUT_S"
    stack.proxy.set_mode("refuse")
    stack.proxy.cut()
    stack.mark("broker cut")
    try:
        backlog = 'max(dispatcher_status_outbox_backlog{job="dispatcher"})'
        await until(prom(stack, backlog, lambda v: v >= len(commands)), 60,
                    "outbox backlog in Prometheus", stack)

        async def alerted() -> bool:
            return all(seen_in(stack, a) for a in (
                "DispatcherNotReady", "DispatcherOutboxBacklogGrowing",
                "DispatcherExpiryRateHigh"))

        await until(alerted, 30, "broker-cut alerts pending", stack)
    finally:
        stack.proxy.set_mode("pass")
    stack.mark("broker back")

    async def recovered() -> bool:
        ready = [await r.readyz() for r in stack.replicas]
        return ready == [200, 200] and \
            await stack.db.fetchval("SELECT count(*) FROM status_outbox") == 0

    await until(recovered, 90, "replicas ready, outbox drained", stack)
    stack.mark("outbox drained")
    return {c["id"]: "EXPIRED" for c in commands}


async def quiet_end(stack: Stack) -> None:
    """Until Prometheus shows the final state: gauges refreshed, the dead-letter alert firing."""
    async def final() -> bool:
        open_ = await prom_value(
            stack, 'sum(max by (status) (dispatcher_commands_open{job="dispatcher"}))')
        backlog = await prom_value(stack, 'max(dispatcher_status_outbox_backlog{job="dispatcher"})')
        firing = "firing" in stack.seen.get("DispatcherDeadLetters", {}).get("states", {})
        return open_ == 1 and backlog == 0 and firing and seen_in(stack, "DispatcherCommandsStuck")

    await until(final, 90, "final state in Prometheus", stack)
    stack.mark("quiet")


# ------------------------------------------------------------------ the checks


def nonzero(result: list[dict[str, Any]], label: str) -> set[str]:
    """Values of ``label`` among the series with a value other than 0 somewhere."""
    return {s["metric"].get(label, "") for s in result if any(v != 0 for v in values(s))}


def last(result: list[dict[str, Any]]) -> float:
    assert len(result) == 1, result
    return values(result[0])[-1]


async def evaluate_dashboard(stack: Stack, end: float) -> dict[str, list[dict[str, Any]]]:
    """Every dashboard query over the scenario's window, as Grafana would send it."""
    dash = dashboard()
    variables = await resolve_variables(stack.prometheus, dash)
    assert set(variables["instance"]) == set(stack.prometheus.targets), variables
    span = end - stack.started
    scrape = stack.prometheus.interval_s
    interval = max(scrape, round(span / 1000))  # $__interval of a ~1000 px wide panel
    results: dict[str, list[dict[str, Any]]] = {}
    for target in targets(dash):
        expr = interpolate(target.expr, variables, interval_s=interval,
                           scrape_interval_s=scrape, range_s=span)
        assert "$" not in expr.replace("$1", ""), expr
        if target.instant:
            result = await stack.prometheus.query(expr, at=end)
        else:
            result = await stack.prometheus.query_range(expr, stack.started, end, interval)
        assert any(values(s) for s in result), f"{target.where} returned no data: {expr}"
        results[target.where] = result
    return results


async def check_values(stack: Stack, results: dict[str, list[dict[str, Any]]],
                       expected: dict[str, str]) -> dict[str, Any]:
    """The dashboard agrees with what the scenario did."""
    def panel(title: str, ref: str = "A") -> list[dict[str, Any]]:
        return results[f"panel {title!r} {ref}"]

    q = stack.prometheus.query
    job = '{job="dispatcher"}'
    events = [e for h in histories(await stack.kafka.read("commands.status", 3)).values()
              for e in h]
    published = Counter(e["status"] for e in events)
    counted = {s["metric"]["status"]: float(s["value"][1]) for s in await q(
        f"sum by (status) (dispatcher_command_status_total{job}) > 0")}
    assert counted == {k: float(v) for k, v in published.items()}, (counted, published)
    assert nonzero(panel("Status transitions /s"), "status") == set(published)
    assert nonzero(panel("Final statuses by command /s"), "status") == \
        set(published) - {"PENDING", "RECEIVED"}

    letters = Counter((d["topic"], d["reason"]) for d in
                      await stack.kafka.read("dead-letter", 2) if isinstance(d, dict))
    assert sorted(r for _, r in letters.elements()) == \
        ["invalid_json", "invalid_json", "unknown_command"]
    by_reason = {(s["metric"]["topic"], s["metric"]["reason"]): float(s["value"][1])
                 for s in await q(f"sum by (topic, reason) (dispatcher_dead_letters_total{job})"
                                  " > 0")}
    assert by_reason == {k: float(v) for k, v in letters.items()}
    assert nonzero(panel("Dead letters by reason"), "reason") == {"invalid_json",
                                                                  "unknown_command"}

    outcomes = {s["metric"]["outcome"]: float(s["value"][1]) for s in await q(
        f"sum by (outcome) (dispatcher_push_requests_total{job}) > 0")}
    answered = Counter("accepted" if r.status == 200 else "server_error" if r.status == 503
                       else str(r.status) for r in stack.pushy.requests)
    assert outcomes == {k: float(v) for k, v in answered.items()}, (outcomes, answered)
    assert {"accepted", "server_error"} <= nonzero(panel("Push requests /s by outcome"),
                                                   "outcome")

    readiness = panel("Readiness (1 = up)", "B")
    lowest = {(s["metric"]["instance"], s["metric"]["dependency"]): min(values(s))
              for s in readiness}
    assert any(v == 0 for (_, dep), v in lowest.items() if dep == "push_provider"), lowest
    assert all(v == 0 for (_, dep), v in lowest.items() if dep == "kafka"), lowest
    assert last(panel("Replicas up")) == 2
    backlog = max(values(panel("Status outbox")[0]))
    assert backlog == SILENT, backlog
    assert max(values(panel("Status outbox", "B")[0])) > 0
    assert last(panel("Open commands")) == 1
    assert last(panel("Oldest open command")) >= 3600
    assert sum(values(panel("Running versions")[0])) == 2

    finals = Counter(expected.values())
    done_ratio = finals["DONE"] / (sum(finals.values()) - finals["PENDING"])
    ratio = last(panel("Success ratio (1h)"))
    assert abs(ratio - done_ratio) <= 0.1 * done_ratio, (ratio, done_ratio)
    p50 = [v for s in panel("Completion latency (created -> DONE)") for v in values(s)]
    assert min(p50) > 0, p50
    assert max(p50) <= 5, p50
    pushed = panel("Created -> pushed (first push), by provider")
    assert {s["metric"]["provider"] for s in pushed} == {"pushy"}
    first_push_p50 = [v for s in pushed for v in values(s)]
    assert 0 < min(first_push_p50) <= max(first_push_p50) <= 10, first_push_p50
    by_command = {s["metric"]["command"]: values(s)[-1]
                  for s in panel("Success ratio by command (1h)") if values(s)}
    locks = Counter(v for k, v in expected.items() if k not in stack.campaign_commands)
    lock_ratio = locks["DONE"] / (sum(locks.values()) - locks["PENDING"])
    assert abs(by_command["LOCK"] - lock_ratio) <= 0.1 * lock_ratio, by_command
    assert by_command["REBOOT"] == 1.0, by_command  # the campaign's, all DONE
    shown = nonzero(panel("Alerts pending and firing"), "alertname")
    assert {"DispatcherDeadLetters", "DispatcherPushProviderFailing"} <= shown, shown
    assert {s["metric"]["reason"] for s in panel("Dead letters in the last hour")} == \
        {"invalid_json", "unknown_command"}
    failing = max(v for s in panel("Push failure ratio by provider") for v in values(s))
    assert failing > 0.1, failing
    assert min(v for s in panel("Push provider answering, by replica") for v in values(s)) == 0
    # LOCKs, and the campaign's REBOOTs
    assert nonzero(panel("Pushes /s by priority"), "priority") == {"high", "low"}
    states = nonzero(panel("Campaigns by state"), "state")
    assert "DONE" in states
    assert states <= {"RUNNING", "DONE"}, states  # running, then done; never halted
    done = [s for s in panel("Campaigns by state") if s["metric"]["state"] == "DONE"]
    assert values(done[0])[-1] == 1
    assert ("DONE", "DONE") in {(s["metric"]["state"], s["metric"]["status"])
                                for s in panel("Campaign commands by status")}
    waits = [v for s in panel("Due -> pushed wait, by priority", "B")
             if s["metric"].get("priority") == "high" for v in values(s) if v == v]
    assert waits
    assert max(waits) <= 10, waits
    assert not nonzero(panel("Superseded commands /s by type"), "command")
    return {"transitions": dict(published), "dead_letters": dict(letters),
            "push_outcomes": dict(answered), "outbox_backlog_max": backlog,
            "success_ratio": round(ratio, 4), "expected_ratio": round(done_ratio, 4),
            "first_push_p50_max_s": round(max(first_push_p50), 3),
            "push_failure_ratio_max": round(failing, 3)}


async def kill_replicas(stack: Stack) -> None:
    """SIGKILL one replica, then the other: each outage its alert."""
    for replica, alert in zip(stack.replicas[::-1],
                              ("DispatcherReplicaDown", "DispatcherNoReplicaUp"), strict=True):
        killed = time.time()
        await replica.kill()
        stack.mark(f"{replica.log_path.stem} killed")

        async def alerted(name: str = alert, since: float = killed) -> bool:
            return seen_in(stack, name) and stack.seen[name]["active_at"] >= since

        await until(alerted, 30, alert, stack)


@pytest.mark.timeout(420)
async def test_dashboard_and_alerts_on_a_real_prometheus(stack: Stack) -> None:
    good = [hex24() for _ in range(GOOD)]
    silent = [hex24() for _ in range(SILENT + 1)]
    await stack.kafka.send_many("devices", [device_event(d) for d in good]
                                + [device_event(d, token=None) for d in silent])
    stack.started = time.time()
    watcher = asyncio.create_task(watch(stack))
    try:
        expected = await traffic(stack, good, silent[-1])
        expected |= await provider_outage(stack, good)
        expected |= await broker_cut(stack, silent[:SILENT])
        await quiet_end(stack)
        await asyncio.sleep(2 * stack.prometheus.interval_s)  # the last step covers what was seen
        end = time.time()
        results = await evaluate_dashboard(stack, end)
        figures = await check_values(stack, results, expected)
        await kill_replicas(stack)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher

    assert set(stack.seen) >= ALERTS_LIVE, f"not seen: {ALERTS_LIVE - set(stack.seen)}"
    assert not ALERTS_PROMTOOL_ONLY & set(stack.seen)
    for name, entry in stack.seen.items():
        annotations = entry["alert"]["annotations"]
        assert annotations["summary"], name
        assert annotations["description"], name
        assert "{{" not in annotations["summary"] + annotations["description"], name
    assert "firing" in stack.seen["DispatcherDeadLetters"]["states"]
    labels = {name: entry["alert"]["labels"] for name, entry in stack.seen.items()}
    assert labels["DispatcherNotReady"]["dependency"] == "kafka"
    assert labels["DispatcherPushProviderFailing"]["dependency"] == "push_provider"
    assert labels["DispatcherDeadLetters"]["reason"] in {"invalid_json", "unknown_command"}
    assert labels["DispatcherReplicaDown"]["instance"] in stack.prometheus.targets
    assert labels["DispatcherReplicaDown"]["instance"] in \
        stack.seen["DispatcherReplicaDown"]["alert"]["annotations"]["summary"]
    assert {labels[a]["severity"] for a in ALERTS_LIVE} <= {"critical", "warning"}
    states = {name: entry["states"] for name, entry in sorted(stack.seen.items())}
    report(f"\n[prometheus live] {time.time() - stack.started:.0f}s, {len(results)} dashboard "
           f"queries answered; phases {stack.marks}; alerts (state: first seen, s) {states}; "
           f"{figures}")
