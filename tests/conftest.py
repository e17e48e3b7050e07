"""The suite's plugins (its shared fixtures) and its end-of-run summary.

Shared fixtures live in pytest plugins under ``tests/support`` (each fixture once):
``servers`` (the broker, PostgreSQL, a fresh database, topics and settings per module) and
``fixtures`` (the in-process service, its fake Pushy and a Kafka client). A directory's own
conftest holds only what is its own. Helpers are imported from ``tests.support``, never
from a conftest.
"""

from __future__ import annotations

import pytest

pytest_plugins = ["tests.support.servers", "tests.support.fixtures"]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Show what the fault, crash and replica tests measured, and loudly what was skipped
    for want of Prometheus."""
    from tests.support.figures import FIGURES
    from tests.support.promserver import missing_summary

    if FIGURES:
        terminalreporter.section("figures")
        for text in FIGURES:
            terminalreporter.write_line(text)
    missing = missing_summary()
    if missing:
        terminalreporter.section("PROMETHEUS TESTS SKIPPED", sep="!", red=True, bold=True)
        for line in missing:
            terminalreporter.write_line(line, red=True, bold=True)
