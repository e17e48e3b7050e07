"""Settings come from DISPATCHER_* variables only, with clear errors."""

from __future__ import annotations

import pytest

from dispatcher.config import VARIABLES, Settings
from dispatcher.exceptions import ConfigError


def test_defaults_follow_the_contract() -> None:
    s = Settings.from_env({})
    assert (s.http_host, s.http_port, s.push_provider) == ("127.0.0.1", 8080, "pushy")
    assert (s.pushy_api_url, s.push_concurrency) == ("https://api.pushy.me", 64)
    assert (s.default_duration_s, s.expiry_interval_s, s.topic_prefix) == (600, 1.0, "mdm.")


def test_values_are_read_and_converted() -> None:
    s = Settings.from_env({"DISPATCHER_HTTP_PORT": "9000", "DISPATCHER_EXPIRY_INTERVAL_S": "0.5",
                           "DISPATCHER_KAFKA_ENABLE_IDEMPOTENCE": "true"})
    assert (s.http_port, s.expiry_interval_s, s.kafka_enable_idempotence) == (9000, 0.5, True)


@pytest.mark.parametrize(("name", "value"), [
    ("DISPATCHER_HTTP_PORT", "eighty"),
    ("DISPATCHER_PUSH_PROVIDER", "carrier-pigeon"),
    ("DISPATCHER_PUSH_CONCURRENCY", "0"),
    ("DISPATCHER_KAFKA_ENABLE_IDEMPOTENCE", "maybe"),
])
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


def test_run_requires_both_servers() -> None:
    with pytest.raises(ConfigError, match="DISPATCHER_KAFKA_BOOTSTRAP"):
        Settings.from_env({}).require_servers()


def test_redacted_settings_hide_secrets() -> None:
    s = Settings.from_env({"DISPATCHER_PUSHY_API_KEY": "sk-123",
                           "DISPATCHER_DATABASE_URL": "postgresql://u:pw@h/db"})
    shown = str(s.redacted())
    assert "sk-123" not in shown
    assert "pw@" not in shown


def test_every_contract_variable_exists() -> None:
    names = {name for name, _, _ in VARIABLES}
    for name in ("DISPATCHER_KAFKA_BOOTSTRAP", "DISPATCHER_DATABASE_URL", "DISPATCHER_HTTP_HOST",
                 "DISPATCHER_HTTP_PORT", "DISPATCHER_PUSH_PROVIDER", "DISPATCHER_PUSHY_API_URL",
                 "DISPATCHER_PUSHY_API_KEY", "DISPATCHER_PUSH_CONCURRENCY",
                 "DISPATCHER_JWT_SECRET", "DISPATCHER_DEFAULT_DURATION_S",
                 "DISPATCHER_EXPIRY_INTERVAL_S", "DISPATCHER_TOPIC_PREFIX"):
        assert name in names


def test_a_short_hs256_secret_is_refused_at_start() -> None:
    with pytest.raises(ConfigError, match="DISPATCHER_JWT_SECRET must be at least 32 bytes"):
        Settings.from_env({"DISPATCHER_JWT_SECRET": "x" * 31})
    assert Settings.from_env({"DISPATCHER_JWT_SECRET": "x" * 32}).jwt_secret == "x" * 32
    with pytest.raises(ConfigError, match="DISPATCHER_JWT_MAX_TTL_S"):
        Settings.from_env({"DISPATCHER_JWT_MAX_TTL_S": "-1"})


def test_token_options_and_strict_permissions_are_read() -> None:
    s = Settings.from_env({"DISPATCHER_JWT_AUDIENCE": "dispatcher",
                           "DISPATCHER_JWT_ISSUER": "https://idp",
                           "DISPATCHER_JWT_MAX_TTL_S": "900",
                           "DISPATCHER_STRICT_PERMISSIONS": "true"})
    assert (s.jwt_audience, s.jwt_issuer, s.jwt_max_ttl_s, s.strict_permissions) == (
        "dispatcher", "https://idp", 900, True)
    assert Settings.from_env({}).strict_permissions is False


def test_the_secrets_of_dev_tooling_and_deploy_are_long_enough() -> None:
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[2]
    compose = yaml.safe_load((root / "deploy" / "compose.yaml").read_text())
    secret = compose["x-dispatcher-env"]["DISPATCHER_JWT_SECRET"]
    assert len(secret.encode()) >= 32


def test_dispatcher_dev_generates_a_long_enough_jwt_secret(tmp_path: object) -> None:
    from dispatcher.cli import dev_jwt_secret

    secret = dev_jwt_secret(Settings(dev_dir=str(tmp_path)))
    assert len(secret.encode()) >= 32
    Settings.from_env({"DISPATCHER_JWT_SECRET": secret})
