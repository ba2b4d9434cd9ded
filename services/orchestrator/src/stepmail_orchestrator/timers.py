"""The timer loop: claims due enrollments (any number of replicas, SKIP LOCKED) and acts
on them; the claim, the state change and the ``steps-due`` outbox rows commit together.

A restart loses no timer (they are rows) and fires none twice. Within one replica,
``concurrency`` passes run at once on their own connections, like that many replicas:
while one waits for Postgres, the next is computed.
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
        concurrency: int = 1,
    ) -> None:
        super().__init__(interval)
        self._pool = pool
        self._progress = progress
        self._clock = clock
        self._outbox_ready = outbox_ready
        self._batch = batch
        self._concurrency = concurrency

    async def run_once(self) -> bool:
        return max(await self.fire_round()) >= self._batch

    async def fire_round(self) -> list[int]:
        """``concurrency`` passes at once; how many each found due."""
        return list(await asyncio.gather(*(self.fire_due() for _ in range(self._concurrency))))

    async def fire_due(self) -> int:
        """One pass: act on a batch of due enrollments; returns how many were due."""
        async with self._pool.acquire() as conn, conn.transaction():
            fired = await self._progress.fire_due(conn, self._clock.now(), self._batch)
        if fired:
            self._outbox_ready.set()
        return fired
