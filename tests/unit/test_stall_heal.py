"""stalled-partition-heal: a real head gap is healed, a commit in flight is not a gap.

Faust's commit takes the offsets it commits out of the acked list, then awaits the
producer flush and the broker, and only then sets the committed offset. In between,
acked starts past committed exactly as after a lost record. Seen in the benchmark at
commit interval 0.1 s: commits took up to 0.46 s and the heal sought partitions back
40 times in 17 s.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from faust.types import TP

from streams_app import faust_fixes

PARTITION = TP("payments.unique", 0)


class StubConsumer:
    """The consumer state the heal reads: acked 908-909 while committed is 864."""

    def __init__(self, commit_in_flight: bool) -> None:
        self._acked = {PARTITION: [908, 909]}
        self._acked_index = {PARTITION: {908, 909}}
        self._committed_offset = {PARTITION: 864}
        self._commit_fut = asyncio.get_running_loop().create_future() if commit_in_flight else None
        self._new_offset = SimpleNamespace(_fixed=True)  # exact-gaps installed: no tolerance

    def assignment(self) -> set[TP]:
        return {PARTITION}

    def seek(self, tp: TP, offset: int) -> None:
        pass


async def _heal_ticks(monkeypatch, *, commit_in_flight: bool, ticks: int) -> list[tuple[TP, int]]:
    consumer = StubConsumer(commit_in_flight)
    probes, seeks = [], []

    async def first_committed_record(bootstrap, tp, start, end):
        probes.append((tp, start, end))
        return start  # a committed record sits in the gap: deliver it again

    async def quiescent_seek(consumer, seek):
        seeks.append((PARTITION, consumer._committed_offset[PARTITION]))

    monkeypatch.setattr(faust_fixes, "first_committed_record", first_committed_record)
    monkeypatch.setattr(faust_fixes, "quiescent_seek", quiescent_seek)
    heal = faust_fixes._heal_stalled_partitions_for(SimpleNamespace(consumer=consumer, conf=SimpleNamespace(broker=[])))
    for _ in range(ticks):
        await heal()
    return seeks


def test_a_head_gap_that_lasts_three_checks_is_sought_back(monkeypatch):
    seeks = asyncio.run(_heal_ticks(monkeypatch, commit_in_flight=False, ticks=3))
    assert seeks == [(PARTITION, 864)]


def test_a_commit_in_flight_is_not_taken_for_a_stall(monkeypatch):
    assert asyncio.run(_heal_ticks(monkeypatch, commit_in_flight=True, ticks=10)) == []
