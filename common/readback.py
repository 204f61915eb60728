"""Read what Kafka really holds, independently of the workers under test.

A fresh consumer with no group reads whole topics (``read_committed`` by
default: what a downstream exactly-once consumer would see), and the admin API
reports group lag and open transactions. Nothing here shares code or state
with the pipeline, so the lab's counts are a second opinion, not an echo.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient


async def partitions_of(bootstrap: str, topic: str) -> list[TopicPartition]:
    """The partitions of ``topic`` (without creating it); [] when it does not exist."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = {t["topic"]: t for t in await admin.describe_topics()}
    finally:
        await admin.close()
    entry = described.get(topic)
    if entry is None or entry["error_code"]:
        return []
    return [TopicPartition(topic, p["partition"]) for p in sorted(entry["partitions"], key=lambda p: p["partition"])]


async def read_topic(
    bootstrap: str, topic: str, *, isolation_level: str = "read_committed", timeout: float = 60.0,
) -> list[ConsumerRecord]:
    """Every record of ``topic`` up to its end (the last stable offset when read_committed)."""
    partitions = await partitions_of(bootstrap, topic)
    if not partitions:
        return []
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
        isolation_level=isolation_level, auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        end = await consumer.end_offsets(partitions)
        records: list[ConsumerRecord] = []
        deadline = time.monotonic() + timeout
        while True:
            positions = {tp: await consumer.position(tp) for tp in partitions}
            if all(positions[tp] >= end[tp] for tp in partitions):
                return records
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic}: positions {positions}, ends {end}, after {timeout} s")
            for tp, batch in (await consumer.getmany(timeout_ms=200)).items():
                records.extend(r for r in batch if r.offset < end[tp])
    finally:
        await consumer.stop()


@dataclass(frozen=True)
class Offsets:
    high_watermark: dict[TopicPartition, int]
    last_stable: dict[TopicPartition, int]

    @property
    def open_transactions(self) -> int:
        """Partitions whose last stable offset lags the high watermark: a transaction
        that is neither committed nor aborted is still holding read_committed readers."""
        return sum(1 for tp, hw in self.high_watermark.items() if self.last_stable[tp] < hw)


async def end_offsets(bootstrap: str, topics: list[str]) -> Offsets:
    partitions = [tp for topic in topics for tp in await partitions_of(bootstrap, topic)]
    ends: dict[str, dict[TopicPartition, int]] = {}
    for level in ("read_uncommitted", "read_committed"):
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, isolation_level=level)
        await consumer.start()
        try:
            ends[level] = await consumer.end_offsets(partitions) if partitions else {}
        finally:
            await consumer.stop()
    return Offsets(ends["read_uncommitted"], ends["read_committed"])


async def committed_offsets(bootstrap: str, group: str) -> dict[TopicPartition, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp: meta.offset for tp, meta in committed.items() if meta is not None and meta.offset >= 0}


def uncommitted(records: list[ConsumerRecord], committed: dict[TopicPartition, int]) -> int:
    """Data records the group has not committed past.

    Counted per record rather than as end offset minus committed offset: a
    transactional topic ends with a commit marker, which no consumer ever
    commits past, so that difference never reaches zero under exactly_once.
    """
    return sum(
        1 for r in records
        if r.offset >= committed.get(TopicPartition(r.topic, r.partition), 0)
    )


def run(coro):
    """Run a coroutine from synchronous lab code (which has no running loop)."""
    return asyncio.run(coro)
