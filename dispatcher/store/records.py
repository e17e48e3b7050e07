"""Frozen records: the rows the typed statements take and return (``from_row``).

A statement's input is a sequence of these records (the store transposes them into the
column arrays ``unnest`` takes); its output is read into these records, so no module
outside the store reads a driver row by column name. The HTTP handlers still read whole
``commands``/``devices`` rows (``get_command``, ``get_device``, ``api_list_commands``):
those return the driver's rows, which the handlers render column by column.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from dispatcher.lifecycle import Status

Row = Mapping[str, Any]
"""A driver row (``asyncpg.Record``) or any mapping with the same keys."""


@dataclass(frozen=True, slots=True)
class NewCommand:
    """A command ready to insert: secrets masked in ``params``, sealed in ``secret``."""

    id: str
    organization: str
    aos_enterprise: str
    aos_device: str
    mdm_user: str | None
    command: str
    params: dict[str, Any]
    secret: bytes | None
    status: Status
    duration_s: int
    expires_at: datetime
    created_at: datetime
    source: str = "kafka"
    user_name: str | None = None
    duration_nanos: int = 0
    """The fraction of a second of the validity (``duration_s`` is the whole seconds)."""
    created_by: str | None = None
    request_hash: str | None = None
    """Keyed hash of the HTTP request that created it (idempotency replays are compared)."""
    priority: str = "normal"
    """``high``, ``normal`` or ``low`` (lifecycle.default_priority when none was asked for)."""
    not_before: datetime | None = None
    """Not pushed before it (its validity runs from then); :data:`HELD` (with that
    ``expires_at`` too): a campaign's command whose wave is not released yet."""
    campaign: str | None = None
    wave: int | None = None


@dataclass(frozen=True, slots=True)
class Transition:
    """A command that moved (or was inserted: ``previous`` is None) by a statement."""

    id: str
    aos_device: str
    command: str
    status: str
    previous: str | None
    created_at: datetime
    organization: str | None = None
    cancelled_by: str | None = None

    @classmethod
    def from_row(cls, row: Row) -> Transition:
        """Read a moved row (``id, aos_device, command, status, created_at``, and
        ``previous``, ``organization``, ``cancelled_by`` when it has them)."""
        get = row.get
        return cls(row["id"], row["aos_device"], row["command"], row["status"],
                   get("previous"), row["created_at"], get("organization"), get("cancelled_by"))


@dataclass(frozen=True, slots=True)
class DeviceUpsert:
    """The registry state of one device, as its latest event gives it."""

    aos_device: str
    organization: str
    aos_enterprise: str
    mdm_user: str | None
    push_token: str | None
    state: str
    updated_at: datetime
    public_key: str | None = None
    push_provider: str | None = None


@dataclass(frozen=True, slots=True)
class DeviceUpserted:
    """A device whose stored state changed (an older event changes nothing)."""

    aos_device: str
    state: str
    has_token: bool

    @classmethod
    def from_row(cls, row: Row) -> DeviceUpserted:
        """Read a row of ``upsert_devices``."""
        return cls(row["aos_device"], row["state"], row["has_token"])


@dataclass(frozen=True, slots=True)
class CommandRef:
    """A command's device and status (``command_devices``)."""

    id: str
    aos_device: str
    status: str

    @classmethod
    def from_row(cls, row: Row) -> CommandRef:
        """Read a row of ``command_devices``."""
        return cls(row["id"], row["aos_device"], row["status"])


@dataclass(frozen=True, slots=True)
class LockedCommand:
    """The state an ack batch reads under lock (``lock_commands``)."""

    id: str
    aos_device: str
    organization: str
    status: str
    results: list[Any]
    results_dropped: int
    ack_keys: list[int]

    @classmethod
    def from_row(cls, row: Row) -> LockedCommand:
        """Read a row of ``lock_commands``."""
        return cls(row["id"], row["aos_device"], row["organization"], row["status"],
                   list(row["results"]), row["results_dropped"], list(row["ack_keys"]))


@dataclass(frozen=True, slots=True)
class AckWrite:
    """One guarded ack step (``apply_acks``): from ``expected`` to ``status``; the new
    results (JSON text), dropped count and fingerprints (array literal), or None: unchanged."""

    id: str
    expected: str
    status: str
    results: str | None = None
    results_dropped: int | None = None
    ack_keys: str | None = None
    error_type: str | None = None
    error_message: str | None = None


@dataclass(frozen=True, slots=True)
class NewHeld:
    """An ack or a cancel to hold until its command arrives (``hold_events``)."""

    kind: str
    command_id: str
    payload: dict[str, Any]
    source: dict[str, Any]


@dataclass(frozen=True, slots=True)
class HeldEvent:
    """A held event taken from ``held_events`` (``take_held_*``)."""

    kind: str
    command_id: str
    payload: dict[str, Any]
    source: dict[str, Any]
    seq: int

    @classmethod
    def from_row(cls, row: Row) -> HeldEvent:
        """Read a row of ``take_held_for``, ``take_held_ready`` or ``take_held_overdue``."""
        return cls(row["kind"], row["command_id"], row["payload"], row["source"], row["seq"])


@dataclass(frozen=True, slots=True)
class ClaimedPush:
    """A due row the push claim looked at; ``claimed``: send it now (its token is
    ``push_attempts``), else it was parked or rescheduled (``params``, ``secret`` and
    ``public_key`` are None then)."""

    id: str
    organization: str
    aos_device: str
    command: str
    params: dict[str, Any] | None
    secret: bytes | None
    public_key: str | None
    status: str
    expires_at: datetime
    created_at: datetime
    push_attempts: int
    pushes: int
    push_token: str | None
    push_provider: str | None
    reclaimed: bool
    claimed: bool
    priority: str = "normal"
    """The command's declared priority (metrics are labelled by it)."""
    rank: int = 1
    """The rank it was claimed by (0 high, 1 normal, 2 low; lifted by a newer command)."""
    due_at: datetime | None = None
    """When it became due (its ``next_push_at`` before the claim)."""

    @classmethod
    def from_row(cls, row: Row) -> ClaimedPush:
        """Read a row of ``claim_pushes``."""
        return cls(row["id"], row["organization"], row["aos_device"], row["command"],
                   row["params"], row["secret"], row["public_key"], row["status"],
                   row["expires_at"], row["created_at"], row["push_attempts"], row["pushes"],
                   row["push_token"], row["push_provider"], row["reclaimed"], row["claimed"],
                   row["priority"], row["rank"], row["due_at"])


@dataclass(frozen=True, slots=True)
class Budget:
    """What a take from a provider's shared rate budget gave: whole tokens, and the
    fraction of a token left (how long until the next one is the caller's to work out)."""

    granted: int
    left: float

    @classmethod
    def from_row(cls, row: Row) -> Budget:
        """Read a row of ``take_push_budget``."""
        return cls(row["granted"], row["left_tokens"])


@dataclass(frozen=True, slots=True)
class PushAnswer:
    """An accepted push to record (``push_accepted_many``), guarded by its claim token."""

    id: str
    push_id: str
    delivery_expires_at: datetime | None
    claim: int


@dataclass(frozen=True, slots=True)
class Accepted:
    """What recording accepted pushes did: the parked commands woken, and the answers not
    recorded because a later claim took their push over (``stale``)."""

    woken: list[str]
    stale: list[str]

    @classmethod
    def from_rows(cls, rows: list[Row]) -> Accepted:
        """Read the rows of ``push_accepted_many``."""
        return cls([r["woken"] for r in rows if r["woken"] is not None],
                   [r["stale"] for r in rows if r["stale"] is not None])


@dataclass(frozen=True, slots=True)
class RejectedPush:
    """A push that ended its command in ERROR, and whether the device's next command woke."""

    transition: Transition
    woke_next: bool

    @classmethod
    def from_row(cls, row: Row) -> RejectedPush:
        """Read the row of ``push_rejected``."""
        return cls(Transition.from_row(row), row["woke_next"])


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """A status event taken for the relay (``take_outbox``): its payload is JSON text."""

    seq: int
    command_id: str
    aos_device: str
    payload: str
    topic: str | None = None
    """The topic's name without prefix (``campaigns.status``); None: ``commands.status``."""

    @classmethod
    def from_row(cls, row: Row) -> OutboxEvent:
        """Read a row of ``take_outbox``."""
        return cls(row["seq"], row["command_id"], row["aos_device"], row["payload"],
                   row.get("topic"))


@dataclass(frozen=True, slots=True)
class OpenCount:
    """Open commands of one status and the creation time of the oldest (``open_gauges``)."""

    status: str
    n: int
    oldest: datetime

    @classmethod
    def from_row(cls, row: Row) -> OpenCount:
        """Read a row of ``open_gauges``."""
        return cls(row["status"], row["n"], row["oldest"])


@dataclass(frozen=True, slots=True)
class OutboxBacklog:
    """The status outbox's (capped) backlog and its oldest event's age (``outbox_gauges``)."""

    n: int
    oldest_age_s: float

    @classmethod
    def from_row(cls, row: Row) -> OutboxBacklog:
        """Read the row of ``outbox_gauges``."""
        return cls(row["n"], row["oldest_age_s"])


@dataclass(frozen=True, slots=True)
class TableRows:
    """Live and dead rows of ``commands`` as the statistics collector counts them."""

    live: int
    dead: int

    @classmethod
    def from_row(cls, row: Row) -> TableRows:
        """Read the row of ``table_rows``."""
        return cls(row["live"], row["dead"])


@dataclass(frozen=True, slots=True)
class ClaimOrder:
    """What a claim needs beyond its size: the organization each rank's round-robin
    resumes after (high, normal, low; ``""``: the first), and how many pushes each
    rate-limited provider's budget covers (None: no limit), the default provider
    being ``default_lane``."""

    cursors: tuple[str, str, str] = ("", "", "")
    budgets: dict[str, int] | None = None
    default_lane: str | None = None


@dataclass(frozen=True, slots=True)
class NewCampaign:
    """A campaign ready to insert: secrets masked in ``params``, sealed in ``secret``."""

    id: str
    organization: str
    aos_enterprise: str
    command: str
    params: dict[str, Any]
    secret: bytes | None
    duration_s: int
    duration_nanos: int
    not_before: datetime | None
    target_all: bool
    wave_size: int | None
    interval_s: float
    max_error_rate: float | None
    created_at: datetime
    created_by: str | None
    source: str
