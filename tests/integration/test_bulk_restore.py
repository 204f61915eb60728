"""faust_guarantees/restore.py against the real broker: what a bulk restore writes into RocksDB.

The state must be exactly what Faust's own record-by-record recovery would build:
the latest value per key, tombstones deleting, nothing of an aborted transaction,
and the persisted offset at the last record read.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest
import rocksdict
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2
from faust.types import TP

from streams_app.admin import create_topics, send_records
from streams_app.traffic import generate
from faust_guarantees.restore import bulk_restore

pytestmark = pytest.mark.integration


class _Store:
    """The two things of Faust's RocksDB Store a bulk restore uses, on a real RocksDB."""

    def __init__(self, path) -> None:
        self.db = rocksdict.Rdict(str(path), options=rocksdict.Options(raw_mode=True))
        self.persisted: dict[TP, int] = {}

    def _db_for_partition(self, partition: int):
        return self.db

    def set_persisted_offset(self, tp: TP, offset: int) -> None:
        self.persisted[tp] = offset


def test_bulk_restore_builds_the_latest_committed_state(kafka_bootstrap, topic_factory, tmp_path):
    topic = topic_factory(1)
    tp = TP(topic, 0)

    async def scenario() -> int:
        plain = [(b"k%d" % (i % 20), b"v%d" % i) for i in range(50)] + [(b"k3", None)]  # then a tombstone
        await send_records(kafka_bootstrap, topic, plain)
        txn = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"t-{uuid.uuid4().hex}")
        await txn.start()
        try:
            await txn.begin_transaction()
            await txn.send_and_wait(topic, key=b"k5", value=b"aborted", partition=0)
            await txn.send_and_wait(topic, key=b"new", value=b"aborted", partition=0)
            await txn.abort_transaction()
            await txn.begin_transaction()
            await txn.send_and_wait(topic, key=b"k6", value=b"committed", partition=0)
            await txn.commit_transaction()
        finally:
            await txn.stop()
        return 55  # 51 plain records, 2 aborted, a marker, 1 committed, a marker: offsets 0-55

    last_offset = asyncio.run(scenario())
    store = _Store(tmp_path / "db")
    last = asyncio.run(bulk_restore(kafka_bootstrap, store, tp, after=-1, through=last_offset))

    # record i wrote key i % 20: the last write of key k was record 40 + k (k < 10) or 20 + k
    expected = {b"k%d" % k: b"v%d" % (40 + k if k < 10 else 20 + k) for k in range(20)}
    del expected[b"k3"]
    expected[b"k6"] = b"committed"
    assert dict(store.db.items()) == expected
    assert last == 54, "the last committed record's offset (55 is the commit marker)"
    assert store.persisted == {tp: 54}


def test_bulk_restore_starts_after_the_persisted_offset(kafka_bootstrap, topic_factory, tmp_path):
    topic = topic_factory(1)
    tp = TP(topic, 0)

    asyncio.run(send_records(kafka_bootstrap, topic, [(b"k%d" % i, b"v") for i in range(10)]))
    store = _Store(tmp_path / "db")
    assert asyncio.run(bulk_restore(kafka_bootstrap, store, tp, after=6, through=9)) == 9
    assert sorted(store.db.keys()) == [b"k7", b"k8", b"k9"]


def test_a_worker_with_empty_state_restores_the_dedup_table_in_bulk(pipeline_factory):
    """The pipeline end to end: a dedup changelog of 60,000+ ids (about 15,000 per partition), a worker on empty
    state. The bulk restore loads it (Faust's recovery then has nothing left), and
    every id in it is a duplicate to the dedup stage."""
    pipeline = pipeline_factory("at_least_once")
    config = pipeline.config
    traffic = generate(80, seed=7, id_prefix=config.run_id)
    changelog = f"{config.app_id}-seen-events-changelog"
    asyncio.run(create_topics(config.bootstrap, [changelog], config.partitions, {"cleanup.policy": "compact,delete"}))
    now = json.dumps(time.time()).encode()
    filler = (json.dumps(f"{config.run_id}-old-{i}").encode() for i in range(60_000))
    asyncio.run(send_records(config.bootstrap, changelog, [(key, now) for key in filler]))

    async def mark_seen_where_dedup_looks() -> None:
        # An id's seen-row is in the partition the dedup stage reads it in (topics.event_partition).
        producer = AIOKafkaProducer(bootstrap_servers=config.bootstrap, acks="all")
        await producer.start()
        try:
            for event_id in traffic.unique_events:
                partition = (murmur2(event_id.encode()) & 0x7FFFFFFF) % config.partitions
                await producer.send(changelog, now, key=json.dumps(event_id).encode(), partition=partition)
        finally:
            await producer.stop()  # flushes

    asyncio.run(mark_seen_where_dedup_looks())

    worker = pipeline.worker()
    start = worker.log_path.read_text()
    assert start.count(f"bulk restore of TP(topic='{changelog}'") == config.partitions, start[-3000:]
    pipeline.send(traffic)
    pipeline.drain()
    stats = worker.stats()
    assert stats["unique"] == 0 and stats["charges"] == 0, stats
    assert stats["duplicates_dropped"] == stats["valid"] == len(traffic.records) - sum(traffic.bad.values())
