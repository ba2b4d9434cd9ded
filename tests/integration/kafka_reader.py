"""Reading a topic from the start with a deadline, for the integration tests."""

from aiokafka import ConsumerRecord
from cloudevents.core.bindings import kafka as ce_kafka

from stepmail_common.events import CloudEvent
from stepmail_devstack.topic_reader import ReadTimeout, read_topic


async def read_records(
    bootstrap: str, topic: str, count: int, within: float = 30.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """The first ``count`` records of ``topic``; fewer only if the deadline passes."""
    try:
        return await read_topic(bootstrap, topic, lambda got: len(got) >= count, within)
    except ReadTimeout as timeout:
        return timeout.records


def parse_event(record: ConsumerRecord[bytes, bytes]) -> CloudEvent:
    """Our envelope, after checking the official CloudEvents SDK reads the message too."""
    parsed = ce_kafka.from_kafka_event(
        ce_kafka.KafkaMessage(headers=dict(record.headers), key=record.key, value=record.value)
    )
    event = CloudEvent.from_json(record.value or b"")
    assert parsed.get_id() == event.id
    assert parsed.get_subject() == event.subject
    return event
