# ruff: noqa: RUF001, E501 - Japanese text and long template lines on purpose
"""A broad, fixed corpus of renders whose bytes must not change when the renderer gets faster.

Every case is rendered and hashed: the whole ``RenderedMail`` (MIME, parts, envelope, link
count) or the refusal it ends in. The digests are kept per group in ``corpus_digests.json``;
``test_byte_identity`` renders the corpus again and compares. After a change that is meant
to alter the output, write the digests anew with ``python -m tests.unit.renderer.corpus``
(and say in the commit why the bytes changed).
"""

import hashlib
import json
import random
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stepmail_common.clock import ManualClock
from stepmail_common.signing import parse_keys
from stepmail_renderer import mime
from stepmail_renderer.htmltext import html_to_text
from stepmail_renderer.rendering import Layouts, MailRenderer, RenderedMail
from stepmail_renderer.schemas import StepDue
from stepmail_renderer.senders import SenderBook, SenderProfile
from stepmail_renderer.templates import StoredTemplate, TemplateSource

DIGESTS = Path(__file__).with_name("corpus_digests.json")

CART_HTML = """<!DOCTYPE html>
<html lang="ja"><head><meta charset="utf-8"><title>カートに商品が残っています</title></head>
<body style="margin:0;background:#f5f5f5;">
<div style="max-width:600px;margin:0 auto;padding:24px;">
<p><a href="https://shop.example.com/"><img src="https://cdn.example.com/logo.png" alt="デモショップ" width="160"></a></p>
<p>{{ contact | honorific }}</p>
<p>いつもご利用いただき、誠にありがとうございます。<br>
{{ event.properties.added_at | jdate }}にカートへ追加された商品が残っています。</p>
<table>
{% for item in event.properties.items %}<tr>
<td><a href="{{ item.url }}"><img src="{{ item.image }}" alt="" width="80"></a></td>
<td><a href="{{ item.url }}">{{ item.name }}</a><br>{{ item.price | yen }} × {{ item.quantity }}</td>
</tr>{% endfor %}
</table>
<p>小計：<strong>{{ event.properties.total | yen }}</strong>（税込）</p>
{% set b2b %}<p>法人のお客様には請求書払いもご利用いただけます。</p>{% endset %}
{{ contact.attributes.segment | choose({"b2b": b2b}) }}
<p><a href="https://shop.example.com/cart?ref=mail" style="color:#fff;">ご購入手続きへ進む</a></p>
<p>クーポン <strong>{{ event.properties.coupon }}</strong>（{{ event.properties.expires_at | jdate }}まで）</p>
<ul>
<li><a href="https://shop.example.com/guide/shipping">送料・お届けについて</a></li>
<li><a href="https://shop.example.com/faq#returns">よくあるご質問</a></li>
</ul>
<p style="font-size:12px;">配信停止：<a href="{{ unsubscribe_url }}">こちら</a></p>
</div></body></html>
"""

CART_TEXT = """{{ contact | honorific }}

{{ event.properties.added_at | jdate }}にカートへ追加された商品が残っています。
{% for item in event.properties.items %}
・{{ item.name }} {{ item.price | yen }} × {{ item.quantity }}
  {{ item.url }}
{% endfor %}
小計：{{ event.properties.total | yen }}（税込）
▼ ご購入手続きへ進む
https://shop.example.com/cart?ref=mail

よくあるご質問 https://shop.example.com/faq#returns。ほかにhttps://shop.example.com/guide/shipping（送料）も
配信停止 {{ unsubscribe_url }}
"""

LINKS_HTML = """<html><body>
<a href="https://example.jp/a?x=1&amp;y=2#frag">1</a>
<A HREF='https://example.jp/b'>2</A> <a href=https://example.jp/c?q=%E3%81%82>3</a>
<a href="https://example.jp/商品/詳細?名前=値#見出し">4</a>
<a href=" https://example.jp/spaced ">5</a><a href="HTTPS://EXAMPLE.JP/Upper">6</a>
<a href="http://example.jp/plain">7</a><a href="mailto:x@example.jp">m</a><a href="tel:0300000000">t</a>
<a href="/relative">r</a><a href="">e</a><a name="anchor">n</a><a href>v</a>
<area shape="rect" href="https://example.jp/area?a=1&b=2"><a data-href="https://example.jp/no">d</a>
<a
 href="https://example.jp/multiline"
 class="x">ml</a><a href="https://example.jp/a?x=1&amp;y=2#frag">again</a>
<a title="x>y" href="https://example.jp/gt">gt</a>
<a href="https://example.jp/&lt;tag&gt;?a=&quot;b&quot;">ent</a>
<a href="javascript:alert(1)">js</a><a href="{{ unsubscribe_url }}">unsub</a>
<a href="https://example.jp/utm?utm_source=own&amp;x=1">utm</a><a href="https://example.jp/q?">q</a>
<a href="https://example.jp/very/long/{{ 'x' * 900 }}">long</a>
<a href="{{ event.properties.link }}">prop</a>
</body></html>
"""

LINKS_TEXT = """URLs: https://example.jp/a?x=1&y=2#frag, https://example.jp/b. (https://example.jp/c?q=%E3%81%82)
https://example.jp/商品 と https://example.jp/text-only!? [https://example.jp/br] https://example.jp/p(x)
HTTPS://EXAMPLE.JP/Upper http://example.jp/plain https://example.jp/a?x=1&y=2#frag again
https://example.jp/text-only https://example.jp/日本 ftp://example.jp/no {{ event.properties.link }}
{{ unsubscribe_url }}
"""

ODD_HTML = """<!DOCTYPE html><!-- a comment with <a href="https://example.jp/in-comment">x</a> -->
<html><head><title>題名</title><style>p { color: red; } </style>
<script>if (a < b && c > d) { document.write("</p>"); }</script></head>
<BODY><P>大文字の  タグ</P><p>tabs\tand\r\nCRLF\rCR</p><br/><br />
<p>entities: &nbsp;&amp;&lt;&gt;&quot;&#12354;&#x3042;&unknown; &amp no semicolon &copy</p>
<p>a < b and c > d, 3<4</p><![CDATA[ cdata <b>text</b> ]]>
<?xml-stylesheet href="x"?><p
>split tag</p><div><span>nested <b>bold <i>it</i></b></span></div>
<a href="https://example.jp/x">link <b>bold</b></a></a><a href='HTTP://EXAMPLE.JP/Y'>y</a>
<a href="ftp://example.jp/z">ftp</a><a>no href</a>
<ul><li>一<li>二</ul><ol><li>三</li></ol><h1>見出し</h1><hr><table><tr><td>セル</td></tr></table>
<head>second head <title>t2</title></head>after
<p attr=unquoted other='single' bare>attrs</p><p data-x="&amp;&#x41;">ent attr</p>
<textarea><p>not a tag</p></textarea><noscript>ns</noscript>
<p>{{ contact.attributes.html }}</p>
<p>{{ event.properties.text }}</p>
<a href="https://example.jp/unclosed">unclosed
<p>last <</p></body></html>trailing & stuff <unfinished
"""

LONG_HTML = (
    "<html><body>"
    + "".join(
        f'<span>長い行{i}</span><a href="https://example.jp/long/{i}?q=あ">リンク{i}</a>'
        for i in range(40)
    )
    + "日本語" * 600
    + "<p>"
    + "x" * 1200
    + "</p>"
    + "漢字とascii混在 " * 200
    + "</body></html>\n"
)

LONG_TEXT = (
    "長い行 "
    + "あ" * 1500
    + "\n"
    + "y" * 2100
    + "\n"
    + "混在abcカナ" * 300
    + "\n{{ unsubscribe_url }}\n"
)

WIDE_HTML = """<html><body><p>{{ contact | honorific("さん") }}</p>
<p>①②㈱～–—髙﨑©™㌔ｶﾞｷﾞｰﾊﾟｱｲｳ ¥〜 \u00a0Ⅳⅸ№ {{ event.properties.text }}</p>
<p>{{ event.properties.added_at | jdatetime }} {{ 1234.5 | yen }} {{ "12,800" | yen }}</p>
</body></html>
"""

UNENCODABLE_HTML = "<p>雪だるま ☃ {{ contact.name }}</p>"

LAYOUT_BASE = """<html><head><title>{% block title %}題{% endblock %}</title></head>
<body>{% block body %}{% endblock %}{% include "layouts/foot.j2" %}</body></html>"""
LAYOUT_FOOT = '<p><a href="https://example.jp/layout-foot">フッター</a></p>'
EXTENDS_HTML = """{% extends "layouts/base.j2" %}{% block title %}{{ contact.name | default("x") }}{% endblock %}
{% block body %}<p>本文 <a href="https://example.jp/ext?a=1">link</a></p>{% endblock %}"""

SUBJECTS = [
    "件名",
    "{{ contact | honorific }}、カートに商品が残っています（{{ event.properties.total | yen }}）",
    "Plain ASCII subject",
    "A long ASCII subject that goes on and on past seventy-six characters for sure, {{ contact.id }}",
    "=?UTF-8?B?not really?= {{ contact.name | default('') }}",
    "ご登録ありがとうございます。はじめてガイドと、よくあるご質問、そして便利な使い方のご案内をお届けします",
    "混在 mixed text 日本語 and English words 長めの件名 {{ event.properties.coupon }}",
    "  spaced\tout\n{{ contact.name | default('名無し') }}  ",
]

TEMPLATES: list[tuple[str, str | None, str | None, str]] = [
    # (html, text, preheader, kind)
    (CART_HTML, CART_TEXT, "{{ event.properties.expires_at | jdate }}までお取り置き", "marketing"),
    (CART_HTML, None, None, "marketing"),
    (LINKS_HTML, LINKS_TEXT, None, "marketing"),
    (LINKS_HTML, None, "プレヘッダー <b>&</b>", "transactional"),
    (ODD_HTML, None, None, "marketing"),
    (ODD_HTML, "text {{ contact.attributes.html }}", None, "transactional"),
    (LONG_HTML, LONG_TEXT, None, "marketing"),
    (LONG_HTML, None, None, "marketing"),
    (WIDE_HTML, None, "①付き", "marketing"),
    (WIDE_HTML, "{{ event.properties.text }} ①～ｶﾞ", None, "marketing"),
    (UNENCODABLE_HTML, None, None, "marketing"),
    (EXTENDS_HTML, None, None, "marketing"),
    ("<p>{{ contact.name }}</p>", None, None, "marketing"),
    ("no markup at all {{ contact.id }}", "", None, "marketing"),
]

NAMES: list[str | None] = [
    None,
    "",
    "Taro Yamada",
    'Yamada "Taro", Jr.',
    "山田 太郎",
    "寿限無寿限無五劫の擦り切れ海砂利水魚の水行末雲来末風来末食う寝る処に住む処やぶら小路の藪柑子",
    "髙橋 美咲①",
    "ｶﾀｶﾅ ﾀﾛｳ",
    "絵文字 😀",
    "名前=?utf-8?b?x?=",
    "  spaced\tname\n",
    "O'Brien <ob@example.jp>",
]

SENDERS = [
    SenderProfile(
        name="utf8",
        mail_from="stepmail デモ <hello@example.com>",
        legal_name="ステップメール デモ株式会社",
        postal_address="〒100-0005 東京都千代田区丸の内1-1-1",
        contact="support@example.com",
    ),
    SenderProfile(
        name="utf8-utm",
        mail_from="Plain Sender <news@example.com>",
        legal_name="Demo <Co> & Sons",
        postal_address="1 Main St",
        contact="help@example.com",
        list_unsubscribe_mailto="unsub@example.com",
        open_tracking=False,
        utm=(("utm_source", "stepmail"), ("utm_campaign", "{scenario}-{step}-{template}")),
    ),
    SenderProfile(
        name="jis",
        mail_from="デモショップ <shop@example.com>",
        legal_name="株式会社デモショップ",
        postal_address="〒100-0005 東京都千代田区丸の内1-1-1 デモビル10F",
        contact="support@example.com / 03-0000-0000",
        charset="iso-2022-jp",
        utm=(("utm_source", "stepmail"), ("utm_medium", "email")),
    ),
    SenderProfile(
        name="jis-plain",
        mail_from="shop@example.com",
        legal_name="株式会社デモ①",
        postal_address="東京都",
        contact="03-0000-0000",
        charset="iso-2022-jp",
        open_tracking=False,
    ),
]

ITEMS = [
    {
        "name": "有機栽培 ほうじ茶 <30包>",
        "price": 1280,
        "quantity": 2,
        "url": "https://shop.example.com/items/hojicha?size=30&color=緑#top",
        "image": "https://cdn.example.com/items/hojicha.jpg",
    },
    {
        "name": "今治タオル & ハンカチ",
        "price": "4,620",
        "quantity": 1,
        "url": "https://shop.example.com/items/imabari",
        "image": "https://cdn.example.com/items/imabari.jpg",
    },
]

MESSAGE_IDS = ["0b7a3c1e-0000-5000-8000-{:012d}", "id.with..dots/{}"]
NOW = datetime(2026, 11, 23, 1, 0, 30, tzinfo=UTC)


def _step(i: int, name: str | None, kind: str, message_id: str) -> StepDue:
    contact: dict[str, Any] = {
        "id": f"c-{i}",
        "email": f"user{i}@example.jp",
        "time_zone": ["Asia/Tokyo", "America/New_York", "Nowhere/Zone"][i % 3],
        "attributes": {
            "segment": "b2b" if i % 2 else "b2c",
            "html": '<script>alert("x")</script> & 値' if i % 3 else "<b>太字</b>",
        },
    }
    if name is not None:
        contact["name"] = name
    if i % 4 == 1:
        contact["locale"] = "en-US"
    return StepDue.from_data(
        {
            "message_id": message_id,
            "enrollment_id": f"enr-{i}",
            "scenario": {"id": "cart-abandoned", "version": 3},
            "step": {"id": f"step-{i % 3}", "index": i % 3},
            "template": "t",
            "mail_kind": kind,
            "contact": contact,
            "event": {
                "name": "cart_abandoned",
                "properties": {
                    "items": ITEMS,
                    "total": 10480 + i,
                    "coupon": f"CART{i:04d}",
                    "added_at": "2026-11-22T23:30:00+00:00",
                    "expires_at": "2026-11-30",
                    "link": [
                        "https://example.jp/prop?a=1&b=<2>#f",
                        "https://例え.jp/パス?q=値",
                        "mailto:a@example.jp",
                        "https://example.jp/" + "z" * 1100,
                    ][i % 4],
                    "text": ["①と～と髙", "<&>\"'", "ｶﾞｷﾞｸﾞ 半角", "plain"][i % 4],
                },
            },
            "due_at": "2026-11-23T10:00:00+09:00",
        }
    )


def _renderer() -> MailRenderer:
    return MailRenderer(
        signing_keys=parse_keys("k1:corpus-secret-0123456789abcdef"),
        tracker_public_url="https://t.example.com/",
        senders=SenderBook(SENDERS[0], {s.name: s for s in SENDERS}),
        clock=ManualClock(NOW),
    )


def _mail_bytes(mail: RenderedMail) -> bytes:
    fields = (mail.message_id, mail.mime, mail.mail_from, mail.rcpt_to, str(mail.links))
    return "\x00".join((*fields, mail.subject, mail.html, mail.text)).encode("utf-8")


def _outcome(call: Callable[..., object], *args: Any) -> bytes:
    """What ``call(*args)`` gives, as bytes; a refusal is an outcome like any other."""
    try:
        result = call(*args)
    except Exception as exc:
        return f"error {exc.__class__.__name__}: {exc}".encode()
    if isinstance(result, RenderedMail):
        return _mail_bytes(result)
    return str(result).encode("utf-8")


_RANDOM_PIECES = [
    "<p>",
    "</p>",
    "<br>",
    "<BR/>",
    "<li>",
    "</li>",
    "<title>",
    "</title>",
    "<style>",
    "</style>",
    "<script>",
    "</script>",
    "<head>",
    "</head>",
    "<!-- c -->",
    "<!--",
    "-->",
    "<![CDATA[x]]>",
    "<!DOCTYPE html>",
    "<?pi?>",
    "<a href='https://example.jp/r?a=1&amp;b=2'>",
    '<a href="http://example.jp/r2">',
    "<a href=https://example.jp/r3>",
    '<a href="mailto:x@example.jp">',
    "<a>",
    "</a>",
    "<A HREF='HTTPS://EX.JP'>",
    '<a title="<x>" href="https://example.jp/t">',
    "<img src=x alt='y'>",
    "<div class=a>",
    "</div>",
    "<table>",
    "<tr>",
    "</tr>",
    "<h2>",
    "</h2>",
    "<hr/>",
    "<x-y>",
    "</x-y >",
    "<a/b>",
    "< p>",
    "</ p>",
    "<>",
    "</>",
    "<",
    ">",
    "&",
    "&amp;",
    "&nbsp;",
    "&#12354;",
    "&#x3042;",
    "&bogus;",
    "&lt",
    " ",
    "  ",
    "\t",
    "\n",
    "\r\n",
    "\n\n\n",
    "あいう",
    "漢字",
    "text",
    "https://example.jp/inline?q=1",
    "①",
    "ｶﾞ",
    "'",
    '"',
    "=",
    "</body>",
    "<body>",
    "<textarea>",
    "</textarea>",
    "<p\nclass=x>",
    '<p class="a>b">',
]


def random_html(rnd: random.Random) -> str:
    """Markup made of pieces that are tricky for a tag reader, in random order."""
    return "".join(rnd.choice(_RANDOM_PIECES) for _ in range(rnd.randint(0, 40)))


def _compile_and_render(
    renderer: MailRenderer, source: TemplateSource, step: StepDue
) -> RenderedMail:
    return renderer.render(step, renderer.compiled(StoredTemplate(source, 1)))


def _headers(name: str, words: str) -> str:
    jis_words = words.replace("①", "(1)")
    return "\n".join(
        [
            mime.unstructured(name, words),
            mime.jis_unstructured(name, jis_words),
            mime.mailbox(name, words, "a@example.jp"),
            mime.jis_mailbox(name, jis_words, "a@example.jp"),
        ]
    )


def cases() -> Iterator[tuple[str, bytes]]:
    """Every case of the corpus as (group, bytes of the outcome)."""
    renderer = _renderer()
    layouts = Layouts.stored(
        {"layouts/base.j2": (1, LAYOUT_BASE), "layouts/foot.j2": (2, LAYOUT_FOOT)}
    )
    n = 0
    for t, (html, text, preheader, kind) in enumerate(TEMPLATES):
        for sender in SENDERS:
            source = TemplateSource(
                id=f"t{t}-{sender.name}",
                mail_kind=kind,
                subject=SUBJECTS[t % len(SUBJECTS)],
                preheader=preheader,
                html=html,
                text=text,
                sender=sender.name,
            )
            compiled = renderer.compiled(StoredTemplate(source, 1), layouts)
            for name in NAMES:
                for pattern in MESSAGE_IDS:
                    n += 1
                    step = _step(n, name, kind, pattern.format(n))
                    yield f"template {t} {sender.name}", _outcome(renderer.render, step, compiled)
    for s, subject in enumerate(SUBJECTS):
        for sender in SENDERS:
            source = TemplateSource(
                f"subj{s}-{sender.name}",
                "marketing",
                subject,
                None,
                "<p>x</p>",
                "x",
                sender=sender.name,
            )
            compiled = renderer.compiled(StoredTemplate(source, 1))
            for name in NAMES:
                n += 1
                step = _step(n, name, "marketing", f"subject-{n}")
                yield f"subject {s} {sender.name}", _outcome(renderer.render, step, compiled)
    rnd = random.Random(20261203)
    for r in range(600):
        sender = SENDERS[r % len(SENDERS)]
        html = random_html(rnd)
        source = TemplateSource(
            f"rnd{r}",
            "marketing",
            "件名 {{ contact.id }}",
            None,
            html,
            random_html(rnd) if r % 3 == 0 else None,
            sender=sender.name,
        )
        n += 1
        step = _step(n, NAMES[r % len(NAMES)], "marketing", f"random-{n}")
        yield f"random {r // 100}", _outcome(_compile_and_render, renderer, source, step)
    for r in range(3000):
        html = random_html(rnd)
        yield f"html_to_text {r // 500}", _outcome(html_to_text, html)
    for r in range(400):
        words = "".join(
            rnd.choice(["あ", "漢字", " ", "a", "ab cd", "=?", "ー", "①", "\t"])
            for _ in range(rnd.randint(0, 60))
        )
        header = rnd.choice(["Subject", "To", "X-Long-Header-Name-For-Folding"])
        yield f"headers {r // 100}", _outcome(_headers, header, words)


def digests() -> tuple[dict[str, str], int]:
    """One SHA-256 per group over its cases' outcomes, and the number of cases."""
    groups: dict[str, Any] = {}
    count = 0
    for group, outcome in cases():
        found = groups.get(group)
        if found is None:
            found = groups[group] = hashlib.sha256()
        found.update(hashlib.sha256(outcome).digest())
        count += 1
    return {group: h.hexdigest() for group, h in groups.items()}, count


def main() -> int:
    found, count = digests()
    DIGESTS.write_text(
        json.dumps({"cases": count, "groups": found}, indent=1, sort_keys=True) + "\n"
    )
    print(f"{count} cases in {len(found)} groups -> {DIGESTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
