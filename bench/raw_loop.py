"""The baseline: consume -> validate -> dedup (rocksdict) -> produce, in plain aiokafka.

No framework, one process, one loop, batch by batch: what the dedup pipeline
costs when only the unavoidable work is done. It does the same per-record work
as the Faust pipeline's ingest and dedup stages (:mod:`bench.payload`) and keeps
its dedup state the same way: a local RocksDB (rocksdict) plus one changelog
record per forwarded event id, so the state could be restored like a Faust or
Quix table. It does not re-key through a second topic (the input is already
keyed by event id); the report counts that as part of what Faust's pipeline
costs over the floor.

Per batch (``getmany``, at most ``--batch`` records):

- at_least_once: send the outputs and changelog records, await every ack,
  THEN mark the ids seen in RocksDB, then commit the offsets. A crash before the
  commit re-reads the batch and may forward an id again; none is ever lost.
- exactly_once: ``read_committed`` input; outputs, changelog records and the
  batch's offsets (``send_offsets_to_transaction``) in one transaction, one
  transaction per batch; the ids are marked in RocksDB after the commit. (After
  a crash the local store would have to be rebuilt from the changelog, as
  Faust's wipe-unclean-state fix does; the benchmark never crashes it.)

Run: ``python -m bench.raw_loop --input T --output T --group G --state-dir D``.
SIGTERM or SIGINT finishes the batch in hand, commits it and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import struct
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from rocksdict import Options, Rdict, WriteBatch

from .payload import DEFAULT_HORIZON_S, Payment, encode, parse, seen_within

log = logging.getLogger("bench.raw_loop")

GUARANTEES = ("at_least_once", "exactly_once")
DEFAULT_BATCH = 1000
_TIME = struct.Struct(">d")


def changelog_topic(group: str) -> str:
    """Where the raw loop writes its dedup state changes (created by the benchmark)."""
    return f"{group}-seen-changelog"


class Dedup:
    """The dedup state: event id -> first-seen epoch seconds, in a local RocksDB."""

    def __init__(self, path: Path, horizon_s: float) -> None:
        self._db = Rdict(str(path), options=Options(raw_mode=True))
        self.horizon_s = horizon_s

    def is_duplicate(self, event_id: bytes, now: float) -> bool:
        stored = self._db.get(event_id)
        return seen_within(None if stored is None else _TIME.unpack(stored)[0], now, self.horizon_s)

    def mark(self, event_ids: list[bytes], now: float) -> None:
        batch = WriteBatch(raw_mode=True)
        value = _TIME.pack(now)
        for event_id in event_ids:
            batch.put(event_id, value)
        self._db.write(batch)

    def close(self) -> None:
        self._db.close()


def first_occurrences(
    batch: dict[TopicPartition, list[ConsumerRecord]], dedup: Dedup, now: float,
) -> dict[bytes, tuple[int, Payment]]:
    """event id -> (source partition, payment) for the batch's records to forward."""
    forward: dict[bytes, tuple[int, Payment]] = {}
    for tp, records in batch.items():
        for record in records:
            payment = parse(record.value)
            if payment is None:
                continue  # ingest would dead-letter it; the benchmark's input has none
            event_id = payment["event_id"].encode()
            if event_id in forward or dedup.is_duplicate(event_id, now):
                continue
            forward[event_id] = (tp.partition, payment)
    return forward


async def send_all(
    producer: AIOKafkaProducer, output: str, changelog: str,
    forward: dict[bytes, tuple[int, Payment]], now: float,
) -> list[asyncio.Future]:
    """Queue each forwarded payment and its changelog record; return the ack futures."""
    stamp = str(now).encode()
    futures = []
    for event_id, (partition, payment) in forward.items():
        futures.append(await producer.send(output, encode(payment), key=payment["account"].encode()))
        futures.append(await producer.send(changelog, stamp, key=event_id, partition=partition))
    return futures


async def run(args: argparse.Namespace) -> None:
    exactly_once = args.guarantee == "exactly_once"
    consumer = AIOKafkaConsumer(
        args.input, bootstrap_servers=args.bootstrap, group_id=args.group,
        enable_auto_commit=False, auto_offset_reset="earliest",
        isolation_level="read_committed" if exactly_once else "read_uncommitted",
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=args.bootstrap, acks="all", enable_idempotence=True,
        transactional_id=f"{args.group}-tx" if exactly_once else None,
    )
    dedup = Dedup(args.state_dir, args.horizon)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    changelog = changelog_topic(args.group)
    await producer.start()
    await consumer.start()
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=200, max_records=args.batch)
            if not batch:
                continue
            now = time.time()
            forward = first_occurrences(batch, dedup, now)
            offsets = {tp: records[-1].offset + 1 for tp, records in batch.items()}
            if exactly_once:
                async with producer.transaction():
                    await send_all(producer, args.output, changelog, forward, now)
                    await producer.send_offsets_to_transaction(offsets, args.group)
            else:
                await asyncio.gather(*await send_all(producer, args.output, changelog, forward, now))
            dedup.mark(list(forward), now)
            if not exactly_once:
                await consumer.commit(offsets)
    finally:
        await consumer.stop()
        await producer.stop()
        dedup.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.raw_loop", description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--guarantee", choices=GUARANTEES, default="at_least_once")
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="records per getmany (and per transaction)")
    parser.add_argument("--horizon", type=float, default=DEFAULT_HORIZON_S, help="dedup horizon, seconds")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
