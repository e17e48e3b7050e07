"""A real Prometheus for the tests: promtool, a temporary server, PromQL over HTTP.

Debian packages Prometheus (``apt-get install prometheus``: ``prometheus`` and
``promtool`` 2.42); ``.ci/run`` installs it. Where it is missing, the tests that need it
are skipped and the run's summary says so loudly (``missing_summary``), unless
``DISPATCHER_REQUIRE_PROMETHEUS=1`` (CI) turns the skip into a failure.

Also here: the Grafana side of the dashboard, its queries with their variables
substituted the way Grafana's Prometheus data source does before it sends them.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from dispatcher_dev.devstack import free_port

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
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


# ------------------------------------------------------------------ a temporary Prometheus


class Prometheus:
    """A Prometheus server of the test's own, scraping ``targets`` as ``job="dispatcher"``.

    Scrapes and evaluates the real ``deploy/prometheus/alerts.yml`` every
    ``interval_s``; its data lives in ``workdir`` and goes with it.
    """

    def __init__(self, workdir: Path, targets: list[str], interval_s: float = 1.0) -> None:
        self.workdir = workdir
        self.targets = targets
        self.interval_s = interval_s
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "prometheus.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def config(self) -> dict[str, Any]:
        every = f"{self.interval_s:g}s"
        return {
            "global": {"scrape_interval": every, "scrape_timeout": every,
                       "evaluation_interval": every},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "dispatcher", "metrics_path": "/metrics",
                                "static_configs": [{"targets": self.targets}]}],
        }

    def spawn(self) -> subprocess.Popen[bytes]:
        """Write the config and start the process."""
        config = self.workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config()))
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                [binary("prometheus"), f"--config.file={config}",
                 f"--storage.tsdb.path={self.workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}",
                 "--storage.tsdb.retention.time=1d", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT)
        return self._proc

    async def start(self, timeout_s: float = 30.0) -> None:
        """Start it and wait until it is ready (rules loaded, TSDB open)."""
        self.spawn()
        assert self._proc is not None
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    raise AssertionError(f"prometheus exited {self._proc.returncode}:\n"
                                         f"{self.log_tail()}")
                try:
                    async with session.get(f"{self.url}/-/ready") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)
        raise AssertionError(f"prometheus not ready after {timeout_s}s:\n{self.log_tail()}")

    async def wait_scraping(self, timeout_s: float = 30.0) -> None:
        """Until every target has been scraped successfully (target discovery hands new
        targets to the scrapers about 5 s after start, after /-/ready already says 200)."""
        deadline = time.monotonic() + timeout_s
        health: dict[str, str] = {}
        while time.monotonic() < deadline:
            active = (await self.api("targets"))["activeTargets"]
            health = {t["labels"]["instance"]: t["health"] for t in active}
            if health == dict.fromkeys(self.targets, "up"):
                return
            await asyncio.sleep(0.2)
        raise AssertionError(f"targets not all scraped after {timeout_s}s: {health}")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    async def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/<path>``; its ``data`` (fails on a query error)."""
        async with aiohttp.ClientSession() as session, \
                session.get(f"{self.url}/api/v1/{path}", params=params) as resp:
            body = await resp.json()
        assert body.get("status") == "success", f"{path} {params}: {body}"
        return body["data"]

    async def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query: ``[{"metric": {...}, "value": [t, "v"]}, ...]``."""
        params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
        data = await self.api("query", **params)
        result: list[dict[str, Any]] = data["result"]
        return result

    async def query_range(self, expr: str, start: float, end: float,
                          step_s: float) -> list[dict[str, Any]]:
        """A range query: ``[{"metric": {...}, "values": [[t, "v"], ...]}, ...]``."""
        data = await self.api("query_range", query=expr, start=f"{start:.3f}",
                              end=f"{end:.3f}", step=f"{step_s:g}s")
        result: list[dict[str, Any]] = data["result"]
        return result

    async def value(self, expr: str) -> float | None:
        """The single value of an instant query (None when it returns nothing)."""
        result = await self.query(expr)
        assert len(result) <= 1, f"{expr} returned {len(result)} series"
        return float(result[0]["value"][1]) if result else None

    async def alerts(self) -> list[dict[str, Any]]:
        """``/api/v1/alerts``: pending and firing alerts with labels and annotations."""
        data = await self.api("alerts")
        alerts: list[dict[str, Any]] = data["alerts"]
        return alerts


def values(series: dict[str, Any]) -> list[float]:
    """The finite values of a range or instant query's series."""
    points = series.get("values") or [series["value"]]
    out = [float(v) for _, v in points]
    return [v for v in out if v == v and v not in (float("inf"), float("-inf"))]


# ------------------------------------------------------------------ the dashboard, as Grafana


@dataclass(frozen=True)
class Target:
    """One query of the dashboard: a panel target, an annotation or a variable."""

    where: str
    expr: str
    instant: bool = False


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


def targets(dash: Mapping[str, Any]) -> list[Target]:
    """Every panel query and annotation query of the dashboard."""
    found = [Target(f"panel {p['title']!r} {t['refId']}", t["expr"], bool(t.get("instant")))
             for p in panels(dash["panels"]) for t in p.get("targets", [])]
    found += [Target(f"annotation {a['name']!r}", a["expr"])
              for a in dash.get("annotations", {}).get("list", []) if "expr" in a]
    return found


_LABEL_VALUES = re.compile(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*")


async def variable_values(prom: Prometheus, dash: Mapping[str, Any]) -> dict[str, list[str]]:
    """Each template variable's values, asked of Prometheus as Grafana asks
    (``label_values(selector, label)`` is ``/api/v1/label/<label>/values?match[]=...``)."""
    out: dict[str, list[str]] = {}
    for var in dash.get("templating", {}).get("list", []):
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        match = _LABEL_VALUES.fullmatch(query)
        assert match, f"variable {var['name']}: only label_values() is supported: {query}"
        selector, label = match.groups()
        out[var["name"]] = sorted(await prom.api(f"label/{label}/values",
                                                 **{"match[]": selector}))
    return out


def _regex_escape(value: str) -> str:
    """Grafana's ``prometheusSpecialRegexEscape``: regex metacharacters escaped for a
    PromQL string (a backslash written as two)."""
    value = value.replace("\\", "\\\\\\\\")
    return re.sub(r"[$^*{}\[\]'+?.()|]", lambda m: "\\\\" + m.group(0), value)


def interpolate(expr: str, variables: Mapping[str, list[str]], *, interval_s: float,
                scrape_interval_s: float, range_s: float) -> str:
    """``expr`` as Grafana sends it to Prometheus.

    ``$__rate_interval`` is ``max($__interval + scrape interval, 4 x scrape interval)``
    (Grafana's documented rule, the scrape interval being the data source's); a
    multi-value or "All" variable becomes ``(v1|v2)`` with each value regex-escaped.
    """
    rate_interval = max(interval_s + scrape_interval_s, 4 * scrape_interval_s)
    builtins = {"__rate_interval": f"{rate_interval:g}s", "__interval": f"{interval_s:g}s",
                "__interval_ms": f"{interval_s * 1000:g}", "__range": f"{range_s:g}s",
                "__range_s": f"{range_s:g}"}

    def value(name: str) -> str:
        if name in builtins:
            return builtins[name]
        chosen = [_regex_escape(v) for v in variables[name]]
        return chosen[0] if len(chosen) == 1 else "(" + "|".join(chosen) + ")"

    return re.sub(r"\$\{(\w+)\}|\$(\w+)|\[\[(\w+)\]\]",
                  lambda m: value(next(g for g in m.groups() if g)), expr)
