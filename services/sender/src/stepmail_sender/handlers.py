"""Handlers of consumed events: one function per event type, dependencies as arguments."""

from stepmail_common import event_types
from stepmail_common.errors import PermanentError
from stepmail_common.events import CloudEvent
from stepmail_common.kafka import Handler
from stepmail_sender.delivery import Deliverer
from stepmail_sender.domain import RenderedMail


async def mail_rendered(event: CloudEvent, deliverer: Deliverer) -> None:
    """Deliver the mail; returns (and lets the offset be committed) once its fate is recorded."""
    await deliverer.handle(RenderedMail.from_data(event.data))


def dispatcher(deliverer: Deliverer) -> Handler:
    """The consumer's handler for ``mail-rendered``."""

    async def handle(event: CloudEvent) -> None:
        if event.type != event_types.MAIL_RENDERED:
            raise PermanentError(f"unexpected event type {event.type!r} on mail-rendered")
        await mail_rendered(event, deliverer)

    return handle
