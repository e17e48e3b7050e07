"""Questions to the fake push providers (dispatcher_dev.fakepushy), shared by the tests."""

from __future__ import annotations

from dispatcher_dev.fakepushy import FakePushy


async def was_pushed(pushy: FakePushy, command_id: str) -> bool:
    """Whether the fake accepted a push of this command."""
    return any(r.data.get("commandId") == command_id for r in pushy.accepted)


async def accepted_at_least(pushy: FakePushy, n: int) -> bool:
    """Whether the fake accepted ``n`` pushes or more."""
    return len(pushy.accepted) >= n
