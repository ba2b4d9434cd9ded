"""What the orchestrator does with each consumed event."""

import asyncio
import logging

import asyncpg

from stepmail_common import event_types, telemetry
from stepmail_common.clock import Clock
from stepmail_common.events import CloudEvent
from stepmail_orchestrator import metrics, repository
from stepmail_orchestrator.settings import OrchestratorSettings

log = logging.getLogger(__name__)

CONSUMER = "contact-events"


class ContactEventHandler:
    """Keeps contact profiles and enrolls contacts in the scenarios their events trigger."""

    def __init__(
        self,
        pool: "asyncpg.Pool[asyncpg.Record]",
        settings: OrchestratorSettings,
        clock: Clock,
        timers_due: asyncio.Event,
    ) -> None:
        self._pool = pool
        self._settings = settings
        self._clock = clock
        self._timers_due = timers_due

    async def __call__(self, event: CloudEvent) -> None:
        if event.type != event_types.EVENT_RECEIVED:
            return
        enrolled = 0
        async with self._pool.acquire() as conn, conn.transaction():
            if not await repository.mark_processed(conn, CONSUMER, event.id):
                return
            data = event.data
            await repository.upsert_contact(
                conn,
                data["contact"],
                self._settings.default_locale,
                self._settings.default_time_zone,
            )
            now = self._clock.now()
            trigger = {
                "id": event.id,
                "name": data["name"],
                "properties": data["properties"],
                "trace": telemetry.trace_carrier(),
            }
            for scenario, version in await repository.active_triggered_by(conn, data["name"]):
                if await repository.enroll(
                    conn, scenario.id, version, event.subject, trigger, now + scenario.steps[0].wait
                ):
                    enrolled += 1
                    metrics.ENROLLED.labels(scenario.id).inc()
        if enrolled:
            log.info("contact enrolled", extra={"contact_id": event.subject, "scenarios": enrolled})
            self._timers_due.set()
