"""Command secrets (reset passwords and the like): split out, encrypted at rest, redacted.

A secret parameter never reaches a log, a metric, a status event, a dead letter or an
API answer: :func:`split` takes it out of ``params`` before anything stores or shows
them, :class:`SecretBox` encrypts it (AES-256-GCM) for the one place that needs it
again, the push payload, and the store erases it when a command reaches a terminal status.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from dispatcher import safejson

SECRET_KEYS: frozenset[str] = frozenset(
    {"newPassword", "password", "passcode", "pin", "unlockPin", "secret", "token", "apiKey"}
)
"""Parameter names whose values are secrets, at any depth of ``params``."""

REDACTED = "***"
_KEY_PATTERN = "|".join(sorted(re.escape(k) for k in SECRET_KEYS | {"api_key", "pushToken"}))
# a quoted secret value; possessive and ending at the end of an unterminated string, so
# the scan is linear whatever the text
_RAW_SECRET = re.compile(
    rf'("(?:{_KEY_PATTERN})"\s*:\s*)"(?:[^"\\]++|\\[\s\S])*+(?:"|\\?\Z)')
_QUERY_SECRET = re.compile(r"(api_key=)[^&\s\"']+")
_FALLBACK_KEY = "dispatcher-built-in-key: set DISPATCHER_SECRET_KEY"


def split(params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``params`` without secrets, and the secrets alone (top-level keys only)."""
    public = {k: v for k, v in params.items() if k not in SECRET_KEYS}
    secret = {k: v for k, v in params.items() if k in SECRET_KEYS}
    return public, secret


def redact(value: Any) -> Any:
    """A copy of a JSON value with every secret key's value replaced, at any depth."""
    if isinstance(value, dict):
        return {k: (REDACTED if k in SECRET_KEYS else redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def redact_text(text: str) -> str:
    """Best effort for text that may not parse: blank quoted secret values and api keys."""
    text = _RAW_SECRET.sub(rf'\1"{REDACTED}"', text)
    return _QUERY_SECRET.sub(rf"\1{REDACTED}", text)


def redact_raw(raw: bytes) -> bytes:
    """A raw event value with secrets redacted, whether or not it is valid JSON.

    Cannot fail and never recurses without bound: a value that is not JSON, or nests too
    deep to walk, is redacted as text (bytes that are not UTF-8 kept as they were).
    """
    try:
        decoded = safejson.loads(raw)
    except ValueError:
        text = raw.decode("utf-8", "surrogateescape")
        return redact_text(text).encode("utf-8", "surrogateescape")
    return json.dumps(redact(decoded), ensure_ascii=False).encode()


class SecretBox:
    """AES-256-GCM with a key derived from the configured secret."""

    def __init__(self, key_material: str) -> None:
        self.uses_fallback_key = not key_material
        material = key_material or _FALLBACK_KEY
        self._aead = AESGCM(hashlib.sha256(material.encode()).digest())

    def seal(self, secret: dict[str, Any]) -> bytes | None:
        """Encrypt a secrets dict; None when there is nothing to keep."""
        if not secret:
            return None
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, json.dumps(secret).encode(), b"dispatcher")

    def open(self, sealed: bytes | None) -> dict[str, Any]:
        """Decrypt what :meth:`seal` made; an unreadable box yields no secrets."""
        if not sealed:
            return {}
        try:
            plain = self._aead.decrypt(sealed[:12], sealed[12:], b"dispatcher")
        except InvalidTag:
            return {}
        result: dict[str, Any] = json.loads(plain)
        return result
