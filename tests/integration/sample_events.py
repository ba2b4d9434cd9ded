"""Events the integration tests publish when any valid event will do."""

from datetime import UTC, datetime

from stepmail_common import event_types
from stepmail_common.events import CloudEvent


def erased(contact_id: str, requested_at: str | None = None) -> CloudEvent:
    """A ``contact.erased`` event; ``requested_at`` defaults to now."""
    return CloudEvent(
        type=event_types.CONTACT_ERASED,
        source="urn:stepmail:test",
        subject=contact_id,
        data={
            "contact_id": contact_id,
            "requested_at": requested_at or datetime.now(UTC).isoformat(),
        },
    )
