"""stalled-partition-heal: a real head gap is healed, a commit in flight is not a gap,
and a partition left behind by a worker with nothing in progress is healed too.

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

from faust_guarantees import seeking
from faust_guarantees.fixes import stalled_partition_heal
from faust_guarantees.state import Guarantees

PARTITION = TP("payments.unique", 0)


class InHand:
    """A message an agent holds (delivered, not acked)."""

    def __init__(self, offset: int, generation_id: int = 1) -> None:
        self.tp, self.offset, self.generation_id, self.acked = PARTITION, offset, generation_id, False


class StubConsumer:
    """The consumer state the heal reads: acked 908-909 while committed is 864."""

    def __init__(self, commit_in_flight: bool = False, acked: tuple[int, ...] = (908, 909),
                 highwater: int = 910, in_progress: int = 0, in_hand: tuple[InHand, ...] = ()) -> None:
        self._acked = {PARTITION: list(acked)}
        self._acked_index = {PARTITION: set(acked)}
        self._committed_offset = {PARTITION: 864}
        self._gap: dict = {}
        self._commit_fut = asyncio.get_running_loop().create_future() if commit_in_flight else None
        self._new_offset = SimpleNamespace(_fixed=True)  # exact-gaps installed: no tolerance
        self.flow_active = True
        self._unacked_messages = {InHand(10_000 + i) for i in range(in_progress)} | set(in_hand)
        self._highwater = highwater

    def assignment(self) -> set[TP]:
        return {PARTITION}

    def highwater(self, tp: TP) -> int:
        return self._highwater

    def seek(self, tp: TP, offset: int) -> None:
        pass


async def _heal_ticks(monkeypatch, *, ticks: int, pause: float = 0.0, probes: list | None = None,
                      markers_only: bool = False, **state) -> list[tuple[TP, int]]:
    consumer = StubConsumer(**state)
    probes = [] if probes is None else probes
    seeks = []

    async def first_committed_record(bootstrap, tp, start, end):
        probes.append((tp, start, end))
        return None if markers_only else start  # else a committed record sits in the gap

    async def _add_gap(tp, start, end):
        pass

    consumer._add_gap = _add_gap

    async def quiescent_seek(consumer, seek):
        seeks.append((PARTITION, consumer._committed_offset[PARTITION]))

    monkeypatch.setattr(stalled_partition_heal, "first_committed_record", first_committed_record)
    monkeypatch.setattr(seeking, "quiescent_seek", quiescent_seek)
    app = SimpleNamespace(consumer=consumer, conf=SimpleNamespace(broker=[]), in_recovery=False,
                          consumer_generation_id=1,
                          topics=SimpleNamespace(_topics=set(), acks_enabled_for=lambda topic: True))
    heal = stalled_partition_heal._heal_stalled_partitions_for(Guarantees(app))
    for _ in range(ticks):
        await heal()
        await asyncio.sleep(pause)
    return seeks


def test_a_head_gap_that_lasts_three_checks_is_sought_back(monkeypatch):
    seeks = asyncio.run(_heal_ticks(monkeypatch, ticks=3))
    assert seeks == [(PARTITION, 864)]


def test_a_head_gap_holding_a_record_an_agent_still_has_in_hand_is_not_a_stall(monkeypatch):
    """A sink setting aside a record its target keeps failing (agents/sink.py) goes on and
    acks later ones: the record's offset is a head gap, but it is in progress; seeking back
    would deliver it a second time, every three commit intervals."""
    assert asyncio.run(_heal_ticks(monkeypatch, ticks=10, in_hand=(InHand(870),))) == []


def test_a_record_in_hand_from_before_a_rebalance_does_not_hold_the_heal_back(monkeypatch):
    seeks = asyncio.run(_heal_ticks(monkeypatch, ticks=3, in_hand=(InHand(870, generation_id=0),)))
    assert seeks == [(PARTITION, 864)]


def test_a_commit_in_flight_is_not_taken_for_a_stall(monkeypatch):
    assert asyncio.run(_heal_ticks(monkeypatch, commit_in_flight=True, ticks=10)) == []


def test_a_partition_left_behind_by_an_idle_worker_is_sought_back(monkeypatch):
    """Records fetched and never delivered at a partition's tail: nothing acked after
    them, nothing in progress, committed 864 behind the high watermark 910. The head-gap
    check cannot see it; after IDLE_STALL_S the heal delivers them again."""
    monkeypatch.setattr(stalled_partition_heal, "IDLE_STALL_S", 0.05)
    seeks = asyncio.run(_heal_ticks(monkeypatch, ticks=3, pause=0.03, acked=()))
    assert seeks == [(PARTITION, 864)]


def test_a_partition_behind_is_not_a_stall_before_idle_stall_s(monkeypatch):
    monkeypatch.setattr(stalled_partition_heal, "IDLE_STALL_S", 10.0)
    assert asyncio.run(_heal_ticks(monkeypatch, ticks=5, acked=())) == []


def test_a_partition_behind_while_events_are_in_progress_is_not_a_stall(monkeypatch):
    """An event being processed (a slow sink, a full queue behind it) still moves the commit."""
    monkeypatch.setattr(stalled_partition_heal, "IDLE_STALL_S", 0.0)
    assert asyncio.run(_heal_ticks(monkeypatch, ticks=5, acked=(), in_progress=1)) == []


def test_a_partition_committed_to_its_high_watermark_is_not_behind(monkeypatch):
    monkeypatch.setattr(stalled_partition_heal, "IDLE_STALL_S", 0.0)
    assert asyncio.run(_heal_ticks(monkeypatch, ticks=5, acked=(), highwater=864)) == []


def test_an_idle_partition_that_ends_on_a_transaction_marker_is_probed_once(monkeypatch):
    """Under exactly_once an idle partition's committed offset is its last transaction's
    marker, one below the high watermark: nothing to deliver, and no probe every tick."""
    monkeypatch.setattr(stalled_partition_heal, "IDLE_STALL_S", 0.0)
    probes: list = []
    seeks = asyncio.run(_heal_ticks(monkeypatch, ticks=5, acked=(), highwater=865, markers_only=True, probes=probes))
    assert seeks == [] and probes == [(PARTITION, 864, 865)]


def test_a_hole_in_the_middle_is_probed_too(monkeypatch):
    """Under exactly_once a partition with a hole commits nothing (whole-transactions), so
    a hole past the committed offset never becomes a head gap by itself: it is healed too."""
    probes: list = []
    seeks = asyncio.run(_heal_ticks(monkeypatch, ticks=3, probes=probes, markers_only=True,
                                    acked=(864, 865, 866, 880, 881)))
    assert probes == [(PARTITION, 867, 880)] and seeks == []
