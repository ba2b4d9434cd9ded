"""The bench sink's parsing: the message id header and the recipient of each mail."""

import asyncio

from bench.loadgen import contact_id, contact_number
from bench.sink import SinkProtocol, address_of, message_id_of


class _Recorder:
    def __init__(self) -> None:
        self.added: list[tuple[str, str]] = []

    def add(self, message_id: str, rcpt: str) -> None:
        self.added.append((message_id, rcpt))


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = b""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def close(self) -> None:
        pass


def test_the_message_id_header_is_read_from_the_headers_only():
    mail = (
        b"From: a@example.com\r\nX-Stepmail-Message-Id: 4620ae0f-84c2\r\n"
        b"Subject: x\r\n\r\nX-Stepmail-Message-Id: in-the-body\r\n"
    )
    assert message_id_of(mail) == "4620ae0f-84c2"
    assert message_id_of(b"Subject: x\r\n\r\nX-Stepmail-Message-Id: in-the-body\r\n") == "-"


def test_the_recipient_comes_from_the_rcpt_argument():
    assert address_of(b" TO:<c-0000007@bench.example.jp> NOTIFY=NEVER") == (
        "c-0000007@bench.example.jp"
    )
    assert address_of(b" TO:plain@example.jp") == "plain@example.jp"


def test_a_pipelined_session_records_each_mail_with_its_recipient():
    recorder = _Recorder()
    protocol = SinkProtocol(recorder)  # type: ignore[arg-type]
    transport = _Transport()
    protocol.connection_made(transport)
    session = (
        b"EHLO me\r\nMAIL FROM:<b@example.com>\r\nRCPT TO:<c-1@x.jp>\r\nDATA\r\n"
        b"X-Stepmail-Message-Id: m1\r\n\r\nbody\r\n..dot-stuffed\r\n.\r\n"
        b"MAIL FROM:<b@example.com>\r\nRCPT TO:<c-2@x.jp>\r\nDATA\r\n"
    )
    protocol.data_received(session[:40])
    protocol.data_received(session[40:])
    protocol.data_received(b"X-Stepmail-Message-Id: m2\r\n\r\nhi\r\n.\r\nQUIT\r\n")
    assert recorder.added == [("m1", "c-1@x.jp"), ("m2", "c-2@x.jp")]
    assert transport.written.count(b"250 2.0.0 Ok: queued") == 2
    assert transport.written.endswith(b"221 2.0.0 Bye\r\n")


def test_contact_numbers_round_trip_through_ids_and_addresses():
    assert contact_number("cab12-", contact_id("cab12-", 42)) == 42
    assert contact_number("cab12-", f"{contact_id('cab12-', 7)}@bench.example.jp") == 7
    assert contact_number("cab12-", "other-0000001@bench.example.jp") is None
