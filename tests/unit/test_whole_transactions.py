"""whole-transactions: under exactly_once a transaction commits only whole.

CI on f894b32 (test_fenced_worker.py): at a revocation the surviving worker had processed
804 records of `unique` past a hole of 4 offsets; Faust committed the partition's
transaction (every output and changelog row of those records) with the offsets at the
hole, and the next owner applied the 804 again. The consumer here is Faust's, with
exact-gaps' commit bookkeeping; "stock" is it without whole-transactions.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import SimpleNamespace

import pytest
from faust.transport.consumer import Consumer
from faust.types import TP
from intervaltree import IntervalTree

from faust_guarantees import state
from faust_guarantees.fixes import exact_gaps, whole_transactions
from faust_guarantees.holes import first_hole
from faust_guarantees.state import Guarantees

RAW_0, UNIQUE_0, RAW_1 = TP("t.raw", 0), TP("t.unique", 0), TP("t.raw", 1)


def _consumer(fixed: bool, should_stop: bool = False):
    crashed: list[BaseException] = []

    async def crash(error: BaseException) -> None:
        crashed.append(error)

    app = SimpleNamespace(conf=SimpleNamespace(id="t", broker=[]), should_stop=should_stop,
                          assignor=SimpleNamespace(group_for_topic=lambda topic: 1), crash=crash)
    guarantees = state.attach(Guarantees(app, exactly_once=True))
    exact_gaps._patch_consumer(guarantees.classes)
    if fixed:
        whole_transactions.install(guarantees)
    consumer = Consumer.__new__(guarantees.classes.of(Consumer))
    consumer.app = app
    # raw[0] and raw[1] processed in one run from their committed offsets; unique[0] (the
    # transaction of partition 0 too) processed 524-530 while 520-523 never came.
    consumer._acked = {RAW_0: [10, 11, 12, 13, 14], UNIQUE_0: [524, 525, 526, 527, 528, 529, 530],
                       RAW_1: [5, 6, 7]}
    consumer._acked_index = {tp: set(acked) for tp, acked in consumer._acked.items()}
    consumer._committed_offset = {RAW_0: 10, UNIQUE_0: 520, RAW_1: 5}
    consumer._gap = defaultdict(IntervalTree)
    consumer.assignment = lambda: {RAW_0, UNIQUE_0, RAW_1}
    commits: list[dict] = []

    async def _handle_attached(offsets):
        pass

    async def _commit_offsets(offsets, start_new_transaction=True):
        commits.append(dict(offsets))
        consumer._committed_offset.update(offsets)
        return True

    consumer._handle_attached = _handle_attached
    consumer._commit_offsets = _commit_offsets
    consumer._should_commit = lambda tp, offset: True
    return consumer, guarantees, commits, crashed


def _probe_answering(monkeypatch, record):
    probes = []

    async def first_committed_record(bootstrap, tp, start, end, timeout=10.0):
        probes.append((tp, start, end))
        return record

    monkeypatch.setattr(whole_transactions, "first_committed_record", first_committed_record)
    monkeypatch.setattr(whole_transactions, "bootstrap", lambda app: "localhost:9092")
    return probes


@pytest.mark.parametrize("fixed", [False, True], ids=["stock", "fixed"])
def test_a_hole_holds_its_partitions_transaction_and_no_other(fixed):
    consumer, _guarantees, commits, _crashed = _consumer(fixed)
    asyncio.run(consumer._commit_tps(list(consumer._acked), start_new_transaction=True))
    if not fixed:
        # The transaction of partition 0 commits the outputs of unique 524-530, their offsets not.
        assert commits == [{RAW_0: 15, RAW_1: 8}]
        return
    assert commits == [{RAW_1: 8}], "partition 0's transaction waits for its hole"
    assert consumer._acked[RAW_0] == [10, 11, 12, 13, 14], "nothing of it was taken to commit"


def test_at_the_end_of_the_transactions_a_hole_of_markers_becomes_a_gap_and_all_commits(monkeypatch):
    probes = _probe_answering(monkeypatch, None)  # 520-523: transaction markers, aborted records
    consumer, guarantees, commits, crashed = _consumer(fixed=True)
    asyncio.run(consumer._commit_tps(list(consumer._acked), start_new_transaction=False))
    assert probes == [(UNIQUE_0, 520, 524)]
    assert commits == [{RAW_0: 15, UNIQUE_0: 531, RAW_1: 8}]
    assert not crashed and guarantees.unclean_stop is None


@pytest.mark.parametrize("should_stop", [False, True], ids=["revocation", "stop"])
def test_a_transaction_that_cannot_end_whole_is_left_to_abort_and_the_stop_is_unclean(monkeypatch, should_stop):
    _probe_answering(monkeypatch, 521)  # a committed record never delivered
    consumer, guarantees, commits, crashed = _consumer(fixed=True, should_stop=should_stop)
    asyncio.run(consumer._commit_tps(list(consumer._acked), start_new_transaction=False))
    assert commits == [{RAW_1: 8}]
    assert guarantees.unclean_stop and "t.unique[0] 520-523" in guarantees.unclean_stop
    assert len(crashed) == (0 if should_stop else 1), "a revocation stops the worker; a stop goes on"
    assert guarantees.fenced == (not should_stop), "stopped as a fenced worker is (it rejoins)"


def test_first_hole():
    gaps = IntervalTree.from_tuples([(10, 12), (12, 15)])
    assert first_hole([5, 6, 7], None, 5) is None
    assert first_hole([524, 525], None, 520) == (520, 524)
    assert first_hole([524, 525], IntervalTree.from_tuples([(520, 524)]), 520) is None
    assert first_hole([520, 521, 530], None, 520) == (522, 530), "a hole in the middle counts"
    assert first_hole([15], gaps, 10) is None, "touching gap ranges cover together"
    assert first_hole([16], gaps, 10) == (15, 16)
    assert first_hole([5, 5, 7], None, 5) == (6, 7)
    assert first_hole([3, 4], None, None) is None, "never committed: from the lowest acked offset"
