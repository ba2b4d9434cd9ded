"""Kafka wiring: topic creation, a CloudEvent producer and an at-least-once consumer.

The consumer commits a partition's offset only after the handler's work is durable,
retries retriable errors without skipping, dead-letters the rest with the reason, and
stops cleanly (finishes the message in hand, commits, leaves the group).
"""

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import (
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Generic, Literal, NamedTuple, TypeVar

import orjson
from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    ConsumerRecord,
    TopicPartition,
)
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaError,
    TopicAlreadyExistsError,
)
from aiokafka.producer.message_accumulator import BatchBuilder
from opentelemetry import context as otel_context
from opentelemetry import trace

from stepmail_common import telemetry
from stepmail_common.errors import RetriableError, is_retriable
from stepmail_common.events import CONTENT_TYPE, CloudEvent, read_event, validate
from stepmail_common.offset_gaps import GapGuard
from stepmail_common.partitioning import KeyPartitioner
from stepmail_common.topics import Topics

log = logging.getLogger(__name__)
tracer = trace.get_tracer("stepmail.kafka")

DLQ_REASON = "stepmail-dlq-reason"


async def ensure_topics(
    bootstrap: str, topics: Iterable[str], partitions: int, replication: int = 1
) -> None:
    """Create each topic and its ``.dlq`` twin if missing (idempotent, safe in replicas)."""
    wanted = {t for topic in topics for t in (topic, Topics.dlq(topic))}
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="stepmail-admin")
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = sorted(wanted - existing)
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(
                    [NewTopic(name, partitions, replication) for name in missing]
                )
            log.info("topics created", extra={"topics": missing})
    finally:
        await admin.close()


async def log_ends(
    bootstrap: str, partitions: Sequence[TopicPartition]
) -> dict[TopicPartition, int]:
    """The offset after each partition's last record, as of now.

    ListOffsets answers that on Apache Kafka; the embedded broker answers the last batch's
    first offset plus one. So the answer is checked against the high watermark of a fetch
    from just below it (one fetch per non-empty partition, on a consumer of its own).
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        listed: dict[TopicPartition, int] = await consumer.end_offsets(list(partitions))
        ends = {tp: end for tp, end in listed.items() if end == 0}
        unsure = [tp for tp in partitions if tp not in ends]
        consumer.assign(unsure)
        for tp in unsure:
            consumer.seek(tp, listed[tp] - 1)
        deadline = time.monotonic() + 30
        while len(ends) < len(listed):
            if time.monotonic() > deadline:
                raise RetriableError("no fetch answered with a high watermark")
            await consumer.getmany(timeout_ms=200)
            for tp in unsure:
                high = consumer.highwater(tp)
                if high is not None:
                    ends[tp] = max(high, listed[tp])
        return ends
    finally:
        await consumer.stop()


_CONTENT_TYPE_HEADER = ("content-type", CONTENT_TYPE.encode())
# From this many events on, a publish sends record batches of its own (see ``publish_many``).
_OWN_BATCHES_FROM = 16


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One event bound for a topic, keyed by contact id.

    ``trace_context`` (a stored ``traceparent`` carrier) continues the trace of the work
    that produced the event when it is published later, e.g. from an outbox.
    """

    topic: str
    event: CloudEvent
    key: str
    trace_context: Mapping[str, str] | None = None

    @property
    def event_id(self) -> str:
        return self.event.id


@dataclass(frozen=True, slots=True)
class Serialised:
    """An event serialised and already known to match its schema, published as it is: an
    outbox row (checked when stored) or an event built from input validated to match."""

    topic: str
    value: bytes
    key: str
    trace_context: Mapping[str, str] | None = None

    @property
    def event_id(self) -> str:
        event_id: str = orjson.loads(self.value)["id"]
        return event_id


class _Record(NamedTuple):
    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


Compression = Literal["none", "gzip", "snappy", "lz4", "zstd"]
# How record batches are compressed, unless told (``KAFKA_COMPRESSION``). A rendered mail
# is 10-25 KB of JSON and MIME; zstd shrinks it several times over at a few microseconds,
# and a broker's work per record follows its size.
COMPRESSION: Compression = "zstd"


class EventProducer:
    """Publishes CloudEvents and returns only once the broker acknowledged them."""

    def __init__(
        self,
        bootstrap: str,
        client_id: str,
        *,
        enable_idempotence: bool,
        compression: Compression = COMPRESSION,
    ) -> None:
        self._partitioner = KeyPartitioner()
        self._producer = AIOKafkaProducer(
            partitioner=self._partitioner,
            bootstrap_servers=bootstrap,
            client_id=client_id,
            acks="all",
            enable_idempotence=enable_idempotence,
            linger_ms=1,
            # A batch of webhooks or rendered mails goes to a partition in one request, not
            # in 16 KB pieces one after another; well under the broker's 1 MB message limit.
            max_batch_size=512 * 1024,
            request_timeout_ms=10_000,
            compression_type=None if compression == "none" else compression,
        )
        self._started = False

    async def start(self) -> None:
        await self._producer.start()
        self._started = True

    async def stop(self) -> None:
        if self._started:
            self._started = False
            await self._producer.stop()

    async def __aenter__(self) -> "EventProducer":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def ping(self) -> None:
        """Readiness: the broker answers a metadata request."""
        await self._producer.client.fetch_all_metadata()

    async def publish(self, topic: str, event: CloudEvent, key: str) -> None:
        await self.publish_many([Outgoing(topic, event, key)])

    async def publish_many(self, items: Sequence["Outgoing | Serialised"]) -> None:
        """Send all, then wait for every acknowledgement; raises ``RetriableError``.

        Each event is checked against its schema, unless it comes ``Serialised`` (checked
        when it was). Each gets a ``send`` span when spans are recorded; otherwise only its
        trace context (its own or the current one) travels on in the headers.

        A few events join the producer's shared batches, so that concurrent small publishes
        share produce requests. Many go out as record batches of their own, one per
        partition with one acknowledgement each: aiokafka's per-message path (a future per
        event, resolved one by one) cost a third of a 1,000-event publish.
        """
        recording = telemetry.recording()
        # Without spans, the current context is the same for every event of the call.
        shared = None if recording else _current_headers()
        records = [_record(item, shared) for item in items]
        try:
            if len(records) < _OWN_BATCHES_FROM:
                futures = [await self._send(record) for record in records]
            else:
                futures = await self._send_batches(records)
            await asyncio.gather(*futures)
        except KafkaError as exc:
            raise RetriableError(f"broker did not acknowledge: {exc.__class__.__name__}") from exc
        for topic, count in Counter(item.topic for item in items).items():
            telemetry.KAFKA_PRODUCED.labels(topic).inc(count)

    async def _send(self, record: _Record) -> "asyncio.Future[object]":
        future: asyncio.Future[object] = await self._producer.send(
            record.topic, value=record.value, key=record.key, headers=record.headers
        )
        return future

    async def _send_batches(self, records: list[_Record]) -> "list[asyncio.Future[object]]":
        """Each partition's records in batches of their own (a full one goes and another
        starts), placed as the producer's partitioner places single sends."""
        partitions = {
            topic: list(await self._producer.partitions_for(topic))
            for topic in {record.topic for record in records}
        }
        builders: dict[tuple[str, int], BatchBuilder] = {}
        futures: list[asyncio.Future[object]] = []
        for record in records:
            choices = partitions[record.topic]
            partition = self._partitioner(record.key, choices, choices)
            builder = builders.get((record.topic, partition))
            if builder is not None and builder.append(
                timestamp=None, key=record.key, value=record.value, headers=record.headers
            ):
                continue
            if builder is not None:
                futures.append(
                    await self._producer.send_batch(builder, record.topic, partition=partition)
                )
            builder = builders[(record.topic, partition)] = self._producer.create_batch()
            if not builder.append(
                timestamp=None, key=record.key, value=record.value, headers=record.headers
            ):
                # Larger than a batch: the single send refuses it as it always did.
                del builders[(record.topic, partition)]
                futures.append(await self._send(record))
        for (topic, partition), builder in builders.items():
            futures.append(await self._producer.send_batch(builder, topic, partition=partition))
        return futures

    async def send_raw(
        self, topic: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]
    ) -> None:
        try:
            await (await self._producer.send(topic, value=value, key=key, headers=headers))
        except KafkaError as exc:
            raise RetriableError(f"broker did not acknowledge: {exc.__class__.__name__}") from exc
        telemetry.KAFKA_PRODUCED.labels(topic).inc()


def _current_headers() -> list[tuple[str, bytes]]:
    """The headers of an event that carries the current trace context."""
    return [_CONTENT_TYPE_HEADER, *telemetry.inject_headers()]


def _record(item: "Outgoing | Serialised", shared: list[tuple[str, bytes]] | None) -> _Record:
    """The record of one event; ``shared`` holds the headers of events without a trace
    of their own when no spans are recorded."""
    if isinstance(item, Outgoing):
        doc = item.event.to_dict()
        validate(doc)
        value = orjson.dumps(doc)
    else:
        value = item.value
    if shared is None:
        with _send_span(item):
            headers = _current_headers()
    elif item.trace_context:
        headers = [_CONTENT_TYPE_HEADER, *telemetry.carrier_headers(item.trace_context)]
    else:
        headers = shared
    return _Record(item.topic, item.key.encode(), value, headers)


def _send_span(item: "Outgoing | Serialised") -> AbstractContextManager[trace.Span]:
    """The ``send`` span of one event, child of the trace it carries (or the current)."""
    return tracer.start_as_current_span(
        f"send {item.topic}",
        context=telemetry.context_from_carrier(item.trace_context),
        kind=trace.SpanKind.PRODUCER,
        attributes={
            "messaging.system": "kafka",
            "messaging.destination.name": item.topic,
            "messaging.operation.type": "send",
            "messaging.kafka.message.key": item.key,
            "messaging.message.id": item.event_id,
        },
    )


def _within(span: trace.Span, parent: otel_context.Context) -> AbstractContextManager[None]:
    """Make ``span`` current; with no span recorded, the producer's context instead, so
    what the work publishes still continues its trace."""
    return telemetry.attached(
        parent if span is trace.INVALID_SPAN else trace.set_span_in_context(span)
    )


@contextlib.contextmanager
def _ended(span: trace.Span) -> Iterator[None]:
    try:
        yield
    finally:
        span.end()


# How long a fetch waits at the broker for data, unless told (``KAFKA_FETCH_MAX_WAIT_MS``).
# The embedded broker answers a waiting fetch only when it next looks for data, less often
# the longer the wait, and each look costs CPU: 150 keeps a hop at 10-70 ms, and under a
# steady flow lets a fetch gather a batch worth handling.
FETCH_MAX_WAIT_MS = 150
# The same for consumers of what became of mails (``KAFKA_FEEDBACK_FETCH_MAX_WAIT_MS``):
# the orchestrator's and the sender's feedback and the tracker, none of which a mail waits
# for on its way to SMTP. Apache Kafka's own default; on the embedded broker it spared
# about a sixth of the broker's CPU per mail at 1,000 mails/s.
FEEDBACK_FETCH_MAX_WAIT_MS = 500
# How long a consumer waits before fetching a partition again from a hole in its offsets.
_GAP_RECHECK = 0.01


def _count_gap(tp: TopicPartition, hole: int, stepped_over: bool) -> None:
    outcome = "stepped_over" if stepped_over else "filled"
    telemetry.KAFKA_OFFSET_GAPS.labels(tp.topic, outcome).inc()
    if stepped_over:
        log.warning(
            "stepped over a hole in a partition's offsets",
            extra={"topic": tp.topic, "partition": tp.partition, "offset": hole},
        )


Handler = Callable[[CloudEvent], Awaitable[None]]
T = TypeVar("T")
Failures = Mapping[int, Exception]
"""What a batch handler could not process: the item's index in its batch, and why."""
BatchHandler = Callable[[Sequence[T]], Awaitable[Failures | None]]
Batch = dict[TopicPartition, list["ConsumerRecord[bytes, bytes]"]]


async def admit_fetched(
    consumer: AIOKafkaConsumer, gaps: GapGuard[TopicPartition], batch: Batch
) -> Batch:
    """``batch`` without what follows a hole in a partition's offsets (see
    ``offset_gaps``): such a partition is sought back to the hole, to be fetched again after
    a moment."""
    admitted: Batch = {}
    held_back = False
    for tp, records in batch.items():
        kept, again = gaps.admit(tp, records)
        if again is not None:
            consumer.seek(tp, again)
            held_back = True
        if kept:
            admitted[tp] = list(kept)
    if held_back:
        await asyncio.sleep(_GAP_RECHECK)
    return admitted


class _ForgetRevoked(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped here
    """Partitions a rebalance takes away are forgotten by the consumer's ``GapGuard``.

    One given back, even in the same rebalance, is read again from its position (the
    group's committed offset): another consumer may have read on meanwhile, and a guard
    still expecting the old offset would wait at a hole that is none, then step over it.
    """

    def __init__(self, gaps: GapGuard[TopicPartition]) -> None:
        self._gaps = gaps

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        self._gaps.forget(revoked)

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        """Nothing to do: the next fetch expects each new partition at its position."""


class _GroupConsumer:
    """The loop both consumers share: fetch, process, commit what is durable, dead-letter
    what cannot be processed (with the reason), report lag, stop cleanly.

    With ``acts_on`` (event types), an event of another of stepmail's types is passed over
    unchecked and never reaches the handler; it is committed with the rest and counted
    with the outcome ``passed_over`` (see ``events.read_event``).
    """

    def __init__(
        self,
        *,
        bootstrap: str,
        topics: Sequence[str],
        group_id: str,
        producer: EventProducer,
        max_batch: int,
        retry_backoff: tuple[float, float],
        after: "_GroupConsumer | None" = None,
        fetch_max_wait_ms: int = FETCH_MAX_WAIT_MS,
        acts_on: Collection[str] | None = None,
    ) -> None:
        self._topics = list(topics)
        self._acts_on = None if acts_on is None else frozenset(acts_on)
        self._bootstrap = bootstrap
        self._group_id = group_id
        self._after = after
        self._producer = producer
        self._max_batch = max_batch
        self._backoff = retry_backoff
        self._stopping = asyncio.Event()
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=group_id,
            client_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            fetch_max_wait_ms=fetch_max_wait_ms,
            max_poll_interval_ms=300_000,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=1_000,
        )
        self._started = False
        self._reported: set[TopicPartition] = set()
        self._gaps: GapGuard[TopicPartition] = GapGuard(outcome=_count_gap)
        self._consumer.subscribe(self._topics, listener=_ForgetRevoked(self._gaps))

    async def start(self) -> None:
        await self._consumer.start()
        self._started = True

    async def stop(self) -> None:
        """Ask the loop to finish the work in hand, commit and leave; safe twice."""
        self._stopping.set()

    async def close(self) -> None:
        if self._started:
            self._started = False
            await self._consumer.stop()
        for tp in self._reported:
            telemetry.KAFKA_CONSUMER_LAG.remove(self._group_id, tp.topic, str(tp.partition))
        self._reported.clear()

    @property
    def assignment(self) -> set[TopicPartition]:
        return set(self._consumer.assignment())

    async def run(self) -> None:
        """Fetch a batch, process it, commit the offsets of what is done."""
        try:
            if self._after is not None:
                await self._after.caught_up(self._stopping)
            while not self._stopping.is_set():
                batch = await self._fetch()
                await self._observe_lag()
                if batch:
                    done = await self._process(batch)
                    if done:
                        await self._commit(done)
        finally:
            await self.close()

    async def caught_up(self, stopping: asyncio.Event, poll: float = 0.2) -> None:
        """Return once this consumer's group has committed, on every partition of its
        topics, the log's end as it is now (or when ``stopping`` is set).

        Whatever was on the topics when this is called has then been handled, by this
        process or by another replica of the group."""
        await self._consumer.topics()  # the partitions' metadata, if not known yet
        partitions = [
            TopicPartition(topic, p)
            for topic in self._topics
            for p in sorted(self._consumer.partitions_for_topic(topic) or ())
        ]
        behind = await log_ends(self._bootstrap, partitions)
        report_at = time.monotonic() + 10
        while not stopping.is_set():
            committed = await asyncio.gather(*(self._consumer.committed(tp) for tp in behind))
            behind = {
                tp: end
                for (tp, end), at in zip(behind.items(), committed, strict=True)
                if end > (at or 0)
            }
            if not behind:
                return
            if time.monotonic() > report_at:
                report_at += 10
                log.info(
                    "waiting for a consumer group to catch up",
                    extra={"group": self._group_id, "partitions_behind": len(behind)},
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=poll)

    async def _fetch(self) -> Batch:
        await self._expect_new_partitions()
        return await admit_fetched(
            self._consumer,
            self._gaps,
            await self._consumer.getmany(timeout_ms=200, max_records=self._max_batch),
        )

    async def _expect_new_partitions(self) -> None:
        """A partition newly assigned is read from its position (the committed offset), so a
        hole right there is waited for too."""
        for tp in self._consumer.assignment():
            if self._gaps.expected(tp) is None:
                try:
                    self._gaps.expect(tp, await self._consumer.position(tp))
                except IllegalStateError:
                    continue  # taken away meanwhile

    async def _process(self, batch: Batch) -> dict[TopicPartition, int]:
        """Handle ``batch``; the next offset to commit per partition whose work is done."""
        raise NotImplementedError

    async def _backoff_or_stop(self, topic: str, attempt: int, exc: BaseException) -> bool:
        """Wait before retrying a retriable failure; ``False`` when stopping meanwhile."""
        telemetry.KAFKA_RETRIES.labels(topic).inc()
        log.warning(
            "retriable error, will retry",
            extra={"topic": topic, "attempt": attempt, "error": exc.__class__.__name__},
        )
        delay = min(self._backoff[1], self._backoff[0] * 2 ** min(attempt, 10))
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=delay)
        except TimeoutError:
            return True
        return False

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit; a partition lost in a rebalance meanwhile is re-read by its new owner,
        which is harmless because handlers are idempotent."""
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            log.warning(
                "offset commit refused after a rebalance; the new owner re-reads",
                extra={"error": exc.__class__.__name__},
            )

    def _start_process_span(
        self, record: "ConsumerRecord[bytes, bytes]", parent: otel_context.Context
    ) -> trace.Span:
        """A ``process`` span, child of the producer's; none when spans are not recorded."""
        if not telemetry.recording():
            return trace.INVALID_SPAN
        return tracer.start_span(
            f"process {record.topic}",
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            attributes=self._process_attributes(record),
        )

    def _process_attributes(self, record: "ConsumerRecord[bytes, bytes]") -> dict[str, str | int]:
        """Messaging attributes of a ``process`` span; the key is a contact id, never
        personal data."""
        return {
            "messaging.system": "kafka",
            "messaging.destination.name": record.topic,
            "messaging.operation.type": "process",
            "messaging.consumer.group.name": self._group_id,
            "messaging.destination.partition.id": str(record.partition),
            "messaging.kafka.offset": record.offset,
            **({"messaging.kafka.message.key": record.key.decode()} if record.key else {}),
        }

    async def _observe_lag(self) -> None:
        """Lag per assigned partition, from what the last fetch told about the log's end.

        A partition that a rebalance moved to another process loses its series here, so
        the sum over processes counts each partition once.
        """
        assigned = set(self._consumer.assignment())
        for tp in self._reported - assigned:
            telemetry.KAFKA_CONSUMER_LAG.remove(self._group_id, tp.topic, str(tp.partition))
        self._reported &= assigned
        for tp in assigned:
            high = self._consumer.highwater(tp)
            if high is None:
                continue
            try:
                position = await self._consumer.position(tp)
            except (IllegalStateError, KafkaError):
                continue
            telemetry.KAFKA_CONSUMER_LAG.labels(self._group_id, tp.topic, str(tp.partition)).set(
                max(0, high - position)
            )
            self._reported.add(tp)

    async def _dead_letter(
        self, record: "ConsumerRecord[bytes, bytes]", exc: BaseException
    ) -> bool:
        """Write the record to the ``.dlq`` twin with the reason; ``False`` if stopped first."""
        reason = f"{exc.__class__.__name__}: {exc}"[:1000]
        log.error(
            "message dead-lettered",
            extra={
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "error": exc.__class__.__name__,
            },
        )
        headers: list[tuple[str, bytes]] = [
            *[(k, v) for k, v in (record.headers or ()) if not k.startswith("stepmail-dlq-")],
            (DLQ_REASON, reason.encode()),
            ("stepmail-dlq-topic", record.topic.encode()),
            ("stepmail-dlq-partition", str(record.partition).encode()),
            ("stepmail-dlq-offset", str(record.offset).encode()),
            ("stepmail-dlq-group", self._group_id.encode()),
        ]
        while True:
            try:
                await self._producer.send_raw(
                    Topics.dlq(record.topic), record.key, record.value, headers
                )
                telemetry.KAFKA_CONSUMED.labels(record.topic, "dead_lettered").inc()
                return True
            except RetriableError:
                if self._stopping.is_set():
                    return False
                await asyncio.sleep(self._backoff[0])


class EventConsumer(_GroupConsumer):
    """Runs ``handler`` for each event of ``topics`` in a consumer group, at least once:
    a retriable error retries the same event, any other dead-letters it.

    Events of one partition (so of one contact, the key) are handled in order; the
    partitions of a fetched batch are handled concurrently, so a handler that waits on
    Postgres or the broker does not hold up the other partitions' contacts.
    """

    def __init__(
        self,
        *,
        bootstrap: str,
        topics: Sequence[str],
        group_id: str,
        handler: Handler,
        producer: EventProducer,
        max_batch: int = 200,
        retry_backoff: tuple[float, float] = (0.2, 5.0),
        fetch_max_wait_ms: int = FETCH_MAX_WAIT_MS,
        acts_on: Collection[str] | None = None,
    ) -> None:
        super().__init__(
            bootstrap=bootstrap,
            topics=topics,
            group_id=group_id,
            producer=producer,
            max_batch=max_batch,
            retry_backoff=retry_backoff,
            fetch_max_wait_ms=fetch_max_wait_ms,
            acts_on=acts_on,
        )
        self._handler = handler

    async def _fetch(self) -> Batch:
        # With a backlog, one partition's fetched records alone fill a batch; the other
        # partitions are topped up so that they are handled concurrently.
        batch = await super()._fetch()
        if batch:
            for tp in self._consumer.assignment():
                if tp not in batch:
                    batch |= await admit_fetched(
                        self._consumer,
                        self._gaps,
                        await self._consumer.getmany(tp, max_records=self._max_batch),
                    )
        return batch

    async def _process(self, batch: Batch) -> dict[TopicPartition, int]:
        done: dict[TopicPartition, int] = {}

        async def in_order(
            tp: TopicPartition, records: list["ConsumerRecord[bytes, bytes]"]
        ) -> None:
            for record in records:
                if self._stopping.is_set() or not await self._handle(record):
                    return
                done[tp] = record.offset + 1

        try:
            async with asyncio.TaskGroup() as group:
                for tp, records in batch.items():
                    group.create_task(in_order(tp, records))
        except BaseExceptionGroup as failed:
            # The loop's callers see what a handler raised, as when partitions were serial.
            raise failed.exceptions[0] from None
        return done

    async def _handle(self, record: "ConsumerRecord[bytes, bytes]") -> bool:
        """Handle one record; ``False`` means the loop is stopping and it was not done."""
        topic = record.topic
        parent = telemetry.extract_context(record.headers)
        attempt = 0
        started = time.perf_counter()
        while True:
            span = self._start_process_span(record, parent)
            with _within(span, parent), _ended(span):
                try:
                    event = read_event(record.value or b"", self._acts_on)
                    if event is None:
                        telemetry.KAFKA_CONSUMED.labels(topic, "passed_over").inc()
                        return True
                    await self._handler(event)
                except Exception as exc:  # noqa: BLE001 - classified below, never swallowed
                    if is_retriable(exc):
                        attempt += 1
                        span.record_exception(exc)
                        if await self._backoff_or_stop(topic, attempt, exc):
                            continue
                        return False
                    return await self._dead_letter(record, exc)
            telemetry.KAFKA_CONSUMED.labels(topic, "ok").inc()
            telemetry.KAFKA_HANDLE_SECONDS.labels(topic).observe(time.perf_counter() - started)
            return True


class BatchConsumer(_GroupConsumer, Generic[T]):
    """Hands each fetched batch to ``handler`` at once, so it can work on many events
    concurrently (the sender's SMTP windows) or in one transaction.

    ``prepare`` turns each event into what the handler takes; a record that is no valid
    event, or that ``prepare`` refuses with an error that is not retriable, is
    dead-lettered alone. The handler returns the items it could not process, by their
    index in what it was given, with the error; those are dead-lettered alone too. A
    retriable error of the handler retries the whole batch (the handler is idempotent);
    any other stops the loop, and with it the process. Offsets are committed only once the
    handler returned for the whole batch and its failures are dead-lettered.

    The items keep the order of their partition, so one contact's events of a topic arrive
    in order (there is no order between topics).

    With ``after``, nothing is handled until that consumer's group has caught up with its
    topics as they stood when this one started: the sender applies the unsubscribes and
    bounces that arrived while it was down before it sends anything.
    """

    def __init__(
        self,
        *,
        bootstrap: str,
        topics: Sequence[str],
        group_id: str,
        prepare: Callable[[CloudEvent], T],
        handler: "BatchHandler[T]",
        producer: EventProducer,
        max_batch: int = 500,
        retry_backoff: tuple[float, float] = (0.2, 5.0),
        after: "_GroupConsumer | None" = None,
        fetch_max_wait_ms: int = FETCH_MAX_WAIT_MS,
        acts_on: Collection[str] | None = None,
    ) -> None:
        super().__init__(
            bootstrap=bootstrap,
            topics=topics,
            group_id=group_id,
            producer=producer,
            max_batch=max_batch,
            retry_backoff=retry_backoff,
            after=after,
            fetch_max_wait_ms=fetch_max_wait_ms,
            acts_on=acts_on,
        )
        self._prepare = prepare
        self._handler = handler

    async def _process(self, batch: Batch) -> dict[TopicPartition, int]:
        spans: list[trace.Span] = []
        try:
            return await self._process_traced(batch, spans)
        finally:
            for span in spans:
                span.end()

    async def _process_traced(
        self, batch: Batch, spans: list[trace.Span]
    ) -> dict[TopicPartition, int]:
        """Each record gets a ``process`` span (when spans are recorded), child of its
        producer's, open until the batch is done; ``prepare`` runs inside it, or inside the
        producer's context, so what it builds can carry the trace on
        (``telemetry.trace_carrier()``)."""
        items: list[T] = []
        prepared: list[tuple[ConsumerRecord[bytes, bytes], trace.Span]] = []
        passed_over: Counter[str] = Counter()
        for records in batch.values():
            for record in records:
                parent = telemetry.extract_context(record.headers)
                span = self._start_process_span(record, parent)
                spans.append(span)
                try:
                    event = read_event(record.value or b"", self._acts_on)
                    if event is None:
                        passed_over[record.topic] += 1
                        continue
                    with _within(span, parent):
                        items.append(self._prepare(event))
                    prepared.append((record, span))
                except Exception as exc:  # noqa: BLE001 - dead-lettered with the reason
                    span.record_exception(exc)
                    if not await self._dead_letter(record, exc):
                        return {}
        started = time.perf_counter()
        attempt = 0
        while True:
            try:
                failures = await self._handler(items) or {}
            except Exception as exc:
                if not is_retriable(exc):
                    raise
                attempt += 1
                if await self._backoff_or_stop(next(iter(batch)).topic, attempt, exc):
                    continue
                return {}
            break
        for index, failure in sorted(failures.items()):
            record, span = prepared[index]
            span.record_exception(failure)
            if not await self._dead_letter(record, failure):
                return {}
        took = time.perf_counter() - started
        done = Counter(record.topic for record, _ in prepared)
        done.subtract(prepared[index][0].topic for index in failures)
        for topic, count in done.items():
            telemetry.KAFKA_CONSUMED.labels(topic, "ok").inc(count)
            telemetry.KAFKA_HANDLE_SECONDS.labels(topic).observe(took)
        for topic, count in passed_over.items():
            telemetry.KAFKA_CONSUMED.labels(topic, "passed_over").inc(count)
        return {tp: records[-1].offset + 1 for tp, records in batch.items() if records}
