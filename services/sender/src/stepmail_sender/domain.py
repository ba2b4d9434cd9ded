"""The sender's data: a rendered mail as it arrives, and a ledger row."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from stepmail_common.errors import PermanentError

State = Literal["accepted", "sending", "sent", "failed", "ambiguous", "deferred", "suppressed"]
Policy = Literal["hold", "resend"]
# The ledger's (and the API's) reason for a mail whose preference-centre topic the contact
# opted out of; delivery events say reason ``unsubscribed`` with the ``topic``.
TOPIC_OPT_OUT = "unsubscribed_topic"


@dataclass(frozen=True, slots=True)
class Envelope:
    mail_from: str
    rcpt_to: str


@dataclass(frozen=True, slots=True)
class Parcel:
    """What is needed to hand a mail to the server: the envelope and the whole message."""

    envelope: Envelope
    mime: str

    @property
    def rcpt_domain(self) -> str:
        """The recipient's domain in lower case (what throttles are keyed by)."""
        return self.envelope.rcpt_to.rpartition("@")[2].strip().rstrip(">").lower()

    def message_bytes(self) -> bytes:
        """The message as sent; the renderer promises 7-bit text with CRLF line ends."""
        try:
            raw = self.mime.encode("ascii")
        except UnicodeEncodeError as exc:
            raise PermanentError("mime is not 7-bit ASCII") from exc
        return raw if raw.endswith(b"\r\n") else raw + b"\r\n"

    def to_json(self) -> dict[str, Any]:
        return {
            "mail_from": self.envelope.mail_from,
            "rcpt_to": self.envelope.rcpt_to,
            "mime": self.mime,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "Parcel":
        return cls(Envelope(doc["mail_from"], doc["rcpt_to"]), doc["mime"])


@dataclass(frozen=True, slots=True)
class RenderedMail:
    """The ``data`` of a ``stepmail.mail.rendered.v1`` event."""

    message_id: str
    contact_id: str
    enrollment_id: str
    scenario_id: str
    scenario_version: int
    step_id: str
    step_index: int
    mail_kind: str
    parcel: Parcel
    # The consumed record's trace (``traceparent``), carried on to the handover and to the
    # delivery events of this mail.
    trace: dict[str, str] | None = None
    # The preference-centre topic of the mail, if its step has one.
    topic: str | None = None

    @classmethod
    def from_data(cls, data: dict[str, Any], trace: dict[str, str] | None = None) -> "RenderedMail":
        """Build from already schema-validated event data."""
        return cls(
            message_id=data["message_id"],
            contact_id=data["contact_id"],
            enrollment_id=data["enrollment_id"],
            scenario_id=data["scenario"]["id"],
            scenario_version=data["scenario"]["version"],
            step_id=data["step"]["id"],
            step_index=data["step"]["index"],
            mail_kind=data["mail_kind"],
            parcel=Parcel(
                Envelope(data["envelope"]["mail_from"], data["envelope"]["rcpt_to"]),
                data["mime"],
            ),
            trace=trace,
            topic=data.get("topic"),
        )


@dataclass(frozen=True, slots=True)
class Delivery:
    """One ledger row (without the parcel it may still hold)."""

    message_id: str
    contact_id: str
    scenario_id: str
    scenario_version: int
    step_id: str
    step_index: int
    state: State
    attempt: int
    owner: int | None
    resend: bool
    policy: Policy | None
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
    topic: str | None = None

    def suppression(self) -> dict[str, str]:
        """Why a suppressed mail was not sent, as its delivery event says it."""
        if self.reason == TOPIC_OPT_OUT and self.topic is not None:
            return {"reason": "unsubscribed", "topic": self.topic}
        return {"reason": self.reason} if self.reason is not None else {}

    def public(self) -> dict[str, Any]:
        """The row as the HTTP API shows it: no address, no owner key."""
        return {
            "message_id": self.message_id,
            "contact_id": self.contact_id,
            "state": self.state,
            "attempt": self.attempt,
            "resend": self.resend,
            "policy": self.policy,
            "smtp_code": self.smtp_code,
            "smtp_response": self.smtp_response,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "claimed_at": self.claimed_at,
            "finished_at": self.finished_at,
            "next_attempt_at": self.next_attempt_at,
            "bounce": self.bounce,
            "dsn": self.dsn,
            "reason": self.reason,
            "topic": self.topic,
        }


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt ends in, as the ledger records it."""

    state: Literal["sent", "failed", "deferred"]
    code: int | None
    text: str | None
    bounce: Literal["hard", "soft"] | None = None
    dsn: str | None = None
    next_attempt_at: datetime | None = None
