"""A reset password reaches the device's push and nothing else.

It is encrypted at rest (``commands.secret``), absent from ``commands.params``, erased
when the command ends whichever way it ends, and never appears in logs, status events,
dead letters or metrics.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import asyncpg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from dispatcher import auth, sealing
from dispatcher.config import Settings
from dispatcher.effects import Effects
from dispatcher.events import CommandCreated
from dispatcher.ingest import new_command, store_commands
from dispatcher.logs import JsonFormatter
from dispatcher.secretbox import SecretBox, generate_keys, reveal
from dispatcher.store import Store
from dispatcher_dev.fakepushy import FakePushy
from tests.support.events import ENTERPRISE, ORG, ack_event, command_event, device_event, hex24
from tests.support.kafka import Kafka
from tests.support.service import running
from tests.support.wait import wait_for

PASSWORD = "Pw-" + secrets.token_hex(10)
CODE = "LPA:1$smdp.example.com$" + secrets.token_hex(8).upper()
"""An eSIM activation code: a secret nested inside ``params.addEsimParams``."""


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(settings.database_url)
    yield conn
    await conn.close()


def esim(device: str, **over: Any) -> dict[str, Any]:
    return command_event(device, command="ADD_ESIM", params={"addEsimParams": {
        "activationCode": CODE, "activationState": "ACTIVATED"}}, **over)


def reset(device: str, **over: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {"command": "RESET_PASSWORD",
                              "params": {"newPassword": PASSWORD, "lockNow": True}, **over}
    return command_event(device, **fields)


async def row(db: asyncpg.Connection, command_id: str) -> asyncpg.Record | None:
    return await db.fetchrow("SELECT status, params::text AS params, secret FROM commands "
                             "WHERE id = $1", command_id)


async def test_password_goes_to_the_push_only(
        settings: Settings, kafka: Kafka, pushy: FakePushy, db: asyncpg.Connection,
        caplog: pytest.LogCaptureFixture) -> None:
    # As logs.setup does: the Kafka client logs at WARNING at most (its DEBUG lines print
    # whole records, including the ones this test itself produces). Last, so that the
    # capturing handler itself takes DEBUG.
    caplog.set_level(logging.WARNING, logger="aiokafka")
    caplog.set_level(logging.DEBUG)
    good, invalid, silent, cancelled, card = hex24(), hex24(), hex24(), hex24(), hex24()
    pushy.invalid_tokens = {f"tok-{invalid}"}
    async with running(settings, pushy) as rt:
        await kafka.send_many("devices", [device_event(good), device_event(invalid),
                                          device_event(silent, token=None),
                                          device_event(cancelled, token=None),
                                          device_event(card)])
        done, rejected, expiring, cancel = (reset(good), reset(invalid),
                                            reset(silent, duration=3), reset(cancelled))
        added = esim(card)
        await kafka.send_many("commands.created", [done, rejected, expiring, cancel, added])
        # Inputs the dispatcher must refuse, carrying the password.
        await kafka.send_many("commands.created", [
            reset(good, id="not-an-id"),
            reset(good, params={"newPassword": PASSWORD, "pad": "x" * 5000}),
        ])
        await kafka.send("commands.created", b'{"id": "broken", "params": {"newPassword": "'
                         + PASSWORD.encode() + b'"')

        push = await wait_for(lambda: _push_of(pushy, done["id"]), what="the push")
        assert push.data["params"] == {"newPassword": PASSWORD, "lockNow": True}
        stored = await row(db, done["id"])
        assert stored is not None
        assert stored["status"] == "PENDING"
        assert json.loads(stored["params"]) == {"newPassword": "***", "lockNow": True}
        assert stored["secret"] is not None
        assert PASSWORD.encode() not in stored["secret"]
        pushed = await wait_for(lambda: _push_of(pushy, added["id"]), what="the eSIM push")
        assert pushed.data["params"] == added["params"]  # the nested code, decrypted
        stored = await row(db, added["id"])
        assert stored is not None
        assert json.loads(stored["params"]) == {"addEsimParams": {
            "activationCode": "***", "activationState": "ACTIVATED"}}
        assert CODE.encode() not in stored["secret"]
        answers = await _answers(rt.http_url, settings, [
            (good, done["id"]), (card, added["id"])])
        assert '"activationCode": "***"' in answers

        await kafka.send("device-acks", ack_event(done["id"], good, "DONE"))
        await kafka.send("device-acks", ack_event(added["id"], card, "DONE"))
        await kafka.send("commands.cancel", {"commandId": cancel["id"], "aosDevice": cancelled,
                                             "at": done["createdAt"]})
        ended = {done["id"]: "DONE", rejected["id"]: "ERROR", expiring["id"]: "EXPIRED",
                 cancel["id"]: "CANCEL", added["id"]: "DONE"}

        async def all_ended() -> bool:
            rows = await db.fetch("SELECT id, status, secret FROM commands WHERE id = ANY($1)",
                                  list(ended))
            return {r["id"]: (r["status"], r["secret"]) for r in rows} == {
                k: (v, None) for k, v in ended.items()}

        await wait_for(all_ended, timeout=30, what="every command ended with its secret erased")
        letters = await wait_for(lambda: _records(kafka, "dead-letter", 3),
                                 what="three dead letters")
        events = await wait_for(lambda: _records(kafka, "commands.status", 10),
                                what="the status events")
        async with aiohttp.ClientSession() as http:
            for path in ("/metrics", "/readyz", "/healthz"):
                async with http.get(rt.http_url + path) as response:
                    text = await response.text()
                    assert PASSWORD not in text, path
                    assert CODE not in text, path
        answers += await _answers(rt.http_url, settings, [
            (good, done["id"]), (card, added["id"]), (invalid, rejected["id"])])

    for secret in (PASSWORD, CODE):
        assert secret not in answers
        assert secret not in json.dumps(letters, default=repr)
        assert secret not in json.dumps(events, default=repr)
    dump = await db.fetchval(
        "SELECT concat((SELECT string_agg(c::text, ' ') FROM commands c),"
        " (SELECT string_agg(o::text, ' ') FROM status_outbox o),"
        " (SELECT string_agg(h::text, ' ') FROM held_events h))")
    assert PASSWORD not in (dump or "")
    assert CODE not in (dump or "")
    formatter = JsonFormatter()
    names = {(r.name, r.levelno) for r in caplog.records}
    assert ("dispatcher.app", logging.INFO) in names
    assert ("dispatcher.push", logging.WARNING) in names  # the rejected push, with its fields
    for record in caplog.records:
        for secret in (PASSWORD, CODE):
            assert secret not in formatter.format(record), record.getMessage()
            assert secret not in repr(vars(record)), record.getMessage()


async def _answers(http_url: str, settings: Settings, commands: list[tuple[str, str]]) -> str:
    """Every HTTP answer about these (device, command id) pairs, both dialects, as text."""
    headers = {"Authorization": "Bearer " + auth.mint(settings.jwt_secret, [ORG])}
    texts = []
    async with aiohttp.ClientSession(base_url=http_url, headers=headers) as http:
        for device, command_id in commands:
            aosp = f"/v1/organizations/{ORG}/mdm/aosp/enterprise/devices/{device}/commands"
            amapi = f"/v1/enterprises/{ENTERPRISE}/devices/{device}/operations"
            for path in (f"{aosp}/{command_id}", aosp, f"{amapi}/{command_id}", amapi):
                async with http.get(path) as response:
                    assert response.status == 200, (path, await response.text())
                    texts.append(json.dumps(await response.json()))
    return "\n".join(texts)


async def _push_of(pushy: FakePushy, command_id: str) -> Any:
    return next((r for r in pushy.accepted if r.data.get("commandId") == command_id), None)


async def _records(kafka: Kafka, topic: str, n: int) -> list[Any] | None:
    records = await kafka.read(topic, timeout_s=0.3)
    return records if len(records) >= n else None


async def test_log_provider_never_logs_params(
        settings: Settings, kafka: Kafka, db: asyncpg.Connection,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="aiokafka")
    caplog.set_level(logging.DEBUG)
    device = hex24()
    async with running(settings, push_provider="log"):
        await kafka.send("devices", device_event(device))
        cmd = reset(device)
        await kafka.send("commands.created", cmd)

        async def pushed() -> bool:
            return bool(await db.fetchval("SELECT push_id FROM commands WHERE id = $1", cmd["id"]))

        await wait_for(pushed, what="the log provider to accept the push")
    logged = [r for r in caplog.records if r.name == "dispatcher.push"]
    assert any(getattr(r, "command_id", None) == cmd["id"] for r in logged)
    for record in caplog.records:
        assert PASSWORD not in repr(vars(record)), record.getMessage()
        assert "lockNow" not in repr(vars(record)), record.getMessage()


async def _stored(settings: Settings, box: SecretBox, *events: dict[str, Any],
                  secret_of: dict[str, str] | None = None) -> None:
    """Store commands as another replica would (its own key), optionally with the
    ciphertext of another command copied onto one (``secret_of``: id -> id)."""
    commands = {e["id"]: new_command(CommandCreated.model_validate(e), datetime.now(UTC),
                                     600, box) for e in events}
    for target, source in (secret_of or {}).items():
        commands[target] = dataclasses.replace(commands[target],
                                               secret=commands[source].secret)
    store = await Store.connect(settings.database_url, 1, 1)
    try:
        async with store.transaction() as conn:
            await store_commands(conn, list(commands.values()), Effects())
    finally:
        await store.close()


async def _status(db: asyncpg.Connection, command_id: str) -> asyncpg.Record | None:
    return await db.fetchrow("SELECT status, error_type, secret, push_id FROM commands "
                             "WHERE id = $1", command_id)


async def test_a_secret_that_cannot_be_decrypted_is_never_pushed(
        settings: Settings, kafka: Kafka, pushy: FakePushy, db: asyncpg.Connection) -> None:
    mine = SecretBox(settings.secret_keys)
    theirs = SecretBox(generate_keys("other"))  # a replica configured with another key
    foreign, moved, fine = hex24(), hex24(), hex24()
    unreadable, follow = reset(foreign), command_event(foreign, command="LOCK")
    victim, source = reset(moved), reset(fine)
    await _stored(settings, theirs, unreadable)
    await _stored(settings, mine, victim, source, secret_of={victim["id"]: source["id"]})
    await _stored(settings, mine, follow)  # after the unreadable one, same device
    async with running(settings, pushy) as rt:
        await kafka.send_many("devices", [device_event(d) for d in (foreign, moved, fine)])

        async def ended() -> bool:
            rows = [await _status(db, c["id"]) for c in (unreadable, victim)]
            return all(r is not None and r["status"] == "ERROR" for r in rows)

        await wait_for(ended, what="both unreadable commands to end ERROR")
        for command in (unreadable, victim):
            stored = await _status(db, command["id"])
            assert stored is not None
            assert (stored["error_type"], stored["secret"], stored["push_id"]) == (
                "SECRET_UNREADABLE", None, None)
        # the device's next command goes; the readable secret is pushed with its password
        await wait_for(lambda: _push_of(pushy, follow["id"]), what="the next command's push")
        push = await wait_for(lambda: _push_of(pushy, source["id"]), what="a readable push")
        assert push.data["params"]["newPassword"] == PASSWORD

        async def both_published() -> dict[str, Any] | None:
            errors = {e["id"]: e for e in await kafka.read("commands.status", timeout_s=0.3)
                      if e["status"] == "ERROR"}
            return errors if {unreadable["id"], victim["id"]} <= set(errors) else None

        errors = await wait_for(both_published, what="the ERROR status events")
        assert rt.metrics.secret_unreadable._value.get() == 2
        assert "dispatcher_secret_unreadable_total 2.0" in rt.metrics.render().decode()
    sent = {r.data.get("commandId") for r in pushy.requests}
    assert unreadable["id"] not in sent
    assert victim["id"] not in sent
    for command in (unreadable, victim):
        assert errors[command["id"]]["errorType"] == "SECRET_UNREADABLE"
        assert errors[command["id"]]["previousStatus"] == "PENDING"


def _pem(private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


async def test_secrets_are_sealed_to_the_device_key_and_never_go_in_clear(
        settings: Settings, kafka: Kafka, pushy: FakePushy, db: asyncpg.Connection) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    on_ec, on_rsa, keyless = hex24(), hex24(), hex24()
    async with running(settings, pushy,
                       require_sealed_secrets=True):
        await kafka.send_many("devices", [device_event(on_ec, publicKey=_pem(ec_key)),
                                          device_event(on_rsa, publicKey=_pem(rsa_key)),
                                          device_event(keyless)])
        card, password, refused = esim(on_ec), reset(on_rsa), reset(keyless)
        lock = command_event(keyless, command="LOCK")
        await kafka.send_many("commands.created", [card, password, refused, lock])
        for command, private in ((card, ec_key), (password, rsa_key)):
            push = await wait_for(functools.partial(_push_of, pushy, command["id"]),
                                  what="a push")
            assert CODE not in json.dumps(push.data)
            assert PASSWORD not in json.dumps(push.data)
            opened = sealing.open_sealed(private, command["id"], push.data["sealed"])
            secrets_ = [(tuple(s["path"]), s["value"]) for s in opened]
            assert reveal(push.data["params"], secrets_) == command["params"]
        assert card["params"]["addEsimParams"]["activationCode"] == CODE
        assert push.data["params"] == {"lockNow": True}  # RSA: the password only sealed
        assert push.data["sealed"]["alg"] == sealing.RSA_ALG

        async def refused_ended() -> asyncpg.Record | None:
            stored = await _status(db, refused["id"])
            return stored if stored is not None and stored["status"] == "ERROR" else None

        stored = await wait_for(refused_ended, what="the keyless device's secret refused")
        assert (stored["error_type"], stored["secret"]) == ("NO_DEVICE_KEY", None)
        await wait_for(lambda: _push_of(pushy, lock["id"]), what="a command without a secret")
    assert refused["id"] not in {r.data.get("commandId") for r in pushy.requests}
