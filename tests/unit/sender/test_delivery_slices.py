"""How a consumed batch flows: overlapping slices within the window, signing off the loop."""

import asyncio
import threading

from stepmail_sender.smtp import Reply, reply_of
from tests.unit.sender.fakes import FakeLedger, a_mail
from tests.unit.sender.test_delivery_policy import deliverer


class TracingLedger(FakeLedger):
    """Notes each claim and each record of outcomes, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    async def claim_many(self, message_ids, owner, at, traces=None):
        self.calls.append("claim")
        return await super().claim_many(message_ids, owner, at, traces)

    async def finish_many(self, done, at, traces=None, parcels=None):
        self.calls.append("finish")
        return await super().finish_many(done, at, traces, parcels)


class SlowTransport:
    """Takes a little while per mail and notes how many mails the ledger has in flight."""

    def __init__(self, ledger: FakeLedger) -> None:
        self.ledger = ledger
        self.in_flight: list[int] = []

    async def send(self, mail_from: str, rcpt_to: str, message: bytes) -> Reply:
        self.in_flight.append(sum(1 for r in self.ledger.rows.values() if r.state == "sending"))
        await asyncio.sleep(0.002)
        return reply_of(250, "2.0.0 Ok")


async def test_slices_overlap_yet_never_hold_more_than_the_window_in_flight():
    ledger = TracingLedger()
    smtp = SlowTransport(ledger)
    d = deliverer(ledger, smtp, window=32)
    mails = [a_mail(f"msg-{n}", f"contact-{n}") for n in range(200)]
    await d.handle_many(mails)
    assert all(r.state == "sent" for r in ledger.rows.values())
    assert len(ledger.rows) == 200
    # A SIGKILL can leave no more than the window ambiguous...
    assert max(smtp.in_flight) <= 32
    # ...yet the next slice is claimed before the one on the wire is recorded.
    assert "claim claim" in " ".join(ledger.calls)


async def test_a_window_too_small_to_slice_goes_whole():
    ledger = TracingLedger()
    smtp = SlowTransport(ledger)
    d = deliverer(ledger, smtp, window=8)
    await d.handle_many([a_mail(f"msg-{n}", f"contact-{n}") for n in range(40)])
    assert max(smtp.in_flight) <= 8
    assert ledger.calls == ["claim", "finish"] * 5
    assert all(r.state == "sent" for r in ledger.rows.values())


async def test_dkim_signing_runs_off_the_event_loop_thread():
    ledger = FakeLedger()
    loop_thread = threading.get_ident()
    signed_in: list[int] = []

    def signer(message: bytes) -> bytes:
        signed_in.append(threading.get_ident())
        return b"DKIM-Signature: v=1\r\n" + message

    class Recording:
        def __init__(self) -> None:
            self.sent: list[bytes] = []

        async def send(self, mail_from: str, rcpt_to: str, message: bytes) -> Reply:
            self.sent.append(message)
            return reply_of(250, "2.0.0 Ok")

    smtp = Recording()
    d = deliverer(ledger, smtp, signer=signer)
    await d.handle_many([a_mail("msg-1"), a_mail("msg-2", "contact-2")])
    assert len(signed_in) == 2
    assert loop_thread not in signed_in
    assert all(m.startswith(b"DKIM-Signature: v=1\r\n") for m in smtp.sent)


async def test_a_slice_is_signed_in_one_hand_off_to_a_thread(monkeypatch):
    hand_offs: list[int] = []
    to_thread = asyncio.to_thread

    async def counting(func, /, *args, **kwargs):
        hand_offs.append(1)
        return await to_thread(func, *args, **kwargs)

    monkeypatch.setattr(asyncio, "to_thread", counting)
    ledger = FakeLedger()
    smtp = SlowTransport(ledger)
    signed: list[bytes] = []

    def signer(message: bytes) -> bytes:
        signed.append(message)
        return b"DKIM-Signature: v=1\r\n" + message

    # A window of 32 goes in four slices of eight: 40 mails make five slices.
    d = deliverer(ledger, smtp, window=32, signer=signer)
    await d.handle_many([a_mail(f"msg-{n}", f"contact-{n}") for n in range(40)])
    assert len(signed) == 40
    assert len(hand_offs) == 5
    assert all(r.state == "sent" for r in ledger.rows.values())
