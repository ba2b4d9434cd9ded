"""SMTP delivery over persistent connections, and what an answer means.

Every attempt ends in a ``Reply`` with a ``Verdict``: the mail was accepted, refused for
now (4xx), refused for good (5xx), could not be handed over (connection, before the
message itself was sent), or the connection broke while the message was in flight,
after which nobody can tell whether the server kept it (``UNKNOWN``).

The client speaks just the SMTP a sender needs (EHLO, STARTTLS or implicit TLS, AUTH
PLAIN/LOGIN, MAIL, RCPT, DATA, RSET, QUIT). When the server offers ESMTP PIPELINING
(RFC 2920), MAIL, RCPT and DATA go out in one write and their three replies are read
together, so a mail takes two round trips instead of four. A connection also carries
a few mails queued behind each other: the next mail's MAIL, RCPT and DATA go in the same
write as the message before it (RFC 2920 lets the end of a message's data begin a group),
so a busy connection spends one write and one round trip per mail.

What queueing does not change: a message's content is sent only after its own ``354``,
so a mail whose commands were written ahead has handed nothing over; if the connection
breaks before its replies are read, it is tried once on a new connection, as a mail on
an idle connection the server had closed is.
"""

import asyncio
import base64
import collections
import contextlib
import enum
import itertools
import re
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

_TRUE = frozenset({"1", "true", "yes", "on"})
_ADDRESS = re.compile(r"[^\s<>()\[\]\"',;:]+@[^\s<>()\[\]\"',;:]+")
MAX_REPLY_TEXT = 1000
# Commands carry no control characters: a CR or LF in an address would inject commands.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_BARE_LINE_END = re.compile(rb"\r\n|\r|\n")
_LINE_STARTING_WITH_DOT = re.compile(rb"\n\.")


class InvalidSmtpUrlError(ValueError):
    """``SMTP_URL`` cannot be understood."""


@dataclass(frozen=True, slots=True)
class SmtpTarget:
    """Where and how to connect, parsed from ``SMTP_URL``."""

    host: str
    port: int
    implicit_tls: bool = False
    starttls: bool = False
    username: str | None = None
    password: str | None = None
    verify_tls: bool = True

    def __repr__(self) -> str:
        # The password never reaches a log line or a traceback.
        return (
            f"SmtpTarget(host={self.host!r}, port={self.port}, implicit_tls={self.implicit_tls},"
            f" starttls={self.starttls}, auth={self.username is not None})"
        )


def parse_smtp_url(url: str) -> SmtpTarget:
    """``smtp://[user:password@]host[:port][?starttls=true&verify=false]`` or ``smtps://``."""
    parts = urlsplit(url)
    if parts.scheme not in ("smtp", "smtps"):
        raise InvalidSmtpUrlError("SMTP_URL must start with smtp:// or smtps://")
    if not parts.hostname:
        raise InvalidSmtpUrlError("SMTP_URL has no host")
    try:
        explicit_port = parts.port
    except ValueError as exc:
        raise InvalidSmtpUrlError("SMTP_URL has an invalid port") from exc
    query = {k.lower(): v[-1].lower() for k, v in parse_qs(parts.query).items()}
    unknown = set(query) - {"starttls", "verify"}
    if unknown:
        raise InvalidSmtpUrlError(f"SMTP_URL has unknown options: {', '.join(sorted(unknown))}")
    implicit_tls = parts.scheme == "smtps"
    starttls = query.get("starttls", "false") in _TRUE
    if implicit_tls and starttls:
        raise InvalidSmtpUrlError("smtps:// is already TLS; starttls=true does not apply")
    default_port = 465 if implicit_tls else (587 if starttls else 25)
    return SmtpTarget(
        host=parts.hostname,
        port=explicit_port or default_port,
        implicit_tls=implicit_tls,
        starttls=starttls,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        verify_tls=query.get("verify", "true") in _TRUE,
    )


class Verdict(enum.Enum):
    """What one SMTP transaction tells about the mail."""

    ACCEPTED = "accepted"
    TRANSIENT = "4xx"
    PERMANENT = "5xx"
    CONNECTION = "connection"
    UNKNOWN = "unknown"

    @property
    def retriable(self) -> bool:
        """Trying again cannot duplicate the mail and may succeed."""
        return self in (Verdict.TRANSIENT, Verdict.CONNECTION)


@dataclass(frozen=True, slots=True)
class Reply:
    """The outcome of one attempt: the verdict, the server's code and its text."""

    verdict: Verdict
    code: int | None
    text: str


def redact(text: str) -> str:
    """Servers echo addresses in their replies; the ledger and events keep none."""
    return _ADDRESS.sub("redacted", text)[:MAX_REPLY_TEXT]


def classify(code: int) -> Verdict:
    """The verdict of a final SMTP reply code."""
    if 200 <= code < 300:
        return Verdict.ACCEPTED
    if 400 <= code < 500:
        return Verdict.TRANSIENT
    return Verdict.PERMANENT


def reply_of(code: int, text: str) -> Reply:
    return Reply(classify(code), code, redact(text))


_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")
_MAILBOX_UNKNOWN = re.compile(
    r"(user|mailbox|recipient|address)\s*(unknown|not found|does not exist|unavailable)"
    r"|no such (user|mailbox|recipient)|unknown (user|recipient|mailbox)|invalid recipient",
    re.IGNORECASE,
)
# Enhanced codes that say the recipient's address is bad (RFC 3463 5.1.x, not 5.1.7/5.1.8,
# which are about the sender's address).
_HARD_DSN = frozenset({"5.1.1", "5.1.2", "5.1.3", "5.1.6", "5.1.10"})


def dsn_of(text: str | None) -> str | None:
    """The enhanced status code (RFC 3463) a reply starts with, e.g. ``5.1.1``."""
    if not text:
        return None
    found = _ENHANCED.match(text)
    return ".".join(found.groups()) if found else None


def is_hard_bounce(code: int | None, text: str | None) -> bool:
    """The recipient's address does not exist: retrying or sending again is pointless."""
    if code is None or not 500 <= code < 600:
        return False
    dsn = dsn_of(text)
    if dsn is not None:
        return dsn in _HARD_DSN
    return code in (550, 551, 553) and bool(_MAILBOX_UNKNOWN.search(text or ""))


class SmtpProtocolError(Exception):
    """The server said something that is not an SMTP reply, or closed the connection."""


class SessionRefusedError(Exception):
    """The server refused the session (greeting, EHLO, STARTTLS or AUTH), not a mail."""

    def __init__(self, code: int | None, text: str) -> None:
        super().__init__(f"{code} {text}")
        self.code = code
        self.text = text


_Failure = (OSError, TimeoutError, SmtpProtocolError)


async def _read_reply(reader: asyncio.StreamReader) -> tuple[int, str]:
    """One reply, its continuation lines (``250-...``) joined by newlines."""
    lines: list[str] = []
    while True:
        line = await reader.readline()
        if not line.endswith(b"\n"):
            raise SmtpProtocolError("connection closed by the server")
        try:
            code = int(line[:3])
        except ValueError:
            raise SmtpProtocolError("malformed SMTP reply line") from None
        lines.append(line[4:].strip().decode("utf-8", "replace"))
        if line[3:4] != b"-":
            return code, "\n".join(lines)


def data_payload(message: bytes) -> bytes:
    """The message as it goes after DATA: CRLF line ends, leading dots doubled, ``.``.

    Rendered mail already has CRLF line ends and seldom a line starting with a dot, so the
    checks come first, in the forms CPython runs fastest over ~10 KB: splitting on and
    counting single bytes, and a compiled search, rather than counting two-byte needles.
    """
    lines = message.split(b"\n")
    if message.count(b"\r") != len(lines) - 1 or not all(
        map(bytes.endswith, lines[:-1], itertools.repeat(b"\r"))
    ):
        message = _BARE_LINE_END.sub(b"\r\n", message)
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    if message.startswith(b".") or _LINE_STARTING_WITH_DOT.search(message):
        message = message.replace(b"\r\n.", b"\r\n..")
        if message.startswith(b"."):
            message = b"." + message
    return message + b".\r\n"


def _command_address(address: str) -> bytes:
    """``<address>`` for MAIL/RCPT; ``ValueError`` for what no SMTP command can carry."""
    bare = address.strip().removeprefix("<").removesuffix(">")
    if _CONTROL.search(bare):
        raise ValueError("address contains control characters")
    if not bare.isascii():
        raise ValueError("address is not ASCII (SMTPUTF8 is not used)")
    return b"<" + bare.encode("ascii") + b">"


class _Session:
    """One open SMTP connection, past EHLO (and STARTTLS and AUTH when configured)."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, offered: dict[str, str]
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.pipelining = "PIPELINING" in offered
        # Set when commands were written whose replies nobody will read: the replies
        # would be taken for the next mail's, so the session must not carry another.
        self.spoilt = False

    @property
    def usable(self) -> bool:
        return not (self.spoilt or self.writer.is_closing() or self.reader.at_eof())

    async def command(self, line: bytes) -> tuple[int, str]:
        self.writer.write(line)
        return await _read_reply(self.reader)

    async def envelope(self, turn: "_Turn") -> list[tuple[int, str]]:
        """MAIL, RCPT and DATA: pipelined when offered, else one by one until one fails;
        with pipelining, the commands may have gone out already, after the mail before.

        Returns the replies received, in order; the last one is the first failure or
        DATA's ``354``. Nothing of the message has been sent yet.
        """
        if self.pipelining:
            if turn.written_on is not self:
                self.writer.write(turn.commands)
                turn.written_on = self
            replies = [await _read_reply(self.reader) for _ in range(3)]
            turn.written_on = None
            return replies
        commands = turn.commands.splitlines(keepends=True)
        replies = []
        for expected, line in zip((250, 250, 354), commands, strict=True):
            reply = await self.command(line)
            replies.append(reply)
            if reply[0] != expected and not (expected == 250 and 200 <= reply[0] < 300):
                break
        return replies

    def close(self) -> None:
        self.writer.close()


class _Turn:
    """One mail's place in a connection's queue, and its MAIL, RCPT and DATA commands."""

    __slots__ = ("commands", "ready", "written_on")

    def __init__(self, commands: bytes) -> None:
        self.commands = commands
        self.ready: asyncio.Future[None] | None = None
        # The session the commands were written on ahead of the turn, replies unread.
        self.written_on: _Session | None = None


class SmtpTransport:
    """One SMTP connection reused across mails, reopened when it breaks.

    Mails take turns in arrival order; one transaction is under way at a time, and with
    pipelining the next turn's commands go out with the message before it.
    """

    def __init__(self, target: SmtpTarget, *, timeout: float) -> None:
        self._target = target
        self._timeout = timeout
        self._turns: collections.deque[_Turn] = collections.deque()
        self._session: _Session | None = None
        self._local_hostname: str | None = None

    @property
    def queued(self) -> int:
        """Mails on this connection: the one under way and those waiting their turn."""
        return len(self._turns)

    @contextlib.asynccontextmanager
    async def _turn(self, turn: _Turn) -> AsyncIterator[None]:
        """Wait for ``turn``'s place at the head of the queue; leave it to the next."""
        self._turns.append(turn)
        try:
            if self._turns[0] is not turn:
                turn.ready = asyncio.get_running_loop().create_future()
                await turn.ready
            yield
        finally:
            first = self._turns[0] is turn
            self._turns.remove(turn)
            if turn.written_on is not None:
                turn.written_on.spoilt = True
            if first and self._turns:
                ready = self._turns[0].ready
                if ready is not None and not ready.done():
                    ready.set_result(None)

    def _write_ahead(self, session: _Session) -> bytes:
        """The next turn's commands, to go out after this message; none without pipelining."""
        if not session.pipelining or len(self._turns) < 2 or not self._turns[1].commands:
            return b""
        following = self._turns[1]
        following.written_on = session
        return following.commands

    def _tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        if not self._target.verify_tls:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    async def _ehlo(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> dict[str, str]:
        """Say EHLO; the extensions the server offers, keyword to parameters."""
        if self._local_hostname is None:
            # getfqdn may ask DNS: off the event loop, once.
            self._local_hostname = await asyncio.to_thread(socket.getfqdn)
        hostname = self._local_hostname.encode("ascii", "replace")
        writer.write(b"EHLO " + hostname + b"\r\n")
        code, text = await _read_reply(reader)
        if code in (500, 502):
            # A server that knows no ESMTP: plain HELO, no extensions.
            writer.write(b"HELO " + hostname + b"\r\n")
            code, text = await _read_reply(reader)
            text = text.split("\n", 1)[0]
        if code != 250:
            raise SessionRefusedError(code, text)
        offered = (line.partition(" ") for line in text.split("\n")[1:])
        return {keyword.upper(): params.upper() for keyword, _, params in offered}

    async def _open(self) -> _Session:
        target = self._target
        reader, writer = await asyncio.open_connection(
            target.host,
            target.port,
            ssl=self._tls_context() if target.implicit_tls else None,
        )
        try:
            code, text = await _read_reply(reader)
            if code != 220:
                raise SessionRefusedError(code, text)
            extensions = await self._ehlo(reader, writer)
            if target.starttls:
                if "STARTTLS" not in extensions:
                    raise SessionRefusedError(None, "the server does not offer STARTTLS")
                writer.write(b"STARTTLS\r\n")
                code, text = await _read_reply(reader)
                if code != 220:
                    raise SessionRefusedError(code, text)
                await writer.start_tls(self._tls_context(), server_hostname=target.host)
                extensions = await self._ehlo(reader, writer)
            if target.username is not None:
                await self._authenticate(reader, writer, extensions)
        except BaseException:
            writer.close()
            raise
        return _Session(reader, writer, extensions)

    async def _authenticate(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, offered: dict[str, str]
    ) -> None:
        """AUTH PLAIN, or LOGIN when that is all the server offers (always over TLS here
        or on a connection the operator chose)."""
        user = (self._target.username or "").encode()
        password = (self._target.password or "").encode()
        mechanisms = offered.get("AUTH", "").split()
        if "PLAIN" not in mechanisms and "LOGIN" in mechanisms:
            steps = [b"AUTH LOGIN\r\n", base64.b64encode(user) + b"\r\n"]
            steps.append(base64.b64encode(password) + b"\r\n")
        else:
            steps = [b"AUTH PLAIN " + base64.b64encode(b"\0" + user + b"\0" + password) + b"\r\n"]
        for step in steps:
            writer.write(step)
            code, text = await _read_reply(reader)
            if code == 235:
                return
            if code != 334:
                raise SessionRefusedError(code, text)
        raise SessionRefusedError(None, "authentication did not complete")

    async def _connected(self) -> tuple[_Session, bool]:
        """The open session (and ``True``), or a new one (and ``False``)."""
        if self._session is not None and self._session.usable:
            return self._session, True
        self._drop()
        async with asyncio.timeout(self._timeout):
            self._session = await self._open()
        return self._session, False

    def _drop(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    async def send(self, mail_from: str, rcpt_to: str, message: bytes) -> Reply:
        """One SMTP transaction; never raises for what the server or the network did."""
        try:
            sender, recipient = _command_address(mail_from), _command_address(rcpt_to)
        except ValueError as exc:
            return Reply(Verdict.PERMANENT, None, str(exc))
        payload = data_payload(message)
        turn = _Turn(b"MAIL FROM:" + sender + b"\r\nRCPT TO:" + recipient + b"\r\nDATA\r\n")
        async with self._turn(turn):
            for retry_on_fresh in (True, False):
                try:
                    session, reused = await self._connected()
                except SessionRefusedError as exc:
                    return Reply(Verdict.CONNECTION, exc.code, redact(exc.text))
                except _Failure as exc:
                    return Reply(Verdict.CONNECTION, None, redact(_describe(exc)))
                try:
                    async with asyncio.timeout(self._timeout):
                        replies = await session.envelope(turn)
                except _Failure as exc:
                    self._drop()
                    # A reused connection the server closed while idle, or one that broke
                    # under the mail before: nothing of this one was handed over, so it
                    # goes on a new connection instead of being deferred.
                    if reused and retry_on_fresh:
                        continue
                    return Reply(Verdict.CONNECTION, None, redact(_describe(exc)))
                except asyncio.CancelledError:
                    self._drop()  # half a transaction must not carry the next mail
                    raise
                try:
                    return await self._transfer(session, replies, payload)
                except asyncio.CancelledError:
                    self._drop()
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _transfer(
        self, session: _Session, replies: list[tuple[int, str]], payload: bytes
    ) -> Reply:
        """Send the message after a ``354``, or end the refused transaction cleanly."""
        refused = next((r for r in replies[:2] if not 200 <= r[0] < 300), None)
        if refused is None and replies[-1][0] != 354:
            refused = replies[-1]
        if refused is not None:
            await self._abandon(session, replies, refused[0])
            return reply_of(*refused)
        try:
            async with asyncio.timeout(self._timeout):
                code, text = await session.command(payload + self._write_ahead(session))
        except _Failure as exc:
            # The message may have reached the server: nobody can tell any more.
            self._drop()
            return Reply(Verdict.UNKNOWN, None, redact(_describe(exc)))
        return reply_of(code, text)

    async def _abandon(self, session: _Session, replies: list[tuple[int, str]], code: int) -> None:
        """Leave a refused transaction so the connection can carry the next mail."""
        if code == 421:
            self._drop()  # the server is closing the connection
            return
        try:
            async with asyncio.timeout(self._timeout):
                if len(replies) == 3 and replies[-1][0] == 354:
                    # DATA was accepted although MAIL or RCPT was not: end it empty.
                    await session.command(b".\r\n")
                await session.command(b"RSET\r\n")
        except _Failure:
            self._drop()

    async def close(self) -> None:
        """Say QUIT if connected, then close; safe twice."""
        async with self._turn(_Turn(b"")):
            session, self._session = self._session, None
            if session is None:
                return
            with contextlib.suppress(*_Failure):
                if session.usable:
                    async with asyncio.timeout(self._timeout):
                        await session.command(b"QUIT\r\n")
            session.close()
            with contextlib.suppress(*_Failure):
                await session.writer.wait_closed()


class SmtpPool:
    """Up to ``size`` persistent SMTP connections, each with up to ``depth`` mails queued.

    A mail goes to the connection with the fewest; the queue behind a transaction lets
    the next mail's commands leave with its message (see ``SmtpTransport``).
    """

    def __init__(self, target: SmtpTarget, *, timeout: float, size: int, depth: int = 3) -> None:
        self._all = [SmtpTransport(target, timeout=timeout) for _ in range(max(1, size))]
        self._room = asyncio.Semaphore(len(self._all) * max(1, depth))

    async def send(self, mail_from: str, rcpt_to: str, message: bytes) -> Reply:
        async with self._room:
            transport = min(self._all, key=_queued)
            return await transport.send(mail_from, rcpt_to, message)

    async def close(self) -> None:
        """QUIT every connection; safe twice."""
        await asyncio.gather(*(t.close() for t in self._all))


def _queued(transport: SmtpTransport) -> int:
    return transport.queued


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__
