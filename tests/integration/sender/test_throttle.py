"""A domain throttle holds across replicas: two processes' worth of takers share 50/s."""

import asyncio
import time

import pytest

from stepmail_common.db import create_pool
from stepmail_sender.throttle import Throttle, parse_domain_limits

pytestmark = pytest.mark.integration


async def test_50_per_second_holds_across_two_replicas(database_url, sender_pool):
    limits = parse_domain_limits("docomo.ne.jp=50/s:5")
    other_pool = await create_pool(database_url, "sender", max_size=3)
    try:
        replicas = [Throttle(sender_pool, limits), Throttle(other_pool, limits)]
        for replica in replicas:
            await replica.start()
        granted: list[float] = []
        stop = asyncio.Event()
        warm = asyncio.Event()

        async def sender(throttle: Throttle) -> None:
            while not stop.is_set():
                n = await throttle.take("docomo.ne.jp", 8)
                granted.extend([time.monotonic()] * n)
                if len(granted) >= 60:
                    warm.set()

        tasks = [asyncio.create_task(sender(r)) for r in replicas for _ in range(3)]
        # Warm-up spends the initial burst; then count what is granted in a 4 s window.
        await asyncio.wait_for(warm.wait(), timeout=30)
        start = time.monotonic()
        await asyncio.sleep(4.0)
        end = time.monotonic()
        stop.set()
        await asyncio.gather(*tasks)
        in_window = sum(1 for t in granted if start <= t < end)
        expected = 50 * (end - start)
        assert abs(in_window - expected) <= 0.1 * expected, (in_window, expected)
        # An unlimited domain is not held back at all.
        assert await replicas[0].take("example.org", 100) == 100
    finally:
        await other_pool.close()
