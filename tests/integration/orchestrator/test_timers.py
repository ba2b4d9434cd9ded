"""Timers on real Postgres: moved clock, redelivery, and two replicas firing once."""

import asyncio
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

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
from stepmail_orchestrator.handlers import ContactEventHandler
from stepmail_orchestrator.scenarios import parse_scenario
from stepmail_orchestrator.settings import OrchestratorSettings
from stepmail_orchestrator.timers import TimerLoop

pytestmark = pytest.mark.integration

START = datetime(2026, 11, 23, 0, 0, tzinfo=UTC)
SERIES = parse_scenario(
    {
        "id": "series",
        "trigger": {"event": "signup"},
        "steps": [
            {"id": "now", "send": {"template": "welcome"}},
            {"id": "day2", "wait": "2d", "send": {"template": "tips"}},
        ],
    }
)


def _signup(contact_id: str, email: str | None = "x@example.com") -> CloudEvent:
    contact = {"id": contact_id, **({"email": email} if email else {})}
    return CloudEvent(
        type=event_types.EVENT_RECEIVED,
        source="urn:test",
        subject=contact_id,
        data={
            "name": "signup",
            "contact": contact,
            "properties": {"plan": "free"},
            "occurred_at": START.isoformat(),
        },
    )


@pytest.fixture
async def pool(database_url):
    pool = await create_pool(database_url, "orchestrator")
    await migrate(pool, "orchestrator", "stepmail_orchestrator")
    async with pool.acquire() as conn:
        await repository.save_scenario(conn, SERIES)
    yield pool
    await pool.close()


def _settings(database_url: str) -> OrchestratorSettings:
    return OrchestratorSettings(database_url=database_url)


def _timer(pool, clock, batch=50) -> TimerLoop:
    return TimerLoop(
        pool, Topics(), clock, asyncio.Event(), asyncio.Event(), interval=0.1, batch=batch
    )


async def _outbox(pool) -> list[dict]:
    rows = await pool.fetch("SELECT event FROM outbox ORDER BY id")
    return [r["event"] for r in rows]


async def test_steps_fire_at_their_time_and_a_redelivered_event_enrolls_once(pool, database_url):
    clock = ManualClock(START)
    handler = ContactEventHandler(pool, _settings(database_url), clock, asyncio.Event())
    event = _signup("c-1")
    await handler(event)
    await handler(event)  # redelivery
    assert await pool.fetchval("SELECT count(*) FROM enrollments") == 1

    timer = _timer(pool, clock)
    assert await timer.fire_due() == 1
    first = await _outbox(pool)
    assert [e["data"]["step"]["id"] for e in first] == ["now"]
    assert first[0]["data"]["event"]["properties"] == {"plan": "free"}
    assert first[0]["data"]["contact"]["time_zone"] == "Asia/Tokyo"

    clock.advance(timedelta(days=2) - timedelta(seconds=1))
    assert await timer.fire_due() == 0
    clock.advance(timedelta(seconds=1))
    assert await timer.fire_due() == 1
    assert [e["data"]["step"]["id"] for e in await _outbox(pool)] == ["now", "day2"]
    status = await pool.fetchval("SELECT status FROM enrollments")
    assert status == "completed"
    clock.advance(timedelta(days=30))
    assert await timer.fire_due() == 0


async def test_a_contact_without_an_address_gets_no_mail(pool, database_url):
    clock = ManualClock(START)
    await ContactEventHandler(pool, _settings(database_url), clock, asyncio.Event())(
        _signup("c-2", email=None)
    )
    assert await _timer(pool, clock).fire_due() == 1
    assert await _outbox(pool) == []


async def test_two_replicas_fire_every_due_step_exactly_once(pool, database_url):
    clock = ManualClock(START)
    handler = ContactEventHandler(pool, _settings(database_url), clock, asyncio.Event())
    for i in range(300):
        await handler(_signup(f"c-{i}"))
    other_pool = await create_pool(database_url, "orchestrator")
    try:
        replicas = [_timer(pool, clock, batch=25), _timer(other_pool, clock, batch=25)]

        async def drain(timer: TimerLoop) -> int:
            fired = 0
            while n := await timer.fire_due():
                fired += n
            return fired

        counts = await asyncio.gather(*(drain(t) for t in replicas))
        clock.advance(timedelta(days=2))
        counts2 = await asyncio.gather(*(drain(t) for t in replicas))
    finally:
        await other_pool.close()
    assert sum(counts) == sum(counts2) == 300
    assert all(counts), "both replicas took part"
    ids = Counter(e["data"]["message_id"] for e in await _outbox(pool))
    assert len(ids) == 600
    assert set(ids.values()) == {1}


async def test_relay_publishes_outbox_rows_once_with_contact_keys(
    pool, database_url, kafka_bootstrap
):
    topics = Topics(f"it{uuid.uuid4().hex[:8]}.")
    await ensure_topics(kafka_bootstrap, [topics.steps_due], 2)
    clock = ManualClock(START)
    handler = ContactEventHandler(pool, _settings(database_url), clock, asyncio.Event())
    for i in range(20):
        await handler(_signup(f"c-{i}"))
    timer = TimerLoop(
        pool, topics, clock, asyncio.Event(), asyncio.Event(), interval=0.1, batch=100
    )
    await timer.fire_due()
    async with EventProducer(kafka_bootstrap, "test", enable_idempotence=False) as producer:
        relay = OutboxRelay(pool, producer, interval=0.1)
        assert await relay.run_once() is False  # all 20 fit in one batch
        assert await pool.fetchval("SELECT count(*) FROM outbox") == 0
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
