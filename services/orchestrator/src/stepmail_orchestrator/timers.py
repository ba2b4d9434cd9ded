"""The timer loop: claims due steps (any number of replicas, SKIP LOCKED), advances the
enrollment and writes the ``steps-due`` event to the outbox in the same transaction.

A restart loses no timer (they are rows) and fires none twice (claim, advance and
outbox row commit together).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import asyncpg
from opentelemetry import trace

from stepmail_common import event_types, telemetry
from stepmail_common.clock import Clock
from stepmail_common.events import CloudEvent, derived_id
from stepmail_common.loops import PeriodicLoop
from stepmail_common.outbox import OutboxEvent
from stepmail_common.outbox import add as add_to_outbox
from stepmail_common.topics import Topics
from stepmail_orchestrator import metrics, repository
from stepmail_orchestrator.repository import DueEnrollment
from stepmail_orchestrator.scenarios import Scenario

if TYPE_CHECKING:
    from stepmail_orchestrator.repository import Connection

log = logging.getLogger(__name__)
tracer = trace.get_tracer("stepmail.orchestrator")
SOURCE = "urn:stepmail:orchestrator"


def message_id(enrollment_id: str, step_index: int) -> str:
    """The mail's id, the same however often the step is looked at."""
    return derived_id("message", enrollment_id, str(step_index))


def step_due_event(due: DueEnrollment, scenario: Scenario) -> CloudEvent:
    step = scenario.steps[due.step_index]
    mid = message_id(str(due.id), due.step_index)
    contact = {k: v for k, v in due.contact.items() if v is not None}
    data: dict[str, Any] = {
        "message_id": mid,
        "enrollment_id": str(due.id),
        "scenario": {"id": scenario.id, "version": due.scenario_version},
        "step": {"id": step.id, "index": due.step_index},
        "template": step.template,
        "mail_kind": scenario.mail_kind,
        "contact": contact,
        "event": {"name": due.trigger_event["name"], "properties": due.trigger_event["properties"]},
        "due_at": due.due_at.isoformat(),
    }
    return CloudEvent(
        type=event_types.STEP_DUE,
        source=SOURCE,
        subject=due.contact["id"],
        data=data,
        id=derived_id("step-due", mid),
    )


class TimerLoop(PeriodicLoop):
    """Fires due steps; wakes on ``wake`` or every ``interval`` seconds."""

    def __init__(
        self,
        pool: asyncpg.Pool[asyncpg.Record],
        topics: Topics,
        clock: Clock,
        wake: asyncio.Event,
        outbox_ready: asyncio.Event,
        *,
        interval: float,
        batch: int,
    ) -> None:
        super().__init__(interval, wake)
        self._pool = pool
        self._topics = topics
        self._clock = clock
        self._outbox_ready = outbox_ready
        self._batch = batch
        self._scenarios: dict[tuple[str, int], Scenario] = {}

    async def run_once(self) -> bool:
        return await self.fire_due() >= self._batch

    async def _scenario(self, conn: Connection, scenario_id: str, version: int) -> Scenario:
        key = (scenario_id, version)
        if key not in self._scenarios:  # versions never change, so caching is safe
            self._scenarios[key] = await repository.scenario_version(conn, scenario_id, version)
        return self._scenarios[key]

    async def fire_due(self) -> int:
        """One pass: claim a batch of due steps and turn them into outbox rows."""
        now = self._clock.now()
        outbox: list[OutboxEvent] = []
        async with self._pool.acquire() as conn, conn.transaction():
            due = await repository.claim_due(conn, now, self._batch)
            for item in due:
                scenario = await self._scenario(conn, item.scenario_id, item.scenario_version)
                metrics.TIMER_LAG.observe(max(0.0, (now - item.due_at).total_seconds()))
                if item.contact.get("email"):
                    event = step_due_event(item, scenario)
                    # The step continues the trace of the event that enrolled the contact.
                    parent = telemetry.context_from_carrier(item.trigger_event.get("trace"))
                    with tracer.start_as_current_span("fire step", context=parent):
                        carrier = telemetry.trace_carrier()
                    outbox.append(
                        OutboxEvent(self._topics.steps_due, item.contact["id"], event, carrier)
                    )
                    metrics.STEPS_DUE.labels(scenario.id).inc()
                else:
                    metrics.STEPS_SKIPPED.labels(scenario.id, "no_address").inc()
                following = item.step_index + 1
                next_due = (
                    item.due_at + scenario.steps[following].wait
                    if following < len(scenario.steps)
                    else None
                )
                await repository.advance(conn, item.id, following, next_due)
            if outbox:
                await add_to_outbox(conn, outbox)
        if outbox:
            self._outbox_ready.set()
        return len(due)
