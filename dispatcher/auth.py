"""Bearer tokens: JWTs with ``org`` (organization ids or ``["*"]``), ``permissions`` and ``exp``.

HS256 tokens are checked with ``DISPATCHER_JWT_SECRET``; RS256 tokens with
``DISPATCHER_JWT_PUBLIC_KEY`` when it is set. The algorithm a token names picks the key,
and a key is only ever used with its own algorithm (no HS256-with-the-public-key
confusion). ``exp`` is required. ``DISPATCHER_JWT_AUDIENCE`` and ``DISPATCHER_JWT_ISSUER``,
when set, make ``aud`` and ``iss`` required and checked; when no audience is set a token's
``aud`` is not checked (PyJWT would refuse any token that has one).
``DISPATCHER_JWT_MAX_TTL_S`` refuses tokens that live longer (``exp - iat``) or lack ``iat``.

With ``DISPATCHER_STRICT_PERMISSIONS=true`` the destructive command types
(:data:`DESTRUCTIVE`) also need ``mdm.aosp.command.create.<TYPE>``.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jwt
from jwt.warnings import InsecureKeyLengthWarning

from dispatcher.config import Settings
from dispatcher.exceptions import DispatcherError

PERMISSIONS = ("mdm.aosp.command.create", "mdm.aosp.command.read", "mdm.aosp.command.cancel")
CREATE, READ, CANCEL = PERMISSIONS
CAMPAIGN_PERMISSIONS = (
    "mdm.aosp.campaign.create", "mdm.aosp.campaign.read", "mdm.aosp.campaign.cancel")
CAMPAIGN_CREATE, CAMPAIGN_READ, CAMPAIGN_CANCEL = CAMPAIGN_PERMISSIONS
ALL_PERMISSIONS = (*PERMISSIONS, *CAMPAIGN_PERMISSIONS)
"""What ``dispatcher token`` grants unless told otherwise."""
ANY_ORG = "*"
DESTRUCTIVE = frozenset({"WIPE", "RESET_PASSWORD", "DISENROLL", "RELINQUISH_OWNERSHIP"})
"""Command types that need :func:`type_permission` too under strict permissions."""


def type_permission(command: str) -> str:
    """The extra permission a destructive ``command`` needs: ``mdm.aosp.command.create.WIPE``."""
    return f"{CREATE}.{command}"


class AuthError(DispatcherError):
    """A request without a valid token, or without the right to do what it asks."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind  # missing | invalid | forbidden | org
        self.message = message


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a valid token speaks for."""

    subject: str
    orgs: frozenset[str]
    permissions: frozenset[str]

    def require(self, permission: str) -> None:
        """Raise AuthError(forbidden) unless the token grants ``permission``."""
        if permission not in self.permissions:
            raise AuthError("forbidden", f"Permission denied: {permission} is required")

    def require_type(self, command: str, strict: bool) -> None:
        """Under strict permissions, a destructive type needs its own permission too."""
        if strict and command in DESTRUCTIVE:
            self.require(type_permission(command))

    def covers(self, organization: str) -> bool:
        """Whether the token may act for ``organization``."""
        return ANY_ORG in self.orgs or organization in self.orgs


def mint(secret: str, orgs: Sequence[str], permissions: Sequence[str] = PERMISSIONS,
         ttl_s: int = 24 * 3600, subject: str = "dev", audience: str = "",
         issuer: str = "") -> str:
    """A signed HS256 token for development and tests (``aud``/``iss`` when given)."""
    now = int(time.time())
    claims: dict[str, object] = {"sub": subject, "org": list(orgs),
                                 "permissions": list(permissions), "iat": now,
                                 "exp": now + ttl_s}
    if audience:
        claims["aud"] = audience
    if issuer:
        claims["iss"] = issuer
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        return jwt.encode(claims, secret, algorithm="HS256")


def bearer(header: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header."""
    if header is None or not header.strip():
        raise AuthError("missing", "No auth token")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise AuthError("invalid", "Invalid Token")
    if not token.strip():
        raise AuthError("missing", "No auth token")
    return token.strip()


def verify(token: str, settings: Settings) -> Principal:
    """Check a token's signature, expiry and claims; raise AuthError(invalid) otherwise."""
    try:
        alg = str(jwt.get_unverified_header(token).get("alg"))
        key = _key_for(alg, settings)
        with warnings.catch_warnings():
            # A short HS256 secret is the operator's choice; it must not fail requests.
            warnings.simplefilter("ignore", InsecureKeyLengthWarning)
            claims = jwt.decode(token, key, algorithms=[alg], options=_options(settings),
                                audience=settings.jwt_audience or None,
                                issuer=settings.jwt_issuer or None)
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise AuthError("invalid", "Invalid Token") from exc
    orgs, perms = claims.get("org"), claims.get("permissions", [])
    if not isinstance(orgs, list) or not _strings(orgs) or not _strings(perms):
        raise AuthError("invalid", "Invalid Token")
    if not _short_lived(claims, settings.jwt_max_ttl_s):
        raise AuthError("invalid", "Invalid Token")
    return Principal(str(claims.get("sub", "")), frozenset(orgs), frozenset(perms or []))


def authenticate(header: str | None, settings: Settings) -> Principal:
    """The principal of an Authorization header, or AuthError."""
    return verify(bearer(header), settings)


def _options(settings: Settings) -> Any:  # jwt.types.Options (PyJWT >= 2.10 only)
    required = ["exp"]
    if settings.jwt_audience:
        required.append("aud")
    if settings.jwt_issuer:
        required.append("iss")
    if settings.jwt_max_ttl_s:
        required.append("iat")
    return {"require": required, "verify_aud": bool(settings.jwt_audience)}


def _short_lived(claims: dict[str, Any], max_ttl_s: int) -> bool:
    """Whether the token lives at most ``max_ttl_s`` (0: no limit; iat checked by PyJWT)."""
    if not max_ttl_s:
        return True
    exp, iat = claims.get("exp"), claims.get("iat")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (exp, iat)):
        return False
    return float(exp) - float(iat) <= max_ttl_s  # type: ignore[arg-type]


def _key_for(alg: str, settings: Settings) -> str:
    if alg == "HS256" and settings.jwt_secret:
        return settings.jwt_secret
    if alg == "RS256" and settings.jwt_public_key:
        return settings.jwt_public_key
    raise ValueError(f"no key for algorithm {alg!r}")


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)
