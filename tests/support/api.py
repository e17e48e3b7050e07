"""The types of the HTTP API tests' fixtures (tests/api/conftest.py)."""

from __future__ import annotations

from typing import Protocol

from dispatcher.auth import PERMISSIONS
from tests.support.events import ENTERPRISE, ORG


class Token(Protocol):
    """Makes a bearer header value for the test secret."""

    def __call__(self, orgs: list[str] | None = None,
                 perms: tuple[str, ...] | list[str] = PERMISSIONS, ttl_s: int = 3600) -> str:
        ...


class Register(Protocol):
    """Puts a device in the registry; returns its id."""

    async def __call__(self, org: str = ORG, enterprise: str = ENTERPRISE,
                       mdm_user: str | None = None, push_token: str | None = "tok",
                       state: str = "ACTIVE") -> str:
        ...
