"""The benchmark's moving parts: servers, the service under test, load generators, measures."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from dispatcher.config import Settings
from dispatcher.kafka import ensure_topics
from dispatcher.secretbox import generate_keys
from dispatcher.store import migrate

ROOT = Path(__file__).resolve().parents[1]
ORG, ENT = "5f1e2d3c4b5a69788796a5b4", "5f1e2d3c4b5a69788796a5b5"
PUSHY_KEY = "bench-key"


@dataclass
class Result:
    """One measured figure and its target (``kind``: the value must be at least / at most it)."""

    name: str
    value: float
    unit: str
    target: float | None = None
    kind: str = "min"
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if not self.target:
            return None
        return self.value / self.target

    @property
    def ok(self) -> bool | None:
        if self.target is None:
            return None
        return self.value >= self.target if self.kind == "min" else self.value <= self.target

    def row(self, width: int) -> str:
        target = f"{'>=' if self.kind == 'min' else '<='}{self.target:,.4g}" if self.target else ""
        ratio = f"{self.ratio:.2f}" if self.ratio is not None else ""
        ok = {True: "yes", False: "NO", None: ""}[self.ok]
        line = (f"{self.name:<{width}}  {self.value:>12,.4g}  {self.unit:<10}  {target:>10}"
                f"  {ratio:>5}  {ok}")
        return line + (f"   {self.note}" if self.note else "")

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "unit": self.unit,
                "target": self.target, "kind": self.kind, "ratio": self.ratio,
                "ok": self.ok, "note": self.note}


def cpu_seconds(dispatcher: int, fake: int, *, whole_box: bool = False) -> dict[str, float]:
    """CPU seconds used so far by the dispatcher, PostgreSQL (every server process) and the
    fake provider; with ``whole_box`` also by the embedded broker and this process (the
    load generator)."""
    def used(proc: psutil.Process) -> float:
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            return float(t.user + t.system)
        return 0.0

    procs = list(psutil.process_iter(["name"]))
    out = {"dispatcher": used(psutil.Process(dispatcher)),
           "PostgreSQL": sum(used(p) for p in procs if p.info["name"] == "postgres"),
           "fake provider": used(psutil.Process(fake))}
    if whole_box:
        out["broker"] = sum(used(p) for p in procs if _is_broker(p))
        out["load generator"] = used(psutil.Process())
    return out


def _is_broker(proc: psutil.Process) -> bool:
    """The embedded broker's process (its binary is named tansu-<version>)."""
    return bool((proc.info["name"] or "").startswith("tansu"))


def broker_rss_mb() -> float:
    """Resident memory of the embedded broker (0 when the broker is not embedded)."""
    rss: int = sum(p.info["memory_info"].rss for p in psutil.process_iter(["name", "memory_info"])
                   if _is_broker(p) and p.info["memory_info"] is not None)
    return rss / 2**20


def cpu_per_push(name: str, samples: list[tuple[int, dict[str, float]]],
                 n: int) -> list[Result]:
    """CPU per push of each process over the steady part of a push run (from 30% to 90% of
    the pushes: ingest is over, the queue is not yet empty), and how many such processes
    10,000 pushes/s would take at that cost (one core each)."""
    window = [s for s in samples if 0.3 * n <= s[0] <= 0.9 * n]
    if len(window) < 2 or window[-1][0] == window[0][0]:
        return []
    (a, first), (b, last) = window[0], window[-1]
    out = []
    for part in first:
        us = (last[part] - first[part]) / (b - a) * 1e6
        note = (f"{10_000 * us / 1e6:.1f} cores for 10,000/s" if part != "fake provider"
                else "the load generator's share of the 2 cores")
        out.append(Result(f"{name}: {part} CPU per push", us, "us", note=note))
    return out


STORED_P99 = re.compile(r"^latency p99 @ 1000/s, ([0-9,]+) stored$")


GROWTH_TRIALS = 3
"""Latency runs per growth point (the median of each percentile is reported)."""


def latency_growth(results: list[Result]) -> list[Result]:
    """Each stored point's p99 against the 0-stored one: history must not slow a push
    (target: within 2x; a mass expiry once made it 30 s)."""
    points = {int(m.group(1).replace(",", "")): r.value
              for r in results if (m := STORED_P99.match(r.name))}
    base = points.get(0)
    if not base:
        return []
    return [Result(f"p99 with {stored:,} stored / with 0", value / base, "ratio", 2.0, "max")
            for stored, value in sorted(points.items()) if stored]


def hexid(i: int, salt: str) -> str:
    return f"{(hash((salt, i)) & ((1 << 96) - 1)):024x}"


def now_iso(dt: datetime | None = None) -> str:
    return (dt or datetime.now(UTC)).isoformat().replace("+00:00", "Z")


def command(i: int, device: str, salt: str, duration: int = 3600,
            kind: str = "CLEAR_APP_DATA") -> dict[str, Any]:
    """A command event; by default of a type that a newer command of its device does not
    supersede (the phases send several per device and follow every one)."""
    params = ({"packageNames": ["com.example.bench"]} if kind == "CLEAR_APP_DATA"
              else {"message": "bench"})
    return {"id": hexid(i, salt), "organization": ORG, "aosEnterprise": ENT, "aosDevice": device,
            "mdmUser": None, "command": kind, "params": params,
            "duration": duration, "createdAt": now_iso()}


def device_event(device: str) -> dict[str, Any]:
    return {"aosDevice": device, "organization": ORG, "aosEnterprise": ENT, "mdmUser": None,
            "pushToken": f"tok-{device}", "state": "ACTIVE", "updatedAt": now_iso()}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Service:
    """`dispatcher run` as a subprocess."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path
    samples: list[float] = field(default_factory=list)


async def consume_rate(consumer: AIOKafkaConsumer, n: int) -> float:
    """Start ``consumer``, read ``n`` records (committing each batch) and stop it; the
    records a second from the first one read."""
    await consumer.start()
    try:
        seen, first = 0, 0.0
        while seen < n:
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            for records in batch.values():
                if not first and records:
                    first = time.perf_counter()
                seen += len(records)
            if batch:
                await consumer.commit()
        return n / (time.perf_counter() - first)
    finally:
        await consumer.stop()


class Harness:
    """Servers for the whole run, and one measured phase per method."""

    def __init__(self, bootstrap: str, admin_dsn: str, scale: float) -> None:
        self.bootstrap = bootstrap
        self.admin_dsn = admin_dsn
        self.scale = scale
        self.peak_rss_mb = 0.0
        self._producer: AIOKafkaProducer | None = None

    @classmethod
    @contextlib.asynccontextmanager
    async def start(cls, scale: float) -> AsyncIterator[Harness]:
        from dispatcher_dev.devstack import EmbeddedKafka, EmbeddedPostgres

        with contextlib.ExitStack() as stack:
            bootstrap = os.environ.get("DISPATCHER_KAFKA_BOOTSTRAP", "")
            if not bootstrap:
                bootstrap = stack.enter_context(EmbeddedKafka()).start()
            dsn = os.environ.get("DISPATCHER_DATABASE_URL", "")
            if not dsn:
                data = Path(tempfile.mkdtemp(prefix="dispatcher-bench-")) / "pg"
                dsn = stack.enter_context(EmbeddedPostgres(data)).start()
            h = cls(bootstrap, dsn, scale)
            h._producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                           enable_idempotence=False, linger_ms=5,
                                           max_batch_size=65536)
            await h._producer.start()
            try:
                yield h
            finally:
                await h._producer.stop()

    # ----------------------------------------------------------------- plumbing

    async def fresh(self, label: str, partitions: int = 4) -> tuple[str, str]:
        """A fresh migrated database and topic prefix (topics of ``partitions``)."""
        print(f"[{time.strftime('%H:%M:%S')}] phase: {label}", flush=True)
        name = f"bench_{label}_{secrets.token_hex(3)}"
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        dsn = self.admin_dsn.rpartition("/")[0] + "/" + name
        await migrate(dsn)
        prefix = f"b{secrets.token_hex(3)}."
        await ensure_topics(Settings(kafka_bootstrap=self.bootstrap, topic_prefix=prefix,
                                     topic_partitions=partitions))
        return dsn, prefix

    async def produce(self, topic: str, events: list[dict[str, Any]], key: str) -> float:
        """Produce events as fast as the client goes; return seconds taken."""
        assert self._producer is not None
        started = time.perf_counter()
        futures = []
        for e in events:
            futures.append(await self._producer.send(topic, json.dumps(e).encode(),
                                                     key=e[key].encode()))
            if len(futures) >= 20000:
                await asyncio.gather(*futures)
                futures.clear()
        await asyncio.gather(*futures)
        return time.perf_counter() - started

    def spawn(self, dsn: str, prefix: str, **env: str) -> Service:
        from dispatcher_dev.devstack import free_port

        port = free_port()
        log = Path(tempfile.mkstemp(prefix="dispatcher-bench-", suffix=".log")[1])
        full = {**os.environ, "DISPATCHER_KAFKA_BOOTSTRAP": self.bootstrap,
                "DISPATCHER_DATABASE_URL": dsn, "DISPATCHER_TOPIC_PREFIX": prefix,
                "DISPATCHER_HTTP_PORT": str(port), "DISPATCHER_PUSH_PROVIDER": "log",
                "DISPATCHER_LOG_LEVEL": "WARNING", "DISPATCHER_REPUSH_AFTER_S": "0",
                "DISPATCHER_KAFKA_SESSION_TIMEOUT_MS": "6000",
                "DISPATCHER_KAFKA_REBALANCE_TIMEOUT_MS": "6000",
                "DISPATCHER_KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
                "DISPATCHER_CONSUMER_GROUP": f"dispatcher-{prefix}",
                "DISPATCHER_SECRET_KEYS": os.environ.get("DISPATCHER_SECRET_KEYS")
                or generate_keys("bench1"), **env}
        proc = subprocess.Popen([str(Path(sys.executable).parent / "dispatcher"), "run"],
                                env=full, stdout=log.open("wb"), stderr=subprocess.STDOUT)
        return Service(proc, f"http://127.0.0.1:{port}", log)

    async def ready(self, svc: Service, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if svc.proc.poll() is not None:
                    raise RuntimeError(f"dispatcher exited: {svc.log.read_text()[-2000:]}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(svc.url + "/readyz") as r:
                        if r.status == 200:
                            return
                await asyncio.sleep(0.2)
        raise TimeoutError("dispatcher not ready")

    def sample_rss(self, svc: Service) -> None:
        with contextlib.suppress(psutil.Error):
            rss = psutil.Process(svc.proc.pid).memory_info().rss / 1e6
            self.peak_rss_mb = max(self.peak_rss_mb, rss)

    async def stop(self, svc: Service) -> None:
        self.sample_rss(svc)
        svc.proc.send_signal(signal.SIGTERM)
        for _ in range(300):
            if svc.proc.poll() is not None:
                return
            await asyncio.sleep(0.1)
        svc.proc.kill()

    async def wait_sql(self, dsn: str, sql: str, want: int, svc: Service,
                       timeout: float = 600, every: float = 0.1) -> float:
        """Poll until ``sql`` returns at least ``want``; return the monotonic time it did."""
        conn = await asyncpg.connect(dsn)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                self.sample_rss(svc)
                if (await conn.fetchval(sql)) >= want:
                    return time.monotonic()
                if svc.proc.poll() is not None:
                    raise RuntimeError(f"dispatcher exited: {svc.log.read_text()[-2000:]}")
                await asyncio.sleep(every)
            raise TimeoutError(f"{sql} did not reach {want}")
        finally:
            await conn.close()

    async def start_fake(self, latency_s: float,
                         provider: str = "pushy") -> tuple[str, subprocess.Popen[bytes]]:
        """The fake provider (Pushy, or FCM with its token endpoint) in its own process;
        return its URL (:meth:`provider_env` says how the dispatcher reaches it)."""
        from dispatcher_dev.devstack import free_port

        port = free_port()
        args = [PUSHY_KEY] if provider == "pushy" else [self.fcm_credentials(), "fcm"]
        proc = subprocess.Popen([sys.executable, "-m", "bench.fakeproc", str(port),
                                 str(latency_s), *args], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        line = await asyncio.to_thread(proc.stdout.readline)
        if b"ready" not in line:
            raise RuntimeError(f"fake {provider} did not start: {line!r}")
        return f"http://127.0.0.1:{port}", proc

    def fcm_credentials(self) -> str:
        """Where the fake FCM writes its service account (one path for the whole run)."""
        path = Path(tempfile.gettempdir()) / f"dispatcher-bench-fcm-{os.getpid()}.json"
        return str(path)

    def provider_env(self, provider: str, url: str) -> dict[str, str]:
        """The settings that send every push to the fake ``provider`` at ``url``."""
        if provider == "fcm":
            return {"DISPATCHER_PUSH_PROVIDER": "fcm", "DISPATCHER_FCM_API_URL": url,
                    "DISPATCHER_FCM_CREDENTIALS_FILE": self.fcm_credentials()}
        return {"DISPATCHER_PUSH_PROVIDER": "pushy", "DISPATCHER_PUSHY_API_URL": url,
                "DISPATCHER_PUSHY_API_KEY": PUSHY_KEY}

    async def fake_get(self, url: str, what: str) -> Any:
        async with aiohttp.ClientSession() as http, http.get(f"{url}/_{what}") as r:
            return await r.json()

    # ------------------------------------------------------------------ phases

    async def ingest_and_limits(self, n: int, devices: int) -> list[Result]:
        dsn, prefix = await self.fresh("ingest")
        self._ingest = (dsn, prefix)
        devs = [hexid(d, "dev") for d in range(devices)]
        events = [command(i, devs[i % devices], prefix) for i in range(n)]
        await self.produce(prefix + "commands.created", events, "aosDevice")
        consume = await self.raw_consume(prefix + "commands.created", n)
        copy = await self.raw_copy(dsn, events)
        svc = self.spawn(dsn, prefix)
        self._svc = svc
        await self.ready(svc)
        await self.wait_sql(dsn, "SELECT count(*) FROM commands", n, svc)
        rate = await self.rate_from_rows(dsn, "true")
        limit = min(consume, copy)
        return [
            Result("raw consume (aiokafka only)", consume, "msg/s", note="limit"),
            Result("raw COPY into PostgreSQL", copy, "rows/s", note="limit"),
            Result("ingest", rate, "cmd/s", 10_000, "min"),
            Result("ingest / lower limit", rate / limit, "ratio", 0.5, "min"),
        ]

    async def rate_from_rows(self, dsn: str, where: str, *args: Any) -> float:
        conn = await asyncpg.connect(dsn)
        try:
            row = await conn.fetchrow(
                f"SELECT count(*) AS n, extract(epoch FROM max(updated_at) - min(updated_at))"
                f" AS s FROM commands WHERE {where}", *args)
        finally:
            await conn.close()
        return float(row["n"]) / max(float(row["s"] or 0), 1e-3)

    async def raw_consume(self, topic: str, n: int) -> float:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=self.bootstrap,
                                    group_id=f"raw-{secrets.token_hex(3)}",
                                    enable_auto_commit=False, auto_offset_reset="earliest",
                                    session_timeout_ms=6000, heartbeat_interval_ms=1000,
                                    rebalance_timeout_ms=6000)
        return await consume_rate(consumer, n)

    async def raw_copy(self, dsn: str, events: list[dict[str, Any]]) -> float:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("CREATE TABLE bench_copy (LIKE commands INCLUDING ALL)")
            now = datetime.now(UTC)
            rows = [(e["id"], e["organization"], e["aosEnterprise"], e["aosDevice"], None,
                     e["command"], json.dumps(e["params"]), "PENDING", 3600,
                     now + timedelta(hours=1), now, now) for e in events]
            cols = ["id", "organization", "aos_enterprise", "aos_device", "mdm_user", "command",
                    "params", "status", "duration_s", "expires_at", "created_at", "updated_at"]
            started = time.perf_counter()
            for i in range(0, len(rows), 5000):
                await conn.copy_records_to_table("bench_copy", records=rows[i:i + 5000],
                                                 columns=cols)
            took = time.perf_counter() - started
            await conn.execute("DROP TABLE bench_copy")
            return len(rows) / took
        finally:
            await conn.close()

    async def acks(self, n: int) -> list[Result]:
        dsn, prefix = self._ingest
        svc = self._svc
        conn = await asyncpg.connect(dsn)
        ids = [(r["id"], r["aos_device"]) for r in
               await conn.fetch("SELECT id, aos_device FROM commands LIMIT $1", n)]
        await conn.close()
        acks: list[dict[str, Any]] = []
        for i, (cid, dev) in enumerate(ids):
            def ack(status: str, cid: str = cid, dev: str = dev) -> dict[str, Any]:
                return {"commandId": cid, "aosDevice": dev, "status": status, "at": now_iso()}
            kind = i % 10
            if kind <= 5:
                acks += [ack("RECEIVED"), ack("DONE")]
            elif kind <= 7:
                acks += [ack("DONE")]
            elif kind == 8:
                acks += [ack("RECEIVED"), {**ack("ERROR"), "errorType": "UNSUPPORTED"}]
            else:
                acks += [ack("DONE"), ack("RECEIVED")]
            if i % 20 == 0:
                acks.append(acks[-1])
        started = time.monotonic()
        await self.produce(prefix + "device-acks", acks, "aosDevice")
        done = await self.wait_sql(
            dsn, "SELECT count(*) FROM commands WHERE status IN ('DONE', 'ERROR')", len(ids), svc,
            every=0.05)
        rate = len(acks) / (done - started)
        await self.stop(svc)
        return [Result("acks applied", rate, "acks/s", 10_000, "min",
                       note=f"{len(acks):,} acks, duplicates and out-of-order included")]

    async def push_throughput(self, n: int, latency_s: float, concurrency: int = 64,
                              provider: str = "pushy") -> list[Result]:
        """Pushes/s against a provider answering after ``latency_s``; with 0, the ceiling of
        the whole path (claim, request, answer) on this machine, the fake included."""
        dsn, prefix = await self.fresh("push")
        url, fake = await self.start_fake(latency_s, provider)
        devs = [hexid(d, "pdev") for d in range(n)]
        await self.produce(prefix + "devices", [device_event(d) for d in devs], "aosDevice")
        await self.produce(prefix + "commands.created",
                           [command(i, devs[i], prefix) for i in range(n)], "aosDevice")
        svc = self.spawn(dsn, prefix, **self.provider_env(provider, url),
                         DISPATCHER_PUSH_CONCURRENCY=str(concurrency))
        try:
            await self.ready(svc)
            deadline = time.monotonic() + 600
            samples: list[tuple[int, dict[str, float]]] = []
            while time.monotonic() < deadline:
                self.sample_rss(svc)
                accepted = (await self.fake_get(url, "stats"))["accepted"]
                samples.append((accepted, cpu_seconds(svc.proc.pid, fake.pid)))
                if accepted >= n:
                    break
                await asyncio.sleep(0.5)
            times = sorted((await self.fake_get(url, "arrivals")).values())
            stats = await self.fake_get(url, "stats")
            # steady state: skip the first and last 5% (ramp-up while ingest still runs)
            lo, hi = times[len(times) // 20], times[-len(times) // 20 - 1]
            rate = (len(times) * 0.9) / max(hi - lo, 1e-3)
            fcm = provider == "fcm"
            if not latency_s:
                name = "push ceiling (0 ms FCM)" if fcm else "push ceiling (0 ms provider)"
                return [Result(name, rate, "push/s", note=f"concurrency {concurrency}; the "
                               f"fake provider shares the cores"),
                        *cpu_per_push(name, samples, n)]
            bound = concurrency / latency_s
            return [Result("push throughput (FCM)" if fcm else "push throughput", rate, "push/s",
                           0.9 * bound, "min",
                           note=f"bound concurrency/latency = {bound:,.0f}/s, "
                                f"max in flight seen {stats['max_inflight']}")]
        finally:
            await self.stop(svc)
            fake.terminate()
            fake.wait()

    async def latency(self, rate: int, seconds: int, label: str,
                      dsn_prefix: tuple[str, str] | None = None) -> list[Result]:
        dsn, prefix = dsn_prefix or await self.fresh("latency")
        await ensure_topics(Settings(kafka_bootstrap=self.bootstrap, topic_prefix=prefix))
        sent: dict[str, float] = {}
        url, fake = await self.start_fake(0.0)
        devs = [hexid(d, "ldev" + prefix) for d in range(max(rate * 2, 2000))]
        await self.produce(prefix + "devices", [device_event(d) for d in devs], "aosDevice")
        svc = self.spawn(dsn, prefix, DISPATCHER_PUSH_PROVIDER="pushy",
                         DISPATCHER_PUSHY_API_URL=url, DISPATCHER_PUSHY_API_KEY=PUSHY_KEY,
                         DISPATCHER_PUSH_CONCURRENCY="256")
        try:
            await self.ready(svc)
            await self._warm_up(prefix, devs[0], url)
            # One second at the rate, not counted: the figure is the steady state, not a
            # new process's first connections and cold caches.
            warm: dict[str, float] = {}
            await self._steady(prefix, devs, rate, 1, warm, tag="warm")
            await self._arrived(url, set(warm), svc)
            await self._steady(prefix, devs, rate, seconds, sent)
            arrived = await self._arrived(url, set(sent), svc)
            lat = [(arrived[c] - sent[c]) * 1000 for c in sent if c in arrived]
            lost = len(sent) - len(lat)
            note = f"{len(sent):,} commands at {rate}/s" + (f", {lost} not pushed" if lost else "")
            return [
                Result(f"latency p50 @ {label}", percentile(lat, 0.50), "ms", note=note),
                Result(f"latency p95 @ {label}", percentile(lat, 0.95), "ms"),
                Result(f"latency p99 @ {label}", percentile(lat, 0.99), "ms",
                       100 if label == "1000/s" else None, "max"),
            ]
        finally:
            await self.stop(svc)
            fake.terminate()
            fake.wait()

    async def _arrived(self, url: str, ids: set[str], svc: Service) -> dict[str, float]:
        """The fake's arrival times once ``ids`` have all arrived (or after 60 s)."""
        deadline = time.monotonic() + 60
        arrived: dict[str, float] = {}
        while time.monotonic() < deadline:
            self.sample_rss(svc)
            arrived = await self.fake_get(url, "arrivals")
            if ids <= set(arrived):
                break
            await asyncio.sleep(0.5)
        return arrived

    async def _warm_up(self, prefix: str, device: str, url: str) -> None:
        probe = command(0, device, "warm" + prefix)
        assert self._producer is not None
        await self._producer.send_and_wait(prefix + "commands.created",
                                           json.dumps(probe).encode(), key=device.encode())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if probe["id"] in await self.fake_get(url, "arrivals"):
                return
            await asyncio.sleep(0.05)

    async def _steady(self, prefix: str, devs: list[str], rate: int, seconds: int,
                      sent: dict[str, float], tag: str = "lat") -> None:
        assert self._producer is not None
        topic = prefix + "commands.created"
        start = time.monotonic()
        total = rate * seconds
        for i in range(total):
            due = start + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            event = command(i, devs[i % len(devs)], tag + prefix)
            sent[event["id"]] = time.time()
            await self._producer.send(topic, json.dumps(event).encode(),
                                      key=event["aosDevice"].encode())
        await self._producer.flush()

    async def expiry_and_growth(self, overdue: int, big: int, n: int) -> list[Result]:
        results = await self.growth_point(0, n, None)
        dsn, _ = await self.fresh("expiry")
        await self.bulk(dsn, overdue, "PENDING", past=True)
        took, expired = await self.run_expiry(dsn)
        results.append(Result("expiry", expired / took, "rows/s", 50_000, "min",
                              note=f"{expired:,} overdue commands"))
        results.append(await self.relay_rate(dsn, expired))
        await self.settle(dsn)
        results += await self.growth_point(overdue, n, dsn)
        await self.bulk(dsn, big, "DONE", past=True)
        idle_ms = await self.idle_tick_ms(dsn)
        results.append(Result("timer pass, nothing due", idle_ms, "ms", 1000 *
                              Settings().expiry_interval_s, "max",
                              note=f"{overdue + big:,} finished commands stored"))
        results += await self.growth_point(overdue + big, n, dsn)
        base = next(r.value for r in results if r.name == "ingest with 0 stored")
        top = next(r.value for r in results if r.name == f"ingest with {overdue + big:,} stored")
        results.append(Result("ingest slowdown 0 -> max stored", 1 - top / base, "fraction",
                              0.2, "max"))
        return results + latency_growth(results)

    async def growth_point(self, stored: int, n: int, dsn: str | None) -> list[Result]:
        fresh_dsn, prefix = await self.fresh("growth")
        dsn = dsn or fresh_dsn
        devs = [hexid(d, "gdev" + prefix) for d in range(max(n // 5, 1))]
        # Counted through the open-commands index: a count over the whole table would
        # itself be the load at 10 M stored rows.
        open_sql = ("SELECT count(*) FROM commands"
                    " WHERE status IN ('PENDING', 'RECEIVED') AND expires_at > now()")
        conn = await asyncpg.connect(dsn)
        try:
            before = await conn.fetchval(open_sql)
        finally:
            await conn.close()
        await self.produce(prefix + "commands.created",
                           [command(i, devs[i % len(devs)], prefix) for i in range(n)],
                           "aosDevice")
        svc = self.spawn(dsn, prefix)
        try:
            await self.ready(svc)
            await self.wait_sql(dsn, open_sql, before + n, svc)
            # and parked (these devices have no token), so that the latency run after
            # this one measures its own commands, not a claim pass over these
            await self.wait_sql(dsn, "SELECT 1 - least(count(*), 1) FROM commands WHERE"
                                " status = 'PENDING' AND next_push_at <= now()", 1, svc)
            await self.wait_sql(dsn, "SELECT 1 - least(count(*), 1) FROM status_outbox", 1, svc)
        finally:
            await self.stop(svc)
        rate = await self.rate_from_rows(dsn, "aos_device = ANY($1::text[])", devs)
        lat = await self.latency_trials(stored, dsn, prefix)
        return [Result(f"ingest with {stored:,} stored", rate, "cmd/s"), *lat]

    async def latency_trials(self, stored: int, dsn: str, prefix: str,
                             trials: int = GROWTH_TRIALS) -> list[Result]:
        """Latency at 1000/s on this state, ``trials`` times; each percentile is the median
        of the trials. One run's p99 is its 50th-worst of 5,000 pushes: on this shared
        2-core box one checkpoint or autovacuum pass moves it by 2x either way, which
        says nothing about the stored rows the point is about."""
        runs = [await self.latency(1000, 5, f"1000/s, {stored:,} stored",
                                   (dsn, f"{prefix}l{t}."))
                for t in range(trials)]
        merged = []
        for i, first in enumerate(runs[0]):
            values = [run[i].value for run in runs]
            note = first.note if i else f"{first.note}; {trials} trials, median"
            if first.name.startswith("latency p99"):
                note = "p99 of each trial: " + ", ".join(f"{v:.0f}" for v in values) + " ms"
            merged.append(dataclasses.replace(first, value=statistics.median(values),
                                              note=note))
        return merged

    async def relay_rate(self, dsn: str, events: int) -> Result:
        """A dispatcher publishes the status events the expiry wrote; events/s."""
        _, prefix = await self.fresh("relay")
        svc = self.spawn(dsn, prefix)
        try:
            await self.ready(svc)
            started = time.monotonic()
            done = await self.wait_sql(
                dsn, "SELECT 1 - least(count(*), 1) FROM status_outbox", 1, svc, every=0.2)
        finally:
            await self.stop(svc)
        return Result("status events relayed", events / (done - started), "events/s",
                      note=f"{events:,} EXPIRED events from the outbox to the topic")

    async def settle(self, dsn: str) -> None:
        """Vacuumed and checkpointed, as a table in service is: the next phase measures
        the stored rows, not the clean-up after the last one."""
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("VACUUM ANALYZE commands")
            await conn.execute("VACUUM ANALYZE status_outbox")
            await conn.execute("CHECKPOINT")
        finally:
            await conn.close()

    async def bulk(self, dsn: str, n: int, status: str, past: bool) -> None:
        """Insert n commands server-side (fast): finished or overdue."""
        conn = await asyncpg.connect(dsn)
        try:
            # history, not arrivals: no status events for these rows (migration 010's
            # trigger would write one per row into status_outbox); the bench's superuser
            # may switch triggers off for its own session
            await conn.execute("SET session_replication_role = replica")
            await conn.execute(
                """INSERT INTO commands (id, organization, aos_enterprise, aos_device, command,
                       params, status, duration_s, expires_at, created_at, updated_at,
                       finished_at, next_push_at)
                   SELECT substr(md5(g::text || $3), 1, 24), $4, $5,
                          substr(md5((g % 200000)::text || 'dev'), 1, 24), 'LOCK',
                          '{}'::jsonb, $2, 600, now() - interval '1 day',
                          now() - interval '2 days', now() - interval '2 days',
                          CASE WHEN $2 = 'PENDING' THEN NULL ELSE now() - interval '1 day' END,
                          NULL
                   FROM generate_series(1, $1) g""",
                n, status, secrets.token_hex(4), ORG, ENT)
        finally:
            await conn.close()
        # A table that grew over months has been vacuumed all along: measure that
        # steady state, not the one-off vacuum that follows a bulk load.
        await self.settle(dsn)

    async def run_expiry(self, dsn: str) -> tuple[float, int]:
        from dispatcher.expiry import Timer
        from dispatcher.metrics import Metrics
        from dispatcher.store import Store

        store = await Store.connect(dsn)
        try:
            timer = Timer(Settings(), store, Metrics(), None, lambda fx: None)  # type: ignore[arg-type]
            started = time.perf_counter()
            expired = await timer.expire()
            return time.perf_counter() - started, expired
        finally:
            await store.close()

    async def idle_tick_ms(self, dsn: str) -> float:
        from dispatcher.expiry import Timer
        from dispatcher.metrics import Metrics
        from dispatcher.store import Store

        store = await Store.connect(dsn)
        try:
            timer = Timer(Settings(), store, Metrics(), None, lambda fx: None)  # type: ignore[arg-type]
            times = []
            for _ in range(5):
                started = time.perf_counter()
                await timer.expire()
                await timer.gauges()
                await store.wake_parked()
                times.append((time.perf_counter() - started) * 1000)
            return statistics.median(times)
        finally:
            await store.close()
