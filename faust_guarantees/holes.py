"""Holes: offsets a partition cannot commit past.

A partition's offsets commit in one consecutive run from its committed offset: every
offset acked (processed) or a known gap (a transaction marker or an aborted record the
client skipped; exact-gaps). An offset that is neither, below an acked one, is a hole:
a record that was never delivered, or skipped offsets nobody registered yet. The stall
heal resolves holes (a gap, or a seek back that delivers the record again); under
exactly_once no transaction commits while one of its partitions has one
(whole-transactions). Pure functions over Faust's bookkeeping (``Consumer._acked``,
``Consumer._gap``, ``Consumer._committed_offset``), read and never changed here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def first_hole(acked: Iterable[int], gaps: Any, committed: int | None) -> tuple[int, int] | None:
    """The first range [start, end) below the highest acked offset that is neither acked
    nor covered by ``gaps`` (an intervaltree of [begin, end) ranges, or None), counting
    from ``committed`` (from the lowest acked offset when the partition never committed,
    as Faust's commit does); None when the acked offsets commit in one run."""
    unique = set(acked)
    if not unique:
        return None
    low, high = min(unique), max(unique)
    expected = low if committed is None else committed
    if low == expected and high - low + 1 == len(unique):
        return None  # the common case: one consecutive run from the committed offset
    for offset in sorted(unique):
        if offset < expected:
            continue  # below the committed offset (a duplicate ack): nothing to commit
        if offset > expected:
            covered = _covered_to(gaps, expected, offset)
            if covered < offset:
                return covered, offset
        expected = offset + 1
    return None


def _covered_to(gaps: Any, start: int, end: int) -> int:
    """How far from ``start`` (towards ``end``) the gap ranges cover without a break."""
    position = start
    while gaps and position < end:
        ends = [interval.end for interval in gaps.at(position)]
        if not ends:
            break
        position = max(ends)
    return min(position, end)


def held_partitions(consumer: Any) -> dict[Any, tuple[int, int]]:
    """The assigned partitions with a hole, each with its first hole."""
    held = {}
    assignment = consumer.assignment()
    for tp, acked in consumer._acked.items():
        if acked and tp in assignment:
            hole = first_hole(acked, consumer._gap.get(tp), consumer._committed_offset.get(tp))
            if hole is not None:
                held[tp] = hole
    return held
