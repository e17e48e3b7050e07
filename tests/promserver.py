"""A real Prometheus for the tests: promtool, a temporary server, PromQL over HTTP.

Debian packages Prometheus (``apt-get install prometheus``: ``prometheus`` and
``promtool`` 2.42); ``.ci/run`` installs it. Where it is missing, the tests that need it
are skipped and the run's summary says so loudly (``missing_summary``), unless
``DISPATCHER_REQUIRE_PROMETHEUS=1`` (CI) turns the skip into a failure.

Also here: the Grafana side of the dashboard, its queries with their variables
substituted the way Grafana's Prometheus data source does before it sends them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
RULES = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "dispatcher.json"

INSTALL_HINT = (
    "Prometheus is not installed, so the tests that check deploy/prometheus and the Grafana "
    "dashboard against a real Prometheus were SKIPPED. Install it and run them again: "
    "`sudo apt-get install -y --no-install-recommends prometheus` (Debian/Ubuntu: prometheus "
    "and promtool), or put `prometheus` and `promtool` from "
    "https://prometheus.io/download/ on PATH. CI (.ci/run) installs it and requires them."
)
SKIPPED: list[str] = []
"""Tests skipped for want of Prometheus; the run's summary lists them."""


def binary(name: str) -> str:
    """The path of ``prometheus`` or ``promtool``; skip (or fail in CI) when missing."""
    found = shutil.which(name)
    if found:
        return found
    if os.environ.get("DISPATCHER_REQUIRE_PROMETHEUS") == "1":
        pytest.fail(f"`{name}` not found and DISPATCHER_REQUIRE_PROMETHEUS=1. {INSTALL_HINT}")
    SKIPPED.append(os.environ.get("PYTEST_CURRENT_TEST", name).split(" ")[0])
    pytest.skip(f"`{name}` not found: {INSTALL_HINT}")


def missing_summary() -> list[str]:
    """Lines for the end of the run when Prometheus tests were skipped (else none)."""
    if not SKIPPED:
        return []
    return [f"{len(SKIPPED)} test(s) SKIPPED: no Prometheus on this machine.", INSTALL_HINT,
            *(f"  skipped: {name}" for name in SKIPPED)]


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run promtool; the result carries its output."""
    return subprocess.run([binary("promtool"), *map(str, args)], capture_output=True,
                          text=True, timeout=60, check=False)
