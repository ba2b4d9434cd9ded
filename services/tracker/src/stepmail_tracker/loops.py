"""The background pass that keeps the alerting ratios current and the tables small."""

from datetime import timedelta

from stepmail_common.clock import Clock
from stepmail_common.loops import PeriodicLoop
from stepmail_tracker import metrics
from stepmail_tracker.repository import Repository


class RatesLoop(PeriodicLoop):
    """Sets the complaint and unsubscribe ratio gauges over the window; prunes old rows."""

    def __init__(
        self,
        repo: Repository,
        clock: Clock,
        *,
        window_seconds: int,
        retention_days: int,
        interval: float,
    ) -> None:
        super().__init__(interval)
        self._repo = repo
        self._clock = clock
        self._window = timedelta(seconds=window_seconds)
        self._retention = timedelta(days=retention_days)

    async def run_once(self) -> bool:
        now = self._clock.now()
        sent, complaints, unsubscribes = await self._repo.window_counts(now - self._window)
        metrics.SENT_IN_WINDOW.set(sent)
        metrics.COMPLAINT_RATIO.set(complaints / sent if sent else 0.0)
        metrics.UNSUBSCRIBE_RATIO.set(unsubscribes / sent if sent else 0.0)
        await self._repo.prune(now, self._retention, max(self._window, timedelta(days=1)))
        return False
