"""The outbox against real Postgres and the real broker: an event is checked when it is
stored, and the relay publishes it as stored, with the trace it was stored with."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from stepmail_common import db
from stepmail_common.errors import InvalidEventError
from stepmail_common.kafka import EventProducer, ensure_topics
from stepmail_common.outbox import OutboxEvent, OutboxRelay, add
from tests.integration.kafka_reader import parse_event, read_records
from tests.integration.sample_events import erased

pytestmark = pytest.mark.integration

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_checked_when_stored_then_published_as_stored(database_url: str, kafka_bootstrap: str):
    topic = f"outbox{uuid.uuid4().hex[:8]}.contact-events"
    schema = f"outbox_{uuid.uuid4().hex[:8]}"
    # More than one event per key, so that the order they were added in shows on the topic.
    events = [erased(f"c-{i % 7}") for i in range(40)]

    async def scenario() -> int:
        await ensure_topics(kafka_bootstrap, [topic], 1)
        pool = await db.create_pool(database_url, schema)
        try:
            async with pool.acquire() as conn:
                await conn.execute(f'CREATE SCHEMA "{schema}"')
                await conn.execute(
                    "CREATE TABLE outbox (id bigserial PRIMARY KEY, topic text NOT NULL,"
                    " key text NOT NULL, event json NOT NULL, trace json,"
                    " created_at timestamptz NOT NULL DEFAULT now())"
                )
                with pytest.raises(InvalidEventError, match="schema"):
                    async with conn.transaction():
                        await add(conn, [OutboxEvent(topic, "c-bad", erased("c-bad", "yesterday"))])
                async with conn.transaction():
                    await add(
                        conn,
                        [
                            OutboxEvent(
                                topic,
                                e.subject,
                                e,
                                trace={"traceparent": TRACEPARENT} if i % 2 else None,
                            )
                            for i, e in enumerate(events)
                        ],
                    )
            async with EventProducer(kafka_bootstrap, "test", enable_idempotence=False) as p:
                relay = OutboxRelay(pool, p, interval=1.0)
                assert await relay.run_once() is False, "fewer rows than a batch"
            left: int = await pool.fetchval("SELECT count(*) FROM outbox")
            return left
        finally:
            await pool.close()

    assert asyncio.run(scenario()) == 0
    records = asyncio.run(read_records(kafka_bootstrap, topic, len(events)))
    assert [parse_event(r) for r in records] == events
    for i, record in enumerate(records):
        traceparent = dict(record.headers).get("traceparent")
        assert traceparent == (TRACEPARENT.encode() if i % 2 else None)
        assert record.key == parse_event(record).subject.encode()
