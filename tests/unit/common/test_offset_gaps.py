"""A consumer does not step past a batch that its broker shows late."""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka import TopicPartition
from hypothesis import given
from hypothesis import strategies as st

from stepmail_common.kafka import _ForgetRevoked
from stepmail_common.offset_gaps import GapGuard


@dataclass(frozen=True)
class Record:
    offset: int


def records(*offsets: int) -> list[Record]:
    return [Record(o) for o in offsets]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def guard(clock: Clock, outcomes: list[tuple[str, int, bool]]) -> GapGuard[str]:
    return GapGuard(patience=2.0, clock=clock, outcome=lambda *told: outcomes.append(told))


def test_contiguous_records_pass_and_set_the_next_expected_offset() -> None:
    g: GapGuard[str] = GapGuard()
    assert g.admit("p", records(5, 6, 7)) == (records(5, 6, 7), None)
    assert g.expected("p") == 8
    assert g.admit("p", records(8)) == (records(8), None)


def test_a_hole_inside_a_fetch_keeps_what_precedes_it_and_asks_for_the_hole_again() -> None:
    outcomes: list[tuple[str, int, bool]] = []
    clock = Clock()
    g = guard(clock, outcomes)
    assert g.admit("p", records(0, 1, 2, 6, 7)) == (records(0, 1, 2), 3)
    assert g.expected("p") == 3
    # Fetched again from 3: the late batch is there now.
    assert g.admit("p", records(3, 4, 5, 6, 7)) == (records(3, 4, 5, 6, 7), None)
    assert outcomes == [("p", 3, False)]
    assert g.expected("p") == 8


def test_a_hole_before_a_fetch_holds_the_whole_fetch_back() -> None:
    outcomes: list[tuple[str, int, bool]] = []
    clock = Clock()
    g = guard(clock, outcomes)
    g.admit("p", records(0, 1))
    assert g.admit("p", records(5, 6)) == ([], 2)
    clock.now = 1.9
    assert g.admit("p", records(5, 6)) == ([], 2)
    assert outcomes == []


def test_a_hole_still_open_after_the_patience_is_stepped_over_and_told() -> None:
    outcomes: list[tuple[str, int, bool]] = []
    clock = Clock()
    g = guard(clock, outcomes)
    g.admit("p", records(0, 1))
    assert g.admit("p", records(5, 6)) == ([], 2)
    clock.now = 2.0
    assert g.admit("p", records(5, 6)) == (records(5, 6), None)
    assert outcomes == [("p", 2, True)]
    assert g.expected("p") == 7


def test_a_re_read_below_the_expected_offset_is_admitted() -> None:
    g: GapGuard[str] = GapGuard()
    g.admit("p", records(0, 1, 2, 3))
    assert g.admit("p", records(1, 2, 3, 4)) == (records(1, 2, 3, 4), None)
    assert g.expected("p") == 5


def test_partitions_are_independent_and_forgotten_when_moved_away() -> None:
    g: GapGuard[str] = GapGuard()
    g.admit("a", records(0))
    g.admit("b", records(10))
    assert g.admit("a", records(3)) == ([], 1)
    assert g.admit("b", records(11)) == (records(11), None)
    g.forget({"a"})
    assert g.expected("a") is None
    # Taken back later: whatever the group committed meanwhile is where it starts.
    assert g.admit("a", records(40)) == (records(40), None)


@given(st.lists(st.integers(1, 5), min_size=1, max_size=40), st.data())
def test_what_is_admitted_is_always_contiguous_from_the_first_offset(
    steps: list[int], data: st.DataObject
) -> None:
    """Whatever the fetches show, before the patience runs out nothing after a hole passes."""
    offsets = [sum(steps[: i + 1]) for i in range(len(steps))]
    g: GapGuard[str] = GapGuard(patience=10.0, clock=lambda: 0.0)
    admitted: list[int] = []
    position = offsets[0]
    for _ in range(len(offsets)):
        visible = [o for o in offsets if o >= position]
        cut = data.draw(st.integers(0, len(visible)))
        kept, again = g.admit("p", records(*visible[:cut]))
        admitted += [r.offset for r in kept]
        position = again if again is not None else (admitted[-1] + 1 if admitted else position)
    assert admitted == list(range(offsets[0], offsets[0] + len(admitted)))


def test_a_reading_told_where_it_starts_waits_for_a_hole_at_the_start() -> None:
    g: GapGuard[str] = GapGuard()
    g.expect("p", 0)
    assert g.admit("p", records(4, 5)) == ([], 0)
    assert g.admit("p", records(0, 1, 2, 3, 4, 5)) == (records(0, 1, 2, 3, 4, 5), None)


def test_a_partition_given_back_in_a_rebalance_is_read_from_its_new_position() -> None:
    """Revoked and assigned again between two fetches, while another consumer read on:
    no hole is waited for at the old offset."""
    outcomes: list[tuple[TopicPartition, int, bool]] = []
    clock = Clock()
    g: GapGuard[TopicPartition] = GapGuard(
        patience=2.0, clock=clock, outcome=lambda *told: outcomes.append(told)
    )
    tp = TopicPartition("t", 0)
    g.admit(tp, records(0, 1, 2))
    listener = _ForgetRevoked(g)
    listener.on_partitions_revoked([tp])
    listener.on_partitions_assigned([tp])
    assert g.expected(tp) is None
    g.expect(tp, 9)  # the position the consumer finds: the group committed 9 meanwhile
    assert g.admit(tp, records(9, 10)) == (records(9, 10), None)
    assert outcomes == []
