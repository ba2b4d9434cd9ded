"""The orchestrator: contacts, scenarios, enrollments and their timers."""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request

from stepmail_common.clock import Clock, SystemClock
from stepmail_common.kafka import EventConsumer
from stepmail_common.outbox import OutboxRelay
from stepmail_common.service import migrate_only, open_database, open_producer
from stepmail_common.topics import Topics
from stepmail_common.webapp import dependency_checks, install_common, start_background
from stepmail_orchestrator import repository
from stepmail_orchestrator.handlers import ContactEventHandler
from stepmail_orchestrator.scenarios import load_dir
from stepmail_orchestrator.settings import OrchestratorSettings
from stepmail_orchestrator.timers import TimerLoop

log = logging.getLogger(__name__)


async def run_migrations(settings: OrchestratorSettings) -> None:
    await migrate_only(settings, settings.db_schema, "stepmail_orchestrator")


def create_app(settings: OrchestratorSettings, clock: Clock | None = None) -> FastAPI:
    clock = clock or SystemClock()
    topics = Topics(settings.kafka_topic_prefix)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            pool = await open_database(stack, settings, settings.db_schema, "stepmail_orchestrator")
            if settings.orchestrator_scenarios_dir:
                async with pool.acquire() as conn:
                    for scenario in load_dir(Path(settings.orchestrator_scenarios_dir)):
                        version = await repository.save_scenario(conn, scenario)
                        if version is not None:
                            log.info(
                                "scenario loaded",
                                extra={"scenario": scenario.id, "version": version},
                            )
            producer = await open_producer(
                stack, settings, "orchestrator", [topics.contact_events, topics.steps_due]
            )
            timers_due, outbox_ready = asyncio.Event(), asyncio.Event()
            interval = settings.orchestrator_timer_interval_seconds
            await start_background(
                stack,
                OutboxRelay(pool, producer, interval=interval, wake=outbox_ready),
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

    install_common(app, dependency_checks(app))

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
