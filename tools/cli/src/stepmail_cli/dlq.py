"""``stepmail dlq list|replay TOPIC.dlq``: look at dead letters, and send them back.

A consumer dead-letters a message it cannot process to the topic's ``.dlq`` twin, with
the same key and value and the reason in headers (``stepmail_common.kafka``). Once the
cause is fixed (a template corrected, a bug deployed), ``replay`` publishes each dead
letter again to the original topic, unchanged but for the ``stepmail-dlq-*`` headers
(dropped) and ``stepmail-replays`` (counted up), so consumers treat it as the first time.

Replay progress is the consumer group ``stepmail-dlq-replay``'s offsets on the ``.dlq``
topic: a record is committed only after the broker acknowledged its copy, so a replay is
not repeated, and an interrupted one goes on where it stopped. Records dead-lettered
while a replay runs (a copy that failed again) wait for the next run. A crash between
the acknowledgement and the commit can publish a record twice; consumers deduplicate on
the CloudEvent id, which the copy keeps.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TextIO

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from stepmail_common.kafka import DLQ_REASON, admit_fetched, log_ends
from stepmail_common.offset_gaps import GapGuard
from stepmail_common.topics import DLQ_SUFFIX

DEFAULT_GROUP = "stepmail-dlq-replay"
DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
REPLAYS = "stepmail-replays"
_DLQ_PREFIX = "stepmail-dlq-"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One record of a ``.dlq`` topic, as an operator needs to see it (no event data)."""

    partition: int
    offset: int
    key: str | None
    reason: str
    source: str
    group: str
    event_type: str
    event_id: str
    replays: int

    def line(self, dlq_topic: str) -> str:
        return (
            f"{dlq_topic} {self.partition}@{self.offset}  from {self.source}"
            f" (group {self.group or '?'})  {self.event_type} {self.event_id}"
            f"  key {self.key or '-'}"
            + (f"  replayed {self.replays}x before" if self.replays else "")
            + f": {self.reason}"
        )


def _headers(record: ConsumerRecord[bytes, bytes]) -> dict[str, str]:
    return {k: v.decode("utf-8", "replace") for k, v in record.headers or ()}


def dead_letter(record: ConsumerRecord[bytes, bytes]) -> DeadLetter:
    headers = _headers(record)
    try:
        doc = orjson.loads(record.value or b"")
    except orjson.JSONDecodeError:
        doc = None
    event = doc if isinstance(doc, dict) else {}
    source = (
        f"{headers.get('stepmail-dlq-topic', '?')}"
        f" {headers.get('stepmail-dlq-partition', '?')}@{headers.get('stepmail-dlq-offset', '?')}"
    )
    return DeadLetter(
        partition=record.partition,
        offset=record.offset,
        key=record.key.decode("utf-8", "replace") if record.key is not None else None,
        reason=headers.get(DLQ_REASON, "(no reason recorded)"),
        source=source,
        group=headers.get("stepmail-dlq-group", ""),
        event_type=str(event.get("type", "(not a CloudEvent)")),
        event_id=str(event.get("id", "-")),
        replays=int(headers.get(REPLAYS, "0") or 0),
    )


def replay_headers(record: ConsumerRecord[bytes, bytes]) -> list[tuple[str, bytes]]:
    """The original headers (content type, ``traceparent``...) and the replay count."""
    kept = [
        (k, v) for k, v in record.headers or () if not k.startswith(_DLQ_PREFIX) and k != REPLAYS
    ]
    replays = int(_headers(record).get(REPLAYS, "0") or 0) + 1
    return [*kept, (REPLAYS, str(replays).encode())]


class UsageError(Exception):
    """The command cannot run as asked (exit code 2)."""


Pending = dict[TopicPartition, tuple[int, int]]


@asynccontextmanager
async def _pending(
    bootstrap: str, dlq_topic: str, group: str, *, from_start: bool
) -> AsyncIterator[tuple[AIOKafkaConsumer, Pending]]:
    """A consumer on every partition of ``dlq_topic``, positioned at the group's committed
    offsets (or the start), and what is pending: from there to the end as of now."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        client_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        if dlq_topic not in await consumer.topics():
            raise UsageError(f"{dlq_topic}: no such topic")
        tps = [
            TopicPartition(dlq_topic, p)
            for p in sorted(consumer.partitions_for_topic(dlq_topic) or ())
        ]
        consumer.assign(tps)
        ends = await log_ends(bootstrap, tps)
        for tp in tps:
            committed = None if from_start else await consumer.committed(tp)
            if committed is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, committed)
        pending: Pending = {}
        for tp in tps:
            start = await consumer.position(tp)
            if start < ends[tp]:
                pending[tp] = (start, ends[tp])
        yield consumer, pending
    finally:
        await consumer.stop()


async def _records(
    consumer: AIOKafkaConsumer, pending: Pending, limit: int | None, idle_seconds: float = 10.0
) -> AsyncIterator[ConsumerRecord[bytes, bytes]]:
    """The pending records, partition by partition in offset order, at most ``limit``."""
    given = 0
    gaps: GapGuard[TopicPartition] = GapGuard()
    for tp, (start, end) in sorted(pending.items(), key=lambda item: item[0].partition):
        idle = 0.0
        gaps.expect(tp, start)
        while await consumer.position(tp) < end:
            fetched = await consumer.getmany(tp, timeout_ms=1000)
            admitted = await admit_fetched(consumer, gaps, fetched)
            records = [r for r in admitted.get(tp, []) if r.offset < end]
            idle = 0.0 if fetched.get(tp) else idle + 1.0
            if idle >= idle_seconds:
                raise UsageError(f"{tp.topic} {tp.partition}: no record arrives before {end}")
            for record in records:
                if limit is not None and given >= limit:
                    return
                given += 1
                yield record


async def list_dead_letters(
    bootstrap: str,
    dlq_topic: str,
    out: TextIO,
    *,
    group: str = DEFAULT_GROUP,
    limit: int | None = None,
    everything: bool = False,
) -> int:
    """Print the dead letters not yet replayed (all of them with ``everything``)."""
    shown = 0
    async with _pending(bootstrap, dlq_topic, group, from_start=everything) as (consumer, pending):
        total = sum(end - start for start, end in pending.values())
        async for record in _records(consumer, pending, limit):
            print(dead_letter(record).line(dlq_topic), file=out)
            shown += 1
    what = "dead letters" if everything else "dead letters not yet replayed"
    print(f"{dlq_topic}: {total} {what}" + (f", {shown} shown" if shown < total else ""), file=out)
    return 0


async def replay(
    bootstrap: str,
    dlq_topic: str,
    out: TextIO,
    *,
    group: str = DEFAULT_GROUP,
    limit: int | None = None,
    dry_run: bool = False,
    enable_idempotence: bool = False,
) -> int:
    """Publish the pending dead letters of ``dlq_topic`` to the original topic, committing
    each one after the broker acknowledged its copy; ``dry_run`` only lists them."""
    target = dlq_topic.removesuffix(DLQ_SUFFIX)
    done = 0
    failed = False
    async with _pending(bootstrap, dlq_topic, group, from_start=False) as (consumer, pending):
        total = sum(end - start for start, end in pending.values())
        if dry_run:
            async for record in _records(consumer, pending, limit):
                print(f"would replay {dead_letter(record).line(dlq_topic)}", file=out)
                done += 1
            print(f"{dlq_topic}: would replay {done} of {total} to {target}", file=out)
            return 0
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            client_id=group,
            acks="all",
            enable_idempotence=enable_idempotence,
        )
        await producer.start()
        try:
            async for record in _records(consumer, pending, limit):
                letter = dead_letter(record)
                try:
                    await producer.send_and_wait(
                        target, value=record.value, key=record.key, headers=replay_headers(record)
                    )
                    tp = TopicPartition(record.topic, record.partition)
                    await consumer.commit({tp: record.offset + 1})
                except KafkaError as exc:
                    print(
                        f"{dlq_topic} {record.partition}@{record.offset}: not replayed:"
                        f" {exc.__class__.__name__}; run again to go on from here",
                        file=out,
                    )
                    failed = True
                    break
                print(f"replayed {letter.line(dlq_topic)}", file=out)
                done += 1
        finally:
            await producer.stop()
    print(f"{dlq_topic}: replayed {done} to {target}; {total - done} left", file=out)
    return 1 if failed else 0


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dlq = commands.add_parser("dlq", help="dead-letter topics: list them, replay them")
    actions = dlq.add_subparsers(dest="dlq_command", required=True)
    for name, help_text in (
        ("list", "the dead letters not yet replayed, with their reasons"),
        ("replay", "publish the dead letters again to the original topic"),
    ):
        action = actions.add_parser(name, help=help_text)
        action.add_argument("topic", metavar="TOPIC.dlq")
        action.add_argument("--limit", type=int, help="at most this many records")
        action.add_argument(
            "--bootstrap-servers",
            default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", DEFAULT_BOOTSTRAP),
        )
        action.add_argument(
            "--group", default=DEFAULT_GROUP, help="consumer group that keeps replay progress"
        )
        if name == "list":
            action.add_argument("--all", action="store_true", help="also what was replayed already")
        else:
            action.add_argument(
                "--dry-run", action="store_true", help="list what would be replayed, and why"
            )


def run(args: argparse.Namespace, out: TextIO) -> int:
    try:
        if not args.topic.endswith(DLQ_SUFFIX):
            raise UsageError(f"{args.topic}: not a dead-letter topic (they end in {DLQ_SUFFIX})")
        if args.limit is not None and args.limit < 1:
            raise UsageError("--limit: must be at least 1")
        if args.dlq_command == "list":
            return asyncio.run(
                list_dead_letters(
                    args.bootstrap_servers,
                    args.topic,
                    out,
                    group=args.group,
                    limit=args.limit,
                    everything=args.all,
                )
            )
        return asyncio.run(
            replay(
                args.bootstrap_servers,
                args.topic,
                out,
                group=args.group,
                limit=args.limit,
                dry_run=args.dry_run,
                enable_idempotence=os.environ.get("KAFKA_ENABLE_IDEMPOTENCE", "").lower() == "true",
            )
        )
    except UsageError as exc:
        print(f"stepmail dlq: {exc}", file=out)
        return 2
    except KafkaError as exc:
        print(
            f"stepmail dlq: broker at {args.bootstrap_servers}: {exc.__class__.__name__}", file=out
        )
        return 1
