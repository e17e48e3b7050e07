"""The command lifecycle as pure functions: statuses, allowed transitions, deadlines, backoff.

``PENDING -> RECEIVED -> DONE | ERROR``; ``PENDING -> DONE | ERROR`` (an ack may skip
RECEIVED); ``PENDING | RECEIVED -> EXPIRED`` once ``createdAt + duration`` has passed;
``PENDING | RECEIVED -> CANCEL`` on request. ``DONE ERROR EXPIRED CANCEL`` are terminal.
A newer command of a device may make an older PENDING one moot (:func:`supersedes`), and
each command has a priority (:func:`default_priority`). No I/O here: the store applies
these decisions as guarded statements.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum

from dispatcher.exceptions import StoreRejected


class Status(StrEnum):
    """Status of a command."""

    PENDING = "PENDING"
    RECEIVED = "RECEIVED"
    DONE = "DONE"
    ERROR = "ERROR"
    EXPIRED = "EXPIRED"
    CANCEL = "CANCEL"


class AckStatus(StrEnum):
    """What a device gateway may report."""

    RECEIVED = "RECEIVED"
    DONE = "DONE"
    ERROR = "ERROR"


class CommandType(StrEnum):
    """Command types of seed 000 plus those of the Android Management API (seed 001)."""

    REBOOT = "REBOOT"
    LOCK = "LOCK"
    CLEAR_APP_DATA = "CLEAR_APP_DATA"
    RESET_PASSWORD = "RESET_PASSWORD"  # noqa: S105 (a command name, not a password)
    DISENROLL = "DISENROLL"
    RELINQUISH_OWNERSHIP = "RELINQUISH_OWNERSHIP"
    START_LOST_MODE = "START_LOST_MODE"
    STOP_LOST_MODE = "STOP_LOST_MODE"
    ADD_ESIM = "ADD_ESIM"
    REMOVE_ESIM = "REMOVE_ESIM"
    REQUEST_DEVICE_INFO = "REQUEST_DEVICE_INFO"
    WIPE = "WIPE"


class Priority(StrEnum):
    """Which due push goes first across devices: ``high`` before ``normal`` before ``low``."""

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @property
    def rank(self) -> int:
        """0 for ``high``, 1 for ``normal``, 2 for ``low``: claims take the lowest first."""
        return _PRIORITY_RANK[self]


_PRIORITY_RANK = {Priority.HIGH: 0, Priority.NORMAL: 1, Priority.LOW: 2}

HIGH_BY_DEFAULT: frozenset[CommandType] = frozenset({
    CommandType.LOCK, CommandType.WIPE, CommandType.START_LOST_MODE,
    CommandType.RESET_PASSWORD, CommandType.DISENROLL,
})
"""Types a stolen or lost device needs first: ``high`` unless the request says otherwise."""


def default_priority(command: CommandType, *, campaign: bool = False) -> Priority:
    """The priority of a command whose event or request names none (CONTRACT.md):
    ``low`` for a campaign's commands, ``high`` for :data:`HIGH_BY_DEFAULT`, else ``normal``."""
    if campaign:
        return Priority.LOW
    return Priority.HIGH if command in HIGH_BY_DEFAULT else Priority.NORMAL


SUPERSEDE_SAME_TYPE: frozenset[CommandType] = frozenset({
    CommandType.LOCK, CommandType.REBOOT, CommandType.RESET_PASSWORD,
    CommandType.REQUEST_DEVICE_INFO, CommandType.START_LOST_MODE, CommandType.STOP_LOST_MODE,
})
"""A newer one of these makes an older PENDING one of the same type moot."""
SUPERSEDE_EACH_OTHER: frozenset[frozenset[CommandType]] = frozenset({
    frozenset({CommandType.START_LOST_MODE, CommandType.STOP_LOST_MODE}),
})
"""Pairs of types where the newer makes the older moot, either way round."""
SUPERSEDE_EVERYTHING: frozenset[CommandType] = frozenset({
    CommandType.WIPE, CommandType.DISENROLL, CommandType.RELINQUISH_OWNERSHIP,
})
"""A newer one of these makes every older PENDING command of the device moot."""


def supersedes(newer: CommandType, older: CommandType) -> bool:
    """Whether a newer command of a device makes an older PENDING one moot.

    The older then ends CANCEL with errorType SUPERSEDED and is never pushed. Types that
    carry their own params (CLEAR_APP_DATA, ADD_ESIM, REMOVE_ESIM) are superseded only by
    :data:`SUPERSEDE_EVERYTHING`.
    """
    if newer in SUPERSEDE_EVERYTHING:
        return True
    if newer is older:
        return newer in SUPERSEDE_SAME_TYPE
    return frozenset({newer, older}) in SUPERSEDE_EACH_OTHER


def supersede_pairs() -> list[tuple[CommandType, CommandType]]:
    """Every (newer, older) pair of types of :func:`supersedes`, for the store's statement
    (the rules live here once; SQL receives them as parameters)."""
    return [(newer, older) for newer in CommandType for older in CommandType
            if supersedes(newer, older)]


def can_be_superseded(current: Status) -> bool:
    """Only a command still PENDING (sent or not, but not received) can become moot."""
    return current is Status.PENDING


def validity_start(created_at: datetime, not_before: datetime | None) -> datetime:
    """Validity runs from ``max(createdAt, notBefore)``: a command is not pushed before
    ``notBefore`` and its ``duration`` counts from then."""
    return created_at if not_before is None else max(created_at, not_before)


OPEN: frozenset[Status] = frozenset({Status.PENDING, Status.RECEIVED})
TERMINAL: frozenset[Status] = frozenset(Status) - OPEN

_ACK_TARGET: dict[tuple[Status, AckStatus], Status] = {
    (Status.PENDING, AckStatus.RECEIVED): Status.RECEIVED,
    (Status.PENDING, AckStatus.DONE): Status.DONE,
    (Status.PENDING, AckStatus.ERROR): Status.ERROR,
    (Status.RECEIVED, AckStatus.DONE): Status.DONE,
    (Status.RECEIVED, AckStatus.ERROR): Status.ERROR,
}

MAX_DURATION_S = 10 * 365 * 24 * 3600
"""Longest validity accepted (ten years); longer ones are treated as invalid input."""


def is_terminal(status: Status) -> bool:
    """A terminal status never changes again."""
    return status in TERMINAL


def on_ack(current: Status, ack: AckStatus) -> Status | None:
    """The status an ack moves a command to, or None when it changes nothing.

    A repeated RECEIVED, a RECEIVED after DONE (out of order) and any ack after a
    terminal status change nothing; the ack is still recorded in ``results``.
    """
    return _ACK_TARGET.get((current, ack))


def can_expire(current: Status) -> bool:
    """Only open commands expire."""
    return current in OPEN


def can_cancel(current: Status) -> bool:
    """Only open commands can be cancelled."""
    return current in OPEN


def allowed(current: Status | None, target: Status) -> bool:
    """Whether ``current -> target`` is a transition of the lifecycle (None: not yet stored)."""
    if current is None:
        return True
    if current in TERMINAL:
        return False
    if target in (Status.EXPIRED, Status.CANCEL, Status.DONE, Status.ERROR):
        return True
    return current is Status.PENDING and target is Status.RECEIVED


NANOSECOND = Decimal("1e-9")


def effective_duration(duration_s: float | Decimal | None, default_s: int) -> Decimal:
    """Seconds of validity, fractions kept to the nanosecond: absent or 0 means the default.

    A float is read as its shortest decimal form (``3.5`` is 3.5 s, ``0.1`` is 0.1 s).
    """
    if not duration_s:
        return Decimal(default_s)
    value = Decimal(repr(duration_s)) if isinstance(duration_s, float) else Decimal(duration_s)
    return max(value.quantize(NANOSECOND), NANOSECOND)


def split_duration(duration_s: Decimal) -> tuple[int, int]:
    """Whole seconds and nanoseconds (google.protobuf.Duration's fields)."""
    seconds = int(duration_s)
    return seconds, int((duration_s - seconds) / NANOSECOND)


def deadline(created_at: datetime, duration_s: Decimal | int) -> datetime:
    """When a command created at ``created_at`` with ``duration_s`` of validity expires
    (to the microsecond, the resolution of a timestamp).

    Raises :class:`StoreRejected` for a deadline past the latest time that can be stored.
    """
    try:
        return created_at + timedelta(seconds=float(duration_s))
    except OverflowError as exc:
        raise StoreRejected(f"the deadline is past the latest time that can be stored: "
                            f"{created_at.isoformat()} + {duration_s}s") from exc


def initial_status(expires_at: datetime, now: datetime) -> Status:
    """A command already past its deadline when first seen is recorded EXPIRED, never pushed."""
    return Status.EXPIRED if expires_at <= now else Status.PENDING


def backoff_s(
    attempt: int,
    base_s: float,
    max_s: float,
    rng: random.Random | None = None,
) -> float:
    """Delay before retry number ``attempt`` (1-based): exponential with full jitter.

    The upper bound doubles with each attempt from ``base_s`` and is capped at ``max_s``;
    the delay is drawn uniformly from ``[bound / 2, bound]`` so retries spread out but
    never collapse to zero.
    """
    exponent = min(max(attempt, 1) - 1, 32)
    bound = min(max_s, base_s * (2.0**exponent))
    draw = (rng or random).random()
    return bound / 2 + draw * bound / 2


def retry_delay_s(
    attempt: int,
    base_s: float,
    max_s: float,
    retry_after_s: float | None,
    rng: random.Random | None = None,
) -> float:
    """Delay before the next push attempt; a provider's Retry-After is a floor."""
    delay = backoff_s(attempt, base_s, max_s, rng)
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, max_s))
    return delay
