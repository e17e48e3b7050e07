"""The audit trail: one JSON log line per command created or cancelled, by whom.

Logger ``dispatcher.audit``; fields ``actor`` (the token's ``sub`` over HTTP, the event's
``createdBy``/``cancelledBy`` or else its topic over Kafka), ``action`` (``create``,
``cancel``, ``create_campaign``, ``cancel_campaign``), ``command`` (the command id, or the
campaign's), ``device`` and ``organization``. Entries are gathered in
:class:`~dispatcher.effects.Effects` while a transaction runs and written once it has
committed, so a line stands for a change that happened. Nothing else is written: never
params, secrets or tokens. A record costs no database round trip (the actors are
known before the statement, and a cancel's statement returns them).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger("dispatcher.audit")

CREATE, CANCEL = "create", "cancel"
CREATE_CAMPAIGN, CANCEL_CAMPAIGN = "create_campaign", "cancel_campaign"
"""A campaign is audited once (``command``: the campaign id, ``device`` empty), not per
command it creates."""


@dataclass(frozen=True, slots=True)
class Entry:
    """Who did what to which command."""

    actor: str | None
    action: str
    command: str
    device: str
    organization: str


def write(entries: list[Entry]) -> None:
    """One log line per entry (skipped entirely when the audit logger is off)."""
    if not entries or not log.isEnabledFor(logging.INFO):
        return
    for e in entries:
        log.info("audit", extra={"actor": e.actor, "action": e.action, "command": e.command,
                                 "device": e.device, "organization": e.organization})
