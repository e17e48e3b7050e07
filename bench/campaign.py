"""`make bench` row of campaigns (README "Campaigns"): one campaign over every device of an
enterprise of 1,000,000 (at BENCH_SCALE=1), through `dispatcher run` and the fake Pushy
answering at once: how fast its targets become commands (against the ingest limit of the
same run), when the last device is pushed, and the process's peak RSS meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import time

import asyncpg
import psutil

from bench.harness import ENT, Harness, Result, hexid
from bench.order import BACKLOG as DEVICES  # the registry of a big enterprise, by SQL

ORG = "0000000000000000000000cc"
CONCURRENCY = 256
"""As the push ceiling's row: the pushes of one campaign are what that ceiling is for."""


async def million(h: Harness, devices: int, ingest: float, ingest_limit: float) -> list[Result]:
    """One campaign over ``devices`` devices: expansion rate (against the same run's ingest
    and its limit, the lower of raw consume and raw COPY), time to the last push, RSS."""
    dsn, prefix = await h.fresh("campaign")
    url, fake = await h.start_fake(0.0)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(DEVICES, devices, prefix, ORG, ENT)
        await conn.execute("ANALYZE devices")
        svc = h.spawn(dsn, prefix, **h.provider_env("pushy", url),
                      DISPATCHER_PUSH_CONCURRENCY=str(CONCURRENCY))
        try:
            await h.ready(svc)
            proc = psutil.Process(svc.proc.pid)
            rss = proc.memory_info().rss / 1e6
            campaign = hexid(1, "campaign" + prefix)
            before = (await h.fake_get(url, "stats"))["accepted"]
            started = time.monotonic()
            await h._producer.send_and_wait(  # type: ignore[union-attr]
                prefix + "campaigns.created", json.dumps({
                    "id": campaign, "organization": ORG, "aosEnterprise": ENT,
                    "command": "REBOOT", "duration": 3600, "target": {"all": True}}).encode(),
                key=campaign.encode())
            accepted = expanded = pushed = 0.0
            while not pushed:
                await asyncio.sleep(0.25)
                rss = max(rss, proc.memory_info().rss / 1e6)
                now = time.monotonic()
                row = await conn.fetchrow(
                    "SELECT targets, expanded FROM campaigns WHERE id = $1", campaign)
                if row is not None and not accepted:
                    accepted = now
                if row is not None and not expanded and row["expanded"] >= devices:
                    expanded = now
                stats = await h.fake_get(url, "stats")
                if stats["accepted"] - before >= devices:
                    pushed = now
                if now - started > 3600 or svc.proc.poll() is not None:
                    raise RuntimeError(f"campaign did not finish: {svc.log.read_text()[-2000:]}")
            h.peak_rss_mb = max(h.peak_rss_mb, rss)
        finally:
            await h.stop(svc)
    finally:
        await conn.close()
        fake.terminate()
    rate = devices / (expanded - accepted)
    label = f"campaign of {devices:,}"
    return [
        Result(f"{label}: accepted", accepted - started, "s", note="event -> stored"),
        Result(f"{label}: expansion", rate, "cmd/s", note="targets -> commands"),
        Result(f"{label}: expansion / ingest limit", rate / ingest_limit, "ratio"),
        Result(f"{label}: expansion / ingest", rate / ingest, "ratio",
               note="while its pushes go out on the same 2 cores"),
        Result(f"{label}: event -> last push", pushed - started, "s"),
        Result(f"{label}: pushes", devices / (pushed - started), "push/s",
               note=f"concurrency {CONCURRENCY}, expansion included"),
        Result(f"{label}: peak RSS", rss, "MB", 300, "max"),
    ]
