"""The deliverer's decisions, on fakes: retries, failures, and the ambiguous policy."""

from datetime import UTC, datetime

import pytest

from stepmail_common.clock import ManualClock
from stepmail_sender import metrics
from stepmail_sender.delivery import Deliverer, OwnerBusyError
from stepmail_sender.smtp import reply_of
from tests.unit.sender.fakes import (
    FakeLedger,
    FakeTransport,
    a_mail,
    connection_lost,
    data_broken,
)

ME = 7
OTHER = 9


def deliverer(ledger, transport, policy="hold", **kwargs) -> Deliverer:
    kwargs.setdefault("retry_backoff", 0.0)
    return Deliverer(
        ledger,
        transport,
        ManualClock(datetime(2025, 4, 1, 9, 0, tzinfo=UTC)),
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


async def test_transient_reply_is_retried_within_the_attempt():
    ledger = FakeLedger()
    smtp = FakeTransport(reply_of(451, "4.7.1 try later"), connection_lost())
    done = await deliverer(ledger, smtp).handle(a_mail())
    assert done.state == "sent"
    assert done.attempt == 1
    assert len(smtp.sent) == 3


async def test_retries_exhausted_is_failed_with_the_last_reply():
    before = metrics.MAILS_FAILED.labels("4xx")._value.get()
    ledger = FakeLedger()
    smtp = FakeTransport(*[reply_of(451, "4.7.1 greylisted")] * 4)
    done = await deliverer(ledger, smtp, retries=3).handle(a_mail())
    assert done.state == "failed"
    assert (done.smtp_code, done.smtp_response) == (451, "4.7.1 greylisted")
    assert len(smtp.sent) == 4
    assert metrics.MAILS_FAILED.labels("4xx")._value.get() == before + 1


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
    assert await deliverer(ledger, smtp, policy=policy).recover() == 1
    assert ledger.rows["msg-1"].state == state
    assert len(smtp.sent) == sends
    ambiguous = [e for e in ledger.events if e.state == "ambiguous"]
    assert [(e.policy, e.attempt) for e in ambiguous] == [(policy, 1)]


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
