"""The push of a claimed row: the data the device gets, its time to live, its secrets.

A command's secrets are stored encrypted (``secretbox``) and go to the device sealed to its
public key (``sealing``: ``params`` keep their placeholders, ``sealed`` carries the
values), or put back into ``params`` in clear for a device without a key, unless
``DISPATCHER_REQUIRE_SEALED_SECRETS`` refuses that. A secret that cannot go raises
:class:`SecretRefused`: a push is never sent without its secret.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from dispatcher import sealing
from dispatcher.exceptions import NoDeviceKey
from dispatcher.push.providers import PushRequest
from dispatcher.secretbox import SecretBox, reveal, strip
from dispatcher.store.records import ClaimedPush


def build_request(row: ClaimedPush, box: SecretBox, require_sealed: bool) -> PushRequest:
    """The push of a claimed row, its secrets put back (or sealed to the device's key).

    Raises SecretRefused when the secret cannot go: it is never pushed without it.
    """
    # claim_pushes returns the token and params of every claimed row (None: not claimed)
    assert row.claimed, "only a claimed row is pushed"
    assert row.push_token is not None, "a claimed row has a token"
    ttl = int((row.expires_at - datetime.now(UTC)).total_seconds())
    data: dict[str, Any] = {"commandId": row.id, "command": row.command,
                            "params": row.params or {},
                            "expiresAt": row.expires_at.isoformat().replace("+00:00", "Z")}
    if row.secret is not None:
        data.update(_with_secrets(row, box, require_sealed))
    return PushRequest(row.id, row.push_token, data, max(ttl, 1))


def _with_secrets(row: ClaimedPush, box: SecretBox, require_sealed: bool) -> dict[str, Any]:
    """``params`` with the secrets back in clear, or without them and ``sealed`` beside."""
    key = row.public_key
    if key is None and require_sealed:
        raise NoDeviceKey("the device has no publicKey and "
                          "DISPATCHER_REQUIRE_SEALED_SECRETS refuses secrets in clear")
    secrets = box.open(row.id, row.secret)
    if key is None:
        return {"params": reveal(row.params or {}, secrets)}
    params = strip(row.params or {}, secrets)
    try:
        sealed = sealing.seal(key, row.id, secrets)
    except ValueError as exc:  # validated at ingest: only a key edited in place
        raise NoDeviceKey(f"the device's publicKey {exc}") from exc
    return {"params": params, "sealed": sealed}
