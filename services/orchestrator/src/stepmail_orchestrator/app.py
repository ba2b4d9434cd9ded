"""The orchestrator: contacts, scenarios, enrollments and their timers."""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request

from stepmail_common.clock import Clock, SystemClock
from stepmail_common.db import create_pool, migrate
from stepmail_common.kafka import EventConsumer, EventProducer, ensure_topics
from stepmail_common.topics import Topics
from stepmail_common.webapp import install_common, start_background
from stepmail_orchestrator import repository
from stepmail_orchestrator.handlers import ContactEventHandler
from stepmail_orchestrator.relay import OutboxRelay
from stepmail_orchestrator.scenarios import load_dir
from stepmail_orchestrator.settings import OrchestratorSettings
from stepmail_orchestrator.timers import TimerLoop

log = logging.getLogger(__name__)


async def run_migrations(settings: OrchestratorSettings) -> None:
    pool = await create_pool(settings.database_url, settings.db_schema, max_size=1)
    try:
        await migrate(pool, settings.db_schema, "stepmail_orchestrator")
    finally:
        await pool.close()


def create_app(settings: OrchestratorSettings, clock: Clock | None = None) -> FastAPI:
    clock = clock or SystemClock()
    topics = Topics(settings.kafka_topic_prefix)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            pool = await create_pool(
                settings.database_url, settings.db_schema, max_size=settings.database_pool_max
            )
            stack.push_async_callback(pool.close)
            await migrate(pool, settings.db_schema, "stepmail_orchestrator")
            if settings.orchestrator_scenarios_dir:
                async with pool.acquire() as conn:
                    for scenario in load_dir(Path(settings.orchestrator_scenarios_dir)):
                        version = await repository.save_scenario(conn, scenario)
                        if version is not None:
                            log.info(
                                "scenario loaded",
                                extra={"scenario": scenario.id, "version": version},
                            )
            await ensure_topics(
                settings.kafka_bootstrap_servers,
                [topics.contact_events, topics.steps_due],
                settings.kafka_topic_partitions,
                settings.kafka_topic_replication,
            )
            producer = EventProducer(
                settings.kafka_bootstrap_servers,
                "stepmail-orchestrator",
                enable_idempotence=settings.kafka_enable_idempotence,
            )
            await producer.start()
            stack.push_async_callback(producer.stop)
            timers_due, outbox_ready = asyncio.Event(), asyncio.Event()
            interval = settings.orchestrator_timer_interval_seconds
            await start_background(
                stack,
                OutboxRelay(pool, producer, outbox_ready, interval=interval),
                "outbox-relay",
            )
            await start_background(
                stack,
                TimerLoop(
                    pool,
                    topics,
                    clock,
                    timers_due,
                    outbox_ready,
                    interval=interval,
                    batch=settings.orchestrator_timer_batch,
                ),
                "timers",
            )
            consumer = EventConsumer(
                bootstrap=settings.kafka_bootstrap_servers,
                topics=[topics.contact_events],
                group_id=settings.consumer_group("orchestrator"),
                handler=ContactEventHandler(pool, settings, clock, timers_due),
                producer=producer,
            )
            await start_background(stack, consumer, "contact-events-consumer")
            app.state.pool = pool
            app.state.producer = producer
            yield

    app = FastAPI(
        title="stepmail orchestrator",
        version="1.0.0",
        summary="Scenarios, enrollments and their timers.",
        lifespan=lifespan,
    )

    async def db_ready() -> None:
        await app.state.pool.fetchval("SELECT 1")

    async def broker_ready() -> None:
        await app.state.producer.ping()

    install_common(app, {"database": db_ready, "broker": broker_ready})

    @app.get("/v1/scenarios", summary="The latest version of every scenario")
    async def list_scenarios(request: Request) -> dict[str, Any]:
        async with request.app.state.pool.acquire() as conn:
            rows = await repository.list_scenarios(conn)
        return {
            "scenarios": [
                {
                    "id": r["id"],
                    "version": r["version"],
                    "status": r["status"],
                    "definition": r["definition"],
                }
                for r in rows
            ]
        }

    @app.get("/v1/contacts/{contact_id}/enrollments", summary="A contact's enrollments")
    async def contact_enrollments(contact_id: str, request: Request) -> dict[str, Any]:
        async with request.app.state.pool.acquire() as conn:
            rows = await repository.enrollments_of(conn, contact_id)
        return {
            "enrollments": [
                {
                    "id": str(r["id"]),
                    "scenario": {"id": r["scenario_id"], "version": r["scenario_version"]},
                    "step_index": r["step_index"],
                    "status": r["status"],
                    "next_due_at": r["next_due_at"].isoformat() if r["next_due_at"] else None,
                }
                for r in rows
            ]
        }

    return app
