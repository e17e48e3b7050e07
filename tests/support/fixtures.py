"""Pytest plugin, the in-process service and its clients (one of each per test module).

Also ``pki``: a test PKI per module (the TLS tests).

Used by tests/integration and tests/api; tests/acceptance overrides ``service`` with a
`dispatcher run` subprocess. A test module may override any of them with its own; one whose
tests each run on ``fresh`` takes its ``kafka`` and ``db`` from :func:`fresh_kafka` and
:func:`fresh_db` (``kafka = pytest.fixture(fresh_kafka)``), and a started fake FCM from
:func:`serving_fcm`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest

from dispatcher.config import Settings
from dispatcher.runtime import Runtime
from dispatcher_dev.fakefcm import FakeFcm
from dispatcher_dev.fakepushy import FakePushy
from tests.support.kafka import Kafka
from tests.support.service import PUSHY_KEY, running
from tests.support.tlsutil import Pki, make_pki


@pytest.fixture(scope="module")
async def kafka(settings: Settings) -> AsyncIterator[Kafka]:
    """An outside client of this module's topics."""
    k = Kafka(settings.kafka_bootstrap, settings.topic_prefix)
    await k.start()
    yield k
    await k.stop()


async def fresh_kafka(fresh: Settings) -> AsyncIterator[Kafka]:
    """An outside client of this test's own topics (a per-test ``kafka``)."""
    k = Kafka(fresh.kafka_bootstrap, fresh.topic_prefix)
    await k.start()
    yield k
    await k.stop()


async def fresh_db(fresh: Settings) -> AsyncIterator[asyncpg.Connection]:
    """A connection to this test's own database (a per-test ``db``)."""
    conn = await asyncpg.connect(fresh.database_url)
    yield conn
    await conn.close()


@asynccontextmanager
async def serving_fcm(project_id: str, credentials: Path) -> AsyncIterator[FakeFcm]:
    """A started fake FCM of ``project_id``, its service account written to ``credentials``."""
    fake = FakeFcm(project_id)
    await fake.start()
    fake.write_credentials(credentials)
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture(scope="module")
async def pushy() -> AsyncIterator[FakePushy]:
    """The fake push provider of this module, started (``pushy.url``)."""
    fake = FakePushy(PUSHY_KEY)
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture(scope="module")
async def service(settings: Settings, pushy: FakePushy) -> AsyncIterator[Runtime]:
    """The dispatcher, running in-process against the test servers."""
    async with running(settings, pushy) as rt:
        yield rt


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """This module's test PKI: a CA, server and client certificates, an unrelated CA."""
    return make_pki(tmp_path_factory.mktemp("pki"))
