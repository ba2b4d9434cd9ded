"""Background loops that make a pass, then sleep until woken or their interval is up."""

import asyncio
import contextlib
import logging

from stepmail_common.errors import is_retriable

log = logging.getLogger(__name__)


class PeriodicLoop:
    """A pass repeated every ``interval`` seconds, or when ``wake`` is set: at once, or
    ``settle`` seconds later, so that what several wakers leave in that moment is taken in
    one pass.

    A retriable error (database or broker down) is logged and the pass retried later;
    any other error ends the loop, which ``supervise`` turns into a process restart.
    """

    def __init__(
        self, interval: float, wake: asyncio.Event | None = None, settle: float = 0.0
    ) -> None:
        self._interval = interval
        self._settle = settle
        self.wake = wake or asyncio.Event()
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        self._stopping.set()
        self.wake.set()

    async def run(self) -> None:
        while not self._stopping.is_set():
            self.wake.clear()
            try:
                busy = await self.run_once()
            except Exception as exc:
                if not is_retriable(exc):
                    raise
                log.warning(
                    "background pass failed; retrying",
                    extra={"loop": type(self).__name__, "error": exc.__class__.__name__},
                )
                busy = False
            if busy:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=self._interval)
                if self._settle:
                    await asyncio.wait_for(self._stopping.wait(), timeout=self._settle)
        await self.finish()

    async def run_once(self) -> bool:
        """One pass; ``True`` if there may be more to do right away."""
        raise NotImplementedError

    async def finish(self) -> None:
        """A last pass at shutdown, where one makes sense."""
