"""The real service over HTTP: a client, tokens and devices.

The module-scoped dispatcher, its fake Pushy and the Kafka client are shared
(tests/support/fixtures.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import aiohttp
import pytest

from dispatcher.auth import PERMISSIONS, mint
from dispatcher.config import Settings
from dispatcher.runtime import Runtime
from dispatcher.store import Store
from dispatcher.store.records import DeviceUpsert
from tests.support.api import Register, Token
from tests.support.events import ENTERPRISE, ORG, hex24


@pytest.fixture(scope="module")
async def http(service: Runtime) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(base_url=service.http_url) as session:
        yield session


@pytest.fixture(scope="module")
def token(settings: Settings) -> Token:
    """A bearer header value for the test secret: token(orgs=[ORG], perms=PERMISSIONS)."""

    def make(orgs: list[str] | None = None, perms: tuple[str, ...] | list[str] = PERMISSIONS,
             ttl_s: int = 3600) -> str:
        return "Bearer " + mint(settings.jwt_secret, orgs or [ORG], perms, ttl_s=ttl_s)

    return make


@pytest.fixture(scope="module")
def register(settings: Settings) -> Register:
    """Put a device in the registry with the same upsert the mdm.devices stream uses."""

    async def add(org: str = ORG, enterprise: str = ENTERPRISE, mdm_user: str | None = None,
                  push_token: str | None = "tok", state: str = "ACTIVE") -> str:
        device = hex24()
        store = await Store.connect(settings.database_url, min_size=1, max_size=1)
        try:
            await store.upsert_devices([DeviceUpsert(
                device, org, enterprise, mdm_user,
                f"{push_token}-{device}" if push_token else None, state, datetime.now(UTC))])
        finally:
            await store.close()
        return device

    return add
