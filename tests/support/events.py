"""Event factories of the dispatcher's input topics, and the ids and times they carry."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any


def hex24() -> str:
    return secrets.token_hex(12)


def iso(dt: datetime | None = None) -> str:
    return (dt or datetime.now(UTC)).isoformat().replace("+00:00", "Z")


def overdue(seconds: int = 3600) -> str:
    return iso(datetime.now(UTC) - timedelta(seconds=seconds))


ORG = "5f1e2d3c4b5a69788796a5b4"
ENTERPRISE = "5f1e2d3c4b5a69788796a5b5"


def command_event(device: str, **over: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"id": hex24(), "organization": ORG, "aosEnterprise": ENTERPRISE,
             "aosDevice": device, "mdmUser": None, "command": "LOCK", "params": {},
             "duration": 600, "createdAt": iso()}
    event.update(over)
    return event


def queued_event(device: str, **over: Any) -> dict[str, Any]:
    """A command no newer command of its device supersedes (CLEAR_APP_DATA carries its own
    params): for tests that send several commands to one device and follow each."""
    return command_event(device, command="CLEAR_APP_DATA",
                         params={"packageNames": ["com.example.app"]}, **over)


def device_event(device: str, token: str | None = "tok-", state: str = "ACTIVE",
                 **over: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"aosDevice": device, "organization": ORG, "aosEnterprise": ENTERPRISE,
             "mdmUser": None, "pushToken": (token + device) if token == "tok-" else token,
             "state": state, "updatedAt": iso()}
    event.update(over)
    return event


def ack_event(command_id: str, device: str, status: str, at: datetime | None = None,
              **over: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"commandId": command_id, "aosDevice": device, "status": status,
             "at": iso(at), "data": {}}
    event.update(over)
    return event
