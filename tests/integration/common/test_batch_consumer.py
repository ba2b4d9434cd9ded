"""The batch consumer against the real broker: what a batch handler reports as failed is
dead-lettered alone with its reason; the rest is handled once and committed."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

import pytest

from stepmail_common.errors import PermanentError
from stepmail_common.events import CloudEvent
from stepmail_common.kafka import DLQ_REASON, BatchConsumer, EventProducer, Failures, ensure_topics
from stepmail_common.topics import Topics
from tests.integration.kafka_reader import read_records
from tests.integration.sample_events import erased

pytestmark = pytest.mark.integration


async def _run_until(consumer: BatchConsumer[CloudEvent], done: asyncio.Event) -> None:
    await consumer.start()
    task = asyncio.create_task(consumer.run())
    try:
        await asyncio.wait_for(done.wait(), timeout=30)
    finally:
        await consumer.stop()
        await task


def test_failed_items_are_dead_lettered_alone_and_the_rest_committed(kafka_bootstrap: str):
    topics = Topics(f"batch{uuid.uuid4().hex[:8]}.")
    topic, group = topics.contact_events, f"{topics.prefix}consumer"
    events = [erased("c-same") for _ in range(6)]
    poisoned = events[2].id

    late = erased("c-late")

    async def scenario() -> tuple[list[str], list[str]]:
        await ensure_topics(kafka_bootstrap, [topic], 2)
        handled: list[str] = []
        done = asyncio.Event()
        async with EventProducer(kafka_bootstrap, "test-batch", enable_idempotence=False) as p:
            for event in events:
                await p.publish(topic, event, key=event.subject)

            async def handle(batch: Sequence[CloudEvent]) -> Failures:
                failures: dict[int, Exception] = {}
                for index, event in enumerate(batch):
                    if event.id == poisoned:
                        failures[index] = PermanentError("contact c-same cannot be erased")
                    else:
                        handled.append(event.id)
                if len(handled) >= len(events) - 1:
                    done.set()
                return failures

            first = BatchConsumer(
                bootstrap=kafka_bootstrap,
                topics=[topic],
                group_id=group,
                prepare=lambda event: event,
                handler=handle,
                producer=p,
            )
            await _run_until(first, done)

            # The group's offsets are committed: a second consumer of the group gets nothing
            # until a new event arrives, and then only that one.
            again: list[str] = []
            await p.publish(topic, late, key=late.subject)
            arrived = asyncio.Event()

            async def collect(batch: Sequence[CloudEvent]) -> None:
                again.extend(event.id for event in batch)
                arrived.set()

            second = BatchConsumer(
                bootstrap=kafka_bootstrap,
                topics=[topic],
                group_id=group,
                prepare=lambda event: event,
                handler=collect,
                producer=p,
            )
            await _run_until(second, arrived)
        return handled, again

    handled, again = asyncio.run(scenario())
    assert handled == [e.id for e in events if e.id != poisoned], "in order, each once"
    assert again == [late.id]

    dead = asyncio.run(read_records(kafka_bootstrap, Topics.dlq(topic), 1, within=10))
    assert len(dead) == 1
    assert CloudEvent.from_json(dead[0].value or b"").id == poisoned
    headers = dict(dead[0].headers)
    assert headers[DLQ_REASON] == b"PermanentError: contact c-same cannot be erased"


def test_a_consumer_after_another_waits_until_that_group_has_caught_up(kafka_bootstrap: str):
    """The sender's rule: unsubscribes published before it started are applied before any
    mail is handled, however slowly the feedback consumer goes."""
    topics = Topics(f"after{uuid.uuid4().hex[:8]}.")
    feedback_topic, mail_topic = topics.engagement_events, topics.mail_rendered
    backlog = [erased(f"c-{i}") for i in range(30)]
    mail = erased("c-mail")

    async def scenario() -> list[int]:
        await ensure_topics(kafka_bootstrap, [feedback_topic], 2)
        await ensure_topics(kafka_bootstrap, [mail_topic], 1)
        applied: list[str] = []
        seen_when_mail_handled: list[int] = []
        done = asyncio.Event()
        async with EventProducer(kafka_bootstrap, "test-after", enable_idempotence=False) as p:
            for event in backlog:
                await p.publish(feedback_topic, event, key=event.subject)
            await p.publish(mail_topic, mail, key=mail.subject)

            async def apply(batch: Sequence[CloudEvent]) -> None:
                await asyncio.sleep(0.1)  # a slow feedback consumer
                applied.extend(e.id for e in batch)

            async def send(batch: Sequence[CloudEvent]) -> None:
                seen_when_mail_handled.append(len(applied))
                done.set()

            feedback = BatchConsumer(
                bootstrap=kafka_bootstrap,
                topics=[feedback_topic],
                group_id=f"{topics.prefix}feedback",
                prepare=lambda e: e,
                handler=apply,
                producer=p,
                max_batch=3,
            )
            mails = BatchConsumer(
                bootstrap=kafka_bootstrap,
                topics=[mail_topic],
                group_id=f"{topics.prefix}mails",
                prepare=lambda e: e,
                handler=send,
                producer=p,
                after=feedback,
            )
            await asyncio.gather(feedback.start(), mails.start())
            tasks = [asyncio.create_task(c.run()) for c in (feedback, mails)]
            try:
                await asyncio.wait_for(done.wait(), timeout=60)
            finally:
                for consumer in (feedback, mails):
                    await consumer.stop()
                await asyncio.gather(*tasks)
        return seen_when_mail_handled

    assert asyncio.run(scenario()) == [len(backlog)]
