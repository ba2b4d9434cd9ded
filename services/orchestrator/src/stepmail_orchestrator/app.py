"""The orchestrator: contacts, scenarios, enrollments, their timers and their stats."""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, Request, Response
from pydantic import BaseModel, Field

from stepmail_common.clock import Clock, SystemClock
from stepmail_common.kafka import BatchConsumer
from stepmail_common.outbox import OutboxRelay
from stepmail_common.problems import Problem
from stepmail_common.service import migrate_only, open_database, open_producer
from stepmail_common.topics import Topics
from stepmail_common.webapp import (
    FASTAPI_TELEMETRY,
    admin_guard,
    dependency_checks,
    install_common,
    start_background,
    start_together,
)
from stepmail_orchestrator import repository
from stepmail_orchestrator.engine import ContactRules, parse_window
from stepmail_orchestrator.handlers import (
    Consumed,
    ContactEventHandler,
    FeedbackHandler,
    consumed,
)
from stepmail_orchestrator.notifier import Notifier
from stepmail_orchestrator.progress import Progress
from stepmail_orchestrator.scanner import TriggerScanner
from stepmail_orchestrator.scenarios import ScenarioError, load_dir, parse_duration, parse_scenario
from stepmail_orchestrator.settings import OrchestratorSettings
from stepmail_orchestrator.stats import scenario_stats
from stepmail_orchestrator.timeline import Assume, simulate
from stepmail_orchestrator.timers import TimerLoop

log = logging.getLogger(__name__)


async def run_migrations(settings: OrchestratorSettings) -> None:
    await migrate_only(settings, settings.db_schema, "stepmail_orchestrator")


def contact_rules(settings: OrchestratorSettings) -> ContactRules:
    return ContactRules(
        send_window=parse_window(settings.orchestrator_send_window)
        if settings.orchestrator_send_window
        else None,
        frequency_cap=parse_duration(settings.orchestrator_frequency_cap)
        if settings.orchestrator_frequency_cap
        else None,
    )


class TimelineEvent(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    properties: dict[str, Any] = Field(default_factory=dict)


class TimelineIn(BaseModel):
    """A known contact (``contact_id``) or a sample one (``contact``), and the trigger event."""

    contact_id: str | None = None
    contact: dict[str, Any] | None = None
    event: TimelineEvent
    start: datetime | None = None
    assume: dict[str, bool] = Field(default_factory=dict, description="opened, clicked")


def _invalid(exc: ScenarioError) -> Problem:
    _, _, rest = str(exc).partition(": ")
    field, _, what = rest.partition(": ")
    return Problem(
        422,
        "Scenario is invalid",
        str(exc),
        type_="urn:stepmail:problem:validation",
        errors=[{"field": field or "(top)", "detail": what or rest}],
    )


def create_app(settings: OrchestratorSettings, clock: Clock | None = None) -> FastAPI:
    clock = clock or SystemClock()
    topics = Topics(settings.kafka_topic_prefix)
    progress_rules = contact_rules(settings)
    progress = Progress(topics, progress_rules)
    offered_topics = tuple(settings.topics())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            pool = await open_database(stack, settings, settings.db_schema, "stepmail_orchestrator")
            if settings.orchestrator_scenarios_dir:
                async with pool.acquire() as conn:
                    for scenario in load_dir(
                        Path(settings.orchestrator_scenarios_dir), offered_topics
                    ):
                        version, created = await repository.save_scenario(conn, scenario)
                        log.info(
                            "scenario loaded",
                            extra={"scenario": scenario.id, "version": version, "new": created},
                        )
            producer = await open_producer(
                stack,
                settings,
                "orchestrator",
                [
                    topics.contact_events,
                    topics.steps_due,
                    topics.delivery_events,
                    topics.engagement_events,
                ],
            )
            outbox_ready = asyncio.Event()
            interval = settings.orchestrator_timer_interval_seconds
            await start_background(
                stack,
                OutboxRelay(pool, producer, interval=interval, wake=outbox_ready),
                "outbox-relay",
            )
            timers = TimerLoop(
                pool,
                progress,
                clock,
                outbox_ready,
                interval=interval,
                batch=settings.orchestrator_timer_batch,
                concurrency=settings.orchestrator_timer_concurrency,
            )
            await start_background(stack, timers, "timers")
            scanner = TriggerScanner(
                pool,
                progress,
                clock,
                outbox_ready,
                interval=settings.orchestrator_scan_interval_seconds,
                marks_kept=timedelta(days=settings.orchestrator_processed_events_days),
            )
            await start_background(stack, scanner, "trigger-scanner")
            if settings.orchestrator_notify_enabled:
                notifier = Notifier(pool, clock, settings.orchestrator_webhook_secret, interval=5.0)
                await start_background(stack, notifier, "notifier")
            contact_events: BatchConsumer[Consumed] = BatchConsumer(
                bootstrap=settings.kafka_bootstrap_servers,
                topics=[topics.contact_events],
                group_id=settings.consumer_group("orchestrator"),
                prepare=consumed,
                handler=ContactEventHandler(pool, settings, clock, progress, outbox_ready),
                producer=producer,
                fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
                acts_on=ContactEventHandler.acts_on,
            )
            feedback: BatchConsumer[Consumed] = BatchConsumer(
                bootstrap=settings.kafka_bootstrap_servers,
                topics=[topics.delivery_events, topics.engagement_events],
                group_id=settings.consumer_group("orchestrator-feedback"),
                prepare=consumed,
                handler=FeedbackHandler(pool, clock, progress),
                producer=producer,
                fetch_max_wait_ms=settings.kafka_feedback_fetch_max_wait_ms,
                acts_on=FeedbackHandler.acts_on,
            )
            await start_together(
                stack,
                [(contact_events, "contact-events-consumer"), (feedback, "feedback-consumer")],
            )
            app.state.pool = pool
            app.state.producer = producer
            yield

    app = FastAPI(
        telemetry=FASTAPI_TELEMETRY,
        title="stepmail orchestrator",
        version="1.0.0",
        summary="Scenarios, enrollments, their timers and their stats.",
        lifespan=lifespan,
    )
    install_common(app, dependency_checks(app))
    admin = [Depends(admin_guard(settings.stepmail_admin_token))]

    @app.get("/v1/scenarios", summary="The latest version of every scenario", dependencies=admin)
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

    @app.post(
        "/v1/scenarios:validate",
        summary="Check a scenario without saving it",
        dependencies=admin,
        responses={422: {"description": "Invalid; the problem names the field"}},
    )
    async def validate_scenario(doc: Annotated[dict[str, Any], Body()]) -> dict[str, Any]:
        try:
            scenario = parse_scenario(doc, str(doc.get("id", "scenario")), offered_topics)
        except ScenarioError as exc:
            raise _invalid(exc) from None
        return {"valid": True, "id": scenario.id, "templates": sorted(scenario.templates)}

    @app.put(
        "/v1/scenarios/{scenario_id}",
        summary="Create or update a scenario (a change is a new version)",
        dependencies=admin,
        status_code=200,
        responses={
            201: {"description": "A new version was created"},
            422: {"description": "Invalid"},
        },
    )
    async def put_scenario(
        scenario_id: str,
        doc: Annotated[dict[str, Any], Body()],
        request: Request,
        response: Response,
    ) -> dict[str, Any]:
        if doc.get("id", scenario_id) != scenario_id:
            raise Problem(
                422,
                "Scenario is invalid",
                "The body's id differs from the URL's.",
                errors=[{"field": "id", "detail": f"must be {scenario_id!r}"}],
            )
        try:
            scenario = parse_scenario({**doc, "id": scenario_id}, scenario_id, offered_topics)
        except ScenarioError as exc:
            raise _invalid(exc) from None
        async with request.app.state.pool.acquire() as conn:
            version, created = await repository.save_scenario(conn, scenario)
        if created:
            response.status_code = 201
        return {"id": scenario_id, "version": version, "created": created}

    async def _set_status(request: Request, scenario_id: str, status: str) -> dict[str, Any]:
        async with request.app.state.pool.acquire() as conn:
            if not await repository.set_scenario_status(conn, scenario_id, status):
                raise Problem(404, "Scenario not found", type_="urn:stepmail:problem:not-found")
        return {"id": scenario_id, "status": status}

    @app.post(
        "/v1/scenarios/{scenario_id}/pause", dependencies=admin, summary="Pause: due steps wait"
    )
    async def pause(scenario_id: str, request: Request) -> dict[str, Any]:
        return await _set_status(request, scenario_id, "paused")

    @app.post("/v1/scenarios/{scenario_id}/resume", dependencies=admin, summary="Resume")
    async def resume(scenario_id: str, request: Request) -> dict[str, Any]:
        return await _set_status(request, scenario_id, "active")

    @app.post(
        "/v1/scenarios/{scenario_id}/archive",
        dependencies=admin,
        summary="Archive: no new enrollments; running ones finish",
    )
    async def archive(scenario_id: str, request: Request) -> dict[str, Any]:
        return await _set_status(request, scenario_id, "archived")

    @app.post(
        "/v1/scenarios/{scenario_id}/timeline",
        dependencies=admin,
        summary="Dry run: which mails would go to a contact, when (nothing is sent)",
    )
    async def timeline(scenario_id: str, body: TimelineIn, request: Request) -> dict[str, Any]:
        async with request.app.state.pool.acquire() as conn:
            found = {s.id: s for s, _ in await repository.latest_active(conn)}
            contact = (
                await repository.get_contact(conn, body.contact_id) if body.contact_id else None
            )
        scenario = found.get(scenario_id)
        if scenario is None:
            raise Problem(
                404, "No active scenario with this id", type_="urn:stepmail:problem:not-found"
            )
        if contact is None:
            if body.contact is None:
                raise Problem(
                    422,
                    "Contact needed",
                    "Give contact_id of a known contact, or a contact.",
                    errors=[{"field": "contact", "detail": "required when contact_id is unknown"}],
                )
            contact = {
                "locale": settings.default_locale,
                "time_zone": settings.default_time_zone,
                **body.contact,
            }
        start = body.start or clock.now()
        trigger = {"name": body.event.name, "properties": body.event.properties}
        entries = simulate(scenario, contact, trigger, start, progress_rules, Assume(**body.assume))
        return {"scenario": scenario_id, "contact_id": contact.get("id"), "timeline": entries}

    @app.post(
        "/v1/scenarios/{scenario_id}/migrate",
        dependencies=admin,
        summary="Move running enrollments to the latest version (by step id)",
    )
    async def migrate_enrollments(scenario_id: str, request: Request) -> dict[str, Any]:
        async with request.app.state.pool.acquire() as conn:
            moved, kept = await repository.migrate_enrollments(conn, scenario_id)
        return {"scenario": scenario_id, "migrated": moved, "not_migrated": kept}

    @app.get("/v1/scenarios/{scenario_id}/stats", dependencies=admin, summary="Per-step stats")
    async def stats(scenario_id: str, request: Request) -> dict[str, Any]:
        async with request.app.state.pool.acquire() as conn:
            return await scenario_stats(conn, scenario_id)

    @app.get(
        "/v1/contacts/{contact_id}/enrollments",
        dependencies=admin,
        summary="A contact's enrollments",
    )
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
                    "exit_reason": r["exit_reason"],
                    "converted": r["converted"],
                    "next_due_at": r["next_due_at"].isoformat() if r["next_due_at"] else None,
                }
                for r in rows
            ]
        }

    return app
