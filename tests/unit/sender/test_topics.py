"""How a topic opt-out reads in a suppressed mail's delivery event."""

from datetime import UTC, datetime

import pytest

from stepmail_common import event_types
from stepmail_common.events import CloudEvent
from stepmail_sender.domain import TOPIC_OPT_OUT, Delivery, RenderedMail
from stepmail_sender.ledger import delivery_event
from tests.integration.sender.conftest import rendered_data

AT = datetime(2026, 3, 23, 1, 0, tzinfo=UTC)


def suppressed(reason: str | None, topic: str | None) -> Delivery:
    return Delivery(
        message_id="m-1",
        contact_id="c-1",
        scenario_id="news",
        scenario_version=1,
        step_id="issue",
        step_index=0,
        state="suppressed",
        attempt=1,
        owner=7,
        resend=False,
        policy=None,
        smtp_code=None,
        smtp_response=None,
        created_at=AT,
        updated_at=AT,
        claimed_at=AT,
        finished_at=AT,
        reason=reason,
        topic=topic,
    )


@pytest.mark.parametrize(
    ("reason", "topic", "expected"),
    [
        (TOPIC_OPT_OUT, "news", {"reason": "unsubscribed", "topic": "news"}),
        # Stopped for the whole kind: the mail's topic is not the reason.
        ("unsubscribed", "news", {"reason": "unsubscribed"}),
        ("bounced", None, {"reason": "bounced"}),
    ],
)
def test_the_suppressed_event_names_the_topic_only_when_it_is_the_reason(reason, topic, expected):
    event = delivery_event(suppressed(reason, topic), AT)
    received = CloudEvent.from_json(event.to_json())  # checked against the published schema
    assert received.type == event_types.DELIVERY_SUPPRESSED
    assert {k: received.data[k] for k in ("reason", "topic") if k in received.data} == expected


def test_a_rendered_mail_keeps_its_topic():
    data = rendered_data("m-2")
    assert RenderedMail.from_data(data).topic is None
    assert RenderedMail.from_data({**data, "topic": "campaign"}).topic == "campaign"
