"""Claimed pushes as ``claim_pushes`` returns them, for the push path's unit tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from dispatcher.store.records import ClaimedPush


def claimed_push(**fields: Any) -> ClaimedPush:
    """A claimed row (a token, params, ten minutes of validity) with ``fields`` changed."""
    now = datetime.now(UTC)
    base: dict[str, Any] = {
        "id": "c" * 24, "organization": "a" * 24, "aos_device": "d" * 24, "command": "REBOOT",
        "params": {}, "secret": None, "public_key": None, "status": "PENDING",
        "expires_at": now + timedelta(seconds=600), "created_at": now, "push_attempts": 1,
        "pushes": 0, "push_token": "tok", "push_provider": None, "reclaimed": False,
        "claimed": True,
    }
    return ClaimedPush(**(base | fields))
