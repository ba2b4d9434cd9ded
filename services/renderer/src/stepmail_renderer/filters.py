"""The filters templates use for Japanese mail: dates, yen, honorifics, chosen blocks.

- ``{{ event.properties.delivered_at | jdate }}`` → ``2026年11月23日(月)``, in the contact's
  time zone (``contact.time_zone``, default Asia/Tokyo); ``jdatetime`` adds ``10:00``.
  A date or datetime object, or an ISO 8601 string; a datetime without an offset is taken
  as the contact's local time.
- ``{{ item.price | yen }}`` → ``¥12,800``: integers, decimals (rounded half up to the
  yen, which has no minor unit), numeric strings (``"12,800"`` too); negative amounts are
  ``-¥1,200``. Anything else is an error (the mail dead-letters with the reason).
- ``{{ contact | honorific }}`` → ``山田 花子 様``, or ``お客様`` without a name; a contact
  whose locale is English gets ``Dear Hanako Yamada`` / ``Dear customer``. A plain string
  works too: ``{{ "山田" | honorific }}`` → ``山田 様``; ``honorific("さん")`` changes the
  title.
- ``{{ contact.attributes.industry | choose({"manufacturing": a, "retail": b}, default=c) }}``
  picks a content block by an attribute's value; a missing attribute or a value not in
  the mapping gives ``default`` (``""`` when not given). Blocks of HTML are captured
  with ``{% set a %}...{% endset %}`` and stay escaped correctly.
"""

import re
from datetime import date, datetime, time
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from jinja2 import pass_context
from jinja2.runtime import Context, Undefined

DEFAULT_TIME_ZONE = "Asia/Tokyo"
DEFAULT_CUSTOMER = "お客様"
WEEKDAYS = "月火水木金土日"
_NUMBER = re.compile(r"^[+-]?(?:\d+|\d{1,3}(?:,\d{3})+)(?:\.\d+)?$")


class FilterError(ValueError):
    """A value a filter cannot format; the message names the filter."""


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo(DEFAULT_TIME_ZONE)


def _context_value(context: Context, *path: str) -> Any:
    value: Any = context.get(path[0])
    for key in path[1:]:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _contact_zone(context: Context, tz: str | None) -> ZoneInfo:
    if tz:
        return _zone(tz)
    name = _context_value(context, "contact", "time_zone")
    return _zone(name if isinstance(name, str) and name else DEFAULT_TIME_ZONE)


def _as_datetime(value: Any, zone: ZoneInfo, name: str) -> datetime | date:
    if isinstance(value, Undefined) or value is None:
        raise FilterError(f"{name}: no value")
    if isinstance(value, str):
        text = value.strip()
        try:
            value = date.fromisoformat(text) if len(text) == 10 else datetime.fromisoformat(text)
        except ValueError:
            raise FilterError(f"{name}: not an ISO 8601 date: {text[:40]!r}") from None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            return value.replace(tzinfo=zone)
        return value.astimezone(zone)
    if isinstance(value, date):
        return value
    raise FilterError(f"{name}: expected a date, got {type(value).__name__}")


def _jdate_text(day: date) -> str:
    return f"{day.year}年{day.month}月{day.day}日({WEEKDAYS[day.weekday()]})"


def _jdate(value: Any, zone: ZoneInfo) -> str:
    moment = _as_datetime(value, zone, "jdate")
    return _jdate_text(moment.date() if isinstance(moment, datetime) else moment)


# Most dates of a batch repeat (a campaign's deadline, today's date): strings are cached.
_jdate_of_text = lru_cache(maxsize=4096)(_jdate)


@pass_context
def jdate(context: Context, value: Any, tz: str | None = None) -> str:
    """``2026年11月23日(月)`` in the contact's time zone."""
    zone = _contact_zone(context, tz)
    if type(value) is str:
        return _jdate_of_text(value, zone)
    return _jdate(value, zone)


@pass_context
def jdatetime(context: Context, value: Any, tz: str | None = None) -> str:
    """``2026年11月23日(月) 10:00`` in the contact's time zone."""
    moment = _as_datetime(value, _contact_zone(context, tz), "jdatetime")
    if not isinstance(moment, datetime):
        moment = datetime.combine(moment, time(0, 0))
    return f"{_jdate_text(moment.date())} {moment.hour}:{moment.minute:02d}"


def _amount(value: Any) -> Decimal:
    if isinstance(value, bool | Undefined) or value is None:
        raise FilterError(f"yen: not an amount: {type(value).__name__}")
    if isinstance(value, int | Decimal):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, str):
        text = value.strip().lstrip("¥￥").strip()
        if _NUMBER.match(text):
            try:
                return Decimal(text.replace(",", ""))
            except InvalidOperation:
                pass
        raise FilterError(f"yen: not an amount: {value[:40]!r}")
    raise FilterError(f"yen: not an amount: {type(value).__name__}")


def yen(value: Any) -> str:
    """``¥12,800``; decimals rounded half up to the yen; ``-¥1,200`` when negative."""
    if type(value) is int:  # the usual case, and not a bool
        return f"-¥{-value:,}" if value < 0 else f"¥{value:,}"
    if type(value) is str:
        return _yen_of_text(value)
    return _yen(value)


def _yen(value: Any) -> str:
    amount = _amount(value)
    if not amount.is_finite():
        raise FilterError("yen: not a finite amount")
    whole = int(amount.quantize(Decimal(1), rounding=ROUND_HALF_UP))
    sign = "-" if whole < 0 else ""
    return f"{sign}¥{abs(whole):,}"


_yen_of_text = lru_cache(maxsize=4096)(_yen)


def _is_english(locale: Any) -> bool:
    return isinstance(locale, str) and locale.lower().replace("_", "-").startswith("en")


def honorific(value: Any, title: str = "様") -> str:
    """``山田 花子 様`` / ``お客様``; English contacts get ``Dear ...``."""
    if isinstance(value, dict):
        name = value.get("name")
        english = _is_english(value.get("locale"))
    else:
        name = None if isinstance(value, Undefined) else value
        english = False
    name = " ".join(name.split()) if isinstance(name, str) else ""
    if english:
        return f"Dear {name}" if name else "Dear customer"
    return f"{name} {title}" if name else DEFAULT_CUSTOMER


def choose(value: Any, blocks: Any, default: Any = "") -> Any:
    """The entry of ``blocks`` named by ``value``, or ``default``."""
    if not isinstance(blocks, dict):
        raise FilterError("choose: expects a mapping of values to blocks")
    if isinstance(value, Undefined) or value is None:
        return default
    try:
        return blocks.get(str(value), default)
    except TypeError:
        return default


FILTERS: dict[str, Any] = {
    "jdate": jdate,
    "jdatetime": jdatetime,
    "yen": yen,
    "honorific": honorific,
    "choose": choose,
}
