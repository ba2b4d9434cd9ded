"""Handlers of consumed events: delivery times (for machine opens and ratios) and erasures.

Delivery events come in batches, one statement per batch; erasures are rare and come one
at a time on their own consumer.
"""

from collections.abc import Sequence
from datetime import datetime

from stepmail_common import event_types
from stepmail_common.events import CloudEvent
from stepmail_common.kafka import BatchHandler, Failures, Handler
from stepmail_tracker.repository import Repository, Sent


def sent_delivery(event: CloudEvent) -> Sent | None:
    """A ``delivery.sent`` event's facts; ``None`` for the other delivery events."""
    if event.type != event_types.DELIVERY_SENT:
        return None
    data = event.data
    return Sent(data["message_id"], data["contact_id"], datetime.fromisoformat(data["at"]))


def record_deliveries(repo: Repository) -> BatchHandler[Sent | None]:
    """The batch handler of ``delivery-events``: the batch's sent mails in one statement."""

    async def handle(batch: Sequence[Sent | None]) -> Failures | None:
        await repo.record_sent([sent for sent in batch if sent is not None])
        return None

    return handle


def contact_erased(repo: Repository) -> Handler:
    """The handler of ``contact-events``: forget an erased contact's opt-outs and delivery
    times; other types are skipped."""

    async def handle(event: CloudEvent) -> None:
        if event.type == event_types.CONTACT_ERASED:
            await repo.erase_contact(event.data["contact_id"])

    return handle
