"""The error hierarchy every service shares.

Errors carry a ``retriable`` attribute so callers branch on it instead of listing
exception types: a consumer retries a retriable error and dead-letters the rest.
"""

import asyncpg


class StepmailError(Exception):
    """Base class of stepmail's own errors."""

    retriable: bool = False


class RetriableError(StepmailError):
    """A transient failure (a dependency is down): try the same work again later."""

    retriable = True


class PermanentError(StepmailError):
    """The input cannot be processed, however often it is tried."""

    retriable = False


class InvalidEventError(PermanentError):
    """A Kafka message that is not a valid stepmail CloudEvent."""


class InvalidTokenError(PermanentError):
    """A signed token whose signature, key or payload does not check out."""


# Errors of the platform's dependencies that are worth trying again later.
RETRIABLE_TYPES: tuple[type[Exception], ...] = (
    RetriableError,
    OSError,
    TimeoutError,
    # Class 08, the connection broke (ConnectionDoesNotExistError among them).
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.CannotConnectNowError,
    # What a session gets when the server shuts down or restarts (57P01, 57P02): the
    # transaction was rolled back, and dead-lettering the event would lose it.
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    # asyncpg's protocol state error, met when a pooled connection is reset while the
    # server goes away ("cannot switch to state ..."): the work was rolled back with it.
    asyncpg.exceptions.InternalClientError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
)


def is_retriable(exc: BaseException) -> bool:
    """Whether ``exc`` is worth retrying: ours say so, connection-level errors are."""
    if isinstance(exc, StepmailError):
        return exc.retriable
    return isinstance(exc, RETRIABLE_TYPES)
