"""Which dependency errors are retried rather than dead-lettered."""

import asyncpg
import pytest

from stepmail_common.errors import PermanentError, is_retriable


@pytest.mark.parametrize(
    "exc",
    [
        # A Postgres restart: sessions are told to go, then new connections are refused.
        asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator"),
        asyncpg.exceptions.CrashShutdownError("terminating connection"),
        asyncpg.exceptions.CannotConnectNowError("the database system is shutting down"),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"),
        asyncpg.exceptions.ConnectionFailureError("connection failure"),
        asyncpg.exceptions.InternalClientError("cannot switch to state 15"),
        ConnectionRefusedError(111, "Connection refused"),
        asyncpg.exceptions.DeadlockDetectedError("deadlock detected"),
    ],
)
def test_an_outage_of_postgres_is_retried(exc: Exception):
    assert is_retriable(exc)


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.exceptions.UniqueViolationError("duplicate key"),
        asyncpg.exceptions.QueryCanceledError("canceling statement due to statement timeout"),
        PermanentError("bad event"),
        ValueError("bad data"),
    ],
)
def test_what_retrying_cannot_fix_is_not(exc: Exception):
    assert not is_retriable(exc)
