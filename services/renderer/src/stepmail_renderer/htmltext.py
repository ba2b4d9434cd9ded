"""A plain-text part from an HTML body, for templates that have no ``body.txt.j2``.

``html.parser.HTMLParser`` defines the result, but reads markup character by character
in Python. Mail HTML is plain markup: text, start and end tags with simple attributes,
comments and a doctype. One regular expression reads such a body into the very events
the parser would report, with the same runs of text. A body holding anything else (CDATA,
a processing instruction, a stray ``<``, an attribute the parser reads in its own
tolerant way, raw text with ``<`` in a ``<style>``) is read by ``HTMLParser`` itself, so
the text is the same either way; the unit tests hold the two readings to each other.
"""

import re
from html import unescape
from html.parser import HTMLParser

_BLOCKS = frozenset(
    {"p", "div", "br", "tr", "li", "h1", "h2", "h3", "h4", "h5", "h6", "table", "hr", "ul", "ol"}
)
_HIDDEN = frozenset({"head", "style", "script", "title"})
_SPACES = re.compile(r"\s+")
_BLANK_LINES = re.compile(r"\n{3,}")

# What the fast reader accepts, each part a subset of what ``HTMLParser`` reads the same
# way: ASCII names, whitespace the parser's tag-name rule also stops at, one ``=``, and
# unquoted values without the characters the parser treats in its own way. Possessive
# quantifiers: a value or name is never given back to make a different reading match.
_WS = r"[ \t\n\r\f]"


def _attribute(group: str) -> str:
    """One attribute, its name and value in groups when ``group`` is ``"("``."""
    return (
        rf"{_WS}++{group}[a-zA-Z_:][-a-zA-Z0-9_:.]*+)"
        rf"(?:{_WS}*+={_WS}*+{group}\"[^\"]*+\"|'[^']*+'|[^\s\"'>=][^\s\"'>]*+))?+"
    )


_ATTRIBUTES = re.compile(_attribute("("))
_TOKEN = re.compile(
    r"("  # 1: the whole token
    r"([^<]++)"  # 2: text
    r"|<([a-zA-Z][-a-zA-Z0-9]*+)"  # 3: a start tag's name
    rf"((?:{_attribute('(?:')})*+){_WS}*+(/?)>"  # 4: its attributes, 5: "/" of "<br/>"
    rf"|</([a-zA-Z][-.a-zA-Z0-9:_]*+){_WS}*+>"  # 6: an end tag's name
    r"|<!--(?s:.*?)--\s*>"  # a comment, ended where the parser ends it
    r"|<![dD][oO][cC][tT][yY][pP][eE][^>]*+>"  # the doctype
    r")"
)
# The parser reads what follows <script> or <style> as raw text up to the element's end.
_RAW_TEXT = frozenset(HTMLParser.CDATA_CONTENT_ELEMENTS)
# Text runs and link tags repeat from mail to mail of a template: their readings are kept.
_CACHE_SIZE = 4096
_CACHED_LENGTH = 1024
_texts: dict[str, str] = {}
_hrefs: dict[str, str | None] = {}


class _TextWriter:
    """What each event of the HTML adds to the text."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self._hidden = 0
        self._href: str | None = None

    def start(self, tag: str, href: str | None) -> None:
        if tag in _HIDDEN:
            self._hidden += 1
        elif tag in _BLOCKS:
            self.parts.append("\n")
        if tag == "a":
            self._href = href
        if tag == "li":
            self.parts.append("・")

    def end(self, tag: str) -> None:
        if tag in _HIDDEN:
            self._hidden = max(0, self._hidden - 1)
        elif tag in _BLOCKS:
            self.parts.append("\n")
        if tag == "a" and self._href:
            if self._href.lower().startswith(("http://", "https://")):
                self.parts.append(f" {self._href} ")
            self._href = None

    def data(self, data: str) -> None:
        """A piece of text as the parser reports it (character references resolved)."""
        if not self._hidden:
            self.parts.append(_SPACES.sub(" ", data))

    def text(self, raw: str) -> None:
        """A run of text as it stands in the markup."""
        if self._hidden:
            return
        found = _texts.get(raw)
        if found is None:
            found = _SPACES.sub(" ", unescape(raw))
            if len(raw) <= _CACHED_LENGTH:
                if len(_texts) >= _CACHE_SIZE:
                    _texts.clear()
                _texts[raw] = found
        self.parts.append(found)


class _Parser(HTMLParser):
    def __init__(self, writer: _TextWriter) -> None:
        super().__init__(convert_charrefs=True)
        self._writer = writer

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._writer.start(tag, dict(attrs).get("href") if tag == "a" else None)

    def handle_endtag(self, tag: str) -> None:
        self._writer.end(tag)

    def handle_data(self, data: str) -> None:
        self._writer.data(data)


def _href(attributes: str) -> str | None:
    """The ``href`` of a link's attributes as ``HTMLParser`` gives it (the last one wins)."""
    href = None
    for match in _ATTRIBUTES.finditer(attributes):
        if match[1].lower() == "href":
            value = match[2]
            if value is not None and value[:1] in ("'", '"'):
                value = value[1:-1]
            href = unescape(value) if value else value
    return href


def _link_href(tag: str, attributes: str) -> str | None:
    if tag in _hrefs:
        return _hrefs[tag]
    found = _href(attributes)
    if len(tag) <= _CACHED_LENGTH:
        if len(_hrefs) >= _CACHE_SIZE:
            _hrefs.clear()
        _hrefs[tag] = found
    return found


def _read_plain(body: str, writer: _TextWriter) -> bool:
    """Feed ``writer`` what ``HTMLParser`` would; ``False`` (having fed some) when the
    body holds markup only the parser reads right."""
    covered = 0
    raw = ""  # the raw-text element open, whose end must come next
    raw_text_seen = False
    for whole, text, start, attributes, closed, end in _TOKEN.findall(body):
        covered += len(whole)
        if raw:
            # Raw text without "<" reads as one run of text either way; anything else
            # in it (a "<" the parser would not take for the element's end) is left to it.
            if end.lower() == raw:
                raw = ""
            elif not text or raw_text_seen:
                return False
            else:
                raw_text_seen = True
                writer.data(text)
                continue
        if text:
            writer.text(text)
        elif start:
            tag = start.lower()
            writer.start(tag, _link_href(whole, attributes) if tag == "a" else None)
            if closed:
                writer.end(tag)
            elif tag in _RAW_TEXT:
                raw, raw_text_seen = tag, False
        elif end:
            writer.end(end.lower())
    # Tokens cover the body unless something only the parser reads was skipped; an
    # element left open reads as raw text to the end, which the parser drops.
    return covered == len(body) and not raw


def html_to_text(body: str) -> str:
    writer = _TextWriter()
    if not _read_plain(body, writer):
        writer = _TextWriter()
        parser = _Parser(writer)
        parser.feed(body)
        parser.close()
    lines = (line.strip() for line in "".join(writer.parts).split("\n"))
    text = "\n".join(lines)
    return _BLANK_LINES.sub("\n\n", text).strip() + "\n"
