"""From a due step and a template to a complete MIME message."""

import hashlib
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import format_datetime
from html import escape
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from jinja2 import Template

from stepmail_common.clock import Clock
from stepmail_common.errors import PermanentError
from stepmail_common.events import derived_id
from stepmail_renderer import footer, iso2022jp, mime
from stepmail_renderer.htmltext import html_to_text
from stepmail_renderer.links import LinkTracker, with_utm
from stepmail_renderer.sandbox import compile_template, environment, render
from stepmail_renderer.schemas import DEFAULT_TIME_ZONE, StepDue
from stepmail_renderer.senders import SenderBook, SenderProfile
from stepmail_renderer.templates import StoredTemplate, TemplateSource
from stepmail_renderer.tokens import TokenSigner, open_token, packed

_DOT_ATOM = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
_PRINTABLE = re.compile(r"^[!-~]+$")
_META_CHARSET = re.compile(r"(<meta\b[^>]*charset=[\"']?)utf-8", re.IGNORECASE)
_CACHE_SIZE = 256
_DATE_ZONE = ZoneInfo(DEFAULT_TIME_ZONE)
_ONE_CLICK = mime.plain("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")
_PIXEL = (
    '<img src="{}" width="1" height="1" alt="" style="display:block;width:1px;height:1px;'
    'border:0;" aria-hidden="true">'
)


def _declare_jis(html: str, octets: bytes) -> tuple[str, bytes]:
    """The HTML with its meta charset made ISO-2022-JP, and its octets to match.

    The charset is replaced in the text as always; the octets are not encoded again. A
    boundary after an ASCII character ("utf-8" ends in one, "iso-2022-jp" too) finds the
    encoder in ASCII with nothing pending, so the octets of what follows the last
    replacement are the same before and after it: only the head up to there is encoded.
    """
    ends: list[int] = []

    def declare(match: re.Match[str]) -> str:
        ends.append(match.end())
        return f"{match[1]}iso-2022-jp"

    declared = _META_CHARSET.sub(declare, html)
    if not ends:
        return html, octets
    tail = len(html) - ends[-1]
    old_head = html[: ends[-1]].encode(iso2022jp.CODEC)
    new_head = declared[: len(declared) - tail].encode(iso2022jp.CODEC)
    return declared, new_head + octets[len(old_head) :]


class MailKindMismatchError(PermanentError):
    """A marketing template due as transactional mail, which would dodge marketing opt-outs."""


class BadMessageIdError(PermanentError):
    """A message id that cannot travel in a mail header."""


@dataclass(frozen=True, slots=True)
class Layouts:
    """The layouts and partials templates may extend or include, at fixed versions."""

    sources: Mapping[str, str]
    versions: tuple[tuple[str, int], ...] = ()

    @classmethod
    def empty(cls) -> "Layouts":
        return cls({}, ())

    @classmethod
    def stored(cls, rows: Mapping[str, tuple[int, str]]) -> "Layouts":
        """The layouts as the repository gives them: name → (version, source)."""
        return cls(
            {name: source for name, (_, source) in rows.items()},
            tuple(sorted((name, version) for name, (version, _) in rows.items())),
        )


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
    def compile(cls, stored: StoredTemplate, layouts: Layouts | None = None) -> "CompiledTemplate":
        src = stored.source
        where = f"template {src.id!r} v{stored.version}"
        sources = layouts.sources if layouts else {}
        html_env = environment(autoescape=True, layouts=sources)
        text_env = environment(autoescape=False, layouts=sources)
        return cls(
            source=src,
            version=stored.version,
            subject=compile_template(text_env, src.subject, f"{where} subject"),
            preheader=(
                compile_template(html_env, src.preheader, f"{where} preheader")
                if src.preheader
                else None
            ),
            html=compile_template(html_env, src.html, f"{where} body.html.j2"),
            text=(
                compile_template(text_env, src.text, f"{where} body.txt.j2") if src.text else None
            ),
        )


@dataclass(frozen=True, slots=True)
class RenderedMail:
    """A finished message and its envelope, with its parts for previews."""

    message_id: str
    mime: str
    mail_from: str
    rcpt_to: str
    links: int
    subject: str = ""
    html: str = ""
    text: str = ""


class _SenderParts:
    """What a sender puts in every mail, prepared once."""

    def __init__(self, sender: SenderProfile) -> None:
        self.profile = sender
        self.from_address = sender.from_address
        self.domain = sender.domain
        self.mailto = f"mailto:{sender.unsubscribe_mailbox}?subject=unsubscribe%20"
        self.jis = sender.charset == iso2022jp.CODEC
        legal = footer.Sender(sender.legal_name, sender.postal_address, sender.contact)
        if self.jis:
            self.from_line = mime.jis_mailbox(
                "From",
                iso2022jp.to_jis_text(sender.from_name, f"sender {sender.name!r}"),
                sender.from_address,
            )
        else:
            self.from_line = mime.mailbox("From", sender.from_name, sender.from_address)
        self.footers = {kind: footer.Footer(legal, kind) for kind in ("marketing", "transactional")}
        self.context = {
            "legal_name": sender.legal_name,
            "postal_address": sender.postal_address,
            "contact": sender.contact,
        }
        self._utm: dict[tuple[str, str, str], tuple[tuple[str, str], ...]] = {}

    def utm(self, scenario: str, step: str, template: str) -> tuple[tuple[str, str], ...]:
        """The sender's UTM parameters for a step, filled in once per step."""
        key = (scenario, step, template)
        found = self._utm.get(key)
        if found is None:
            if len(self._utm) >= _CACHE_SIZE:
                self._utm.clear()
            found = self._utm[key] = self.profile.utm_for(scenario, step, template)
        return found


class MailRenderer:
    """Renders mails: sandboxed templates, tracked links, the legal footer, 7-bit MIME."""

    def __init__(
        self,
        *,
        signing_keys: Mapping[str, bytes],
        tracker_public_url: str,
        senders: SenderBook,
        clock: Clock,
    ) -> None:
        self._signer = TokenSigner(signing_keys)
        self._tracker = tracker_public_url.rstrip("/")
        self._click_base = f"{self._tracker}/c/"
        self._click_base_html = escape(self._click_base)
        self._senders = senders
        self._clock = clock
        self._compiled: OrderedDict[tuple[Any, ...], CompiledTemplate] = OrderedDict()
        self._sender_parts: dict[str, _SenderParts] = {}
        self._date: tuple[int, str] = (-1, "")

    @property
    def senders(self) -> SenderBook:
        return self._senders

    def compiled(self, stored: StoredTemplate, layouts: Layouts | None = None) -> CompiledTemplate:
        """The compiled form of a template version, kept for the next mail that needs it."""
        key = (stored.source.id, stored.version, layouts.versions if layouts else ())
        found = self._compiled.get(key)
        if found is None:
            found = CompiledTemplate.compile(stored, layouts)
            self._compiled[key] = found
            if len(self._compiled) > _CACHE_SIZE:
                self._compiled.popitem(last=False)
        else:
            self._compiled.move_to_end(key)
        return found

    def _parts_for(self, name: str | None) -> _SenderParts:
        profile = self._senders.get(name)
        found = self._sender_parts.get(profile.name)
        if found is None:
            found = self._sender_parts[profile.name] = _SenderParts(profile)
        return found

    def _date_header(self) -> str:
        now = self._clock.now()
        second = int(now.timestamp())
        if self._date[0] != second:
            value = format_datetime(now.astimezone(_DATE_ZONE).replace(microsecond=0))
            self._date = (second, mime.plain("Date", value))
        return self._date[1]

    def _message_id_header(self, message_id: str, domain: str) -> str:
        local = message_id if _DOT_ATOM.match(message_id) else derived_id("msgid", message_id)
        return f"<{local}@{domain}>"

    def render(
        self,
        step: StepDue,
        template: CompiledTemplate,
        extra_headers: tuple[str, ...] = (),
    ) -> RenderedMail:
        src = template.source
        if src.mail_kind == "marketing" and step.mail_kind != "marketing":
            raise MailKindMismatchError(
                f"template {src.id!r} is marketing mail but the step sends it as {step.mail_kind}"
            )
        if not _PRINTABLE.match(step.message_id):
            raise BadMessageIdError("message_id must be printable ASCII without spaces")
        sender = self._parts_for(src.sender)
        profile = sender.profile
        marketing = step.mail_kind == "marketing"
        ref = packed(step.mail_ref)
        signer = self._signer
        unsubscribe_token = signer.sign({"k": "u", **ref, "mk": step.mail_kind})
        unsubscribe_url = f"{self._tracker}/u/{unsubscribe_token}"
        context = step.template_context(unsubscribe_url, sender.context)
        where = f"template {src.id!r} v{template.version}"

        subject = mime.clean_phrase(render(template.subject, context, f"{where} subject"))
        if not subject:
            raise mime.MimeError(f"{where}: the subject rendered empty")
        html = render(template.html, context, f"{where} body.html.j2")
        text = (
            render(template.text, context, f"{where} body.txt.j2")
            if template.text is not None
            else html_to_text(html)
        )

        utm = sender.utm(step.scenario_id, step.step_id, src.id) if profile.utm else ()
        click_base, click_base_html = self._click_base, self._click_base_html

        tokens: dict[tuple[int, str], str] = {}
        # A click token's payload is {"k": "c", **ref, "i": index, "u": url}: its JSON is
        # this mail's prefix, then the index and URL, exactly as orjson writes the dict.
        clicks = signer.with_prefix(orjson.dumps({"k": "c", **ref})[:-1] + b',"i":')

        def click_token(index: int, url: str) -> str:
            # The text part repeats the HTML's links: one token per position and URL.
            key = (index, url)
            found = tokens.get(key)
            if found is None:
                target = with_utm(url, utm) if utm else url
                found = tokens[key] = clicks.sign(b'%d,"u":%b}' % (index, orjson.dumps(target)))
            return found

        def wrap(index: int, url: str) -> str:
            return click_base + click_token(index, url)

        def wrap_html(index: int, url: str) -> str:
            return click_base_html + click_token(index, url)

        links = LinkTracker(
            wrap, keep={unsubscribe_url}, wrap_html=wrap_html if signer.html_safe else None
        )
        html = links.html(html)
        text = links.text(text)
        if template.preheader is not None:
            preheader = render(template.preheader, context, f"{where} preheader")
            html = footer.prepend_to_html(html, footer.preheader_html(preheader))
        mail_footer = sender.footers["marketing" if marketing else "transactional"]
        closing = mail_footer.html(unsubscribe_url)
        if profile.open_tracking:
            closing += _PIXEL.format(f"{self._tracker}/o/{open_token(signer, ref)}")
        html = footer.append_to_html(html, closing)
        text = text.rstrip() + mail_footer.text(unsubscribe_url)

        to_name = step.contact_name
        jis_octets = None
        if sender.jis:
            jis = iso2022jp.to_jis_text
            subject = jis(subject, f"{where} subject")
            to_name = jis(to_name, "the contact's name") if to_name else None
            text, text_octets = iso2022jp.encoded_jis_text(text, f"{where} text")
            html, html_octets = _declare_jis(*iso2022jp.encoded_jis_text(html, f"{where} html"))
            jis_octets = (text_octets, html_octets)
            subject_line = mime.jis_unstructured("Subject", subject)
            to_line = mime.jis_mailbox("To", to_name, step.email)
        else:
            subject_line = mime.unstructured("Subject", subject)
            to_line = mime.mailbox("To", to_name, step.email)
        headers = [
            sender.from_line,
            to_line,
            subject_line,
            self._date_header(),
            mime.plain("Message-ID", self._message_id_header(step.message_id, sender.domain)),
            mime.plain("X-Stepmail-Message-Id", step.message_id),
        ]
        mailto = sender.mailto + unsubscribe_token
        headers.append(
            mime.plain("List-Unsubscribe", f"<{unsubscribe_url}>,{mime.CRLF} <{mailto}>")
        )
        if marketing:
            # RFC 8058 one-click is for bulk (marketing) mail. A transactional mail (a
            # receipt, a password reset) offers its preferences page instead: a click
            # there never silently stops the mails a customer's own actions ask for.
            headers.append(_ONE_CLICK)
        headers.extend(extra_headers)
        boundary = "=_sm_" + hashlib.sha256(step.message_id.encode()).hexdigest()[:32]
        return RenderedMail(
            message_id=step.message_id,
            mime=mime.alternative(
                headers,
                text,
                html,
                boundary,
                iso2022jp.CODEC if sender.jis else "utf-8",
                jis_octets,
            ),
            mail_from=sender.from_address,
            rcpt_to=step.email,
            links=links.count,
            subject=subject,
            html=html,
            text=text,
        )
