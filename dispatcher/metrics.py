"""Prometheus metrics: one container with an injected registry; code calls named hooks.

Names and labels follow the contract. Label values are bounded sets (topics, outcomes,
command types, statuses, reasons): never a command or device id.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from importlib import metadata

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)

from dispatcher.lifecycle import CommandType, Priority, Status
from dispatcher.store.records import Transition

DEAD_LETTER_REASONS = (
    "empty", "invalid_json", "too_deep", "duplicate_key", "too_large", "validation",
    "unknown_command", "unknown_status", "device_mismatch", "store_rejected", "parse_failed",
    "unknown_campaign",
)
"""Every ``reason`` of a dead letter (the contract extensions in the README)."""
PUSH_OUTCOMES = (
    "accepted", "rejected", "timeout", "connection_error", "rate_limited", "auth_error",
    "server_error",
)
"""Every ``outcome`` of a push request."""

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_FIRST_PUSH_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 600, 3600)
_WAIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
                 300)
_COMPLETION_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 21600, 86400)


class Metrics:
    """Every metric the dispatcher exports, registered on one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events_consumed = Counter(
            "dispatcher_events_consumed_total", "Input events consumed, by outcome",
            ["topic", "outcome"], registry=r,
        )
        self.command_status = Counter(
            "dispatcher_command_status_total", "Command transitions into a status",
            ["command", "status"], registry=r,
        )
        self.push_requests = Counter(
            "dispatcher_push_requests_total", "Push requests by provider and outcome",
            ["provider", "outcome"], registry=r,
        )
        self.push_duration = Histogram(
            "dispatcher_push_duration_seconds", "Push request latency",
            ["provider"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.push_inflight = Gauge(
            "dispatcher_push_inflight", "Push requests in flight", registry=r
        )
        self.dead_letters = Counter(
            "dispatcher_dead_letters_total", "Inputs sent to the dead-letter topic",
            ["topic", "reason"], registry=r,
        )
        self.completion = Histogram(
            "dispatcher_command_completion_seconds", "Time from createdAt to a terminal status",
            ["command", "status"], buckets=_COMPLETION_BUCKETS, registry=r,
        )
        self.first_push = Histogram(
            "dispatcher_command_first_push_seconds",
            "Time from createdAt to the provider accepting the command's first push",
            ["provider"], buckets=_FIRST_PUSH_BUCKETS, registry=r,
        )
        self.consumer_lag = Gauge(
            "dispatcher_consumer_lag", "Records behind the end of each partition",
            ["topic", "partition"], registry=r,
        )
        self.batch_duration = Histogram(
            "dispatcher_batch_duration_seconds", "Time to make one consumed batch durable",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.commands_open = Gauge(
            "dispatcher_commands_open", "Open commands by status (from PostgreSQL)",
            ["status"], registry=r,
        )
        self.oldest_open_age = Gauge(
            "dispatcher_oldest_open_command_age_seconds",
            "Age of the oldest open command (from PostgreSQL)", registry=r,
        )
        self.expired = Counter(
            "dispatcher_expired_total", "Commands the expiry timer marked EXPIRED", registry=r
        )
        self.status_published = Counter(
            "dispatcher_status_events_published_total", "Status events relayed to Kafka",
            registry=r,
        )
        self.outbox_backlog = Gauge(
            "dispatcher_status_outbox_backlog", "Status events waiting to be relayed", registry=r
        )
        self.commands_removed = Counter(
            "dispatcher_commands_removed_total",
            "Finished commands removed by retention (DISPATCHER_RETENTION_S)", registry=r,
        )
        self.commands_table_rows = Gauge(
            "dispatcher_commands_table_rows",
            "Rows of the commands table as PostgreSQL's statistics count them (live, dead)",
            ["state"], registry=r,
        )
        self.held_events = Counter(
            "dispatcher_held_events_total", "Acks and cancels held until their command arrives",
            ["kind", "outcome"], registry=r,
        )
        self.push_repeats = Counter(
            "dispatcher_push_repeats_total",
            "Pushes sent again after a lost claim (a crash or a timeout mid-request)", registry=r,
        )
        self.dependency_up = Gauge(
            "dispatcher_dependency_up", "Whether a dependency answers (1) or not (0)",
            ["dependency"], registry=r,
        )
        self.db_pool_size = Gauge(
            "dispatcher_db_pool_connections", "Database pool connections by state",
            ["state"], registry=r,
        )
        self.db_pool_max = Gauge(
            "dispatcher_db_pool_max_connections", "Largest size the database pool may grow to",
            registry=r,
        )
        self.outbox_oldest_age = Gauge(
            "dispatcher_status_outbox_oldest_age_seconds",
            "Age of the oldest status event waiting to be relayed (0: none waiting)", registry=r,
        )
        self.secret_unreadable = Counter(
            "dispatcher_secret_unreadable_total",
            "Pushes refused because the command's secret does not decrypt with the configured "
            "keys (the command ends ERROR SECRET_UNREADABLE)", registry=r,
        )
        self.superseded = Counter(
            "dispatcher_commands_superseded_total",
            "Commands made moot by a newer one of their device (CANCEL SUPERSEDED), by type",
            ["command"], registry=r,
        )
        self.pushes_by_priority = Counter(
            "dispatcher_pushes_total", "Pushes the provider accepted, by command priority",
            ["priority"], registry=r,
        )
        self.push_wait = Histogram(
            "dispatcher_push_wait_seconds",
            "From a push being due (created, notBefore, woken, retry time) to its request "
            "being sent, by command priority", ["priority"], buckets=_WAIT_BUCKETS, registry=r,
        )
        self.campaigns = Gauge(
            "dispatcher_campaigns", "Campaigns by state (RUNNING, HALTED, DONE, CANCELLED)",
            ["state"], registry=r,
        )
        self.campaign_commands = Gauge(
            "dispatcher_campaign_commands",
            "Commands of the campaigns kept (until retention removes them), by the campaign's "
            "state and the command's status (counts refreshed every "
            "DISPATCHER_CAMPAIGN_STATUS_INTERVAL_S)", ["state", "status"], registry=r,
        )
        self.campaigns_halted = Counter(
            "dispatcher_campaigns_halted_total",
            "Campaigns this replica halted because their error budget was spent", registry=r,
        )
        self.campaign_commands_created = Counter(
            "dispatcher_campaign_commands_created_total",
            "Commands created by expanding campaigns' targets", registry=r,
        )
        self.build = Info("dispatcher_build", "Version of the running dispatcher", registry=r)
        self.build.info({"version": _version()})

    def zero(self, input_topics: Iterable[str], provider: str) -> None:
        """Create, at 0, the counter series the dashboard and the alerts take increases of.

        A labelled counter appears at its first increment, so Prometheus would first see
        it at 1 or more and ``increase()``/``rate()`` would count nothing for it: the first
        dead letter of a reason, or the first ERROR of a command type, would never show.
        Every label set here is bounded (topics x reasons, outcomes, types x statuses).
        """
        for topic in input_topics:
            for reason in DEAD_LETTER_REASONS:
                self.dead_letters.labels(topic, reason)
        for outcome in PUSH_OUTCOMES:
            self.push_requests.labels(provider, outcome)
        for command in CommandType:
            self.superseded.labels(command.value)
            for status in Status:
                self.command_status.labels(command.value, status.value)
        for priority in Priority:
            self.pushes_by_priority.labels(priority.value)
            self.push_wait.labels(priority.value)

    def readiness(self, checks: Mapping[str, bool]) -> None:
        """Record the result of a readiness check: one ``dependency_up`` series per check."""
        for dependency, ok in checks.items():
            self.dependency_up.labels(dependency).set(int(ok))

    def pool(self, size: int, idle: int, maximum: int) -> None:
        """Record the database pool: connections open, idle and the configured maximum."""
        self.db_pool_size.labels("open").set(size)
        self.db_pool_size.labels("idle").set(idle)
        self.db_pool_max.set(maximum)

    def outbox(self, backlog: int, oldest_age_s: float) -> None:
        """Record the status outbox: events waiting and the age of the oldest."""
        self.outbox_backlog.set(backlog)
        self.outbox_oldest_age.set(max(oldest_age_s, 0.0))

    def pushed(self, provider: str, created_at: datetime, first: bool) -> None:
        """Record a push the provider accepted: created -> pushed, for a command's first."""
        if first:
            age = (datetime.now(UTC) - created_at).total_seconds()
            self.first_push.labels(provider).observe(max(age, 0.0))

    def transitions(self, moved: Iterable[Transition], now: datetime | None = None) -> None:
        """Count transitions (and the age of those that end their command)."""
        moment = now or datetime.now(UTC)
        for t in moved:
            command, status = t.command, t.status
            if status == t.previous:
                continue
            self.command_status.labels(command, status).inc()
            if status not in ("PENDING", "RECEIVED"):
                age = (moment - t.created_at).total_seconds()
                self.completion.labels(command, status).observe(max(age, 0.0))

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


def _version() -> str:
    try:
        return metadata.version("dispatcher")
    except metadata.PackageNotFoundError:
        return "unknown"
