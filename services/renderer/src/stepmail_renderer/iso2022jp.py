# ruff: noqa: RUF001, RUF002, RUF003 - the table maps look-alike characters on purpose.
"""ISO-2022-JP for senders whose recipients use legacy mobile carriers.

ISO-2022-JP (JIS X 0208) lacks characters common in today's Japanese text: circled
digits, ㈱, half-width katakana, the full-width tilde U+FF5E, the en dash, variant kanji
such as 髙 and 﨑. Each is mapped to the character or spelling readers expect
(①→(1), ㈱→(株), ｶﾞ→ガ, ～→〜, –→-, 髙→高); a character with no such mapping refuses
the mail with a reason naming its code point, never a crash and never a ``?``.
"""

import re
import unicodedata
from functools import lru_cache

from stepmail_common.errors import PermanentError

CODEC = "iso-2022-jp"

_HALFWIDTH = re.compile("[\uff61-\uff9f]+")
_TABLE: dict[str, str] = {
    "～": "〜",  # U+FF5E FULLWIDTH TILDE: the usual wave dash of Windows text
    "–": "-",  # en dash
    "—": "―",  # em dash → JIS horizontal bar
    "－": "−",  # fullwidth hyphen-minus → minus sign
    "∥": "‖",
    "￠": "¢",
    "￡": "£",
    "￢": "¬",
    "\u00a0": " ",
    "髙": "高",
    "﨑": "崎",
    "德": "徳",
    "𠮷": "吉",
    "♡": "♪",
    "♥": "♪",
    "❤": "♪",
    "©": "(C)",
    "®": "(R)",
    "™": "TM",
    "€": "EUR",
    "Å": "A",
    "№": "No.",
    "℡": "TEL",
}
_TABLE.update({chr(0x2460 + i): f"({i + 1})" for i in range(20)})  # ①..⑳
_ROMAN = ("I", "II", "III", "IV", "V", "VI", "VII", "VIII", "IX", "X")
_TABLE.update({chr(0x2160 + i): r for i, r in enumerate(_ROMAN)})  # Ⅰ..Ⅹ
_TABLE.update({chr(0x2170 + i): r.lower() for i, r in enumerate(_ROMAN)})  # ⅰ..ⅹ


class UnencodableTextError(PermanentError):
    """Text that ISO-2022-JP cannot carry and that has no agreed replacement."""


@lru_cache(maxsize=4096)
def _replacement(char: str) -> str | None:
    mapped = _TABLE.get(char)
    if mapped is not None:
        return mapped
    # Half-width katakana, ㈱, ㎝, ㌔ and friends have a compatibility form JIS holds.
    folded = unicodedata.normalize("NFKC", char)
    if folded != char:
        try:
            folded.encode(CODEC)
        except UnicodeEncodeError:
            return None
        return folded
    return None


def to_jis_text(text: str, where: str) -> str:
    """``text`` with every character ISO-2022-JP lacks replaced, or ``UnencodableTextError``.

    The encoder stops at the first character it cannot write; that character is replaced
    everywhere and the text tried again, so a mail with one or two such characters (a
    name's 髙, a ～) costs a few encodings, not a look at each of its characters.
    """
    return encoded_jis_text(text, where)[0]


def encoded_jis_text(text: str, where: str) -> tuple[str, bytes]:
    """``to_jis_text`` and its ISO-2022-JP octets, which finding the replacements makes."""
    halfwidth_folded = False
    while True:
        try:
            encoded = text.encode(CODEC)
        except UnicodeEncodeError as exc:
            char = text[exc.start]
        else:
            return text, encoded
        if not halfwidth_folded and _HALFWIDTH.match(char):
            # NFKC composes ｶﾞ into ガ: fold every half-width run before anything else.
            text = _HALFWIDTH.sub(lambda m: unicodedata.normalize("NFKC", m.group(0)), text)
            halfwidth_folded = True
            continue
        replacement = _replacement(char)
        if replacement is None:
            raise UnencodableTextError(
                f"{where}: U+{ord(char):04X} cannot be written in ISO-2022-JP"
            )
        text = text.replace(char, replacement)
