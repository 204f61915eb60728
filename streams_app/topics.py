"""The one registry of the pipeline's topics: :func:`declare_topics` declares them on an app.

    {prefix}.raw      key bytes -> value bytes    untrusted input, as producers wrote it
    {prefix}.dlq      original key -> original value, headers saying where from and why
                                                  (faust_guarantees/dead_letters.py)
    {prefix}.events   event_id -> Payment         a valid raw record that was not in its event id's
                                                  partition, moved there (see event_partition)
    {prefix}.unique   account -> Payment          first occurrence of each event id, keyed by account
    {prefix}.applied  account -> AppliedPayment   applied to the balance; what the sink charges

Every topic is declared with raw bytes for keys and values: Faust hands the
agents bytes, and each agent decodes them itself (streams_app/models.py) inside
its ``processing()`` block, so a record that is not what the topic should hold
(a null, another format version, garbage) goes to the DLQ like any other bad
record. Faust's own decoding would drop it: its conductor logs a decode error
and acks the record.

The prefix is ``TOPIC_PREFIX`` (default ``payments``), so tests and lab runs get
their own topics. Every topic has ``TOPIC_PARTITIONS`` partitions: Faust's
assignor keeps equal partition numbers on one worker, which is what lets the
tables of one stage be read by the same worker.

Keys of ``unique`` and ``applied`` are JSON strings (``models.json_key``),
as Faust writes table keys: a key then hashes to the same partition in the
stream and in the table's changelog, which is what table_route uses to find the
worker that owns an account.

All five are declared ``internal=True``: the worker creates any that are
missing, with these partition counts, before it subscribes. Faust creates no
source topic otherwise, and one auto-created by a first send would get the
broker's default partition count and break the co-partitioning.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from common.murmur2 import murmur2

from .admin import partition_count_problems
from .exceptions import SettingsError
from .settings import Settings


def default_partition(key: bytes, partitions: int) -> int:
    """Kafka's default partitioner (murmur2) over ``partitions`` partitions."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


@dataclass(frozen=True)
class Topics:
    """The pipeline's topics as declared on one app (:func:`declare_topics`)."""

    raw: Any
    dead_letters: Any
    events: Any
    unique: Any
    applied: Any
    #: What the dedup stage reads: raw records, and those moved to their id's partition.
    #: Equal partition counts put partition p of both (and of the seen-events table) on
    #: one worker (Faust's assignor co-partitions topics of equal partition counts).
    dedup_sources: Any
    partitions: int
    #: Where Kafka's default partitioner puts a record keyed by ``key`` (an account's JSON
    #: key) in a pipeline topic, as :meth:`event_partition` computes it. aiokafka hashes every
    #: keyed record in pure Python (murmur2: 5 % of a worker's time, py-spy); account keys
    #: repeat, so the stages pass this cached answer as the record's partition.
    key_partition: Callable[[bytes], int] = field(repr=False, compare=False)

    @property
    def all(self) -> tuple[Any, ...]:
        return (self.raw, self.dead_letters, self.events, self.unique, self.applied)

    def event_partition(self, event_id: str) -> int:
        """The partition of ``{prefix}.raw`` and ``{prefix}.events`` where ``event_id`` is
        deduplicated: where Kafka's default partitioner (murmur2, Java's and aiokafka's) puts
        a record keyed by the id's UTF-8 bytes, as `faust produce`, the payment API and the
        lab key raw records. Every copy of an id is deduplicated in this one partition: a
        raw record found anywhere else is moved here through ``{prefix}.events``."""
        return default_partition(event_id.encode(), self.partitions)


def declare_topics(app: Any) -> Topics:
    """Declare the pipeline's topics on ``app`` (bytes keys and values, ``internal=True``),
    and the start check that refuses pipeline topics with other partition counts."""
    settings: Settings = app.settings
    partitions = settings.partitions

    def bytes_topic(*names: str) -> Any:
        return app.topic(
            *(settings.topic(name) for name in names), key_type=bytes, value_type=bytes,
            key_serializer="raw", value_serializer="raw", partitions=partitions, internal=True,
        )

    async def _check_partition_counts() -> None:
        """Start check: refuse to start on pipeline topics with other partition counts."""
        await check_partition_counts(settings)

    app.kafka_checks.append(_check_partition_counts)
    return Topics(
        raw=bytes_topic("raw"), dead_letters=bytes_topic("dlq"), events=bytes_topic("events"),
        unique=bytes_topic("unique"), applied=bytes_topic("applied"),
        dedup_sources=bytes_topic("raw", "events"), partitions=partitions,
        key_partition=functools.lru_cache(maxsize=65_536)(functools.partial(default_partition,
                                                                            partitions=partitions)),
    )


async def check_partition_counts(settings: Settings) -> None:
    """Refuse pipeline topics with other partition counts than ``settings``' (SettingsError)."""
    try:
        problems = await partition_count_problems(settings)
    except Exception as exc:  # Kafka gone again since wait_for_brokers(): checked at the next start
        logging.getLogger(__name__).warning("could not check the topics' partition counts at start: %r", exc)
        return
    if problems:
        raise SettingsError(problems)


def place(message: Any) -> str:
    """A record's place, in the one format every log line uses: ``payments.raw[2]@1045``."""
    return f"{message.topic}[{message.partition}]@{message.offset}"
