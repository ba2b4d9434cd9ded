"""Ingest's HTTP app: the front door e-commerce and CRM systems post to."""

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, Header, Request, Response, status

from stepmail_common.clock import Clock, SystemClock
from stepmail_common.service import migrate_only, open_database, open_producer
from stepmail_common.topics import Topics
from stepmail_common.webapp import dependency_checks, install_common
from stepmail_ingest.auth import authenticate, hash_api_key
from stepmail_ingest.repository import ApiKey, IngestRepository
from stepmail_ingest.schemas import EventAccepted, EventIn
from stepmail_ingest.service import EventIntake
from stepmail_ingest.settings import IngestSettings

log = logging.getLogger(__name__)


async def run_migrations(settings: IngestSettings) -> None:
    await migrate_only(settings, settings.db_schema, "stepmail_ingest")


def create_app(settings: IngestSettings, clock: Clock | None = None) -> FastAPI:
    clock = clock or SystemClock()
    topics = Topics(settings.kafka_topic_prefix)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            pool = await open_database(stack, settings, settings.db_schema, "stepmail_ingest")
            producer = await open_producer(stack, settings, "ingest", [topics.contact_events])
            repo = IngestRepository(pool)
            if settings.ingest_bootstrap_api_key:
                await repo.ensure_api_key(
                    "bootstrap", hash_api_key(settings.ingest_bootstrap_api_key), ["admin"]
                )
            app.state.repo = repo
            app.state.intake = EventIntake(repo, producer, topics, clock)
            app.state.pool = pool
            app.state.producer = producer
            yield

    app = FastAPI(
        title="stepmail ingest",
        version="1.0.0",
        summary="Customer events and contact updates in; CloudEvents on Kafka out.",
        lifespan=lifespan,
    )

    install_common(app, dependency_checks(app))

    def repo_of(request: Request) -> IngestRepository:
        repo: IngestRepository = request.app.state.repo
        return repo

    async def events_writer(
        repo: Annotated[IngestRepository, Depends(repo_of)],
        authorization: Annotated[str | None, Header()] = None,
    ) -> ApiKey:
        return await authenticate(repo, authorization, "events:write")

    @app.post(
        "/v1/events",
        status_code=status.HTTP_202_ACCEPTED,
        response_model=EventAccepted,
        summary="Accept one customer event",
        responses={
            401: {"description": "Missing or unknown API key"},
            422: {"description": "Invalid body; the problem names the field"},
            503: {"description": "Broker unreachable; nothing was accepted, retry"},
        },
    )
    async def post_event(
        event: EventIn,
        request: Request,
        response: Response,
        key: Annotated[ApiKey, Depends(events_writer)],
        idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
    ) -> EventAccepted:
        """202 only after the broker acknowledged the event."""
        intake: EventIntake = request.app.state.intake
        accepted = await intake.accept(key, event, idempotency_key)
        if accepted.replayed:
            response.headers["Idempotent-Replayed"] = "true"
        return EventAccepted(id=accepted.event_id, replayed=accepted.replayed)

    return app
