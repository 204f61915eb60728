"""Everything the benchmark asks Kafka directly, independently of the systems measured.

High watermarks sampled during a run, committed offsets and a full read of an
output topic after it: the figures come from the broker, never from a system's
own counters.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Self

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import murmur2

from common.readback import committed_offsets, partitions_of
from streams_app.admin import create_topics

__all__ = ["create_topics"]  # re-exported: the benchmark creates its topics like the app



def partition_for(key: bytes, partitions: int) -> int:
    """The partition the Java and aiokafka default partitioners pick for ``key``."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class Watermarks:
    """A group-less consumer that reports high watermarks: what has been appended."""

    def __init__(self, bootstrap: str) -> None:
        self._consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
        self._partitions: dict[str, list[TopicPartition]] = {}
        self._bootstrap = bootstrap

    async def __aenter__(self) -> Self:
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    async def total(self, topic: str) -> int:
        """Sum of the high watermarks of ``topic`` (records plus transaction markers)."""
        if not self._partitions.get(topic):
            self._partitions[topic] = await partitions_of(self._bootstrap, topic)
        tps = self._partitions[topic]
        return sum((await self._consumer.end_offsets(tps)).values()) if tps else 0


async def committed_total(bootstrap: str, group: str, topic: str) -> int:
    """Records of ``topic`` the group has committed past (the input it consumed)."""
    return sum(offset for tp, offset in (await committed_offsets(bootstrap, group)).items() if tp.topic == topic)


@dataclass(frozen=True)
class OutputCount:
    """What a read_committed reader finds in an output topic."""

    records: int
    distinct_ids: int
    high_watermark: int

    @property
    def duplicates(self) -> int:
        return self.records - self.distinct_ids


async def count_output(bootstrap: str, topic: str, timeout: float = 300.0) -> OutputCount:
    """Read ``topic`` to its last stable offset; count records and distinct event ids."""
    partitions = await partitions_of(bootstrap, topic)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
        isolation_level="read_committed", auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 1024 * 1024, fetch_max_bytes=64 * 1024 * 1024,
    )
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        stable = await consumer.end_offsets(partitions)
        records, ids = 0, set()
        deadline = time.monotonic() + timeout
        while any([await consumer.position(tp) < stable[tp] for tp in partitions]):
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic} took over {timeout} s")
            for tp, batch in (await consumer.getmany(timeout_ms=500, max_records=50_000)).items():
                for record in batch:
                    if record.offset < stable[tp]:
                        records += 1
                        ids.add(json.loads(record.value)["event_id"])
    finally:
        await consumer.stop()
    async with Watermarks(bootstrap) as marks:
        high = await marks.total(topic)
    return OutputCount(records, len(ids), high)
