"""What the renderer does with each event it consumes."""

import logging
import time

from stepmail_common import event_types
from stepmail_common.clock import Clock
from stepmail_common.errors import PermanentError
from stepmail_common.events import CloudEvent, derived_id
from stepmail_common.kafka import EventProducer
from stepmail_common.topics import Topics
from stepmail_renderer import metrics
from stepmail_renderer.rendering import MailRenderer
from stepmail_renderer.repository import RendererRepository
from stepmail_renderer.schemas import StepDue

log = logging.getLogger(__name__)

SOURCE = "urn:stepmail:renderer"


class UnexpectedEventError(PermanentError):
    """An event of a type the renderer does not handle."""


class UnknownTemplateError(PermanentError):
    """A step names a template the renderer does not have."""


class StepDueHandler:
    """Renders a due step and publishes the mail on ``mail-rendered``."""

    def __init__(
        self,
        repo: RendererRepository,
        renderer: MailRenderer,
        producer: EventProducer,
        topics: Topics,
        clock: Clock,
    ) -> None:
        self._repo = repo
        self._renderer = renderer
        self._producer = producer
        self._topics = topics
        self._clock = clock

    async def __call__(self, event: CloudEvent) -> None:
        try:
            await self._handle(event)
        except PermanentError as exc:
            metrics.RENDER_FAILURES.labels(exc.__class__.__name__).inc()
            raise

    async def _handle(self, event: CloudEvent) -> None:
        if event.type != event_types.STEP_DUE:
            raise UnexpectedEventError(f"renderer does not handle {event.type!r}")
        step = StepDue.from_data(event.data)
        stored = await self._repo.latest_template(step.template_id)
        if stored is None:
            raise UnknownTemplateError(f"no template {step.template_id!r}")
        started = time.perf_counter()
        mail = self._renderer.render(step, self._renderer.compiled(stored))
        metrics.RENDER_SECONDS.observe(time.perf_counter() - started)
        now = self._clock.now()
        rendered = CloudEvent(
            type=event_types.MAIL_RENDERED,
            source=SOURCE,
            subject=step.contact_id,
            # Derived from the message id: a re-render publishes the same event id.
            id=derived_id("renderer", event_types.MAIL_RENDERED, step.message_id),
            time=now,
            data={
                "message_id": step.message_id,
                "enrollment_id": step.enrollment_id,
                "scenario": {"id": step.scenario_id, "version": step.scenario_version},
                "step": {"id": step.step_id, "index": step.step_index},
                "contact_id": step.contact_id,
                "mail_kind": step.mail_kind,
                "envelope": {"mail_from": mail.mail_from, "rcpt_to": mail.rcpt_to},
                "mime": mail.mime,
                "rendered_at": now.isoformat(),
            },
        )
        await self._producer.publish(self._topics.mail_rendered, rendered, key=step.contact_id)
        metrics.MAILS_RENDERED.labels(step.mail_kind).inc()
        metrics.LINKS_TRACKED.observe(mail.links)
        log.info(
            "mail rendered",
            extra={
                "message_id": step.message_id,
                "template": stored.source.id,
                "template_version": stored.version,
            },
        )
