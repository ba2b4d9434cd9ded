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
