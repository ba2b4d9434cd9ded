"""Building blocks of the renderer's unit tests."""

import email
import email.policy
import re
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from stepmail_common.clock import ManualClock
from stepmail_common.signing import Signer, parse_keys
from stepmail_renderer.footer import Sender
from stepmail_renderer.rendering import CompiledTemplate, MailRenderer, RenderedMail
from stepmail_renderer.schemas import StepDue
from stepmail_renderer.senders import SenderBook, SenderProfile
from stepmail_renderer.templates import StoredTemplate, TemplateSource, load_template

REPO = Path(__file__).resolve().parents[3]
WELCOME_DIR = REPO / "examples" / "templates" / "welcome"
TRACKER = "https://t.example.jp"
SIGNER = Signer.from_spec("k1:unit-test-secret-0123456789")
SENDER = Sender(
    legal_name="ステップメール デモ株式会社",
    postal_address="〒100-0005 東京都千代田区丸の内1-1-1 デモビル 10F",
    contact="support@example.com / 03-0000-0000",
)
NOW = datetime(2026, 4, 1, 0, 0, tzinfo=UTC)
ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[BbQq]\?[^?\s]*\?=")


KEYS = parse_keys("k1:unit-test-secret-0123456789")
DEFAULT_SENDER = SenderProfile(
    name="default",
    mail_from="stepmail デモ <hello@example.com>",
    legal_name=SENDER.legal_name,
    postal_address=SENDER.postal_address,
    contact=SENDER.contact,
    list_unsubscribe_mailto="unsubscribe@example.com",
)


def renderer(
    *named: SenderProfile, default: SenderProfile = DEFAULT_SENDER, keys: dict[str, bytes] = KEYS
) -> MailRenderer:
    return MailRenderer(
        signing_keys=keys,
        tracker_public_url=TRACKER,
        senders=SenderBook(default, {s.name: s for s in named}),
        clock=ManualClock(NOW),
    )


def step(**overrides: Any) -> StepDue:
    contact = {"id": "c-1", "email": "taro@example.jp", "name": "山田 太郎"}
    contact.update(overrides.pop("contact", {}))
    data: dict[str, Any] = {
        "message_id": "3f0c8a4e-1111-5222-8333-944455556666",
        "enrollment_id": "enr-1",
        "scenario": {"id": "welcome", "version": 1},
        "step": {"id": "welcome", "index": 0},
        "template": "welcome",
        "mail_kind": "marketing",
        "contact": {k: v for k, v in contact.items() if v is not None},
        "event": {"name": "signup", "properties": {"plan": "free"}},
        "due_at": NOW.isoformat(),
    }
    data.update(overrides)
    return StepDue.from_data(data)


def source(
    html: str,
    text: str | None = None,
    subject: str = "件名",
    preheader: str | None = None,
    mail_kind: str = "marketing",
    **extra: Any,
) -> TemplateSource:
    return TemplateSource("t", mail_kind, subject, preheader, html, text, **extra)


def render(
    src: TemplateSource | None = None,
    due: StepDue | None = None,
    with_renderer: MailRenderer | None = None,
) -> RenderedMail:
    src = src or load_template(WELCOME_DIR)
    compiled = CompiledTemplate.compile(StoredTemplate(src, 1))
    return (with_renderer or renderer()).render(due or step(), compiled)


def parse(mail: RenderedMail) -> EmailMessage:
    msg = email.message_from_bytes(mail.mime.encode("ascii"), policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def parts(mail: RenderedMail) -> tuple[str, str]:
    msg = parse(mail)
    text = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert text is not None
    assert html is not None
    # Base64 bodies carry the canonical CRLF line ends; compare as Python text.
    return tuple(str(p.get_content()).replace("\r\n", "\n") for p in (text, html))  # type: ignore[return-value]
