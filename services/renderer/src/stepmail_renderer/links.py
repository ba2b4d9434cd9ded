"""Click tracking: every http(s) link of a mail becomes a signed redirect through the tracker.

Links are numbered by their position in the HTML part; a link of the text part that also
appears in the HTML gets the same number, so both parts' clicks count as one link.
"""

import html
import re
from collections import defaultdict
from collections.abc import Callable
from functools import lru_cache
from urllib.parse import quote

_LINK_TAG = re.compile(r"<(?:a|area)\b[^>]*>", re.IGNORECASE)
_HREF = re.compile(r"""(\bhref\s*=\s*)(?:"([^"]*)"|'([^']*)'|([^\s"'=<>`]+))""", re.IGNORECASE)
_HTTP = re.compile(r"^https?://", re.IGNORECASE)
# In text, a URL is printable ASCII; Japanese text often runs straight on after it.
# No IGNORECASE here: it would make ASCII letters match the non-ASCII range through
# their case variants (U+017F long s, U+212A Kelvin sign), cutting URLs short.
_TEXT_URL = re.compile(r"""[Hh][Tt][Tt][Pp][Ss]?://[!#-&(-;=?-~]+""")
_TRAILING = ".,;:!?'*"
# Characters kept as they are when a target URL is made safe for a Location header.
_URL_SAFE = "!#$%&'()*+,/:;=?@[]~"

Wrap = Callable[[int, str], str]


@lru_cache(maxsize=8192)
def normalise_url(url: str) -> str:
    """A lowercase scheme and percent-encoded non-ASCII, so the URL survives a header."""
    url = url.strip()
    match = _HTTP.match(url)
    if match:
        url = match.group(0).lower() + url[match.end() :]
    return quote(url, safe=_URL_SAFE)


def _trim(url: str) -> str:
    """Drop sentence punctuation that a text URL picked up at its end."""
    while url:
        last = url[-1]
        unbalanced = (last == ")" and url.count("(") < url.count(")")) or (
            last == "]" and url.count("[") < url.count("]")
        )
        if last not in _TRAILING and not unbalanced:
            break
        url = url[:-1]
    return url


# A link's reading: the href as written (kept when the link is not tracked), the text
# before its value, the URL as the tag means it, and the URL tracked (None: not http).
_Href = tuple[str, str, str, str | None]
# Link tags and text URLs repeat from mail to mail of a template: each is read once.
# Tags and URLs longer than this are read every time, keeping the caches small.
_CACHED_LENGTH = 1024
_CACHE_SIZE = 4096
_tags: dict[str, tuple[tuple[str, ...], tuple[_Href, ...]]] = {}
_text_urls: dict[str, tuple[str, str, str | None]] = {}


def _read_tag(tag: str, keep: set[str]) -> tuple[tuple[str, ...], tuple[_Href, ...]]:
    """A link tag as the text around its hrefs and the hrefs themselves (kept URLs are
    not normalised: each is new, and would only fill ``normalise_url``'s cache)."""
    pieces: list[str] = []
    hrefs: list[_Href] = []
    at = 0
    for match in _HREF.finditer(tag):
        # The one alternative of the value that matched is the last group.
        raw = match[match.lastindex or 0]
        url = (html.unescape(raw) if "&" in raw else raw).strip()
        pieces.append(tag[at : match.start()])
        tracked = url not in keep and _HTTP.match(url)
        hrefs.append((match[0], match[1], url, normalise_url(url) if tracked else None))
        at = match.end()
    pieces.append(tag[at:])
    return tuple(pieces), tuple(hrefs)


def _read_text_url(found: str, keep: set[str]) -> tuple[str, str, str | None]:
    """A URL found in text: the URL, the punctuation after it, and the URL tracked."""
    url = _trim(found)
    tracked = url not in keep and _HTTP.match(url)
    return url, found[len(url) :], normalise_url(url) if tracked else None


class LinkTracker:
    """Rewrites one mail's links; call ``html`` first, then ``text``."""

    def __init__(self, wrap: Wrap, keep: set[str], wrap_html: Wrap | None = None) -> None:
        """``wrap`` gives a link's tracked URL; ``wrap_html`` the same URL escaped for an
        attribute, when the caller has it cheaper than escaping each one."""
        self._wrap = wrap
        self._wrap_html = wrap_html or (lambda index, url: html.escape(wrap(index, url)))
        self._keep = keep
        self._positions: dict[str, list[int]] = defaultdict(list)
        self._text_only: dict[str, int] = {}
        self._count = 0

    @property
    def count(self) -> int:
        """How many distinct link positions were tracked."""
        return self._count

    def _next(self) -> int:
        index = self._count
        self._count += 1
        return index

    def html(self, body: str) -> str:
        keep, wrap, positions = self._keep, self._wrap_html, self._positions

        def tag(match: re.Match[str]) -> str:
            text = match[0]
            # Most tags of a mail are not links: skip them without a second search.
            if "href" not in text and "HREF" not in text and "Href" not in text:
                return text
            found = _tags.get(text)
            if found is None:
                found = _read_tag(text, keep)
                # A tag holding a kept URL (the mail's own unsubscribe URL) never recurs.
                if len(text) <= _CACHED_LENGTH and not any(h[2] in keep for h in found[1]):
                    if len(_tags) >= _CACHE_SIZE:
                        _tags.clear()
                    _tags[text] = found
            pieces, hrefs = found
            out = [pieces[0]]
            for (written, name, url, target), piece in zip(hrefs, pieces[1:], strict=True):
                if target is None or url in keep:
                    out.append(written)
                else:
                    index = self._next()
                    positions[target].append(index)
                    out.append(f'{name}"{wrap(index, target)}"')
                out.append(piece)
            return "".join(out)

        return _LINK_TAG.sub(tag, body)

    def text(self, body: str) -> str:
        seen: dict[str, int] = defaultdict(int)
        keep = self._keep

        def url_at(match: re.Match[str]) -> str:
            found = match[0]
            reading = _text_urls.get(found)
            if reading is None:
                reading = _read_text_url(found, keep)
                if len(found) <= _CACHED_LENGTH and reading[0] not in keep:
                    if len(_text_urls) >= _CACHE_SIZE:
                        _text_urls.clear()
                    _text_urls[found] = reading
            url, rest, target = reading
            if target is None or url in keep:
                return found
            positions = self._positions.get(target)
            if positions:
                index = positions[min(seen[target], len(positions) - 1)]
            elif target in self._text_only:
                index = self._text_only[target]
            else:
                index = self._text_only[target] = self._next()
            seen[target] += 1
            return self._wrap(index, target) + rest

        return _TEXT_URL.sub(url_at, body)


@lru_cache(maxsize=8192)
def with_utm(url: str, params: tuple[tuple[str, str], ...]) -> str:
    """``url`` with the UTM parameters it lacks appended; ones it has are left alone."""
    if not params:
        return url
    base, hash_, fragment = url.partition("#")
    query = base.partition("?")[2]
    present = {pair.partition("=")[0] for pair in query.split("&") if pair}
    extra = "&".join(
        f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in params if k not in present
    )
    if not extra:
        return url
    joiner = "&" if query else ("" if base.endswith("?") else "?")
    return f"{base}{joiner}{extra}{hash_}{fragment}"
