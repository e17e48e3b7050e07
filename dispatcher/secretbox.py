"""Command secrets (reset passwords, PINs, eSIM activation codes): split out, encrypted at
rest, masked in everything shown.

A secret parameter never reaches a log, a metric, a status event, a dead letter or an
API answer: :func:`split` takes every secret value out of ``params``, at any depth, and
leaves the mask ``***`` in its place; :class:`SecretBox` encrypts the values (AES-256-GCM)
for the one place that needs them again, the push; the store erases them when a command
reaches a terminal status.

Keys (``DISPATCHER_SECRET_KEYS``): ``kid:base64key[,kid:base64key...]``, 32-byte keys.
The first encrypts; every one decrypts, found by the key id written in each ciphertext:

    b"v1:" + kid + b":" + nonce (12 bytes) + AES-256-GCM(plaintext) with its 16-byte tag

with the associated data ``"v1:" + kid + ":" + command id``: a ciphertext copied onto
another command, or relabelled with another key id, does not decrypt. The plaintext is
the JSON list of ``[path, value]`` pairs (path: the keys and list indices leading to the
secret in ``params``). Rotation: put a new key first, keep the old ones until every
command they encrypted has ended (at most the longest command duration).

Legacy ciphertexts (written before key ids: ``nonce + ciphertext`` under SHA-256 of the
old ``DISPATCHER_SECRET_KEY``, associated data ``dispatcher``, a JSON object of top-level
secrets) are read with the key whose id is ``legacy``, if one is configured; otherwise
they are unreadable, and their commands end ``ERROR`` ``SECRET_UNREADABLE`` at the push.

A secret that cannot be decrypted raises :class:`SecretUnreadable`: it is never dropped.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import hmac
import json
import os
import re
from collections.abc import Sequence
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from dispatcher import safejson
from dispatcher.exceptions import ConfigError, SecretUnreadable

SECRET_KEYS: frozenset[str] = frozenset(
    {"newPassword", "password", "passcode", "pin", "unlockPin", "secret", "token", "apiKey",
     "activationCode"}
)
"""Parameter names whose values are secrets, at any depth of ``params``."""

REDACTED = "***"
KEYS_VARIABLE = "DISPATCHER_SECRET_KEYS"
LEGACY_KID = "legacy"
"""Key id of the key that reads ciphertexts written before key ids (see the module doc)."""
_KID = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
_VERSION = b"v1:"
_NONCE = 12
_KEY_PATTERN = "|".join(sorted(re.escape(k) for k in SECRET_KEYS | {"api_key", "pushToken"}))
# a quoted secret value; possessive and ending at the end of an unterminated string, so
# the scan is linear whatever the text
_RAW_SECRET = re.compile(
    rf'("(?:{_KEY_PATTERN})"\s*:\s*)"(?:[^"\\]++|\\[\s\S])*+(?:"|\\?\Z)')
_QUERY_SECRET = re.compile(r"(api_key=)[^&\s\"']+")

PathPart = str | int
Secret = tuple[tuple[PathPart, ...], Any]
"""One secret: where it sits in ``params`` (keys and list indices) and its value."""


def split(params: dict[str, Any]) -> tuple[dict[str, Any], list[Secret]]:
    """``params`` with every secret value masked, at any depth, and the secrets by path."""
    found: list[Secret] = []
    masked = _mask(params, (), found)
    return masked, found


def _mask(value: Any, path: tuple[PathPart, ...], found: list[Secret]) -> Any:
    # depth is bounded: every params object comes through safejson (at most 32 levels)
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key in SECRET_KEYS:
                found.append(((*path, key), item))
                out[key] = REDACTED
            else:
                out[key] = _mask(item, (*path, key), found)
        return out
    if isinstance(value, list):
        return [_mask(item, (*path, i), found) for i, item in enumerate(value)]
    return value


def reveal(params: dict[str, Any], secrets: Sequence[Secret]) -> dict[str, Any]:
    """A copy of masked ``params`` with the secrets put back where they were."""
    out = copy.deepcopy(params)
    for path, value in secrets:
        parent, last = _parent(out, path, create=True)
        parent[last] = value
    return out


def strip(params: dict[str, Any], secrets: Sequence[Secret]) -> dict[str, Any]:
    """A copy of masked ``params`` without the secrets' entries (they travel sealed)."""
    out = copy.deepcopy(params)
    for path, _ in secrets:
        parent, last = _parent(out, path, create=False)
        if isinstance(parent, dict):  # a secret is always an object's entry
            parent.pop(last, None)
    return out


def _fits(node: Any, part: PathPart) -> bool:
    if isinstance(node, dict):
        return isinstance(part, str)
    return isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)


def _parent(root: Any, path: tuple[PathPart, ...], create: bool) -> tuple[Any, PathPart]:
    """The container holding ``path``'s last part; with ``create``, missing objects are made."""
    if not path:
        raise SecretUnreadable("a secret without a place in params")
    node = root
    for part in path[:-1]:
        if not _fits(node, part):
            if create:
                raise SecretUnreadable("a secret's place is not in the command's params")
            return None, path[-1]
        if isinstance(node, dict):
            if create and part not in node:
                node[part] = {}
            node = node.get(part)
        else:
            node = node[int(part)]
    if create and not _fits(node, path[-1]):
        raise SecretUnreadable("a secret's place is not in the command's params")
    return node, path[-1]


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


def parse_keys(text: str) -> list[tuple[str, bytes]]:
    """``kid:base64key[,kid:base64key...]`` -> [(kid, 32-byte key)].

    A malformed value raises ConfigError naming the variable.
    """
    keys: list[tuple[str, bytes]] = []
    for item in (part.strip() for part in text.split(",")):
        kid, sep, encoded = item.partition(":")
        if not sep or not _KID.match(kid):
            raise ConfigError(f"{KEYS_VARIABLE}: each entry is kid:base64key, the kid 1-32 "
                              "letters, digits, '_', '-' or '.'")
        try:
            key = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ConfigError(f"{KEYS_VARIABLE}: the key of {kid!r} is not base64") from exc
        if len(key) != 32:
            raise ConfigError(f"{KEYS_VARIABLE}: the key of {kid!r} is {len(key)} bytes, not 32")
        if kid in (k for k, _ in keys):
            raise ConfigError(f"{KEYS_VARIABLE}: the key id {kid!r} is given twice")
        keys.append((kid, key))
    return keys


def generate_keys(kid: str = "k1") -> str:
    """A new ``DISPATCHER_SECRET_KEYS`` value: one random 32-byte key."""
    return f"{kid}:{base64.b64encode(os.urandom(32)).decode()}"


def _secrets(plain: bytes) -> list[Secret]:
    try:
        return [(tuple(path), value) for path, value in json.loads(plain)]
    except (ValueError, TypeError) as exc:
        raise SecretUnreadable("a decrypted secret that is not a list of [path, value]") from exc


def _aad(kid: str, command_id: str) -> bytes:
    return f"v1:{kid}:{command_id}".encode()


class SecretBox:
    """AES-256-GCM under a key ring: the first key encrypts, every key decrypts."""

    def __init__(self, keys: str | Sequence[tuple[str, bytes]]) -> None:
        ring = parse_keys(keys) if isinstance(keys, str) and keys.strip() else keys
        if not ring or isinstance(ring, str):
            raise ConfigError(f"{KEYS_VARIABLE} is required: kid:base64key with a 32-byte key "
                              "(e.g. k1:$(openssl rand -base64 32))")
        self.primary = ring[0][0]
        self._aeads = {kid: AESGCM(key) for kid, key in ring}
        # a separate key per ring key for fingerprints (never the encryption key itself)
        self._macs = {kid: hmac.new(key, b"dispatcher request fingerprint v1",
                                    hashlib.sha256).digest() for kid, key in ring}

    def fingerprint(self, data: bytes) -> str:
        """``kid:hex``: HMAC-SHA256 of ``data`` under the first key (a request that holds a
        secret can be recognised without keeping it, or a guessable hash of it)."""
        mac = hmac.new(self._macs[self.primary], data, hashlib.sha256).hexdigest()
        return f"{self.primary}:{mac}"

    def same_fingerprint(self, data: bytes, stored: str) -> bool | None:
        """Whether ``stored`` is the fingerprint of ``data``; None when its key is gone."""
        kid, _, mac = stored.rpartition(":")
        key = self._macs.get(kid)
        if key is None:
            return None
        return hmac.compare_digest(hmac.new(key, data, hashlib.sha256).hexdigest(), mac)

    @property
    def key_ids(self) -> list[str]:
        """The configured key ids, the encrypting one first."""
        return list(self._aeads)

    def seal(self, command_id: str, secrets: Sequence[Secret]) -> bytes | None:
        """Encrypt a command's secrets, bound to its id; None when there is nothing to keep."""
        if not secrets:
            return None
        nonce = os.urandom(_NONCE)
        plain = json.dumps([[list(path), value] for path, value in secrets]).encode()
        sealed = self._aeads[self.primary].encrypt(nonce, plain, _aad(self.primary, command_id))
        return _VERSION + self.primary.encode() + b":" + nonce + sealed

    def open(self, command_id: str, sealed: bytes | None) -> list[Secret]:
        """Decrypt what :meth:`seal` made for this command; SecretUnreadable when it cannot."""
        if not sealed:
            return []
        sealed = bytes(sealed)
        if sealed.startswith(_VERSION):
            kid, sep, body = sealed[len(_VERSION):].partition(b":")
            aead = self._aeads.get(kid.decode("ascii", "replace")) if sep else None
            if aead is not None and len(body) > _NONCE:
                try:
                    plain = aead.decrypt(body[:_NONCE], body[_NONCE:],
                                         _aad(kid.decode("ascii"), command_id))
                except InvalidTag:
                    pass
                else:
                    return _secrets(plain)
        legacy = self._open_legacy(sealed)
        if legacy is not None:
            return legacy
        raise SecretUnreadable(self._why(sealed))

    def _open_legacy(self, sealed: bytes) -> list[Secret] | None:
        aead = self._aeads.get(LEGACY_KID)
        if aead is None or len(sealed) <= _NONCE:
            return None
        try:
            plain = aead.decrypt(sealed[:_NONCE], sealed[_NONCE:], b"dispatcher")
        except InvalidTag:
            return None
        try:
            return [((name,), value) for name, value in json.loads(plain).items()]
        except (ValueError, AttributeError) as exc:
            raise SecretUnreadable("a legacy secret that is not a JSON object") from exc

    def _why(self, sealed: bytes) -> str:
        if not sealed.startswith(_VERSION):
            return (f"the secret was stored without a key id and no {LEGACY_KID!r} key is "
                    f"configured in {KEYS_VARIABLE}")
        kid = sealed[len(_VERSION):].partition(b":")[0].decode("ascii", "replace")[:32]
        if kid not in self._aeads:
            return f"the secret was encrypted with key {kid!r}, which is not in {KEYS_VARIABLE}"
        return (f"the secret does not decrypt with key {kid!r}: another key under that id, "
                "or a ciphertext that belongs to another command")
