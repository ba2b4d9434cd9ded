"""The transactional outbox: events commit with the state change that caused them, and a
relay publishes them at least once.

Each service that uses it has this table in its own schema (in its migrations)::

    CREATE TABLE outbox (
        id bigserial PRIMARY KEY, topic text NOT NULL, key text NOT NULL,
        event json NOT NULL, trace json, created_at timestamptz NOT NULL DEFAULT now());

``json``, not ``jsonb``: the relay publishes the stored text as it is, so nothing is gained
by Postgres building a binary document of each event and printing it again.

Several relays (replicas) share the rows with ``FOR UPDATE SKIP LOCKED``; a crash between
the broker's acknowledgement and the delete republishes the same event ids, which
consumers deduplicate.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

from prometheus_client import Counter

from stepmail_common import telemetry
from stepmail_common.errors import is_retriable
from stepmail_common.events import CloudEvent, validate
from stepmail_common.kafka import EventProducer, Serialised
from stepmail_common.loops import PeriodicLoop

if TYPE_CHECKING:
    import asyncpg
    from asyncpg.pool import PoolConnectionProxy

    Connection = (
        asyncpg.Pool[asyncpg.Record]
        | asyncpg.Connection[asyncpg.Record]
        | PoolConnectionProxy[asyncpg.Record]
    )

log = logging.getLogger(__name__)

OUTBOX_PUBLISHED = Counter(
    "stepmail_outbox_published_total", "Events relayed from the transactional outbox"
)


# An event as stored: its Kafka key, its document and the carrier of its trace.
StoredEvent: TypeAlias = tuple[str, dict[str, Any], dict[str, str] | None]


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """An event to publish; ``trace`` is the carrier of its trace (default: the current)."""

    topic: str
    key: str
    event: CloudEvent
    trace: dict[str, str] | None = None


async def add(conn: Connection, events: Sequence[OutboxEvent]) -> None:
    """Write ``events`` in the caller's transaction, each checked against its schema first
    (``InvalidEventError``), so the relay publishes them as they are stored."""
    current = telemetry.trace_carrier() or None  # no trace: NULL, not an empty carrier
    docs = [e.event.to_dict() for e in events]
    for doc in docs:
        validate(doc)
    await _insert(
        conn,
        [e.topic for e in events],
        [e.key for e in events],
        docs,
        [e.trace or current for e in events],
    )


async def add_documents(conn: Connection, topic: str, rows: Sequence[StoredEvent]) -> None:
    """Write events of ``topic`` already made into documents, as they will be published,
    in the caller's transaction: for a caller whose documents a property test holds to
    their schemas (the sender's delivery events), as a check per event is a cost on a hot
    path."""
    await _insert(
        conn,
        [topic] * len(rows),
        [key for key, _, _ in rows],
        [doc for _, doc, _ in rows],
        [trace for _, _, trace in rows],
    )


async def _insert(
    conn: Connection,
    topics: list[str],
    keys: list[str],
    docs: list[dict[str, Any]],
    traces: list[dict[str, str] | None],
) -> None:
    # One statement for all rows (not one execution per row); ids follow the given order.
    await conn.execute(
        "INSERT INTO outbox (topic, key, event, trace)"
        " SELECT topic, key, event, trace"
        " FROM unnest($1::text[], $2::text[], $3::json[], $4::json[])"
        " WITH ORDINALITY AS v(topic, key, event, trace, n) ORDER BY n",
        topics,
        keys,
        docs,
        traces,
    )


class OutboxRelay(PeriodicLoop):
    """Publishes committed outbox rows in id order and deletes them.

    A pass costs a transaction and a publish however few rows it takes; ``settle`` lets
    the rows of several transactions gather before a woken pass, where a little latency
    of the events is worth less than the CPU of a pass per transaction.
    """

    def __init__(
        self,
        pool: asyncpg.Pool[asyncpg.Record],
        producer: EventProducer,
        *,
        interval: float,
        wake: asyncio.Event | None = None,
        settle: float = 0.0,
        batch: int = 500,
    ) -> None:
        super().__init__(interval, wake, settle)
        self._pool = pool
        self._producer = producer
        self._batch = batch

    async def run_once(self) -> bool:
        # Taken and deleted in one statement; the transaction commits only after the
        # broker acknowledged, so a failed publish rolls the rows back for the next pass.
        async with self._pool.acquire() as conn, conn.transaction():
            rows = sorted(
                await conn.fetch(
                    "DELETE FROM outbox WHERE id = ANY(ARRAY("
                    "SELECT id FROM outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED))"
                    " RETURNING id, topic, key, event::text AS event, trace",
                    self._batch,
                ),
                key=lambda r: r["id"],
            )
            if not rows:
                return False
            await self._producer.publish_many(
                [Serialised(r["topic"], r["event"].encode(), r["key"], r["trace"]) for r in rows]
            )
        OUTBOX_PUBLISHED.inc(len(rows))
        return len(rows) >= self._batch

    async def finish(self) -> None:
        """Flush what the last handled messages left, so a clean stop leaves no delay."""
        try:
            while await self.run_once():
                pass
        except Exception as exc:
            if not is_retriable(exc):
                raise
            log.warning(
                "outbox not flushed at shutdown; the next start publishes it",
                extra={"error": exc.__class__.__name__},
            )
