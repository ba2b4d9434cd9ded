"""What the orchestrator does with each consumed event: one handler per topic."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

from stepmail_common import event_types, telemetry
from stepmail_common.clock import Clock
from stepmail_common.events import CloudEvent
from stepmail_orchestrator import metrics, repository
from stepmail_orchestrator.conditions import matches
from stepmail_orchestrator.progress import Progress
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


class ContactEventHandler:
    """contact-events: profiles and consent, triggers, exits, erasure."""

    consumer = "contact-events"

    def __init__(
        self,
        pool: asyncpg.Pool[asyncpg.Record],
        settings: OrchestratorSettings,
        clock: Clock,
        progress: Progress,
        outbox_ready: asyncio.Event,
    ) -> None:
        self._pool = pool
        self._settings = settings
        self._clock = clock
        self._progress = progress
        self._outbox_ready = outbox_ready

    async def __call__(self, event: CloudEvent) -> None:
        handler = {
            event_types.EVENT_RECEIVED: self._received,
            event_types.CONTACT_UPDATED: self._updated,
            event_types.CONTACT_ERASED: self._erased,
        }.get(event.type)
        if handler is None:
            return
        async with self._pool.acquire() as conn, conn.transaction():
            if not await repository.mark_processed(conn, self.consumer, event.id):
                return
            await handler(conn, event, self._clock.now())
        self._outbox_ready.set()

    async def _contact(self, conn: Connection, contact: dict[str, Any]) -> dict[str, Any]:
        return await repository.upsert_contact(
            conn, contact, self._settings.default_locale, self._settings.default_time_zone
        )

    async def _received(self, conn: Connection, event: CloudEvent, now: datetime) -> None:
        data = event.data
        contact = await self._contact(conn, data["contact"])
        if data["contact"].get("consent"):
            # Consent given with the event itself, e.g. the sign-up form's opt-in box.
            contact = await self._consent(conn, contact, data["contact"]["consent"], now)
        name, properties = data["name"], data["properties"]
        occurred = _moment(data.get("occurred_at"), now)
        await repository.record_activity(conn, contact["id"], name, properties, occurred)
        await self._progress.exit_on_event(conn, contact, name, properties, now)
        trigger = {
            "id": event.id,
            "name": name,
            "properties": properties,
            "occurred_at": occurred.isoformat(),
            "trace": telemetry.trace_carrier(),
        }
        for scenario, version in await repository.latest_active(conn):
            rule = scenario.trigger
            if rule.event != name:
                continue
            facts = {"properties": properties, "contact": contact}
            if not matches(rule.where, facts):
                continue
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
                conn, scenario, version, contact, trigger, now, occurred
            ):
                log.info(
                    "contact enrolled", extra={"contact_id": contact["id"], "scenario": scenario.id}
                )

    async def _updated(self, conn: Connection, event: CloudEvent, now: datetime) -> None:
        data = event.data
        contact = await self._contact(conn, data["contact"])
        if data.get("consent"):
            contact = await self._consent(conn, contact, data["consent"], now)
        await self._progress.exit_left_audience(conn, contact, now)

    async def _consent(
        self, conn: Connection, contact: dict[str, Any], consent: dict[str, Any], now: datetime
    ) -> dict[str, Any]:
        """Record an opt-in or opt-out with its proof; an opt-out ends that kind's enrollments."""
        record: dict[str, Any] = {
            k: consent[k] for k in ("status", "source", "at", "evidence") if k in consent
        }
        record.setdefault("at", now.isoformat())
        for kind in consent["kinds"]:
            await repository.set_consent(conn, contact["id"], kind, record)
            if consent["status"] == "withdrawn":
                await self._progress.exit_kind(conn, contact["id"], kind, now)
        return await repository.get_contact(conn, contact["id"]) or contact

    async def _erased(self, conn: Connection, event: CloudEvent, now: datetime) -> None:
        await repository.erase_contact(conn, event.data["contact_id"])
        log.info("contact erased", extra={"contact_id": event.data["contact_id"]})


_DELIVERY_FACTS = {
    event_types.DELIVERY_SENT: "sent",
    event_types.DELIVERY_FAILED: "failed",
}
_HUMAN_FACTS = {
    event_types.ENGAGEMENT_OPENED: "opened",
    event_types.ENGAGEMENT_CLICKED: "clicked",
}
# What ``FeedbackHandler._apply`` acts on; anything else (``delivery.sending``, one per mail)
# is skipped before a transaction is opened.
_FEEDBACK_TYPES = frozenset(
    {
        *_DELIVERY_FACTS,
        *_HUMAN_FACTS,
        event_types.ENGAGEMENT_UNSUBSCRIBED,
        event_types.ENGAGEMENT_COMPLAINED,
        event_types.ENGAGEMENT_RESUBSCRIBED,
    }
)


class FeedbackHandler:
    """delivery-events and engagement-events: the facts that branches and stats read,
    and opt-outs that end enrollments."""

    consumer = "feedback"

    def __init__(
        self, pool: asyncpg.Pool[asyncpg.Record], clock: Clock, progress: Progress
    ) -> None:
        self._pool = pool
        self._clock = clock
        self._progress = progress

    async def __call__(self, event: CloudEvent) -> None:
        if event.type not in _FEEDBACK_TYPES:
            return
        async with self._pool.acquire() as conn, conn.transaction():
            if not await repository.mark_processed(conn, self.consumer, event.id):
                return
            await self._apply(conn, event, self._clock.now())

    async def _apply(self, conn: Connection, event: CloudEvent, now: datetime) -> None:
        data = event.data
        at = _moment(data.get("at"), now)
        message_id = data.get("message_id")
        if event.type == event_types.DELIVERY_SENT and message_id:
            released = await repository.record_sent(conn, message_id, at)
            if released is not None:
                requested_at, mail_kind = released
                metrics.SEND_LATENCY.labels(mail_kind).observe(
                    max(0.0, (at - requested_at).total_seconds())
                )
        elif event.type in _DELIVERY_FACTS and message_id:
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
