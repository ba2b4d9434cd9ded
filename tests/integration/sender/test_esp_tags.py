"""Ids for an ESP's feedback: SendGrid returns X-SMTPAPI unique_args on its events."""

import json

import pytest

from stepmail_sender.delivery import sendgrid_unique_args
from stepmail_tracker.feedback import sendgrid_feedback
from tests.integration.sender.conftest import rendered

pytestmark = pytest.mark.integration


async def test_unique_args_carry_the_ids_that_sendgrid_feedback_maps_back(
    make_deliverer, smtp_server
):
    deliverer = await make_deliverer(tagger=sendgrid_unique_args)
    done = await deliverer.handle(rendered("m-sendgrid", contact_id="顧客-7"))
    assert done.state == "sent"
    (received,) = smtp_server.received
    assert received.smtpapi is not None
    args = json.loads(received.smtpapi)["unique_args"]
    assert args == {"stepmail_message_id": "m-sendgrid", "stepmail_contact_id": "顧客-7"}
    # SendGrid puts unique_args at the top level of each Event Webhook event.
    (feedback,) = sendgrid_feedback(
        [{"email": "someone@example.org", "event": "spamreport", "sg_event_id": "e1", **args}]
    )
    assert (feedback.message_id, feedback.contact_id) == ("m-sendgrid", "顧客-7")


async def test_without_a_tagger_no_esp_header_is_added(make_deliverer, smtp_server):
    deliverer = await make_deliverer()
    await deliverer.handle(rendered("m-plain"))
    assert smtp_server.received[0].smtpapi is None
