"""The real service over HTTP: a module-scoped dispatcher, a client, tokens and devices."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import asyncpg
import pytest

from dispatcher.app import Runtime
from dispatcher.auth import PERMISSIONS, mint
from dispatcher.config import Settings
from dispatcher.store import QUERIES
from dispatcher_dev.fakepushy import FakePushy
from tests.helpers import ENTERPRISE, ORG, Kafka, hex24
from tests.service import PUSHY_KEY, running


@pytest.fixture(scope="module")
async def pushy() -> AsyncIterator[FakePushy]:
    fake = FakePushy(PUSHY_KEY)
    fake.url = await fake.start()  # type: ignore[attr-defined]
    yield fake
    await fake.stop()


@pytest.fixture(scope="module")
async def service(settings: Settings, pushy: FakePushy) -> AsyncIterator[Runtime]:
    async with running(settings, pushy, pushy_api_url=pushy.url) as rt:  # type: ignore[attr-defined]
        yield rt


@pytest.fixture(scope="module")
async def http(service: Runtime) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=service.http_url) as session:
        yield session


@pytest.fixture(scope="module")
def token(settings: Settings) -> Callable[..., str]:
    """A bearer header value for the test secret: token(orgs=[ORG], perms=PERMISSIONS)."""

    def make(orgs: list[str] | None = None, perms: tuple[str, ...] | list[str] = PERMISSIONS,
             ttl_s: int = 3600) -> str:
        return "Bearer " + mint(settings.jwt_secret, orgs or [ORG], perms, ttl_s=ttl_s)

    return make


@pytest.fixture(scope="module")
async def kafka(settings: Settings) -> AsyncIterator[Kafka]:
    k = Kafka(settings.kafka_bootstrap, settings.topic_prefix)
    await k.start()
    yield k
    await k.stop()


@pytest.fixture(scope="module")
def register(settings: Settings) -> Callable[..., Any]:
    """Put a device in the registry with the same upsert the mdm.devices stream uses."""

    async def add(org: str = ORG, enterprise: str = ENTERPRISE, mdm_user: str | None = None,
                  push_token: str | None = "tok", state: str = "ACTIVE") -> str:
        device = hex24()
        conn = await asyncpg.connect(settings.database_url)
        try:
            await conn.fetch(QUERIES["upsert_devices"], [device], [org], [enterprise],
                             [mdm_user], [f"{push_token}-{device}" if push_token else None],
                             [state], [datetime.now(UTC)], [None], [None])
        finally:
            await conn.close()
        return device

    return add
