"""The deliverer's decisions, on fakes: retries, failures, and the ambiguous policy."""

from datetime import UTC, datetime, timedelta

import pytest

from stepmail_common.clock import ManualClock
from stepmail_sender import metrics
from stepmail_sender.delivery import Deliverer, OwnerBusyError, RetryPolicy
from stepmail_sender.smtp import is_hard_bounce, reply_of
from tests.unit.sender.fakes import (
    FakeLedger,
    FakeTransport,
    a_mail,
    connection_lost,
    data_broken,
)

ME = 7
OTHER = 9


def deliverer(ledger, transport, policy="hold", clock=None, **kwargs) -> Deliverer:
    return Deliverer(
        ledger,
        transport,
        clock or ManualClock(datetime(2025, 4, 1, 9, 0, tzinfo=UTC)),
        owner=ME,
        policy=policy,
        **kwargs,
    )


def states(ledger: FakeLedger) -> list[tuple[str, int]]:
    return [(e.state, e.attempt) for e in ledger.events]


async def test_accepted_mail_is_sent_once_and_redelivery_is_skipped():
    ledger, smtp = FakeLedger(), FakeTransport()
    d = deliverer(ledger, smtp)
    first = await d.handle(a_mail())
    again = await d.handle(a_mail())
    assert first.state == "sent"
    assert first.smtp_code == 250
    assert again.state == "sent"
    assert len(smtp.sent) == 1
    assert states(ledger) == [("sending", 1), ("sent", 1)]


async def test_message_bytes_end_with_crlf():
    ledger, smtp = FakeLedger(), FakeTransport()
    await deliverer(ledger, smtp).handle(a_mail())
    assert smtp.sent[0][2].endswith(b"Hello\r\n")


async def test_transient_reply_is_deferred_then_sent_by_the_retry_pass():
    ledger = FakeLedger()
    smtp = FakeTransport(reply_of(451, "4.7.1 try later"), connection_lost())
    clock = ManualClock(datetime(2025, 4, 1, 9, 0, tzinfo=UTC))
    d = deliverer(ledger, smtp, retry=RetryPolicy(base=10, cap=100, max_age=3600), clock=clock)
    done = await d.handle(a_mail())
    assert (done.state, done.smtp_code, done.dsn) == ("deferred", 451, "4.7.1")
    assert done.next_attempt_at is not None
    assert await d.retry_due() == 0, "not due yet"
    clock.advance(timedelta(seconds=10))
    assert await d.retry_due() == 1
    assert ledger.rows["msg-1"].state == "deferred", "a connection failure defers again"
    clock.advance(timedelta(seconds=20))
    assert await d.retry_due() == 1
    assert (ledger.rows["msg-1"].state, ledger.rows["msg-1"].attempt) == ("sent", 3)
    assert len(smtp.sent) == 3
    assert "msg-1" not in ledger.stored, "the parcel is dropped once the fate is known"


async def test_transient_past_the_max_age_is_failed_soft():
    before = metrics.MAILS_FAILED.labels("4xx")._value.get()
    ledger = FakeLedger()
    smtp = FakeTransport(reply_of(451, "4.7.1 greylisted"))
    d = deliverer(ledger, smtp, retry=RetryPolicy(base=10, cap=100, max_age=1))
    done = await d.handle(a_mail())
    assert (done.state, done.bounce) == ("failed", "soft")
    assert (done.smtp_code, done.smtp_response) == (451, "4.7.1 greylisted")
    assert metrics.MAILS_FAILED.labels("4xx")._value.get() == before + 1


def test_backoff_grows_with_jitter_within_bounds():
    policy = RetryPolicy(base=10, cap=100, max_age=1000)
    for attempt, full in [(1, 10), (2, 20), (3, 40), (8, 100)]:
        delays = {policy.delay(attempt) for _ in range(20)}
        assert all(full / 2 <= x <= full for x in delays)
        assert len(delays) > 1


@pytest.mark.parametrize(
    ("code", "text", "hard"),
    [
        (550, "5.1.1 <redacted>: Recipient address rejected", True),
        (550, "5.7.1 message refused as spam", False),
        (550, "Requested action not taken: mailbox unavailable", True),
        (553, "sorry, no such user here", True),
        (554, "transaction failed", False),
        (451, "4.1.1 try later", False),
        (550, "5.1.8 bad sender address", False),
    ],
)
def test_hard_bounces(code, text, hard):
    assert is_hard_bounce(code, text) is hard


async def test_permanent_reply_fails_at_once():
    ledger = FakeLedger()
    smtp = FakeTransport(reply_of(550, "5.1.1 <someone@example.org> unknown"))
    done = await deliverer(ledger, smtp).handle(a_mail())
    assert done.state == "failed"
    assert done.smtp_code == 550
    assert "example.org" not in (done.smtp_response or "")
    assert len(smtp.sent) == 1


async def test_broken_data_is_held_under_hold():
    ledger = FakeLedger()
    smtp = FakeTransport(data_broken())
    done = await deliverer(ledger, smtp, policy="hold").handle(a_mail())
    assert (done.state, done.policy) == ("ambiguous", "hold")
    assert len(smtp.sent) == 1
    again = await deliverer(ledger, smtp, policy="resend").handle(a_mail())
    assert again.state == "ambiguous"
    assert len(smtp.sent) == 1


async def test_broken_data_is_sent_again_under_resend():
    ledger = FakeLedger()
    smtp = FakeTransport(data_broken())
    done = await deliverer(ledger, smtp, policy="resend").handle(a_mail())
    assert done.state == "sent"
    assert done.attempt == 2
    assert done.resend
    assert len(smtp.sent) == 2
    assert states(ledger) == [("sending", 1), ("ambiguous", 1), ("sending", 2), ("sent", 2)]


async def test_resend_stops_after_max_attempts():
    ledger = FakeLedger()
    smtp = FakeTransport(*[data_broken()] * 10)
    done = await deliverer(ledger, smtp, policy="resend", max_attempts=3).handle(a_mail())
    assert (done.state, done.policy, done.attempt) == ("ambiguous", "hold", 3)
    assert len(smtp.sent) == 3


async def dead_claim(ledger: FakeLedger, owner: int = OTHER):
    await ledger.accept(a_mail(), datetime(2025, 4, 1, tzinfo=UTC))
    await ledger.claim("msg-1", owner, datetime(2025, 4, 1, tzinfo=UTC))


@pytest.mark.parametrize(
    ("policy", "sends", "state"), [("hold", 0, "ambiguous"), ("resend", 1, "sent")]
)
async def test_recovery_applies_the_policy(policy, sends, state):
    ledger, smtp = FakeLedger(), FakeTransport()
    await dead_claim(ledger)
    ledger.stored["msg-1"] = a_mail().parcel  # e.g. a retry: the ledger kept the parcel
    assert await deliverer(ledger, smtp, policy=policy).recover() == 1
    assert ledger.rows["msg-1"].state == state
    assert len(smtp.sent) == sends
    ambiguous = [e for e in ledger.events if e.state == "ambiguous"]
    assert [(e.policy, e.attempt) for e in ambiguous] == [(policy, 1)]


async def test_under_resend_a_dead_owners_first_attempt_is_resent_from_its_redelivery():
    ledger, smtp = FakeLedger(), FakeTransport()
    await dead_claim(ledger)
    d = deliverer(ledger, smtp, policy="resend")
    # No parcel in the ledger: recovery reports the mail and leaves it to its record...
    assert await d.recover() == 1
    assert (ledger.rows["msg-1"].state, ledger.rows["msg-1"].policy) == ("ambiguous", "resend")
    assert smtp.sent == []
    # ...which comes back, never committed, and is sent once more from the record.
    await d.handle_many([a_mail()])
    row = ledger.rows["msg-1"]
    assert (row.state, row.attempt, row.resend) == ("sent", 2, True)
    assert len(smtp.sent) == 1


async def test_a_mail_sent_at_once_leaves_no_parcel_and_a_deferred_one_keeps_it():
    ledger = FakeLedger()
    smtp = FakeTransport(reply_of(451, "4.7.1 try later"))
    await deliverer(ledger, smtp).handle_many([a_mail("msg-1"), a_mail("msg-2", "contact-2")])
    states = {m: r.state for m, r in ledger.rows.items()}
    assert sorted(states.values()) == ["deferred", "sent"]
    deferred = next(m for m, state in states.items() if state == "deferred")
    assert set(ledger.stored) == {deferred}


async def test_unknown_outcome_under_resend_keeps_the_parcel_in_hand():
    ledger = FakeLedger()
    smtp = FakeTransport(data_broken())
    done = await deliverer(ledger, smtp, policy="resend").handle(a_mail())
    assert (done.state, done.attempt, done.resend) == ("sent", 2, True)
    assert len(smtp.sent) == 2


async def test_redelivery_of_a_dead_owners_mail_is_resolved_by_the_handler():
    ledger, smtp = FakeLedger(), FakeTransport()
    await dead_claim(ledger)
    done = await deliverer(ledger, smtp, policy="hold").handle(a_mail())
    assert (done.state, done.policy) == ("ambiguous", "hold")
    assert smtp.sent == []


async def test_own_abandoned_row_is_ambiguous_too():
    ledger, smtp = FakeLedger(), FakeTransport()
    await dead_claim(ledger, owner=ME)
    assert await deliverer(ledger, smtp).recover() == 1
    assert ledger.rows["msg-1"].state == "ambiguous"


async def test_live_owner_is_waited_for_then_gives_up_retriably():
    ledger, smtp = FakeLedger(), FakeTransport()
    await dead_claim(ledger)
    ledger.live_owners.add(OTHER)
    d = deliverer(ledger, smtp, owner_wait=0.05, poll_interval=0.01)
    with pytest.raises(OwnerBusyError) as caught:
        await d.handle(a_mail())
    assert caught.value.retriable
    assert ledger.rows["msg-1"].state == "sending"
    assert await d.recover() == 0
    assert smtp.sent == []
