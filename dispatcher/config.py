"""Settings: one frozen object built from ``DISPATCHER_*`` environment variables.

No other module reads ``os.environ``. Every field names its variable; the README's
configuration table is generated from :data:`VARIABLES`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dispatcher.exceptions import ConfigError
from dispatcher.secretbox import KEYS_VARIABLE, parse_keys


def _var(name: str, default: Any, doc: str, secret: bool = False) -> Any:
    """A setting read from ``name``; a ``secret`` one is left out of repr and redacted logs."""
    return field(default=default, repr=not secret,
                 metadata={"env": name, "doc": doc, "secret": secret})


JWT_SECRET_MIN_BYTES = 32
"""RFC 7518 3.2: an HS256 key must be at least as long as the hash (256 bits)."""
PUSH_PROVIDERS = ("pushy", "fcm", "log")
FCM_CREDENTIAL_FIELDS = ("client_email", "private_key", "token_uri", "project_id")
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the dispatcher can be told from the environment."""

    kafka_bootstrap: str = _var(
        "DISPATCHER_KAFKA_BOOTSTRAP", "", "Kafka bootstrap servers host:port[,host:port]"
    )
    database_url: str = _var("DISPATCHER_DATABASE_URL", "", "PostgreSQL DSN")
    http_host: str = _var("DISPATCHER_HTTP_HOST", "127.0.0.1", "HTTP listen host")
    http_port: int = _var("DISPATCHER_HTTP_PORT", 8080, "HTTP listen port (0: any free port)")
    push_provider: str = _var(
        "DISPATCHER_PUSH_PROVIDER", "pushy",
        "push providers: pushy, fcm or log, or a comma list (pushy,fcm): the first is the "
        "default, a device's pushProvider picks another",
    )
    fcm_credentials_file: str = _var(
        "DISPATCHER_FCM_CREDENTIALS_FILE", "",
        "Google service-account JSON for FCM HTTP v1 (its token_uri, client_email, "
        "private_key and project_id are used as written); required with fcm",
    )
    fcm_api_url: str = _var(
        "DISPATCHER_FCM_API_URL", "https://fcm.googleapis.com", "FCM HTTP v1 base URL"
    )
    pushy_api_url: str = _var(
        "DISPATCHER_PUSHY_API_URL", "https://api.pushy.me", "Pushy-compatible push API base URL"
    )
    pushy_api_key: str = _var("DISPATCHER_PUSHY_API_KEY", "", "Pushy secret API key",
                              secret=True)
    push_concurrency: int = _var(
        "DISPATCHER_PUSH_CONCURRENCY", 64, "most push requests in flight per process"
    )
    push_rate_per_min: int = _var(
        "DISPATCHER_PUSH_RATE_PER_MIN", 0,
        "push requests per minute for all replicas together, per provider, shared through "
        "PostgreSQL (0: none)"
    )
    push_timeout_s: float = _var(
        "DISPATCHER_PUSH_TIMEOUT_S", 10.0, "timeout of one push request"
    )
    push_lease_s: float = _var(
        "DISPATCHER_PUSH_LEASE_S", 30.0,
        "a claimed push not answered within this time is claimed again (crash recovery)",
    )
    push_backoff_base_s: float = _var(
        "DISPATCHER_PUSH_BACKOFF_BASE_S", 1.0, "first retry delay of a failed push"
    )
    push_backoff_max_s: float = _var(
        "DISPATCHER_PUSH_BACKOFF_MAX_S", 300.0, "largest retry delay of a failed push"
    )
    repush_after_s: float = _var(
        "DISPATCHER_REPUSH_AFTER_S", 120.0,
        "a command still PENDING this long after its push is pushed again (0: never)",
    )
    repush_max: int = _var("DISPATCHER_REPUSH_MAX", 3, "most re-pushes of one command")
    jwt_secret: str = _var("DISPATCHER_JWT_SECRET", "", "HS256 secret of bearer tokens",
                           secret=True)
    jwt_public_key: str = _var(
        "DISPATCHER_JWT_PUBLIC_KEY", "", "PEM public key to accept RS256 bearer tokens (optional)"
    )
    jwt_audience: str = _var(
        "DISPATCHER_JWT_AUDIENCE", "",
        "when set, a bearer token must carry this aud claim (empty: any aud is accepted)",
    )
    jwt_issuer: str = _var(
        "DISPATCHER_JWT_ISSUER", "", "when set, a bearer token must carry this iss claim"
    )
    jwt_max_ttl_s: int = _var(
        "DISPATCHER_JWT_MAX_TTL_S", 0,
        "when above 0, a bearer token must carry iat and live at most this long (exp - iat)",
    )
    strict_permissions: bool = _var(
        "DISPATCHER_STRICT_PERMISSIONS", False,
        "true: WIPE, RESET_PASSWORD, DISENROLL and RELINQUISH_OWNERSHIP also need the "
        "permission mdm.aosp.command.create.<TYPE>",
    )
    secret_keys: str = _var(
        "DISPATCHER_SECRET_KEYS", "",
        "keys that encrypt command secrets at rest: kid:base64key[,kid:base64key...], 32-byte "
        "keys; the first encrypts, every one decrypts (rotation); run: required",
        secret=True,
    )
    require_sealed_secrets: bool = _var(
        "DISPATCHER_REQUIRE_SEALED_SECRETS", False,
        "true: a secret is pushed only sealed to the device's publicKey; a device without one "
        "gets ERROR NO_DEVICE_KEY",
    )
    default_duration_s: int = _var(
        "DISPATCHER_DEFAULT_DURATION_S", 600, "command validity when none is given"
    )
    expiry_interval_s: float = _var(
        "DISPATCHER_EXPIRY_INTERVAL_S", 1.0, "how often the expiry timer runs"
    )
    hold_window_s: float = _var(
        "DISPATCHER_HOLD_WINDOW_S", 300.0,
        "how long an ack or cancel for a not-yet-seen command is held before it is dead-lettered",
    )
    retention_s: float = _var(
        "DISPATCHER_RETENTION_S", 2_592_000.0,
        "finished commands terminal (and past their validity) for longer than this are "
        "removed; an id is deduplicated for this long",
    )
    campaign_page: int = _var(
        "DISPATCHER_CAMPAIGN_PAGE", 5000,
        "targets of a campaign made into commands per transaction (its memory bound)",
    )
    campaign_status_interval_s: float = _var(
        "DISPATCHER_CAMPAIGN_STATUS_INTERVAL_S", 2.0,
        "how often a running campaign's counts are refreshed (and published when changed)",
    )
    topic_prefix: str = _var("DISPATCHER_TOPIC_PREFIX", "mdm.", "prefix of every topic name")
    topic_partitions: int = _var(
        "DISPATCHER_TOPIC_PARTITIONS", 4, "partitions of topics the dispatcher creates"
    )
    consumer_group: str = _var(
        "DISPATCHER_CONSUMER_GROUP", "dispatcher", "Kafka consumer group id"
    )
    kafka_session_timeout_ms: int = _var(
        "DISPATCHER_KAFKA_SESSION_TIMEOUT_MS", 10000, "consumer group session timeout"
    )
    kafka_heartbeat_interval_ms: int = _var(
        "DISPATCHER_KAFKA_HEARTBEAT_INTERVAL_MS", 3000, "consumer group heartbeat interval"
    )
    kafka_rebalance_timeout_ms: int = _var(
        "DISPATCHER_KAFKA_REBALANCE_TIMEOUT_MS", 10000, "consumer group rebalance timeout"
    )
    kafka_enable_idempotence: bool = _var(
        "DISPATCHER_KAFKA_ENABLE_IDEMPOTENCE", False,
        "idempotent producer (true on Apache Kafka; the embedded broker does not support it)",
    )
    kafka_security_protocol: str = _var(
        "DISPATCHER_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT",
        "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL, for every Kafka client of the process",
    )
    kafka_ssl_cafile: str = _var(
        "DISPATCHER_KAFKA_SSL_CAFILE", "",
        "PEM CA bundle that verifies the brokers (SSL, SASL_SSL; empty: the system CAs)",
    )
    kafka_ssl_certfile: str = _var(
        "DISPATCHER_KAFKA_SSL_CERTFILE", "", "PEM client certificate for mutual TLS (optional)"
    )
    kafka_ssl_keyfile: str = _var(
        "DISPATCHER_KAFKA_SSL_KEYFILE", "", "PEM private key of the client certificate"
    )
    kafka_sasl_mechanism: str = _var(
        "DISPATCHER_KAFKA_SASL_MECHANISM", "",
        "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (SASL_PLAINTEXT, SASL_SSL)",
    )
    kafka_sasl_username: str = _var("DISPATCHER_KAFKA_SASL_USERNAME", "", "SASL user name")
    kafka_sasl_password: str = _var(
        "DISPATCHER_KAFKA_SASL_PASSWORD", "", "SASL password (never logged)", secret=True
    )
    auto_migrate: bool = _var(
        "DISPATCHER_AUTO_MIGRATE", True,
        "true: `run` applies migrations at start; false: it only checks they are applied "
        "and refuses to start otherwise (its role then needs no DDL rights)",
    )
    batch_max: int = _var("DISPATCHER_BATCH_MAX", 2000, "most records handled in one batch")
    db_pool_min: int = _var("DISPATCHER_DB_POOL_MIN", 2, "smallest database pool")
    db_pool_max: int = _var("DISPATCHER_DB_POOL_MAX", 10, "largest database pool")
    max_event_bytes: int = _var(
        "DISPATCHER_MAX_EVENT_BYTES", 65536, "larger input events are dead-lettered unread"
    )
    log_level: str = _var("DISPATCHER_LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING or ERROR")
    log_format: str = _var("DISPATCHER_LOG_FORMAT", "json", "json or text")
    shutdown_timeout_s: float = _var(
        "DISPATCHER_SHUTDOWN_TIMEOUT_S", 20.0, "most time a graceful stop may take"
    )
    dev_dir: str = _var("DISPATCHER_DEV_DIR", ".dev", "where `dispatcher dev` keeps its data")

    @classmethod
    def from_env(cls, env: Mapping[str, str], **overrides: Any) -> Settings:
        """Build settings from a mapping of environment variables; bad values raise ConfigError."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(f.metadata["env"])
            if raw is None or raw == "":
                continue
            values[f.name] = _convert(f.metadata["env"], raw, type(f.default))
        values.update(overrides)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Reject settings that cannot work, naming the variable."""
        self._validate_providers()
        if self.push_concurrency < 1:
            raise ConfigError("DISPATCHER_PUSH_CONCURRENCY must be at least 1")
        if self.default_duration_s < 1:
            raise ConfigError("DISPATCHER_DEFAULT_DURATION_S must be at least 1")
        if self.expiry_interval_s <= 0:
            raise ConfigError("DISPATCHER_EXPIRY_INTERVAL_S must be positive")
        if self.retention_s <= 0:
            raise ConfigError("DISPATCHER_RETENTION_S must be positive (seconds)")
        if not 1 <= self.campaign_page <= 100_000:
            raise ConfigError("DISPATCHER_CAMPAIGN_PAGE must be between 1 and 100000")
        if self.campaign_status_interval_s <= 0:
            raise ConfigError("DISPATCHER_CAMPAIGN_STATUS_INTERVAL_S must be positive (seconds)")
        if self.log_format not in ("json", "text"):
            raise ConfigError("DISPATCHER_LOG_FORMAT must be 'json' or 'text'")
        if self.secret_keys:
            parse_keys(self.secret_keys)
        if self.jwt_secret and len(self.jwt_secret.encode()) < JWT_SECRET_MIN_BYTES:
            raise ConfigError(f"DISPATCHER_JWT_SECRET must be at least {JWT_SECRET_MIN_BYTES} "
                              "bytes (HS256 needs a key as long as its hash), e.g. "
                              "$(openssl rand -base64 32)")
        if self.jwt_max_ttl_s < 0:
            raise ConfigError("DISPATCHER_JWT_MAX_TTL_S must be 0 (no limit) or positive")
        self._validate_kafka_security()

    @property
    def push_providers(self) -> tuple[str, ...]:
        """The configured providers, the default first."""
        return tuple(p.strip() for p in self.push_provider.split(",") if p.strip())

    def _validate_providers(self) -> None:
        names = self.push_providers
        if not names or any(n not in PUSH_PROVIDERS for n in names) or len(set(names)) < len(
                names):
            raise ConfigError("DISPATCHER_PUSH_PROVIDER must be pushy, fcm or log, or a comma "
                              f"list of them without repeats (got {self.push_provider!r})")
        if "fcm" in names:
            check_fcm_credentials(self.fcm_credentials_file)

    def require_secret_keys(self) -> None:
        """`dispatcher run` needs the keys of command secrets: no built-in or derived key."""
        if not self.secret_keys.strip():
            raise ConfigError(f"{KEYS_VARIABLE} is required: kid:base64key with a 32-byte key, "
                              "e.g. k1:$(openssl rand -base64 32)")

    def _validate_kafka_security(self) -> None:
        protocol = self.kafka_security_protocol
        if protocol not in SECURITY_PROTOCOLS:
            raise ConfigError(
                f"DISPATCHER_KAFKA_SECURITY_PROTOCOL must be one of {', '.join(SECURITY_PROTOCOLS)}"
            )
        if bool(self.kafka_ssl_certfile) != bool(self.kafka_ssl_keyfile):
            raise ConfigError("DISPATCHER_KAFKA_SSL_CERTFILE and DISPATCHER_KAFKA_SSL_KEYFILE "
                              "go together (mutual TLS)")
        if not protocol.startswith("SASL_"):
            return
        if self.kafka_sasl_mechanism not in SASL_MECHANISMS:
            raise ConfigError(f"DISPATCHER_KAFKA_SASL_MECHANISM must be one of "
                              f"{', '.join(SASL_MECHANISMS)} with {protocol}")
        if not (self.kafka_sasl_username and self.kafka_sasl_password):
            raise ConfigError("DISPATCHER_KAFKA_SASL_USERNAME and DISPATCHER_KAFKA_SASL_PASSWORD "
                              f"are required with {protocol}")

    def require_servers(self) -> None:
        """`dispatcher run` needs both servers named."""
        if not self.kafka_bootstrap:
            raise ConfigError("DISPATCHER_KAFKA_BOOTSTRAP is required")
        if not self.database_url:
            raise ConfigError("DISPATCHER_DATABASE_URL is required")

    def topic(self, name: str) -> str:
        """Full topic name of a logical one (``commands.created`` -> ``mdm.commands.created``)."""
        return f"{self.topic_prefix}{name}"

    def redacted(self) -> dict[str, Any]:
        """Settings safe to log: secrets replaced by whether they are set."""
        out = dataclasses.asdict(self)
        for key in (*SECRET_FIELDS, "jwt_public_key"):
            out[key] = "<set>" if out[key] else "<unset>"
        out["database_url"] = _redact_dsn(self.database_url)
        return out


SECRET_FIELDS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(Settings) if f.metadata["secret"]
)
"""Settings never logged, shown in repr or answered."""

VARIABLES: list[tuple[str, str, str]] = [
    (f.metadata["env"], repr(f.default), f.metadata["doc"]) for f in dataclasses.fields(Settings)
]


def check_fcm_credentials(path: str) -> None:
    """A readable service-account JSON with the fields FCM needs; ConfigError otherwise.

    Never quotes the file's content (it holds a private key)."""
    variable = "DISPATCHER_FCM_CREDENTIALS_FILE"
    if not path:
        raise ConfigError(f"{variable} is required when DISPATCHER_PUSH_PROVIDER names fcm")
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
    except OSError as exc:
        raise ConfigError(f"{variable}={path!r} cannot be read: {exc.strerror}") from exc
    except ValueError as exc:
        raise ConfigError(f"{variable}={path!r} is not JSON") from exc
    missing = [k for k in FCM_CREDENTIAL_FIELDS
               if not isinstance(info, dict) or not isinstance(info.get(k), str) or not info[k]]
    if missing:
        raise ConfigError(f"{variable}={path!r} is not a service-account key: it lacks "
                          f"{', '.join(missing)}")


def _convert(name: str, raw: str, kind: type) -> Any:
    try:
        if kind is bool:
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        return kind(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} is not a valid {kind.__name__}") from exc


def _redact_dsn(dsn: str) -> str:
    if "@" not in dsn or "://" not in dsn:
        return dsn
    scheme, rest = dsn.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"
