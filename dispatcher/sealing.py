"""Secrets sealed to the device's own key inside the push (docs/sealed-secrets.md).

A device whose ``mdm.devices`` event carries ``publicKey`` (PEM SubjectPublicKeyInfo:
RSA of 2048 bits or more, or EC P-256) receives its command's secrets only as
``data.sealed``, which the push provider and anything between it and the device cannot
read. Two standard hybrid schemes, with the command id as associated data so a sealed
box cannot be replayed onto another command:

- ``ECDH-ES+A256GCM`` (EC P-256): an ephemeral P-256 key pair; ECDH with the device key;
  HKDF-SHA256 (salt: the command id, info: ``dispatcher-sealed-secret v1``) gives a
  32-byte key; AES-256-GCM, 12-byte IV. ``epk``: the ephemeral public key, uncompressed
  X9.62 point (65 bytes).
- ``RSA-OAEP-256+A256GCM`` (RSA): a random 32-byte key, encrypted with RSA-OAEP
  (SHA-256, MGF1-SHA-256, no label) as ``ek``; AES-256-GCM, 12-byte IV.

``ct`` is the AES-GCM ciphertext followed by its 16-byte tag. Binary fields are standard
base64 with padding. ``kid`` is the first 16 hex digits of SHA-256 of the device key's DER
SubjectPublicKeyInfo. The plaintext is UTF-8 JSON ``{"secrets": [{"path": [...], "value":
...}]}``: each path (object keys and list indices) says where the value goes in
``data.params``. :func:`open_sealed` is the reference a device implements.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from dispatcher.secretbox import Secret

EC_ALG = "ECDH-ES+A256GCM"
RSA_ALG = "RSA-OAEP-256+A256GCM"
HKDF_INFO = b"dispatcher-sealed-secret v1"
MIN_RSA_BITS = 2048
PEM_MAX_CHARS = 8192
DeviceKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
_OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def load_device_key(pem: str) -> DeviceKey:
    """The device key of a PEM text; ValueError saying why it is not acceptable."""
    if len(pem) > PEM_MAX_CHARS:
        raise ValueError(f"is longer than {PEM_MAX_CHARS} characters")
    return _load(pem)


@lru_cache(maxsize=1024)  # at most 8 MB of PEM text; typically 0.5 MB
def _load(pem: str) -> DeviceKey:
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError) as exc:
        raise ValueError("is not a PEM public key (SubjectPublicKeyInfo)") from exc
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(f"is an RSA key of {key.key_size} bits, fewer than {MIN_RSA_BITS}")
        return key
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    raise ValueError("must be an RSA key of 2048 bits or more, or an EC P-256 key")


def key_id(key: DeviceKey) -> str:
    """First 16 hex digits of SHA-256 of the key's DER SubjectPublicKeyInfo."""
    der = key.public_bytes(serialization.Encoding.DER,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()[:16]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _hkdf(shared: bytes, command_id: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=command_id.encode(),
                info=HKDF_INFO).derive(shared)


def seal(pem: str, command_id: str, secrets: Sequence[Secret]) -> dict[str, Any]:
    """The ``sealed`` object of a push: the secrets, readable only with the device's key."""
    key = load_device_key(pem)
    plain = json.dumps({"secrets": [{"path": list(path), "value": value}
                                    for path, value in secrets]}).encode()
    aad = command_id.encode()
    iv = os.urandom(12)
    box: dict[str, Any] = {"kid": key_id(key)}
    if isinstance(key, rsa.RSAPublicKey):
        cek = AESGCM.generate_key(bit_length=256)
        box.update(alg=RSA_ALG, ek=_b64(key.encrypt(cek, _OAEP)))
    else:
        ephemeral = ec.generate_private_key(ec.SECP256R1())
        cek = _hkdf(ephemeral.exchange(ec.ECDH(), key), command_id)
        epk = ephemeral.public_key().public_bytes(serialization.Encoding.X962,
                                                  serialization.PublicFormat.UncompressedPoint)
        box.update(alg=EC_ALG, epk=_b64(epk))
    box.update(iv=_b64(iv), ct=_b64(AESGCM(cek).encrypt(iv, plain, aad)))
    return box


def open_sealed(private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
                command_id: str, box: dict[str, Any]) -> list[dict[str, Any]]:
    """What a device does with ``data.sealed``: the list of ``{"path", "value"}`` secrets."""
    if box["alg"] == RSA_ALG and isinstance(private_key, rsa.RSAPrivateKey):
        cek = private_key.decrypt(base64.b64decode(box["ek"]), _OAEP)
    elif box["alg"] == EC_ALG and isinstance(private_key, ec.EllipticCurvePrivateKey):
        epk = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(),
                                                           base64.b64decode(box["epk"]))
        cek = _hkdf(private_key.exchange(ec.ECDH(), epk), command_id)
    else:
        raise ValueError(f"cannot open {box.get('alg')!r} with this key")
    plain = AESGCM(cek).decrypt(base64.b64decode(box["iv"]), base64.b64decode(box["ct"]),
                                command_id.encode())
    secrets: list[dict[str, Any]] = json.loads(plain)["secrets"]
    return secrets
