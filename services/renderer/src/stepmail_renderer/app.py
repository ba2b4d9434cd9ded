"""The renderer's app: consumes due steps, publishes rendered mails; the template API."""

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI

from stepmail_common.clock import Clock, SystemClock
from stepmail_common.kafka import BatchConsumer
from stepmail_common.service import migrate_only, open_database, open_producer
from stepmail_common.signing import parse_keys
from stepmail_common.topics import Topics
from stepmail_common.webapp import (
    FASTAPI_TELEMETRY,
    dependency_checks,
    install_common,
    start_background,
)
from stepmail_renderer import metrics
from stepmail_renderer.api import TemplateService, install_api
from stepmail_renderer.handlers import StepDueHandler, due_step
from stepmail_renderer.rendering import MailRenderer
from stepmail_renderer.repository import RendererRepository
from stepmail_renderer.senders import SenderBook
from stepmail_renderer.settings import RendererSettings
from stepmail_renderer.templates import TemplateLoadError, load_directory, load_layouts
from stepmail_renderer.validation import validate_template

log = logging.getLogger(__name__)


async def run_migrations(settings: RendererSettings) -> None:
    await migrate_only(settings, settings.db_schema, "stepmail_renderer")


def sender_book(settings: RendererSettings) -> SenderBook:
    return SenderBook.load(settings.default_sender(), settings.senders_file)


async def sync_templates(
    settings: RendererSettings, repo: RendererRepository, senders: SenderBook | None = None
) -> None:
    """Store every layout and template file; a changed one becomes a new version.

    A template that fails validation stops the start-up: a rollout with a broken
    template fails visibly while the running replicas keep rendering.
    """
    senders = senders or sender_book(settings)
    root = settings.renderer_templates_dir
    for layout in load_layouts(root):
        version, created = await repo.save_layout(layout)
        if created:
            metrics.TEMPLATE_VERSIONS_CREATED.inc()
        log.info("layout loaded", extra={"layout": layout.name, "version": version})
    layouts = {name: src for name, (_, src) in (await repo.layouts()).items()}
    for source in load_directory(root):
        issues = validate_template(source, layouts, senders)
        if issues:
            detail = "; ".join(f"{i.field}: {i.detail}" for i in issues)
            raise TemplateLoadError(f"{root / source.id}: {detail}")
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
            senders = sender_book(settings)
            pool = await open_database(stack, settings, settings.db_schema, "stepmail_renderer")
            repo = RendererRepository(pool)
            await sync_templates(settings, repo, senders)
            producer = await open_producer(
                stack, settings, "renderer", [topics.steps_due, topics.mail_rendered]
            )
            renderer = MailRenderer(
                signing_keys=parse_keys(settings.signing_keys),
                tracker_public_url=settings.tracker_public_url,
                senders=senders,
                clock=clock,
            )
            app.state.templates = TemplateService(repo, renderer, producer, topics, clock)
            consumer = BatchConsumer(
                bootstrap=settings.kafka_bootstrap_servers,
                topics=[topics.steps_due],
                group_id=settings.consumer_group("renderer"),
                prepare=due_step,
                handler=StepDueHandler(repo, renderer, producer, topics, clock),
                producer=producer,
                fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
                max_batch=settings.renderer_batch_max,
            )
            await start_background(stack, consumer, "consumer")
            app.state.pool = pool
            app.state.producer = producer
            yield

    app = FastAPI(
        telemetry=FASTAPI_TELEMETRY,
        title="stepmail renderer",
        version="1.0.0",
        summary="Due steps in; personalised, tracked, compliant MIME mails out.",
        lifespan=lifespan,
    )

    install_common(app, dependency_checks(app))
    install_api(app, settings.stepmail_admin_token)
    return app
