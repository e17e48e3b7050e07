"""One exception root: every error the dispatcher raises on purpose is a DispatcherError,
and whether retrying can help is a property of its class."""

from __future__ import annotations

import pytest

from dispatcher.auth import AuthError
from dispatcher.exceptions import DispatcherError, StoreRejected, StoreUnavailable
from dispatcher.http.common import ApiError, Code


@pytest.mark.parametrize("error", [
    StoreRejected("CheckViolationError: no"),
    AuthError("missing", "No auth token"),
    ApiError(404, Code.ENTITY_NOT_FOUND, "Entity not found"),
])
def test_every_error_is_under_the_root_and_keeps_its_message(error: Exception) -> None:
    assert isinstance(error, DispatcherError)
    assert str(error) in ("CheckViolationError: no", "No auth token", "Entity not found")


def test_a_rejection_is_not_retriable_an_outage_is() -> None:
    assert StoreRejected.retriable is False
    assert StoreUnavailable.retriable is True
    assert StoreRejected().args[0].startswith("PostgreSQL cannot store this input")


def test_the_store_boundary_tells_bugs_and_bad_arguments_from_outages() -> None:
    """A statement called with the wrong number of arguments is a bug: retried as an
    outage it spun 21 times and dropped the answer (the lanes' hand-back did this)."""
    import asyncpg
    import pytest

    from dispatcher.exceptions import StoreRejected, StoreUnavailable
    from dispatcher.store import _boundary

    bug = asyncpg.exceptions.InterfaceError(
        "the server expects 3 arguments for this query, 2 were passed")
    with pytest.raises(asyncpg.exceptions.InterfaceError), _boundary():
        raise bug
    with pytest.raises(StoreRejected), _boundary():
        raise asyncpg.exceptions._base.DataError("invalid input for query argument $1")
    with pytest.raises(StoreUnavailable), _boundary():
        raise asyncpg.exceptions.InterfaceError("connection is closed")
    stuck = asyncpg.exceptions._base.InternalClientError(
        "cannot switch to state 15; another operation (2) is in progress")
    with pytest.raises(StoreUnavailable), _boundary():
        raise stuck  # a connection a dead server left mid-operation: retried
    with pytest.raises(asyncpg.exceptions._base.InternalClientError), _boundary():
        raise asyncpg.exceptions._base.InternalClientError("something else")  # a bug
