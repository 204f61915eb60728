"""Offsets stored outside Kafka: start a partition where the external system says.

A sink that writes its effect and the record's offset in one database
transaction (SINK_MODE=transactional) knows better than Kafka where each
partition must resume: the Kafka commit may lag the database by any amount
after a crash. Such a sink registers an offset store for its topic here, and
every time Faust seeks the assigned partitions to their committed offsets
(after each rebalance, once the tables are recovered: ``Consumer.perform_seek``)
the partitions of that topic are sought on to the stored position when it is
ahead of Kafka's. Faust's commit bookkeeping is moved there too: a gap at the
head of its acked offsets would stop every later commit of the partition, and
the stored position itself is committed to Kafka at the next commit.

This is the "storing offsets outside Kafka" pattern of the Kafka consumer
documentation: the consumer's position comes from the same transaction as the
effect, so no record is charged twice and none is skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import TopicPartition
from faust.types import TP

log = logging.getLogger(__name__)

#: topic -> coroutine returning {tp: next offset to read} for the given partitions.
OffsetStore = Callable[[set[TP]], Awaitable[dict[TP, int]]]
_stores: dict[str, OffsetStore] = {}


def register_offset_store(topic: str, store: OffsetStore) -> None:
    """Resume the partitions of ``topic`` at the positions ``store`` returns."""
    _stores[topic] = store
    _install()


async def seek_to_stored(consumer: Any) -> dict[TP, int]:
    """Seek every assigned partition with a stored position ahead of its committed
    offset to that position; return what was sought."""
    assigned = consumer.assignment()
    sought: dict[TP, int] = {}
    for topic, store in _stores.items():
        tps = {tp for tp in assigned if tp.topic == topic}
        if not tps:
            continue
        for tp, stored in sorted((await store(tps)).items()):
            committed = consumer._committed_offset.get(tp)
            if committed is not None and committed >= stored:
                continue
            log.info("offsets: %s-%d resumes at %d, stored with the effect (Kafka's committed offset: %s)",
                     tp.topic, tp.partition, stored, committed)
            await consumer.seek(tp, stored)
            _ack_through(consumer, tp, stored - 1)
            sought[tp] = stored
    return sought


def _ack_through(consumer: Any, tp: TP, offset: int) -> None:
    """Make Faust's commit bookkeeping start after ``offset`` and commit past it.

    Faust commits only offsets it saw acked, contiguously after its committed
    offset. Marking ``offset`` committed-and-acked lets the next commit write
    ``offset + 1`` to Kafka (inside the partition's transaction under
    exactly_once), so the group's committed offsets, and the lag every monitor
    reads from them, agree with the database even on a partition that gets no
    new record.

    The partition is keyed as the client's ``TopicPartition``: Faust builds the
    offsets it commits from the keys of its acked offsets, aiokafka's
    ``send_offsets_to_transaction`` accepts no other type, and the ``assignment()``
    this comes from holds Faust's own ``TP`` (equal, but not the same type: a first
    acked offset under a ``TP`` key crashed the consumer with "Key should be
    TopicPartition instance" in the lab, exactly_once crash-mid-transaction).
    """
    key = TopicPartition(tp.topic, tp.partition)
    acked = consumer._acked.pop(key, [])  # pops a TP key too: they compare equal
    consumer._acked[key] = acked
    consumer._committed_offset[tp] = offset
    if offset not in consumer._acked_index[tp]:
        consumer._acked_index[tp].add(offset)
        acked.append(offset)
        acked.sort()


def _install() -> None:
    from faust.transport.consumer import Consumer

    stock = Consumer.perform_seek
    if getattr(stock, "_offset_stores", False):
        return

    async def perform_seek(self: Consumer) -> None:
        await stock(self)
        await seek_to_stored(self)

    perform_seek._offset_stores = True  # type: ignore[attr-defined]
    Consumer.perform_seek = perform_seek  # type: ignore[method-assign]
