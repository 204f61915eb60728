"""End-to-end latency at half of a system's own maximum throughput.

A latency measured at full speed only measures the queue in front of the
system, so each system is fed at 50 % of the input rate it sustained in the
throughput runs, by a rate-limited producer running while it processes.

What is measured, per unique event: the wall-clock time at which a
``read_committed`` consumer in the benchmark process receives the output
record, minus the ``created_at`` the producer wrote into the payload just
before sending it. Payload time is used, not Kafka record timestamps, because
the systems disagree on output timestamps (Quix Streams copies the input
record's timestamp to its output, Faust and aiokafka stamp the send time), and
because reception by a read_committed consumer is what a downstream reader
sees: under exactly-once it includes the wait for the transaction to commit.
Producer, consumer and systems share one clock (one machine).

Events sent during the warm-up are not counted; duplicates (20 %) are sent
as exact re-sends of earlier records, as in the backlog.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from common.readback import partitions_of

from .metrics import percentile

PRIMING_TIMEOUT_S = 180.0
DRAIN_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Latency:
    rate_in: float
    measured: int
    expected: int
    p50_ms: float | None
    p99_ms: float | None


def stamped(records: list[tuple[bytes | None, bytes]]) -> Iterator[tuple[str, bytes, bool]]:
    """(event_id, value, is_first) with ``created_at`` set to now in each first
    occurrence; a duplicate repeats the bytes its original was sent with."""
    sent: dict[str, bytes] = {}
    for _, value in records:
        payment = json.loads(value)
        event_id = payment["event_id"]
        first = event_id not in sent
        if first:
            payment["created_at"] = datetime.now(UTC).isoformat()
            sent[event_id] = json.dumps(payment, separators=(",", ":")).encode()
        yield event_id, sent[event_id], first


async def _produce(producer: AIOKafkaProducer, topic: str, records: list[tuple[bytes | None, bytes]],
                   rate: float, warmup_s: float, measured_ids: set[str]) -> None:
    """Send at ``rate`` records/s; ids first sent after the warm-up go into ``measured_ids``."""
    stamps = stamped(records)
    started = time.monotonic()
    pending: list[asyncio.Future] = []
    for sent in range(len(records)):  # stamp after the rate wait, not before
        while sent >= rate * (time.monotonic() - started):
            await asyncio.sleep(0.002)
        event_id, value, first = next(stamps)
        if first and time.monotonic() - started >= warmup_s:
            measured_ids.add(event_id)
        pending.append(await producer.send(topic, value, key=event_id.encode()))
        if len(pending) >= 200:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)


async def _consume(consumer: AIOKafkaConsumer, latencies: dict[str, float], done: asyncio.Event) -> None:
    while not done.is_set():
        for batch in (await consumer.getmany(timeout_ms=100)).values():
            received = time.time()
            for record in batch:
                payment = json.loads(record.value)
                event_id = payment["event_id"]
                if event_id not in latencies:
                    created = datetime.fromisoformat(payment["created_at"]).timestamp()
                    latencies[event_id] = (received - created) * 1000.0


class SystemDied(RuntimeError):
    """The system under test exited while it was being measured."""


async def measure(bootstrap: str, input_topic: str, output_topic: str, *, rate: float,
                  warmup_s: float, duration_s: float, records: list[tuple[bytes | None, bytes]],
                  priming: list[tuple[bytes | None, bytes]], alive: Callable[[], bool]) -> Latency:
    """Prime the system (wait for the output of ``priming``), then send ``records`` at
    ``rate``/s for warm-up + duration and time every output of the measured part.
    Raises :class:`SystemDied` as soon as ``alive()`` turns false."""
    count = int(rate * (warmup_s + duration_s))
    records = records[:count]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, isolation_level="read_committed",
        auto_offset_reset="earliest", enable_auto_commit=False, fetch_max_wait_ms=50,
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=0)
    latencies: dict[str, float] = {}
    measured_ids: set[str] = set()
    done = asyncio.Event()
    await producer.start()
    await consumer.start()
    try:
        consumer.assign(await partitions_of(bootstrap, output_topic))
        reader = asyncio.create_task(_consume(consumer, latencies, done))
        await _prime(producer, input_topic, priming, latencies, alive)
        await _produce(producer, input_topic, records, rate, warmup_s, measured_ids)
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while not measured_ids <= latencies.keys() and time.monotonic() < deadline:
            _check(alive)
            await asyncio.sleep(0.2)
        done.set()
        await reader
    finally:
        await consumer.stop()
        await producer.stop()
    values = [latencies[i] for i in measured_ids if i in latencies]
    return Latency(
        rate_in=rate, measured=len(values), expected=len(measured_ids),
        p50_ms=percentile(values, 50) if values else None,
        p99_ms=percentile(values, 99) if values else None,
    )


def _check(alive: Callable[[], bool]) -> None:
    if not alive():
        raise SystemDied("the system under test exited during the latency run")


async def _prime(producer: AIOKafkaProducer, topic: str, priming: list[tuple[bytes | None, bytes]],
                 latencies: dict[str, float], alive: Callable[[], bool]) -> None:
    """Send a few records and wait for their outputs: the system is up and assigned."""
    ids = set()
    for key, value in priming:
        ids.add(json.loads(value)["event_id"])
        await producer.send_and_wait(topic, value, key=key)
    deadline = time.monotonic() + PRIMING_TIMEOUT_S
    while not ids <= latencies.keys():
        _check(alive)
        if time.monotonic() > deadline:
            raise TimeoutError(f"no output for the priming records after {PRIMING_TIMEOUT_S} s")
        await asyncio.sleep(0.2)
