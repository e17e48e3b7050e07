"""Fixtures shared by the in-process integration tests: one service per test module."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from dispatcher.app import Runtime
from dispatcher.config import Settings
from dispatcher_dev.fakepushy import FakePushy
from tests.helpers import Kafka
from tests.service import PUSHY_KEY, running


@pytest.fixture(scope="module")
async def kafka(settings: Settings) -> AsyncIterator[Kafka]:
    """An outside client of this module's topics."""
    k = Kafka(settings.kafka_bootstrap, settings.topic_prefix)
    await k.start()
    yield k
    await k.stop()


@pytest.fixture(scope="module")
async def pushy() -> AsyncIterator[FakePushy]:
    """The fake push provider of this module."""
    fake = FakePushy(PUSHY_KEY)
    fake.url = await fake.start()  # type: ignore[attr-defined]
    yield fake
    await fake.stop()


@pytest.fixture(scope="module")
async def service(settings: Settings, pushy: FakePushy) -> AsyncIterator[Runtime]:
    """The dispatcher, running in-process against the test servers."""
    async with running(settings, pushy, pushy_api_url=pushy.url) as rt:  # type: ignore[attr-defined]
        yield rt


@pytest.fixture(scope="module")
async def db(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    """A pool on this module's database, to see what the dispatcher stored."""
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=3)
    yield pool
    await pool.close()
