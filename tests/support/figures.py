"""What the fault, crash and replica tests measured, kept for the run's summary."""

from __future__ import annotations

FIGURES: list[str] = []
"""What the fault, crash and replica tests measured, shown at the end of the run."""


def report(text: str) -> None:
    """Print a measured figure and keep it for the run's summary (``-q`` hides prints)."""
    FIGURES.append(text.strip())
    print(text)
