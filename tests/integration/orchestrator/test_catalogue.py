"""Every scenario of examples/scenarios/catalog, through the real broker and Postgres.

One orchestrator runs in-process with its real consumers, timer loop, scanner and outbox
relay; only its clock is moved by hand. Events go in on ``contact-events`` as ingest
writes them; what comes out is read back from ``steps-due``: exactly which mails, due when.
"""

import asyncio
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from stepmail_common import event_types
from stepmail_common.clock import ManualClock
from stepmail_common.events import CloudEvent
from stepmail_common.kafka import DLQ_REASON, EventProducer, ensure_topics
from stepmail_common.topics import Topics
from stepmail_orchestrator.app import create_app
from stepmail_orchestrator.engine import in_holdout
from stepmail_orchestrator.settings import OrchestratorSettings
from tests.integration.kafka_reader import read_records

pytestmark = pytest.mark.integration

_FACT_COLUMNS = {
    event_types.ENGAGEMENT_OPENED: "opened_at",
    event_types.ENGAGEMENT_CLICKED: "clicked_at",
}

TOKYO = ZoneInfo("Asia/Tokyo")
START = datetime(2026, 11, 23, 10, 0, tzinfo=TOKYO)  # a Monday, 10:00 in Tokyo
CONSENT = {
    "status": "granted",
    "kinds": ["marketing"],
    "source": "form",
    "at": "2026-11-01T00:00:00Z",
}


class Platform:
    def __init__(self, pool, producer, topics, clock, bootstrap):
        self.pool, self.producer, self.topics, self.clock = pool, producer, topics, clock
        self.bootstrap = bootstrap
        self.produced = 0

    async def send(self, contact_id: str, name: str, properties=None, **contact):
        contact = {
            "id": contact_id,
            "email": f"{contact_id}@example.com",
            "consent": CONSENT,
            **contact,
        }
        event = CloudEvent(
            type=event_types.EVENT_RECEIVED,
            source="urn:test",
            subject=contact_id,
            data={
                "name": name,
                "contact": contact,
                "properties": properties or {},
                "occurred_at": self.clock.now().isoformat(),
            },
        )
        await self.producer.publish(self.topics.contact_events, event, contact_id)
        self.produced += 1

    async def engagement(self, event_type: str, contact_id: str, data: dict) -> None:
        """A tracker event on engagement-events; waits until the orchestrator has it."""
        event = CloudEvent(type=event_type, source="urn:test", subject=contact_id, data=data)
        await self.producer.publish(self.topics.engagement_events, event, contact_id)
        # An open or a click is a fact with no mark in processed_events: its time shows it.
        fact = _FACT_COLUMNS.get(event_type)
        taken = (
            f"SELECT {fact} IS NOT NULL FROM messages WHERE message_id = $1"
            if fact
            else "SELECT count(*) > 0 FROM processed_events"
            " WHERE consumer = 'feedback' AND event_id = $1"
        )
        key = data["message_id"] if fact else event.id
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if await self.pool.fetchval(taken, key):
                return
            await asyncio.sleep(0.05)
        raise AssertionError("the orchestrator did not take the engagement event")

    async def settle(self, within: float = 30.0) -> None:
        """Until every event is consumed, nothing due is left and the outbox is empty."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            row = await self.pool.fetchrow(
                "SELECT (SELECT count(*) FROM processed_events"
                "        WHERE consumer = 'contact-events') p,"
                " (SELECT count(*) FROM enrollments"
                "        WHERE status = 'active' AND next_due_at <= $1) d,"
                " (SELECT count(*) FROM outbox) o",
                self.clock.now(),
            )
            if row["p"] >= self.produced and row["d"] == 0 and row["o"] == 0:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"orchestrator did not settle: {dict(row)}")

    async def advance_to(self, moment: datetime) -> None:
        """Move the clock in half days (the timers see each), settling each time."""
        await self.settle()
        while self.clock.now() < moment:
            self.clock.set(min(moment, self.clock.now() + timedelta(hours=12)))
            await self.settle()

    async def enrolled(self, contact_id: str, scenario: str, within: float = 10.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if await self.pool.fetchval(
                "SELECT count(*) FROM enrollments WHERE contact_id = $1 AND scenario_id = $2",
                contact_id,
                scenario,
            ):
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{contact_id} was not enrolled in {scenario}")

    async def mails(self, contact_id: str) -> list[tuple[str, str, str, datetime]]:
        """(scenario, step, template, due) of every steps-due event for the contact."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            tps = [TopicPartition(self.topics.steps_due, p) for p in range(2)]
            consumer.assign(tps)
            end = await consumer.end_offsets(tps)
            await consumer.seek_to_beginning(*tps)
            out = []

            async def behind() -> bool:
                return any([await consumer.position(tp) < end[tp] for tp in tps])

            while await behind():
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for r in records:
                        e = CloudEvent.from_json(r.value)
                        if e.subject == contact_id:
                            d = e.data
                            due = datetime.fromisoformat(d["due_at"]).astimezone(TOKYO)
                            out.append((d["scenario"]["id"], d["step"]["id"], d["template"], due))
            return sorted(out, key=lambda m: m[3])
        finally:
            await consumer.stop()


@pytest.fixture(scope="module")
async def platform(fresh_database, kafka_bootstrap, repo_root):
    database_url = fresh_database("catalogue")
    topics = Topics(f"cat{uuid.uuid4().hex[:8]}.")
    await ensure_topics(
        kafka_bootstrap, [topics.contact_events, topics.steps_due, topics.engagement_events], 2
    )
    clock = ManualClock(START.astimezone(UTC))
    settings = OrchestratorSettings(
        database_url=database_url,
        kafka_bootstrap_servers=kafka_bootstrap,
        kafka_topic_prefix=topics.prefix,
        kafka_topic_partitions=2,
        orchestrator_scenarios_dir=str(repo_root / "examples" / "scenarios" / "catalog"),
        orchestrator_timer_interval_seconds=0.05,
        orchestrator_scan_interval_seconds=0.2,
        orchestrator_notify_enabled=False,
    )
    app = create_app(settings, clock)
    async with app.router.lifespan_context(app):
        pool = await asyncpg.create_pool(
            database_url, server_settings={"search_path": "orchestrator"}
        )
        async with EventProducer(kafka_bootstrap, "test", enable_idempotence=False) as producer:
            yield Platform(pool, producer, topics, clock, kafka_bootstrap)
        await pool.close()


def _not_held_out(prefix: str, scenario: str, percent: float) -> str:
    return next(
        f"{prefix}-{i}" for i in range(100) if not in_holdout(percent, scenario, f"{prefix}-{i}")
    )


def _at(base: datetime, days: float = 0, hours: float = 0, minutes: float = 0) -> datetime:
    return base + timedelta(days=days, hours=hours, minutes=minutes)


async def test_welcome_series(platform):
    t0 = platform.clock.now().astimezone(TOKYO)
    cid = _not_held_out("welcome", "welcome-series", 10)
    await platform.send(cid, "signup")
    await platform.advance_to(_at(t0, days=6))
    mails = await platform.mails(cid)
    assert [(s, step, due) for s, step, _, due in mails] == [
        ("welcome-series", "day2", _at(t0, days=2)),
        ("welcome-series", "day5", _at(t0, days=5)),
    ]
    assert mails[0][2] in ("welcome-day2-a", "welcome-day2-b")


async def test_whitepaper_follow_up_stops_on_a_booked_demo_and_tells_sales(platform):
    t0 = platform.clock.now().astimezone(TOKYO)
    await platform.send("wp-reads", "whitepaper.downloaded")
    await platform.send("wp-books", "whitepaper.downloaded")
    await platform.send("wp-hot", "whitepaper.downloaded")
    await platform.advance_to(_at(t0, days=4))
    await platform.send("wp-books", "demo.booked")
    await platform.advance_to(_at(t0, days=7))
    day7 = await platform.pool.fetchval(
        "SELECT message_id FROM messages WHERE contact_id = 'wp-hot' AND step_id = 'day7'"
    )
    await platform.engagement(
        event_types.ENGAGEMENT_CLICKED,
        "wp-hot",
        {
            "message_id": day7,
            "contact_id": "wp-hot",
            "scenario": {"id": "whitepaper-followup", "version": 1},
            "step": {"id": "day7", "index": 2},
            "link": {"index": 0, "url": "https://example.com/pricing"},
            "machine": False,
            "at": platform.clock.now().isoformat(),
        },
    )
    await platform.advance_to(_at(t0, days=22))
    assert [(step, due) for _, step, _, due in await platform.mails("wp-reads")] == [
        ("thanks", t0),
        ("day3", _at(t0, days=3)),
        ("day7", _at(t0, days=7)),
        ("day14", _at(t0, days=14)),
        ("day21", _at(t0, days=21)),
    ]
    assert [step for _, step, _, _ in await platform.mails("wp-books")] == ["thanks", "day3"]
    converted = await platform.pool.fetchval(
        "SELECT converted FROM enrollments WHERE contact_id = 'wp-books'"
    )
    assert converted is True
    notified = {
        (r["contact"], r["reason"])
        for r in await platform.pool.fetch(
            "SELECT body -> 'contact' ->> 'id' AS contact, body ->> 'reason' AS reason"
            " FROM notifications"
        )
    }
    assert {n for n in notified if n[0].startswith("wp-")} == {
        ("wp-reads", "series-finished"),
        ("wp-hot", "pricing-clicked"),
    }
    hot = [step for _, step, _, _ in await platform.mails("wp-hot")]
    assert hot == ["thanks", "day3", "day7"]


async def test_cart_abandonment_stops_at_once_on_the_order_for_that_cart(platform):
    t0 = platform.clock.now().astimezone(TOKYO)
    items = [{"title": "抹茶セット", "quantity": 1, "price": "3200"}]
    await platform.send(
        "cart-lost", "checkout.started", {"checkout_token": "t-1", "line_items": items}
    )
    await platform.send(
        "cart-won", "checkout.started", {"checkout_token": "t-2", "line_items": items}
    )
    await platform.advance_to(_at(t0, hours=4))
    await platform.send("cart-won", "order.completed", {"checkout_token": "t-2"})
    await platform.advance_to(_at(t0, days=2))
    lost = await platform.mails("cart-lost")
    assert [(step, due) for _, step, _, due in lost] == [
        ("reminder", _at(t0, hours=3)),
        # 18 hours later is 07:00 in Tokyo: the send window holds it until 09:00
        ("coupon", _at(t0, hours=23)),
    ]
    won = await platform.mails("cart-won")
    assert [(sc, step) for sc, step, _, _ in won] == [
        ("cart-abandonment", "reminder"),
        ("purchase-followup", "thanks"),  # the order starts its own scenario
    ]


async def test_purchase_follow_up(platform):
    t0 = platform.clock.now().astimezone(TOKYO)
    await platform.send("buyer", "order.completed", {"order_id": "1001"})
    await platform.advance_to(_at(t0, days=31))
    assert [(step, due) for _, step, _, due in await platform.mails("buyer")] == [
        ("thanks", t0),
        ("review", _at(t0, days=7)),
        ("repurchase", _at(t0, days=30)),
    ]


async def test_webinar_reminder_the_day_before_its_start(platform):
    t0 = platform.clock.now().astimezone(TOKYO)
    starts = _at(t0, days=10, hours=9)  # 19:00 Tokyo
    await platform.send("attendee", "webinar.registered", {"starts_at": starts.isoformat()})
    await platform.advance_to(_at(t0, days=13))
    assert [(step, due) for _, step, _, due in await platform.mails("attendee")] == [
        ("confirmed", t0),
        ("reminder", starts - timedelta(days=1)),
        ("thanks", starts + timedelta(hours=2)),
        ("followup", starts + timedelta(days=2, hours=2)),
    ]


async def test_trial_steps_count_back_from_its_end(platform):
    t0 = platform.clock.now().astimezone(TOKYO)
    ends = (t0 + timedelta(days=14)).date()
    await platform.send("trialist", "trial.started", attributes={"trial_ends_on": ends.isoformat()})
    await platform.advance_to(_at(t0, days=15))
    ten = datetime.combine(ends, datetime.min.time(), tzinfo=TOKYO) + timedelta(hours=10)
    assert [(step, due) for _, step, _, due in await platform.mails("trialist")] == [
        ("four-days-left", ten - timedelta(days=4)),
        ("last-day", ten),
    ]


async def test_birthday_every_year_at_ten(platform):
    t0 = platform.clock.now().astimezone(TOKYO)
    birthday = (t0 + timedelta(days=3)).date()
    await platform.send(
        "bday",
        "signup",
        attributes={"birthday": date(1990, birthday.month, birthday.day).isoformat()},
    )
    await platform.settle()
    platform.clock.set(
        datetime.combine(birthday, datetime.min.time(), tzinfo=TOKYO) + timedelta(hours=1)
    )
    await platform.enrolled("bday", "birthday")
    await platform.advance_to(
        datetime.combine(birthday, datetime.min.time(), tzinfo=TOKYO) + timedelta(hours=12)
    )
    mails = [m for m in await platform.mails("bday") if m[0] == "birthday"]
    assert [(step, due) for _, step, _, due in mails] == [
        (
            "coupon",
            datetime.combine(birthday, datetime.min.time(), tzinfo=TOKYO) + timedelta(hours=10),
        ),
    ]


async def test_pricing_page_three_times_within_a_week(platform):
    t0 = platform.clock.now().astimezone(TOKYO)
    await platform.send("browser", "page.viewed", {"page": "pricing"})
    await platform.send("browser", "page.viewed", {"page": "blog"})
    await platform.send("browser", "page.viewed", {"page": "pricing"})
    await platform.settle()
    assert (
        await platform.pool.fetchval(
            "SELECT count(*) FROM enrollments WHERE contact_id = 'browser'"
        )
        == 0
    )
    await platform.send("browser", "page.viewed", {"page": "pricing"})
    await platform.advance_to(_at(t0, days=4))
    mails = await platform.mails("browser")
    assert len(mails) == 1
    scenario, step, _, due = mails[0]
    assert (scenario, step) == ("pricing-interest", "offer-call")
    assert due.weekday() < 5
    assert due.time().hour == 10
    assert due >= _at(t0, hours=1)


async def test_reengagement_of_dormant_contacts(platform):
    t0 = platform.clock.now().astimezone(TOKYO)
    await platform.send("sleeper", "order.completed", {"order_id": "9"})
    await platform.send("sleeper-opens", "order.completed", {"order_id": "10"})
    await platform.settle()
    platform.clock.set(_at(t0, days=90, minutes=1))
    await platform.enrolled("sleeper", "reengagement", within=20)
    await platform.enrolled("sleeper-opens", "reengagement", within=20)
    await platform.settle()
    start = platform.clock.now().astimezone(TOKYO)
    first = await platform.pool.fetchval(
        "SELECT message_id FROM messages"
        " WHERE contact_id = 'sleeper-opens' AND step_id = 'miss-you'"
    )
    await platform.engagement(
        event_types.ENGAGEMENT_OPENED,
        "sleeper-opens",
        {
            "message_id": first,
            "contact_id": "sleeper-opens",
            "scenario": {"id": "reengagement", "version": 1},
            "step": {"id": "miss-you", "index": 0},
            "machine": False,
            "at": start.isoformat(),
        },
    )
    await platform.advance_to(_at(start, days=11))

    async def steps(contact_id: str) -> list[tuple[str, datetime]]:
        mails = await platform.mails(contact_id)
        return [(step, due) for s, step, _, due in mails if s == "reengagement"]

    assert await steps("sleeper") == [
        ("miss-you", start),
        ("resend-new-subject", _at(start, days=3)),
        ("stay-subscribed", _at(start, days=10)),
    ]
    # opened the first mail: no resend with another subject
    assert await steps("sleeper-opens") == [
        ("miss-you", start),
        ("stay-subscribed", _at(start, days=10)),
    ]


async def test_a_poison_trigger_is_dead_lettered_alone_and_the_others_enroll_once(platform):
    # Postgres refuses a NUL character in jsonb: this event can never be stored.
    poison = CloudEvent(
        type=event_types.EVENT_RECEIVED,
        source="urn:test",
        subject="poisoned",
        data={
            "name": "order.completed",
            "contact": {"id": "poisoned", "email": "poisoned@example.com", "consent": CONSENT},
            "properties": {"order_id": "\x00"},
            "occurred_at": platform.clock.now().isoformat(),
        },
    )
    await platform.send("before-poison", "order.completed", {"order_id": "1"})
    await platform.producer.publish(platform.topics.contact_events, poison, "poisoned")
    await platform.send("after-poison", "order.completed", {"order_id": "2"})
    await platform.settle()
    dead = await read_records(
        platform.bootstrap, Topics.dlq(platform.topics.contact_events), 1, within=20
    )
    assert [CloudEvent.from_json(r.value).id for r in dead] == [poison.id]
    reason = dict(dead[0].headers)[DLQ_REASON].decode()
    assert reason.startswith("UntranslatableCharacterError")
    for contact_id in ("before-poison", "after-poison"):
        assert [s for s, *_ in await platform.mails(contact_id)] == ["purchase-followup"]
    assert not await platform.pool.fetchval("SELECT count(*) FROM contacts WHERE id = 'poisoned'")
