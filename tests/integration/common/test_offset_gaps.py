"""Several producers write to one partition at once while a consumer reads it live.

The embedded broker can show the batch of one produce request before the batch of a
concurrent one with lower offsets; the consumer must wait for the late batch rather than
step past it (``stepmail_common.offset_gaps``). Whether a given run meets such a moment
is chance, so the run counts the holes it met; what it asserts holds either way: every
acknowledged event is handled.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

import pytest

from stepmail_common import telemetry
from stepmail_common.events import CloudEvent
from stepmail_common.kafka import BatchConsumer, EventProducer, Outgoing, ensure_topics
from stepmail_common.topics import Topics
from tests.integration.sample_events import erased

pytestmark = pytest.mark.integration

PRODUCERS = 4
ROUNDS = 150


def _gaps(topic: str, outcome: str) -> float:
    return telemetry.KAFKA_OFFSET_GAPS.labels(topic, outcome)._value.get()


def test_a_live_consumer_handles_every_event_that_concurrent_producers_wrote(
    kafka_bootstrap: str,
) -> None:
    topics = Topics(f"gaps{uuid.uuid4().hex[:8]}.")
    topic = topics.contact_events

    async def produce(name: str, acked: set[str]) -> None:
        async with EventProducer(kafka_bootstrap, name, enable_idempotence=False) as producer:
            for round_ in range(ROUNDS):
                # Few events share the producer's batches; 16 or more go as batches of
                # their own: both paths, to every partition.
                events = [erased(f"c-{i}") for i in range(3 if round_ % 2 else 20)]
                await producer.publish_many([Outgoing(topic, e, e.subject) for e in events])
                acked.update(e.id for e in events)

    async def scenario() -> tuple[set[str], set[str]]:
        await ensure_topics(kafka_bootstrap, [topic], 2)
        acked: set[str] = set()
        handled: set[str] = set()

        async def handle(batch: Sequence[CloudEvent]) -> None:
            handled.update(e.id for e in batch)

        async with EventProducer(kafka_bootstrap, "gaps-dlq", enable_idempotence=False) as dlq:
            consumer = BatchConsumer(
                bootstrap=kafka_bootstrap,
                topics=[topic],
                group_id=f"{topics.prefix}reader",
                prepare=lambda e: e,
                handler=handle,
                producer=dlq,
            )
            await consumer.start()
            task = asyncio.create_task(consumer.run())
            try:
                await asyncio.gather(*(produce(f"gaps-{i}", acked) for i in range(PRODUCERS)))
                for _ in range(300):
                    if handled >= acked:
                        break
                    await asyncio.sleep(0.1)
            finally:
                await consumer.stop()
                await task
        return acked, handled

    acked, handled = asyncio.run(scenario())
    assert len(acked) == PRODUCERS * ROUNDS * (20 + 3) // 2
    assert acked - handled == set(), f"{len(acked - handled)} acknowledged events never handled"
    print(f"holes filled: {_gaps(topic, 'filled')}, stepped over: {_gaps(topic, 'stepped_over')}")
