"""The pure rules of running a scenario: when a wait ends, which variant a contact gets,
who is held out, when a mail may go. No I/O here, so it is tested with plain values.
"""

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from stepmail_orchestrator.conditions import lookup
from stepmail_orchestrator.scenarios import Variant, Wait

DEFAULT_ZONE = "Asia/Tokyo"


def zone(name: str | None) -> ZoneInfo:
    """The contact's time zone; an unknown name falls back to Asia/Tokyo."""
    try:
        return ZoneInfo(name or DEFAULT_ZONE)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo(DEFAULT_ZONE)


def parse_moment(value: Any, tz: ZoneInfo) -> datetime | None:
    """A date or date-time from event or contact data; a bare date is midnight local."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=tz)
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=tz)


def _at_local_time(moment: datetime, at: time, tz: ZoneInfo, not_before: datetime) -> datetime:
    local = moment.astimezone(tz)
    candidate = datetime.combine(local.date(), at, tzinfo=tz)
    if candidate < not_before:
        candidate = datetime.combine(local.date() + timedelta(days=1), at, tzinfo=tz)
    return candidate


def wake_time(
    wait: Wait, start: datetime, tz: ZoneInfo, context: Mapping[str, Any]
) -> datetime | None:
    """When a step whose wait begins at ``start`` is due; None if its date is unknown.

    Order: the duration; then, for ``until``, the date at ``context[path]`` plus the
    offset (at ``at`` local time when given); else the next ``at`` local time of day
    and allowed weekday at or after that point.
    """
    moment = start + wait.duration
    if wait.until_date is not None:
        target = parse_moment(lookup(context, wait.until_date), tz)
        if target is None:
            return None
        target += wait.offset
        if wait.at is not None:
            target = datetime.combine(target.astimezone(tz).date(), wait.at, tzinfo=tz)
        return max(target, moment).astimezone(UTC)
    if wait.at is not None:
        moment = _at_local_time(moment, wait.at, tz, moment)
    if wait.weekdays is not None:
        for _ in range(7):
            if moment.astimezone(tz).weekday() in wait.weekdays:
                break
            moment += timedelta(days=1)
    return moment.astimezone(UTC)


def _unit(*parts: str) -> float:
    """A stable number in [0, 1) from ``parts``."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def choose_variant(
    variants: tuple[Variant, ...], scenario_id: str, step_id: str, contact_id: str
) -> Variant:
    """Weighted A/B assignment, the same for a contact every time it is asked."""
    if len(variants) == 1:
        return variants[0]
    point = _unit("variant", scenario_id, step_id, contact_id) * sum(v.weight for v in variants)
    for variant in variants:
        point -= variant.weight
        if point < 0:
            return variant
    return variants[-1]


def in_holdout(percent: float, scenario_id: str, contact_id: str) -> bool:
    """Whether the contact is in the scenario's control group (receives nothing)."""
    return percent > 0 and _unit("holdout", scenario_id, contact_id) * 100 < percent


@dataclass(frozen=True, slots=True)
class SendWindow:
    """Local hours in which mail may go (start inclusive, end exclusive); e.g. 9 to 21."""

    start: time
    end: time

    def next_allowed(self, moment: datetime, tz: ZoneInfo) -> datetime:
        local = moment.astimezone(tz)
        t = local.time()
        if self.start <= self.end:
            if self.start <= t < self.end:
                return moment
            day = local.date() if t < self.start else local.date() + timedelta(days=1)
        else:  # a window across midnight, e.g. 20:00 to 02:00
            if t >= self.start or t < self.end:
                return moment
            day = local.date()
        return datetime.combine(day, self.start, tzinfo=tz).astimezone(UTC)


def parse_window(spec: str) -> SendWindow:
    """``"09:00-21:00"`` → a window."""
    start, _, end = spec.partition("-")
    h1, m1 = start.strip().split(":")
    h2, m2 = end.strip().split(":")
    return SendWindow(time(int(h1), int(m1)), time(int(h2), int(m2)))


def next_yearly(value: Any, at: time | None, tz: ZoneInfo, after: datetime) -> datetime | None:
    """The next anniversary of a date (birthday) at ``at`` local time, after ``after``."""
    if isinstance(value, str):
        try:
            day = date.fromisoformat(value[:10])
        except ValueError:
            return None
    elif isinstance(value, date):
        day = value
    else:
        return None
    clock = at or time(9, 0)
    local_after = after.astimezone(tz)
    for year in (local_after.year, local_after.year + 1):
        month_day = (day.month, day.day)
        if month_day == (2, 29):  # a leap-day birthday is kept on Feb 28 in other years
            try:
                date(year, 2, 29)
            except ValueError:
                month_day = (2, 28)
        candidate = datetime(year, *month_day, clock.hour, clock.minute, tzinfo=tz)
        if candidate > local_after:
            return candidate.astimezone(UTC)
    return None


@dataclass(frozen=True, slots=True)
class ContactRules:
    """Rules across all scenarios, for marketing mail (transactional mail is never held)."""

    send_window: SendWindow | None = None
    frequency_cap: timedelta | None = None


def hold_until(
    rules: ContactRules, tz: ZoneInfo, last_marketing_at: datetime | None, now: datetime
) -> datetime | None:
    """When marketing mail may go to a contact, if not now (send window, frequency cap)."""
    moment = now
    for _ in range(3):
        before = moment
        if rules.frequency_cap is not None and last_marketing_at is not None:
            moment = max(moment, last_marketing_at + rules.frequency_cap)
        if rules.send_window is not None:
            moment = rules.send_window.next_allowed(moment, tz)
        if moment == before:
            break
    return None if moment <= now else moment


def topic_opted_out(contact: Mapping[str, Any], mail_kind: str, topic: str | None) -> bool:
    """Whether the contact dropped ``topic`` of that kind on the preference page."""
    if topic is None:
        return False
    return topic in ((contact.get("opted_out_topics") or {}).get(mail_kind) or ())


def has_consent(contact: Mapping[str, Any], mail_kind: str) -> bool:
    """Marketing mail needs an opt-in on record; transactional mail needs no withdrawal."""
    record = (contact.get("consent") or {}).get(mail_kind) or {}
    if mail_kind == "marketing":
        return bool(record.get("status") == "granted")
    return bool(record.get("status") != "withdrawn")
