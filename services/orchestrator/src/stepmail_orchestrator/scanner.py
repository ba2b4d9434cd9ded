"""Triggers that no event fires: inactivity ("no activity for 90 days") and yearly dates
(birthdays, anniversaries). A periodic pass enrolls the contacts whose moment has come;
entry rules and audiences apply as for event triggers.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, time, timedelta
from typing import TYPE_CHECKING, Any

from stepmail_common.clock import Clock
from stepmail_common.loops import PeriodicLoop
from stepmail_orchestrator import engine, repository
from stepmail_orchestrator.progress import Progress
from stepmail_orchestrator.scenarios import Scenario

if TYPE_CHECKING:
    import asyncpg

    from stepmail_orchestrator.repository import Connection

ACTIVITY_KEPT = timedelta(days=30)
MARKS_KEPT = timedelta(days=35)
MARKS_PRUNED_AT_ONCE = 10_000

_DORMANT = """
SELECT c.id FROM contacts c
WHERE c.last_activity_at <= $1
  AND NOT EXISTS (SELECT 1 FROM enrollments e WHERE e.scenario_id = $2 AND e.contact_id = c.id
                  AND e.created_at >= c.last_activity_at)
ORDER BY c.last_activity_at LIMIT $3
"""

# Today's anniversaries in each contact's own time zone; Feb 29 falls on Feb 28 otherwise.
_ANNIVERSARY = """
WITH local AS (
    SELECT c.id, c.attributes ->> $1 AS day, ($2::timestamptz AT TIME ZONE c.time_zone) AS now_local
    FROM contacts c WHERE c.attributes ->> $1 ~ '^[0-9]{4}-[0-9]{2}-[0-9]{2}'
)
SELECT id FROM local
WHERE (substring(day, 6, 5) = to_char(now_local, 'MM-DD')
       OR (substring(day, 6, 5) = '02-29' AND to_char(now_local, 'MM-DD') = '02-28'
           AND to_char(now_local + interval '1 day', 'MM-DD') = '03-01'))
  AND NOT EXISTS (SELECT 1 FROM enrollments e WHERE e.scenario_id = $3 AND e.contact_id = local.id
                  AND e.created_at > $2::timestamptz - interval '300 days')
LIMIT $4
"""


class TriggerScanner(PeriodicLoop):
    def __init__(
        self,
        pool: asyncpg.Pool[asyncpg.Record],
        progress: Progress,
        clock: Clock,
        outbox_ready: asyncio.Event,
        *,
        interval: float,
        batch: int = 500,
        marks_kept: timedelta = MARKS_KEPT,
    ) -> None:
        super().__init__(interval)
        self._pool = pool
        self._progress = progress
        self._clock = clock
        self._outbox_ready = outbox_ready
        self._batch = batch
        self._marks_kept = marks_kept

    async def run_once(self) -> bool:
        await self._forget_old_marks()
        return await self.scan() >= self._batch

    async def _forget_old_marks(self) -> None:
        """As many statements as it takes (each its own short transaction) to forget every
        mark older than ``marks_kept``: a first pass over a large table, or a pass after a
        busy day, keeps up without one long transaction."""
        while (
            await repository.prune_processed(self._pool, self._marks_kept, MARKS_PRUNED_AT_ONCE)
            == MARKS_PRUNED_AT_ONCE
        ):
            pass

    async def scan(self) -> int:
        """One pass over every inactivity and yearly scenario; returns enrollments made."""
        now = self._clock.now()
        enrolled = 0
        async with self._pool.acquire() as conn, conn.transaction():
            scenarios = await repository.latest_active(conn)
            # Activity is kept only as long as a threshold trigger may count it.
            windows = [s.trigger.count_within for s, _ in scenarios if s.trigger.count_within]
            await repository.prune_activity(conn, now - max(windows, default=ACTIVITY_KEPT))
            for scenario, version in scenarios:
                rule = scenario.trigger
                if rule.inactive_for is not None:
                    ids = await conn.fetch(
                        _DORMANT, now - rule.inactive_for, scenario.id, self._batch
                    )
                    trigger = {
                        "name": "inactive",
                        "properties": {"inactive_for": str(rule.inactive_for)},
                    }
                    enrolled += await self._enroll(conn, scenario, version, ids, trigger, now, None)
                elif rule.yearly_date is not None:
                    attribute = rule.yearly_date.removeprefix("contact.attributes.")
                    ids = await conn.fetch(_ANNIVERSARY, attribute, now, scenario.id, self._batch)
                    trigger = {"name": "yearly", "properties": {"date": rule.yearly_date}}
                    enrolled += await self._enroll(
                        conn, scenario, version, ids, trigger, now, rule.yearly_at or time(9, 0)
                    )
        if enrolled:
            self._outbox_ready.set()
        return enrolled

    async def _enroll(
        self,
        conn: Connection,
        scenario: Scenario,
        version: int,
        ids: list[Any],
        trigger: dict[str, Any],
        now: datetime,
        at: time | None,
    ) -> int:
        made = 0
        for row in ids:
            contact = await repository.get_contact(conn, row["id"])
            if contact is None:
                continue
            base = now
            if at is not None:
                tz = engine.zone(contact.get("time_zone"))
                base = max(now, datetime.combine(now.astimezone(tz).date(), at, tzinfo=tz))
            if await self._progress.enroll(
                conn, scenario, version, contact, trigger, now, base, responding=False
            ):
                made += 1
        return made
