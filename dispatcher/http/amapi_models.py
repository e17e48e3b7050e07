"""Seed 001's request and answer models: an AMAPI ``Command`` and its parameters in, an
``Operation`` (or a page of them, or Google's error) out.

They validate ``:issueCommand`` bodies (:mod:`dispatcher.http.amapi`) and describe the
answers in the OpenAPI document (:mod:`dispatcher.http.openapi`).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.json_schema import SkipJsonSchema

from dispatcher.events import NotBefore, PushPriority

PACKAGE = r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)+$"
CommandTypeName = Literal[
    "COMMAND_TYPE_UNSPECIFIED", "LOCK", "RESET_PASSWORD", "REBOOT", "RELINQUISH_OWNERSHIP",
    "CLEAR_APP_DATA", "START_LOST_MODE", "STOP_LOST_MODE", "ADD_ESIM", "REMOVE_ESIM",
    "REQUEST_DEVICE_INFO", "WIPE"]
ResetPasswordFlag = Literal["RESET_PASSWORD_FLAG_UNSPECIFIED", "REQUIRE_ENTRY",
                            "DO_NOT_ASK_CREDENTIALS_ON_BOOT", "LOCK_NOW"]
WipeDataFlag = Literal["WIPE_DATA_FLAG_UNSPECIFIED", "PRESERVE_RESET_PROTECTION_DATA",
                       "WIPE_EXTERNAL_STORAGE", "WIPE_ESIMS"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UserFacingMessage(_Strict):
    """A message with per-locale translations."""

    localizedMessages: dict[str, str] | None = None
    defaultMessage: str | None = Field(default=None, max_length=2000)


class ClearAppsDataParams(_Strict):
    """Apps whose data CLEAR_APP_DATA clears."""

    packageNames: list[str] = Field(min_length=1, max_length=100)

    @model_validator(mode="after")
    def _packages(self) -> ClearAppsDataParams:
        for name in self.packageNames:
            if len(name) > 255 or not re.fullmatch(PACKAGE, name):
                raise ValueError("packageNames: each must be an Android package name")
        return self


class StartLostModeParams(_Strict):
    """What a lost device shows; at least one item besides the organization."""

    lostMessage: UserFacingMessage | None = None
    lostPhoneNumber: UserFacingMessage | None = None
    lostEmailAddress: str | None = Field(default=None, max_length=320)
    lostStreetAddress: UserFacingMessage | None = None
    lostOrganization: UserFacingMessage | None = None

    @model_validator(mode="after")
    def _something(self) -> StartLostModeParams:
        if not (self.lostMessage or self.lostPhoneNumber or self.lostEmailAddress
                or self.lostStreetAddress):
            raise ValueError("set at least one of lostMessage, lostPhoneNumber, "
                             "lostEmailAddress, lostStreetAddress")
        return self


class StopLostModeParams(_Strict):
    """STOP_LOST_MODE takes no parameters."""


class AddEsimParams(_Strict):
    """The eSIM profile ADD_ESIM installs."""

    activationCode: str = Field(min_length=1, max_length=2000)
    activationState: Literal["ACTIVATION_STATE_UNSPECIFIED", "ACTIVATED",
                             "NOT_ACTIVATED"] | None = None


class RemoveEsimParams(_Strict):
    """The eSIM profile REMOVE_ESIM removes."""

    iccId: str = Field(pattern=r"^[0-9A-Fa-f]{18,22}$")


class RequestDeviceInfoParams(_Strict):
    """Which device information REQUEST_DEVICE_INFO asks for."""

    deviceInfo: Literal["EID"]


class WipeParams(_Strict):
    """How WIPE wipes."""

    wipeDataFlags: list[WipeDataFlag] | None = Field(default=None, max_length=8)
    wipeReason: UserFacingMessage | None = None


class CommandRequest(_Strict):
    """The body of ``:issueCommand``: an AMAPI ``Command``. Output-only fields are ignored."""

    type: CommandTypeName | None = None
    duration: str | None = Field(default=None, pattern=r"^[0-9]{1,12}(\.[0-9]{1,9})?s$")
    newPassword: str | None = Field(default=None, max_length=256)
    resetPasswordFlags: list[ResetPasswordFlag] | None = Field(default=None, max_length=8)
    clearAppsDataParams: ClearAppsDataParams | None = None
    startLostModeParams: StartLostModeParams | None = None
    stopLostModeParams: StopLostModeParams | None = None
    addEsimParams: AddEsimParams | None = None
    removeEsimParams: RemoveEsimParams | None = None
    requestDeviceInfoParams: RequestDeviceInfoParams | None = None
    wipeParams: WipeParams | None = None
    createTime: str | None = Field(default=None, max_length=64)
    userName: str | None = Field(default=None, max_length=512)
    errorCode: str | None = Field(default=None, max_length=64)
    clearAppsDataStatus: dict[str, Any] | None = None
    startLostModeStatus: dict[str, Any] | None = None
    stopLostModeStatus: dict[str, Any] | None = None
    esimStatus: dict[str, Any] | None = None
    requestDeviceInfoStatus: dict[str, Any] | None = None
    notBefore: NotBefore = None
    """A dispatcher extension, not in the Android Management API."""
    priority: PushPriority = None
    """A dispatcher extension, not in the Android Management API."""

class OperationError(BaseModel):
    """Why an operation did not succeed (google.rpc.Status)."""

    code: int
    message: str


class Operation(BaseModel):
    """A command as a long-running operation; ``metadata`` is the Command. Fields without
    a value are omitted, never ``null``."""

    name: str
    metadata: dict[str, Any]
    done: bool
    error: OperationError | SkipJsonSchema[None] = None


class ListOperationsResponse(BaseModel):
    """One page of operations, newest first."""

    operations: list[Operation]
    nextPageToken: str | SkipJsonSchema[None] = None


class GoogleErrorDetail(BaseModel):
    """Google's error body."""

    code: int
    message: str
    status: str


class GoogleError(BaseModel):
    """``{"error": {"code", "message", "status"}}``."""

    error: GoogleErrorDetail

