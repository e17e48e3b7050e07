"""Kafka over TLS end to end, and what a wrong CA or refused credentials look like.

The embedded broker cannot serve TLS itself (BROKER.md), so a TLS terminator made by
the test (``tests.tlsutil``: an asyncio TLS server with a CA made by the test) stands in
front of it, and the broker advertises the terminator's port: every connection of the
dispatcher and of this test's own clients after bootstrap goes through TLS. The
terminator requires a client certificate, so mutual TLS is exercised too.

A wrong CA and refused SASL logins must not stop the process: /readyz answers 503 naming
kafka, a log line says what failed, and the SASL password appears in no log.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from dispatcher import cli
from dispatcher.app import serve
from dispatcher.config import Settings
from dispatcher.exceptions import BrokerUnavailable
from dispatcher.kafka import client_security
from dispatcher.metrics import Metrics
from dispatcher.runtime import Runtime
from dispatcher.secretbox import SecretBox, generate_keys
from dispatcher_dev.devstack import EmbeddedKafka, free_port
from dispatcher_dev.fakepushy import FakePushy
from tests.support.events import ack_event, command_event, device_event, hex24
from tests.support.fakes import was_pushed
from tests.support.kafka import Kafka
from tests.support.service import PUSHY_KEY, running
from tests.support.tlsutil import Pki, TlsTerminator
from tests.support.wait import wait_for

PASSWORD = "kafka-pw-" + secrets.token_hex(8)


def _tls(settings: Settings, bootstrap: str, pki: Pki, ca: Path | None = None) -> Settings:
    return dataclasses.replace(
        settings, kafka_bootstrap=bootstrap, kafka_security_protocol="SSL",
        kafka_ssl_cafile=str(ca or pki.ca), kafka_ssl_certfile=str(pki.client_cert),
        kafka_ssl_keyfile=str(pki.client_key))


@pytest.fixture(scope="module")
async def tls_bootstrap(pki: Pki, settings: Settings,
                        tmp_path_factory: pytest.TempPathFactory
                        ) -> AsyncIterator[tuple[str, TlsTerminator]]:
    """A broker reachable only through a mutual-TLS terminator: its bootstrap and the terminator."""
    broker_port = free_port()
    terminator = TlsTerminator(pki, broker_port, client_ca=pki.ca)
    tls_port = await terminator.start()
    bootstrap = f"127.0.0.1:{tls_port}"
    broker = EmbeddedKafka(broker_port, tmp_path_factory.mktemp("tls-kafka") / "tansu.log",
                           advertised=bootstrap,
                           probe_security=client_security(_tls(settings, bootstrap, pki)))
    try:
        await asyncio.to_thread(broker.start)  # the terminator answers the probe meanwhile
        yield bootstrap, terminator
    finally:
        await asyncio.to_thread(broker.stop)
        await terminator.stop()


async def test_a_command_goes_from_created_to_done_over_tls(
        tls_bootstrap: tuple[str, TlsTerminator], pki: Pki, settings: Settings) -> None:
    bootstrap, terminator = tls_bootstrap
    s = _tls(settings, bootstrap, pki)
    kafka = Kafka(bootstrap, s.topic_prefix, security=client_security(s))
    pushy = FakePushy(PUSHY_KEY)
    await pushy.start()
    await kafka.start()
    try:
        async with running(s, pushy):
            device = hex24()
            await kafka.send("devices", device_event(device))
            cmd = command_event(device, command="LOCK")
            await kafka.send("commands.created", cmd)
            await wait_for(lambda: was_pushed(pushy, cmd["id"]), what="the push")
            await kafka.send("device-acks", ack_event(cmd["id"], device, "RECEIVED"))
            await kafka.send("device-acks", ack_event(cmd["id"], device, "DONE"))
            events = await wait_for(lambda: _status(kafka, cmd["id"], 3), what="DONE")
            assert [(e["previousStatus"], e["status"]) for e in events] == [
                (None, "PENDING"), ("PENDING", "RECEIVED"), ("RECEIVED", "DONE")]
    finally:
        await kafka.stop()
        await pushy.stop()
    assert terminator.connections >= 3, "the clients did not go through the TLS terminator"


async def _status(kafka: Kafka, command_id: str, n: int) -> list[dict[str, Any]] | None:
    events = [e for e in await kafka.read("commands.status", timeout_s=0.3)
              if isinstance(e, dict) and e.get("id") == command_id]
    return events if len(events) >= n else None


async def _readyz(rt: Runtime) -> tuple[int, dict[str, Any]] | None:
    if not rt.http_url:
        return None
    async with aiohttp.ClientSession() as session, \
            session.get(rt.http_url + "/readyz") as resp:
        return resp.status, await resp.json()


async def _not_ready_on_kafka(s: Settings, caplog: pytest.LogCaptureFixture,
                              says: str) -> None:
    """Run the service with ``s``: it keeps running, /readyz 503 names kafka, a log line
    says ``says``."""
    rt = Runtime(s, Metrics(), SecretBox(generate_keys()))
    task = asyncio.create_task(serve(s, rt=rt))
    try:
        with caplog.at_level(logging.INFO):
            lines = await wait_for(lambda: _logged(caplog, says), timeout=30,
                                   what=f"a log line saying {says!r}")
            status, body = await wait_for(lambda: _readyz(rt), what="/readyz")
            assert status == 503
            assert body["checks"]["kafka"] is False
            await asyncio.sleep(1.5)  # another retry: still running, not crashed
            assert not task.done()
    finally:
        rt.stop.set()
        with contextlib.suppress(BrokerUnavailable):  # stopped while still retrying
            await asyncio.wait_for(task, timeout=30)
    assert any("Kafka" in line for line in lines), lines
    assert PASSWORD not in caplog.text


async def _logged(caplog: pytest.LogCaptureFixture, says: str) -> list[str] | None:
    lines = [f"{r.getMessage()} {getattr(r, 'error', '')}" for r in caplog.records
             if r.name.startswith("dispatcher")]  # our own line, not aiokafka's
    found = [line for line in lines if says in line]
    return found or None


async def test_a_wrong_ca_is_not_ready_and_says_why(
        tls_bootstrap: tuple[str, TlsTerminator], pki: Pki, settings: Settings,
        caplog: pytest.LogCaptureFixture) -> None:
    s = dataclasses.replace(_tls(settings, tls_bootstrap[0], pki, ca=pki.other_ca),
                            topic_prefix=f"wrongca{secrets.token_hex(3)}.")
    await _not_ready_on_kafka(s, caplog, "certificate verify failed")


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"])
async def test_refused_credentials_are_not_ready_and_say_why(
        mechanism: str, settings: Settings, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """A broker that requires authentication and knows no user: every login is refused."""
    with EmbeddedKafka(log_path=tmp_path / "tansu.log", authentication=True) as broker:
        s = dataclasses.replace(
            settings, kafka_bootstrap=broker.bootstrap, kafka_security_protocol="SASL_PLAINTEXT",
            kafka_sasl_mechanism=mechanism, kafka_sasl_username="dispatcher",
            kafka_sasl_password=PASSWORD)
        await _not_ready_on_kafka(s, caplog, f"SASL {mechanism} login as 'dispatcher'")


async def test_dispatcher_send_goes_over_tls_and_says_why_it_cannot(
        tls_bootstrap: tuple[str, TlsTerminator], pki: Pki, settings: Settings,
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    s = dataclasses.replace(_tls(settings, tls_bootstrap[0], pki), dev_dir=str(tmp_path),
                            topic_prefix=f"send{secrets.token_hex(3)}.")
    device = hex24()
    args = argparse.Namespace(device=device, command="LOCK", duration=0, params="{}",
                              org=hex24(), enterprise=hex24())
    await asyncio.to_thread(cli.cmd_send, s, args)
    sent = json.loads(capsys.readouterr().out)
    kafka = Kafka(s.kafka_bootstrap, s.topic_prefix, security=client_security(s))
    got = await wait_for(lambda: _read_id(kafka, sent["id"]), what="the sent command")
    assert got["aosDevice"] == device
    wrong = dataclasses.replace(s, kafka_ssl_cafile=str(pki.other_ca))
    with pytest.raises(BrokerUnavailable, match="certificate verify failed"):
        await asyncio.to_thread(cli.cmd_send, wrong, args)


async def _read_id(kafka: Kafka, command_id: str) -> dict[str, Any] | None:
    return next((e for e in await kafka.read("commands.created", timeout_s=0.3)
                 if isinstance(e, dict) and e.get("id") == command_id), None)
