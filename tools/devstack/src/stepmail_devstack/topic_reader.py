"""Reading a whole topic from its start, as tests and checks do, while it is written.

Two traits of the embedded broker are allowed for here: a batch can become visible after
one with higher offsets (so the reading waits at a hole, see
``stepmail_common.offset_gaps``), and its ListOffsets answer for a partition's end is the
last batch's first offset plus one (so the end is taken from a fetch's high watermark).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from stepmail_common.kafka import admit_fetched
from stepmail_common.offset_gaps import GapGuard

Records = list[ConsumerRecord[bytes, bytes]]


class ReadTimeout(AssertionError):
    """The deadline passed before the reading had what it waited for."""

    def __init__(self, message: str, records: Records) -> None:
        super().__init__(message)
        self.records = records


async def read_topic(
    bootstrap: str,
    topic: str,
    until: Callable[[Records], bool],
    within: float = 20.0,
) -> Records:
    """Read ``topic`` from the start until ``until(records)`` holds; ``ReadTimeout`` at
    the deadline, saying how far each partition was read and where its end is."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    records: Records = []
    try:
        deadline = time.monotonic() + within
        tps = await _partitions(consumer, topic, deadline)
        consumer.assign(tps)
        guard: GapGuard[TopicPartition] = GapGuard()
        for tp, start in (await consumer.beginning_offsets(tps)).items():
            consumer.seek(tp, start)
            guard.expect(tp, start)
        while True:
            if until(records):
                return records
            if time.monotonic() > deadline:
                break
            fetched = await admit_fetched(consumer, guard, await consumer.getmany(timeout_ms=200))
            for kept in fetched.values():
                records.extend(kept)
        where = ", ".join(
            f"p{tp.partition}: read to {guard.expected(tp)}, end {consumer.highwater(tp)}"
            for tp in tps
        )
        raise ReadTimeout(f"timed out reading {topic}: {len(records)} records ({where})", records)
    finally:
        await consumer.stop()


async def _partitions(
    consumer: AIOKafkaConsumer, topic: str, deadline: float
) -> list[TopicPartition]:
    """The topic's partitions, once the broker knows the topic."""
    while True:
        partitions = consumer.partitions_for_topic(topic)
        if partitions:
            return sorted(TopicPartition(topic, p) for p in partitions)
        if time.monotonic() > deadline:
            raise ReadTimeout(f"topic {topic} does not exist", [])
        await consumer._client.force_metadata_update()
        if not consumer.partitions_for_topic(topic):
            await asyncio.sleep(0.2)
