"""The delivery ledger: each state change commits together with its delivery event.

Events go to the ``outbox`` table in the transaction that changes the row; the relay
publishes them afterwards (at least once, with ids derived from message id, state and
attempt, so a republished event is the same event). A crash between the commit and the
publish delays the event; it never loses it.
"""

import asyncio
import dataclasses
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import asyncpg

from stepmail_common import event_types, telemetry
from stepmail_common.events import CloudEvent, derived_id
from stepmail_common.outbox import StoredEvent, add_documents
from stepmail_sender import repository
from stepmail_sender.domain import Delivery, Outcome, Parcel, Policy, RenderedMail

SOURCE = "urn:stepmail:sender"

_EVENT_TYPES = {
    "sending": event_types.DELIVERY_SENDING,
    "sent": event_types.DELIVERY_SENT,
    "failed": event_types.DELIVERY_FAILED,
    "ambiguous": event_types.DELIVERY_AMBIGUOUS,
    "deferred": event_types.DELIVERY_DEFERRED,
    "suppressed": event_types.DELIVERY_SUPPRESSED,
}


def finished_row(claimed: Delivery, outcome: Outcome, at: datetime) -> Delivery:
    """The row of a claimed attempt once its outcome is recorded."""
    return dataclasses.replace(
        claimed,
        state=outcome.state,
        smtp_code=outcome.code,
        smtp_response=outcome.text,
        bounce=outcome.bounce,
        dsn=outcome.dsn,
        next_attempt_at=outcome.next_attempt_at,
        updated_at=at,
        finished_at=None if outcome.state == "deferred" else at,
    )


def sending_row(mail: RenderedMail, owner: int, at: datetime) -> Delivery:
    """The row of a new mail recorded claimed by ``owner``, as ``claim_sending`` stores it."""
    return Delivery(
        message_id=mail.message_id,
        contact_id=mail.contact_id,
        scenario_id=mail.scenario_id,
        scenario_version=mail.scenario_version,
        step_id=mail.step_id,
        step_index=mail.step_index,
        state="sending",
        attempt=1,
        owner=owner,
        resend=False,
        policy=None,
        smtp_code=None,
        smtp_response=None,
        created_at=at,
        updated_at=at,
        claimed_at=at,
        finished_at=None,
        topic=mail.topic,
    )


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def address_hash(key: bytes, address: str) -> str:
    """The keyed hash under which an address is suppressed (the address itself is not kept)."""
    return hmac.new(key, address.strip().lower().encode(), hashlib.sha256).hexdigest()


def delivery_event(delivery: Delivery, at: datetime) -> CloudEvent:
    """The CloudEvent of the row's current state; its id is stable across republishing."""
    data: dict[str, Any] = {
        "message_id": delivery.message_id,
        "contact_id": delivery.contact_id,
        "scenario": {"id": delivery.scenario_id, "version": delivery.scenario_version},
        "step": {"id": delivery.step_id, "index": delivery.step_index},
        "state": delivery.state,
        "attempt": delivery.attempt,
        "smtp_code": delivery.smtp_code,
        "smtp_response": delivery.smtp_response,
        "at": _iso(at),
    }
    if delivery.state == "ambiguous" and delivery.policy is not None:
        data["policy"] = delivery.policy
    elif delivery.state == "failed":
        data["bounce"] = delivery.bounce
        data["dsn"] = delivery.dsn
    elif delivery.state == "deferred" and delivery.next_attempt_at is not None:
        data["next_attempt_at"] = _iso(delivery.next_attempt_at)
    elif delivery.state == "suppressed":
        data.update(delivery.suppression())
    return CloudEvent(
        type=_EVENT_TYPES[delivery.state],
        source=SOURCE,
        subject=delivery.contact_id,
        data=data,
        id=derived_id(delivery.message_id, delivery.state, str(delivery.attempt)),
        time=at,
    )


class Ledger:
    """Transactions over the ledger rows and their outbox events."""

    def __init__(
        self,
        pool: "asyncpg.Pool[asyncpg.Record]",
        events_topic: str,
        address_key: bytes = b"stepmail-dev-suppression-key",
    ) -> None:
        self._pool = pool
        self._topic = events_topic
        self._key = address_key
        self.outbox_ready = asyncio.Event()

    async def _with_event(
        self, delivery: Delivery | None, conn: repository.Conn, at: datetime
    ) -> None:
        if delivery is not None:
            await self._with_events([delivery], conn, at)

    async def _with_events(
        self,
        deliveries: Sequence[Delivery],
        conn: repository.Conn,
        at: datetime,
        traces: Mapping[str, dict[str, str]] | None = None,
    ) -> None:
        """Outbox events of ``deliveries``, each in its mail's trace when ``traces`` has it."""
        if deliveries:
            await add_documents(conn, self._topic, self._outbox_rows(deliveries, at, traces))

    @staticmethod
    def _outbox_rows(
        deliveries: Sequence[Delivery],
        at: datetime,
        traces: Mapping[str, dict[str, str]] | None,
    ) -> list[StoredEvent]:
        """Each row's delivery event, with the mail's trace or else the current one.

        The events are not checked against their schemas, as ``outbox.add`` would:
        every field comes from a validated ``mail-rendered`` event or from the sender's
        own bounded values, and a property test holds ``delivery_event`` to the schemas
        for all of them (``test_delivery_events_match_schema``).
        """
        traces = traces or {}
        current = telemetry.trace_carrier() or None
        return [
            (d.contact_id, delivery_event(d, at).to_dict(), traces.get(d.message_id) or current)
            for d in deliveries
        ]

    def address_hash(self, address: str) -> str:
        return address_hash(self._key, address)

    async def accept(self, mail: RenderedMail, at: datetime) -> bool:
        return bool(await self.accept_many([mail], at))

    async def accept_many(self, mails: Sequence[RenderedMail], at: datetime) -> int:
        hashes = [self.address_hash(m.parcel.envelope.rcpt_to) for m in mails]
        return await repository.insert_many(self._pool, mails, hashes, at)

    async def claim_new(
        self,
        mails: Sequence[RenderedMail],
        owner: int,
        at: datetime,
        traces: Mapping[str, dict[str, str]] | None = None,
    ) -> list[Delivery]:
        """Record new mails already claimed by ``owner`` (``sending``, or ``suppressed``)
        with their events; mails whose message id the ledger holds are left out.

        Most go in one statement, their rows and events made here as it will store them;
        the rest (suppressed recipients, and ids the ledger holds) take a transaction.
        """
        hashes = [self.address_hash(m.parcel.envelope.rcpt_to) for m in mails]
        sending = [sending_row(m, owner, at) for m in mails]
        recorded = await repository.claim_sending(
            self._pool,
            mails,
            hashes,
            owner,
            at,
            self._topic,
            self._outbox_rows(sending, at, traces),
        )
        claimed = [d for d in sending if d.message_id in recorded]
        rest = [(m, h) for m, h in zip(mails, hashes, strict=True) if m.message_id not in recorded]
        if rest:
            async with self._pool.acquire() as conn, conn.transaction():
                others = await repository.claim_new(
                    conn, [m for m, _ in rest], [h for _, h in rest], owner, at
                )
                await self._with_events(others, conn, at, traces)
            claimed += others
        if claimed:
            self.outbox_ready.set()
        return claimed

    async def claim_many(
        self,
        message_ids: Sequence[str],
        owner: int,
        at: datetime,
        traces: Mapping[str, dict[str, str]] | None = None,
    ) -> list[Delivery]:
        async with self._pool.acquire() as conn, conn.transaction():
            claimed = await repository.claim_many(conn, message_ids, owner, at)
            await self._with_events(claimed, conn, at, traces)
        if claimed:
            self.outbox_ready.set()
        return claimed

    async def finish_many(
        self,
        done: Sequence[tuple[Delivery, Outcome]],
        at: datetime,
        traces: Mapping[str, dict[str, str]] | None = None,
        parcels: Mapping[str, Parcel] | None = None,
    ) -> list[Delivery]:
        """Record outcomes with their events; hard bounces suppress the address with them.

        ``parcels`` are the mails in hand: a deferred one is stored to be sent later. The
        rows are written as the statement will leave them, so their events are made
        before it runs; a claim lost meanwhile records nothing and is left out.
        """
        if not done:
            return []
        parcels = parcels or {}
        finished = [finished_row(claimed, outcome, at) for claimed, outcome in done]
        events = self._outbox_rows(finished, at, traces)
        recorded = await repository.finish_many(
            self._pool,
            [
                (
                    claimed,
                    outcome,
                    parcels.get(claimed.message_id) if outcome.state == "deferred" else None,
                    event,
                    trace,
                )
                for (claimed, outcome), (_, event, trace) in zip(done, events, strict=True)
            ],
            done[0][0].owner or 0,
            at,
            self._topic,
        )
        if recorded:
            self.outbox_ready.set()
        return [d for d in finished if d.message_id in recorded]

    async def suppress_address(self, address: str, mail_kind: str, reason: str) -> bool:
        return await repository.suppress(
            self._pool, "address", self.address_hash(address), mail_kind, reason
        )

    async def suppress_contact(self, contact_id: str, mail_kind: str, reason: str) -> bool:
        return await repository.suppress(self._pool, "contact", contact_id, mail_kind, reason)

    async def opt_out_topics(self, contact_id: str, mail_kind: str, topics: Sequence[str]) -> bool:
        """The contact's opted-out topics of that kind are now ``topics``; ``True`` if changed."""
        async with self._pool.acquire() as conn, conn.transaction():
            return await repository.set_topic_opt_outs(conn, contact_id, mail_kind, topics)

    async def resubscribe_contact(self, contact_id: str, mail_kind: str) -> None:
        """Lift the contact's opt-out of the kind and of every topic of it."""
        async with self._pool.acquire() as conn, conn.transaction():
            await repository.unsuppress(conn, "contact", contact_id, mail_kind, "unsubscribed")
            await repository.set_topic_opt_outs(conn, contact_id, mail_kind, ())

    async def erase_contact(self, contact_id: str) -> int:
        """Suppress the contact for good and forget the addresses and MIME held for it."""
        async with self._pool.acquire() as conn, conn.transaction():
            await repository.suppress(conn, "contact", contact_id, "*", "erased")
            return await repository.erase_contact(conn, contact_id)

    async def parcels(self, message_ids: Sequence[str]) -> dict[str, Parcel]:
        return await repository.parcels(self._pool, message_ids)

    async def due_deferred(self, at: datetime, limit: int) -> list[str]:
        return await repository.due_deferred(self._pool, at, limit)

    async def count_deferred(self) -> int:
        return await repository.count_deferred(self._pool)

    async def claim(self, message_id: str, owner: int, at: datetime) -> Delivery | None:
        async with self._pool.acquire() as conn, conn.transaction():
            claimed = await repository.claim(conn, message_id, owner, at)
            await self._with_event(claimed, conn, at)
        self._wake_relay(claimed)
        return claimed

    async def finish(
        self, claimed: Delivery, outcome: Outcome, at: datetime, parcel: Parcel | None = None
    ) -> Delivery | None:
        parcels = {claimed.message_id: parcel} if parcel is not None else None
        done = await self.finish_many([(claimed, outcome)], at, parcels=parcels)
        return done[0] if done else None

    async def mark_ambiguous(
        self,
        stuck: Delivery,
        policy: Policy,
        smtp_response: str | None,
        at: datetime,
        parcel: Parcel | None = None,
    ) -> Delivery | None:
        async with self._pool.acquire() as conn, conn.transaction():
            marked = await repository.mark_ambiguous(conn, stuck, policy, smtp_response, at, parcel)
            await self._with_event(marked, conn, at)
        self._wake_relay(marked)
        return marked

    async def get(self, message_id: str) -> Delivery | None:
        return await repository.get(self._pool, message_id)

    async def parcel(self, message_id: str) -> Parcel | None:
        return await repository.parcel(self._pool, message_id)

    async def orphans(self, me: int) -> list[Delivery]:
        return await repository.orphans(self._pool, me)

    async def owner_alive(self, owner: int) -> bool:
        return await repository.owner_alive(self._pool, owner)

    def _wake_relay(self, changed: Delivery | None) -> None:
        if changed is not None:
            self.outbox_ready.set()
