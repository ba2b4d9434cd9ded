"""The sender's background loop that resolves ambiguous mails."""

import logging

from stepmail_common.loops import PeriodicLoop
from stepmail_sender.delivery import Deliverer

log = logging.getLogger(__name__)


class Recovery(PeriodicLoop):
    """Every few seconds, resolves mails left in ``sending`` by dead processes."""

    def __init__(self, deliverer: Deliverer, *, interval: float = 2.0) -> None:
        super().__init__(interval)
        self._deliverer = deliverer

    async def run_once(self) -> bool:
        resolved = await self._deliverer.recover()
        if resolved:
            log.info("ambiguous mails resolved", extra={"count": resolved})
        return False


class Retrier(PeriodicLoop):
    """Sends deferred mails whose next attempt is due (apart from the consumed partitions)."""

    def __init__(self, deliverer: Deliverer, *, interval: float = 1.0, batch: int = 200) -> None:
        super().__init__(interval)
        self._deliverer = deliverer
        self._batch = batch

    async def run_once(self) -> bool:
        return await self._deliverer.retry_due(self._batch) >= self._batch
