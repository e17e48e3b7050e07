"""Pydantic models of every topic's payload; ``schemas/`` is generated from them.

Input models are strict: unknown fields, wrong types, bad ids and oversize values are
rejected (and dead-lettered by the caller with the reason :func:`parse` gives).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from dispatcher import safejson, sealing
from dispatcher.exceptions import InvalidEvent
from dispatcher.lifecycle import MAX_DURATION_S, AckStatus, CommandType, Priority, Status

PARAMS_MAX_BYTES = 4096
"""``params`` must fit a push payload (Pushy's ``data`` limit)."""
ACK_DATA_MAX_BYTES = 16384
"""Largest ``data`` an ack may carry into ``results``."""
TEXT_MAX = 2000


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("NUL characters are not allowed")
    return value


def _check_json_tree(value: Any) -> None:
    if isinstance(value, str):
        _no_nul(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            _no_nul(key)
            _check_json_tree(item)
    elif isinstance(value, list):
        for item in value:
            _check_json_tree(item)


def json_size(value: Any) -> int:
    """Bytes of ``value`` as compact UTF-8 JSON."""
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def _bounded_object(limit: int) -> AfterValidator:
    def check(value: dict[str, Any]) -> dict[str, Any]:
        _check_json_tree(value)
        size = json_size(value)
        if size > limit:
            raise ValueError(f"is {size} bytes as JSON, more than {limit}")
        return value

    return AfterValidator(check)


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("must carry a time zone (RFC 3339, e.g. 2026-11-23T10:00:00Z)")
    return value.astimezone(UTC)


def _device_key(value: str) -> str:
    sealing.load_device_key(value)  # ValueError says why it is not acceptable
    return value


def seconds_or_none(value: Any) -> Any:
    """A command's ``duration`` before its type is checked: a number or None, never a
    boolean or a numeric string (a ``mode="before"`` field validator)."""
    if isinstance(value, bool) or not (value is None or isinstance(value, int | float)):
        raise ValueError("must be a number of seconds")
    return value


HexId = Annotated[str, StringConstraints(pattern=r"^[a-fA-F0-9]{24}$")]
Text = Annotated[str, StringConstraints(max_length=TEXT_MAX), AfterValidator(_no_nul)]
Token = Annotated[str, StringConstraints(min_length=1, max_length=512), AfterValidator(_no_nul)]
Time = Annotated[datetime, AfterValidator(_utc)]
Params = Annotated[dict[str, Any], _bounded_object(PARAMS_MAX_BYTES)]
AckData = Annotated[dict[str, Any], _bounded_object(ACK_DATA_MAX_BYTES)]
Actor = Annotated[str, StringConstraints(min_length=1, max_length=256), AfterValidator(_no_nul)]
"""Who asked for a command or its cancel: a user or service name (audit only)."""
DevicePublicKey = Annotated[
    str, StringConstraints(max_length=sealing.PEM_MAX_CHARS), AfterValidator(_device_key)]


NotBefore = Annotated[Time | None, Field(
    description="not pushed before this RFC 3339 time; the validity (duration) runs from the "
    "later of createdAt and notBefore")]
"""``notBefore`` of a new command, the same on Kafka and both HTTP dialects."""
PushPriority = Annotated[Priority | None, Field(
    description="high, normal or low: which due push goes first across devices (absent: high "
    "for LOCK, WIPE, START_LOST_MODE, RESET_PASSWORD, DISENROLL; normal otherwise)")]
"""``priority`` of a new command, the same on Kafka and both HTTP dialects."""


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class CommandCreated(_In):
    """``mdm.commands.created``: a command to enqueue. ``id`` is the upstream's."""

    id: HexId
    organization: HexId
    aosEnterprise: HexId
    aosDevice: HexId
    mdmUser: HexId | None = None
    command: CommandType
    params: Params = Field(default_factory=dict)
    duration: float | None = Field(default=None, ge=0, le=MAX_DURATION_S)
    createdAt: Time | None = None
    createdBy: Actor | None = Field(
        default=None, description="who asked for the command (shown as createdBy and in the "
        "audit log); absent: the topic's name")
    notBefore: NotBefore = None
    priority: PushPriority = None

    _number = field_validator("duration", mode="before")(seconds_or_none)


class DeviceState(_In):
    """``mdm.devices``: the device registry the dispatcher pushes by (compacted)."""

    aosDevice: HexId
    organization: HexId
    aosEnterprise: HexId
    mdmUser: HexId | None = None
    pushToken: Token | None = None
    state: Annotated[str, StringConstraints(pattern=r"^(ACTIVE|DISENROLLED)$")]
    updatedAt: Time | None = None
    publicKey: DevicePublicKey | None = Field(
        default=None, description="PEM public key (RSA >= 2048 bits or EC P-256): secrets in a "
        "push to this device are sealed to it (docs/sealed-secrets.md)")
    pushProvider: Literal["pushy", "fcm"] | None = Field(
        default=None, description="the provider this device is pushed through (absent: the "
        "first of DISPATCHER_PUSH_PROVIDER); one that is not configured ends its commands "
        "ERROR PROVIDER_UNAVAILABLE")


class DeviceAck(_In):
    """``mdm.device-acks``: what a device gateway reports about a command."""

    commandId: HexId
    aosDevice: HexId
    status: AckStatus
    at: Time | None = None
    data: AckData | None = None
    errorType: Text | None = None
    errorMessage: Text | None = None


class CancelRequest(_In):
    """``mdm.commands.cancel``: cancel an open command."""

    commandId: HexId
    aosDevice: HexId
    at: Time | None = None
    cancelledBy: Actor | None = Field(
        default=None, description="who asked for the cancel (shown as cancelledBy and in the "
        "audit log); absent: the topic's name")


class Target(_In):
    """Whom a campaign reaches: ``devices`` (each once, in this order) or ``all``: every
    ACTIVE device of the enterprise when the campaign is accepted."""

    devices: list[HexId] | None = Field(default=None, min_length=1)
    all: Literal[True] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Target:
        if (self.devices is None) == (self.all is None):
            raise ValueError('give exactly one of "devices" (a list of ids) and "all": true')
        return self


class Waves(_In):
    """A campaign released ``size`` targets at a time, ``intervalS`` apart, halted when the
    finished commands show an error rate above ``maxErrorRate``."""

    size: int = Field(ge=1, le=10_000_000)
    intervalS: float = Field(default=0, ge=0, le=MAX_DURATION_S)
    maxErrorRate: float | None = Field(
        default=None, ge=0, le=1, description="ERROR and EXPIRED over DONE, ERROR and EXPIRED; "
        "absent: never halts")


class CampaignSpec(_In):
    """What a campaign sends, to whom, and how fast (the HTTP body and the event share it)."""

    aosEnterprise: HexId
    command: CommandType
    params: Params = Field(default_factory=dict)
    duration: float | None = Field(default=None, ge=0, le=MAX_DURATION_S)
    notBefore: NotBefore = None
    target: Target
    waves: Waves | None = None

    _number = field_validator("duration", mode="before")(seconds_or_none)


class CampaignCreated(CampaignSpec):
    """``mdm.campaigns.created``: one command for many devices (key: the campaign id)."""

    id: HexId
    organization: HexId
    createdAt: Time | None = None
    createdBy: Actor | None = Field(
        default=None, description="who asked for the campaign; absent: the topic's name")


class CampaignCancel(_In):
    """``mdm.campaigns.cancel``: every open command of the campaign ends CANCEL."""

    campaignId: HexId
    at: Time | None = None
    cancelledBy: Actor | None = None


class CampaignCounts(BaseModel):
    """A campaign's commands by status."""

    PENDING: int = 0
    RECEIVED: int = 0
    DONE: int = 0
    ERROR: int = 0
    EXPIRED: int = 0
    CANCEL: int = 0


class CampaignStatus(BaseModel):
    """``mdm.campaigns.status`` (out): a campaign's state and progress."""

    model_config = ConfigDict(extra="forbid")

    id: HexId
    organization: HexId
    command: CommandType
    state: Literal["RUNNING", "HALTED", "DONE", "CANCELLED"]
    targets: int
    released: int
    counts: CampaignCounts
    at: datetime


class StatusEvent(BaseModel):
    """``mdm.commands.status`` (out): one event per status change."""

    model_config = ConfigDict(extra="forbid")

    id: HexId
    organization: HexId
    aosDevice: HexId
    command: CommandType
    status: Status
    previousStatus: Status | None
    at: datetime
    pushId: str | None = None
    errorType: str | None = None
    errorMessage: str | None = None
    createdBy: str | None = Field(
        default=None, description="who created the command (token sub, the event's createdBy "
        "or its topic); omitted when unknown")
    cancelledBy: str | None = Field(
        default=None, description="who cancelled the command; omitted unless it was cancelled")
    campaign: HexId | None = Field(
        default=None, description="the campaign the command belongs to; omitted when none")


class DeadLetter(BaseModel):
    """``mdm.dead-letter`` (out): an input that could not be accepted, and why."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(description="machine-readable reason, e.g. invalid_json, validation")
    detail: str = Field(description="what exactly was wrong, for a person")
    topic: str
    partition: int
    offset: int
    key: str | None
    value: str | None = Field(description="the raw value (secrets redacted), UTF-8 or base64")
    valueEncoding: str = Field(default="utf-8", description="utf-8 or base64")
    valueTruncated: bool = False
    at: datetime


INPUT_MODELS: dict[str, type[_In]] = {
    "commands.created": CommandCreated,
    "devices": DeviceState,
    "device-acks": DeviceAck,
    "commands.cancel": CancelRequest,
    "campaigns.created": CampaignCreated,
    "campaigns.cancel": CampaignCancel,
}
OUTPUT_MODELS: dict[str, type[BaseModel]] = {
    "commands.status": StatusEvent,
    "campaigns.status": CampaignStatus,
    "dead-letter": DeadLetter,
}

M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], raw: bytes | None, max_bytes: int) -> M:
    """Validate one raw Kafka value; raise :class:`InvalidEvent` with a reason and detail."""
    if raw is None or raw.strip() == b"":
        raise InvalidEvent("empty", "the value is empty")
    if len(raw) > max_bytes:
        raise InvalidEvent("too_large", f"the value is {len(raw)} bytes, more than {max_bytes}")
    try:
        decoded = safejson.loads(raw)
    except safejson.TooDeep as exc:
        raise InvalidEvent("too_deep", str(exc)) from exc
    except safejson.DuplicateKey as exc:
        raise InvalidEvent("duplicate_key", str(exc)) from exc
    except ValueError as exc:  # not UTF-8, not JSON, NaN and infinities, huge numbers
        raise InvalidEvent("invalid_json", str(exc)[:300]) from exc
    if not isinstance(decoded, dict):
        raise InvalidEvent("validation", f"expected a JSON object, got {type(decoded).__name__}")
    try:
        return model.model_validate(decoded)
    except ValidationError as exc:
        raise InvalidEvent(_reason(exc), describe(exc)) from exc


def _reason(exc: ValidationError) -> str:
    for error in exc.errors():
        loc = error["loc"]
        if loc and loc[0] == "command" and error["type"] == "enum":
            return "unknown_command"
        if loc and loc[0] == "status" and error["type"] == "enum":
            return "unknown_status"
        if error["type"] == "value_error" and "bytes as JSON" in str(error.get("msg", "")):
            return "too_large"
    return "validation"


def describe(exc: ValidationError, whole: str = "value") -> str:
    """A short message naming the fields that failed (never their values); ``whole``
    names an error of the value as a whole."""
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error["loc"]) or whole
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)[:1000]
