"""Background loops: a woken loop may let what its wakers leave gather for one pass."""

from __future__ import annotations

import asyncio

from stepmail_common.loops import PeriodicLoop


class Collecting(PeriodicLoop):
    """Each pass takes what was left for it, and says when it took something."""

    def __init__(self, settle: float) -> None:
        super().__init__(interval=60.0, settle=settle)
        self.pending: list[int] = []
        self.passes: list[list[int]] = []
        self.started = asyncio.Event()
        self.took = asyncio.Event()

    async def run_once(self) -> bool:
        self.started.set()
        if self.pending:
            self.passes.append(self.pending)
            self.pending = []
            self.took.set()
        return False

    async def taken(self, count: int) -> None:
        while sum(map(len, self.passes)) < count:
            self.took.clear()
            await asyncio.wait_for(self.took.wait(), 5)


async def passes_after_three_wakes(settle: float) -> list[list[int]]:
    loop = Collecting(settle)
    task = asyncio.create_task(loop.run())
    await asyncio.wait_for(loop.started.wait(), 5)
    for n in range(3):
        loop.pending.append(n)
        loop.wake.set()
        await asyncio.sleep(0.01)
    await loop.taken(3)
    await loop.stop()
    await asyncio.wait_for(task, 5)
    return loop.passes


async def test_a_settling_loop_takes_what_several_wakers_left_in_one_pass() -> None:
    assert await passes_after_three_wakes(settle=0.5) == [[0, 1, 2]]


async def test_without_settling_each_wake_makes_its_own_pass() -> None:
    assert await passes_after_three_wakes(settle=0.0) == [[0], [1], [2]]


async def test_a_settling_loop_stops_at_once() -> None:
    loop = Collecting(settle=30.0)
    task = asyncio.create_task(loop.run())
    await asyncio.wait_for(loop.started.wait(), 5)
    loop.wake.set()
    await asyncio.sleep(0.01)
    await loop.stop()
    await asyncio.wait_for(task, 2)
