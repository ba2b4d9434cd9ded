"""Handlers of consumed feedback: one function per event type, dependencies as arguments.

Rendered mails are consumed in batches (``stepmail_common.kafka.BatchConsumer``), each
event made a ``RenderedMail`` by ``rendered_mail`` and the batch handed to
``Deliverer.handle_many``; the other handlers take the events that stop mail: opt-outs,
complaints and bounces from ``engagement-events`` and erasures from ``contact-events``.
"""

import logging

from stepmail_common import event_types, telemetry
from stepmail_common.errors import PermanentError
from stepmail_common.events import CloudEvent
from stepmail_common.kafka import Handler
from stepmail_sender import metrics
from stepmail_sender.domain import TOPIC_OPT_OUT, RenderedMail
from stepmail_sender.ledger import Ledger

log = logging.getLogger(__name__)


def rendered_mail(event: CloudEvent) -> RenderedMail:
    """A ``mail-rendered`` event as a mail; ``PermanentError`` (dead-lettered) says why not.

    Runs inside the record's ``process`` span: the mail keeps that trace.
    """
    if event.type != event_types.MAIL_RENDERED:
        raise PermanentError(f"unexpected event type {event.type!r} on mail-rendered")
    try:
        return RenderedMail.from_data(event.data, telemetry.trace_carrier() or None)
    except (KeyError, TypeError) as exc:
        raise PermanentError(f"rendered mail lacks {exc}") from exc


async def unsubscribed(event: CloudEvent, ledger: Ledger) -> None:
    """The contact opted out of a kind of mail: no more of that kind, whatever the address.

    With ``topics`` (the preference centre), only mails of those topics stop; the list is
    the whole of what the contact has dropped, so it replaces the one recorded before.
    A topic choice never lifts an opt-out of the whole kind: only a re-subscribe does.
    """
    data = event.data
    if "topics" in data:
        if await ledger.opt_out_topics(data["contact_id"], data["mail_kind"], data["topics"]):
            metrics.SUPPRESSIONS_RECORDED.labels(TOPIC_OPT_OUT).inc()
    elif await ledger.suppress_contact(data["contact_id"], data["mail_kind"], "unsubscribed"):
        metrics.SUPPRESSIONS_RECORDED.labels("unsubscribed").inc()


async def resubscribed(event: CloudEvent, ledger: Ledger) -> None:
    data = event.data
    await ledger.resubscribe_contact(data["contact_id"], data["mail_kind"])


async def complained(event: CloudEvent, ledger: Ledger) -> None:
    """A spam complaint suppresses the address for every kind of mail."""
    if await ledger.suppress_address(event.data["recipient"], "*", "complained"):
        metrics.SUPPRESSIONS_RECORDED.labels("complained").inc()


async def bounced(event: CloudEvent, ledger: Ledger) -> None:
    """A hard bounce reported by the ESP suppresses the address; a soft one does not."""
    if event.data.get("bounce") == "hard" and await ledger.suppress_address(
        event.data["recipient"], "*", "bounced"
    ):
        metrics.SUPPRESSIONS_RECORDED.labels("bounced").inc()


async def contact_erased(event: CloudEvent, ledger: Ledger) -> None:
    """Forget the contact's addresses and mails in the ledger; never send to them again."""
    forgotten = await ledger.erase_contact(event.data["contact_id"])
    metrics.SUPPRESSIONS_RECORDED.labels("erased").inc()
    log.info("contact erased from the ledger", extra={"rows": forgotten})


_HANDLERS = {
    event_types.ENGAGEMENT_UNSUBSCRIBED: unsubscribed,
    event_types.ENGAGEMENT_RESUBSCRIBED: resubscribed,
    event_types.ENGAGEMENT_COMPLAINED: complained,
    event_types.ENGAGEMENT_BOUNCED: bounced,
    event_types.CONTACT_ERASED: contact_erased,
}
FEEDBACK_TYPES = frozenset(_HANDLERS)
"""The feedback the sender acts on; its consumer passes over the other types."""


def feedback_dispatcher(ledger: Ledger) -> Handler:
    """The handler of ``engagement-events`` and ``contact-events``; other types are skipped."""

    async def handle(event: CloudEvent) -> None:
        handler = _HANDLERS.get(event.type)
        if handler is not None:
            await handler(event, ledger)

    return handle
