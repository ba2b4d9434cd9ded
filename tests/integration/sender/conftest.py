"""The sender's integration fixtures: its schema on a real Postgres, a scripted SMTP server."""

import asyncio
import email
import email.policy
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from stepmail_common.clock import SystemClock
from stepmail_common.db import create_pool, migrate
from stepmail_sender.delivery import Deliverer, RetryPolicy
from stepmail_sender.domain import RenderedMail
from stepmail_sender.ledger import Ledger
from stepmail_sender.owners import OwnerLease
from stepmail_sender.smtp import SmtpTransport, parse_smtp_url

SCHEMA = "sender"
EVENTS_TOPIC = "stepmail.delivery-events"


@dataclass
class Received:
    mail_from: str
    rcpt_to: list[str]
    message_id: str | None
    smtpapi: str | None = None


@dataclass
class ScriptedSmtp:
    """A real SMTP server in the test's loop that answers RCPT from a per-recipient script."""

    rcpt_script: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    drop_in_data: set[str] = field(default_factory=set)
    received: list[Received] = field(default_factory=list)
    rcpt_seen: list[str] = field(default_factory=list)
    url: str = ""

    async def handle_RCPT(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        self.rcpt_seen.append(address)
        script = self.rcpt_script.get(address)
        if script:
            answer = script.pop(0)
            if not answer.startswith("250"):
                return answer
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        assert isinstance(envelope.content, bytes)
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.received.append(
            Received(
                str(envelope.mail_from),
                list(envelope.rcpt_tos),
                parsed.get("X-Stepmail-Message-Id"),
                parsed.get("X-SMTPAPI"),
            )
        )
        if set(envelope.rcpt_tos) & self.drop_in_data:
            # The message arrived, but the client never learns it: the ambiguous case (once).
            self.drop_in_data -= set(envelope.rcpt_tos)
            assert isinstance(server.transport, asyncio.Transport)
            server.transport.abort()
        return "250 2.0.0 Ok: queued"

    def count(self, message_id: str) -> int:
        return sum(1 for r in self.received if r.message_id == message_id)


@pytest.fixture
async def smtp_server() -> AsyncIterator[ScriptedSmtp]:
    scripted = ScriptedSmtp()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(scripted, hostname="smtp.test", ident="scripted"), "127.0.0.1", 0
    )
    port = server.sockets[0].getsockname()[1]
    scripted.url = f"smtp://127.0.0.1:{port}"
    try:
        yield scripted
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def sender_pool(database_url: str) -> AsyncIterator[Any]:
    pool = await create_pool(database_url, SCHEMA, max_size=5, generic_plans=True)
    try:
        await migrate(pool, SCHEMA, "stepmail_sender")
        yield pool
    finally:
        await pool.close()


SenderFactory = Callable[..., Any]


@pytest.fixture
async def make_deliverer(
    database_url: str, sender_pool: Any, smtp_server: ScriptedSmtp
) -> AsyncIterator[SenderFactory]:
    """Factory of deliverers, each like one sender process (own owner lock, own connection)."""
    opened: list[Any] = []

    async def make(policy: str = "hold", **kwargs: Any) -> Deliverer:
        lease = OwnerLease(database_url, SCHEMA)
        await lease.start()
        transport = SmtpTransport(parse_smtp_url(smtp_server.url), timeout=5)
        opened.extend([lease, transport])
        kwargs.setdefault("retry", RetryPolicy(base=0.05, cap=0.2, max_age=30))
        return Deliverer(
            Ledger(sender_pool, EVENTS_TOPIC),
            transport,
            SystemClock(),
            owner=lease.owner,
            policy=policy,  # type: ignore[arg-type]
            **kwargs,
        )

    try:
        yield make
    finally:
        for resource in reversed(opened):
            await resource.close()


def rendered_data(
    message_id: str, rcpt_to: str = "someone@example.org", contact_id: str = "contact-1"
) -> dict[str, Any]:
    return {
        "message_id": message_id,
        "enrollment_id": "enr-1",
        "scenario": {"id": "welcome", "version": 1},
        "step": {"id": "day0", "index": 0},
        "contact_id": contact_id,
        "mail_kind": "marketing",
        "envelope": {"mail_from": "news@example.com", "rcpt_to": rcpt_to},
        "mime": (
            f"From: news@example.com\r\nTo: {rcpt_to}\r\nSubject: Welcome\r\n"
            f"Message-ID: <{message_id}@example.com>\r\nX-Stepmail-Message-Id: {message_id}\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
            "Hello,\r\n.leading dot survives\r\n"
        ),
        "rendered_at": datetime.now(UTC).isoformat(),
    }


def rendered(message_id: str, **kwargs: str) -> RenderedMail:
    return RenderedMail.from_data(rendered_data(message_id, **kwargs))
