"""Scenarios on real Postgres with a moved clock: what goes out when, and what does not."""

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer

from stepmail_common import event_types
from stepmail_common.clock import ManualClock
from stepmail_common.db import create_pool, migrate
from stepmail_common.events import CloudEvent
from stepmail_common.kafka import EventProducer, ensure_topics
from stepmail_common.outbox import OutboxRelay
from stepmail_common.topics import Topics
from stepmail_orchestrator import repository
from stepmail_orchestrator import scanner as scanner_module
from stepmail_orchestrator.engine import ContactRules, parse_window
from stepmail_orchestrator.handlers import ContactEventHandler, FeedbackHandler, consumed
from stepmail_orchestrator.progress import Progress
from stepmail_orchestrator.scanner import TriggerScanner
from stepmail_orchestrator.scenarios import parse_scenario
from stepmail_orchestrator.settings import OrchestratorSettings
from stepmail_orchestrator.timers import TimerLoop

pytestmark = pytest.mark.integration

# Monday 2026-11-23 10:00 in Tokyo
START = datetime(2026, 11, 23, 1, 0, tzinfo=UTC)
CONSENT = {"status": "granted", "kinds": ["marketing"], "source": "form", "at": START.isoformat()}


class Env:
    """One orchestrator's moving parts on a real database, driven by hand."""

    def __init__(self, pool, settings, clock, rules=None):
        self.pool, self.clock = pool, clock
        self.progress = Progress(Topics(), rules or ContactRules())
        self.contact_handler = ContactEventHandler(
            pool, settings, clock, self.progress, asyncio.Event()
        )
        self.feedback_handler = FeedbackHandler(pool, clock, self.progress)
        self.timer = TimerLoop(pool, self.progress, clock, asyncio.Event(), interval=0.1, batch=100)

    async def contact_events(self, *events: CloudEvent) -> None:
        """Handle ``events`` as one consumed batch; none may fail."""
        assert await self.contact_handler([consumed(e) for e in events]) == {}

    async def feedback(self, *events: CloudEvent) -> None:
        assert await self.feedback_handler([consumed(e) for e in events]) == {}

    async def scenario(self, doc: dict[str, Any]) -> None:
        async with self.pool.acquire() as conn:
            await repository.save_scenario(conn, parse_scenario(doc))

    async def event(
        self, contact_id: str, event_name: str, properties=None, email="a@example.com", **contact
    ):
        data = {
            "name": event_name,
            "contact": {"id": contact_id, **({"email": email} if email else {}), **contact},
            "properties": properties or {},
            "occurred_at": self.clock.now().isoformat(),
        }
        await self.contact_events(
            CloudEvent(
                type=event_types.EVENT_RECEIVED, source="urn:test", subject=contact_id, data=data
            )
        )

    async def consent(self, contact_id: str, status="granted", kinds=("marketing",)):
        data = {
            "contact": {"id": contact_id},
            "consent": {**CONSENT, "status": status, "kinds": list(kinds)},
            "updated_at": self.clock.now().isoformat(),
        }
        await self.contact_events(
            CloudEvent(
                type=event_types.CONTACT_UPDATED, source="urn:test", subject=contact_id, data=data
            )
        )

    async def run_until(self, moment: datetime, step=timedelta(minutes=30)) -> None:
        """Move the clock to ``moment`` in small steps, firing timers on the way."""
        while self.clock.now() < moment:
            self.clock.set(min(moment, self.clock.now() + step))
            while await self.timer.fire_due():
                pass

    async def mails(self) -> list[tuple[str, str, str, datetime]]:
        """(contact, step, template, time) of every steps-due event written so far."""
        rows = await self.pool.fetch("SELECT event FROM outbox ORDER BY id")
        return [
            (
                r["event"]["subject"],
                r["event"]["data"]["step"]["id"],
                r["event"]["data"]["template"],
                datetime.fromisoformat(r["event"]["time"].replace("Z", "+00:00")),
            )
            for r in rows
        ]

    async def enrollment(self, contact_id: str) -> dict[str, Any]:
        async with self.pool.acquire() as conn:
            rows = await repository.enrollments_of(conn, contact_id)
        assert len(rows) == 1
        return dict(rows[0])


@pytest.fixture
async def env(database_url):
    pool = await create_pool(database_url, "orchestrator")
    await migrate(pool, "orchestrator", "stepmail_orchestrator")
    yield Env(pool, OrchestratorSettings(database_url=database_url), ManualClock(START))
    await pool.close()


def _days(n: float) -> timedelta:
    return timedelta(days=n)


async def test_welcome_series_goes_out_at_its_offsets_and_a_redelivery_enrolls_once(env):
    await env.scenario(
        {
            "id": "welcome",
            "mail_kind": "transactional",
            "trigger": {"event": "signup"},
            "steps": [
                {"id": "now", "send": {"template": "w1"}},
                {"id": "day2", "wait": "2d", "send": {"template": "w2"}},
                {"id": "day5", "wait": "3d", "send": {"template": "w3"}},
            ],
        }
    )
    await env.event("c-1", "signup")
    event = CloudEvent(
        type=event_types.EVENT_RECEIVED,
        source="urn:test",
        subject="c-2",
        data={
            "name": "signup",
            "contact": {"id": "c-2", "email": "b@example.com"},
            "properties": {},
            "occurred_at": START.isoformat(),
        },
    )
    await env.contact_events(event)
    await env.contact_events(event)  # redelivered
    await env.run_until(START + _days(10))
    mails = await env.mails()
    assert [(c, s, t) for c, s, t, _ in mails if c == "c-1"] == [
        ("c-1", "now", "w1"),
        ("c-1", "day2", "w2"),
        ("c-1", "day5", "w3"),
    ]
    assert [at for c, _, _, at in mails if c == "c-1"] == [
        START,
        START + _days(2),
        START + _days(5),
    ]
    assert len([m for m in mails if m[0] == "c-2"]) == 3
    assert (await env.enrollment("c-1"))["status"] == "completed"


async def test_cart_abandonment_stops_on_the_order_for_that_cart_only(env):
    await env.scenario(
        {
            "id": "cart",
            "trigger": {"event": "checkout.started"},
            "exit": [{"event": "order.completed", "same": ["checkout_token"], "conversion": True}],
            "steps": [
                {"id": "reminder", "wait": "3h", "send": {"template": "cart-1"}},
                {"id": "coupon", "wait": "18h", "send": {"template": "cart-2"}},
            ],
        }
    )
    for cid in ("c-buys", "c-other-cart", "c-never"):
        await env.consent(cid)
    for cid in ("c-buys", "c-other-cart", "c-never"):
        await env.event(
            cid, "checkout.started", {"checkout_token": f"tok-{cid}", "items": [{"sku": "A"}]}
        )
    await env.run_until(START + timedelta(hours=4))
    await env.event("c-buys", "order.completed", {"checkout_token": "tok-c-buys"})
    await env.event("c-other-cart", "order.completed", {"checkout_token": "some-other-cart"})
    await env.run_until(START + _days(3))
    sent = [(c, s) for c, s, _, _ in await env.mails()]
    assert sent == [
        ("c-buys", "reminder"),
        ("c-other-cart", "reminder"),
        ("c-never", "reminder"),
        ("c-other-cart", "coupon"),
        ("c-never", "coupon"),
    ]
    buys = await env.enrollment("c-buys")
    assert (buys["status"], buys["converted"]) == ("exited", True)


async def test_marketing_needs_consent_and_waits_for_the_send_window_and_the_cap(database_url):
    pool = await create_pool(database_url, "orchestrator")
    await migrate(pool, "orchestrator", "stepmail_orchestrator")
    rules = ContactRules(send_window=parse_window("09:00-21:00"), frequency_cap=timedelta(hours=24))
    # 23:00 in Tokyo
    env = Env(
        pool,
        OrchestratorSettings(database_url=database_url),
        ManualClock(START + timedelta(hours=13)),
        rules,
    )
    try:
        await env.scenario(
            {
                "id": "news",
                "trigger": {"event": "signup"},
                "steps": [
                    {"id": "one", "wait": "10m", "send": {"template": "n1"}},
                    {"id": "two", "send": {"template": "n2"}},
                ],
            }
        )
        await env.scenario(
            {
                "id": "hello",
                "trigger": {"event": "signup"},
                "steps": [{"id": "now", "send": {"template": "h"}}],
            }
        )
        await env.event("c-no-consent", "signup")
        await env.consent("c-yes")
        await env.event("c-yes", "signup")
        await env.run_until(START + _days(3))
        mails = await env.mails()
        assert [(c, s, at) for c, s, _, at in mails] == [
            # at 23:00 the mail that answers the sign-up goes at once ...
            ("c-yes", "now", START + timedelta(hours=13)),
            # ... a later one waits for the cap (24 h, 23:00 the next day), then for the
            # window (09:00 the day after); the next one waits for the cap again.
            ("c-yes", "one", START + timedelta(hours=47)),
            ("c-yes", "two", START + timedelta(hours=71)),
        ]
    finally:
        await pool.close()


async def test_webinar_reminder_is_a_day_before_the_date_in_the_event(env):
    await env.scenario(
        {
            "id": "webinar",
            "mail_kind": "transactional",
            "trigger": {"event": "webinar.registered"},
            "steps": [
                {"id": "thanks", "send": {"template": "reg"}},
                {
                    "id": "reminder",
                    "wait": {"until": {"date": "trigger.properties.starts_at", "offset": "-1d"}},
                    "send": {"template": "remind"},
                },
                {
                    "id": "after",
                    "wait": {"until": {"date": "trigger.properties.starts_at", "offset": "+2h"}},
                    "send": {"template": "thanks-for-joining"},
                },
            ],
        }
    )
    starts = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    await env.event("c-1", "webinar.registered", {"starts_at": starts.isoformat()})
    await env.run_until(starts + _days(1))
    assert [(s, at) for _, s, _, at in await env.mails()] == [
        ("thanks", START),
        ("reminder", starts - _days(1)),
        ("after", starts + timedelta(hours=2)),
    ]


async def test_threshold_trigger_three_pricing_views_within_seven_days(env):
    await env.scenario(
        {
            "id": "hot-lead",
            "mail_kind": "transactional",
            "trigger": {
                "event": "page.viewed",
                "where": {"properties.page": "pricing"},
                "count": {"at_least": 3, "within": "7d"},
            },
            "steps": [{"id": "hello", "send": {"template": "sales"}}],
        }
    )
    for day in (0, 1):
        env.clock.set(START + _days(day))
        await env.event("c-slow", "page.viewed", {"page": "pricing"})
    env.clock.set(START + _days(9))
    await env.event("c-slow", "page.viewed", {"page": "pricing"})  # the first two are too old
    for i in range(3):
        env.clock.set(START + _days(10) + timedelta(hours=i))
        await env.event("c-hot", "page.viewed", {"page": "pricing" if i != 1 else "blog"})
    await env.event("c-hot", "page.viewed", {"page": "pricing"})
    assert [c for c, *_ in await env.mails()] == ["c-hot"]
    # the scanner keeps activity only as long as the 7-day window can count it
    scanner = TriggerScanner(env.pool, env.progress, env.clock, asyncio.Event(), interval=60)
    env.clock.set(START + _days(16))
    await scanner.scan()
    assert await env.pool.fetchval("SELECT count(*) FROM activity") == 5  # day 9 and later
    env.clock.set(START + _days(18))
    await scanner.scan()
    assert await env.pool.fetchval("SELECT count(*) FROM activity") == 0


async def test_branch_on_an_earlier_mail_being_opened(env):
    await env.scenario(
        {
            "id": "reengage",
            "mail_kind": "transactional",
            "trigger": {"event": "signup"},
            "steps": [
                {"id": "first", "send": {"template": "r1"}},
                {
                    "id": "check",
                    "wait": "3d",
                    "branch": {"cases": [{"if": {"steps.first.opened": True}, "goto": "done"}]},
                },
                {"id": "again", "send": {"template": "r1-new-subject"}},
                {"id": "done", "end": True},
            ],
        }
    )
    await env.event("c-opens", "signup")
    await env.event("c-ignores", "signup")
    mails = await env.mails()
    opened = next(
        CloudEvent(
            type=event_types.ENGAGEMENT_OPENED,
            source="urn:test",
            subject="c-opens",
            data={
                "message_id": m["event"]["data"]["message_id"],
                "contact_id": "c-opens",
                "scenario": {"id": "reengage", "version": 1},
                "step": {"id": "first", "index": 0},
                "machine": False,
                "at": START.isoformat(),
            },
        )
        for m in await env.pool.fetch("SELECT event FROM outbox")
        if m["event"]["subject"] == "c-opens"
    )
    await env.feedback(opened)
    await env.run_until(START + _days(5))
    assert [(c, s) for c, s, _, _ in await env.mails()] == [
        ("c-opens", "first"),
        ("c-ignores", "first"),
        ("c-ignores", "again"),
    ]
    assert len(mails) == 2


async def test_unsubscribe_ends_marketing_enrollments(env):
    await env.scenario(
        {
            "id": "series",
            "trigger": {"event": "signup"},
            "steps": [
                {"id": "one", "send": {"template": "s1"}},
                {"id": "two", "wait": "1d", "send": {"template": "s2"}},
            ],
        }
    )
    await env.consent("c-1")
    await env.event("c-1", "signup")
    message_id = await env.pool.fetchval("SELECT message_id FROM messages")
    await env.feedback(
        CloudEvent(
            type=event_types.ENGAGEMENT_UNSUBSCRIBED,
            source="urn:test",
            subject="c-1",
            data={
                "message_id": message_id,
                "contact_id": "c-1",
                "mail_kind": "marketing",
                "method": "one-click",
                "at": START.isoformat(),
            },
        )
    )
    await env.run_until(START + _days(3))
    assert [s for _, s, _, _ in await env.mails()] == ["one"]
    assert (await env.enrollment("c-1"))["exit_reason"] == "opted_out"


async def test_a_topic_opt_out_skips_that_topic_only_until_resubscribed(env):
    await env.scenario(
        {
            "id": "newsletter",
            "topic": "news",
            "trigger": {"event": "signup"},
            "steps": [
                {"id": "news1", "send": {"template": "n1"}},
                {"id": "sale", "wait": "1d", "send": {"template": "s1", "topic": "campaign"}},
                {"id": "news2", "wait": "1d", "send": {"template": "n2"}},
                {"id": "news3", "wait": "1d", "send": {"template": "n3"}},
            ],
        }
    )
    await env.consent("c-1")
    await env.event("c-1", "signup")
    message_id = await env.pool.fetchval("SELECT message_id FROM messages")
    common = {"contact_id": "c-1", "mail_kind": "marketing", "method": "page"}
    await env.feedback(
        CloudEvent(
            type=event_types.ENGAGEMENT_UNSUBSCRIBED,
            source="urn:test",
            subject="c-1",
            data={**common, "message_id": message_id, "topics": ["news"], "at": START.isoformat()},
        )
    )
    await env.run_until(START + _days(2) + timedelta(hours=1))
    await env.feedback(
        CloudEvent(
            type=event_types.ENGAGEMENT_RESUBSCRIBED,
            source="urn:test",
            subject="c-1",
            data={**common, "message_id": message_id, "at": env.clock.now().isoformat()},
        )
    )
    await env.run_until(START + _days(4))
    rows = await env.pool.fetch("SELECT event FROM outbox ORDER BY id")
    # news2 was due while "news" was dropped: skipped; the campaign mail and, after the
    # re-subscription, news3 go; the enrollment itself was never ended.
    assert [(r["event"]["data"]["step"]["id"], r["event"]["data"].get("topic")) for r in rows] == [
        ("news1", "news"),
        ("sale", "campaign"),
        ("news3", "news"),
    ]
    assert (await env.enrollment("c-1"))["status"] == "completed"


async def test_holdout_gets_nothing_and_variants_split(env):
    await env.scenario(
        {
            "id": "ab",
            "mail_kind": "transactional",
            "trigger": {"event": "signup"},
            "holdout_percent": 20,
            "steps": [
                {
                    "id": "one",
                    "send": {
                        "variants": [
                            {"name": "a", "template": "t-a", "weight": 1},
                            {"name": "b", "template": "t-b", "weight": 1},
                        ]
                    },
                }
            ],
        }
    )
    for i in range(200):
        await env.event(f"c-{i}", "signup")
    statuses = dict(
        await env.pool.fetch("SELECT status, count(*) FROM enrollments GROUP BY status")
    )
    templates = [t for _, _, t, _ in await env.mails()]
    assert 20 <= statuses["held_out"] <= 60
    assert len(templates) == statuses["completed"] == 200 - statuses["held_out"]
    assert 0.35 < templates.count("t-a") / len(templates) < 0.65


async def test_inactivity_and_birthday_triggers(env):
    await env.scenario(
        {
            "id": "dormant",
            "mail_kind": "transactional",
            "trigger": {"inactive_for": "90d"},
            "steps": [{"id": "miss-you", "send": {"template": "d1"}}],
        }
    )
    await env.scenario(
        {
            "id": "birthday",
            "mail_kind": "transactional",
            "trigger": {"yearly": {"date": "contact.attributes.birthday", "at": "10:00"}},
            "steps": [{"id": "hbd", "send": {"template": "bd"}}],
        }
    )
    await env.event("c-quiet", "signup")
    await env.event("c-bday", "signup", attributes={"birthday": "1990-11-25"})
    scanner = TriggerScanner(env.pool, env.progress, env.clock, asyncio.Event(), interval=60)
    env.clock.set(START + _days(1))
    assert await scanner.scan() == 0
    env.clock.set(START + _days(2) - timedelta(hours=9))  # 2026-11-25 01:00 Tokyo
    assert await scanner.scan() == 1
    await env.run_until(START + _days(2) + timedelta(hours=1))
    env.clock.set(START + _days(91))
    await scanner.scan()
    await scanner.scan()  # a second pass enrolls nobody twice
    await env.run_until(START + _days(91) + timedelta(hours=1))
    assert [(c, s, at) for c, s, _, at in await env.mails()] == [
        ("c-bday", "hbd", datetime(2026, 11, 25, 1, 0, tzinfo=UTC)),
        ("c-quiet", "miss-you", START + _days(91)),
        ("c-bday", "miss-you", START + _days(91)),
    ]


async def test_erasure_forgets_the_contact(env):
    await env.scenario(
        {
            "id": "w",
            "mail_kind": "transactional",
            "trigger": {"event": "signup"},
            "steps": [{"id": "one", "wait": "1d", "send": {"template": "w"}}],
        }
    )
    await env.event("c-gone", "signup", name="山田 花子")
    await env.contact_events(
        CloudEvent(
            type=event_types.CONTACT_ERASED,
            source="urn:test",
            subject="c-gone",
            data={"contact_id": "c-gone", "requested_at": START.isoformat()},
        )
    )
    for table in ("contacts", "enrollments", "activity"):
        assert await env.pool.fetchval(f"SELECT count(*) FROM {table}") == 0
    await env.run_until(START + _days(2))
    assert await env.mails() == []


async def test_two_replicas_fire_every_due_step_exactly_once(env, database_url):
    await env.scenario(
        {
            "id": "series",
            "mail_kind": "transactional",
            "trigger": {"event": "signup"},
            "steps": [
                {"id": "a", "wait": "1h", "send": {"template": "a"}},
                {"id": "b", "wait": "2d", "send": {"template": "b"}},
            ],
        }
    )
    for i in range(300):
        await env.event(f"c-{i}", "signup")
    other_pool = await create_pool(database_url, "orchestrator")
    try:
        other = TimerLoop(
            other_pool, env.progress, env.clock, asyncio.Event(), interval=0.1, batch=25
        )
        mine = TimerLoop(env.pool, env.progress, env.clock, asyncio.Event(), interval=0.1, batch=25)

        async def drain(timer: TimerLoop) -> int:
            fired = 0
            while n := await timer.fire_due():
                fired += n
            return fired

        env.clock.advance(timedelta(hours=1))
        counts = await asyncio.gather(drain(mine), drain(other))
        env.clock.advance(_days(2))
        counts2 = await asyncio.gather(drain(mine), drain(other))
    finally:
        await other_pool.close()
    assert sum(counts) == sum(counts2) == 300
    assert all(counts), "both replicas took part"
    ids = [
        r["event"]["data"]["message_id"] for r in await env.pool.fetch("SELECT event FROM outbox")
    ]
    assert len(ids) == len(set(ids)) == 600


async def test_relay_publishes_outbox_rows_once_with_contact_keys(env, kafka_bootstrap):
    topics = Topics(f"it{uuid.uuid4().hex[:8]}.")
    await ensure_topics(kafka_bootstrap, [topics.steps_due], 2)
    env.progress = Progress(topics, ContactRules())
    env.contact_handler = ContactEventHandler(
        env.pool, OrchestratorSettings(), env.clock, env.progress, asyncio.Event()
    )
    await env.scenario(
        {
            "id": "w",
            "mail_kind": "transactional",
            "trigger": {"event": "signup"},
            "steps": [{"id": "one", "send": {"template": "w"}}],
        }
    )
    for i in range(20):
        await env.event(f"c-{i}", "signup")
    async with EventProducer(kafka_bootstrap, "test", enable_idempotence=False) as producer:
        relay = OutboxRelay(env.pool, producer, interval=0.1)
        assert await relay.run_once() is False
        assert await env.pool.fetchval("SELECT count(*) FROM outbox") == 0
    consumer = AIOKafkaConsumer(
        topics.steps_due, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        records = []
        for _ in range(50):
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(batch)
            if len(records) >= 20:
                break
    finally:
        await consumer.stop()
    assert len(records) == 20
    events = [CloudEvent.from_json(r.value) for r in records]
    assert all(r.key.decode() == e.subject for r, e in zip(records, events, strict=True))
    assert {e.type for e in events} == {event_types.STEP_DUE}


def _signup(contact_id: str, properties: dict[str, Any] | None = None) -> CloudEvent:
    return CloudEvent(
        type=event_types.EVENT_RECEIVED,
        source="urn:test",
        subject=contact_id,
        data={
            "name": "signup",
            "contact": {"id": contact_id, "email": f"{contact_id}@example.com"},
            "properties": properties or {},
            "occurred_at": START.isoformat(),
        },
    )


async def test_a_poison_event_fails_alone_and_the_rest_of_its_batch_takes_effect_once(env):
    await env.scenario(
        {
            "id": "w",
            "mail_kind": "transactional",
            "trigger": {"event": "signup"},
            "steps": [{"id": "one", "send": {"template": "w"}}],
        }
    )
    # Postgres refuses a NUL character in jsonb: this event can never be stored.
    poison = _signup("c-poison", {"note": "\x00"})
    ignored = CloudEvent(type="stepmail.other", source="urn:test", subject="c-x", data={})
    batch = [_signup("c-1"), poison, ignored, _signup("c-2"), _signup("c-1", {"again": True})]
    failures = await env.contact_handler([consumed(e) for e in batch])
    assert list(failures) == [1]
    assert isinstance(failures[1], asyncpg.UntranslatableCharacterError)
    # Redelivered (the offsets were not committed before a crash): no second effect.
    assert list(await env.contact_handler([consumed(e) for e in batch])) == [1]
    assert sorted(c for c, *_ in await env.mails()) == ["c-1", "c-2"]
    processed = {
        r["event_id"] for r in await env.pool.fetch("SELECT event_id FROM processed_events")
    }
    assert processed == {batch[0].id, batch[3].id, batch[4].id}
    assert await env.pool.fetchval("SELECT count(*) FROM activity") == 3
    assert not await env.pool.fetchval("SELECT count(*) FROM contacts WHERE id = 'c-poison'")


async def test_a_batch_redelivered_with_an_event_twice_acts_once(env):
    await env.scenario(
        {
            "id": "w",
            "mail_kind": "transactional",
            "trigger": {"event": "signup"},
            "steps": [{"id": "one", "send": {"template": "w"}}],
        }
    )
    event = _signup("c-1")
    await env.contact_events(event, event, _signup("c-2"))
    await env.contact_events(event)
    assert sorted(c for c, *_ in await env.mails()) == ["c-1", "c-2"]
    assert await env.pool.fetchval("SELECT count(*) FROM activity") == 2


async def test_a_sent_fact_redelivered_keeps_its_first_time_and_costs_no_mark(env):
    await env.scenario(
        {
            "id": "w",
            "mail_kind": "transactional",
            "trigger": {"event": "signup"},
            "steps": [{"id": "one", "send": {"template": "w"}}],
        }
    )
    await env.event("c-1", "signup")
    message_id = await env.pool.fetchval("SELECT message_id FROM messages")
    marked = await env.pool.fetchval("SELECT count(*) FROM processed_events")

    def sent(at: datetime) -> CloudEvent:
        data = {
            "message_id": message_id,
            "contact_id": "c-1",
            "scenario": {"id": "w", "version": 1},
            "step": {"id": "one", "index": 0},
            "state": "sent",
            "attempt": 1,
            "at": at.isoformat(),
        }
        return CloudEvent(
            type=event_types.DELIVERY_SENT, source="urn:test", subject="c-1", data=data
        )

    first = sent(START - timedelta(seconds=9))
    await env.feedback(first, first)
    await env.feedback(first, sent(START - timedelta(seconds=1)))  # redelivered, then resent
    assert await env.pool.fetchval(
        "SELECT sent_at FROM messages WHERE message_id = $1", message_id
    ) == START - timedelta(seconds=9)
    assert await env.pool.fetchval("SELECT count(*) FROM processed_events") == marked


async def test_the_scanner_forgets_marks_older_than_an_event_can_come_again(env, monkeypatch):
    await env.pool.execute(
        "INSERT INTO processed_events (consumer, event_id, processed_at)"
        " SELECT 'contact-events', 'e-' || n, now() - interval '1 hour' - n * interval '1 day'"
        " FROM generate_series(0, 59) AS n"
    )
    # 25 to forget, 7 at a time: passes until none is left.
    monkeypatch.setattr(scanner_module, "MARKS_PRUNED_AT_ONCE", 7)
    scanner = TriggerScanner(
        env.pool, env.progress, env.clock, asyncio.Event(), interval=60, marks_kept=_days(35)
    )
    await scanner.run_once()
    kept = {r["event_id"] for r in await env.pool.fetch("SELECT event_id FROM processed_events")}
    assert kept == {f"e-{n}" for n in range(35)}
    # A redelivered event whose mark is kept still has no second effect.
    assert await repository.mark_processed(env.pool, "contact-events", ["e-34", "new"]) == {"new"}


async def test_one_contacts_events_in_one_batch_take_effect_in_their_order(env):
    await env.scenario(
        {
            "id": "cart",
            "trigger": {"event": "checkout.started"},
            "exit": [{"event": "order.completed", "same": ["checkout_token"], "conversion": True}],
            "steps": [{"id": "reminder", "wait": "3h", "send": {"template": "cart-1"}}],
        }
    )

    def event(contact_id: str, name: str, token: str, **contact: Any) -> CloudEvent:
        data = {
            "name": name,
            "contact": {"id": contact_id, "email": f"{contact_id}@example.com", **contact},
            "properties": {"checkout_token": token},
            "occurred_at": START.isoformat(),
        }
        return CloudEvent(
            type=event_types.EVENT_RECEIVED, source="urn:test", subject=contact_id, data=data
        )

    def consent(contact_id: str) -> CloudEvent:
        data = {"contact": {"id": contact_id}, "consent": {**CONSENT, "kinds": ["marketing"]}}
        return CloudEvent(
            type=event_types.CONTACT_UPDATED, source="urn:test", subject=contact_id, data=data
        )

    def erased(contact_id: str) -> CloudEvent:
        data = {"contact_id": contact_id, "requested_at": START.isoformat()}
        return CloudEvent(
            type=event_types.CONTACT_ERASED, source="urn:test", subject=contact_id, data=data
        )

    await env.contact_events(
        consent("c-buys"),
        event("c-waits", "checkout.started", "t-2", locale="en-US"),
        event("c-buys", "checkout.started", "t-1"),
        event("c-gone", "checkout.started", "t-3"),
        consent("c-waits"),
        event("c-buys", "order.completed", "t-1"),
        erased("c-gone"),
        event("c-buys", "checkout.started", "t-4"),  # "once": not enrolled again
    )
    buys = await env.enrollment("c-buys")
    assert (buys["status"], buys["converted"]) == ("exited", True)
    assert (await env.enrollment("c-waits"))["status"] == "active"
    assert not await env.pool.fetchval("SELECT count(*) FROM contacts WHERE id = 'c-gone'")
    locale, consent_kinds = await env.pool.fetchrow(
        "SELECT locale, consent FROM contacts WHERE id = 'c-waits'"
    )
    assert locale == "en-US"
    assert list(consent_kinds) == ["marketing"]
    await env.run_until(START + timedelta(hours=4))
    assert [(c, s) for c, s, _, _ in await env.mails()] == [("c-waits", "reminder")]


async def test_a_scenario_entered_and_triggered_by_one_event_enrolls_once(env):
    for scenario_id, steps in (
        ("a-first", [{"id": "go", "enter": {"scenario": "b-second"}}]),
        ("b-second", [{"id": "one", "send": {"template": "b"}}]),
    ):
        await env.scenario(
            {
                "id": scenario_id,
                "mail_kind": "transactional",
                "trigger": {"event": "signup"},
                "steps": steps,
            }
        )
    await env.contact_events(_signup("c-1"), _signup("c-2"))
    rows = await env.pool.fetch(
        "SELECT contact_id, scenario_id FROM enrollments ORDER BY contact_id, scenario_id"
    )
    assert [tuple(r) for r in rows] == [
        ("c-1", "a-first"),
        ("c-1", "b-second"),
        ("c-2", "a-first"),
        ("c-2", "b-second"),
    ]
    assert sorted(c for c, *_ in await env.mails()) == ["c-1", "c-2"]


async def test_a_pass_repeating_a_change_has_the_meaning_it_had_row_by_row(env):
    """A pass's writes are set-based: of two finishes the first counts (the second would
    find the enrollment ended), of two schedules the last, of two touches the latest."""
    await env.scenario(
        {
            "id": "pair",
            "mail_kind": "transactional",
            "trigger": {"event": "signup"},
            "steps": [
                {"id": "now", "send": {"template": "p1"}},
                {"id": "later", "wait": "1d", "send": {"template": "p2"}},
            ],
        }
    )
    await env.event("c-f", "signup")
    await env.event("c-s", "signup")
    finished, scheduled = await env.enrollment("c-f"), await env.enrollment("c-s")
    at = START + _days(1)
    writes = repository.PendingWrites()
    writes.finish(finished["id"], "exited", at, "opted_out")
    writes.finish(finished["id"], "completed", at + _days(1))
    writes.schedule(scheduled["id"], 5, at)
    writes.schedule(scheduled["id"], 7, at + _days(1))
    writes.touch_marketing("c-f", at + _days(2))
    writes.touch_marketing("c-f", at)
    async with env.pool.acquire() as conn, conn.transaction():
        await writes.flush(conn)
    assert not writes.pending

    finished, scheduled = await env.enrollment("c-f"), await env.enrollment("c-s")
    assert (finished["status"], finished["exit_reason"]) == ("exited", "opted_out")
    assert finished["next_due_at"] is None
    assert (scheduled["step_index"], scheduled["next_due_at"]) == (7, at + _days(1))
    touched = await env.pool.fetchval("SELECT last_marketing_at FROM contacts WHERE id = 'c-f'")
    assert touched == at + _days(2)


async def test_an_enrollment_made_and_changed_in_one_pass_is_written_as_it_ends_it(env):
    """Made, scheduled and finished before a flush: inserted once in its final state, with
    the first finish counting and a schedule after it leaving no due time."""
    await env.scenario(
        {
            "id": "once",
            "mail_kind": "transactional",
            "trigger": {"event": "signup"},
            "steps": [{"id": "now", "send": {"template": "o1"}}],
        }
    )
    async with env.pool.acquire() as conn:
        version = await conn.fetchval("SELECT max(version) FROM scenarios WHERE id = 'once'")
        await conn.execute(
            "INSERT INTO contacts (id, locale, time_zone)"
            " VALUES ('c-w', 'ja', 'Asia/Tokyo'), ('c-e', 'ja', 'Asia/Tokyo')"
        )
    at = START + _days(1)

    def made(contact_id: str) -> repository.Enrollment:
        return repository.Enrollment(
            uuid.uuid4(),
            "once",
            version,
            contact_id,
            {"name": "signup"},
            0,
            "active",
            None,
            START,
            "",
        )

    waiting, ended = made("c-w"), made("c-e")
    writes = repository.PendingWrites()
    writes.enroll(waiting)
    writes.schedule(waiting.id, 1, at)
    writes.enroll(ended)
    writes.finish(ended.id, "exited", at, "opted_out")
    writes.finish(ended.id, "completed", at + _days(1))
    writes.schedule(ended.id, 1, at)
    assert writes.schedules == writes.finishes == [], "folded into the inserts"
    async with env.pool.acquire() as conn, conn.transaction():
        await writes.flush(conn)

    rows = {
        r["contact_id"]: r
        for r in await env.pool.fetch(
            "SELECT contact_id, status, step_index, next_due_at, ended_at, exit_reason"
            " FROM enrollments WHERE scenario_id = 'once'"
        )
    }
    assert tuple(rows["c-w"].values())[1:] == ("active", 1, at, None, None)
    assert tuple(rows["c-e"].values())[1:] == ("exited", 1, None, at, "opted_out")
