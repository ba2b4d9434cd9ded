"""SMTP delivery over one persistent connection, and what an answer means.

Every attempt ends in a ``Reply`` with a ``Verdict``: the mail was accepted, refused for
now (4xx), refused for good (5xx), could not be handed over (connection, before DATA),
or the connection broke while the message itself was in flight, after which nobody can
tell whether the server kept it (``UNKNOWN``).
"""

import asyncio
import enum
import re
import ssl
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

import aiosmtplib

_TRUE = frozenset({"1", "true", "yes", "on"})
_ADDRESS = re.compile(r"[^\s<>()\[\]\"',;:]+@[^\s<>()\[\]\"',;:]+")
MAX_REPLY_TEXT = 1000
_SESSION_REFUSED = (
    aiosmtplib.SMTPConnectError,
    aiosmtplib.SMTPAuthenticationError,
    aiosmtplib.SMTPHeloError,
)


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


class SmtpTransport:
    """One SMTP connection reused across mails, reopened when it breaks; one mail at a time."""

    def __init__(self, target: SmtpTarget, *, timeout: float) -> None:
        self._target = target
        self._timeout = timeout
        self._lock = asyncio.Lock()
        self._client: aiosmtplib.SMTP | None = None

    def _new_client(self) -> aiosmtplib.SMTP:
        target = self._target
        tls_context = None
        if (target.implicit_tls or target.starttls) and not target.verify_tls:
            tls_context = ssl.create_default_context()
            tls_context.check_hostname = False
            tls_context.verify_mode = ssl.CERT_NONE
        return aiosmtplib.SMTP(
            hostname=target.host,
            port=target.port,
            username=target.username,
            password=target.password,
            timeout=self._timeout,
            use_tls=target.implicit_tls,
            start_tls=target.starttls,
            tls_context=tls_context,
        )

    async def _connected(self) -> aiosmtplib.SMTP:
        if self._client is not None and self._client.is_connected:
            return self._client
        self._drop()
        client = self._new_client()
        await client.connect()
        self._client = client
        return client

    def _drop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def send(self, mail_from: str, rcpt_to: str, message: bytes) -> Reply:
        """One SMTP transaction; never raises for what the server or the network did."""
        async with self._lock:
            try:
                client = await self._connected()
                await client.mail(mail_from)
                await client.rcpt(rcpt_to)
            except aiosmtplib.SMTPResponseException as exc:
                if isinstance(exc, _SESSION_REFUSED):
                    # The server refused the session, not this mail.
                    self._drop()
                    return Reply(Verdict.CONNECTION, exc.code, redact(exc.message))
                await self._reset()
                return reply_of(exc.code, exc.message)
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                self._drop()
                return Reply(Verdict.CONNECTION, None, redact(_describe(exc)))
            try:
                response = await client.data(message)
            except aiosmtplib.SMTPResponseException as exc:
                await self._reset()
                return reply_of(exc.code, exc.message)
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                # The message may have reached the server: nobody can tell any more.
                self._drop()
                return Reply(Verdict.UNKNOWN, None, redact(_describe(exc)))
            return reply_of(response.code, response.message)

    async def _reset(self) -> None:
        """Abort the transaction so the connection can carry the next mail."""
        if self._client is None or not self._client.is_connected:
            return
        try:
            await self._client.rset()
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            self._drop()

    async def close(self) -> None:
        """Say QUIT if connected, then close; safe twice."""
        async with self._lock:
            client, self._client = self._client, None
            if client is None:
                return
            if client.is_connected:
                try:
                    await client.quit()
                except (aiosmtplib.SMTPException, OSError, TimeoutError):
                    client.close()
            else:
                client.close()


class SmtpPool:
    """Up to ``size`` persistent SMTP connections, each carrying one transaction at a time."""

    def __init__(self, target: SmtpTarget, *, timeout: float, size: int) -> None:
        self._idle: asyncio.Queue[SmtpTransport] = asyncio.Queue()
        self._all = [SmtpTransport(target, timeout=timeout) for _ in range(max(1, size))]
        for transport in self._all:
            self._idle.put_nowait(transport)

    async def send(self, mail_from: str, rcpt_to: str, message: bytes) -> Reply:
        transport = await self._idle.get()
        try:
            return await transport.send(mail_from, rcpt_to, message)
        finally:
            self._idle.put_nowait(transport)

    async def close(self) -> None:
        """QUIT every connection; safe twice."""
        await asyncio.gather(*(t.close() for t in self._all))


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__
