# ruff: noqa: RUF001 - Japanese text takes full-width punctuation
"""Filters, save-time validation, per-sender settings, UTM, open pixel and ISO-2022-JP."""

import email
import email.policy
import re
from datetime import UTC, date, datetime
from decimal import Decimal
from email.header import decode_header, make_header

import pytest

from stepmail_common.tracking import ClickToken
from stepmail_renderer.iso2022jp import UnencodableTextError, to_jis_text
from stepmail_renderer.rendering import CompiledTemplate
from stepmail_renderer.sandbox import TemplateRenderError
from stepmail_renderer.senders import SenderBook, SenderConfigError, SenderProfile
from stepmail_renderer.templates import StoredTemplate
from stepmail_renderer.tokens import decode_open_token
from stepmail_renderer.validation import validate_template
from tests.unit.renderer.helpers import (
    DEFAULT_SENDER,
    ENCODED_WORD,
    SIGNER,
    TRACKER,
    parts,
    render,
    renderer,
    source,
    step,
)

UNSUB = '<a href="{{ unsubscribe_url }}">停止</a>'


def _html(body: str, **step_overrides) -> str:
    return parts(render(source(f"<p>{body}</p>"), step(**step_overrides)))[1]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-23", "2026年11月23日(月)"),
        ("2026-11-22T15:30:00+00:00", "2026年11月23日(月)"),  # 00:30 in Tokyo
        ("2026-11-23T10:00:00", "2026年11月23日(月)"),  # naive: the contact's local time
    ],
)
def test_jdate_in_the_contacts_time_zone(value, expected):
    html = _html(
        "{{ event.properties.d | jdate }}", event={"name": "x", "properties": {"d": value}}
    )
    assert f"<p>{expected}</p>" in html


def test_jdate_follows_the_contact_zone_and_jdatetime_shows_the_time():
    props = {"name": "x", "properties": {"d": "2026-11-22T15:30:00+00:00"}}
    ny = _html(
        "{{ event.properties.d | jdate }} {{ event.properties.d | jdatetime }}",
        event=props,
        contact={"time_zone": "America/New_York"},
    )
    assert "2026年11月22日(日) 2026年11月22日(日) 10:30" in ny
    tokyo = _html("{{ event.properties.d | jdatetime }}", event=props)
    assert "2026年11月23日(月) 0:30" in tokyo


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (12800, "¥12,800"),
        ("12800", "¥12,800"),
        ("12,800", "¥12,800"),
        (Decimal("1280.5"), "¥1,281"),
        (1280.4, "¥1,280"),
        (-1200, "-¥1,200"),
        (0, "¥0"),
    ],
)
def test_yen(value, expected):
    from stepmail_renderer.filters import yen

    assert yen(value) == expected


def test_yen_refuses_what_is_not_an_amount():
    with pytest.raises(TemplateRenderError, match="yen"):
        _html("{{ 'abc' | yen }}")


def test_honorific_with_and_without_name_and_in_english():
    assert "<p>山田 太郎 様</p>" in _html("{{ contact | honorific }}")
    assert "<p>お客様</p>" in _html("{{ contact | honorific }}", contact={"name": None})
    assert "<p>Dear Jane Doe</p>" in _html(
        "{{ contact | honorific }}", contact={"name": "Jane Doe", "locale": "en-US"}
    )
    assert "<p>山田 さん</p>" in _html("{{ '山田' | honorific('さん') }}")


def test_choose_picks_a_block_by_attribute_with_a_default():
    body = (
        "{% set mfg %}<b>製造業の方へ</b>{% endset %}"
        "{{ contact.attributes.industry | choose({'manufacturing': mfg}, default='一般') }}"
    )
    assert "<b>製造業の方へ</b>" in _html(
        body, contact={"attributes": {"industry": "manufacturing"}}
    )
    assert "<p>一般</p>" in _html(body, contact={"attributes": {"industry": "retail"}})
    assert "<p>一般</p>" in _html(body)


def test_a_missing_dict_key_is_an_error_not_a_dict_method():
    with pytest.raises(TemplateRenderError, match="items"):
        _html("{% for i in event.properties.items %}{{ i }}{% endfor %}")
    assert "<p>a=1</p>" in _html(
        "{% for k, v in event.properties | items %}{{ k }}={{ v }}{% endfor %}",
        event={"name": "x", "properties": {"a": 1}},
    )


def _issues(**kw):
    defaults = {"html": f"<p>本文</p>{UNSUB}"}
    return validate_template(source(**{**defaults, **kw}), {}, SenderBook(DEFAULT_SENDER, {}))


def test_validation_accepts_a_good_template_and_names_problems():
    assert _issues() == []
    assert _issues(html="{{ event.properties.items }}" + UNSUB, event_properties=("items",)) == []
    syntax = _issues(html="<p>\n{% if %}</p>" + UNSUB)
    assert syntax[0].field == "html"
    assert syntax[0].detail.startswith("line 2:")
    typo = _issues(html="<p>\n\n{{ contact.nmae }}</p>" + UNSUB)
    assert [(i.field, i.detail.split(":")[0]) for i in typo] == [("html", "line 3")]
    undeclared = _issues(html="{{ contact.attributes.plan }}" + UNSUB)
    assert "contact_attributes" in undeclared[0].detail
    unknown_name = _issues(subject="{{ coupon }}")
    assert unknown_name[0].field == "subject"
    no_unsub = _issues(html="<p>本文</p>")
    assert "unsubscribe" in no_unsub[0].detail
    assert _issues(html="<p>本文</p>", mail_kind="transactional") == []
    assert _issues(sender="elsewhere")[0].field == "sender"
    missing_layout = _issues(html='{% extends "layouts/x.html.j2" %}')
    assert "layouts/x.html.j2" in missing_layout[0].detail


def test_utm_parameters_are_added_to_tracked_links_and_existing_ones_kept():
    shop = SenderProfile(
        name="shop",
        mail_from="Shop <shop@example.com>",
        legal_name="株式会社ショップ",
        postal_address="東京都",
        contact="support@example.com",
        utm=(("utm_source", "stepmail"), ("utm_campaign", "{scenario}-{step}")),
    )
    src = source(
        '<a href="https://s.example.com/a?utm_source=own#top">a</a>'
        '<a href="https://s.example.com/b">b</a>',
        sender="shop",
    )
    html = parts(render(src, with_renderer=renderer(shop)))[1]
    urls = [
        ClickToken.decode(SIGNER, h.removeprefix(f"{TRACKER}/c/")).url
        for h in re.findall(r'href="([^"]+)"', html)
        if "/c/" in h
    ]
    assert urls == [
        "https://s.example.com/a?utm_source=own&utm_campaign=welcome-welcome#top",
        "https://s.example.com/b?utm_source=stepmail&utm_campaign=welcome-welcome",
    ]
    plain = parts(render(source('<a href="https://s.example.com/b">b</a>')))[1]
    token = re.search(rf"{TRACKER}/c/([^\"]+)", plain)
    assert token
    assert ClickToken.decode(SIGNER, token.group(1)).url == "https://s.example.com/b"


def test_the_open_pixel_carries_the_mail_reference():
    html = parts(render())[1]
    pixel = re.search(rf'<img src="{TRACKER}/o/([^"]+)"', html)
    assert pixel
    ref = decode_open_token(SIGNER, pixel.group(1))
    assert ref.message_id == step().message_id
    assert html.index("/o/") > html.index("stepmail-footer")


def test_a_bad_sender_configuration_is_refused():
    with pytest.raises(SenderConfigError, match="charset"):
        SenderProfile("x", "a <a@example.com>", "n", "p", "c", charset="shift_jis")
    with pytest.raises(SenderConfigError, match="unknown"):
        SenderProfile("x", "a <a@example.com>", "n", "p", "c", utm=(("utm_x", "{who}"),))


def test_iso_2022_jp_maps_what_it_cannot_encode_and_refuses_the_rest():
    assert to_jis_text("①㈱髙橋～– ｶﾞｲﾄﾞ", "t") == "(1)(株)高橋〜- ガイド"
    with pytest.raises(UnencodableTextError, match=r"U\+1F600"):
        to_jis_text("😀", "t")


def _jis_renderer():
    jis = SenderProfile(
        name="mobile",
        mail_from="髙橋商店 <shop@example.com>",
        legal_name="㈱髙橋商店",
        postal_address="東京都千代田区丸の内１－１－１",
        contact="03-0000-0000",
        charset="iso-2022-jp",
    )
    return renderer(jis)


def test_iso_2022_jp_mail_is_7bit_and_parses_back():
    src = source(
        '<html><head><meta charset="utf-8"></head><body><p>{{ contact.name }} 様 ①～</p>'
        '<a href="https://s.example.com/x">見る</a>' + UNSUB + "</body></html>",
        subject="{{ contact.name }} 様、セールのお知らせ ㈱" + "あ" * 40,
        sender="mobile",
    )
    mail = render(src, step(contact={"name": "髙橋 花子"}), with_renderer=_jis_renderer())
    raw = mail.mime.encode("ascii")
    assert all(b < 128 for b in raw)
    assert b"\n" not in raw.replace(b"\r\n", b"")
    head = mail.mime.split("\r\n\r\n", 1)[0]
    words = ENCODED_WORD.findall(head)
    assert words
    assert all(len(w) <= 75 for w in words)
    assert all(w.lower().startswith("=?iso-2022-jp?") for w in words)
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Subject"] == "高橋 花子 様、セールのお知らせ (株)" + "あ" * 40
    from_line = re.search(r"^From: (.*?)\r\n(?! )", head + "\r\n", re.M | re.S)
    assert from_line
    assert str(make_header(decode_header(from_line.group(1)))) == "高橋商店 <shop@example.com>"
    text, html = parts(mail)
    assert "高橋 花子 様 (1)〜" in html
    assert 'charset="iso-2022-jp"' in html.lower() or "charset=iso-2022-jp" in html.lower()
    assert "(株)高橋商店" in text
    assert all(p.get_content_charset() == "iso-2022-jp" for p in msg.iter_parts())
    assert all(p["Content-Transfer-Encoding"] == "7bit" for p in msg.iter_parts())


def test_iso_2022_jp_refuses_an_emoji_with_a_reason_not_a_crash():
    src = source("<p>{{ contact.name }}</p>" + UNSUB, sender="mobile")
    with pytest.raises(UnencodableTextError, match=r"U\+1F600"):
        render(src, step(contact={"name": "花子😀"}), with_renderer=_jis_renderer())


def test_long_iso_2022_jp_lines_are_folded_under_998_octets():
    src = source("<p>" + "<b>長い行</b>" * 400 + "</p>" + UNSUB, sender="mobile")
    mail = render(src, with_renderer=_jis_renderer())
    assert max(len(line) for line in mail.mime.encode("ascii").split(b"\r\n")) <= 998
    assert parts(mail)[1].replace("\n", "").count("<b>長い行</b>") == 400


def test_compiled_templates_with_dates_are_reusable():
    compiled = CompiledTemplate.compile(
        StoredTemplate(source("<p>{{ event.properties.d | jdate }}</p>"), 1)
    )
    r = renderer()
    for day in (date(2026, 1, 1), datetime(2026, 1, 2, tzinfo=UTC)):
        mail = r.render(step(event={"name": "x", "properties": {"d": day}}), compiled)
        assert "2026年1月" in mail.html
