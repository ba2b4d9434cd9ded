"""From a due step and a template to a complete MIME message."""

import hashlib
import re
from collections import OrderedDict
from dataclasses import dataclass
from email.utils import format_datetime, parseaddr
from zoneinfo import ZoneInfo

from jinja2 import Template

from stepmail_common.clock import Clock
from stepmail_common.errors import PermanentError
from stepmail_common.events import derived_id
from stepmail_common.signing import Signer
from stepmail_common.tracking import ClickToken, MailRef, UnsubscribeToken
from stepmail_renderer import footer, mime
from stepmail_renderer.htmltext import html_to_text
from stepmail_renderer.links import LinkTracker
from stepmail_renderer.sandbox import HTML_ENV, TEXT_ENV, compile_template, render
from stepmail_renderer.schemas import DEFAULT_TIME_ZONE, StepDue
from stepmail_renderer.templates import StoredTemplate, TemplateSource

_DOT_ATOM = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
_PRINTABLE = re.compile(r"^[!-~]+$")
_CACHE_SIZE = 256
_DATE_ZONE = ZoneInfo(DEFAULT_TIME_ZONE)


class MailKindMismatchError(PermanentError):
    """A marketing template due as transactional mail, which would dodge marketing opt-outs."""


class BadMessageIdError(PermanentError):
    """A message id that cannot travel in a mail header."""


@dataclass(frozen=True, slots=True)
class CompiledTemplate:
    """A stored template version with its parts compiled in the sandbox."""

    source: TemplateSource
    version: int
    subject: Template
    preheader: Template | None
    html: Template
    text: Template | None

    @classmethod
    def compile(cls, stored: StoredTemplate) -> "CompiledTemplate":
        src = stored.source
        where = f"template {src.id!r} v{stored.version}"
        return cls(
            source=src,
            version=stored.version,
            subject=compile_template(TEXT_ENV, src.subject, f"{where} subject"),
            preheader=(
                compile_template(HTML_ENV, src.preheader, f"{where} preheader")
                if src.preheader
                else None
            ),
            html=compile_template(HTML_ENV, src.html, f"{where} body.html.j2"),
            text=compile_template(TEXT_ENV, src.text, f"{where} body.txt.j2") if src.text else None,
        )


@dataclass(frozen=True, slots=True)
class RenderedMail:
    """A finished message and its envelope."""

    message_id: str
    mime: str
    mail_from: str
    rcpt_to: str
    links: int


class MailRenderer:
    """Renders mails: sandboxed templates, tracked links, the legal footer, 7-bit MIME."""

    def __init__(
        self,
        *,
        signer: Signer,
        tracker_public_url: str,
        sender: footer.Sender,
        mail_from: str,
        unsubscribe_mailbox: str,
        clock: Clock,
    ) -> None:
        self._signer = signer
        self._tracker = tracker_public_url.rstrip("/")
        self._sender = sender
        self._from_name, self._from_address = parseaddr(mail_from)
        self._domain = self._from_address.rpartition("@")[2]
        self._unsubscribe_mailbox = mime.check_address(unsubscribe_mailbox)
        self._clock = clock
        self._compiled: OrderedDict[tuple[str, int], CompiledTemplate] = OrderedDict()

    @property
    def envelope_from(self) -> str:
        return self._from_address

    def compiled(self, stored: StoredTemplate) -> CompiledTemplate:
        """The compiled form of a template version, kept for the next mail that needs it."""
        key = (stored.source.id, stored.version)
        found = self._compiled.get(key)
        if found is None:
            found = CompiledTemplate.compile(stored)
            self._compiled[key] = found
            if len(self._compiled) > _CACHE_SIZE:
                self._compiled.popitem(last=False)
        else:
            self._compiled.move_to_end(key)
        return found

    def _click_url(self, ref: MailRef, index: int, url: str) -> str:
        return f"{self._tracker}/c/{ClickToken(ref, index, url).encode(self._signer)}"

    def _message_id_header(self, message_id: str) -> str:
        local = message_id if _DOT_ATOM.match(message_id) else derived_id("msgid", message_id)
        return f"<{local}@{self._domain}>"

    def render(self, step: StepDue, template: CompiledTemplate) -> RenderedMail:
        if template.source.mail_kind == "marketing" and step.mail_kind != "marketing":
            raise MailKindMismatchError(
                f"template {template.source.id!r} is marketing mail but the step sends it as"
                f" {step.mail_kind}"
            )
        if not _PRINTABLE.match(step.message_id):
            raise BadMessageIdError("message_id must be printable ASCII without spaces")
        ref = step.mail_ref
        unsubscribe_token = UnsubscribeToken(ref, step.mail_kind).encode(self._signer)
        unsubscribe_url = f"{self._tracker}/u/{unsubscribe_token}"
        context = step.template_context(unsubscribe_url)
        where = f"template {template.source.id!r} v{template.version}"

        subject = mime.clean_phrase(render(template.subject, context, f"{where} subject"))
        if not subject:
            raise mime.MimeError(f"{where}: the subject rendered empty")
        html = render(template.html, context, f"{where} body.html.j2")
        text = (
            render(template.text, context, f"{where} body.txt.j2")
            if template.text is not None
            else html_to_text(html)
        )

        links = LinkTracker(
            lambda index, url: self._click_url(ref, index, url), keep={unsubscribe_url}
        )
        html = links.html(html)
        text = links.text(text)
        if template.preheader is not None:
            preheader = render(template.preheader, context, f"{where} preheader")
            html = footer.prepend_to_html(html, footer.preheader_html(preheader))
        html = footer.append_to_html(html, footer.html_footer(self._sender, unsubscribe_url))
        text = text.rstrip() + footer.text_footer(self._sender, unsubscribe_url)

        mailto = f"mailto:{self._unsubscribe_mailbox}?subject=unsubscribe%20{unsubscribe_token}"
        headers = [
            mime.mailbox("From", self._from_name, self._from_address),
            mime.mailbox("To", step.contact_name, step.email),
            mime.unstructured("Subject", subject),
            mime.plain("Date", format_datetime(self._clock.now().astimezone(_DATE_ZONE))),
            mime.plain("Message-ID", self._message_id_header(step.message_id)),
            mime.plain("X-Stepmail-Message-Id", step.message_id),
            mime.plain("List-Unsubscribe", f"<{unsubscribe_url}>,{mime.CRLF} <{mailto}>"),
            mime.plain("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
        ]
        boundary = "=_sm_" + hashlib.sha256(step.message_id.encode()).hexdigest()[:32]
        return RenderedMail(
            message_id=step.message_id,
            mime=mime.alternative(headers, text, html, boundary),
            mail_from=self._from_address,
            rcpt_to=step.email,
            links=links.count,
        )
