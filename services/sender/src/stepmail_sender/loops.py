"""The sender's background loops: the outbox relay and the ambiguous-mail recovery."""

import asyncio
import contextlib
import logging

import asyncpg

from stepmail_common.errors import is_retriable
from stepmail_common.events import CloudEvent
from stepmail_common.kafka import EventProducer, Outgoing
from stepmail_sender import metrics, repository
from stepmail_sender.delivery import Deliverer

log = logging.getLogger(__name__)


class _Loop:
    """A periodic pass that can be woken early and stops between passes."""

    def __init__(self, interval: float, wake: asyncio.Event | None = None) -> None:
        self._interval = interval
        self._wake = wake or asyncio.Event()
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                busy = await self.run_once()
            except Exception as exc:
                if not is_retriable(exc):
                    raise
                log.warning(
                    "background pass failed; retrying",
                    extra={"loop": type(self).__name__, "error": repr(exc)},
                )
                busy = False
            if busy:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._interval)
        await self.finish()

    async def run_once(self) -> bool:
        """One pass; ``True`` if there may be more to do right away."""
        raise NotImplementedError

    async def finish(self) -> None:
        """A last pass at shutdown, when it makes sense."""


class OutboxRelay(_Loop):
    """Publishes committed delivery events at least once, then deletes them.

    Rows are taken ``FOR UPDATE SKIP LOCKED`` so replicas share the work; a crash
    between the broker's acknowledgement and the delete republishes the same event ids.
    """

    def __init__(
        self,
        pool: "asyncpg.Pool[asyncpg.Record]",
        producer: EventProducer,
        wake: asyncio.Event,
        *,
        interval: float = 0.5,
        batch: int = 500,
    ) -> None:
        super().__init__(interval, wake)
        self._pool = pool
        self._producer = producer
        self._batch = batch

    async def run_once(self) -> bool:
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await repository.take_outbox(conn, self._batch)
            if not rows:
                return False
            await self._producer.publish_many(
                [Outgoing(r["topic"], CloudEvent.from_dict(r["event"]), r["key"]) for r in rows]
            )
            await repository.delete_outbox(conn, [r["id"] for r in rows])
        metrics.OUTBOX_PUBLISHED.inc(len(rows))
        return len(rows) >= self._batch

    async def finish(self) -> None:
        """Flush what the last handled mails left, so a clean stop leaves no delay."""
        try:
            while await self.run_once():
                pass
        except Exception as exc:
            if not is_retriable(exc):
                raise
            log.warning(
                "outbox not flushed at shutdown; the next start publishes it",
                extra={"error": repr(exc)},
            )


class Recovery(_Loop):
    """Every few seconds, resolves mails left in ``sending`` by dead processes."""

    def __init__(self, deliverer: Deliverer, *, interval: float = 2.0) -> None:
        super().__init__(interval)
        self._deliverer = deliverer

    async def run_once(self) -> bool:
        resolved = await self._deliverer.recover()
        if resolved:
            log.info("ambiguous mails resolved", extra={"count": resolved})
        return False
