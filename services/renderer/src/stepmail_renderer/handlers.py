"""What the renderer does with each event it consumes."""

import logging
import re
import time
from typing import Any

from stepmail_common import event_types
from stepmail_common.clock import Clock
from stepmail_common.errors import PermanentError
from stepmail_common.events import CloudEvent, derived_id
from stepmail_common.kafka import EventProducer
from stepmail_common.topics import Topics
from stepmail_renderer import metrics
from stepmail_renderer.rendering import CompiledTemplate, Layouts, MailRenderer, RenderedMail
from stepmail_renderer.repository import RendererRepository
from stepmail_renderer.schemas import StepDue
from stepmail_renderer.templates import StoredTemplate

log = logging.getLogger(__name__)

SOURCE = "urn:stepmail:renderer"
_USES_LAYOUTS = re.compile(r"\{%-?\s*(?:extends|include|import|from)\b")


class UnexpectedEventError(PermanentError):
    """An event of a type the renderer does not handle."""


class UnknownTemplateError(PermanentError):
    """A step names a template (or version) the renderer does not have."""


class ArchivedTemplateError(PermanentError):
    """A step names a template that was archived."""


def uses_layouts(stored: StoredTemplate) -> bool:
    src = stored.source
    return any(
        part is not None and _USES_LAYOUTS.search(part)
        for part in (src.subject, src.preheader, src.html, src.text)
    )


async def load_compiled(
    repo: RendererRepository, renderer: MailRenderer, template_id: str, version: int | None
) -> CompiledTemplate:
    """The compiled template a step names, with the latest layouts if it uses any."""
    stored = await repo.template(template_id, version)
    if stored is None:
        at = f" v{version}" if version is not None else ""
        raise UnknownTemplateError(f"no template {template_id!r}{at}")
    if stored.archived:
        raise ArchivedTemplateError(f"template {template_id!r} is archived")
    layouts = Layouts.empty()
    if uses_layouts(stored):
        found = await repo.layouts()
        layouts = Layouts(
            {name: source for name, (_, source) in found.items()},
            tuple(sorted((name, v) for name, (v, _) in found.items())),
        )
    return renderer.compiled(stored, layouts)


def rendered_event(step: StepDue, mail: RenderedMail, clock: Clock) -> CloudEvent:
    now = clock.now()
    data: dict[str, Any] = {
        "message_id": step.message_id,
        "enrollment_id": step.enrollment_id,
        "scenario": {"id": step.scenario_id, "version": step.scenario_version},
        "step": {"id": step.step_id, "index": step.step_index},
        "contact_id": step.contact_id,
        "mail_kind": step.mail_kind,
        "envelope": {"mail_from": mail.mail_from, "rcpt_to": mail.rcpt_to},
        "mime": mail.mime,
        "rendered_at": now.isoformat(),
    }
    if step.topic is not None:
        data["topic"] = step.topic
    return CloudEvent(
        type=event_types.MAIL_RENDERED,
        source=SOURCE,
        subject=step.contact_id,
        # Derived from the message id: a re-render publishes the same event id.
        id=derived_id("renderer", event_types.MAIL_RENDERED, step.message_id),
        time=now,
        data=data,
    )


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
        where: dict[str, Any] = {}
        try:
            await self._handle(event, where)
        except PermanentError as exc:
            error = exc.__class__.__name__
            metrics.RENDER_FAILURES.labels(error).inc()
            if "version" in where:
                metrics.TEMPLATE_FAILURES.labels(where["template"], error).inc()
                # A database error here is retriable: the step is simply tried again.
                await self._repo.record_failure(
                    where["template"], where["version"], error, self._clock.now()
                )
            raise

    async def _handle(self, event: CloudEvent, where: dict[str, Any]) -> None:
        if event.type != event_types.STEP_DUE:
            raise UnexpectedEventError(f"renderer does not handle {event.type!r}")
        step = StepDue.from_data(event.data)
        compiled = await load_compiled(
            self._repo, self._renderer, step.template_id, step.template_version
        )
        where.update(template=compiled.source.id, version=compiled.version)
        started = time.perf_counter()
        mail = self._renderer.render(step, compiled)
        metrics.RENDER_SECONDS.observe(time.perf_counter() - started)
        rendered = rendered_event(step, mail, self._clock)
        await self._producer.publish(self._topics.mail_rendered, rendered, key=step.contact_id)
        metrics.MAILS_RENDERED.labels(step.mail_kind).inc()
        metrics.LINKS_TRACKED.observe(mail.links)
        log.info(
            "mail rendered",
            extra={
                "message_id": step.message_id,
                "template": compiled.source.id,
                "template_version": compiled.version,
            },
        )
