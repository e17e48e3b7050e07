"""Bearer tokens: JWTs with ``org`` (organization ids or ``["*"]``), ``permissions`` and ``exp``."""

from __future__ import annotations

import time
from collections.abc import Sequence

import jwt

PERMISSIONS = ("mdm.aosp.command.create", "mdm.aosp.command.read", "mdm.aosp.command.cancel")


def mint(secret: str, orgs: Sequence[str], permissions: Sequence[str] = PERMISSIONS,
         ttl_s: int = 24 * 3600, subject: str = "dev") -> str:
    """A signed HS256 token for development and tests."""
    now = int(time.time())
    claims = {"sub": subject, "org": list(orgs), "permissions": list(permissions),
              "iat": now, "exp": now + ttl_s}
    return jwt.encode(claims, secret, algorithm="HS256")
