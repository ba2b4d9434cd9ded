"""Handlers of consumed events: delivery times (for machine opens and ratios) and erasures."""

from datetime import datetime

from stepmail_common import event_types
from stepmail_common.events import CloudEvent
from stepmail_common.kafka import Handler
from stepmail_tracker.repository import Repository


async def delivery_sent(event: CloudEvent, repo: Repository) -> None:
    data = event.data
    await repo.record_sent(
        data["message_id"], data["contact_id"], datetime.fromisoformat(data["at"])
    )


async def contact_erased(event: CloudEvent, repo: Repository) -> None:
    """Forget the contact's opt-out state and delivery times."""
    await repo.erase_contact(event.data["contact_id"])


_HANDLERS = {
    event_types.DELIVERY_SENT: delivery_sent,
    event_types.CONTACT_ERASED: contact_erased,
}


def dispatcher(repo: Repository) -> Handler:
    """The handler of ``delivery-events`` and ``contact-events``; other types are skipped."""

    async def handle(event: CloudEvent) -> None:
        handler = _HANDLERS.get(event.type)
        if handler is not None:
            await handler(event, repo)

    return handle
