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


class LinkTracker:
    """Rewrites one mail's links; call ``html`` first, then ``text``."""

    def __init__(self, wrap: Wrap, keep: set[str]) -> None:
        self._wrap = wrap
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
        keep, wrap, positions, escape = self._keep, self._wrap, self._positions, html.escape

        def href(match: re.Match[str]) -> str:
            # The one alternative of the value that matched is the last group.
            raw = match[match.lastindex or 0]
            url = (html.unescape(raw) if "&" in raw else raw).strip()
            if url in keep or not _HTTP.match(url):
                return match[0]
            url = normalise_url(url)
            index = self._next()
            positions[url].append(index)
            return f'{match[1]}"{escape(wrap(index, url))}"'

        def tag(match: re.Match[str]) -> str:
            text = match[0]
            # Most tags of a mail are not links: skip them without a second search.
            if "href" not in text and "HREF" not in text and "Href" not in text:
                return text
            return _HREF.sub(href, text)

        return _LINK_TAG.sub(tag, body)

    def text(self, body: str) -> str:
        seen: dict[str, int] = defaultdict(int)

        def url_at(match: re.Match[str]) -> str:
            found = match.group(0)
            url = _trim(found)
            rest = found[len(url) :]
            if url in self._keep or not _HTTP.match(url):
                return found
            url = normalise_url(url)
            positions = self._positions.get(url)
            if positions:
                index = positions[min(seen[url], len(positions) - 1)]
            elif url in self._text_only:
                index = self._text_only[url]
            else:
                index = self._text_only[url] = self._next()
            seen[url] += 1
            return self._wrap(index, url) + rest

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
