from collections import Counter
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from stepmail_orchestrator import engine
from stepmail_orchestrator.scenarios import Variant, Wait

TOKYO = ZoneInfo("Asia/Tokyo")
# Monday 2026-11-23 10:00 in Tokyo
START = datetime(2026, 11, 23, 1, 0, tzinfo=UTC)


def test_duration_wait():
    assert engine.wake_time(
        Wait(duration=timedelta(days=2)), START, TOKYO, {}
    ) == START + timedelta(days=2)


def test_wait_until_local_time_of_day_today_or_tomorrow():
    at_noon = engine.wake_time(Wait(at=time(12, 0)), START, TOKYO, {})
    assert at_noon == datetime(2026, 11, 23, 12, 0, tzinfo=TOKYO)
    at_nine = engine.wake_time(Wait(at=time(9, 0)), START, TOKYO, {})
    assert at_nine == datetime(2026, 11, 24, 9, 0, tzinfo=TOKYO)


def test_wait_for_weekday():
    friday = engine.wake_time(Wait(at=time(10, 0), weekdays=frozenset({4})), START, TOKYO, {})
    assert friday == datetime(2026, 11, 27, 10, 0, tzinfo=TOKYO)


def test_wait_until_a_date_in_the_event_minus_a_day():
    ctx = {"trigger": {"properties": {"starts_at": "2026-12-01T19:00:00+09:00"}}}
    wait = Wait(until_date="trigger.properties.starts_at", offset=timedelta(days=-1))
    assert engine.wake_time(wait, START, TOKYO, ctx) == datetime(2026, 11, 30, 19, 0, tzinfo=TOKYO)


def test_wait_until_a_bare_date_at_a_local_time():
    ctx = {"contact": {"attributes": {"trial_end": "2026-12-10"}}}
    wait = Wait(
        until_date="contact.attributes.trial_end", offset=timedelta(days=-4), at=time(10, 0)
    )
    assert engine.wake_time(wait, START, TOKYO, ctx) == datetime(2026, 12, 6, 10, 0, tzinfo=TOKYO)


def test_a_date_already_past_is_due_now_and_an_unknown_one_is_none():
    ctx = {"trigger": {"properties": {"starts_at": "2026-01-01T00:00:00+09:00"}}}
    wait = Wait(until_date="trigger.properties.starts_at")
    assert engine.wake_time(wait, START, TOKYO, ctx) == START
    assert engine.wake_time(Wait(until_date="trigger.properties.nope"), START, TOKYO, ctx) is None


def test_variants_are_stable_and_follow_the_weights():
    variants = (Variant("a", "t-a", 3.0), Variant("b", "t-b", 1.0))
    picks = Counter(
        engine.choose_variant(variants, "s", "step", f"c-{i}").name for i in range(4000)
    )
    assert 2800 < picks["a"] < 3200
    assert engine.choose_variant(variants, "s", "step", "c-1") == engine.choose_variant(
        variants, "s", "step", "c-1"
    )


def test_holdout_share():
    held = sum(engine.in_holdout(10, "s", f"c-{i}") for i in range(5000))
    assert 400 < held < 600
    assert not any(engine.in_holdout(0, "s", f"c-{i}") for i in range(100))


@pytest.mark.parametrize(
    ("local", "expected"),
    [
        (datetime(2026, 11, 23, 10, 0, tzinfo=TOKYO), datetime(2026, 11, 23, 10, 0, tzinfo=TOKYO)),
        (datetime(2026, 11, 23, 22, 30, tzinfo=TOKYO), datetime(2026, 11, 24, 9, 0, tzinfo=TOKYO)),
        (datetime(2026, 11, 23, 3, 0, tzinfo=TOKYO), datetime(2026, 11, 23, 9, 0, tzinfo=TOKYO)),
    ],
)
def test_send_window(local, expected):
    window = engine.parse_window("09:00-21:00")
    assert window.next_allowed(local.astimezone(UTC), TOKYO) == expected


def test_yearly_dates_and_leap_day():
    after = datetime(2026, 11, 23, 0, 0, tzinfo=UTC)
    assert engine.next_yearly("1990-12-24", time(10, 0), TOKYO, after) == datetime(
        2026, 12, 24, 10, 0, tzinfo=TOKYO
    )
    assert engine.next_yearly("1992-02-29", None, TOKYO, after) == datetime(
        2027, 2, 28, 9, 0, tzinfo=TOKYO
    )
    assert engine.next_yearly("not a date", None, TOKYO, after) is None


def test_unknown_time_zone_falls_back_to_tokyo():
    assert engine.zone("Mars/Olympus") == TOKYO
    assert engine.zone(None) == TOKYO
