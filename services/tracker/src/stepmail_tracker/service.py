"""Engagement events: what an open, a click, an opt-out or an ESP report tells the platform."""

import asyncio
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from stepmail_common import event_types
from stepmail_common.clock import Clock
from stepmail_common.errors import RetriableError
from stepmail_common.events import CloudEvent, derived_id
from stepmail_common.kafka import EventProducer
from stepmail_common.topics import Topics
from stepmail_common.tracking import ClickToken, MailRef, UnsubscribeToken
from stepmail_tracker import metrics

log = logging.getLogger(__name__)

SOURCE = "urn:stepmail:tracker"


def _mail(ref: MailRef) -> dict[str, object]:
    return {
        "message_id": ref.message_id,
        "contact_id": ref.contact_id,
        "scenario": {"id": ref.scenario_id, "version": ref.scenario_version},
        "step": {"id": ref.step_id, "index": ref.step_index},
    }


def _machine(reason: str | None) -> dict[str, object]:
    return {"machine": True, "machine_reason": reason} if reason else {"machine": False}


@dataclass(frozen=True, slots=True)
class Feedback:
    """A bounce or complaint an ESP reported, before it becomes an event."""

    kind: str  # "bounced" or "complained"
    source: str  # "ses" or "sendgrid"
    recipient: str
    feedback_id: str
    message_id: str | None = None
    contact_id: str | None = None
    bounce: str | None = None  # "hard" or "soft"
    dsn: str | None = None
    diagnostic: str | None = None


class Engagement:
    """Publishes engagement events on ``engagement-events``, keyed by contact id."""

    def __init__(
        self, producer: EventProducer, topics: Topics, clock: Clock, click_timeout: float
    ) -> None:
        self._producer = producer
        self._topics = topics
        self._clock = clock
        self._click_timeout = click_timeout

    async def _publish_best_effort(self, event: CloudEvent, key: str, name: str) -> bool:
        """A person's open or click never waits long nor fails for the broker."""
        try:
            await asyncio.wait_for(
                self._producer.publish(self._topics.engagement_events, event, key=key),
                timeout=self._click_timeout,
            )
        except (RetriableError, TimeoutError) as exc:
            metrics.PUBLISH_FAILURES.labels(name).inc()
            log.warning(
                "engagement not published; answering anyway",
                extra={"event": name, "error": exc.__class__.__name__},
            )
            return False
        return True

    async def clicked(self, click: ClickToken, machine_reason: str | None) -> bool:
        """Publish a click; ``False`` when the broker did not take it in time."""
        now = self._clock.now()
        event = CloudEvent(
            type=event_types.ENGAGEMENT_CLICKED,
            source=SOURCE,
            subject=click.mail.contact_id,
            time=now,
            data={
                **_mail(click.mail),
                "link": {"index": click.link_index, "url": click.url},
                **_machine(machine_reason),
                "at": now.isoformat(),
            },
        )
        return await self._publish_best_effort(event, click.mail.contact_id, "clicked")

    async def opened(self, ref: MailRef, machine_reason: str | None) -> bool:
        """Publish an open; ``False`` when the broker did not take it in time."""
        now = self._clock.now()
        event = CloudEvent(
            type=event_types.ENGAGEMENT_OPENED,
            source=SOURCE,
            subject=ref.contact_id,
            time=now,
            data={**_mail(ref), **_machine(machine_reason), "at": now.isoformat()},
        )
        return await self._publish_best_effort(event, ref.contact_id, "opened")

    async def _publish(self, event: CloudEvent, key: str, name: str) -> None:
        try:
            await self._producer.publish(self._topics.engagement_events, event, key=key)
        except RetriableError:
            metrics.PUBLISH_FAILURES.labels(name).inc()
            raise

    async def unsubscribed(
        self,
        token: UnsubscribeToken,
        method: str,
        topics: Sequence[str] | None = None,
        version: int | None = None,
    ) -> None:
        """Publish an opt-out; raises ``RetriableError`` when the broker did not take it.

        The event id comes from the mail, its kind, the topics and the state's version, so
        a replay (a second press, a provider's retried one-click POST) is the same event,
        which consumers dedupe, while a new opt-out after a re-subscribe is a new one.
        """
        now = self._clock.now()
        ref = token.mail
        parts = [ref.message_id, token.mail_kind]
        if topics is not None:
            parts.append("topics:" + ",".join(sorted(topics)))
        if version is not None and version > 1:
            parts.append(f"v{version}")
        data: dict[str, Any] = {
            "message_id": ref.message_id,
            "contact_id": ref.contact_id,
            "mail_kind": token.mail_kind,
            "method": method,
            "at": now.isoformat(),
        }
        if topics is not None:
            data["topics"] = sorted(topics)
        event = CloudEvent(
            type=event_types.ENGAGEMENT_UNSUBSCRIBED,
            source=SOURCE,
            subject=ref.contact_id,
            id=derived_id("tracker", event_types.ENGAGEMENT_UNSUBSCRIBED, *parts)
            if version is not None
            else str(uuid.uuid4()),
            time=now,
            data=data,
        )
        await self._publish(event, ref.contact_id, "unsubscribed")
        metrics.UNSUBSCRIBES.labels(method).inc()

    async def resubscribed(self, token: UnsubscribeToken, version: int) -> None:
        """Publish a re-subscription made on the preference page."""
        now = self._clock.now()
        ref = token.mail
        event = CloudEvent(
            type=event_types.ENGAGEMENT_RESUBSCRIBED,
            source=SOURCE,
            subject=ref.contact_id,
            id=derived_id(
                "tracker",
                event_types.ENGAGEMENT_RESUBSCRIBED,
                ref.message_id,
                token.mail_kind,
                f"v{version}",
            ),
            time=now,
            data={
                "message_id": ref.message_id,
                "contact_id": ref.contact_id,
                "mail_kind": token.mail_kind,
                "method": "page",
                "at": now.isoformat(),
            },
        )
        await self._publish(event, ref.contact_id, "resubscribed")
        metrics.RESUBSCRIBES.inc()

    async def feedback(self, items: Sequence[Feedback]) -> None:
        """Publish ESP bounces and complaints; ``RetriableError`` if the broker refused.

        Ids derive from the provider's feedback id and the address, so a webhook the
        provider retries publishes the same events, which consumers dedupe.
        """
        if not items:
            return
        now = self._clock.now()
        for item in items:
            event_type = (
                event_types.ENGAGEMENT_BOUNCED
                if item.kind == "bounced"
                else event_types.ENGAGEMENT_COMPLAINED
            )
            data: dict[str, Any] = {
                "recipient": item.recipient,
                "source": item.source,
                "at": now.isoformat(),
            }
            for name in ("message_id", "contact_id", "bounce", "dsn", "diagnostic"):
                value = getattr(item, name)
                if value:
                    data[name] = value[:1000] if name == "diagnostic" else value
            # Keyed by contact when known (ordering with the contact's other events),
            # else by the feedback id: an address never becomes a key.
            key = item.contact_id or f"{item.source}:{item.feedback_id}"
            event = CloudEvent(
                type=event_type,
                source=SOURCE,
                subject=key,
                id=derived_id("tracker", event_type, item.source, item.feedback_id, item.recipient),
                time=now,
                data=data,
            )
            await self._publish(event, key, item.kind)
            if item.kind == "bounced":
                metrics.BOUNCES.labels(item.source, item.bounce or "soft").inc()
            else:
                metrics.COMPLAINTS.labels(item.source).inc()
