"""Feedback stops mail: opt-outs, complaints, bounces and erasures reach the ledger.

Each event is a valid CloudEvent of its published schema, handled by the sender's
feedback dispatcher on a real Postgres; the mails go to a real SMTP server, which shows
what was (not) handed over. Mails rendered (and consumed) before the feedback are
stopped too: suppression is looked up when a mail is claimed, not when it is rendered.
"""

from datetime import UTC, datetime
from typing import Any

import pytest

from stepmail_common import event_types
from stepmail_common.events import CloudEvent, validate
from stepmail_sender.domain import RenderedMail
from stepmail_sender.handlers import feedback_dispatcher
from stepmail_sender.ledger import Ledger
from tests.integration.sender.conftest import EVENTS_TOPIC, rendered_data

pytestmark = pytest.mark.integration

NOW = datetime(2026, 3, 23, 1, 0, tzinfo=UTC).isoformat()


def event(type_: str, **data: Any) -> CloudEvent:
    made = CloudEvent(
        type=type_, source="urn:stepmail:tracker", subject=data.get("contact_id", "x"), data=data
    )
    validate(made.to_dict())  # exactly what the tracker or ingest would publish
    return made


def mail(message_id: str, contact_id: str, rcpt: str, kind: str = "marketing") -> RenderedMail:
    data = rendered_data(message_id, rcpt_to=rcpt, contact_id=contact_id)
    data["mail_kind"] = kind
    return RenderedMail.from_data(data)


@pytest.fixture
def feedback(sender_pool):
    return feedback_dispatcher(Ledger(sender_pool, EVENTS_TOPIC))


async def states(deliverer, mails: list[RenderedMail]) -> dict[str, tuple[str, str | None]]:
    await deliverer.handle_many(mails)
    rows = {m.message_id: await deliverer._ledger.get(m.message_id) for m in mails}
    return {mid: (row.state, row.reason) for mid, row in rows.items()}


async def test_unsubscribe_stops_a_mail_rendered_before_it(make_deliverer, smtp_server, feedback):
    deliverer = await make_deliverer()
    before = mail("fb-unsub-1", "c-unsub", "hanako@example.jp")
    receipt = mail("fb-unsub-2", "c-unsub", "hanako@example.jp", kind="transactional")
    # Rendered and recorded in the ledger before the opt-out arrives.
    await deliverer._ledger.accept_many([before, receipt], datetime.now(UTC))
    await feedback(
        event(
            event_types.ENGAGEMENT_UNSUBSCRIBED,
            message_id="fb-earlier",
            contact_id="c-unsub",
            mail_kind="marketing",
            method="one-click",
            at=NOW,
        )
    )
    assert await states(deliverer, [before, receipt]) == {
        "fb-unsub-1": ("suppressed", "unsubscribed"),
        # An opt-out of marketing does not stop an order confirmation.
        "fb-unsub-2": ("sent", None),
    }
    assert smtp_server.count("fb-unsub-1") == 0
    assert smtp_server.count("fb-unsub-2") == 1


async def test_resubscribe_lifts_the_opt_out(make_deliverer, smtp_server, feedback):
    deliverer = await make_deliverer()
    common = {"contact_id": "c-resub", "mail_kind": "marketing", "at": NOW}
    await feedback(
        event(event_types.ENGAGEMENT_UNSUBSCRIBED, message_id="fb-r0", method="page", **common)
    )
    assert await states(deliverer, [mail("fb-resub-1", "c-resub", "jiro@example.jp")]) == {
        "fb-resub-1": ("suppressed", "unsubscribed")
    }
    await feedback(event(event_types.ENGAGEMENT_RESUBSCRIBED, method="page", **common))
    assert await states(deliverer, [mail("fb-resub-2", "c-resub", "jiro@example.jp")]) == {
        "fb-resub-2": ("sent", None)
    }
    assert smtp_server.count("fb-resub-2") == 1


async def test_a_complaint_suppresses_the_address_for_every_kind_and_contact(
    make_deliverer, smtp_server, feedback
):
    deliverer = await make_deliverer()
    await feedback(
        event(
            event_types.ENGAGEMENT_COMPLAINED,
            recipient="Saburo@Example.JP",
            source="fbl",
            at=NOW,
        )
    )
    mails = [
        mail("fb-cmp-1", "c-cmp", "saburo@example.jp"),
        # The same address under another contact id, and a transactional mail: stopped too.
        mail("fb-cmp-2", "c-other", "saburo@example.jp", kind="transactional"),
        mail("fb-cmp-3", "c-cmp2", "shiro@example.jp"),
    ]
    assert await states(deliverer, mails) == {
        "fb-cmp-1": ("suppressed", "complained"),
        "fb-cmp-2": ("suppressed", "complained"),
        "fb-cmp-3": ("sent", None),
    }
    assert [r.message_id for r in smtp_server.received] == ["fb-cmp-3"]


async def test_a_hard_bounce_suppresses_and_a_soft_one_does_not(
    make_deliverer, smtp_server, feedback
):
    deliverer = await make_deliverer()
    for address, bounce in (("gone@example.jp", "hard"), ("full@example.jp", "soft")):
        await feedback(
            event(
                event_types.ENGAGEMENT_BOUNCED,
                recipient=address,
                source="ses",
                bounce=bounce,
                dsn="5.1.1" if bounce == "hard" else "4.2.2",
                at=NOW,
            )
        )
    mails = [mail("fb-b-1", "c-b1", "gone@example.jp"), mail("fb-b-2", "c-b2", "full@example.jp")]
    assert await states(deliverer, mails) == {
        "fb-b-1": ("suppressed", "bounced"),
        "fb-b-2": ("sent", None),
    }


async def test_erasure_forgets_the_address_and_stops_pending_mail(
    make_deliverer, smtp_server, feedback, sender_pool
):
    deliverer = await make_deliverer()
    pending = mail("fb-erase-1", "c-erase", "goro@example.jp")
    await deliverer._ledger.accept_many([pending], datetime.now(UTC))
    await feedback(event(event_types.CONTACT_ERASED, contact_id="c-erase", requested_at=NOW))
    row = await sender_pool.fetchrow(
        "SELECT mail, rcpt_hash FROM deliveries WHERE message_id = 'fb-erase-1'"
    )
    assert (row["mail"], row["rcpt_hash"]) == (None, None), "nothing of the address is kept"
    later = mail("fb-erase-2", "c-erase", "goro@example.jp", kind="transactional")
    assert await states(deliverer, [pending, later]) == {
        "fb-erase-1": ("suppressed", "erased"),
        "fb-erase-2": ("suppressed", "erased"),
    }
    assert smtp_server.received == []


async def test_other_engagement_events_change_nothing(make_deliverer, smtp_server, feedback):
    deliverer = await make_deliverer()
    await feedback(
        event(
            event_types.ENGAGEMENT_OPENED,
            message_id="fb-open-0",
            contact_id="c-open",
            scenario={"id": "welcome", "version": 1},
            step={"id": "day0", "index": 0},
            machine=False,
            at=NOW,
        )
    )
    assert await states(deliverer, [mail("fb-open-1", "c-open", "rokuro@example.jp")]) == {
        "fb-open-1": ("sent", None)
    }
