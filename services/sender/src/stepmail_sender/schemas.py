"""The sender's HTTP API models."""

from datetime import datetime

from pydantic import BaseModel


class DeliveryOut(BaseModel):
    """A ledger row as the API shows it: states, attempts and the server's answer; no address."""

    message_id: str
    contact_id: str
    state: str
    attempt: int
    resend: bool
    policy: str | None
    smtp_code: int | None
    smtp_response: str | None
    created_at: datetime
    updated_at: datetime
    claimed_at: datetime | None
    finished_at: datetime | None
    next_attempt_at: datetime | None = None
    bounce: str | None = None
    dsn: str | None = None
    reason: str | None = None
    # The mail's preference-centre topic; reason ``unsubscribed_topic``: it was dropped.
    topic: str | None = None
