"""`make bench` row of storage over a long life (issue 17, docs/storage.md).

``BENCH_GROWTH`` commands (default 1,200,000 x BENCH_SCALE; the long run: 20,000,000) at
``BENCH_GROWTH_RATE`` per second (default 2,000: what this 2-core box sustains with every
part on it, see docs/storage.md) through their whole life, against
`dispatcher run` and the fake Pushy in its own process: created; 7 in 10 acked DONE at once
(the device answered before or right after its push), 2 in 10 acked DONE two seconds later
(after their push), 1 in 10 never answered (EXPIRED when its 30 s run out); each removed
once finished and past its validity for ``DISPATCHER_RETENTION_S`` = 60 s. 100,000
devices. Every 10 s: the commands table's size (table, indexes, TOAST), its live and dead
rows, the outbox's rows, the commands stored so far and the p99 created -> pushed of the
pushes of those 10 s, each process's CPU, the acks held because they came before their
command and the broker's memory. Reported, over the samples after the first 300 s (the
table's fill to its steady size; half of a shorter run): the rate kept, the p99s, the
table's largest size in the last quarter against the first (goal: within 10%), and each
process's CPU per command in the first and the last quarter.

The input topics have ``BENCH_PARTITIONS`` partitions (default 1: one replica consumes
them all the same). The embedded broker (Tansu 0.6.0, memory storage) keeps every record
batch it is sent as one object and lists all of a partition's objects on every fetch, so
its cost per fetch grows with what it has stored, per partition fetched: with 4
partitions its CPU per command doubles within 600 s and the p99 follows it; see
docs/storage.md. Real Kafka finds an offset through its segment index.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import statistics
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg

from bench.harness import (
    Harness,
    Result,
    Service,
    broker_rss_mb,
    command,
    cpu_seconds,
    device_event,
    hexid,
    now_iso,
)

DEVICES = 100_000
DURATION_S = 30
RETENTION_S = 60
ACK_LATER_S = 2.0
SAMPLE_S = 10.0
WARM_S = 300.0
TICK_S = 0.1

HELD = re.compile(r'^dispatcher_held_events_total\{kind="ack",outcome="held"\} (\S+)$', re.M)

SAMPLE = """
SELECT pg_total_relation_size('commands') AS size,
       (SELECT n_live_tup FROM pg_stat_user_tables WHERE relname = 'commands') AS live,
       (SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'commands') AS dead,
       (SELECT count(*) FROM status_outbox) AS outbox,
       (SELECT last_value FROM commands_seq_seq) AS stored,
       (SELECT percentile_cont(0.99) WITHIN GROUP (
            ORDER BY extract(epoch FROM sent_at - created_at))
          FROM commands WHERE sent_at > now() - make_interval(secs => $1)) AS p99_s
"""


@dataclass
class Sample:
    at_s: float
    produced: int
    stored: int
    size_mb: float
    live: int
    dead: int
    outbox: int
    p99_ms: float | None
    cpu: dict[str, float]
    """CPU seconds used so far by each process on the box (harness.cpu_seconds)."""
    held: float
    """Acks held so far because they came before their command."""
    broker_mb: float


@dataclass(frozen=True)
class Probe:
    """Where the samples are read: the fake's URL, the service and the fake's process."""

    url: str
    svc: Service
    fake_pid: int


@dataclass
class Life:
    """What the run saw: one sample every SAMPLE_S."""

    total: int
    rate: int
    samples: list[Sample] = field(default_factory=list)
    produced: int = 0


async def run(h: Harness, total: int, rate: int) -> list[Result]:
    """Drive ``total`` commands at ``rate``/s through their life; see the module docstring."""
    dsn, prefix = await h.fresh("lifecycle", partitions_from_env())
    url, fake = await h.start_fake(0.0)
    devs = [hexid(d, "life" + prefix) for d in range(DEVICES)]
    await h.produce(prefix + "devices", [device_event(d) for d in devs], "aosDevice")
    svc = h.spawn(dsn, prefix, **h.provider_env("pushy", url),
                  DISPATCHER_RETENTION_S=str(RETENTION_S))
    life = Life(total, rate)
    conn = await asyncpg.connect(dsn)
    try:
        await h.ready(svc)
        await h.wait_sql(dsn, "SELECT count(*) FROM devices", DEVICES, svc)
        started = time.monotonic()
        probe = Probe(url, svc, fake.pid)
        sampler = asyncio.create_task(_sample(h, conn, probe, life, started))
        try:
            await _drive(h, prefix, devs, life)
        finally:
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
        elapsed = time.monotonic() - started
        await _record(conn, life, elapsed, probe)
    finally:
        await conn.close()
        await h.stop(svc)
        fake.terminate()
        fake.wait()
    _print(life)
    return _results(life, elapsed)


async def _drive(h: Harness, prefix: str, devs: list[str], life: Life) -> None:
    """Commands at the rate, paced by deadline; their acks at once or ACK_LATER_S after."""
    assert h._producer is not None
    producer = h._producer
    later: deque[tuple[float, dict[str, Any]]] = deque()
    started = time.monotonic()
    while life.produced < life.total:
        now = time.monotonic()
        upto = min(int((now - started) * life.rate) + int(life.rate * TICK_S), life.total)
        for i in range(life.produced, upto):
            dev = devs[i % len(devs)]
            cmd = command(i, dev, prefix, duration=DURATION_S)
            await producer.send(prefix + "commands.created", json.dumps(cmd).encode(),
                                key=dev.encode())
            kind = i % 10
            if kind < 7:
                await producer.send(prefix + "device-acks", _ack(cmd), key=dev.encode())
            elif kind < 9:
                later.append((now + ACK_LATER_S, cmd))
        life.produced = max(life.produced, upto)
        while later and later[0][0] <= now:
            cmd = later.popleft()[1]
            await producer.send(prefix + "device-acks", _ack(cmd),
                                key=cmd["aosDevice"].encode())
        await asyncio.sleep(TICK_S)  # pacing
    for _, cmd in later:
        await producer.send(prefix + "device-acks", _ack(cmd), key=cmd["aosDevice"].encode())
    await producer.flush()


def _ack(cmd: dict[str, Any]) -> bytes:
    return json.dumps({"commandId": cmd["id"], "aosDevice": cmd["aosDevice"],
                       "status": "DONE", "at": now_iso()}).encode()


async def _sample(h: Harness, conn: asyncpg.Connection, probe: Probe, life: Life,
                  started: float) -> None:
    while True:
        await asyncio.sleep(SAMPLE_S)
        h.sample_rss(probe.svc)
        await _record(conn, life, time.monotonic() - started, probe)
        s, before = life.samples[-1], life.samples[-2] if len(life.samples) > 1 else None
        busy = "" if before is None else " busy " + " ".join(
            f"{part.split()[0]} {(s.cpu[part] - before.cpu[part]) / (s.at_s - before.at_s):.0%}"
            for part in s.cpu)
        print(f"  {s.at_s:7.0f}s produced {s.produced:>11,} stored {s.stored:>11,} "
              f"size {s.size_mb:7.1f} MB live {s.live:>9,} dead {s.dead:>9,} "
              f"outbox {s.outbox:>7,} p99 {s.p99_ms or 0:7.1f} ms held {s.held:>9,.0f} "
              f"broker {s.broker_mb:6,.0f} MB{busy}", flush=True)


async def _record(conn: asyncpg.Connection, life: Life, at_s: float, probe: Probe) -> None:
    row = await conn.fetchrow(SAMPLE, SAMPLE_S)
    assert row is not None
    p99 = row["p99_s"]
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{probe.url}/_forget") as r:
            r.raise_for_status()  # the fake keeps every push until told to forget them
        async with http.get(f"{probe.svc.url}/metrics") as r:
            held = HELD.search(await r.text())
    life.samples.append(Sample(
        at_s, life.produced, int(row["stored"]), row["size"] / 2**20, int(row["live"] or 0),
        int(row["dead"] or 0), int(row["outbox"]), float(p99) * 1000 if p99 is not None else None,
        cpu_seconds(probe.svc.proc.pid, probe.fake_pid, whole_box=True),
        float(held.group(1)) if held else 0.0, broker_rss_mb()))


def _quarters(life: Life) -> tuple[list[Sample], list[Sample]]:
    """The first and the last quarter of the samples after the warm-up: WARM_S (or half
    of a shorter run), the time the table takes to fill to its steady size."""
    warm = min(WARM_S, life.samples[-1].at_s / 2)
    steady = [s for s in life.samples if s.at_s >= warm]
    quarter = max(len(steady) // 4, 1)
    return steady[:quarter], steady[-quarter:]


def _print(life: Life) -> None:
    first, last = _quarters(life)
    print(f"lifecycle: {len(life.samples)} samples; steady from {first[0].at_s:.0f} s; "
          f"first quarter to {first[-1].at_s:.0f} s, last from {last[0].at_s:.0f} s",
          flush=True)


def _results(life: Life, elapsed: float) -> list[Result]:
    first, last = _quarters(life)
    steady = [s for s in life.samples if s.at_s >= first[0].at_s]
    p99s = [s.p99_ms for s in steady if s.p99_ms is not None]
    q_first = [s.p99_ms for s in first if s.p99_ms is not None]
    q_last = [s.p99_ms for s in last if s.p99_ms is not None]
    end = life.samples[-1]
    size_first = max(s.size_mb for s in first)
    size_last = max(s.size_mb for s in last)
    label = f"life of {life.total:,} commands at {life.rate:,}/s"
    return [
        Result(f"{label}: rate kept", end.stored / elapsed, "cmd/s", life.rate * 0.95, "min",
               note=f"{end.stored:,} stored in {elapsed:,.0f} s"),
        Result(f"{label}: p99 created -> pushed (median of 10 s windows)",
               statistics.median(p99s) if p99s else float("nan"), "ms"),
        Result(f"{label}: p99 created -> pushed (worst 10 s window)",
               max(p99s) if p99s else float("nan"), "ms"),
        Result(f"{label}: p99 created -> pushed, last / first quarter (medians)",
               statistics.median(q_last) / statistics.median(q_first)
               if q_first and q_last else float("nan"), "ratio", 2, "max"),
        Result(f"{label}: table size, first steady quarter (max)", size_first, "MB"),
        Result(f"{label}: table size, last quarter (max)", size_last, "MB"),
        Result(f"{label}: size last / first quarter", size_last / size_first, "ratio", 1.10,
               "max", note="commands table with its indexes and TOAST"),
        Result(f"{label}: rows at the end (live / dead)", end.live, "rows",
               note=f"dead {end.dead:,}, outbox {end.outbox:,}"),
        *_attribution(life, label, first, last),
    ]


def _attribution(life: Life, label: str, first: list[Sample],
                 last: list[Sample]) -> list[Result]:
    """Where the time went in the first and the last quarter: each process's CPU per
    command stored, and the acks held because they came before their command."""
    (cpu_a, held_a), (cpu_b, held_b) = _rates(life, first), _rates(life, last)
    out = [Result(f"{label}: {part} CPU per command, last quarter", cpu_b[part], "us",
                  note=f"first quarter {cpu_a[part]:,.0f} us (x{cpu_b[part] / cpu_a[part]:.2f})")
           for part in cpu_b if cpu_a.get(part)]
    out.append(Result(f"{label}: acks held (came before their command), last quarter",
                      held_b, "/s", note=f"first quarter {held_a:,.0f}/s"))
    out.append(Result(f"{label}: the embedded broker's memory at the end",
                      life.samples[-1].broker_mb, "MB", note="memory-only: it keeps every record"))
    return out


def _rates(life: Life, quarter: list[Sample]) -> tuple[dict[str, float], float]:
    """CPU per command stored (us, by process) and acks held per second over a quarter,
    from the sample before its first one to its last one."""
    i = next(k for k, s in enumerate(life.samples) if s is quarter[0])
    a, b = life.samples[max(i - 1, 0)], quarter[-1]
    stored, seconds = b.stored - a.stored, b.at_s - a.at_s
    if stored <= 0 or seconds <= 0:
        return {}, 0.0
    return ({part: (b.cpu[part] - a.cpu.get(part, 0.0)) / stored * 1e6 for part in b.cpu},
            (b.held - a.held) / seconds)


def total_from_env(scale: float) -> int:
    return int(os.environ.get("BENCH_GROWTH", int(1_200_000 * scale)))


def partitions_from_env() -> int:
    return int(os.environ.get("BENCH_PARTITIONS", "1"))


def rate_from_env() -> int:
    return int(os.environ.get("BENCH_GROWTH_RATE", "2000"))


async def main() -> int:
    """`make bench-life`: this row alone (BENCH_GROWTH, BENCH_GROWTH_RATE)."""
    scale = float(os.environ.get("BENCH_SCALE", "1.0"))
    async with Harness.start(scale) as h:
        results = await run(h, total_from_env(scale), rate_from_env())
        results.append(Result("peak RSS of dispatcher", h.peak_rss_mb, "MB", 300, "max"))
    width = max(len(r.name) for r in results)
    for r in results:
        print(r.row(width))
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
