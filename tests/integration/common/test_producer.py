"""The producer against the real broker: a large publish goes out as record batches of its
own, yet lands exactly as single sends would, each contact on the same partition and in
order."""

import asyncio
import uuid
from collections import defaultdict

import pytest
from aiokafka import TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.record.default_records import DefaultRecordBatch
from aiokafka.record.memory_records import MemoryRecords

from stepmail_common.kafka import Compression, EventProducer, Serialised, ensure_topics, log_ends
from tests.integration.kafka_reader import read_records

pytestmark = pytest.mark.integration


def _item(topic: str, key: str, seq: int, size: int = 0) -> Serialised:
    return Serialised(topic, f'{{"seq": {seq}, "pad": "{"x" * size}"}}'.encode(), key)


def _placed(records: list) -> tuple[dict[bytes, set[int]], dict[bytes, list[bytes]]]:
    partitions: dict[bytes, set[int]] = defaultdict(set)
    values: dict[bytes, list[bytes]] = defaultdict(list)
    for record in records:
        partitions[record.key].add(record.partition)
        values[record.key].append(record.value)
    return partitions, values


def test_a_large_publish_lands_where_and_in_the_order_single_sends_do(kafka_bootstrap: str):
    topic = f"producer{uuid.uuid4().hex[:8]}"
    keys = [f"contact-{n}" for n in range(40)]
    alone = [_item(topic, key, -1) for key in keys]
    many = [_item(topic, keys[seq % len(keys)], seq) for seq in range(400)]

    async def scenario() -> list:
        await ensure_topics(kafka_bootstrap, [topic], 6)
        async with EventProducer(kafka_bootstrap, "test-producer", enable_idempotence=False) as p:
            await asyncio.gather(*(p.publish_many([item]) for item in alone))
            await p.publish_many(many)
        return await read_records(kafka_bootstrap, topic, len(alone) + len(many))

    records = asyncio.run(scenario())
    assert len(records) == len(alone) + len(many)
    partitions, values = _placed(records)
    assert len({p for placed in partitions.values() for p in placed}) > 1
    for key in keys:
        assert len(partitions[key.encode()]) == 1, key
        published = [item.value for item in [*alone, *many] if item.key == key]
        assert values[key.encode()] == published, key


def test_a_publish_larger_than_a_batch_arrives_whole_and_in_order(kafka_bootstrap: str):
    topic = f"producer{uuid.uuid4().hex[:8]}"
    # 300 events of 4 KB on one partition: more than one 512 KiB record batch.
    many = [_item(topic, "contact-1", seq, size=4096) for seq in range(300)]

    async def scenario() -> list:
        await ensure_topics(kafka_bootstrap, [topic], 1)
        async with EventProducer(kafka_bootstrap, "test-producer", enable_idempotence=False) as p:
            await p.publish_many(many)
        return await read_records(kafka_bootstrap, topic, len(many))

    records = asyncio.run(scenario())
    assert [record.value for record in records] == [item.value for item in many]


def test_the_log_ends_count_every_record_of_a_last_batch(kafka_bootstrap: str):
    """The embedded broker's ListOffsets answers a last batch's first offset plus one;
    ``log_ends`` answers the offset after its last record, as Apache Kafka does."""
    topic = f"producer{uuid.uuid4().hex[:8]}"
    tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]

    async def scenario() -> dict[TopicPartition, int]:
        await ensure_topics(kafka_bootstrap, [topic], 2)
        async with EventProducer(kafka_bootstrap, "test-producer", enable_idempotence=False) as p:
            await p.publish_many([_item(topic, "contact-1", seq) for seq in range(3)])
            # One batch of its own: all 20 records on one partition.
            await p.publish_many([_item(topic, "contact-1", seq) for seq in range(20)])
        return await log_ends(kafka_bootstrap, tps)

    ends = asyncio.run(scenario())
    assert sorted(ends.values()) == [0, 23]


async def _stored_codecs(bootstrap: str, topic: str) -> list[int]:
    """The compression codec of each record batch the broker holds on partition 0, read
    with a plain Fetch request (a consumer would decompress without telling)."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        request = FetchRequest(100, 1, 1 << 20, 0, [(topic, [(0, 0, 1 << 20)])])
        response = await client.send(client.get_random_node(), request)
    finally:
        await client.close()
    [(_, [partition])] = response.topics
    assert partition[1] == 0, "fetch error"
    records = MemoryRecords(bytes(partition[-1]))
    codecs = []
    while (batch := records.next_batch()) is not None:
        codecs.append(batch.compression_type)
    return codecs


@pytest.mark.parametrize(
    ("compression", "codec"),
    [("zstd", DefaultRecordBatch.CODEC_ZSTD), ("none", DefaultRecordBatch.CODEC_NONE)],
)
def test_batches_are_stored_compressed_as_configured_and_read_back_whole(
    kafka_bootstrap: str, compression: Compression, codec: int
):
    topic = f"producer{uuid.uuid4().hex[:8]}"
    single = _item(topic, "contact-1", -1, size=2048)
    many = [_item(topic, "contact-1", seq, size=2048) for seq in range(40)]

    async def scenario() -> tuple[list, list[int]]:
        await ensure_topics(kafka_bootstrap, [topic], 1)
        async with EventProducer(
            kafka_bootstrap, "test-producer", enable_idempotence=False, compression=compression
        ) as p:
            await p.publish_many([single])  # through the accumulator
            await p.publish_many(many)  # as a record batch of its own
        records = await read_records(kafka_bootstrap, topic, 1 + len(many))
        return records, await _stored_codecs(kafka_bootstrap, topic)

    records, codecs = asyncio.run(scenario())
    assert [record.value for record in records] == [item.value for item in [single, *many]]
    assert len(codecs) >= 2
    assert set(codecs) == {codec}
