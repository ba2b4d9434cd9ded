"""What the renderer does with the due steps it consumes.

Due steps arrive in batches (``stepmail_common.kafka.BatchConsumer``): ``due_step`` turns
each event into a ``DueStep`` inside the record's trace span, and ``StepDueHandler``
resolves the batch's templates at once, renders every mail and publishes them together.
"""

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from stepmail_common import event_types, telemetry
from stepmail_common.clock import Clock
from stepmail_common.errors import PermanentError, is_retriable
from stepmail_common.events import CloudEvent, derived_id
from stepmail_common.kafka import EventProducer, Outgoing
from stepmail_common.topics import Topics
from stepmail_renderer import metrics
from stepmail_renderer.rendering import CompiledTemplate, MailRenderer, RenderedMail
from stepmail_renderer.repository import RendererRepository
from stepmail_renderer.resolver import TemplateResolver
from stepmail_renderer.schemas import StepDue

log = logging.getLogger(__name__)

SOURCE = "urn:stepmail:renderer"
# Rendering is CPU work in the event loop: let the loop run (health checks, heartbeats)
# between every this many mails of a batch.
_YIELD_EVERY = 16


class UnexpectedEventError(PermanentError):
    """An event of a type the renderer does not handle."""


class MalformedStepError(PermanentError):
    """A due step without a field the renderer needs."""


@dataclass(frozen=True, slots=True)
class DueStep:
    """A consumed due step and the trace its mail continues."""

    step: StepDue
    trace_context: Mapping[str, str] | None


def due_step(event: CloudEvent) -> DueStep:
    """A ``step.due`` event as a ``DueStep``; a ``PermanentError`` (dead-lettered) says why not.

    Runs inside the record's ``process`` span, so the mail keeps that trace.
    """
    try:
        if event.type != event_types.STEP_DUE:
            raise UnexpectedEventError(f"renderer does not handle {event.type!r}")
        try:
            step = StepDue.from_data(event.data)
        except (KeyError, TypeError) as exc:
            raise MalformedStepError(f"due step lacks {exc}") from exc
    except PermanentError as exc:
        metrics.RENDER_FAILURES.labels(exc.__class__.__name__).inc()
        raise
    return DueStep(step, telemetry.trace_carrier() or None)


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
    """Renders a batch of due steps and publishes the mails on ``mail-rendered`` at once.

    Returns the steps it could not render, by index, with the reason; the consumer
    dead-letters each alone. A retriable error (Postgres, the broker) retries the batch,
    which is harmless: a re-rendered mail has the same event id.
    """

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
        self._resolver = TemplateResolver(repo, renderer)
        self._producer = producer
        self._topics = topics
        self._clock = clock

    async def __call__(self, items: Sequence[DueStep]) -> dict[int, Exception]:
        templates = await self._resolver.resolve(
            (item.step.template_id, item.step.template_version) for item in items
        )
        failures: dict[int, Exception] = {}
        outgoing: list[Outgoing] = []
        rendered: list[tuple[StepDue, CompiledTemplate, RenderedMail]] = []
        broken: list[tuple[CompiledTemplate, PermanentError]] = []
        for index, item in enumerate(items):
            if index and not index % _YIELD_EVERY:
                await asyncio.sleep(0)
            step = item.step
            compiled = templates[(step.template_id, step.template_version)]
            if isinstance(compiled, PermanentError):
                failures[index] = compiled
                continue
            started = time.perf_counter()
            try:
                mail = self._renderer.render(step, compiled)
            except PermanentError as exc:
                broken.append((compiled, exc))
                failures[index] = exc
                continue
            except Exception as exc:
                # A step the schema let through that still breaks rendering (a bug, odd
                # data): dead-lettered alone; the batch and the partition go on.
                if is_retriable(exc):
                    raise
                failures[index] = exc
                continue
            metrics.RENDER_SECONDS.observe(time.perf_counter() - started)
            event = rendered_event(step, mail, self._clock)
            outgoing.append(
                Outgoing(
                    self._topics.mail_rendered,
                    event,
                    key=step.contact_id,
                    trace_context=item.trace_context,
                )
            )
            rendered.append((step, compiled, mail))
        if outgoing:
            await self._producer.publish_many(outgoing)
        # Recorded once the mails are out: a retried batch does not count a failure twice.
        for error in failures.values():
            metrics.RENDER_FAILURES.labels(error.__class__.__name__).inc()
        for compiled, error in broken:
            await self._failed(compiled, error)
        for step, compiled, mail in rendered:
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
        return failures

    async def _failed(self, compiled: CompiledTemplate, exc: PermanentError) -> None:
        error = exc.__class__.__name__
        metrics.TEMPLATE_FAILURES.labels(compiled.source.id, error).inc()
        # A database error here is retriable: the batch is tried again, and its mails
        # are published again with the same event ids.
        await self._repo.record_failure(
            compiled.source.id, compiled.version, error, self._clock.now()
        )
