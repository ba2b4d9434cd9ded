import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from stepmail_devstack.broker import EmbeddedBroker, kafka_metadata_ok
from stepmail_devstack.processes import free_port

pytestmark = pytest.mark.integration


async def test_create_produce_consume(kafka_bootstrap):
    topic = "devstack.check"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
        assert topic in await admin.list_topics()
    finally:
        await admin.close()

    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        meta = await producer.send_and_wait(topic, "こんにちは".encode(), key=b"c-1001")
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, meta.partition)])
        record = await asyncio.wait_for(consumer.getone(), timeout=20)
    finally:
        await consumer.stop()
    assert record.key == b"c-1001"
    assert record.value.decode() == "こんにちは"


def test_stop_is_safe_twice_and_restart_serves_again():
    broker = EmbeddedBroker(free_port())
    try:
        broker.start()
        assert kafka_metadata_ok(broker.host, broker.port)
        broker.restart()
        assert kafka_metadata_ok(broker.host, broker.port)
    finally:
        broker.stop()
        broker.stop()
    assert not kafka_metadata_ok(broker.host, broker.port, timeout=0.5)
