"""Joining given and family names the way the person's own language writes them."""

import unicodedata


def _is_cjk(text: str) -> bool:
    return any(
        unicodedata.name(ch, "").startswith(("CJK", "HIRAGANA", "KATAKANA", "HANGUL"))
        for ch in text
    )


def full_name(first: str | None, last: str | None) -> str | None:
    """「佐藤 花子」 for Japanese names (family name first), "Hanako Sato" otherwise."""
    first = (first or "").strip()
    last = (last or "").strip()
    if not first and not last:
        return None
    if _is_cjk(first + last):
        return f"{last} {first}".strip()
    return f"{first} {last}".strip()
