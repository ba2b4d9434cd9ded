"""Consumer lag: reported per group, topic and assigned partition, and a partition a
rebalance moved away loses its series, so summing over processes counts it once."""

from aiokafka import TopicPartition
from prometheus_client import REGISTRY

from stepmail_common.events import CloudEvent
from stepmail_common.kafka import EventConsumer

TOPIC = "lagtest.mail-rendered"


class FakeKafkaConsumer:
    def __init__(self) -> None:
        self.assigned = {TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)}
        self.ends = {0: 120, 1: 40}
        self.positions = {0: 100, 1: 40}

    def assignment(self) -> set[TopicPartition]:
        return self.assigned

    def highwater(self, tp: TopicPartition) -> int:
        return self.ends[tp.partition]

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp.partition]


def _lag(partition: int) -> float | None:
    return REGISTRY.get_sample_value(
        "stepmail_kafka_consumer_lag",
        {"group": "lagtest-sender", "topic": TOPIC, "partition": str(partition)},
    )


async def _ignore(event: CloudEvent) -> None:
    return None


async def test_lag_follows_the_assignment():
    consumer = EventConsumer(
        bootstrap="127.0.0.1:1",
        topics=[TOPIC],
        group_id="lagtest-sender",
        handler=_ignore,
        producer=None,  # type: ignore[arg-type] # never publishes here
    )
    await consumer._consumer.stop()  # the real one never connects: stands in for a closed one
    fake = FakeKafkaConsumer()
    consumer._consumer = fake
    await consumer._observe_lag()
    assert (_lag(0), _lag(1)) == (20.0, 0.0)

    fake.assigned = {TopicPartition(TOPIC, 1)}
    fake.ends[1] = 45
    await consumer._observe_lag()
    assert (_lag(0), _lag(1)) == (None, 5.0)

    await consumer.close()
    assert (_lag(0), _lag(1)) == (None, None)
