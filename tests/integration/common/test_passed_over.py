"""Consumers that act on some event types against the real broker: the other types never
reach the handler, are not checked (so not dead-lettered by a consumer they are not for),
and are committed with the rest."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from stepmail_common import event_types
from stepmail_common.events import CloudEvent
from stepmail_common.kafka import (
    BatchConsumer,
    EventConsumer,
    EventProducer,
    Serialised,
    ensure_topics,
)
from stepmail_common.topics import Topics
from tests.integration.kafka_reader import read_records
from tests.integration.sample_events import erased

pytestmark = pytest.mark.integration


def _batch_consumer(
    bootstrap: str, topic: str, producer: EventProducer, seen: list[str], done: asyncio.Event
) -> BatchConsumer[CloudEvent]:
    async def handle(batch: Sequence[CloudEvent]) -> None:
        seen.extend(event.id for event in batch)
        done.set()

    return BatchConsumer(
        bootstrap=bootstrap,
        topics=[topic],
        group_id=f"{topic}.group",
        prepare=lambda event: event,
        handler=handle,
        producer=producer,
        acts_on={event_types.CONTACT_ERASED},
    )


def _event_consumer(
    bootstrap: str, topic: str, producer: EventProducer, seen: list[str], done: asyncio.Event
) -> EventConsumer:
    async def handle(event: CloudEvent) -> None:
        seen.append(event.id)
        done.set()

    return EventConsumer(
        bootstrap=bootstrap,
        topics=[topic],
        group_id=f"{topic}.group",
        handler=handle,
        producer=producer,
        acts_on={event_types.CONTACT_ERASED},
    )


@pytest.mark.parametrize("make", [_batch_consumer, _event_consumer], ids=["batch", "event"])
def test_other_types_are_passed_over_unchecked_and_committed(
    kafka_bootstrap: str, make: Callable[..., BatchConsumer[CloudEvent] | EventConsumer]
) -> None:
    topics = Topics(f"over{uuid.uuid4().hex[:8]}.")
    topic = topics.contact_events
    first, second = erased("c-1"), erased("c-1")
    # A trigger event for another consumer, and one whose data does not match its schema:
    # checking it is the work of the consumers that act on it.
    other = CloudEvent(
        type=event_types.EVENT_RECEIVED, source="urn:stepmail:test", subject="c-1", data={}
    )

    async def scenario() -> tuple[list[str], int | None]:
        await ensure_topics(kafka_bootstrap, [topic], 1)
        seen: list[str] = []
        async with EventProducer(kafka_bootstrap, "test-over", enable_idempotence=False) as p:
            await p.publish(topic, first, key="c-1")
            await p.publish_many([Serialised(topic, other.to_json(), "c-1")])
            await p.publish(topic, second, key="c-1")
            progress = asyncio.Event()
            consumer = make(kafka_bootstrap, topic, p, seen, progress)
            await consumer.start()
            task = asyncio.create_task(consumer.run())
            try:
                async with asyncio.timeout(30):
                    while len(seen) < 2:
                        await progress.wait()
                        progress.clear()
            finally:
                await consumer.stop()
                await task
        group = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=f"{topic}.group")
        await group.start()
        try:
            return seen, await group.committed(TopicPartition(topic, 0))
        finally:
            await group.stop()

    seen, committed = asyncio.run(scenario())
    assert seen == [first.id, second.id]
    assert committed == 3, "committed past the event passed over"
    dead = asyncio.run(read_records(kafka_bootstrap, Topics.dlq(topic), 1, within=1))
    assert dead == [], "an event passed over is not this consumer's to dead-letter"
