"""Per-key token buckets, held in each replica's memory.

A limit of R requests/s with N replicas admits up to N x R across the deployment: the
buckets are not shared, which keeps the hot path free of network calls.
"""

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """``take(key, rate)`` spends one token or tells how long until one is there."""

    def __init__(
        self, burst_seconds: float, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._burst_seconds = burst_seconds
        self._monotonic = monotonic
        self._buckets: dict[str, _Bucket] = {}

    def take(self, key: str, rate: float, cost: float = 1.0) -> float:
        """0 when admitted, else the seconds to wait before retrying."""
        if rate <= 0:
            return 0.0
        capacity = max(rate * self._burst_seconds, cost, 1.0)
        now = self._monotonic()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(capacity, now)
        bucket.tokens = min(capacity, bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        if bucket.tokens >= cost:
            bucket.tokens -= cost
            return 0.0
        return (cost - bucket.tokens) / rate


def retry_after(wait: float) -> str:
    """``Retry-After`` in whole seconds, at least 1."""
    return str(max(1, math.ceil(wait)))
