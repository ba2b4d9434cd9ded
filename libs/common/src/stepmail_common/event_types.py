"""The CloudEvent types stepmail publishes, one JSON Schema each under ``schemas/``.

A change that breaks a schema is a new type (``...v2``): analysts read these topics.
"""

from typing import Final

# contact-events
EVENT_RECEIVED: Final = "stepmail.event.received.v1"
CONTACT_UPDATED: Final = "stepmail.contact.updated.v1"
CONTACT_ERASED: Final = "stepmail.contact.erased.v1"
# steps-due
STEP_DUE: Final = "stepmail.step.due.v1"
# mail-rendered
MAIL_RENDERED: Final = "stepmail.mail.rendered.v1"
# delivery-events: one type per ledger transition
DELIVERY_SENDING: Final = "stepmail.delivery.sending.v1"
DELIVERY_SENT: Final = "stepmail.delivery.sent.v1"
DELIVERY_FAILED: Final = "stepmail.delivery.failed.v1"
DELIVERY_AMBIGUOUS: Final = "stepmail.delivery.ambiguous.v1"
DELIVERY_DEFERRED: Final = "stepmail.delivery.deferred.v1"
DELIVERY_SUPPRESSED: Final = "stepmail.delivery.suppressed.v1"
# engagement-events
ENGAGEMENT_CLICKED: Final = "stepmail.engagement.clicked.v1"
ENGAGEMENT_UNSUBSCRIBED: Final = "stepmail.engagement.unsubscribed.v1"
ENGAGEMENT_OPENED: Final = "stepmail.engagement.opened.v1"
ENGAGEMENT_RESUBSCRIBED: Final = "stepmail.engagement.resubscribed.v1"
ENGAGEMENT_COMPLAINED: Final = "stepmail.engagement.complained.v1"
ENGAGEMENT_BOUNCED: Final = "stepmail.engagement.bounced.v1"

ALL: Final = (
    EVENT_RECEIVED,
    CONTACT_UPDATED,
    CONTACT_ERASED,
    STEP_DUE,
    MAIL_RENDERED,
    DELIVERY_SENDING,
    DELIVERY_SENT,
    DELIVERY_FAILED,
    DELIVERY_AMBIGUOUS,
    DELIVERY_DEFERRED,
    DELIVERY_SUPPRESSED,
    ENGAGEMENT_CLICKED,
    ENGAGEMENT_UNSUBSCRIBED,
    ENGAGEMENT_OPENED,
    ENGAGEMENT_RESUBSCRIBED,
    ENGAGEMENT_COMPLAINED,
    ENGAGEMENT_BOUNCED,
)
