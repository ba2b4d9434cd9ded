"""The timer loop: claims due enrollments (any number of replicas, SKIP LOCKED) and acts
on them; the claim, the state change and the ``steps-due`` outbox rows commit together.

A restart loses no timer (they are rows) and fires none twice.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from stepmail_common.clock import Clock
from stepmail_common.loops import PeriodicLoop
from stepmail_orchestrator.progress import Progress

if TYPE_CHECKING:
    import asyncpg


class TimerLoop(PeriodicLoop):
    """Fires due steps every ``interval`` seconds (or when woken)."""

    def __init__(
        self,
        pool: asyncpg.Pool[asyncpg.Record],
        progress: Progress,
        clock: Clock,
        outbox_ready: asyncio.Event,
        *,
        interval: float,
        batch: int,
    ) -> None:
        super().__init__(interval)
        self._pool = pool
        self._progress = progress
        self._clock = clock
        self._outbox_ready = outbox_ready
        self._batch = batch

    async def run_once(self) -> bool:
        return await self.fire_due() >= self._batch

    async def fire_due(self) -> int:
        """One pass: act on a batch of due enrollments; returns how many were due."""
        async with self._pool.acquire() as conn, conn.transaction():
            fired = await self._progress.fire_due(conn, self._clock.now(), self._batch)
        if fired:
            self._outbox_ready.set()
        return fired
