"""The CloudEvent types stepmail publishes, one JSON Schema each under ``schemas/``.

A change that breaks a schema is a new type (``...v2``): analysts read these topics.
"""

from typing import Final

# contact-events
EVENT_RECEIVED: Final = "stepmail.event.received.v1"
# steps-due
STEP_DUE: Final = "stepmail.step.due.v1"
# mail-rendered
MAIL_RENDERED: Final = "stepmail.mail.rendered.v1"
# delivery-events: one type per ledger transition
DELIVERY_SENDING: Final = "stepmail.delivery.sending.v1"
DELIVERY_SENT: Final = "stepmail.delivery.sent.v1"
DELIVERY_FAILED: Final = "stepmail.delivery.failed.v1"
DELIVERY_AMBIGUOUS: Final = "stepmail.delivery.ambiguous.v1"
# engagement-events
ENGAGEMENT_CLICKED: Final = "stepmail.engagement.clicked.v1"
ENGAGEMENT_UNSUBSCRIBED: Final = "stepmail.engagement.unsubscribed.v1"

ALL: Final = (
    EVENT_RECEIVED,
    STEP_DUE,
    MAIL_RENDERED,
    DELIVERY_SENDING,
    DELIVERY_SENT,
    DELIVERY_FAILED,
    DELIVERY_AMBIGUOUS,
    ENGAGEMENT_CLICKED,
    ENGAGEMENT_UNSUBSCRIBED,
)
