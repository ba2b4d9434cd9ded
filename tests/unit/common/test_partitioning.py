"""Records land on the partitions Kafka's own clients choose for their keys."""

import os

import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as reference_murmur2

from stepmail_common.partitioning import KeyPartitioner, murmur2


def test_murmur2_is_kafkas_for_every_length_and_byte():
    keys = [os.urandom(n) for n in range(64) for _ in range(20)]
    keys += [b"", b"\xff" * 7, "山田-花子".encode(), b"c-1", b"0123456789abcdef0123"]
    for key in keys:
        assert murmur2(key) == reference_murmur2(key), key


def test_known_values_of_the_java_client():
    # Utils.murmur2 in Apache Kafka's clients, as signed 32-bit ints there.
    assert murmur2(b"21") & 0x7FFFFFFF == (-973932308) & 0x7FFFFFFF
    assert murmur2(b"foobar") & 0x7FFFFFFF == (-790332482) & 0x7FFFFFFF


@pytest.mark.parametrize("count", [1, 4, 12, 50])
def test_keys_go_where_the_default_partitioner_puts_them(count: int):
    partitions = list(range(count))
    ours, theirs = KeyPartitioner(), DefaultPartitioner()
    for n in range(2000):
        key = f"contact-{n}".encode()
        assert ours(key, partitions, partitions) == theirs(key, partitions, partitions)
