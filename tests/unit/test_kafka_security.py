"""Kafka TLS and SASL settings reach every client the process makes.

Consumer, producer, admin, `dispatcher send` and `dispatcher watch` all take their
security arguments from ``dispatcher.kafka.client_security``; each test builds the real
aiokafka client and reads what it was given. SASL cannot be run end to end against the
embedded broker (BROKER.md), so this is where each SASL setting is shown to arrive.
"""

from __future__ import annotations

import argparse
import logging
import ssl
from pathlib import Path
from typing import Any

import aiokafka
import aiokafka.admin
import pytest

from dispatcher import cli, kafka
from dispatcher.config import SECRET_FIELDS, Settings
from dispatcher.consumer import StreamConsumer
from dispatcher.exceptions import BrokerUnavailable, ConfigError
from dispatcher.metrics import Metrics
from tests.support.tlsutil import Pki

PASSWORD = "pa55-never-logged"


def _settings(**env: str) -> Settings:
    return Settings.from_env({"DISPATCHER_KAFKA_BOOTSTRAP": "127.0.0.1:1", **env})


SASL_SSL = {"DISPATCHER_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "DISPATCHER_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "DISPATCHER_KAFKA_SASL_USERNAME": "dispatcher",
            "DISPATCHER_KAFKA_SASL_PASSWORD": PASSWORD}


def _expect(client: Any, protocol: str, mechanism: str | None, username: str | None,
            password: str | None, tls: bool) -> None:
    """``client`` is an aiokafka AIOKafkaClient."""
    assert client._security_protocol == protocol
    if mechanism is not None:  # aiokafka's default, unused without SASL, is PLAIN
        assert client._sasl_mechanism == mechanism
    assert client._sasl_plain_username == username
    assert client._sasl_plain_password == password
    assert isinstance(client._ssl_context, ssl.SSLContext) is tls


class _Stop(Exception):
    pass


def _spy(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[Any]:
    """Replace ``module.name`` (an aiokafka client class) by one that records its instances
    and stops at ``start()``."""
    made: list[Any] = []
    real = getattr(module, name)

    class Spy(real):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

        async def start(self) -> None:
            self._closed = True  # never started: nothing to close
            raise _Stop

        async def stop(self) -> None:
            pass

        async def close(self) -> None:
            pass

    monkeypatch.setattr(module, name, Spy)
    return made


@pytest.mark.parametrize("env", [
    {},
    {"DISPATCHER_KAFKA_SECURITY_PROTOCOL": "SSL"},
    {"DISPATCHER_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
     "DISPATCHER_KAFKA_SASL_MECHANISM": "PLAIN", "DISPATCHER_KAFKA_SASL_USERNAME": "u",
     "DISPATCHER_KAFKA_SASL_PASSWORD": PASSWORD},
    {**SASL_SSL, "DISPATCHER_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256"},
    SASL_SSL,
], ids=["plaintext", "ssl", "sasl-plain", "scram-256", "scram-512"])
async def test_every_client_gets_the_same_security(
        env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    s = _settings(**env)
    protocol = s.kafka_security_protocol
    sasl = protocol.startswith("SASL_")
    want = (protocol, s.kafka_sasl_mechanism if sasl else None,
            s.kafka_sasl_username if sasl else None, s.kafka_sasl_password if sasl else None,
            protocol in ("SSL", "SASL_SSL"))

    producer = kafka.Producer(s)
    _expect(producer._producer.client, *want)
    await producer.stop()
    consumer = StreamConsumer(s, processor=None, metrics=Metrics())  # type: ignore[arg-type]
    made = consumer._make_consumer()
    _expect(made._client, *want)
    await made.stop()

    admins = _spy(monkeypatch, kafka, "AIOKafkaAdminClient")
    with pytest.raises(BrokerUnavailable) as failed:  # any failure to start is retriable
        await kafka.ensure_topics(s)
    assert isinstance(failed.value.__cause__, _Stop)
    _expect(admins[0]._client, *want)


@pytest.mark.parametrize("env", [{}, SASL_SSL], ids=["plaintext", "sasl-ssl"])
def test_send_and_watch_get_the_same_security(
        env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    s = _settings(DISPATCHER_DEV_DIR=str(tmp_path), **env)
    sasl = bool(env)
    want = (s.kafka_security_protocol, "SCRAM-SHA-512" if sasl else None,
            "dispatcher" if sasl else None, PASSWORD if sasl else None, sasl)
    producers = _spy(monkeypatch, aiokafka, "AIOKafkaProducer")
    with pytest.raises(BrokerUnavailable, match="cannot start the producer") as failed:
        cli.cmd_send(s, argparse.Namespace(device="a" * 24, command="LOCK", duration=0,
                                           params="{}", org=None, enterprise=None))
    assert isinstance(failed.value.__cause__, _Stop)
    _expect(producers[0].client, *want)
    consumers = _spy(monkeypatch, aiokafka, "AIOKafkaConsumer")
    with pytest.raises(BrokerUnavailable, match="cannot start the consumer") as failed:
        cli.cmd_watch(s, argparse.Namespace(from_beginning=True))
    assert isinstance(failed.value.__cause__, _Stop)
    _expect(consumers[0]._client, *want)


def test_tls_files_are_loaded(pki: Pki) -> None:
    s = _settings(DISPATCHER_KAFKA_SECURITY_PROTOCOL="SSL",
                  DISPATCHER_KAFKA_SSL_CAFILE=str(pki.ca),
                  DISPATCHER_KAFKA_SSL_CERTFILE=str(pki.client_cert),
                  DISPATCHER_KAFKA_SSL_KEYFILE=str(pki.client_key))
    context = kafka.client_security(s)["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    subjects = [dict(x[0] for x in c["subject"]) for c in context.get_ca_certs()]
    assert {"commonName": "dispatcher test CA"} in subjects


def test_missing_or_broken_tls_files_name_the_variable(pki: Pki, tmp_path: Path) -> None:
    s = _settings(DISPATCHER_KAFKA_SECURITY_PROTOCOL="SSL",
                  DISPATCHER_KAFKA_SSL_CAFILE=str(tmp_path / "nope.pem"))
    with pytest.raises(ConfigError, match="DISPATCHER_KAFKA_SSL_CAFILE"):
        kafka.client_security(s)
    s = _settings(DISPATCHER_KAFKA_SECURITY_PROTOCOL="SSL",
                  DISPATCHER_KAFKA_SSL_CERTFILE=str(pki.client_cert),
                  DISPATCHER_KAFKA_SSL_KEYFILE=str(pki.server_key))  # not the cert's key
    with pytest.raises(ConfigError, match="DISPATCHER_KAFKA_SSL_KEYFILE"):
        kafka.client_security(s)


@pytest.mark.parametrize(("env", "named"), [
    ({"DISPATCHER_KAFKA_SECURITY_PROTOCOL": "TLS"}, "DISPATCHER_KAFKA_SECURITY_PROTOCOL"),
    ({**SASL_SSL, "DISPATCHER_KAFKA_SASL_MECHANISM": "GSSAPI"},
     "DISPATCHER_KAFKA_SASL_MECHANISM"),
    ({**SASL_SSL, "DISPATCHER_KAFKA_SASL_MECHANISM": ""}, "DISPATCHER_KAFKA_SASL_MECHANISM"),
    ({**SASL_SSL, "DISPATCHER_KAFKA_SASL_PASSWORD": ""}, "DISPATCHER_KAFKA_SASL_PASSWORD"),
    ({"DISPATCHER_KAFKA_SSL_CERTFILE": "/c.pem"}, "DISPATCHER_KAFKA_SSL_KEYFILE"),
])
def test_bad_security_settings_name_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        _settings(**env)


def test_the_sasl_password_is_never_shown(caplog: pytest.LogCaptureFixture) -> None:
    s = _settings(**SASL_SSL)
    assert "kafka_sasl_password" in SECRET_FIELDS
    assert PASSWORD not in repr(s)
    assert PASSWORD not in str(s.redacted())
    assert s.redacted()["kafka_sasl_password"] == "<set>"
    for secret in ("pushy_api_key", "jwt_secret", "secret_keys"):
        assert secret in SECRET_FIELDS
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("dispatcher").info("settings", extra={"settings": s.redacted()})
    assert PASSWORD not in caplog.text
