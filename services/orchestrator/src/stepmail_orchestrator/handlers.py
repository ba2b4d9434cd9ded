"""What the orchestrator does with consumed events: one handler per topic, each taking a
fetched batch (``stepmail_common.kafka.BatchConsumer``) in one transaction.

A batch costs one transaction and one ``processed_events`` statement however many events
it holds; events a handler does not act on cost none, and facts that keep their first time
(a mail's sent time) are not recorded there. When one event of the batch fails
for good, the transaction is rolled back and the batch is handled again one event per
transaction, so that only the failing events are dead-lettered and the others take effect
once (a savepoint per event would cost two round trips per event on the good path).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from stepmail_common import event_types, telemetry
from stepmail_common.clock import Clock
from stepmail_common.errors import is_retriable
from stepmail_common.events import CloudEvent
from stepmail_common.kafka import Failures
from stepmail_orchestrator import metrics, repository
from stepmail_orchestrator.conditions import matches
from stepmail_orchestrator.progress import Progress
from stepmail_orchestrator.repository import PendingWrites
from stepmail_orchestrator.scenarios import Scenario
from stepmail_orchestrator.settings import OrchestratorSettings

if TYPE_CHECKING:
    import asyncpg

    from stepmail_orchestrator.repository import Connection

log = logging.getLogger(__name__)


def _moment(text: str | None, default: datetime) -> datetime:
    if not text:
        return default
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return default
    return min(parsed, default) if parsed.tzinfo else default


@dataclass(frozen=True, slots=True)
class Consumed:
    """A consumed event and the trace of its ``process`` span, which what it causes
    continues (the span is current only while ``consumed`` runs, not in the handler)."""

    event: CloudEvent
    trace: dict[str, str] | None


def consumed(event: CloudEvent) -> Consumed:
    """``BatchConsumer``'s ``prepare``: runs inside the record's ``process`` span."""
    return Consumed(event, telemetry.trace_carrier() or None)


class _BatchHandler:
    """One transaction per batch, each event recorded in ``processed_events`` under
    ``consumer`` so that a redelivered one has no effect; a permanent failure of one event
    is redone event by event to find it."""

    consumer: str
    acts_on: frozenset[str]
    """The event types it acts on; its consumer passes over the others unchecked, and it
    skips any that still reach it."""
    idempotent: frozenset[str] = frozenset()
    """Types whose effect is the same however often they are applied (a first time is
    kept): not recorded in ``processed_events``, which would cost a row per mail."""

    def __init__(self, pool: asyncpg.Pool[asyncpg.Record], clock: Clock) -> None:
        self._pool = pool
        self._clock = clock

    async def _apply(self, conn: Connection, items: Sequence[Consumed], now: datetime) -> None:
        """Act on ``items`` (new to this consumer, in partition order) in ``conn``'s
        transaction."""
        raise NotImplementedError

    def _committed(self) -> None:
        """Called after a transaction that acted on events committed."""

    async def __call__(self, items: Sequence[Consumed]) -> Failures:
        wanted = [i for i, item in enumerate(items) if item.event.type in self.acts_on]
        if not wanted:
            return {}
        try:
            await self._transaction([items[i] for i in wanted])
            return {}
        except Exception as exc:
            if is_retriable(exc):
                raise
            if len(wanted) == 1:
                return {wanted[0]: exc}
            log.warning(
                "a batch failed; handling its events one by one",
                extra={"events": len(wanted), "error": exc.__class__.__name__},
            )
        failures: dict[int, Exception] = {}
        for index in wanted:
            try:
                await self._transaction([items[index]])
            except Exception as exc:
                if is_retriable(exc):
                    raise
                failures[index] = exc
        return failures

    async def _transaction(self, items: Sequence[Consumed]) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            marked = [item.event.id for item in items if item.event.type not in self.idempotent]
            fresh = (
                await repository.mark_processed(conn, self.consumer, marked) if marked else set()
            )
            todo = []
            for item in items:
                if item.event.type in self.idempotent:
                    todo.append(item)
                elif item.event.id in fresh:
                    # An id seen twice in one batch (a producer's retry) acts once.
                    fresh.discard(item.event.id)
                    todo.append(item)
            if not todo:
                return
            await self._apply(conn, todo, self._clock.now())
        self._committed()


class ContactEventHandler(_BatchHandler):
    """contact-events: profiles and consent, triggers, exits, erasure."""

    consumer = "contact-events"
    acts_on = frozenset(
        {event_types.EVENT_RECEIVED, event_types.CONTACT_UPDATED, event_types.CONTACT_ERASED}
    )

    def __init__(
        self,
        pool: asyncpg.Pool[asyncpg.Record],
        settings: OrchestratorSettings,
        clock: Clock,
        progress: Progress,
        outbox_ready: asyncio.Event,
    ) -> None:
        super().__init__(pool, clock)
        self._settings = settings
        self._progress = progress
        self._outbox_ready = outbox_ready

    async def _apply(self, conn: Connection, items: Sequence[Consumed], now: datetime) -> None:
        """In waves: the first event of each contact in the batch, then the second, and so
        on, so that each wave's contacts are written in one statement and one contact's
        events keep their order (the writes of a wave are flushed before the next reads).

        The enrollments, mails and outbox rows of a wave are written together at its end.
        """
        catalogue = await repository.catalogue(conn)
        w = PendingWrites()
        for wave in _waves(items):
            if w.pending:
                await w.flush(conn)
            changes = [self._change(item, now) for item in wave if item.event.type != _ERASED]
            contacts = (
                await repository.upsert_contacts(
                    conn,
                    changes,
                    self._settings.default_locale,
                    self._settings.default_time_zone,
                )
                if changes
                else {}
            )
            triggers = []
            for item in wave:
                if item.event.type == _ERASED:
                    await self._erased(conn, item.event)
                    continue
                contact, has_active = contacts[_contact_of(item)]
                if has_active:
                    await self._exits(conn, item.event, contact, now, catalogue)
                if item.event.type == event_types.EVENT_RECEIVED:
                    triggers.append((item, contact))
            # The wave's enrollment decisions: their locks and reads in one round trip,
            # after the exits, which the reads must see.
            candidates = [
                (scenario.id, contact["id"])
                for item, contact in triggers
                for scenario, _ in catalogue.active
                if _may_trigger(scenario, item.event, contact)
            ]
            w.locked = await repository.lock_entries(conn, candidates) if candidates else {}
            for item, contact in triggers:
                await self._received(conn, item, contact, now, catalogue, w)
        await w.flush(conn)

    def _committed(self) -> None:
        self._outbox_ready.set()

    @staticmethod
    def _change(item: Consumed, now: datetime) -> repository.ContactChange:
        data = item.event.data
        consent = _consent_of(item.event)
        record: dict[str, Any] | None = None
        if consent:
            proof = {k: consent[k] for k in ("status", "source", "at", "evidence") if k in consent}
            proof.setdefault("at", now.isoformat())
            record = dict.fromkeys(consent["kinds"], proof)
        activity = None
        if item.event.type == event_types.EVENT_RECEIVED:
            activity = (data["name"], data["properties"], _moment(data.get("occurred_at"), now))
        return repository.ContactChange(data["contact"], record, activity)

    async def _exits(
        self,
        conn: Connection,
        event: CloudEvent,
        contact: dict[str, Any],
        now: datetime,
        catalogue: repository.Catalogue,
    ) -> None:
        """End the running enrollments the event ends: an opt-out (final, for that kind of
        mail), an exit rule, a contact that left the audience."""
        consent = _consent_of(event)
        if consent and consent["status"] == "withdrawn":
            for kind in consent["kinds"]:
                await self._progress.exit_kind(conn, contact["id"], kind, now)
        if event.type == event_types.CONTACT_UPDATED:
            await self._progress.exit_left_audience(conn, contact, now)
        elif (name := event.data["name"]) in catalogue.exit_events:
            await self._progress.exit_on_event(conn, contact, name, event.data["properties"], now)

    async def _received(
        self,
        conn: Connection,
        item: Consumed,
        contact: dict[str, Any],
        now: datetime,
        catalogue: repository.Catalogue,
        w: PendingWrites,
    ) -> None:
        event = item.event
        data = event.data
        name, properties = data["name"], data["properties"]
        occurred = _moment(data.get("occurred_at"), now)
        trigger = {
            "id": event.id,
            "name": name,
            "properties": properties,
            "occurred_at": occurred.isoformat(),
            "trace": item.trace or {},
        }
        for scenario, version in catalogue.active:
            if not _may_trigger(scenario, event, contact):
                continue
            rule = scenario.trigger
            if rule.count_at_least is not None and rule.count_within is not None:
                recent = await repository.recent_activity(
                    conn, contact["id"], name, now - rule.count_within
                )
                hits = sum(
                    1 for p in recent if matches(rule.where, {"properties": p, "contact": contact})
                )
                if hits < rule.count_at_least:
                    continue
            # Waits count from when the event happened (never later than now), so a
            # delayed delivery of the event does not push the scenario back.
            if await self._progress.enroll(
                conn, scenario, version, contact, trigger, now, occurred, writes=w
            ):
                log.info(
                    "contact enrolled", extra={"contact_id": contact["id"], "scenario": scenario.id}
                )

    async def _erased(self, conn: Connection, event: CloudEvent) -> None:
        await repository.erase_contact(conn, event.data["contact_id"])
        log.info("contact erased", extra={"contact_id": event.data["contact_id"]})


_ERASED = event_types.CONTACT_ERASED


def _may_trigger(scenario: Scenario, event: CloudEvent, contact: dict[str, Any]) -> bool:
    """Whether the trigger event matches the scenario's trigger (counts aside)."""
    rule = scenario.trigger
    return rule.event == event.data["name"] and matches(
        rule.where, {"properties": event.data["properties"], "contact": contact}
    )


def _consent_of(event: CloudEvent) -> dict[str, Any] | None:
    """Consent given with the event: a contact update's, or the trigger's own (e.g. the
    sign-up form's opt-in box)."""
    if event.type == event_types.CONTACT_UPDATED:
        consent: dict[str, Any] | None = event.data.get("consent")
    else:
        consent = event.data["contact"].get("consent")
    return consent or None


def _waves(items: Sequence[Consumed]) -> list[list[Consumed]]:
    """The n-th wave holds the n-th event of each contact, contacts in id order."""
    waves: list[list[Consumed]] = []
    seen: dict[str, int] = {}
    for item in items:
        contact_id = _contact_of(item)
        n = seen.get(contact_id, 0)
        seen[contact_id] = n + 1
        if n == len(waves):
            waves.append([])
        waves[n].append(item)
    return [sorted(wave, key=_contact_of) for wave in waves]


def _contact_of(item: Consumed) -> str:
    data = item.event.data
    erased = item.event.type == _ERASED
    contact_id: str = data["contact_id"] if erased else data["contact"]["id"]
    return contact_id


_DELIVERY_FACTS = {
    event_types.DELIVERY_SENT: "sent",
    event_types.DELIVERY_FAILED: "failed",
}
_HUMAN_FACTS = {
    event_types.ENGAGEMENT_OPENED: "opened",
    event_types.ENGAGEMENT_CLICKED: "clicked",
}
# What ``FeedbackHandler._apply`` acts on; anything else (``delivery.sending``, one per mail)
# is passed over.
_FEEDBACK_TYPES = frozenset(
    {
        *_DELIVERY_FACTS,
        *_HUMAN_FACTS,
        event_types.ENGAGEMENT_UNSUBSCRIBED,
        event_types.ENGAGEMENT_COMPLAINED,
        event_types.ENGAGEMENT_RESUBSCRIBED,
    }
)


class FeedbackHandler(_BatchHandler):
    """delivery-events and engagement-events: the facts that branches and stats read,
    and opt-outs that end enrollments."""

    consumer = "feedback"
    acts_on = _FEEDBACK_TYPES
    # Facts keep their first time (a mail's sent time is set once, a click's row once).
    idempotent = frozenset({*_DELIVERY_FACTS, *_HUMAN_FACTS})

    def __init__(
        self, pool: asyncpg.Pool[asyncpg.Record], clock: Clock, progress: Progress
    ) -> None:
        super().__init__(pool, clock)
        self._progress = progress

    async def _apply(self, conn: Connection, items: Sequence[Consumed], now: datetime) -> None:
        """The batch's ``sent`` events (one per mail) in one statement: a sent time is set
        once and nothing else here reads or writes it, so their order does not matter."""
        sent: dict[str, datetime] = {}
        for item in items:
            data = item.event.data
            if item.event.type == event_types.DELIVERY_SENT:
                if data.get("message_id"):
                    sent.setdefault(data["message_id"], _moment(data.get("at"), now))
            else:
                await self._apply_one(conn, item.event, now)
        if sent:
            for at, requested_at, mail_kind in await repository.record_sent(conn, sent):
                metrics.SEND_LATENCY.labels(mail_kind).observe(
                    max(0.0, (at - requested_at).total_seconds())
                )

    async def _apply_one(self, conn: Connection, event: CloudEvent, now: datetime) -> None:
        data = event.data
        at = _moment(data.get("at"), now)
        message_id = data.get("message_id")
        if event.type in _DELIVERY_FACTS and message_id:
            await repository.record_fact(conn, message_id, _DELIVERY_FACTS[event.type], at)
        elif event.type in _HUMAN_FACTS and message_id:
            if data.get("machine"):
                return  # scanners and privacy proxies are not people
            await repository.record_fact(conn, message_id, _HUMAN_FACTS[event.type], at)
            if event.type == event_types.ENGAGEMENT_CLICKED:
                await repository.record_click(conn, message_id, data["link"]["url"], at)
        elif event.type == event_types.ENGAGEMENT_UNSUBSCRIBED:
            if message_id:
                await repository.record_fact(conn, message_id, "unsubscribed", at)
            if "topics" in data:
                # Some topics only: the consent stands, steps of those topics are skipped.
                await repository.set_opted_out_topics(
                    conn, data["contact_id"], data["mail_kind"], data["topics"]
                )
            else:
                await self._opt_out(
                    conn, data["contact_id"], data["mail_kind"], "unsubscribe", at, now
                )
        elif event.type == event_types.ENGAGEMENT_COMPLAINED:
            if message_id:
                await repository.record_fact(conn, message_id, "complained", at)
            if data.get("contact_id"):
                await self._opt_out(conn, data["contact_id"], "marketing", "complaint", at, now)
        elif event.type == event_types.ENGAGEMENT_RESUBSCRIBED:
            record = {"status": "granted", "source": "resubscribe", "at": at.isoformat()}
            await repository.set_consent(conn, data["contact_id"], data["mail_kind"], record)
            await repository.set_opted_out_topics(conn, data["contact_id"], data["mail_kind"], ())

    async def _opt_out(
        self, conn: Connection, contact_id: str, kind: str, source: str, at: datetime, now: datetime
    ) -> None:
        record = {"status": "withdrawn", "source": source, "at": at.isoformat()}
        await repository.set_consent(conn, contact_id, kind, record)
        await self._progress.exit_kind(conn, contact_id, kind, now)
