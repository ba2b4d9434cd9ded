# ruff: noqa: RUF001 - Japanese text takes full-width colons and parentheses by design.
"""The footer every mail carries, whatever its template says.

Japan's Act on Specified Electronic Mail asks each mail to show the sender's name, postal
address and a contact point, and to say that the recipient may refuse further mail and
where; the unsubscribe URL makes that possible in one step.
"""

import html
import re
from dataclasses import dataclass

_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)
_BODY_START = re.compile(r"<body\b[^>]*>", re.IGNORECASE)
_RULE = "─" * 24


@dataclass(frozen=True, slots=True)
class Sender:
    """Who sends the mail, as the law wants it shown."""

    legal_name: str
    postal_address: str
    contact: str


def text_footer(sender: Sender, unsubscribe_url: str, mail_kind: str = "marketing") -> str:
    if mail_kind != "marketing":
        return (
            f"\n\n{_RULE}\n"
            f"送信者：{sender.legal_name}\n"
            f"所在地：{sender.postal_address}\n"
            f"お問い合わせ先：{sender.contact}\n"
            "\n"
            f"メール配信の設定：{unsubscribe_url}\n"
            f"Sent by {sender.legal_name}, {sender.postal_address}. Contact: {sender.contact}.\n"
            "Email preferences: at the URL above.\n"
        )
    return (
        f"\n\n{_RULE}\n"
        f"送信者：{sender.legal_name}\n"
        f"所在地：{sender.postal_address}\n"
        f"お問い合わせ先：{sender.contact}\n"
        "\n"
        "今後このメールの受信を希望されない場合は、下記のURLから配信停止（受信拒否）の"
        "お手続きができます。\n"
        f"{unsubscribe_url}\n"
        "\n"
        f"Sent by {sender.legal_name}, {sender.postal_address}. Contact: {sender.contact}.\n"
        "You may refuse further emails at any time: unsubscribe at the URL above.\n"
    )


def html_footer(sender: Sender, unsubscribe_url: str, mail_kind: str = "marketing") -> str:
    name = html.escape(sender.legal_name)
    address = html.escape(sender.postal_address)
    contact = html.escape(sender.contact)
    url = html.escape(unsubscribe_url)
    link = f'<a href="{url}" style="color:#666666;word-break:break-all;">{url}</a>'
    head = (
        '<div class="stepmail-footer" style="margin-top:32px;padding-top:16px;'
        'border-top:1px solid #dddddd;font-size:12px;line-height:1.6;color:#666666;">'
        f'<p lang="ja" style="margin:0 0 8px;">送信者：{name}<br>所在地：{address}<br>'
        f"お問い合わせ先：{contact}</p>"
    )
    if mail_kind != "marketing":
        return (
            head + f'<p lang="ja" style="margin:0 0 8px;">メール配信の設定：{link}</p>'
            f'<p lang="en" style="margin:0;">Sent by {name}, {address}. Contact: {contact}.<br>'
            f'<a href="{url}" style="color:#666666;">Email preferences</a>.</p></div>'
        )
    return (
        head + '<p lang="ja" style="margin:0 0 8px;">今後このメールの受信を希望されない場合は、'
        f"下記のURLから配信停止（受信拒否）のお手続きができます。<br>{link}</p>"
        f'<p lang="en" style="margin:0;">Sent by {name}, {address}. Contact: {contact}.<br>'
        f'You may refuse further emails at any time: <a href="{url}" style="color:#666666;">'
        "unsubscribe</a>.</p></div>"
    )


_MARK = "\x00stepmail-url\x00"


class Footer:
    """One sender's footer for one mail kind, built once; only the URL changes per mail."""

    def __init__(self, sender: Sender, mail_kind: str) -> None:
        self._text = text_footer(sender, _MARK, mail_kind).split(_MARK)
        self._html = html_footer(sender, _MARK, mail_kind).split(_MARK)

    def text(self, unsubscribe_url: str) -> str:
        return unsubscribe_url.join(self._text)

    def html(self, unsubscribe_url: str) -> str:
        return html.escape(unsubscribe_url).join(self._html)


def append_to_html(body: str, block: str) -> str:
    """Put ``block`` just before the last ``</body>``, or at the end when there is none."""
    # Searched backwards from the end, closing tag by closing tag: ``</body>`` is near it.
    end = len(body)
    while (at := body.rfind("</", 0, end)) >= 0:
        if _BODY_END.match(body, at):
            return body[:at] + block + body[at:]
        end = at
    return body + block


def preheader_html(preheader: str) -> str:
    """The preview line mail clients show after the subject, hidden in the body itself."""
    return (
        '<div style="display:none;font-size:1px;line-height:1px;max-height:0;max-width:0;'
        f'opacity:0;overflow:hidden;mso-hide:all;" aria-hidden="true">{preheader}</div>'
    )


def prepend_to_html(body: str, block: str) -> str:
    """Put ``block`` right after ``<body ...>``, or at the start when there is none."""
    start = _BODY_START.search(body)
    if start is None:
        return block + body
    return body[: start.end()] + block + body[start.end() :]
