"""The in-process integration tests' own fixture: a pool on the module's database.

The service, its fake Pushy and the Kafka client are shared (tests/support/fixtures.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from dispatcher.config import Settings


@pytest.fixture(scope="module")
async def db(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    """A pool on this module's database, to see what the dispatcher stored."""
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=3)
    yield pool
    await pool.close()
