"""Reading a topic from the start with a deadline, for the integration tests."""

import time

from aiokafka import AIOKafkaConsumer, ConsumerRecord
from cloudevents.core.bindings import kafka as ce_kafka

from stepmail_common.events import CloudEvent


async def read_records(
    bootstrap: str, topic: str, count: int, within: float = 30.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """The first ``count`` records of ``topic``; fewer only if the deadline passes."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    deadline = time.monotonic() + within
    try:
        while len(records) < count and time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(batch)
    finally:
        await consumer.stop()
    return records


def parse_event(record: ConsumerRecord[bytes, bytes]) -> CloudEvent:
    """Our envelope, after checking the official CloudEvents SDK reads the message too."""
    parsed = ce_kafka.from_kafka_event(
        ce_kafka.KafkaMessage(headers=dict(record.headers), key=record.key, value=record.value)
    )
    event = CloudEvent.from_json(record.value or b"")
    assert parsed.get_id() == event.id
    assert parsed.get_subject() == event.subject
    return event
