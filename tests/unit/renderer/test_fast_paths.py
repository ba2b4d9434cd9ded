# ruff: noqa: RUF001 - look-alike characters are what the ISO-2022-JP mapping is about.
"""The renderer's fast paths give exactly what the general code they replace gives."""

import base64
import hashlib
import hmac
import html as html_module
import random
import re
import unicodedata
from email.header import Header
from html.parser import HTMLParser
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stepmail_common.signing import Signer
from stepmail_renderer import footer, htmltext, iso2022jp, links, mime, rendering
from stepmail_renderer.filters import FilterError, yen
from stepmail_renderer.htmltext import html_to_text
from stepmail_renderer.sandbox import compile_template, environment, render
from stepmail_renderer.tokens import TokenSigner
from tests.unit.renderer.helpers import render as render_mail
from tests.unit.renderer.helpers import renderer, source, step

PAYLOADS: list[dict[str, Any]] = [
    {"k": "u", "m": "m-1", "c": "c-1", "mk": "marketing"},
    {"k": "c", "m": "m-2", "i": 12, "u": "https://example.jp/商品?a=1&b=2"},
    {},
]


@pytest.mark.parametrize(
    "secret", [b"short-secret-0123456789", b"x" * 64, b"a-key-longer-than-a-block-" * 4]
)
def test_tokens_are_those_of_the_common_signer(secret: bytes):
    signer, reference = TokenSigner({"k9": secret, "old": b"y" * 20}), Signer({"k9": secret})
    for payload in PAYLOADS:
        token = signer.sign(payload)
        assert token == reference.sign(payload)
        assert reference.verify(token) == payload
        kid, body, _ = token.split(".")
        mac = hmac.new(secret, f"{kid}.{body}".encode(), hashlib.sha256).digest()
        assert token == f"{kid}.{body}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
        assert signer.sign_json(orjson.dumps(payload)) == token


def test_click_tokens_carry_the_mail_reference_index_and_url():
    html = '<a href="https://example.jp/a">A</a><a href="https://example.jp/b?x=1">B</a>'
    mail = render_mail(source(html), step())
    verifier = Signer({"k1": b"unit-test-secret-0123456789"})
    tokens = [t for t in mail.html.split('"') if "/c/" in t]
    payloads = [verifier.verify(t.rsplit("/", 1)[1]) for t in tokens]
    assert [(p["k"], p["i"], p["u"]) for p in payloads] == [
        ("c", 0, "https://example.jp/a"),
        ("c", 1, "https://example.jp/b?x=1"),
    ]
    assert all(p["m"] == step().message_id and p["c"] == "c-1" for p in payloads)


def test_templates_still_see_the_sandbox_globals():
    env = environment(autoescape=True)
    template = compile_template(
        env,
        "{% set ns = namespace(n=0) %}{% for i in range(3) %}{{ i }}{% endfor %}{{ ns.n }}",
        "t",
    )
    assert render(template, {}, "t") == template.render({}) == "0120"
    shadowing = compile_template(env, "{{ range }}", "t")
    assert render(shadowing, {"range": "値"}, "t") == shadowing.render({"range": "値"}) == "値"


def test_cached_filters_still_refuse_every_time_and_follow_the_zone():
    for _ in range(2):
        with pytest.raises(FilterError):
            yen("abc")
    assert yen("12,800") == yen("12,800") == "¥12,800"
    assert yen(-5) == "-¥5"
    with pytest.raises(FilterError):
        yen(True)
    html = "{{ event.properties.d | jdate }}"
    event = {"name": "x", "properties": {"d": "2026-11-22T15:30:00+00:00"}}
    tokyo = render_mail(source(html), step(event=event)).html
    ny = render_mail(
        source(html), step(event=event, contact={"time_zone": "America/New_York"})
    ).html
    assert "2026年11月23日(月)" in tokyo
    assert "2026年11月22日(日)" in ny


def test_an_empty_body_is_no_base64_lines():
    assert mime._body("") == ""
    assert mime._body("a\r\nb\rc\nd") == mime._body("a\nb\nc\nd")


@pytest.mark.parametrize("size", [1, 2, 56, 57, 58, 113, 114, 115, 57 * 40, 57 * 40 + 1])
def test_base64_bodies_are_76_character_crlf_lines_of_the_crlf_text(size: int):
    text = ("ア" * size)[: max(1, size // 3)] + "\n" + "b" * size
    expected = base64.encodebytes(text.replace("\n", "\r\n").encode()).replace(b"\n", b"\r\n")
    body = mime._body(text)
    assert body == expected.decode("ascii")
    assert all(len(line) <= 76 for line in body.split("\r\n"))


def _jis_text_reference(text: str) -> str:
    """The character-by-character mapping ``to_jis_text`` must agree with."""
    out = []
    folded = iso2022jp._HALFWIDTH.sub(lambda m: unicodedata.normalize("NFKC", m.group(0)), text)
    for char in folded:
        try:
            char.encode(iso2022jp.CODEC)
        except UnicodeEncodeError:
            replacement = iso2022jp._replacement(char)
            if replacement is None:
                raise iso2022jp.UnencodableTextError(f"U+{ord(char):04X}") from None
            out.append(replacement)
        else:
            out.append(char)
    return "".join(out)


def _outcome(convert: Any, text: str) -> str:
    try:
        return str(convert(text))
    except iso2022jp.UnencodableTextError as exc:
        return "refused " + str(exc).rsplit(": ", 1)[-1].split()[0]


def test_jis_text_is_mapped_as_character_by_character():
    alphabet = list("abc あ漢字¥〜アｶﾞｷﾞｰﾟ①⑳㈱～–—髙﨑©™㌔㎝\u00a0Ⅳⅸ№𠮷😀☃")
    rnd = random.Random(7)
    for _ in range(600):
        text = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 24)))
        expected = _outcome(_jis_text_reference, text)
        assert _outcome(lambda t: iso2022jp.to_jis_text(t, "w"), text) == expected, text


def test_jis_text_names_the_first_character_it_cannot_write():
    with pytest.raises(iso2022jp.UnencodableTextError, match=r"U\+2603"):
        iso2022jp.to_jis_text("髙①☃😀", "w")
    assert iso2022jp.to_jis_text("ｶﾞ髙髙①", "w") == "ガ高高(1)"


def _split_reference(line: str, html: bool) -> list[bytes]:
    """Greedy folding, measuring every candidate line: what ``_split_long`` must give."""
    jis = iso2022jp.CODEC
    pieces = re.split(r"(?<=>)", line) if html else [line]
    out: list[bytes] = []
    current = ""
    for piece in pieces:
        if len((current + piece).encode(jis)) <= mime.MAX_BODY_LINE:
            current += piece
            continue
        if current:
            out.append(current.encode(jis))
            current = ""
        for char in piece:
            if len((current + char).encode(jis)) > mime.MAX_BODY_LINE:
                out.append(current.encode(jis))
                current = ""
            current += char
    out.append(current.encode(jis))
    return out


def test_long_jis_lines_fold_exactly_as_measuring_every_candidate():
    alphabet = ["a", " ", "<p>", "</a>", "<br>", "あ", "漢字", "¥", "ア", "x" * 60, "日本" * 40]
    alphabet.append("<a href='https://t.example.jp/c/" + "t" * 300 + "'>")
    rnd = random.Random(3)
    for _ in range(30):
        line = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 150)))
        for html in (True, False):
            folded = mime._split_long(line, html)
            assert folded == _split_reference(line, html)
            assert all(len(part) <= mime.MAX_BODY_LINE for part in folded)


def test_links_are_tracked_whatever_their_quotes():
    html = (
        "<a href=\"https://example.jp/1\">1</a><A HREF='https://example.jp/2'>2</A>"
        '<a href=https://example.jp/3>3</a><a href="">空</a><a href="mailto:x@example.jp">m</a>'
        '<area href="https://example.jp/4?a=1&amp;b=2">'
    )
    mail = render_mail(source(html), step())
    assert mail.links == 4
    for n in "123":
        assert f"example.jp/{n}" not in mail.html
    assert 'href=""' in mail.html
    assert 'href="mailto:x@example.jp"' in mail.html
    verifier = Signer({"k1": b"unit-test-secret-0123456789"})
    tokens = [t for t in mail.html.split('"') if "/c/" in t]
    assert [verifier.verify(t.rsplit("/", 1)[1])["u"] for t in tokens] == [
        "https://example.jp/1",
        "https://example.jp/2",
        "https://example.jp/3",
        "https://example.jp/4?a=1&b=2",
    ]


@pytest.mark.parametrize(
    "body",
    [
        "<html><body><p>本文</p></body></html>",
        "<body>a</BODY >b</body\n>c</p>",
        "<p>no body</p></div>",
        "",
        "</body></body>",
        "</bodyx></body",
    ],
)
def test_the_footer_goes_before_the_last_closing_body_tag(body: str):
    ends = list(re.finditer(r"</body\s*>", body, re.IGNORECASE))
    at = ends[-1].start() if ends else len(body)
    assert footer.append_to_html(body, "[F]") == body[:at] + "[F]" + body[at:]


class _ReferenceTextWriter(HTMLParser):
    """``html_to_text`` as written on ``HTMLParser`` alone: what the fast reader must give."""

    blocks = frozenset(
        {"p", "div", "br", "tr", "li", "h1", "h2", "h3", "h4", "h5", "h6", "table", "hr", "ul"}
        | {"ol"}
    )
    hidden_tags = frozenset({"head", "style", "script", "title"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = 0
        self.href: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.hidden_tags:
            self.hidden += 1
        elif tag in self.blocks:
            self.parts.append("\n")
        if tag == "a":
            self.href = dict(attrs).get("href")
        if tag == "li":
            self.parts.append("・")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.hidden_tags:
            self.hidden = max(0, self.hidden - 1)
        elif tag in self.blocks:
            self.parts.append("\n")
        if tag == "a" and self.href:
            if self.href.lower().startswith(("http://", "https://")):
                self.parts.append(f" {self.href} ")
            self.href = None

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.parts.append(re.sub(r"\s+", " ", data))


def _reference_html_to_text(body: str) -> str:
    writer = _ReferenceTextWriter()
    writer.feed(body)
    writer.close()
    text = "\n".join(line.strip() for line in "".join(writer.parts).split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


_NAMES = st.sampled_from(["a", "a", "A", "p", "br", "li", "title", "style", "SCRIPT", "x-y"])
_SPACE = st.sampled_from([" ", "\n", "\t", "\r\n", "\f", "\v", "\u3000", "\xa0", ""])
_VALUES = st.sampled_from(
    [
        '"https://ex.jp/a?b=1&amp;c=2"',
        "'http://ex.jp/'",
        "https://ex.jp/x/",
        '""',
        "x/",
        "=x",
        "a=b",
        "a<b",
        'a"b',
        "'>'",
        '"a\'b"',
        "&lt;",
        "&#x68;ttp://e.jp",
        "",
        "'",
        "HTTP://X",
        "/",
        "x",
    ]
)
_ATTRIBUTE = st.tuples(
    _SPACE, st.sampled_from(["href", "HREF", "class", "a:b", "_u", "@x", "v"]), _SPACE
).map("".join) | st.tuples(
    _SPACE,
    st.sampled_from(["href", "Href", "alt"]),
    _SPACE,
    st.sampled_from(["=", "==", "= "]),
    _SPACE,
    _VALUES,
).map("".join)
_START = st.tuples(
    st.just("<"), _NAMES, st.lists(_ATTRIBUTE, max_size=3).map("".join), _SPACE,
    st.sampled_from([">", "/>", "/ >", ""]),
).map("".join)  # fmt: skip
_END = st.tuples(st.sampled_from(["</", "</ "]), _NAMES, _SPACE, st.just(">")).map("".join)
_TEXT = st.sampled_from(
    [
        "text",
        " ",
        "\n",
        "あいう",
        "&amp;",
        "&nbsp;x",
        "&#12354;",
        "&bogus;",
        "&",
        "a &b",
        "&lt",
        "https://ex.jp/t",
        "\u3000",
        "<",
        ">",
        "<!-- c -->",
        "<!--",
        "-- >",
        "<!DOCTYPE html>",
        "<![CDATA[x]]>",
        "<?pi?>",
        "<!x>",
        "</>",
        "</ſcript>",
        "</style >",
        "<>",
        "-->",
    ]
)
_MARKUP = st.lists(_START | _END | _TEXT | st.just("</a>"), max_size=30).map("".join)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_MARKUP)
def test_text_from_html_is_what_the_html_parser_reads(body: str):
    assert html_to_text(body) == _reference_html_to_text(body)


@pytest.mark.parametrize(
    "body",
    [
        "<!DOCTYPE html><html><head><title>t</title><style>p { color: red; }</style></head>"
        "<body><!-- [if mso]><table><![endif] --><p class=\"x\" data-a='1'>本文&amp;</p>"
        '<a href="https://example.jp/a?b=1&amp;c=2">link</a><br/><img src=x.png alt=""></body>',
        "<p>a<a href=https://example.jp/x/>x</a><ul><li>1<li>2</ul></p>",
    ],
)
def test_plain_mail_markup_is_read_without_the_parser(body: str):
    assert htmltext._read_plain(body, htmltext._TextWriter())
    assert html_to_text(body) == _reference_html_to_text(body)


@pytest.mark.parametrize(
    "body",
    [
        "<p>a < b</p>",
        "<![CDATA[x]]><p>y</p>",
        "<script>if (a < b) {}</script><p>z</p>",
        "<style>p {}</style\u3000><p>z</p>",
        "<script>x</ſcript>y</script>z",
        '<a href=="x">y</a>',
        "<p>open <style>never closed",
    ],
)
def test_markup_only_the_parser_reads_right_is_left_to_it(body: str):
    assert not htmltext._read_plain(body, htmltext._TextWriter())
    assert html_to_text(body) == _reference_html_to_text(body)


_JIS_TEXT = st.text(
    st.sampled_from([*"aZ 09=?()\\\t¥‾あ漢字ー〜アｱ①髙", "\x85", "\u2028", "。"]),
    min_size=1,
    max_size=80,
)
_FIELD_NAMES = st.sampled_from(
    ["Subject", "To", "From", *("X-" + "N" * n for n in (40, 52, 56, 60, 75))]
)


def _header_outcome(call: Any, *args: str) -> str:
    try:
        return str(call(*args))
    except UnicodeEncodeError as exc:
        return f"refused: {exc}"


@settings(max_examples=1500, deadline=None)
@given(_JIS_TEXT, _FIELD_NAMES)
def test_jis_encoded_words_are_the_compat32_headers(text: str, name: str):
    def reference(text: str, name: str) -> str:
        header = Header(text, "iso-2022-jp", maxlinelen=mime.MAX_ENCODED_LINE, header_name=name)
        return header.encode(linesep="\r\n")

    expected = _header_outcome(reference, text, name)
    assert _header_outcome(mime._jis_words, text, name) == expected


def test_jis_encoded_words_fold_long_names_as_the_compat32_header():
    name = "Subject"
    text = "件名がとても長いので、いくつもの encoded-word に分けて折り返されます。" * 3
    header = Header(text, "iso-2022-jp", maxlinelen=mime.MAX_ENCODED_LINE, header_name=name)
    words = mime._jis_words(text, name)
    assert words == header.encode(linesep="\r\n")
    assert words.count("\r\n") >= 3


def _jis_body_reference(content: str, html: bool) -> str:
    lines: list[bytes] = []
    for line in content.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        encoded = line.encode(iso2022jp.CODEC)
        fits = len(encoded) <= mime.MAX_BODY_LINE
        lines.extend([encoded] if fits else mime._split_long(line, html))
    return (b"\r\n".join(lines) + b"\r\n").decode("ascii")


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.sampled_from(["a", "あ", "¥", "‾", "\n", "\r\n", "\r", "<p>", "漢字" * 200, "x" * 500]),
        max_size=40,
    ).map("".join),
    st.booleans(),
)
def test_jis_bodies_encoded_whole_are_their_lines_encoded_one_by_one(content: str, html: bool):
    expected = _jis_body_reference(content, html)
    assert mime._jis_body(content, html) == expected
    assert mime._jis_body(content, html, content.encode(iso2022jp.CODEC)) == expected


@settings(max_examples=800, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                "<meta charset=utf-8>",
                '<META http-equiv="x" CHARSET="UTF-8">',
                "<meta>",
                "utf-8",
                "あ",
                "¥",
                "a",
                "\n",
                ">",
                "<p>",
                "charset=utf-8",
                "<meta name=x charset='utf-8'",
            ]
        ),
        max_size=20,
    ).map("".join)
)
def test_jis_html_declared_keeps_its_octets_in_step(html: str):
    declared = rendering._META_CHARSET.sub(r"\1iso-2022-jp", html)
    expected = (declared, declared.encode(iso2022jp.CODEC))
    assert rendering._declare_jis(html, html.encode(iso2022jp.CODEC)) == expected


class _ReferenceLinks:
    """Link rewriting as written before tags and URLs were read once: the fast path's model."""

    def __init__(self, keep: set[str]) -> None:
        self.keep = keep
        self.positions: dict[str, list[int]] = {}
        self.text_only: dict[str, int] = {}
        self.count = 0

    def wrap(self, index: int, url: str) -> str:
        return f"https://t.example/c/{index}/{url}&"

    def html(self, body: str) -> str:
        def href(match: re.Match[str]) -> str:
            raw = match[match.lastindex or 0]
            url = (html_module.unescape(raw) if "&" in raw else raw).strip()
            if url in self.keep or not links._HTTP.match(url):
                return match[0]
            url = links.normalise_url(url)
            self.positions.setdefault(url, []).append(self.count)
            self.count += 1
            return f'{match[1]}"{html_module.escape(self.wrap(self.count - 1, url))}"'

        return links._LINK_TAG.sub(lambda m: links._HREF.sub(href, m[0]), body)

    def text(self, body: str) -> str:
        seen: dict[str, int] = {}

        def url_at(match: re.Match[str]) -> str:
            found = match.group(0)
            url = links._trim(found)
            rest = found[len(url) :]
            if url in self.keep or not links._HTTP.match(url):
                return found
            url = links.normalise_url(url)
            positions = self.positions.get(url)
            if positions:
                index = positions[min(seen.get(url, 0), len(positions) - 1)]
            elif url in self.text_only:
                index = self.text_only[url]
            else:
                index = self.text_only[url] = self.count
                self.count += 1
            seen[url] = seen.get(url, 0) + 1
            return self.wrap(index, url) + rest

        return links._TEXT_URL.sub(url_at, body)


_URLS = st.sampled_from(
    [
        "https://ex.jp/a?b=1&amp;c=2#f",
        " HTTP://EX.JP/商品 ",
        "mailto:a@ex.jp",
        "",
        "/rel",
        "https://ex.jp/u",
        "https://ex.jp/a?b=1&c=2#f",
        "https://ex.jp/(x))",
        "https://ex.jp/.",
    ]
)
_LINK_PIECES = st.one_of(
    st.builds('<a href="{}">'.format, _URLS),
    st.builds("<A class=x HREF='{}' href=\"{}\">".format, _URLS, _URLS),
    st.builds("<area href={}>".format, _URLS.filter(lambda u: " " not in u and u)),
    st.builds("{} ".format, _URLS),
    st.sampled_from(["</a>", "<a name=x>", "<abbr href='https://ex.jp/no'>", "テキスト", "\n"]),
)


@settings(max_examples=800, deadline=None)
@given(st.lists(_LINK_PIECES, max_size=12).map("".join), st.lists(_URLS, max_size=6))
def test_links_read_once_are_rewritten_as_read_every_time(body: str, text_urls: list[str]):
    text = " ".join(text_urls) + " " + body
    keep = {"https://ex.jp/u"}
    for _ in range(2):  # cold, then with every reading cached
        reference = _ReferenceLinks(keep)
        tracker = links.LinkTracker(reference.wrap, keep=keep)
        expected = (reference.html(body), reference.text(text), reference.count)
        assert (tracker.html(body), tracker.text(text), tracker.count) == expected


def test_tokens_need_escaping_in_html_only_when_the_key_id_does():
    assert TokenSigner({"k1": b"x" * 20}).html_safe
    unsafe = renderer(keys={"k&1": b"unit-test-secret-0123456789"})
    mail = render_mail(source('<a href="https://example.jp/a">A</a>'), step(), unsafe)
    assert 'href="https://t.example.jp/c/k&amp;1.' in mail.html
    assert "https://t.example.jp/c/k&1." in mail.text


@settings(max_examples=1500, deadline=None)
@given(
    st.text(st.sampled_from(["a", " ", "é", "あ", "漢", "\uff7f", "😀", "="]), max_size=120),
    st.integers(min_value=0, max_value=80),
)
def test_utf8_encoded_words_are_cut_as_character_by_character(text: str, line_used: int):
    words = mime._encoded_words(text, line_used)
    assert words == mime._encoded_words_by_character(text, line_used)


def test_a_lone_surrogate_is_refused_by_utf8_encoded_words():
    with pytest.raises(UnicodeEncodeError):
        mime._encoded_words("件名\ud800", 9)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=40), st.binary(max_size=40))
def test_tokens_signed_after_a_shared_prefix_are_those_signed_whole(prefix: bytes, rest: bytes):
    signer = TokenSigner({"k9": b"short-secret-0123456789"})
    assert signer.with_prefix(prefix).sign(rest) == signer.sign_json(prefix + rest)
