"""`make bench`: how fast the dispatcher is, how close to this machine's limits, how cost grows.

Runs on the embedded stack (or the servers named by DISPATCHER_KAFKA_BOOTSTRAP /
DISPATCHER_DATABASE_URL), drives `dispatcher run` as a subprocess exactly as production
would, prints a table, writes bench/results.json and bench/results.png.

BENCH_SCALE (default 1.0) scales every count down for a quick look (e.g. 0.1).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench import campaign, lifecycle, order
from bench.harness import Harness, Result

OUT = Path(__file__).resolve().parent


async def main() -> int:
    scale = float(os.environ.get("BENCH_SCALE", "1.0"))
    async with Harness.start(scale) as h:
        results: list[Result] = []
        results += await h.ingest_and_limits(n=int(100_000 * scale), devices=int(20_000 * scale))
        results += await h.acks(n=int(100_000 * scale))
        results += await h.push_throughput(n=int(20_000 * scale), latency_s=0.05)
        results += await h.push_throughput(n=int(30_000 * scale), latency_s=0.0,
                                           concurrency=256)
        results += await h.push_throughput(n=int(20_000 * scale), latency_s=0.05, provider="fcm")
        results += await h.push_throughput(n=int(30_000 * scale), latency_s=0.0,
                                           concurrency=256, provider="fcm")
        results += await h.latency(rate=1000, seconds=max(3, int(10 * scale)), label="1000/s")
        # The maximum of the created -> pushed path is the lower of its two stages.
        most = min(r.value for r in results
                   if r.name in ("ingest", "push ceiling (0 ms provider)"))
        half = int(most / 2)
        results += await h.latency(rate=half, seconds=max(3, int(10 * scale)),
                                   label=f"50% of max ({half}/s)")
        results += await order.lock_under_backlog(h, backlog=int(1_000_000 * scale))
        results += await order.claim_cost(h)
        limit = min(r.value for r in results if r.note == "limit")
        ingest = next(r.value for r in results if r.name == "ingest")
        results += await campaign.million(h, devices=int(1_000_000 * scale), ingest=ingest,
                                          ingest_limit=limit)
        results += await h.expiry_and_growth(overdue=int(1_000_000 * scale),
                                             big=int(10_000_000 * scale), n=int(50_000 * scale))
        results += await lifecycle.run(h, total=lifecycle.total_from_env(scale),
                                       rate=lifecycle.rate_from_env())
        results.append(Result("peak RSS of dispatcher", h.peak_rss_mb, "MB", 300, "max"))
    _report(results, scale)
    return 0


def _report(results: list[Result], scale: float) -> None:
    width = max(len(r.name) for r in results)
    print(f"\n{'measure':<{width}}  {'value':>12}  unit        target      ratio  ok")
    for r in results:
        print(r.row(width))
    payload: dict[str, Any] = {
        "scale": scale, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "results": [r.as_dict() for r in results],
    }
    (OUT / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
    try:
        from bench.chart import draw

        draw(results, OUT / "results.png")
        print(f"\nwrote {OUT / 'results.json'} and {OUT / 'results.png'}")
    except ImportError:
        print(f"\nwrote {OUT / 'results.json'} (install matplotlib for the chart)")


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
