"""Throttles that hold across every sender replica: token buckets in Postgres.

Each limited receiving domain (and the provider account, if limited) has one row in
``throttles``. Taking tokens is one ``UPDATE`` under the row lock that first refills the
bucket from the database's clock (the one clock all replicas share), so however many
processes send, the tokens granted in any window are at most ``rate * window + burst``.
A mail that gets no token waits for one: it is never dropped or dead-lettered.

The connection limit of a domain is enforced per process (a semaphore of that size);
across replicas it is multiplied by their number.
"""

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass

import asyncpg

from stepmail_sender import metrics, repository

_LIMIT = re.compile(r"^(?P<rate>\d+(?:\.\d+)?)/s(?::(?P<conns>\d+))?$")


class InvalidLimitError(ValueError):
    """A throttle setting cannot be understood."""


@dataclass(frozen=True, slots=True)
class Limit:
    """At most ``rate`` mails a second (bursts of ``burst``), ``connections`` at a time."""

    rate: float
    burst: float
    connections: int | None = None


def parse_limit(text: str) -> Limit:
    """``50/s`` or ``50/s:5`` (rate per second, optional concurrent connections)."""
    found = _LIMIT.match(text.strip())
    if found is None:
        raise InvalidLimitError(f"throttle {text!r} is not RATE/s or RATE/s:CONNECTIONS")
    rate = float(found["rate"])
    if rate <= 0:
        raise InvalidLimitError("a throttle rate must be positive")
    conns = int(found["conns"]) if found["conns"] else None
    if conns is not None and conns < 1:
        raise InvalidLimitError("a connection limit must be at least 1")
    # A tenth of a second's worth: smooth, yet one round trip grants several tokens.
    return Limit(rate=rate, burst=max(1.0, rate / 10), connections=conns)


def parse_domain_limits(spec: str) -> dict[str, Limit]:
    """``docomo.ne.jp=50/s:5,ezweb.ne.jp=30/s`` → limits by lower-cased domain."""
    limits: dict[str, Limit] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        domain, sep, limit = item.partition("=")
        if not sep or not domain.strip():
            raise InvalidLimitError(f"domain limit {item!r} is not DOMAIN=RATE/s[:CONNECTIONS]")
        limits[domain.strip().lower()] = parse_limit(limit)
    return limits


class Throttle:
    """Grants sending tokens per receiving domain and per provider account."""

    def __init__(
        self,
        pool: "asyncpg.Pool[asyncpg.Record]",
        domains: Mapping[str, Limit],
        account: Limit | None = None,
        account_name: str = "default",
        *,
        max_wait: float = 1.0,
    ) -> None:
        self._pool = pool
        self._domains = dict(domains)
        self._account = account
        self._account_bucket = f"account:{account_name}"
        self._max_wait = max_wait
        self._conns = {
            d: asyncio.Semaphore(lim.connections)
            for d, lim in self._domains.items()
            if lim.connections is not None
        }

    async def start(self) -> None:
        for domain, limit in self._domains.items():
            await repository.ensure_bucket(self._pool, f"domain:{domain}", limit.burst)
        if self._account is not None:
            await repository.ensure_bucket(self._pool, self._account_bucket, self._account.burst)

    def limited(self, domain: str) -> bool:
        return domain in self._domains

    def connections(self, domain: str) -> asyncio.Semaphore | None:
        """This process's share of the domain's connection limit, if it has one."""
        return self._conns.get(domain)

    async def take(self, domain: str, want: int) -> int:
        """Wait until at least one token is granted for ``domain`` (and the account); ≤ want."""
        granted = want
        limit = self._domains.get(domain)
        if limit is not None:
            granted = await self._take(f"domain:{domain}", limit, want, domain)
        if self._account is not None:
            got = 0
            while got < granted:
                got += await self._take(
                    self._account_bucket, self._account, granted - got, "account"
                )
        return granted

    async def _take(self, bucket: str, limit: Limit, want: int, label: str) -> int:
        waited = False
        while True:
            granted, left = await repository.take_tokens(
                self._pool, bucket, want, limit.rate, limit.burst
            )
            if granted:
                return granted
            if not waited:
                waited = True
                metrics.THROTTLED.labels(label).inc()
            # Until the next whole token; the database, not this sleep, decides who gets it.
            await asyncio.sleep(min(self._max_wait, max(0.001, (1.0 - left) / limit.rate)))
