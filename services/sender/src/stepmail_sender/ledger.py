"""The delivery ledger: each state change commits together with its delivery event.

Events go to the ``outbox`` table in the transaction that changes the row; the relay
publishes them afterwards (at least once, with ids derived from message id, state and
attempt, so a republished event is the same event). A crash between the commit and the
publish delays the event; it never loses it.
"""

import asyncio
from datetime import datetime
from typing import Any

import asyncpg

from stepmail_common import event_types
from stepmail_common.events import CloudEvent, derived_id
from stepmail_common.outbox import OutboxEvent
from stepmail_common.outbox import add as add_to_outbox
from stepmail_sender import repository
from stepmail_sender.domain import Delivery, Parcel, Policy, RenderedMail

SOURCE = "urn:stepmail:sender"

_EVENT_TYPES = {
    "sending": event_types.DELIVERY_SENDING,
    "sent": event_types.DELIVERY_SENT,
    "failed": event_types.DELIVERY_FAILED,
    "ambiguous": event_types.DELIVERY_AMBIGUOUS,
}


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
        "at": at.isoformat().replace("+00:00", "Z"),
    }
    if delivery.state == "ambiguous" and delivery.policy is not None:
        data["policy"] = delivery.policy
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

    def __init__(self, pool: "asyncpg.Pool[asyncpg.Record]", events_topic: str) -> None:
        self._pool = pool
        self._topic = events_topic
        self.outbox_ready = asyncio.Event()

    async def _with_event(
        self, delivery: Delivery | None, conn: repository.Conn, at: datetime
    ) -> None:
        if delivery is not None:
            event = delivery_event(delivery, at)
            await add_to_outbox(conn, [OutboxEvent(self._topic, delivery.contact_id, event)])

    async def accept(self, mail: RenderedMail, at: datetime) -> bool:
        return await repository.insert_if_absent(self._pool, mail, at)

    async def claim(self, message_id: str, owner: int, at: datetime) -> Delivery | None:
        async with self._pool.acquire() as conn, conn.transaction():
            claimed = await repository.claim(conn, message_id, owner, at)
            await self._with_event(claimed, conn, at)
        self._wake_relay(claimed)
        return claimed

    async def finish(
        self,
        claimed: Delivery,
        state: str,
        smtp_code: int | None,
        smtp_response: str | None,
        at: datetime,
    ) -> Delivery | None:
        async with self._pool.acquire() as conn, conn.transaction():
            done = await repository.finish(conn, claimed, state, smtp_code, smtp_response, at)
            await self._with_event(done, conn, at)
        self._wake_relay(done)
        return done

    async def mark_ambiguous(
        self, stuck: Delivery, policy: Policy, smtp_response: str | None, at: datetime
    ) -> Delivery | None:
        async with self._pool.acquire() as conn, conn.transaction():
            marked = await repository.mark_ambiguous(conn, stuck, policy, smtp_response, at)
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
