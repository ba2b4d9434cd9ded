"""The SMTP client against a scripted server on a real socket: pipelining, refusals, reuse."""

import asyncio
import re
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from aiosmtpd.smtp import SMTP, AuthResult
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from stepmail_sender.smtp import SmtpPool, SmtpTransport, Verdict, data_payload, parse_smtp_url

Answer = Callable[[bytes], bytes | None]


@dataclass
class RawServer:
    """Answers SMTP commands line by line; with ``wait_for_data`` it holds every reply
    to MAIL and RCPT until DATA has arrived too, as only a pipelining client sends it."""

    pipelining: bool = True
    wait_for_data: bool = False
    # The reply to each of the first ``hold_for_next`` messages waits for the next MAIL,
    # which only a client that writes the next mail's commands ahead sends.
    hold_for_next: int = 0
    # The connection is cut right after this many messages were received in all.
    abort_after: int | None = None
    # Seconds before the first message is answered.
    first_reply_delay: float = 0.0
    rcpt_reply: bytes = b"250 2.1.5 Ok"
    messages: list[bytes] = field(default_factory=list)
    commands: list[bytes] = field(default_factory=list)
    connections: int = 0
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        writer.write(b"220 raw ESMTP\r\n")
        held: list[bytes] = []
        owed = b""
        try:
            while line := await reader.readline():
                command = line.strip().upper()
                self.commands.append(command.split(b":")[0].split(b" ")[0])
                if command.startswith(b"EHLO"):
                    offered = b"250-raw\r\n" + (b"250-PIPELINING\r\n" if self.pipelining else b"")
                    writer.write(offered + b"250 8BITMIME\r\n")
                elif command.startswith(b"MAIL"):
                    writer.write(owed)
                    owed = b""
                    held.append(b"250 2.1.0 Ok\r\n")
                elif command.startswith(b"RCPT"):
                    held.append(self.rcpt_reply + b"\r\n")
                elif command == b"DATA":
                    refused = not self.rcpt_reply.startswith(b"2")
                    held.append(b"554 5.5.1 No valid recipients\r\n" if refused else b"354 go\r\n")
                    writer.write(b"".join(held))
                    held.clear()
                    if not refused:
                        self.messages.append(await reader.readuntil(b"\r\n.\r\n"))
                        if len(self.messages) == self.abort_after:
                            writer.transport.abort()
                            return
                        if len(self.messages) == 1:
                            await asyncio.sleep(self.first_reply_delay)
                        if self.hold_for_next > 0:
                            self.hold_for_next -= 1
                            owed = b"250 2.0.0 Ok: queued\r\n"
                        else:
                            writer.write(b"250 2.0.0 Ok: queued\r\n")
                elif command == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    break
                else:
                    writer.write(b"250 Ok\r\n")
                if held and not self.wait_for_data:
                    writer.write(b"".join(held))
                    held.clear()
                await writer.drain()
        finally:
            writer.close()


@pytest.fixture
async def raw_server() -> AsyncIterator[RawServer]:
    scripted = RawServer()
    server = await asyncio.start_server(scripted.handle, "127.0.0.1", 0)
    scripted.port = server.sockets[0].getsockname()[1]
    try:
        yield scripted
    finally:
        server.close()
        for writer in scripted.writers:
            writer.close()
        await server.wait_closed()


def transport_for(server: RawServer, timeout: float = 2.0) -> SmtpTransport:
    return SmtpTransport(parse_smtp_url(f"smtp://127.0.0.1:{server.port}"), timeout=timeout)


MESSAGE = b"Subject: hi\r\n\r\n.starts with a dot\r\nbody\r\n"


async def test_pipelining_sends_mail_rcpt_and_data_in_one_go(raw_server: RawServer) -> None:
    # The server answers nothing before DATA: a client waiting for each reply would time out.
    raw_server.wait_for_data = True
    transport = transport_for(raw_server, timeout=1.0)
    try:
        for _ in range(3):
            reply = await transport.send("news@example.com", "a@example.org", MESSAGE)
            assert reply.verdict is Verdict.ACCEPTED, reply
    finally:
        await transport.close()
    assert raw_server.connections == 1
    assert raw_server.messages[0] == b"Subject: hi\r\n\r\n..starts with a dot\r\nbody\r\n.\r\n"


async def test_without_pipelining_commands_go_one_at_a_time(raw_server: RawServer) -> None:
    raw_server.pipelining = False
    transport = transport_for(raw_server)
    try:
        reply = await transport.send("news@example.com", "a@example.org", MESSAGE)
    finally:
        await transport.close()
    assert reply.verdict is Verdict.ACCEPTED
    assert raw_server.commands[:4] == [b"EHLO", b"MAIL", b"RCPT", b"DATA"]


async def test_pipelined_rcpt_refusal_is_the_verdict_and_the_connection_carries_on(
    raw_server: RawServer,
) -> None:
    raw_server.rcpt_reply = b"550 5.1.1 <a@example.org>: Recipient address rejected"
    transport = transport_for(raw_server)
    try:
        refused = await transport.send("news@example.com", "a@example.org", MESSAGE)
        raw_server.rcpt_reply = b"250 2.1.5 Ok"
        accepted = await transport.send("news@example.com", "b@example.org", MESSAGE)
    finally:
        await transport.close()
    assert (refused.verdict, refused.code) == (Verdict.PERMANENT, 550)
    assert refused.text.startswith("5.1.1")
    assert "example.org" not in refused.text
    assert accepted.verdict is Verdict.ACCEPTED
    assert b"RSET" in raw_server.commands
    assert raw_server.connections == 1


async def test_a_connection_closed_while_idle_is_replaced_not_deferred(
    raw_server: RawServer,
) -> None:
    transport = transport_for(raw_server)
    try:
        assert (await transport.send("n@example.com", "a@example.org", MESSAGE)).verdict is (
            Verdict.ACCEPTED
        )
        # The server drops the idle connection without the client noticing yet.
        raw_server.writers[0].transport.abort()
        await asyncio.sleep(0.05)
        reply = await transport.send("n@example.com", "b@example.org", MESSAGE)
    finally:
        await transport.close()
    assert reply.verdict is Verdict.ACCEPTED
    assert raw_server.connections == 2
    assert len(raw_server.messages) == 2


async def test_nothing_listening_is_a_connection_failure() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    transport = SmtpTransport(parse_smtp_url(f"smtp://127.0.0.1:{port}"), timeout=1)
    reply = await transport.send("n@example.com", "a@example.org", MESSAGE)
    await transport.close()
    assert reply.verdict is Verdict.CONNECTION


async def test_an_address_that_would_inject_commands_is_refused_before_any_io() -> None:
    transport = SmtpTransport(parse_smtp_url("smtp://127.0.0.1:9"), timeout=1)
    reply = await transport.send("n@example.com", "a@example.org>\r\nRCPT TO:<b@x.org", MESSAGE)
    assert reply.verdict is Verdict.PERMANENT
    assert reply.code is None


@pytest.mark.parametrize(
    ("message", "payload"),
    [
        (b"a\r\nb\r\n", b"a\r\nb\r\n.\r\n"),
        (b"a\r\nb", b"a\r\nb\r\n.\r\n"),
        (b".a\r\n..b\r\n.\r\n", b"..a\r\n...b\r\n..\r\n.\r\n"),
        (b"a\nb\rc\r\n", b"a\r\nb\r\nc\r\n.\r\n"),
    ],
)
def test_data_payload_line_ends_and_dot_stuffing(message: bytes, payload: bytes) -> None:
    assert data_payload(message) == payload


def plain_data_payload(message: bytes) -> bytes:
    """The payload by its definition, in the plainest code: what the fast one must equal."""
    lines = re.split(rb"\r\n|\r|\n", message)
    if len(lines) > 1 and lines[-1] == b"":
        lines.pop()
    return b"".join(b"." * line.startswith(b".") + line + b"\r\n" for line in lines) + b".\r\n"


@given(st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b".", b"a", b" "]), max_size=30))
def test_data_payload_is_the_plain_definition(pieces: list[bytes]) -> None:
    message = b"".join(pieces)
    assert data_payload(message) == plain_data_payload(message)


def self_signed_context(tmp_path) -> ssl.SSLContext:
    """A server TLS context with a throwaway self-signed certificate for 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "smtp.test")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context


async def test_starttls_and_auth_before_the_mail(tmp_path) -> None:
    seen: dict[str, object] = {}

    class Handler:
        async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd hook
            seen["tls"] = session.ssl is not None
            seen["login"] = session.auth_data if session.authenticated else None
            return "250 2.0.0 Ok: queued"

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = (auth_data.login, auth_data.password) == (b"user@x", b"p:ss")
        if ok:
            return AuthResult(success=True, auth_data=auth_data.login)
        return AuthResult(success=False, handled=False)

    context = self_signed_context(tmp_path)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(
            Handler(),
            hostname="smtp.test",
            tls_context=context,
            require_starttls=True,
            auth_required=True,
            authenticator=authenticator,
            auth_require_tls=True,
        ),
        "127.0.0.1",
        0,
    )
    port = server.sockets[0].getsockname()[1]
    url = f"smtp://user%40x:p%3Ass@127.0.0.1:{port}?starttls=true&verify=false"
    transport = SmtpTransport(parse_smtp_url(url), timeout=5)
    wrong = SmtpTransport(
        parse_smtp_url(f"smtp://user%40x:nope@127.0.0.1:{port}?starttls=true&verify=false"),
        timeout=5,
    )
    try:
        reply = await transport.send("news@example.com", "a@example.org", MESSAGE)
        refused = await wrong.send("news@example.com", "a@example.org", MESSAGE)
    finally:
        await transport.close()
        await wrong.close()
        server.close()
        await server.wait_closed()
    assert reply.verdict is Verdict.ACCEPTED, reply
    assert seen == {"tls": True, "login": b"user@x"}
    assert (refused.verdict, refused.code) == (Verdict.CONNECTION, 535), refused


def numbered(n: int) -> bytes:
    return f"Subject: mail {n}\r\n\r\nbody {n}\r\n".encode()


def received(n: int) -> bytes:
    return numbered(n) + b".\r\n"


async def test_queued_mails_commands_go_out_with_the_message_before(
    raw_server: RawServer,
) -> None:
    # Each message is answered only once the next mail's MAIL arrived: a client that
    # waits for the answer before writing the next commands would time out.
    raw_server.hold_for_next = 3
    transport = transport_for(raw_server, timeout=1.0)
    try:
        replies = await asyncio.gather(
            *(transport.send("n@example.com", f"{n}@example.org", numbered(n)) for n in range(4))
        )
    finally:
        await transport.close()
    assert [r.verdict for r in replies] == [Verdict.ACCEPTED] * 4
    assert raw_server.messages == [received(n) for n in range(4)]
    assert raw_server.connections == 1


async def test_a_break_under_a_message_leaves_the_queued_mail_unsent_and_retried(
    raw_server: RawServer,
) -> None:
    raw_server.abort_after = 1
    transport = transport_for(raw_server)
    try:
        first, second = await asyncio.gather(
            transport.send("n@example.com", "a@example.org", numbered(0)),
            transport.send("n@example.com", "b@example.org", numbered(1)),
        )
    finally:
        await transport.close()
    # The first message reached the server before the break: nobody knows its fate.
    assert first.verdict is Verdict.UNKNOWN
    # The second had only its commands written: it goes once, on a new connection.
    assert second.verdict is Verdict.ACCEPTED
    assert raw_server.messages == [received(0), received(1)]
    assert raw_server.connections == 2


async def test_a_queued_mail_given_up_after_its_commands_went_ahead_spoils_the_connection(
    raw_server: RawServer,
) -> None:
    raw_server.first_reply_delay = 0.3
    transport = transport_for(raw_server)
    try:
        first = asyncio.create_task(transport.send("n@example.com", "a@example.org", numbered(0)))
        given_up = asyncio.create_task(
            transport.send("n@example.com", "b@example.org", numbered(1))
        )
        await asyncio.sleep(0.1)
        given_up.cancel()
        assert (await first).verdict is Verdict.ACCEPTED
        # The server answers the given-up mail's commands; those replies must not be
        # read as the next mail's, so the next mail takes a new connection.
        later = [
            await transport.send("n@example.com", "c@example.org", numbered(n)) for n in (2, 3)
        ]
    finally:
        await transport.close()
    assert given_up.cancelled()
    assert [r.verdict for r in later] == [Verdict.ACCEPTED] * 2
    assert raw_server.messages == [received(0), received(2), received(3)]
    assert raw_server.connections == 2


async def test_the_pool_queues_a_few_mails_on_each_connection(raw_server: RawServer) -> None:
    raw_server.hold_for_next = 2
    url = parse_smtp_url(f"smtp://127.0.0.1:{raw_server.port}")
    pool = SmtpPool(url, timeout=1.0, size=1, depth=3)
    try:
        replies = await asyncio.gather(
            *(pool.send("n@example.com", f"{n}@example.org", numbered(n)) for n in range(3))
        )
    finally:
        await pool.close()
    assert [r.verdict for r in replies] == [Verdict.ACCEPTED] * 3
    assert raw_server.messages == [received(n) for n in range(3)]
    assert raw_server.connections == 1
