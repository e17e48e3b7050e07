"""FCM HTTP v1 without a server: the message built, the answers classified, the settings
that turn it on, and which provider a device's push goes through."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dispatcher.config import Settings
from dispatcher.exceptions import PUSH_ERROR_MESSAGES, ConfigError
from dispatcher.push import LogProvider, PushRequest
from dispatcher.push.fcm import BAD_REQUEST, FCM_ERROR, build_message, classify
from dispatcher.push.lanes import lane_of, make_lanes
from dispatcher.push.providers import retry_after_s as parse_retry_after
from tests.support.push import claimed_push

TOKEN = "fcm-device-token-0123456789"


def fcm_error(status: int, rpc: str, code: str | None = None,
              message: str = f"token {TOKEN} is bad") -> dict[str, Any]:
    details = [{"@type": FCM_ERROR, "errorCode": code}] if code else []
    return {"error": {"code": status, "message": message, "status": rpc, "details": details}}


def test_message_has_the_v1_shape_with_string_data_only() -> None:
    sealed = {"v": 1, "kid": "abc", "ct": "..."}
    request = PushRequest("c1", TOKEN, {"commandId": "c1", "command": "LOCK",
                                        "params": {"pin": "1234", "n": 1}, "sealed": sealed,
                                        "expiresAt": "2026-01-01T00:00:00Z"}, 42)
    body = build_message(request)
    message = body["message"]
    assert message["token"] == TOKEN
    assert message["android"] == {"ttl": "42s", "priority": "high"}
    assert all(isinstance(v, str) for v in message["data"].values())
    assert json.loads(message["data"]["params"]) == {"pin": "1234", "n": 1}
    assert json.loads(message["data"]["sealed"]) == sealed
    assert message["data"]["commandId"] == "c1"
    assert set(body) == {"message"}


@pytest.mark.parametrize(("status", "payload", "error_type", "retriable", "outcome"), [
    (404, fcm_error(404, "NOT_FOUND", "UNREGISTERED"), "INVALID_TOKEN", False, "rejected"),
    (400, fcm_error(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT"), "INVALID_TOKEN", False,
     "rejected"),
    (403, fcm_error(403, "PERMISSION_DENIED", "SENDER_ID_MISMATCH"), "SENDER_ID_MISMATCH",
     False, "rejected"),
    (401, fcm_error(401, "UNAUTHENTICATED", "THIRD_PARTY_AUTH_ERROR"),
     "THIRD_PARTY_AUTH_ERROR", False, "rejected"),
    (429, fcm_error(429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED"), "RATE_LIMITED", True,
     "rate_limited"),
    (503, fcm_error(503, "UNAVAILABLE", "UNAVAILABLE"), "PROVIDER_ERROR", True, "server_error"),
    (500, fcm_error(500, "INTERNAL", "INTERNAL"), "PROVIDER_ERROR", True, "server_error"),
    # no FcmError detail: error.status decides, then the HTTP status
    (503, fcm_error(503, "UNAVAILABLE"), "PROVIDER_ERROR", True, "server_error"),
    (429, fcm_error(429, "RESOURCE_EXHAUSTED"), "RATE_LIMITED", True, "rate_limited"),
    (401, fcm_error(401, "UNAUTHENTICATED"), "PROVIDER_AUTH", True, "auth_error"),
    (403, fcm_error(403, "PERMISSION_DENIED"), "PROVIDER_AUTH", True, "auth_error"),
    (404, fcm_error(404, "NOT_FOUND"), "PROVIDER_ERROR", True, "server_error"),
    (502, {}, "PROVIDER_ERROR", True, "server_error"),
    (429, "not json", "RATE_LIMITED", True, "rate_limited"),
    (418, {}, "PUSH_REJECTED", False, "rejected"),
])
def test_answers_are_classified_by_fcm_error_code(
        status: int, payload: Any, error_type: str, retriable: bool, outcome: str) -> None:
    err = classify(status, payload, 7.0, TOKEN)
    assert (err.error_type, err.retriable, err.outcome) == (error_type, retriable, outcome)
    assert err.retry_after_s == (7.0 if retriable else None)
    assert TOKEN not in str(err)  # the provider's text is logged with the token masked
    assert err.public_message == PUSH_ERROR_MESSAGES[error_type]


def test_the_error_code_comes_from_the_detail_not_the_http_status() -> None:
    # a 400 carrying UNREGISTERED is UNREGISTERED; a 500 carrying QUOTA_EXCEEDED is a quota
    assert classify(400, fcm_error(400, "X", "UNREGISTERED"), None).error_type == "INVALID_TOKEN"
    assert classify(500, fcm_error(500, "X", "QUOTA_EXCEEDED"), None).error_type == "RATE_LIMITED"


def test_an_invalid_field_other_than_the_token_is_not_an_invalid_token() -> None:
    payload: dict[str, Any] = {"error": {"code": 400, "status": "INVALID_ARGUMENT",
                                         "message": "bad ttl",
                         "details": [{"@type": BAD_REQUEST, "fieldViolations": [
                             {"field": "message.android.ttl", "description": "bad"}]}]}}
    assert classify(400, payload, None).error_type == "PUSH_REJECTED"
    payload["error"]["details"][0]["fieldViolations"][0]["field"] = "message.token"
    assert classify(400, payload, None).error_type == "INVALID_TOKEN"


@pytest.mark.parametrize(("value", "seconds"), [
    ("3", 3.0), ("0", 0.0), ("-2", 0.0), (None, None), ("", None),
    ("Wed, 21 Oct 2015 07:28:00 GMT", None)])
def test_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value) == seconds


def _account(tmp_path: Path, **over: Any) -> str:
    info = {"type": "service_account", "project_id": "p", "private_key": "-----BEGIN",
            "client_email": "a@p.iam.gserviceaccount.com", "token_uri": "https://t/token"}
    info.update(over)
    path = tmp_path / "sa.json"
    path.write_text(json.dumps({k: v for k, v in info.items() if v is not None}))
    return str(path)


def test_provider_lists_are_read(tmp_path: Path) -> None:
    sa = _account(tmp_path)
    env = {"DISPATCHER_PUSH_PROVIDER": "pushy, fcm", "DISPATCHER_FCM_CREDENTIALS_FILE": sa}
    assert Settings.from_env(env).push_providers == ("pushy", "fcm")
    env["DISPATCHER_PUSH_PROVIDER"] = "fcm"
    assert Settings.from_env(env).push_providers == ("fcm",)
    assert Settings.from_env({}).push_providers == ("pushy",)
    assert Settings.from_env({}).fcm_api_url == "https://fcm.googleapis.com"


@pytest.mark.parametrize(("providers", "over", "named"), [
    ("pushy,fcm", {"private_key": None}, "lacks private_key"),
    ("fcm", {"token_uri": "", "project_id": None}, "lacks token_uri, project_id"),
    ("pushy,pushy", {}, "DISPATCHER_PUSH_PROVIDER"),
    ("pushy,apns", {}, "DISPATCHER_PUSH_PROVIDER"),
    (",", {}, "DISPATCHER_PUSH_PROVIDER"),
])
def test_bad_provider_settings_name_the_variable(
        tmp_path: Path, providers: str, over: dict[str, Any], named: str) -> None:
    env = {"DISPATCHER_PUSH_PROVIDER": providers,
           "DISPATCHER_FCM_CREDENTIALS_FILE": _account(tmp_path, **over)}
    with pytest.raises(ConfigError, match=named):
        Settings.from_env(env)


def test_fcm_needs_a_readable_credentials_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="DISPATCHER_FCM_CREDENTIALS_FILE is required"):
        Settings.from_env({"DISPATCHER_PUSH_PROVIDER": "fcm"})
    with pytest.raises(ConfigError, match=r"DISPATCHER_FCM_CREDENTIALS_FILE=.*cannot be read"):
        Settings.from_env({"DISPATCHER_PUSH_PROVIDER": "fcm",
                           "DISPATCHER_FCM_CREDENTIALS_FILE": str(tmp_path / "missing.json")})
    garbage = tmp_path / "key.json"
    garbage.write_text("-----BEGIN PRIVATE KEY----- secret")
    with pytest.raises(ConfigError, match="is not JSON") as caught:
        Settings.from_env({"DISPATCHER_PUSH_PROVIDER": "fcm",
                           "DISPATCHER_FCM_CREDENTIALS_FILE": str(garbage)})
    assert "secret" not in str(caught.value)  # the file's content is never quoted


class Named(LogProvider):
    def __init__(self, name: str) -> None:
        self.name = name


def test_a_device_goes_through_its_provider_the_default_or_none() -> None:
    lanes = make_lanes([Named("pushy"), Named("fcm")], 4, 1)
    assert lane_of(lanes, claimed_push(push_provider=None)) is lanes["pushy"]
    assert lane_of(lanes, claimed_push(push_provider="fcm")) is lanes["fcm"]
    only_pushy = make_lanes([Named("pushy")], 4, 1)
    assert lane_of(only_pushy, claimed_push(push_provider="fcm")) is None  # never sent elsewhere
    log_only = make_lanes([LogProvider()], 4, 1)
    assert lane_of(log_only, claimed_push(push_provider="fcm")) is log_only["log"]
