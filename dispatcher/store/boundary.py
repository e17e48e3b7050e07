"""The driver boundary: which asyncpg errors mean "retry" and which mean "this input".

A lost connection or a server shutting down becomes :class:`StoreUnavailable`
(retriable); a data error or a violated constraint (the input cannot be stored) becomes
:class:`StoreRejected`; anything else (a fault of the code or the schema) propagates as
the driver raised it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg

from dispatcher.exceptions import StoreRejected, StoreUnavailable

TRANSIENT = (
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.ConnectionFailureError,
    asyncpg.exceptions.PostgresConnectionError,
    ConnectionError,
    OSError,
    TimeoutError,
)

REJECTED = (
    asyncpg.exceptions.DataError,  # class 22: out of range, invalid text, NUL, bad JSON
    asyncpg.exceptions.IntegrityConstraintViolationError,  # class 23: constraints
    asyncpg.exceptions.ProgramLimitExceededError,  # class 54: e.g. an index row too large
)
"""PostgreSQL's errors that mean "this input cannot be stored" (:class:`StoreRejected`)."""


@contextmanager
def boundary() -> Iterator[None]:
    """Wrap driver errors: transient ones as StoreUnavailable, data ones as StoreRejected."""
    try:
        yield
    except asyncpg.exceptions._base.DataError as exc:
        # the driver refused an argument before sending it (e.g. a string for an int):
        # this input, not the connection
        raise StoreRejected(f"{type(exc).__name__}: {exc}") from exc
    except asyncpg.exceptions.InterfaceError as exc:
        if "arguments for this query" in str(exc):
            raise  # a statement called with the wrong number of arguments: a bug, not an outage
        raise StoreUnavailable(str(exc) or type(exc).__name__) from exc
    except asyncpg.exceptions._base.InternalClientError as exc:
        if "is in progress" not in str(exc):
            raise
        # a connection left mid-operation by a server that went away (seen in
        # tests/faults/test_database_restart.py: "cannot switch to state 15; another
        # operation (2) is in progress" at BEGIN): an outage; the pool's reset then fails
        # on it and terminates the connection, so the retry gets a new one
        raise StoreUnavailable(str(exc)) from exc
    except TRANSIENT as exc:
        raise StoreUnavailable(str(exc) or type(exc).__name__) from exc
    except REJECTED as exc:
        raise StoreRejected(f"{type(exc).__name__}: {exc}") from exc


def is_transient(exc: BaseException) -> bool:
    """Whether a database error may go away by retrying."""
    return isinstance(exc, TRANSIENT)
