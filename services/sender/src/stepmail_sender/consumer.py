"""The sender's own consumer of ``mail-rendered``: a whole fetched batch at a time.

``stepmail_common.kafka.EventConsumer`` runs its handler one event after another, which
caps a sender at one SMTP round trip at a time. This loop keeps the same guarantees —
offsets committed only after every mail up to them has its fate in the ledger, bad
records dead-lettered with the reason, retriable errors retried without skipping, a
clean stop that finishes the batch in hand, commits and leaves the group — while the
deliverer works on the batch in concurrent windows.

Rebalance: a partition taken away while its batch is in hand is re-read by its new
owner; the commit refused here is harmless because the ledger sends each message id at
most once (the new owner waits for the outcome this process records).
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from stepmail_common import event_types, telemetry
from stepmail_common.errors import PermanentError, RetriableError, is_retriable
from stepmail_common.events import CloudEvent
from stepmail_common.kafka import DLQ_REASON, EventProducer
from stepmail_common.topics import Topics
from stepmail_sender import metrics
from stepmail_sender.domain import RenderedMail

log = logging.getLogger(__name__)

BatchHandler = Callable[[Sequence[RenderedMail]], Awaitable[None]]


def decode(record: "ConsumerRecord[bytes, bytes]") -> RenderedMail:
    """A record as a rendered mail; ``PermanentError`` says why it cannot be one."""
    event = CloudEvent.from_json(record.value or b"")
    if event.type != event_types.MAIL_RENDERED:
        raise PermanentError(f"unexpected event type {event.type!r} on mail-rendered")
    try:
        return RenderedMail.from_data(event.data)
    except (KeyError, TypeError) as exc:
        raise PermanentError(f"rendered mail lacks {exc}") from exc


class BatchConsumer:
    """Consumes ``topic`` in a group and hands each fetched batch to ``handler``."""

    def __init__(
        self,
        *,
        bootstrap: str,
        topic: str,
        group_id: str,
        handler: BatchHandler,
        producer: EventProducer,
        max_batch: int = 500,
        retry_backoff: tuple[float, float] = (0.2, 5.0),
    ) -> None:
        self._topic = topic
        self._group_id = group_id
        self._handler = handler
        self._producer = producer
        self._max_batch = max_batch
        self._backoff = retry_backoff
        self._stopping = asyncio.Event()
        self._consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=group_id,
            client_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            fetch_max_wait_ms=50,
            max_poll_interval_ms=300_000,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=1_000,
        )
        self._started = False

    async def start(self) -> None:
        await self._consumer.start()
        self._started = True

    async def stop(self) -> None:
        """Finish the batch in hand, commit, leave the group; safe twice."""
        self._stopping.set()

    async def close(self) -> None:
        if self._started:
            self._started = False
            await self._consumer.stop()

    async def run(self) -> None:
        try:
            while not self._stopping.is_set():
                batch = await self._consumer.getmany(timeout_ms=200, max_records=self._max_batch)
                await self._observe_lag()
                if not batch:
                    continue
                if await self._handle(batch):
                    await self._commit({tp: rs[-1].offset + 1 for tp, rs in batch.items() if rs})
        finally:
            await self.close()

    async def _handle(
        self, batch: dict[TopicPartition, list["ConsumerRecord[bytes, bytes]"]]
    ) -> bool:
        """Record every mail of the batch; ``False`` if stopping first (nothing committed)."""
        mails: list[RenderedMail] = []
        for records in batch.values():
            for record in records:
                try:
                    mails.append(decode(record))
                except Exception as exc:  # noqa: BLE001 - every decoding failure is dead-lettered
                    if not await self._dead_letter(record, exc):
                        return False
        attempt = 0
        while True:
            try:
                await self._handler(mails)
            except Exception as exc:
                if not is_retriable(exc):
                    raise
                attempt += 1
                telemetry.KAFKA_RETRIES.labels(self._topic).inc(len(mails))
                log.warning(
                    "batch not recorded; retrying",
                    extra={"attempt": attempt, "error": exc.__class__.__name__},
                )
                delay = min(self._backoff[1], self._backoff[0] * 2 ** min(attempt, 10))
                try:
                    await asyncio.wait_for(self._stopping.wait(), timeout=delay)
                except TimeoutError:
                    continue
                return False
            telemetry.KAFKA_CONSUMED.labels(self._topic, "ok").inc(len(mails))
            return True

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            log.warning(
                "offset commit refused after a rebalance; the new owner re-reads",
                extra={"error": exc.__class__.__name__},
            )

    async def _observe_lag(self) -> None:
        """Lag per assigned partition, from what the last fetch told about the log's end."""
        for tp in self._consumer.assignment():
            high = self._consumer.highwater(tp)
            if high is None:
                continue
            try:
                position = await self._consumer.position(tp)
            except (IllegalStateError, KafkaError):
                continue
            metrics.CONSUMER_LAG.labels(str(tp.partition)).set(max(0, high - position))

    async def _dead_letter(
        self, record: "ConsumerRecord[bytes, bytes]", exc: BaseException
    ) -> bool:
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
            except (RetriableError, KafkaError):
                if self._stopping.is_set():
                    return False
                await asyncio.sleep(self._backoff[0])
