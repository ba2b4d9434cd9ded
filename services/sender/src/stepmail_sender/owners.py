"""This process's identity in the ledger, and how the ledger tells the living from the dead.

Each sender process holds, for its whole life, a session-level Postgres advisory lock on
a dedicated connection; the lock's key is the ``owner`` written into every row the
process claims. An owner is alive exactly while some session holds its lock. A process
that is killed (even with SIGKILL) loses its connection and with it the lock at once, so
its rows in ``sending`` are recognised as orphans without waiting for any timeout.

If the lock connection itself breaks, this process can no longer prove it is alive and
others may declare its mails ambiguous, so it stops (the supervisor restarts it).
"""

import asyncio
import contextlib
import logging
import secrets
from typing import Any

import asyncpg

from stepmail_common.errors import StepmailError
from stepmail_sender import repository

log = logging.getLogger(__name__)

_MAX_OWNER = 2**31 - 1


class LeaseLostError(StepmailError):
    """The connection holding this process's owner lock broke."""


class OwnerLease:
    """Holds the owner lock on its own connection; ``run`` watches that connection."""

    def __init__(self, dsn: str, schema: str, *, check_interval: float = 2.0) -> None:
        self._dsn = dsn
        self._schema = schema
        self._check_interval = check_interval
        self._conn: asyncpg.Connection[Any] | None = None
        self._stopping = asyncio.Event()
        self._owner: int | None = None

    @property
    def owner(self) -> int:
        if self._owner is None:
            raise RuntimeError("the owner lease is not started")
        return self._owner

    async def start(self) -> None:
        """Connect and take a fresh owner key: one no live session holds and no row carries."""
        if self._conn is not None:
            return
        conn = await asyncpg.connect(
            self._dsn, server_settings={"search_path": f'"{self._schema}",public'}
        )
        try:
            for _ in range(100):
                candidate = secrets.randbelow(_MAX_OWNER) + 1
                if await repository.try_owner_lock(conn, candidate):
                    self._conn, self._owner = conn, candidate
                    log.info("owner lock taken", extra={"owner": candidate})
                    return
            raise RuntimeError("no free owner key found")
        except BaseException:
            await conn.close()
            raise

    async def run(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=self._check_interval)
            if self._stopping.is_set():
                return
            conn = self._conn
            try:
                if conn is None or conn.is_closed():
                    raise LeaseLostError("owner lock connection is closed")
                await conn.fetchval("SELECT 1", timeout=self._check_interval * 2)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                raise LeaseLostError(f"owner lock connection broke: {exc!r}") from exc

    async def stop(self) -> None:
        self._stopping.set()

    async def close(self) -> None:
        """Release the lock by closing its connection; safe twice."""
        self._stopping.set()
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(OSError, asyncpg.InterfaceError):
                await conn.close(timeout=5)
