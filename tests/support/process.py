"""`dispatcher run` as a subprocess: its environment, readiness, stopping and killing.

:class:`Service` is one process started once (the acceptance tests); :class:`Dispatcher`
is one that a test restarts and kills (the fault and live-Prometheus tests).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from dispatcher_dev.devstack import free_port
from dispatcher_dev.fakepushy import FakePushy
from tests.support.kafka import Kafka
from tests.support.wait import until, wait_for

PUSHY_KEY = "acceptance-pushy-key"
"""The api key of the fake Pushy a `dispatcher run` subprocess pushes to."""
SHUTDOWN_TIMEOUT_S = 15.0
DISPATCHER = Path(sys.executable).with_name("dispatcher")


def service_env(**values: str) -> dict[str, str]:
    """The parent environment without any DISPATCHER_* variable, plus ``values``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
    env.update(values)
    return env


@dataclass
class Service:
    """The running `dispatcher run` process and the clients that drive it."""

    proc: asyncio.subprocess.Process
    http: str
    kafka: Kafka
    pushy: FakePushy
    log_path: Path
    database_url: str

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    async def get(self, path: str) -> tuple[int, str]:
        async with aiohttp.ClientSession() as session, session.get(self.http + path) as resp:
            return resp.status, await resp.text()


async def wait_ready(service: Service, timeout_s: float = 60.0) -> None:
    """Until /readyz answers 200; fail early (with the log) if the process exits."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if service.proc.returncode is not None:
            raise AssertionError(f"dispatcher exited {service.proc.returncode}:\n"
                                 f"{service.log_tail()}")
        try:
            status, body = await service.get("/readyz")
            if status == 200:
                return
            last = f"{status} {body}"
        except aiohttp.ClientError as exc:
            last = repr(exc)
        await asyncio.sleep(0.2)
    raise AssertionError(f"/readyz not 200 after {timeout_s}s ({last}):\n{service.log_tail()}")


async def stop_process(proc: asyncio.subprocess.Process,
                       timeout_s: float = SHUTDOWN_TIMEOUT_S) -> tuple[int, float]:
    """SIGTERM, then SIGKILL if it has not ended after ``timeout_s``.

    Returns the exit code and the seconds the process took to end.
    """
    started = time.monotonic()
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, time.monotonic() - started


def metric_sum(text: str, name: str, labels: Mapping[str, str]) -> float:
    """Sum of a metric's samples in a /metrics text whose labels include ``labels``."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                total += sample.value
    return total


async def events_of(svc: Service, command_id: str) -> list[dict[str, Any]]:
    return [e for e in await svc.kafka.read("commands.status", timeout_s=0.3)
            if isinstance(e, dict) and e.get("id") == command_id]


async def reaches(svc: Service, command_id: str, status: str,
                  timeout: float = 30) -> list[dict[str, Any]]:
    """The command's status events once one says ``status``."""
    async def check() -> list[dict[str, Any]] | None:
        events = await events_of(svc, command_id)
        return events if any(e["status"] == status for e in events) else None

    return await until(check, timeout=timeout, what=f"{command_id} -> {status}")


async def pushed(svc: Service, command_id: str) -> list[Any]:
    return [r for r in svc.pushy.accepted if r.data.get("commandId") == command_id]


class Dispatcher:
    """One `dispatcher run` subprocess at a time; restartable, killable."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.port = free_port()
        self.http = f"http://127.0.0.1:{self.port}"
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0
        self.kills = 0

    async def start(self) -> None:
        with self.log_path.open("ab") as out:
            out.write(f"\n=== start {self.starts} ===\n".encode())
            self.proc = await asyncio.create_subprocess_exec(
                str(DISPATCHER), "run", stdout=out, stderr=subprocess.STDOUT,
                env={**self.env, "DISPATCHER_HTTP_PORT": str(self.port)})
        self.starts += 1

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()
        self.kills += 1

    async def stop(self, timeout_s: float = 15.0) -> int | None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return proc.returncode if proc else None
        return (await stop_process(proc, timeout_s))[0]

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    async def get(self, path: str, timeout_s: float = 10.0) -> tuple[int, str]:
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session, \
                session.get(self.http + path) as resp:
            return resp.status, await resp.text()

    async def readyz(self) -> int:
        """The /readyz status, 0 when it does not answer."""
        try:
            return (await self.get("/readyz"))[0]
        except (aiohttp.ClientError, TimeoutError):
            return 0

    async def wait_ready(self, timeout_s: float = 90.0) -> None:
        async def ready() -> bool:
            if not self.alive:
                raise AssertionError(f"dispatcher exited:\n{self.log_tail()}")
            return await self.readyz() == 200

        await wait_for(ready, timeout=timeout_s, interval=0.2, what="/readyz 200")

    async def metric(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples whose labels include ``labels``."""
        _, text = await self.get("/metrics")
        return metric_sum(text, name, labels)
