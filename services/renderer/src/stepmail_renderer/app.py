"""The renderer's app: consumes due steps, publishes rendered mails; ops endpoints only."""

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI

from stepmail_common.clock import Clock, SystemClock
from stepmail_common.kafka import EventConsumer
from stepmail_common.service import migrate_only, open_database, open_producer
from stepmail_common.signing import Signer
from stepmail_common.topics import Topics
from stepmail_common.webapp import dependency_checks, install_common, start_background
from stepmail_renderer import metrics
from stepmail_renderer.footer import Sender
from stepmail_renderer.handlers import StepDueHandler
from stepmail_renderer.rendering import CompiledTemplate, MailRenderer
from stepmail_renderer.repository import RendererRepository
from stepmail_renderer.settings import RendererSettings
from stepmail_renderer.templates import StoredTemplate, load_directory

log = logging.getLogger(__name__)


async def run_migrations(settings: RendererSettings) -> None:
    await migrate_only(settings, settings.db_schema, "stepmail_renderer")


async def sync_templates(settings: RendererSettings, repo: RendererRepository) -> None:
    """Store every template file; a changed one becomes a new version.

    A template that does not compile stops the start-up: a rollout with a broken
    template fails visibly while the running replicas keep rendering.
    """
    for source in load_directory(settings.renderer_templates_dir):
        CompiledTemplate.compile(StoredTemplate(source, 0))
        version, created = await repo.save_template(source)
        if created:
            metrics.TEMPLATE_VERSIONS_CREATED.inc()
        log.info(
            "template loaded",
            extra={"template": source.id, "version": version, "new_version": created},
        )


def create_app(settings: RendererSettings, clock: Clock | None = None) -> FastAPI:
    clock = clock or SystemClock()
    topics = Topics(settings.kafka_topic_prefix)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            pool = await open_database(stack, settings, settings.db_schema, "stepmail_renderer")
            repo = RendererRepository(pool)
            await sync_templates(settings, repo)
            producer = await open_producer(
                stack, settings, "renderer", [topics.steps_due, topics.mail_rendered]
            )
            renderer = MailRenderer(
                signer=Signer.from_spec(settings.signing_keys),
                tracker_public_url=settings.tracker_public_url,
                sender=Sender(
                    legal_name=settings.sender_legal_name,
                    postal_address=settings.sender_postal_address,
                    contact=settings.sender_contact,
                ),
                mail_from=settings.mail_from,
                unsubscribe_mailbox=settings.unsubscribe_mailbox,
                clock=clock,
            )
            consumer = EventConsumer(
                bootstrap=settings.kafka_bootstrap_servers,
                topics=[topics.steps_due],
                group_id=settings.consumer_group("renderer"),
                handler=StepDueHandler(repo, renderer, producer, topics, clock),
                producer=producer,
            )
            await start_background(stack, consumer, "consumer")
            app.state.pool = pool
            app.state.producer = producer
            yield

    app = FastAPI(
        title="stepmail renderer",
        version="1.0.0",
        summary="Due steps in; personalised, tracked, compliant MIME mails out.",
        lifespan=lifespan,
    )

    install_common(app, dependency_checks(app))
    return app
