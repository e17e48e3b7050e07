"""One exception root. Each class says whether retrying can help; docstrings are the messages.

The HTTP layer's :class:`~dispatcher.auth.AuthError` and
:class:`~dispatcher.http.common.ApiError` are under this root too, beside the code that
raises and answers them."""

from __future__ import annotations


class DispatcherError(Exception):
    """Dispatcher error."""

    retriable: bool = False

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigError(DispatcherError):
    """Invalid configuration."""


class SchemaNotMigrated(DispatcherError):
    """The database lacks migrations and DISPATCHER_AUTO_MIGRATE is false."""


class StoreUnavailable(DispatcherError):
    """PostgreSQL is unreachable or failed a transient way."""

    retriable = True


class StoreRejected(DispatcherError):
    """PostgreSQL cannot store this input: a value out of range or of the wrong form, a
    violated constraint, or a time past the latest one a timestamp holds.

    Not retriable: the same input fails the same way. The consumer dead-letters the
    input (``store_rejected``); any other error is a fault of the code, not of the input.
    """


class BrokerUnavailable(DispatcherError):
    """The Kafka broker is unreachable or refused a request a transient way."""

    retriable = True


class InvalidEvent(DispatcherError):
    """An input event could not be accepted."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


PUSH_ERROR_MESSAGES: dict[str, str] = {
    "INVALID_TOKEN": "The push provider does not know the device's push token",
    "PUSH_REJECTED": "The push provider refused the push",
    "PUSH_TIMEOUT": "The push provider did not answer in time",
    "PUSH_UNREACHABLE": "The push provider could not be reached",
    "RATE_LIMITED": "The push provider is limiting the rate of pushes",
    "PROVIDER_AUTH": "The push provider refused the dispatcher's credentials",
    "PROVIDER_ERROR": "The push provider failed",
    "SENDER_ID_MISMATCH": "The device's push token belongs to another sender (FCM project)",
    "THIRD_PARTY_AUTH_ERROR": "The push provider's credentials for the device's platform "
                              "were refused (APNs or web push)",
    "PROVIDER_UNAVAILABLE": "The device's push provider is not configured on this dispatcher",
}
"""What a tenant is told for each push ``errorType``; the provider's own text (which may
name other tenants' tokens, accounts or internals) goes to the logs only."""


class PushError(DispatcherError):
    """The push provider did not accept a push.

    ``str(error)`` is for the logs and may quote the provider; :attr:`public_message` is
    what is stored and answered."""

    def __init__(
        self,
        message: str,
        *,
        error_type: str,
        retriable: bool,
        retry_after_s: float | None = None,
        outcome: str = "error",
    ) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.retriable = retriable
        self.retry_after_s = retry_after_s
        self.outcome = outcome

    @property
    def public_message(self) -> str:
        """The fixed message of :attr:`error_type`, never the provider's text."""
        return PUSH_ERROR_MESSAGES.get(self.error_type, "The push could not be delivered")

class SecretRefused(DispatcherError):
    """A command's secret cannot go into its push; the command ends ERROR with ``error_type``."""

    error_type = "SECRET_REFUSED"


class SecretUnreadable(SecretRefused):
    """The command's secret cannot be decrypted with the configured DISPATCHER_SECRET_KEYS."""

    error_type = "SECRET_UNREADABLE"


class NoDeviceKey(SecretRefused):
    """The device has no publicKey, and DISPATCHER_REQUIRE_SEALED_SECRETS forbids clear secrets."""

    error_type = "NO_DEVICE_KEY"
