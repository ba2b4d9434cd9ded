"""Reading a partition without stepping over a batch that becomes visible late.

In a partition of our topics (no transactions, no compaction) offsets are contiguous,
and Apache Kafka makes a batch visible only once every offset below it is. A
Kafka-protocol broker may not: the embedded Tansu broker lets a fetch return the batch
of one produce request while the batch of a concurrent request to the same partition,
with lower offsets, is not stored yet. A consumer that took what it was given would
step past the late batch for good and its events would never be handled.

``GapGuard`` admits a partition's records only up to the first hole in their offsets and
tells the caller to fetch again from the hole; a hole still open after ``patience``
seconds is stepped over and counted, since a broker may also leave offsets unused.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Generic, Protocol, TypeVar


class _Record(Protocol):
    @property
    def offset(self) -> int: ...


K = TypeVar("K", bound=Hashable)
R = TypeVar("R", bound=_Record)

GapOutcome = Callable[[K, int, bool], None]
"""Told, per hole waited for, its partition, its first offset, and whether it was filled
(``False``) or stepped over (``True``)."""


class GapGuard(Generic[K]):
    """The next offset expected per partition, and the hole each one waits for."""

    def __init__(
        self,
        patience: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        outcome: GapOutcome[K] | None = None,
    ) -> None:
        self._patience = patience
        self._clock = clock
        self._outcome = outcome
        self._next: dict[K, int] = {}
        self._waiting: dict[K, tuple[int, float]] = {}

    def expected(self, partition: K) -> int | None:
        return self._next.get(partition)

    def expect(self, partition: K, offset: int) -> None:
        """Where a partition's reading starts (otherwise: its first record admitted)."""
        self._next[partition] = offset

    def admit(self, partition: K, records: Sequence[R]) -> tuple[Sequence[R], int | None]:
        """The records to handle, and the offset to fetch from again (``None``: go on).

        Records at or below the expected offset (a re-read after a seek or a rebalance)
        are admitted, and the expectation follows them.
        """
        if not records:
            return records, None
        expected = self._next.get(partition)
        previous = records[0].offset - 1 if expected is None else expected - 1
        for i, record in enumerate(records):
            hole = previous + 1
            if record.offset > hole and not self._waited_enough(partition, hole):
                if i:
                    self._next[partition] = hole
                return records[:i], hole
            previous = record.offset
        self._next[partition] = previous + 1
        self._resolved(partition, stepped_over=False)
        return records, None

    def forget(self, partitions: Iterable[K]) -> None:
        """Drop what is known of ``partitions`` (a rebalance took them away): if given back,
        their reading starts again from where the caller says (``expect``), since another
        consumer may have read on meanwhile."""
        for partition in partitions:
            self._next.pop(partition, None)
            self._waiting.pop(partition, None)

    def _waited_enough(self, partition: K, hole: int) -> bool:
        """Whether the hole at ``hole`` has been waited for ``patience`` seconds."""
        now = self._clock()
        waiting = self._waiting.get(partition)
        if waiting is None or waiting[0] != hole:
            self._resolved(partition, stepped_over=False)
            self._waiting[partition] = (hole, now)
            return False
        if now - waiting[1] < self._patience:
            return False
        self._resolved(partition, stepped_over=True)
        return True

    def _resolved(self, partition: K, *, stepped_over: bool) -> None:
        waiting = self._waiting.pop(partition, None)
        if waiting is not None and self._outcome is not None:
            self._outcome(partition, waiting[0], stepped_over)
