# ruff: noqa: RUF001 - Japanese text takes full-width punctuation
"""Rendering a due step to MIME: Japanese round trip, tracking, unsubscribe, footer, safety."""

import re
from email.header import decode_header, make_header

import pytest

from stepmail_common.tracking import ClickToken, UnsubscribeToken
from stepmail_renderer.mime import MAX_ENCODED_WORD
from stepmail_renderer.rendering import MailKindMismatchError
from stepmail_renderer.sandbox import TemplateRenderError
from tests.unit.renderer.helpers import (
    ENCODED_WORD,
    SENDER,
    SIGNER,
    TRACKER,
    parse,
    parts,
    render,
    source,
    step,
)

HREF = re.compile(r'href="([^"]*)"', re.IGNORECASE)
TEXT_URL = re.compile(r"https?://[!#-&(-;=?-~]+")


def test_welcome_mail_parses_back_to_the_original_japanese():
    mail = render()
    msg = parse(mail)
    assert msg["Subject"] == "山田 太郎 様、ご登録ありがとうございます"
    to = msg["To"].addresses[0]
    assert (to.display_name, to.addr_spec) == ("山田 太郎", "taro@example.jp")
    sender = msg["From"].addresses[0]
    assert (sender.display_name, sender.addr_spec) == ("stepmail デモ", "hello@example.com")
    text, html = parts(mail)
    assert text.startswith("山田 太郎 様\n\nこのたびはご登録いただき、誠にありがとうございます。\n")
    assert "<p>山田 太郎 様</p>" in html
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    assert all(p.get_content_charset() == "utf-8" for p in msg.iter_parts())


def test_honorific_falls_back_to_okyakusama_without_a_name():
    mail = render(due=step(contact={"name": None}))
    msg = parse(mail)
    assert msg["Subject"] == "お客様 様、ご登録ありがとうございます"
    assert msg["To"].addresses[0].display_name == ""
    assert parts(mail)[0].startswith("お客様 様\n")


def test_the_message_is_7bit_with_crlf_only():
    raw = render().mime.encode("ascii")
    assert all(byte < 128 for byte in raw)
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert b"\r" not in raw.replace(b"\r\n", b"")
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))


@pytest.mark.parametrize(
    "name",
    [
        "山田 太郎",
        "髙橋 ①㈱ 〜 – 😀 " * 12,
        "株式会社ステップメール・デモンストレーション・エンタープライズ・ソリューションズ 営業本部",
        "a" * 60 + "あ",
        "O'Brien, Jr. (Sales)",
    ],
)
def test_every_encoded_word_is_at_most_75_characters(name):
    src = source("<p>x</p>", subject="{{ contact.name }} 様へ、長い件名のテスト：" + "あ" * 60)
    mail = render(src, step(contact={"name": name}))
    head = mail.mime.split("\r\n\r\n", 1)[0]
    words = ENCODED_WORD.findall(head)
    assert words
    assert max(len(w) for w in words) <= MAX_ENCODED_WORD
    for line in head.split("\r\n"):
        if ENCODED_WORD.search(line):
            assert len(line) <= 76, line
    msg = parse(mail)
    expected_name = " ".join(name.split())
    assert msg["Subject"] == f"{expected_name} 様へ、長い件名のテスト：" + "あ" * 60
    # RFC 2047 (6.2): white space between adjacent encoded-words is ignored. CPython's
    # address parser keeps it, so long names (several words) are checked by the RFC rule.
    to = re.search(r"^To: (.*?)\r\n(?! )", head + "\r\n", re.MULTILINE | re.DOTALL)
    assert to
    if name.isascii():
        assert msg["To"].addresses[0].display_name == expected_name
    else:
        decoded = str(make_header(decode_header(to.group(1))))
        assert decoded == f"{expected_name} <taro@example.jp>"
    assert msg["To"].addresses[0].addr_spec == "taro@example.jp"


@pytest.mark.parametrize(
    "name", ["山田 太郎", "ｽﾃｯﾌﾟ 髙橋 ①", "Jean-Luc Picard", "長谷川 良太郎（営業部）"]
)
def test_usual_names_are_one_encoded_word_and_parse_back_exactly(name):
    mail = render(due=step(contact={"name": name}))
    assert parse(mail)["To"].addresses[0].display_name == name
    to_line = next(line for line in mail.mime.split("\r\n") if line.startswith("To: "))
    assert len(ENCODED_WORD.findall(to_line)) == (0 if name.isascii() else 1)


def test_every_link_is_tracked_with_its_index_in_both_parts():
    src = source(
        '<a href="https://shop.example.com/a?x=1&amp;y=2">A</a>'
        "<a href='https://shop.example.com/b'>B</a>"
        '<A HREF="HTTPS://shop.example.com/a?x=1&amp;y=2">A again</A>'
        '<a href="mailto:help@example.com">mail</a>',
        text="B: https://shop.example.com/b。A: https://shop.example.com/a?x=1&y=2\n"
        "other（https://shop.example.com/c）\n",
    )
    mail = render(src)
    text, html = parts(mail)
    hrefs = HREF.findall(html)
    clicks = [h for h in hrefs if h.startswith(f"{TRACKER}/c/")]
    assert len(clicks) == 3
    decoded = [ClickToken.decode(SIGNER, h.removeprefix(f"{TRACKER}/c/")) for h in clicks]
    assert [(c.link_index, c.url) for c in decoded] == [
        (0, "https://shop.example.com/a?x=1&y=2"),
        (1, "https://shop.example.com/b"),
        (2, "https://shop.example.com/a?x=1&y=2"),
    ]
    assert decoded[0].mail.contact_id == "c-1"
    assert decoded[0].mail.message_id == step().message_id
    assert "mailto:help@example.com" in hrefs
    # Nothing but tracker links and the footer's unsubscribe link remain.
    for url in TEXT_URL.findall(text) + [h for h in hrefs if h.startswith("http")]:
        assert url.startswith((f"{TRACKER}/c/", f"{TRACKER}/u/")), url
    text_clicks = [
        ClickToken.decode(SIGNER, u.removeprefix(f"{TRACKER}/c/"))
        for u in TEXT_URL.findall(text)
        if u.startswith(f"{TRACKER}/c/")
    ]
    assert [(c.link_index, c.url) for c in text_clicks] == [
        (1, "https://shop.example.com/b"),
        (0, "https://shop.example.com/a?x=1&y=2"),
        (3, "https://shop.example.com/c"),
    ]
    assert "。A: " in text
    assert "）\n" in text
    assert mail.links == 4


def test_unsubscribe_link_is_in_both_parts_and_the_headers():
    mail = render()
    msg = parse(mail)
    text, html = parts(mail)
    header = msg["List-Unsubscribe"]
    found = re.fullmatch(r"<(https://[^>]+)>, <(mailto:[^>]+)>", header)
    assert found, header
    url = found.group(1)
    assert url.startswith(f"{TRACKER}/u/")
    token = UnsubscribeToken.decode(SIGNER, url.removeprefix(f"{TRACKER}/u/"))
    assert token.mail_kind == "marketing"
    assert token.mail.message_id == step().message_id
    assert found.group(2).startswith("mailto:unsubscribe@example.com?subject=")
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert url in text
    assert f'href="{url}"' in html


def test_headers_are_present_and_message_id_is_stable():
    first, second = parse(render()), parse(render())
    message_id = step().message_id
    assert first["Message-ID"] == f"<{message_id}@example.com>"
    assert second["Message-ID"] == first["Message-ID"]
    assert first["X-Stepmail-Message-Id"] == message_id
    assert first["MIME-Version"] == "1.0"
    assert first["Date"] == "Wed, 01 Apr 2026 09:00:00 +0900"


def test_footer_is_there_even_when_the_template_has_no_unsubscribe_link():
    mail = render(source("<html><body><p>本文</p></body></html>", text="本文\n"))
    text, html = parts(mail)
    for part in (text, html):
        assert SENDER.legal_name in part
        assert SENDER.postal_address in part
        assert "support@example.com / 03-0000-0000" in part
        assert "配信停止（受信拒否）" in part
        assert "You may refuse further emails" in part
        assert f"{TRACKER}/u/" in part
    assert html.index("stepmail-footer") < html.index("</body>")


def test_the_templates_own_unsubscribe_link_is_not_click_wrapped():
    mail = render(source('<a href="{{ unsubscribe_url }}">配信停止</a>'))
    hrefs = HREF.findall(parts(mail)[1])
    assert hrefs[0].startswith(f"{TRACKER}/u/")
    assert not any(h.startswith(f"{TRACKER}/c/") for h in hrefs)


def test_text_part_is_derived_from_html_when_the_template_has_none():
    mail = render(source('<p>こんにちは</p><p><a href="https://shop.example.com/x">見る</a></p>'))
    text, _ = parts(mail)
    assert text.startswith("こんにちは\n")
    click = re.search(rf"{TRACKER}/c/(\S+)", text)
    assert click
    assert ClickToken.decode(SIGNER, click.group(1)).url == "https://shop.example.com/x"


def test_preheader_is_hidden_at_the_start_of_the_body():
    mail = render(source("<body><p>本文</p></body>", preheader="プレヘッダー"))
    html = parts(mail)[1]
    assert re.search(r'<body><div style="display:none;[^"]*"[^>]*>プレヘッダー</div><p>本文', html)


def test_values_are_escaped_in_html_and_cannot_inject_headers():
    evil = "<script>alert(1)</script>\r\nBcc: victim@example.com"
    mail = render(
        source("<p>{{ contact.name }}</p>", subject="{{ contact.name }}"),
        step(contact={"name": evil}),
    )
    msg = parse(mail)
    assert msg["Bcc"] is None
    assert "<script>" not in parts(mail)[1]
    assert "&lt;script&gt;" in parts(mail)[1]
    assert msg["To"].addresses[0].addr_spec == "taro@example.jp"


def test_a_missing_variable_without_default_is_an_error():
    with pytest.raises(TemplateRenderError, match="plan_name"):
        render(source("<p>{{ event.properties.plan_name }}</p>"))


def test_a_marketing_template_cannot_go_out_as_transactional():
    with pytest.raises(MailKindMismatchError):
        render(source("<p>x</p>"), step(mail_kind="transactional"))


def test_transactional_template_keeps_its_kind_in_the_unsubscribe_token():
    mail = render(source("<p>x</p>", mail_kind="transactional"), step(mail_kind="transactional"))
    header = parse(mail)["List-Unsubscribe"]
    token = re.search(r"/u/([^>]+)>", header)
    assert token
    assert UnsubscribeToken.decode(SIGNER, token.group(1)).mail_kind == "transactional"
    # No RFC 8058 one-click on transactional mail; the footer links to the preferences.
    assert parse(mail)["List-Unsubscribe-Post"] is None
    text, html = parts(mail)
    assert "メール配信の設定" in text
    assert "Email preferences" in html


@pytest.mark.parametrize(
    "body",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ contact.__class__ }}",
        "{{ contact.attributes.update({'x': 1}) }}",
        "{{ 'a' * 100000000 }}",
        "{{ 9 ** 99999999 }}",
        "{{ range(100000000) | list }}",
        "{% for x in range(10) %}{{ x / 0 }}{% endfor %}",
    ],
)
def test_the_sandbox_fails_safely(body):
    with pytest.raises(TemplateRenderError):
        render(source(f"<p>{body}</p>"))
