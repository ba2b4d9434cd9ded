"""Handlers of consumed events: delivery times (for machine opens and ratios) and erasures.

Both topics come in batches: a batch's sent mails are stored in one statement, then its
erasures applied, so an erasure is never undone by a delivery of the same batch.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from stepmail_common import event_types
from stepmail_common.events import CloudEvent
from stepmail_common.kafka import BatchHandler, Failures
from stepmail_tracker.repository import Repository, Sent


@dataclass(frozen=True, slots=True)
class Erased:
    """A contact to forget."""

    contact_id: str


Consumed = Sent | Erased | None
ACTS_ON = frozenset({event_types.DELIVERY_SENT, event_types.CONTACT_ERASED})
"""The event types the tracker keeps something of; its consumer passes over the others."""


def consumed(event: CloudEvent) -> Consumed:
    """What the tracker keeps of an event: a sent mail, an erasure, or nothing."""
    data = event.data
    if event.type == event_types.DELIVERY_SENT:
        return Sent(data["message_id"], data["contact_id"], datetime.fromisoformat(data["at"]))
    if event.type == event_types.CONTACT_ERASED:
        return Erased(data["contact_id"])
    return None


def handler(repo: Repository) -> BatchHandler[Consumed]:
    """The batch handler of ``delivery-events`` and ``contact-events``."""

    async def handle(batch: Sequence[Consumed]) -> Failures | None:
        await repo.record_sent([item for item in batch if isinstance(item, Sent)])
        for item in batch:
            if isinstance(item, Erased):
                await repo.erase_contact(item.contact_id)
        return None

    return handle
