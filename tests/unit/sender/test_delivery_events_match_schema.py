"""Every delivery event the ledger can write matches its schema.

The ledger writes its events to the outbox without checking them against the schemas at
run time, so what a ledger row can hold must always make a valid event: ids and topics
as a validated ``mail-rendered`` event carries them, reply texts as the transports make
them (redacted and cut), enhanced codes as parsed, the suppression reasons the ledger
records, and times in UTC.
"""

import dataclasses
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stepmail_common.errors import InvalidEventError
from stepmail_common.events import validate
from stepmail_sender.domain import TOPIC_OPT_OUT, Delivery
from stepmail_sender.ledger import delivery_event
from stepmail_sender.smtp import dsn_of, redact

text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]))
ident = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=200)
# The clock and the pool (``timezone`` UTC) give the ledger its times in UTC.
moment = st.datetimes(timezones=st.just(UTC))
reply_text = st.one_of(
    st.none(),
    text.map(redact),
    st.sampled_from(["parcel no longer stored", "mime is not 7-bit ASCII"]),
    st.text(max_size=3000).map(redact),
)
topic = st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_-]{0,99}\Z")

deliveries = st.builds(
    Delivery,
    message_id=ident,
    contact_id=ident,
    scenario_id=ident,
    scenario_version=st.integers(min_value=1, max_value=2**31 - 1),
    step_id=ident,
    step_index=st.integers(min_value=0, max_value=2**31 - 1),
    state=st.sampled_from(["sending", "sent", "failed", "ambiguous", "deferred", "suppressed"]),
    attempt=st.integers(min_value=0, max_value=2**31 - 1),
    owner=st.none() | st.integers(min_value=0, max_value=2**62),
    resend=st.booleans(),
    policy=st.sampled_from([None, "hold", "resend"]),
    smtp_code=st.none() | st.integers(min_value=100, max_value=599),
    smtp_response=reply_text,
    created_at=moment,
    updated_at=moment,
    claimed_at=st.none() | moment,
    finished_at=st.none() | moment,
    next_attempt_at=st.none() | moment,
    bounce=st.sampled_from([None, "hard", "soft"]),
    dsn=st.none() | text.map(dsn_of) | st.from_regex(r"\A[245]\.\d{1,3}\.\d{1,3}").map(dsn_of),
    reason=st.sampled_from([None, "unsubscribed", "complained", "bounced", "erased"]),
    topic=st.none() | topic,
)


@st.composite
def ledger_rows(draw: st.DrawFn) -> Delivery:
    """A row as the ledger holds it: a topic opt-out is recorded only for a mail with a
    topic (the claim matches the opt-out on the mail's topic)."""
    row = draw(deliveries)
    if row.state == "suppressed" and row.topic is not None and draw(st.booleans()):
        return dataclasses.replace(row, reason=TOPIC_OPT_OUT)
    return row


@given(ledger_rows(), moment)
def test_every_delivery_event_matches_its_schema(row: Delivery, at: datetime) -> None:
    validate(delivery_event(row, at).to_dict())


def test_a_row_outside_the_schema_is_caught() -> None:
    """The check above can fail: a reply text longer than the schema allows is refused."""
    row = Delivery(
        message_id="m",
        contact_id="c",
        scenario_id="s",
        scenario_version=1,
        step_id="d0",
        step_index=0,
        state="sent",
        attempt=1,
        owner=1,
        resend=False,
        policy=None,
        smtp_code=250,
        smtp_response="x" * 1001,
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        updated_at=datetime(2026, 1, 1, tzinfo=UTC),
        claimed_at=None,
        finished_at=None,
    )
    with pytest.raises(InvalidEventError, match="smtp_response"):
        validate(delivery_event(row, row.created_at).to_dict())
