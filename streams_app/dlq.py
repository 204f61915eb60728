"""Reading the DLQ, and replaying chosen dead letters into the topic they came from.

    faust -A streams_app dlq list   [--code C] [--stage S] [--limit N]
    faust -A streams_app dlq replay [--code C] [--stage S] [--source TOPIC[P]@O ...] [--dry-run]

A replay sends each chosen dead letter's original key, value and headers back to
its original topic (header ``kafka_dlt-original-topic``), with a header
``x-dlq-replayed-from`` naming the dead letter: after the cause is fixed (a
stage's bug, a dependency that refused a record) the pipeline processes it as if
it had just arrived.

**Replays are idempotent.** Each replayed record and a marker keyed by the dead
letter's own place (``payments.dlq[0]@17``) are written in ONE Kafka
transaction, the marker to the compacted topic ``{prefix}.dlq-replays``; a
replay first reads the markers (read_committed) and skips every dead letter
already replayed. Running the same replay twice, or again after a crash half
way, sends each record once. All replays share one transactional id, so two
replays running at once fence each other instead of both sending. (The pipeline
would drop a replayed payment's second copy anyway, by its event id; the marker
makes the replay itself exact, whatever the stage.)

A dead letter sent as a reference (the record was too large to copy) cannot be
replayed from the DLQ: it names where the original is while retention keeps it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from common.readback import partitions_of, read_topic
from faust_guarantees.dead_letters import DeadLetter

from .admin import create_topics
from .settings import Settings

log = logging.getLogger(__name__)

REPLAYED_FROM = "x-dlq-replayed-from"


@dataclass(frozen=True)
class Selection:
    """Which dead letters: all of them, narrowed by reason code, stage or original place."""

    codes: frozenset[str] = frozenset()
    stages: frozenset[str] = frozenset()
    sources: frozenset[str] = frozenset()  # original places, e.g. payments.raw[2]@1045

    def __call__(self, letter: DeadLetter) -> bool:
        return ((not self.codes or letter.code in self.codes)
                and (not self.stages or letter.stage in self.stages)
                and (not self.sources or letter.place in self.sources))


@dataclass(frozen=True)
class ReplayResult:
    replayed: list[DeadLetter]
    already_replayed: list[DeadLetter]
    references: list[DeadLetter]  # too large to have been copied: nothing to replay


def dlq_place(letter: DeadLetter) -> str:
    """Where the dead letter itself is: the marker key of its replay."""
    return f"{letter.topic}[{letter.partition}]@{letter.offset}"


async def read_dead_letters(settings: Settings) -> list[DeadLetter]:
    records = await read_topic(settings.bootstrap, settings.topic("dlq"))
    return [DeadLetter.from_record(r) for r in records]


async def latest_dead_letters(settings: Settings, limit: int = 20, timeout: float = 10.0) -> list[DeadLetter]:
    """The newest ``limit`` dead letters, newest first: only each partition's last
    ``limit`` records are read (the dashboard asks every few seconds; the DLQ can be long)."""
    partitions = await partitions_of(settings.bootstrap, settings.topic("dlq"))
    if not partitions:
        return []
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap, group_id=None, enable_auto_commit=False,
                                isolation_level="read_committed", auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign(partitions)
        begin = await consumer.beginning_offsets(partitions)
        end = await consumer.end_offsets(partitions)
        for tp in partitions:
            consumer.seek(tp, max(begin[tp], end[tp] - limit))
        records = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            positions = {tp: await consumer.position(tp) for tp in partitions}
            if all(positions[tp] >= end[tp] for tp in partitions):
                break
            for tp, batch in (await consumer.getmany(timeout_ms=200)).items():
                records.extend(r for r in batch if r.offset < end[tp])
    finally:
        await consumer.stop()
    records.sort(key=lambda r: (r.timestamp, r.partition, r.offset), reverse=True)
    return [DeadLetter.from_record(r) for r in records[:limit]]


async def replayed_places(settings: Settings) -> set[str]:
    """The dead letters replayed so far (committed markers)."""
    return {r.key.decode() for r in await read_topic(settings.bootstrap, settings.topic("dlq-replays"))
            if r.key is not None}


async def replay(settings: Settings, selection: Selection, *, dry_run: bool = False) -> ReplayResult:
    """Replay the selected dead letters not replayed before; see the module docstring."""
    markers = settings.topic("dlq-replays")
    await create_topics(settings.bootstrap, [markers], 1, {"cleanup.policy": "compact"})
    done = await replayed_places(settings)
    chosen = [letter for letter in await read_dead_letters(settings) if selection(letter)]
    references = [letter for letter in chosen if letter.reference is not None]
    already = [letter for letter in chosen if letter.reference is None and dlq_place(letter) in done]
    todo = [letter for letter in chosen if letter.reference is None and dlq_place(letter) not in done]
    if todo and not dry_run:
        await _send_in_one_transaction(settings, todo, markers)
    return ReplayResult(todo, already, references)


async def _send_in_one_transaction(settings: Settings, letters: Sequence[DeadLetter], markers: str) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap, acks="all", enable_idempotence=True,
        transactional_id=f"{settings.app_id}-dlq-replay",
    )
    await producer.start()
    try:
        async with producer.transaction():
            for letter in letters:
                place = dlq_place(letter)
                await producer.send(letter.original_topic, letter.value, key=letter.key,
                                    headers=_headers(letter.headers.items(), place))
                await producer.send(markers, b"replayed", key=place.encode())
    finally:
        await producer.stop()


def _headers(own: Iterable[tuple[str, bytes]], place: str) -> list[tuple[str, bytes]]:
    return [(k, v) for k, v in own if k != REPLAYED_FROM] + [(REPLAYED_FROM, place.encode())]
