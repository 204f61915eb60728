"""faust_guarantees.batching: a batch's records in aiokafka record batches, each record's
future the ack of the record batch it went in, and a table's persisted offset the offset of
the last changelog record acked."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.structs import RecordMetadata, TopicPartition

from faust_guarantees.batching import _Group, _send


class _AioProducer:
    """aiokafka's producer API that batching uses: record batches of ``batch_size`` bytes."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.sent: list[tuple[str, int, int]] = []  # (how, first offset, records)
        self.offset = 100

    def create_batch(self) -> BatchBuilder:
        return BatchBuilder(self.batch_size, 0)

    async def send_batch(self, batch: BatchBuilder, topic: str, *, partition: int) -> asyncio.Future:
        count = batch.record_count()
        self.sent.append(("batch", self.offset, count))
        return self._acked(topic, partition, count)

    def _acked(self, topic: str, partition: int, count: int) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        future.set_result(RecordMetadata(topic, partition, TopicPartition(topic, partition), self.offset, -1, 0, 0))
        self.offset += count
        return future


def test_records_fill_record_batches_and_one_larger_than_a_batch_gets_its_own():
    async def scenario():
        persisted = []
        group = _Group(None, "app-seen-events-changelog", 2,
                       lambda tp, base, count: persisted.append(base + count - 1))
        group.producer = _AioProducer(batch_size=1024)
        sizes = [100] * 12 + [5000] + [100] * 3  # 12 fill more than one batch; one is larger than a batch
        group.records = [(b"k%d" % i, b"v" * n, []) for i, n in enumerate(sizes)]
        await _send(group)
        await asyncio.sleep(0)  # the done-callbacks
        return group, persisted

    group, persisted = asyncio.run(scenario())
    counts = [count for _, _, count in group.producer.sent]
    assert sum(counts) == 16
    assert counts[-2:] == [1, 3] and len(counts) >= 4  # 12 records of 100 bytes need two 1 KB batches
    # Each record's future is the ack of the batch it went in, in order.
    offsets = [group.futures[i].result().offset for i in group.batch_of]
    firsts = [first for _, first, _ in group.producer.sent]
    assert offsets == [first for first, (_, _, count) in zip(firsts, group.producer.sent) for _ in range(count)]
    # The persisted offset follows the last record of every batch acked: 100 + 16 - 1 at the end.
    assert persisted[-1] == 115 and persisted == sorted(persisted)


def test_a_record_batch_is_closed_before_it_is_sent():
    """Closed, no other send appends to it (aiokafka appends to the last open batch of a
    partition): its record count is the persisted offset's."""
    seen = []

    class Producer(_AioProducer):
        async def send_batch(self, batch, topic, *, partition):
            seen.append(batch._closed)
            return await super().send_batch(batch, topic, partition=partition)

    async def scenario():
        group = _Group(SimpleNamespace(), "out", 0, None)
        group.producer = Producer(batch_size=16384)
        group.records = [(None, b"x", [])] * 3
        await _send(group)

    asyncio.run(scenario())
    assert seen == [True]


def test_a_record_of_a_partition_without_its_transaction_says_so_as_faust_does():
    """A partition revoked (or a worker fenced) between the add and the flush: its producer is
    gone; the error is Faust's own, which the processing discipline reads as a fence."""
    from faust.exceptions import ProducerSendError

    from faust_guarantees.batching import _resolve
    from faust_guarantees.fencing import is_fenced

    event = SimpleNamespace(message=SimpleNamespace(tp=SimpleNamespace(topic="orders", partition=3)))
    app = SimpleNamespace(conf=SimpleNamespace(id="app"), assignor=SimpleNamespace(group_for_topic=lambda t: 1))
    producer = SimpleNamespace(_transaction_producers={}, _trn_locks={})
    group = _Group(event, "out", 0, None)
    with pytest.raises(ProducerSendError, match="No transaction producer found for : app-1-3") as raised:
        _resolve(app, producer, group, exactly_once=True)
    assert is_fenced(raised.value)
