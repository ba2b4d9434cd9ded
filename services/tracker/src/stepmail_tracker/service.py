"""Engagement events: what a click or an unsubscribe tells the rest of the platform."""

import asyncio
import logging

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


class Engagement:
    """Publishes engagement events on ``engagement-events``, keyed by contact id."""

    def __init__(
        self, producer: EventProducer, topics: Topics, clock: Clock, click_timeout: float
    ) -> None:
        self._producer = producer
        self._topics = topics
        self._clock = clock
        self._click_timeout = click_timeout

    async def clicked(self, click: ClickToken, machine: bool) -> bool:
        """Publish a click; ``False`` when the broker did not take it in time.

        A click must never fail the person who made it, so a broker outage is logged
        and counted, and the caller redirects all the same.
        """
        now = self._clock.now()
        event = CloudEvent(
            type=event_types.ENGAGEMENT_CLICKED,
            source=SOURCE,
            subject=click.mail.contact_id,
            time=now,
            data={
                **_mail(click.mail),
                "link": {"index": click.link_index, "url": click.url},
                "machine": machine,
                "at": now.isoformat(),
            },
        )
        try:
            await asyncio.wait_for(
                self._producer.publish(
                    self._topics.engagement_events, event, key=click.mail.contact_id
                ),
                timeout=self._click_timeout,
            )
        except (RetriableError, TimeoutError) as exc:
            metrics.PUBLISH_FAILURES.labels("clicked").inc()
            log.warning(
                "click not published; redirecting anyway",
                extra={"message_id": click.mail.message_id, "error": exc.__class__.__name__},
            )
            return False
        return True

    async def unsubscribed(self, token: UnsubscribeToken, method: str) -> None:
        """Publish an opt-out; raises ``RetriableError`` when the broker did not take it.

        The event id comes from the mail and its kind, so a replay (a second press, a
        provider's retried one-click POST) is the same event, which consumers dedupe.
        """
        now = self._clock.now()
        ref = token.mail
        event = CloudEvent(
            type=event_types.ENGAGEMENT_UNSUBSCRIBED,
            source=SOURCE,
            subject=ref.contact_id,
            id=derived_id(
                "tracker", event_types.ENGAGEMENT_UNSUBSCRIBED, ref.message_id, token.mail_kind
            ),
            time=now,
            data={
                "message_id": ref.message_id,
                "contact_id": ref.contact_id,
                "mail_kind": token.mail_kind,
                "method": method,
                "at": now.isoformat(),
            },
        )
        try:
            await self._producer.publish(self._topics.engagement_events, event, key=ref.contact_id)
        except RetriableError:
            metrics.PUBLISH_FAILURES.labels("unsubscribed").inc()
            raise
        metrics.UNSUBSCRIBES.labels(method).inc()
