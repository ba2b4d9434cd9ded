"""Hand-written fakes of the ledger and the SMTP transport, with the real semantics."""

import dataclasses
from datetime import UTC, datetime

from stepmail_sender.domain import Delivery, Parcel, RenderedMail
from stepmail_sender.ledger import finished_row, sending_row
from stepmail_sender.smtp import Reply, Verdict, reply_of


class FakeLedger:
    """The ledger's conditional transitions over a dict; events collected in order."""

    def __init__(self) -> None:
        self.rows: dict[str, Delivery] = {}
        self.stored: dict[str, Parcel] = {}
        self.events: list[Delivery] = []
        self.live_owners: set[int] = set()

    async def accept(self, mail: RenderedMail, at: datetime) -> bool:
        if mail.message_id in self.rows:
            return False
        # A new row as the ledger stores it, before any claim.
        self.rows[mail.message_id] = dataclasses.replace(
            sending_row(mail, 0, at), state="accepted", attempt=0, owner=None, claimed_at=None
        )
        return True

    def _set(self, row: Delivery, **changes) -> Delivery:
        return self._put(dataclasses.replace(row, **changes))

    def _put(self, new: Delivery) -> Delivery:
        self.rows[new.message_id] = new
        self.events.append(new)
        return new

    async def accept_many(self, mails, at: datetime) -> int:
        return sum([await self.accept(m, at) for m in mails])

    async def claim_new(self, mails, owner: int, at: datetime, traces=None) -> list[Delivery]:
        new = [m for m in mails if await self.accept(m, at)]
        return await self.claim_many([m.message_id for m in new], owner, at, traces)

    async def claim_many(
        self, message_ids, owner: int, at: datetime, traces=None
    ) -> list[Delivery]:
        claimed = [await self.claim(m, owner, at) for m in message_ids]
        return [c for c in claimed if c is not None]

    async def finish_many(self, done, at: datetime, traces=None, parcels=None) -> list[Delivery]:
        finished = [await self.finish(c, o, at, (parcels or {}).get(c.message_id)) for c, o in done]
        return [f for f in finished if f is not None]

    async def parcels(self, message_ids) -> dict[str, Parcel]:
        return {m: self.stored[m] for m in message_ids if m in self.stored}

    async def due_deferred(self, at: datetime, limit: int) -> list[str]:
        return [
            r.message_id
            for r in self.rows.values()
            if r.state == "deferred" and r.next_attempt_at and r.next_attempt_at <= at
        ][:limit]

    async def count_deferred(self) -> int:
        return sum(1 for r in self.rows.values() if r.state == "deferred")

    async def claim(self, message_id: str, owner: int, at: datetime) -> Delivery | None:
        row = self.rows[message_id]
        due = row.state == "deferred" and row.next_attempt_at and row.next_attempt_at <= at
        if due or row.state == "accepted" or (row.state == "ambiguous" and row.policy == "resend"):
            return self._set(
                row,
                state="sending",
                owner=owner,
                attempt=row.attempt + 1,
                resend=row.state == "ambiguous",
                claimed_at=at,
            )
        return None

    def _holds(self, claimed: Delivery) -> Delivery | None:
        row = self.rows[claimed.message_id]
        same = (row.state, row.owner, row.attempt) == ("sending", claimed.owner, claimed.attempt)
        return row if same else None

    async def finish(self, claimed, outcome, at, parcel=None) -> Delivery | None:
        row = self._holds(claimed)
        if row is None:
            return None
        if outcome.state != "deferred":
            self.stored.pop(claimed.message_id, None)
        elif parcel is not None:
            self.stored.setdefault(claimed.message_id, parcel)
        return self._put(finished_row(row, outcome, at))

    async def mark_ambiguous(self, stuck, policy, smtp_response, at, parcel=None):
        row = self._holds(stuck)
        if row is None:
            return None
        if policy == "hold":
            self.stored.pop(stuck.message_id, None)
        elif parcel is not None:
            self.stored.setdefault(stuck.message_id, parcel)
        return self._set(row, state="ambiguous", policy=policy, smtp_response=smtp_response)

    async def get(self, message_id: str) -> Delivery | None:
        return self.rows.get(message_id)

    async def parcel(self, message_id: str) -> Parcel | None:
        return self.stored.get(message_id)

    async def orphans(self, me: int) -> list[Delivery]:
        return [
            r
            for r in self.rows.values()
            if r.state == "sending" and (r.owner == me or r.owner not in self.live_owners)
        ]

    async def owner_alive(self, owner: int) -> bool:
        return owner in self.live_owners


class FakeTransport:
    """Answers from a script of replies (then 250), remembering what was sent."""

    def __init__(self, *script: Reply) -> None:
        self.script = list(script)
        self.sent: list[tuple[str, str, bytes]] = []

    async def send(self, mail_from: str, rcpt_to: str, message: bytes) -> Reply:
        self.sent.append((mail_from, rcpt_to, message))
        if self.script:
            return self.script.pop(0)
        return reply_of(250, "2.0.0 Ok: queued")


def connection_lost() -> Reply:
    return Reply(Verdict.CONNECTION, None, "SMTPServerDisconnected")


def data_broken() -> Reply:
    return Reply(Verdict.UNKNOWN, None, "SMTPServerDisconnected: during DATA")


def a_mail(message_id: str = "msg-1", contact_id: str = "contact-1") -> RenderedMail:
    return RenderedMail.from_data(
        {
            "message_id": message_id,
            "enrollment_id": "enr-1",
            "scenario": {"id": "welcome", "version": 1},
            "step": {"id": "day0", "index": 0},
            "contact_id": contact_id,
            "mail_kind": "marketing",
            "envelope": {"mail_from": "news@example.com", "rcpt_to": "someone@example.org"},
            "mime": "From: news@example.com\r\nTo: someone@example.org\r\n"
            f"Subject: hi\r\nX-Stepmail-Message-Id: {message_id}\r\n\r\nHello\r\n",
            "rendered_at": datetime.now(UTC).isoformat(),
        }
    )
