"""Bulk restore: a table partition's changelog into RocksDB in batches.

Faust restores a table through its stream machinery, one changelog record at a
time (fetcher, event, recovery buffer, ``apply_changelog_batch``): some 5,000
records per second on this project's machine, so a 1,000,000-key dedup table
took over three minutes to come back after its state was lost (a new machine,
or the exactly_once wipe after a crash, the wipe-unclean-state fix).

Here a plain consumer reads the changelog in large fetches and writes each
batch with one RocksDB ``WriteBatch``, raw bytes as Faust itself writes them in
``Store.apply_changelog_batch`` (the record key and value; a tombstone deletes),
then records the last offset as the partition's persisted offset. Faust's own
recovery then starts after it and reads only what arrived since. The reader
uses ``read_committed``: under exactly_once the state holds no row of an
aborted transaction (robinhood/faust#340).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

import rocksdict
from aiokafka import AIOKafkaConsumer, TopicPartition

log = logging.getLogger(__name__)

#: Below this many changelog records, Faust's own recovery is fast enough.
BULK_MIN_RECORDS = 10_000
#: Records decoded at once and per RocksDB write batch (the fetches stay large: 16 MiB).
#: 2,000 restored 200,000 keys at 900,000/s and raised the Python heap's arenas by 1 MB;
#: 20,000 at 630,000/s, +14.7 MB, arenas the survivors of a restore keep for the life
#: of the process (decision 0053).
BATCH_RECORDS = 2_000
#: The bulk restore stops after this long and leaves the rest to Faust: recovery
#: runs it inside a step Faust bounds by ``broker_request_timeout`` (90 s).
DEADLINE_S = 60.0


class PartitionStore(Protocol):
    """What a bulk restore needs of Faust's RocksDB ``Store``."""

    def _db_for_partition(self, partition: int) -> Any: ...

    def set_persisted_offset(self, tp: Any, offset: int) -> None: ...


async def bulk_restore(
    bootstrap: str, store: PartitionStore, tp: Any, after: int, through: int, *,
    deadline_s: float = DEADLINE_S,
) -> int | None:
    """Write changelog records ``after < offset <= through`` of ``tp`` into ``store``.

    Returns the last offset read (the store's new persisted offset), or None if
    nothing was read. Records past ``through`` are left to Faust's recovery.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
        isolation_level="read_committed", auto_offset_reset="earliest",
        max_partition_fetch_bytes=16 * 1024 * 1024, fetch_max_bytes=64 * 1024 * 1024,
    )
    await consumer.start()
    partition = TopicPartition(tp.topic, tp.partition)
    db = store._db_for_partition(tp.partition)
    last: int | None = None
    written = 0
    started = time.monotonic()
    try:
        consumer.assign([partition])
        consumer.seek(partition, after + 1)
        while time.monotonic() - started < deadline_s:
            records = (await consumer.getmany(partition, timeout_ms=1000, max_records=BATCH_RECORDS)).get(partition, [])
            batch = rocksdict.WriteBatch(raw_mode=True)
            for record in records:
                if record.offset > through:
                    break
                if record.value is None:
                    batch.delete(record.key)
                else:
                    batch.put(record.key, record.value)
                last = record.offset
                written += 1
            if not batch.is_empty():
                db.write(batch)
            if (last is not None and last >= through) or await consumer.position(partition) > through:
                break
        else:
            log.warning("bulk restore of %s stopped after %.0f s at offset %s of %d; Faust restores the rest",
                        tp, deadline_s, last, through)
    finally:
        await consumer.stop()
    if last is not None:
        store.set_persisted_offset(tp, last)
    log.info("bulk restore of %s: %d records (offsets %d-%s) in %.1f s",
             tp, written, after + 1, last, time.monotonic() - started)
    return last
