"""The seek-uncommitted-partitions fix.

Every guarantee: after recovery Faust resumes the fetcher, clears the stream queues and
then seeks every partition to its committed offset, but aiokafka's seek_to_committed
skips partitions that have no committed offset yet (None or 0). Records fetched and
queued before the seek are dropped with the queues and never fetched again: a hole in
the acked offsets, after which Faust never commits that partition again
(faust-streaming#596). It happens to any worker restarted before its first commit of a
partition, e.g. killed within the first commit interval. Fix: partitions without a
committed offset are sought to the auto.offset.reset position too, and that position
becomes their commit base: with no committed offset, Faust (and exact-gaps) commit from
whatever offset is acked first, so records dropped at the head of a never-committed
partition were committed past without a trace. Seen in CI: an exactly_once sink
restarted before its first commit of a partition processed the record after 24
queue-cleared ones just before Faust's queue clear was repaired
(seek-after-queue-clear), and a commit at interval 0.1 s in that 60 ms window committed
past all 24 (21 charges lost). With a base the hole stops the commit until they are
delivered again.

Regression tests: test_faust_fixes.py::test_seek_uncommitted_partitions,
test_faust_fixes_unit.py::test_a_never_committed_partition_is_not_committed_past_a_hole_at_its_head.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from ..state import Guarantees

log = logging.getLogger(__name__)

NAME = "seek-uncommitted-partitions"
#: The guarantee it is for; None: every one.
ONLY = None
#: The upstream code it replaces or relies on, with the fingerprint of the verified source.
UPSTREAM = {
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread.seek_to_committed": "775ab0adc4b0",
    "aiokafka.consumer.consumer:AIOKafkaConsumer.seek_to_committed": "f6cd85c8b70a",
}


def install(guarantees: Guarantees) -> None:
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    async def seek_to_committed(self: AIOKafkaConsumerThread) -> Mapping[Any, int | None]:
        committed, starts = await self.call_thread(_seek_all_to_committed, self._ensure_consumer(),
                                                   self.app.conf.consumer_auto_offset_reset)
        set_commit_bases(self.consumer, starts)
        # None for them: Faust's perform_seek then leaves the base alone (it maps 0 to None).
        return {tp: None if tp in starts else offset for tp, offset in committed.items()}

    guarantees.classes.replace(AIOKafkaConsumerThread, "seek_to_committed", seek_to_committed)


async def _seek_all_to_committed(
    consumer: Any, auto_offset_reset: str,
) -> tuple[Mapping[Any, int | None], Mapping[Any, int]]:
    """aiokafka's seek_to_committed, plus the auto.offset.reset seek of partitions without
    a committed offset: (committed offsets, {partition: the offset it starts from} for
    those). The start offsets are asked before the seek: a reset resolves them later."""
    committed = await consumer.seek_to_committed()  # seeks only offsets > 0
    fresh = [tp for tp, offset in committed.items() if not offset]
    starts: Mapping[Any, int] = {}
    if fresh:
        if auto_offset_reset == "latest":
            starts = await consumer.end_offsets(fresh)
            await consumer.seek_to_end(*fresh)
        else:
            starts = await consumer.beginning_offsets(fresh)
            await consumer.seek_to_beginning(*fresh)
    return committed, starts


def set_commit_bases(consumer: Any, starts: Mapping[Any, int]) -> None:
    """Make each start offset its partition's committed offset in the consumer's books (not
    at the broker): the first commit must then start there, never past a hole before the
    first acked record (the stall heal probes such a hole as any other)."""
    from faust.types import TP

    for tp, start in starts.items():
        consumer._committed_offset[TP(tp.topic, tp.partition)] = start
