"""commit-order (at_most_once): two committers must never move a committed offset back.

Each stage commits an event's offset before processing it; Faust's periodic
commit computes its offsets, flushes the producer, then commits. Here the
broker is a list of the commits in the order they arrive, and Faust's stale
commit is sent after the stage's newer one, as it was in the lab run that
applied two events twice.
"""

from __future__ import annotations

import asyncio

from aiokafka import TopicPartition
from faust.transport.consumer import ThreadDelegateConsumer
from faust.types import TP

from faust_guarantees.fixes import commit_order
from faust_guarantees.state import Guarantees


class _Consumer:
    """What ThreadDelegateConsumer._commit reaches: the consumer thread's commit."""

    def __init__(self, delay: float = 0.0) -> None:
        self.broker: list[dict] = []
        self.delay = delay
        self._thread = self

    async def commit(self, offsets) -> bool:
        await asyncio.sleep(self.delay)
        self.broker.append(dict(offsets))
        return True


def _stock():
    return ThreadDelegateConsumer._commit  # the fix changes the app's own subclass only


def _fixed():
    guarantees = Guarantees(None)
    commit_order.install(guarantees)
    return guarantees.classes.of(ThreadDelegateConsumer)._commit


def _committed(broker: list[dict], tp) -> int:
    return [offsets[tp] for offsets in broker if tp in offsets][-1]


async def _stage_then_stale_faust_commit(commit) -> _Consumer:
    consumer = _Consumer()
    await commit(consumer, {TopicPartition("app.unique", 0): 12})  # the stage, before event 11
    await commit(consumer, {TP("app.unique", 0): 10})  # Faust's, computed before the flush
    return consumer


def test_stock_faust_lets_a_stale_commit_move_the_offset_back():
    consumer = asyncio.run(_stage_then_stale_faust_commit(_stock()))
    assert _committed(consumer.broker, TP("app.unique", 0)) == 10  # events 10 and 11 come again


def test_with_the_fix_a_commit_never_moves_the_offset_back():
    consumer = asyncio.run(_stage_then_stale_faust_commit(_fixed()))
    assert consumer.broker == [{TopicPartition("app.unique", 0): 12}]  # the stale one is not sent


def test_with_the_fix_concurrent_commits_reach_the_broker_one_at_a_time_in_call_order():
    commit = _fixed()
    tp, other = TP("app.unique", 0), TP("app.unique", 1)

    async def scenario() -> _Consumer:
        consumer = _Consumer(delay=0.01)
        await asyncio.gather(
            commit(consumer, {tp: 5, other: 3}),
            commit(consumer, {tp: 7}),
            commit(consumer, {tp: 6, other: 4}),
        )
        return consumer

    consumer = asyncio.run(scenario())
    assert consumer.broker == [{tp: 5, other: 3}, {tp: 7}, {other: 4}]
