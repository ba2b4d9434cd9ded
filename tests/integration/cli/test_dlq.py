"""``stepmail dlq list|replay`` against the real broker, on dead letters made by the real
consumer: a broken handler dead-letters, the fixed one takes the replayed events."""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import Awaitable, Callable

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from stepmail_cli.main import run
from stepmail_common.errors import PermanentError
from stepmail_common.events import CloudEvent
from stepmail_common.kafka import EventConsumer, EventProducer, ensure_topics
from stepmail_common.topics import Topics
from tests.integration.kafka_reader import read_records
from tests.integration.sample_events import erased

pytestmark = pytest.mark.integration


async def _count(bootstrap: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        return sum((await consumer.end_offsets(tps)).values())
    finally:
        await consumer.stop()


async def _consume(
    bootstrap: str,
    topic: str,
    group: str,
    handler: Callable[[CloudEvent], None],
    until: Callable[[], Awaitable[bool]],
) -> None:
    """Run the platform's consumer with ``handler`` until ``until()`` holds."""
    async with EventProducer(bootstrap, "test-dlq", enable_idempotence=False) as producer:

        async def handle(event: CloudEvent) -> None:
            handler(event)

        consumer = EventConsumer(
            bootstrap=bootstrap, topics=[topic], group_id=group, handler=handle, producer=producer
        )
        await consumer.start()
        task = asyncio.create_task(consumer.run())
        try:
            deadline = asyncio.get_running_loop().time() + 30
            while not await until():
                assert asyncio.get_running_loop().time() < deadline, "consumer made no progress"
                await asyncio.sleep(0.05)
        finally:
            await consumer.stop()
            await task


def _cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = run(list(argv), out=out)
    return code, out.getvalue()


def test_dead_letters_are_listed_then_replayed_once_each(kafka_bootstrap: str):
    topics = Topics(f"dlq{uuid.uuid4().hex[:8]}.")
    topic, dlq = topics.contact_events, Topics.dlq(topics.contact_events)
    group = f"{topics.prefix}consumer"
    events = [erased(f"c-{i}") for i in range(3)]

    async def dead_letter_three() -> None:
        await ensure_topics(kafka_bootstrap, [topic], 2)
        async with EventProducer(kafka_bootstrap, "test-dlq", enable_idempotence=False) as p:
            for event in events:
                await p.publish(topic, event, key=event.subject)

        def broken(event: CloudEvent) -> None:
            raise PermanentError("template 'welcome' v3 does not compile")

        async def three_dead() -> bool:
            return await _count(kafka_bootstrap, dlq) >= 3

        await _consume(kafka_bootstrap, topic, group, broken, three_dead)

    asyncio.run(dead_letter_three())
    bootstrap = ("--bootstrap-servers", kafka_bootstrap)

    code, listed = _cli("dlq", "list", dlq, *bootstrap)
    assert code == 0, listed
    lines = listed.strip().splitlines()
    assert len(lines) == 4
    for event in events:
        line = next(line for line in lines if event.id in line)
        assert f"from {topic} " in line
        assert f"(group {group})" in line
        assert f"key {event.subject}" in line
        assert line.endswith(": PermanentError: template 'welcome' v3 does not compile")
    assert lines[-1] == f"{dlq}: 3 dead letters not yet replayed"

    code, dry = _cli("dlq", "replay", dlq, "--dry-run", *bootstrap)
    assert code == 0, dry
    assert sum(line.startswith("would replay ") for line in dry.splitlines()) == 3
    assert dry.strip().splitlines()[-1] == f"{dlq}: would replay 3 of 3 to {topic}"
    assert asyncio.run(_count(kafka_bootstrap, topic)) == 3, "a dry run publishes nothing"

    code, first = _cli("dlq", "replay", dlq, "--limit", "2", *bootstrap)
    assert code == 0, first
    assert first.strip().splitlines()[-1] == f"{dlq}: replayed 2 to {topic}; 1 left"
    code, listed = _cli("dlq", "list", dlq, *bootstrap)
    assert listed.strip().splitlines()[-1] == f"{dlq}: 1 dead letters not yet replayed"

    code, rest = _cli("dlq", "replay", dlq, *bootstrap)
    assert code == 0, rest
    assert rest.strip().splitlines()[-1] == f"{dlq}: replayed 1 to {topic}; 0 left"
    code, again = _cli("dlq", "replay", dlq, *bootstrap)
    assert again.strip().splitlines()[-1] == f"{dlq}: replayed 0 to {topic}; 0 left"

    records = sorted(
        asyncio.run(read_records(kafka_bootstrap, topic, 6, within=20)),
        key=lambda r: (r.partition, r.offset),
    )
    copies = [r for r in records if dict(r.headers).get("stepmail-replays")]
    assert len(copies) == 3, "each dead letter was replayed exactly once"
    originals = {r.value: r for r in records if r not in copies}
    for copy in copies:
        original = originals[copy.value]
        assert copy.key == original.key
        headers = dict(copy.headers)
        assert headers["stepmail-replays"] == b"1"
        assert not [k for k in headers if k.startswith("stepmail-dlq-")]
        # Everything else as first published (content type, and traceparent when traced).
        assert [h for h in copy.headers if h[0] != "stepmail-replays"] == list(original.headers)

    # The fixed consumer takes the replayed events where it left off: each once.
    handled: list[str] = []

    async def all_handled() -> bool:
        return len(handled) >= 3

    asyncio.run(
        _consume(kafka_bootstrap, topic, group, lambda e: handled.append(e.id), all_handled)
    )
    assert sorted(handled) == sorted(e.id for e in events)
    code, listed = _cli("dlq", "list", dlq, "--all", *bootstrap)
    assert listed.strip().splitlines()[-1] == f"{dlq}: 3 dead letters"


def test_a_topic_that_is_no_dead_letter_topic_is_refused(kafka_bootstrap: str):
    code, out = _cli(
        "dlq", "replay", "stepmail.contact-events", "--bootstrap-servers", kafka_bootstrap
    )
    assert code == 2
    assert "not a dead-letter topic" in out
    code, out = _cli(
        "dlq", "list", f"nowhere{uuid.uuid4().hex[:6]}.dlq", "--bootstrap-servers", kafka_bootstrap
    )
    assert code == 2
    assert "no such topic" in out
