"""The outbox relay: publishes committed outbox rows at least once, then deletes them.

Several replicas can run it: rows are taken ``FOR UPDATE SKIP LOCKED``. A crash between
the broker's acknowledgement and the delete republishes the same event ids, which
consumers deduplicate.
"""

import asyncio
import contextlib
import logging

import asyncpg

from stepmail_common.errors import RetriableError
from stepmail_common.events import CloudEvent
from stepmail_common.kafka import EventProducer, Outgoing
from stepmail_orchestrator import metrics, repository

log = logging.getLogger(__name__)


class OutboxRelay:
    def __init__(
        self,
        pool: "asyncpg.Pool[asyncpg.Record]",
        producer: EventProducer,
        ready: asyncio.Event,
        *,
        interval: float,
        batch: int = 500,
    ) -> None:
        self._pool = pool
        self._producer = producer
        self._ready = ready
        self._interval = interval
        self._batch = batch
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        self._stopping.set()
        self._ready.set()

    async def run(self) -> None:
        while not self._stopping.is_set():
            self._ready.clear()
            try:
                sent = await self.publish_pending()
            except (
                RetriableError,
                OSError,
                asyncpg.PostgresConnectionError,
                asyncpg.InterfaceError,
            ) as exc:
                log.warning(
                    "outbox relay pass failed; retrying", extra={"error": exc.__class__.__name__}
                )
                sent = 0
            if sent >= self._batch:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), timeout=self._interval)

    async def publish_pending(self) -> int:
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await repository.take_outbox(conn, self._batch)
            if not rows:
                return 0
            await self._producer.publish_many(
                [
                    Outgoing(r["topic"], CloudEvent.from_dict(r["event"]), r["key"], r["trace"])
                    for r in rows
                ]
            )
            await repository.delete_outbox(conn, [r["id"] for r in rows])
        metrics.OUTBOX_PUBLISHED.inc(len(rows))
        return len(rows)
