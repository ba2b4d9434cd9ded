"""MIME by hand, so that every byte is known: 7-bit, CRLF, short encoded-words.

The standard library's folding can emit 76-character encoded-words (RFC 2047 allows 75),
so headers with non-ASCII text are encoded here, word by word.
"""

import base64
import binascii
import re
import struct
from collections.abc import Sequence
from email.header import Header
from email.utils import formataddr
from functools import lru_cache

from stepmail_common.errors import PermanentError
from stepmail_renderer.iso2022jp import CODEC as JIS

CRLF = "\r\n"
MAX_ENCODED_WORD = 75
# RFC 2047: a line holding an encoded-word is at most 76 characters.
MAX_ENCODED_LINE = 76
MAX_LINE = 998
_WORD_OVERHEAD = len("=?UTF-8?B??=")
_JIS_WORD_OVERHEAD = len(f"=?{JIS}?b??=")
_ADDRESS = re.compile(r"^[!#-'*+\-/-9=?A-Z^-~.]+@[A-Za-z0-9.\-\[\]:]+$")
_CONTROLS = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]+")
# 7-bit body lines stay well inside RFC 5322's 998 octets.
MAX_BODY_LINE = 990


class MimeError(PermanentError):
    """A mail that cannot be written as valid 7-bit MIME."""


def clean_phrase(text: str) -> str:
    """One line of text: controls and line breaks become spaces, runs of space collapse."""
    return " ".join(_CONTROLS.sub(" ", text).split())


def _max_bytes(line_used: int) -> int:
    room = min(MAX_ENCODED_WORD, MAX_ENCODED_LINE - line_used) - _WORD_OVERHEAD
    return (room // 4) * 3


def _encoded_words(text: str, line_used: int) -> list[str]:
    """``text`` as B encoded-words; the first fits after ``line_used`` characters.

    Each word takes as many whole characters as fit in its budget of UTF-8 octets: the
    text is encoded once and cut before the first octet of a character, which is where
    adding one character after another would stop.
    """
    try:
        data = text.encode()
    except UnicodeEncodeError:  # a lone surrogate: refused as the slow path refuses it
        return _encoded_words_by_character(text, line_used)
    words: list[str] = []
    budget = _max_bytes(line_used)
    if budget < 3:  # not even one character fits after the field name: start a new line
        words.append("")
        budget = _max_bytes(1)
    start, size = 0, len(data)
    while start < size:
        cut = start + budget
        if cut >= size:
            cut = size
        else:
            while cut > start and 0x80 <= data[cut] < 0xC0:  # inside a character
                cut -= 1
            if cut == start:  # one character longer than the budget goes alone
                cut += 1
                while cut < size and 0x80 <= data[cut] < 0xC0:
                    cut += 1
        words.append(f"=?UTF-8?B?{binascii.b2a_base64(data[start:cut], newline=False).decode()}?=")
        start = cut
        budget = _max_bytes(1)
    return words


def _encoded_words_by_character(text: str, line_used: int) -> list[str]:
    words: list[str] = []
    chunk = b""
    budget = _max_bytes(line_used)
    if budget < 3:  # not even one character fits after the field name: start a new line
        words.append("")
        budget = _max_bytes(1)
    for char in text:
        encoded = char.encode()
        if chunk and len(chunk) + len(encoded) > budget:
            words.append(f"=?UTF-8?B?{base64.b64encode(chunk).decode()}?=")
            chunk = b""
            budget = _max_bytes(1)
        chunk += encoded
    if chunk:
        words.append(f"=?UTF-8?B?{base64.b64encode(chunk).decode()}?=")
    return words


def _join(prefix: str, words: list[str]) -> str:
    # An empty first word means the field name left no room: the words start below it.
    if words[0] == "":
        return prefix.rstrip() + (CRLF + " ").join(words)
    return prefix + (CRLF + " ").join(words)


def _needs_encoding(text: str) -> bool:
    return not text.isascii() or "=?" in text


def unstructured(name: str, text: str) -> str:
    """A header line of free text (Subject), encoded and folded when needed."""
    text = clean_phrase(text)
    prefix = f"{name}: "
    if not _needs_encoding(text) and len(prefix) + len(text) <= MAX_ENCODED_LINE:
        return prefix + text
    return _join(prefix, _encoded_words(text, len(prefix)))


def check_address(address: str) -> str:
    """A plain ASCII addr-spec, or ``MimeError``: no SMTPUTF8 yet, no header tricks."""
    if len(address) > 254 or not _ADDRESS.match(address):
        raise MimeError("the address is not a plain ASCII addr-spec")
    return address


def mailbox(name: str, display_name: str | None, address: str) -> str:
    """An address header line (From, To) with an optional display name."""
    address = check_address(address)
    prefix = f"{name}: "
    phrase = clean_phrase(display_name or "")
    if not phrase:
        return prefix + address
    if not _needs_encoding(phrase):
        line = prefix + formataddr((phrase, address))
        if len(line) <= MAX_LINE:
            return line
    words = _encoded_words(phrase, len(prefix))
    tail = f"<{address}>"
    last_line = len(words[-1]) + (len(prefix) if len(words) == 1 else 1)
    separator = " " if last_line + 1 + len(tail) <= MAX_ENCODED_LINE else CRLF + " "
    return _join(prefix, words) + separator + tail


def _jis_word(chunk: bytes) -> str:
    return f"=?{JIS}?b?{base64.b64encode(chunk).decode('ascii')}?="


def _jis_words(text: str, name: str) -> str:
    """``text`` as ISO-2022-JP encoded-words, folded exactly as the compat32 ``Header`` does.

    ``Header`` grows each word a character at a time, encoding the whole word again for
    each. A prefix never encodes shorter than a shorter prefix (escape sequences only
    move or add), so the longest prefix that fits is found by bisection instead, and the
    words are the same. Text ``Header`` would split into lines, or whose first character
    does not fit beside the field name, is left to ``Header`` itself.
    """
    encoded = text.encode(JIS)  # refuses what Header refuses, with the same error
    first = MAX_ENCODED_LINE - len(name) - 2 - _JIS_WORD_OVERHEAD
    if len(text.splitlines()) != 1:
        header = Header(text, JIS, maxlinelen=MAX_ENCODED_LINE, header_name=name)
        return header.encode(linesep=CRLF)
    budget = (first // 4) * 3
    if len(encoded) <= budget:
        return _jis_word(encoded)
    words: list[str] = []
    start, end = 0, len(text)
    while start < end:
        chunk = text[start:].encode(JIS)
        if len(chunk) <= budget:
            words.append(_jis_word(chunk))
            break
        # The longest text[start:stop] that fits: ``low`` fits, ``high`` does not.
        low, high = start, end
        while high - low > 1:
            middle = (low + high) // 2
            if len(text[start:middle].encode(JIS)) <= budget:
                low = middle
            else:
                high = middle
        if low == start:  # not even one character fits: Header's odd lines, not ours
            header = Header(text, JIS, maxlinelen=MAX_ENCODED_LINE, header_name=name)
            return header.encode(linesep=CRLF)
        words.append(_jis_word(text[start:low].encode(JIS)))
        start = low
        budget = ((MAX_ENCODED_LINE - 1 - _JIS_WORD_OVERHEAD) // 4) * 3
    return (CRLF + " ").join(words)


def jis_unstructured(name: str, text: str) -> str:
    """Like ``unstructured``, with ISO-2022-JP encoded-words (text already JIS-safe)."""
    text = clean_phrase(text)
    prefix = f"{name}: "
    if not _needs_encoding(text) and len(prefix) + len(text) <= MAX_ENCODED_LINE:
        return prefix + text
    return prefix + _jis_words(text, name)


def jis_mailbox(name: str, display_name: str | None, address: str) -> str:
    """Like ``mailbox``, with an ISO-2022-JP display name (already JIS-safe)."""
    phrase = clean_phrase(display_name or "")
    if not phrase or not _needs_encoding(phrase):
        return mailbox(name, phrase, address)
    address = check_address(address)
    words = _jis_words(phrase, name)
    tail = f"<{address}>"
    last = words.rsplit(CRLF, 1)[-1]
    last_line = len(last) + (len(name) + 2 if CRLF not in words else 0)
    separator = " " if last_line + 1 + len(tail) <= MAX_ENCODED_LINE else CRLF + " "
    return f"{name}: {words}{separator}{tail}"


def plain(name: str, value: str) -> str:
    """A header line of ASCII that needs no encoding (ids, dates, URIs)."""
    if not value.isascii() or _CONTROLS.search(value.replace(CRLF + " ", "")):
        raise MimeError(f"{name} holds characters a header cannot carry")
    return f"{name}: {value}"


@lru_cache(maxsize=128)
def _base64_lines(count: int) -> struct.Struct:
    """Cuts ``count`` 76-character lines off a buffer in one call."""
    return struct.Struct("76s" * count)


def _body(content: str) -> str:
    if "\r" in content:
        content = content.replace("\r\n", "\n").replace("\r", "\n")
    # Line ends are made CRLF in the UTF-8 bytes, where replacing is a plain byte search.
    canonical = content.encode().replace(b"\n", b"\r\n")
    encoded = binascii.b2a_base64(canonical, newline=False)
    # 76-character lines, as RFC 2045 asks of base64, each ending in CRLF.
    full, rest = divmod(len(encoded), 76)
    lines = list(_base64_lines(full).unpack_from(encoded)) if full else []
    if rest:
        lines.append(encoded[full * 76 :])
    lines.append(b"")
    return b"\r\n".join(lines).decode("ascii")


# The pieces of a long HTML line (a footer's tags and text) recur from mail to mail.
_PIECE_CACHE_SIZE = 4096
_CACHED_PIECE = 1024
_piece_sizes: dict[str, int] = {}


def _jis_size(piece: str) -> int:
    """How many octets ``piece`` takes in ISO-2022-JP, from ASCII back to ASCII."""
    size = _piece_sizes.get(piece)
    if size is None:
        size = len(piece.encode(JIS))
        if len(piece) <= _CACHED_PIECE:
            if len(_piece_sizes) >= _PIECE_CACHE_SIZE:
                _piece_sizes.clear()
            _piece_sizes[piece] = size
    return size


def _split_long(line: str, html: bool) -> list[bytes]:
    """One logical line as ISO-2022-JP lines of at most ``MAX_BODY_LINE`` octets.

    HTML breaks after a tag where it can (a line break there changes nothing shown);
    anything else breaks between characters, each piece ending back in ASCII.

    Pieces are added while they fit. ``bound`` is at least the encoded length of the line
    so far: two parts encoded apart are never shorter than encoded together (the joint
    one only saves escape sequences), so a piece that fits by the bound fits, and the
    joint encoding is measured only near the limit.
    """
    if html:
        # The line cut after each ">", as splitting at the empty match after one would.
        *tagged, last = line.split(">")
        pieces = [piece + ">" for piece in tagged]
        pieces.append(last)
    else:
        pieces = [line]
    out: list[bytes] = []
    current = ""
    bound = 0
    for piece in pieces:
        size = _jis_size(piece)
        if bound + size <= MAX_BODY_LINE:
            current += piece
            bound += size
            continue
        joined = len((current + piece).encode(JIS))
        if joined <= MAX_BODY_LINE:
            current += piece
            bound = joined
            continue
        if current:
            out.append(current.encode(JIS))
            current = ""
        if size <= MAX_BODY_LINE:
            # No prefix of a piece encodes longer than the whole: it starts the line whole.
            current = piece
            bound = size
            continue
        for char in piece:
            if len((current + char).encode(JIS)) > MAX_BODY_LINE:
                out.append(current.encode(JIS))
                current = ""
            current += char
        bound = len(current.encode(JIS))
    out.append(current.encode(JIS))
    return out


def _jis_body(content: str, html: bool, encoded: bytes | None = None) -> str:
    """The body as ISO-2022-JP lines of CRLF, each within ``MAX_BODY_LINE`` octets.

    ``encoded`` is ``content.encode("iso-2022-jp")``, when the caller has it already.
    The encoder goes back to ASCII before every CR and LF, so the whole body encoded at
    once is its lines encoded one by one, joined, and its line ends are normalised in
    the octets as in the text: it is encoded once, and only lines that turn out too
    long are encoded again to be folded.
    """
    if encoded is None:
        encoded = content.encode(JIS)
    if "\r" in content:
        content = content.replace("\r\n", "\n").replace("\r", "\n")
        encoded = encoded.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    lines = encoded.split(b"\n")
    if max(map(len, lines)) > MAX_BODY_LINE:
        folded: list[bytes] = []
        for line, text in zip(lines, content.split("\n"), strict=True):
            folded.extend([line] if len(line) <= MAX_BODY_LINE else _split_long(text, html))
        lines = folded
    return (b"\r\n".join(lines) + b"\r\n").decode("ascii")


def alternative(
    headers: Sequence[str],
    text: str,
    html: str,
    boundary: str,
    charset: str = "utf-8",
    jis_octets: tuple[bytes, bytes] | None = None,
) -> str:
    """The whole message: ``headers`` lines, then text/plain first and text/html last.

    UTF-8 bodies are base64; ISO-2022-JP bodies (text already JIS-safe) are 7bit, made
    from ``jis_octets`` (the text and HTML encoded) when the caller has them.
    """
    lines = [
        *headers,
        "MIME-Version: 1.0",
        f'Content-Type: multipart/alternative; boundary="{boundary}"',
    ]
    for header in lines:
        for physical in header.split(CRLF):
            if len(physical) > MAX_LINE:
                raise MimeError(f"a header line is longer than {MAX_LINE} characters")
    parts = []
    octets = jis_octets or (None, None)
    for subtype, content, encoded in (("plain", text, octets[0]), ("html", html, octets[1])):
        if charset == JIS:
            parts.append(
                f"--{boundary}{CRLF}"
                f'Content-Type: text/{subtype}; charset="ISO-2022-JP"{CRLF}'
                f"Content-Transfer-Encoding: 7bit{CRLF}{CRLF}"
                f"{_jis_body(content, subtype == 'html', encoded)}"
            )
            continue
        parts.append(
            f"--{boundary}{CRLF}"
            f'Content-Type: text/{subtype}; charset="UTF-8"{CRLF}'
            f"Content-Transfer-Encoding: base64{CRLF}{CRLF}"
            f"{_body(content)}"
        )
    return (
        CRLF.join(lines)
        + CRLF
        + CRLF
        + "This is a multi-part message in MIME format."
        + CRLF
        + "".join(parts)
        + f"--{boundary}--{CRLF}"
    )
