"""The benchmark as a picture: latency by stored rows, throughput against its limits, scores.

Three panels, each answering one question: does history slow a push (p50/p95/p99 of
created -> push request at 1,000 commands/s, by rows stored, with the 2x band of the
0-stored p99)? how close is each stage to what this machine can do (each rate beside
its target or measured limit)? and which targets are met (ratio to target, >= 1 meets)?
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from bench.harness import Result

_STORED = re.compile(r"^latency (p50|p95|p99) @ 1000/s, ([0-9,]+) stored$")
_LIMITS = {"ingest": ("raw COPY into PostgreSQL", "raw consume (aiokafka only)")}


def draw(results: list[Result], path: Path) -> None:
    fig, (lat, rates, scores) = plt.subplots(
        3, 1, figsize=(11, 13), gridspec_kw={"height_ratios": [3, 4, 4]})
    _latency_by_stored(lat, results)
    _rates(rates, results)
    _scores(scores, results)
    fig.suptitle("dispatcher benchmark")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _latency_by_stored(ax: Axes, results: list[Result]) -> None:
    series: dict[str, list[tuple[int, float]]] = {}
    for r in results:
        if m := _STORED.match(r.name):
            series.setdefault(m.group(1), []).append((int(m.group(2).replace(",", "")), r.value))
    for name, points in sorted(series.items()):
        points.sort()
        ax.plot([max(x, 1) for x, _ in points], [y for _, y in points], marker="o", label=name)
    base = dict(series.get("p99", [])).get(0)
    if base:
        ax.axhline(2 * base, color="tab:red", linestyle="--", linewidth=1,
                   label="2 x p99 with 0 stored")
    ax.set_xscale("log")
    ax.set_xlabel("commands stored (0 drawn at 1)")
    ax.set_ylabel("created -> push request, ms")
    ax.set_title("latency at 1,000 commands/s by rows stored")
    ax.legend()


def _rates(ax: Axes, results: list[Result]) -> None:
    by_name = {r.name: r for r in results}
    rows = [r for r in results if r.unit.endswith("/s") and "latency" not in r.name]
    names = [r.name for r in rows]
    ax.barh(names, [r.value for r in rows], color=[
        "tab:gray" if r.note == "limit" else ("tab:green" if r.ok is not False else "tab:red")
        for r in rows])
    for i, r in enumerate(rows):
        if r.target:
            ax.plot([r.target], [i], marker="|", markersize=18, color="black")
        limits = [by_name[n].value for n in _LIMITS.get(r.name, ()) if n in by_name]
        if limits:
            ax.plot([min(limits) * 0.5], [i], marker="|", markersize=18, color="tab:purple")
    ax.set_xscale("log")
    ax.set_xlabel("per second (black: target; purple: half the lower raw limit; gray bars: "
                  "raw limits)")
    ax.set_title("throughput against targets and this machine's limits")
    ax.invert_yaxis()


def _scores(ax: Axes, results: list[Result]) -> None:
    rows = [r for r in results if r.target]
    # for "at most" targets, plot target/value so that > 1 is always good (capped at 100)
    ax.barh([r.name for r in rows],
            [min(r.value / r.target if r.kind == "min"
                 else r.target / max(r.value, r.target / 100), 100.0) for r in rows if r.target],
            color=["tab:green" if r.ok else "tab:red" for r in rows])
    ax.axvline(1.0, color="black", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("score against target (>= 1 meets it)")
    ax.set_title("targets")
    ax.invert_yaxis()
