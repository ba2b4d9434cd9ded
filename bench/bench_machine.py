"""The raw limits of this machine, measured in the same run as the platform, for comparison.

- SMTP: Postfix's ``smtp-source`` (32 sessions, 10 KB mails) into Postfix's ``smtp-sink``
  and into the end-to-end benchmark's own timestamping sink (:mod:`bench.sink`); without
  Postfix (``make debian-tools`` installs it) an aiosmtplib client takes its place.
- Broker: aiokafka producing 4 KB records (all in flight, then every acknowledgement;
  and one at a time, waiting for each), and a consumer group reading them all back. Then,
  for fetch waits of 50, 150 and 500 ms (``KAFKA_FETCH_MAX_WAIT_MS``), what the wait
  costs: the embedded broker's CPU while seven idle consumers of 12 partitions long-poll
  (as a stack's consumers do between bursts), and how long one record takes from its
  produce to a consumer waiting for it. And what a longer log costs: the embedded broker's
  CPU per produce and fetch of one record with 0 to 14,000 record batches in the
  partition.
- Postgres: single-row INSERTs and primary-key SELECTs, one connection one statement at a
  time, and 8 connections at once.

Postgres and the broker are the embedded ones (fsync off) unless ``DATABASE_URL`` /
``KAFKA_BOOTSTRAP_SERVERS`` are set. Each figure is the best the machine does with nothing
of stepmail in between; the platform's figures (``bench_e2e``) are read against them.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiosmtplib
import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench import backends
from bench.sink import accepted_count
from bench.stack import tree_cpu_seconds
from stepmail_common.kafka import ensure_topics
from stepmail_devstack.processes import ManagedProcess, free_port, port_is_open

REPO_ROOT = Path(__file__).resolve().parent.parent
SMTP_MAILS = int(os.environ.get("BENCH_MACHINE_SMTP_MAILS", "40000"))
RECORDS = int(os.environ.get("BENCH_MACHINE_RECORDS", "50000"))
SECONDS = float(os.environ.get("BENCH_MACHINE_SECONDS", "5"))
MAIL_BYTES = 10240
FETCH_WAITS_MS = (50, 150, 500)
IDLE_CONSUMERS = 7
PARTITIONS = 12
HOPS = 20
# Record batches of 10 records in one partition before each measurement of the log's growth.
LOG_BATCHES = (0, 2000, 6000, 14000)
CYCLES = 200


def _postfix_tool(name: str) -> str | None:
    return shutil.which(name) or (
        f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None
    )


def _smtp_source(tool: str, port: int, count: int) -> float:
    argv = [
        tool, "-s", "32", "-m", str(count), "-l", str(MAIL_BYTES), "-d",
        "-f", "bounce@example.com", "-t", "u@example.jp", f"127.0.0.1:{port}",
    ]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, timeout=600)  # noqa: S603 - own argv
    return count / (time.perf_counter() - started)


async def _aiosmtplib_source(port: int, count: int, sessions: int = 32) -> float:
    body = b"Subject: bench\r\n\r\n" + b"x" * 76 + b"\r\n"
    message = body * (MAIL_BYTES // len(body))
    per_session = count // sessions

    async def session() -> None:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port) as client:
            for _ in range(per_session):
                await client.sendmail("bounce@example.com", ["u@example.jp"], message)

    started = time.perf_counter()
    await asyncio.gather(*(session() for _ in range(sessions)))
    return per_session * sessions / (time.perf_counter() - started)


def _smtp(stack: ExitStack, workdir: Path) -> dict[str, Any]:
    source = _postfix_tool("smtp-source")
    sinks: dict[str, int] = {}
    postfix_sink = _postfix_tool("smtp-sink")
    if postfix_sink:
        port = free_port()
        sink = ManagedProcess(
            "smtp-sink", [postfix_sink, "-u", "nobody", f"127.0.0.1:{port}", "1024"]
        )
        sink.start()
        stack.callback(sink.terminate, 5)
        sink.wait_until(lambda: port_is_open("127.0.0.1", port), 15, "smtp-sink to listen")
        sinks["postfix smtp-sink"] = port
    port = free_port()
    records = workdir / "machine-accepted.txt"
    ours = ManagedProcess(
        "bench-sink", [sys.executable, "-m", "bench.sink", str(port), str(records)], cwd=REPO_ROOT
    )
    ours.start()
    stack.callback(ours.terminate, 5)
    ours.wait_until(lambda: port_is_open("127.0.0.1", port), 15, "the bench sink to listen")
    sinks["bench sink (stamps each mail)"] = port
    label = "postfix smtp-source" if source else "aiosmtplib, 32 sessions"
    figures: dict[str, Any] = {"source": label, "mail_bytes": MAIL_BYTES}
    for name, port in sinks.items():
        print(f"SMTP: {label} into {name} ...", flush=True)
        if source:
            rate = _smtp_source(source, port, SMTP_MAILS)
        else:
            rate = asyncio.run(_aiosmtplib_source(port, SMTP_MAILS // 4))
        figures[name] = round(rate)
    time.sleep(0.5)  # the sink writes its count every 0.2 s
    figures["bench_sink_counted"] = accepted_count(records)
    return figures


async def _broker(bootstrap: str) -> dict[str, Any]:
    topic = f"machine-{uuid.uuid4().hex[:6]}"
    await ensure_topics(bootstrap, [topic], 4)
    value = b"x" * 4096
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        started = time.perf_counter()
        futures = [await producer.send(topic, value, key=str(i).encode()) for i in range(RECORDS)]
        await asyncio.gather(*futures)
        produce = RECORDS / (time.perf_counter() - started)
        one_at_a_time, started = 0, time.perf_counter()
        while time.perf_counter() - started < SECONDS:
            await producer.send_and_wait(topic, value, key=b"k")
            one_at_a_time += 1
        sequential = one_at_a_time / (time.perf_counter() - started)
    finally:
        await producer.stop()
    total = RECORDS + one_at_a_time
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"machine-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        read, started = 0, time.perf_counter()
        while read < total and time.perf_counter() - started < 120:
            batch = await consumer.getmany(timeout_ms=500, max_records=2000)
            read += sum(len(records) for records in batch.values())
        consume = read / (time.perf_counter() - started)
    finally:
        await consumer.stop()
    return {
        "record_bytes": len(value),
        "produce_per_second": round(produce),
        "produce_one_at_a_time_per_second": round(sequential),
        "produce_round_trip_ms": round(1000 / max(sequential, 1e-6), 2),
        "consume_per_second_including_group_join": round(consume),
    }


async def _fetch_waits(bootstrap: str, broker_pid: int | None) -> list[dict[str, Any]]:
    """For each fetch wait: the broker's CPU (cores, ``None`` for an external broker) under
    idle long-polling consumers, and the produce-to-consume time of single records."""
    idle_topic = f"machine-idle-{uuid.uuid4().hex[:6]}"
    hop_topic = f"machine-hop-{uuid.uuid4().hex[:6]}"
    await ensure_topics(bootstrap, [idle_topic, hop_topic], PARTITIONS)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, linger_ms=0)
    await producer.start()
    figures = []
    try:
        for wait in FETCH_WAITS_MS:
            idle = await _idle_cores(bootstrap, idle_topic, wait, broker_pid)
            hops = await _hop_ms(bootstrap, hop_topic, wait, producer)
            figures.append(
                {
                    "fetch_max_wait_ms": wait,
                    "broker_cores_with_idle_consumers": idle,
                    "hop_ms_median": round(statistics.median(hops), 1),
                    "hop_ms_max": round(max(hops), 1),
                }
            )
    finally:
        await producer.stop()
    return figures


async def _log_growth(bootstrap: str, broker_pid: int | None) -> list[dict[str, Any]]:
    """The embedded broker's CPU per produce and fetch of one record, as the partition's
    log grows in batches of 10 records (a fetch that finds data lists every batch of the
    partition in Tansu's in-memory storage); nothing for an external broker."""
    if broker_pid is None:
        return []
    topic = f"machine-log-{uuid.uuid4().hex[:6]}"
    await ensure_topics(bootstrap, [topic], 1)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, linger_ms=0)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=50)
    await producer.start()
    await consumer.start()
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    figures = []
    try:
        written = 0
        for batches in LOG_BATCHES:
            while written < batches:
                for _ in range(10):
                    await producer.send(topic, b"x" * 1000, partition=0)
                await producer.flush()
                written += 1
            await consumer.seek_to_end(tp)
            before, started = tree_cpu_seconds(broker_pid), time.perf_counter()
            for _ in range(CYCLES):
                await _one_hop(producer, consumer, topic, 0, b"y" * 1000, poll_ms=500)
            written += CYCLES
            figures.append(
                {
                    "batches_in_partition": batches,
                    "broker_cpu_ms_per_produce_and_fetch": round(
                        (tree_cpu_seconds(broker_pid) - before) / CYCLES * 1000, 2
                    ),
                    "round_trip_ms": round((time.perf_counter() - started) / CYCLES * 1000, 1),
                }
            )
    finally:
        await consumer.stop()
        await producer.stop()
    return figures


def _waiting_consumer(bootstrap: str, topic: str, role: str, wait: int) -> AIOKafkaConsumer:
    """A consumer of a group of its own, from the log's end, long-polling up to ``wait``."""
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"machine-{role}-{wait}-{uuid.uuid4().hex[:6]}",
        fetch_max_wait_ms=wait,
        auto_offset_reset="latest",
    )


async def _idle_cores(
    bootstrap: str, topic: str, wait: int, broker_pid: int | None
) -> float | None:
    consumers = [_waiting_consumer(bootstrap, topic, "idle", wait) for _ in range(IDLE_CONSUMERS)]
    for consumer in consumers:
        await consumer.start()
    polls = [asyncio.create_task(consumer.getone()) for consumer in consumers]
    try:
        await asyncio.sleep(3)  # the groups join and settle into polling
        if broker_pid is None:
            return None
        before, started = tree_cpu_seconds(broker_pid), time.perf_counter()
        await asyncio.sleep(SECONDS)
        return round((tree_cpu_seconds(broker_pid) - before) / (time.perf_counter() - started), 3)
    finally:
        for poll in polls:
            poll.cancel()
        for consumer in consumers:
            await consumer.stop()


async def _hop_ms(bootstrap: str, topic: str, wait: int, producer: AIOKafkaProducer) -> list[float]:
    """Records produced one at a time, at spread moments of the broker's polling, each
    timed until the waiting consumer has it."""
    consumer = _waiting_consumer(bootstrap, topic, "hop", wait)
    await consumer.start()
    hops = []
    try:
        async with asyncio.timeout(30):
            while not consumer.assignment():
                await consumer.getmany(timeout_ms=wait + 100)
        await consumer.getmany(timeout_ms=wait + 100)  # positions known, nothing pending
        for i in range(HOPS):
            await asyncio.sleep(0.05 + (i * 0.037) % 0.25)
            started = time.perf_counter()
            await _one_hop(producer, consumer, topic, i % PARTITIONS, b"x" * 100, wait + 100)
            hops.append(1000 * (time.perf_counter() - started))
    finally:
        await consumer.stop()
    return hops


async def _one_hop(
    producer: AIOKafkaProducer,
    consumer: AIOKafkaConsumer,
    topic: str,
    partition: int,
    value: bytes,
    poll_ms: int,
) -> None:
    """Produce one record and return once ``consumer``, waiting at the log's end, has it."""
    await producer.send_and_wait(topic, value, partition=partition)
    async with asyncio.timeout(30):
        while not await consumer.getmany(timeout_ms=poll_ms):
            pass


async def _postgres(dsn: str) -> dict[str, Any]:
    table = f"machine_{uuid.uuid4().hex[:6]}"
    admin = await asyncpg.connect(dsn)
    await admin.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, body text)")
    pool = await asyncpg.create_pool(dsn, min_size=8, max_size=8)
    assert pool is not None
    body = "x" * 200
    insert = f"INSERT INTO {table} (id, body) VALUES ($1, $2)"  # noqa: S608 - our table
    select = f"SELECT body FROM {table} WHERE id = $1"  # noqa: S608 - our table
    counter = iter(range(1 << 62))

    async def for_a_while(connections: int, statement: str, write: bool) -> float:
        done = 0
        stop = time.perf_counter() + SECONDS

        async def worker() -> None:
            nonlocal done
            async with pool.acquire() as conn:
                while time.perf_counter() < stop:
                    n = next(counter)
                    if write:
                        await conn.execute(statement, n, body)
                    else:
                        await conn.fetchval(statement, n % 1000)
                    done += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        return done / (time.perf_counter() - started)

    try:
        figures = {
            "insert_one_connection_per_second": round(await for_a_while(1, insert, True)),
            "insert_8_connections_per_second": round(await for_a_while(8, insert, True)),
            "select_one_connection_per_second": round(await for_a_while(1, select, False)),
            "select_8_connections_per_second": round(await for_a_while(8, select, False)),
        }
    finally:
        await pool.close()
        await admin.execute(f"DROP TABLE {table}")
        await admin.close()
    return figures


def main() -> dict[str, Any]:
    figures: dict[str, Any] = {
        "machine": f"{os.cpu_count()} cores, shared with whatever else runs at the time",
        "postgres_kind": "external" if os.environ.get("DATABASE_URL") else "embedded, fsync off",
        "broker_kind": (
            "external" if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") else "embedded Tansu"
        ),
    }
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="bench-machine-") as tmp:
        workdir = Path(tmp)
        figures["smtp_mails_per_second"] = _smtp(stack, workdir)
        bootstrap, broker = backends.kafka(stack)
        broker_pid = broker.pid if broker else None
        print("broker: produce and consume ...", flush=True)
        figures["broker"] = asyncio.run(_broker(bootstrap))
        print("broker: what a fetch's wait costs ...", flush=True)
        figures["broker_fetch_waits"] = asyncio.run(_fetch_waits(bootstrap, broker_pid))
        print("broker: what a longer log costs ...", flush=True)
        figures["broker_log_growth"] = asyncio.run(_log_growth(bootstrap, broker_pid))
        dsn, _ = backends.postgres(stack, workdir)
        print("postgres: inserts and selects ...", flush=True)
        figures["postgres_statements"] = asyncio.run(_postgres(dsn))
    _table(figures)
    return figures


def _table(figures: dict[str, Any]) -> None:
    print()
    print(f"{'raw limit':58} {'per second':>12}")
    smtp = figures["smtp_mails_per_second"]
    for name, value in smtp.items():
        if isinstance(value, int) and name not in ("mail_bytes", "bench_sink_counted"):
            print(f"{'SMTP ' + smtp['source'] + ' -> ' + name:58} {value:>12,}")
    broker = figures["broker"]
    print(f"{'broker produce, 4 KB, all in flight':58} {broker['produce_per_second']:>12,}")
    print(
        f"{'broker produce, 4 KB, one at a time':58}"
        f" {broker['produce_one_at_a_time_per_second']:>12,}"
    )
    print(f"{'broker consume (group)':58} {broker['consume_per_second_including_group_join']:>12,}")
    for name, value in figures["postgres_statements"].items():
        print(f"{'postgres ' + name.removesuffix('_per_second').replace('_', ' '):58} {value:>12,}")
    print()
    for row in figures["broker_fetch_waits"]:
        cores = row["broker_cores_with_idle_consumers"]
        cost = (
            "an unmeasured share (external broker)" if cores is None else f"{cores:.1%} of a core"
        )
        print(
            f"broker, fetch wait {row['fetch_max_wait_ms']} ms: {IDLE_CONSUMERS} idle consumers"
            f" cost it {cost}; a record's hop {row['hop_ms_median']} ms (at most"
            f" {row['hop_ms_max']})"
        )
    for row in figures["broker_log_growth"]:
        print(
            f"broker, {row['batches_in_partition']:,} batches in the partition: a produce and"
            f" fetch of one record costs it {row['broker_cpu_ms_per_produce_and_fetch']} ms"
            f" of CPU"
        )
