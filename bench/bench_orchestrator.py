"""Orchestrator timers and triggers.

Timers: 100,000 active enrollments with due times spread over 30 days. The clock is moved
through the 30 days in one-day steps; each step drains what became due with the real
timer pass (claim with SKIP LOCKED, act, outbox rows, all in Postgres). Measured: due
steps handled per second, the relay's publishing rate to the broker, and the process's
memory before and after (state lives in Postgres, so memory must stay flat).

Triggers: ``BENCH_TRIGGERS`` trigger events (new contacts with their opt-in, one marketing
mail due at once) through the contact-events handler in batches as its consumer hands
them over (``BENCH_TRIGGER_BATCH``, default 500), and one at a time for comparison, on
one connection. Measured: triggers per second, the process's CPU per trigger, and the
statements (round trips, BEGIN and COMMIT included) and transactions per trigger.

Starts its own Postgres and broker unless ``DATABASE_URL`` / ``KAFKA_BOOTSTRAP_SERVERS``.
"""

import asyncio
import os
import tempfile
import time
import uuid
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil

from bench import backends
from stepmail_common import event_types
from stepmail_common.clock import ManualClock
from stepmail_common.db import create_pool, migrate
from stepmail_common.events import CloudEvent
from stepmail_common.kafka import EventProducer, ensure_topics
from stepmail_common.outbox import OutboxRelay
from stepmail_common.topics import Topics
from stepmail_devstack.postgres import dsn_with_database, ensure_database
from stepmail_orchestrator import repository
from stepmail_orchestrator.engine import ContactRules
from stepmail_orchestrator.handlers import ContactEventHandler, consumed
from stepmail_orchestrator.progress import Progress
from stepmail_orchestrator.scenarios import parse_scenario
from stepmail_orchestrator.settings import OrchestratorSettings
from stepmail_orchestrator.timers import TimerLoop

ENROLLMENTS = int(os.environ.get("BENCH_ENROLLMENTS", "100000"))
TRIGGERS = int(os.environ.get("BENCH_TRIGGERS", "20000"))
TRIGGER_BATCH = int(os.environ.get("BENCH_TRIGGER_BATCH", "500"))
TRIGGER_SCENARIO = {
    "id": "bench-trigger",
    "mail_kind": "marketing",
    "trigger": {"event": "bench.triggered"},
    "steps": [{"id": "mail", "send": {"template": "welcome"}}],
}
CONSENT = {"status": "granted", "kinds": ["marketing"], "source": "bench"}
# Enrollments claimed per timer pass (ORCHESTRATOR_TIMER_BATCH in a service).
BATCH = int(os.environ.get("BENCH_TIMER_BATCH", "2000"))
# Passes in flight at once (ORCHESTRATOR_TIMER_CONCURRENCY in a service).
CONCURRENCY = int(os.environ.get("BENCH_TIMER_CONCURRENCY", "2"))
START = datetime(2026, 11, 23, 0, 0, tzinfo=UTC)
SCENARIO = {
    "id": "bench",
    "mail_kind": "transactional",
    "trigger": {"event": "signup"},
    "steps": [{"id": "one", "send": {"template": "welcome"}}],
}


def _rss_mib() -> float:
    return float(psutil.Process().memory_info().rss) / 2**20


async def _seed(pool: Any) -> None:
    async with pool.acquire() as conn:
        await repository.save_scenario(conn, parse_scenario(SCENARIO))
        await conn.execute(
            """
            INSERT INTO contacts (id, email, name, locale, time_zone)
            SELECT 'c-' || n, 'c' || n || '@example.com', '顧客 ' || n, 'ja-JP', 'Asia/Tokyo'
            FROM generate_series(1, $1) n
            """,
            ENROLLMENTS,
        )
        await conn.execute(
            """
            INSERT INTO enrollments (id, scenario_id, scenario_version, contact_id, trigger_event,
                                     step_index, status, next_due_at, created_at)
            SELECT gen_random_uuid(), 'bench', 1, 'c-' || n,
                   '{"name": "signup", "properties": {}}'::jsonb, 0, 'active',
                   $2::timestamptz + (random() * interval '30 days'), $2::timestamptz
            FROM generate_series(1, $1) n
            """,
            ENROLLMENTS,
            START,
        )
        await conn.execute("ANALYZE")


def _trigger(prefix: str, n: int) -> CloudEvent:
    contact_id = f"{prefix}-{n}"
    return CloudEvent(
        type=event_types.EVENT_RECEIVED,
        source="urn:stepmail:bench",
        subject=contact_id,
        data={
            "name": "bench.triggered",
            "contact": {"id": contact_id, "email": f"{contact_id}@example.jp", "consent": CONSENT},
            "properties": {"n": n},
        },
    )


async def _triggers(dsn: str, topics: Topics, batch: int, count: int) -> dict[str, Any]:
    """``count`` triggers through the handler, ``batch`` at a time, on one connection."""
    pool = await create_pool(dsn, "orchestrator", min_size=1, max_size=1)
    statements = 0

    def counted(_: object) -> None:
        nonlocal statements
        statements += 1

    try:
        async with pool.acquire() as conn:
            await repository.save_scenario(conn, parse_scenario(TRIGGER_SCENARIO))
            conn.add_query_logger(counted)
        handler = ContactEventHandler(
            pool,
            OrchestratorSettings(database_url=dsn),
            ManualClock(START),
            Progress(topics, ContactRules()),
            asyncio.Event(),
        )
        prefix = f"t{batch}"
        items = [consumed(_trigger(prefix, n)) for n in range(count)]
        xacts = await pool.fetchval("SELECT txid_current()")
        statements = 0
        cpu, started = time.process_time(), time.perf_counter()
        for first in range(0, count, batch):
            failures = await handler(items[first : first + batch])
            assert not failures, failures
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        done = statements
        # Each transaction that wrote took a transaction id; this one takes the next.
        xacts = await pool.fetchval("SELECT txid_current()") - xacts - 1
        mails = await pool.fetchval(
            "SELECT count(*) FROM messages WHERE contact_id LIKE $1", f"{prefix}-%"
        )
    finally:
        await pool.close()
    assert mails == count, f"{mails} mails for {count} triggers"
    return {
        "batch": batch,
        "triggers": count,
        "triggers_per_second": round(count / seconds),
        "cpu_ms_per_trigger": round(cpu / count * 1000, 3),
        "statements_per_trigger": round(done / count, 2),
        "transactions_per_trigger": round(xacts / count, 3),
    }


async def _run(dsn: str, bootstrap: str) -> dict[str, Any]:
    pool = await create_pool(dsn, "orchestrator", max_size=4)
    try:
        await migrate(pool, "orchestrator", "stepmail_orchestrator")
        print(f"seeding {ENROLLMENTS:,} enrollments over 30 days ...", flush=True)
        await _seed(pool)
        topics = Topics(f"bench{uuid.uuid4().hex[:6]}.")
        clock = ManualClock(START)
        timer = TimerLoop(
            pool,
            Progress(topics, ContactRules()),
            clock,
            asyncio.Event(),
            interval=1,
            batch=BATCH,
            concurrency=CONCURRENCY,
        )
        rss_before = _rss_mib()
        fired = 0
        busy = 0.0
        for day in range(1, 31):
            clock.set(START + timedelta(days=day))
            started = time.perf_counter()
            while n := sum(await timer.fire_round()):
                fired += n
            busy += time.perf_counter() - started
            if day % 5 == 0:
                print(
                    f"  day {day:2}: {fired:,} steps fired, {fired / busy:,.0f}/s, "
                    f"RSS {_rss_mib():.0f} MiB",
                    flush=True,
                )
        rss_after = _rss_mib()
        await ensure_topics(bootstrap, [topics.steps_due], 4)
        async with EventProducer(bootstrap, "bench", enable_idempotence=False) as producer:
            relay = OutboxRelay(pool, producer, interval=1, batch=1000)
            pending = await pool.fetchval("SELECT count(*) FROM outbox")
            started = time.perf_counter()
            while await relay.run_once():
                pass
            await relay.run_once()
            relay_seconds = time.perf_counter() - started
        await pool.execute("DELETE FROM outbox")
    finally:
        await pool.close()
    print(f"triggers: {TRIGGERS:,} in batches of {TRIGGER_BATCH}, then one at a time ...")
    batched = await _triggers(dsn, topics, TRIGGER_BATCH, TRIGGERS)
    single = await _triggers(dsn, topics, 1, max(1, TRIGGERS // 10))
    return {
        "enrollments": ENROLLMENTS,
        "steps_fired": fired,
        "timer_steps_per_second": round(fired / busy),
        "relay_events_per_second": round(pending / relay_seconds),
        "rss_mib_before": round(rss_before, 1),
        "rss_mib_after": round(rss_after, 1),
        "timer_batch": BATCH,
        "timer_concurrency": CONCURRENCY,
        "goal_steps_per_second": 5000,
        "triggers_batched": batched,
        "triggers_one_at_a_time": single,
    }


def main() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-orchestrator-") as tmp, ExitStack() as stack:
        dsn, _ = backends.postgres(stack, Path(tmp))
        name = f"bench_{uuid.uuid4().hex[:8]}"
        ensure_database(dsn, name)
        bootstrap, _ = backends.kafka(stack)
        figures = asyncio.run(_run(dsn_with_database(dsn, name), bootstrap))
    print()
    print(f"  timer: {figures['timer_steps_per_second']:,} due steps/s (goal 5,000)")
    print(f"  relay: {figures['relay_events_per_second']:,} steps-due events/s to the broker")
    print(f"  memory: {figures['rss_mib_before']} MiB -> {figures['rss_mib_after']} MiB")
    for name in ("triggers_batched", "triggers_one_at_a_time"):
        t = figures[name]
        print(
            f"  triggers, batches of {t['batch']}: {t['triggers_per_second']:,}/s,"
            f" {t['cpu_ms_per_trigger']} ms CPU, {t['statements_per_trigger']} statements,"
            f" {t['transactions_per_trigger']} transactions per trigger"
        )
    return figures
