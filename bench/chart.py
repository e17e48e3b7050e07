"""A PNG of every figure that has a target, as its ratio to the target (1.0 = on target)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.harness import Result


def draw(results: list[Result], path: Path) -> None:
    rows = [r for r in results if r.target]
    names = [r.name for r in rows]
    # for "at most" targets, plot target/value so that > 1 is always good
    scores = [(r.value / r.target if r.kind == "min" else r.target / max(r.value, 1e-9))
              for r in rows if r.target]
    colors = ["tab:green" if r.ok else "tab:red" for r in rows]
    fig, ax = plt.subplots(figsize=(10, 0.5 * len(rows) + 1.5))
    ax.barh(names, scores, color=colors)
    ax.axvline(1.0, color="black", linestyle="--", linewidth=1)
    ax.set_xlabel("score against target (>= 1 meets it)")
    ax.set_title("dispatcher benchmark")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
