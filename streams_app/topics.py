"""The one registry of the pipeline's topics; agents, commands and tests import it.

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
from typing import Any

from common.murmur2 import murmur2

from streams_app.application import current_app


app = current_app()
settings = app.settings

PARTITIONS = settings.partitions


def _bytes_topic(name: str) -> Any:
    return app.topic(
        settings.topic(name), key_type=bytes, value_type=bytes,
        key_serializer="raw", value_serializer="raw", partitions=PARTITIONS, internal=True,
    )


def event_partition(event_id: str) -> int:
    """The partition of ``{prefix}.raw`` and ``{prefix}.events`` where ``event_id`` is
    deduplicated: where Kafka's default partitioner (murmur2, Java's and aiokafka's) puts
    a record keyed by the id's UTF-8 bytes, as `faust produce`, the payment API and the
    lab key raw records. Every copy of an id is deduplicated in this one partition: a
    raw record found anywhere else is moved here through ``{prefix}.events``."""
    return _default_partition(event_id.encode())


def _default_partition(key: bytes) -> int:
    """Kafka's default partitioner (murmur2) over this pipeline's partitions."""
    return (murmur2(key) & 0x7FFFFFFF) % PARTITIONS


@functools.lru_cache(maxsize=65_536)
def key_partition(key: bytes) -> int:
    """Where Kafka's default partitioner puts a record keyed by ``key`` (an account's JSON
    key) in a pipeline topic, as :func:`event_partition` computes it. aiokafka hashes every
    keyed record in pure Python (murmur2: 5 % of a worker's time, py-spy); account keys
    repeat, so the stages pass this cached answer as the record's partition."""
    return _default_partition(key)


raw_payments = _bytes_topic("raw")
dead_letters = _bytes_topic("dlq")
payment_events = _bytes_topic("events")
unique_payments = _bytes_topic("unique")
applied_payments = _bytes_topic("applied")

#: What the dedup stage reads: raw records, and those moved to their id's partition.
#: Equal partition counts put partition p of both (and of the seen-events table) on
#: one worker (Faust's assignor co-partitions topics of equal partition counts).
dedup_sources = app.topic(
    settings.topic("raw"), settings.topic("events"), key_type=bytes, value_type=bytes,
    key_serializer="raw", value_serializer="raw", partitions=PARTITIONS, internal=True,
)

ALL_TOPICS = (raw_payments, dead_letters, payment_events, unique_payments, applied_payments)


async def _check_partition_counts() -> None:
    """Start check: refuse to start on pipeline topics with other partition counts."""
    from .admin import partition_count_problems
    from .exceptions import SettingsError

    try:
        problems = await partition_count_problems(settings)
    except Exception as exc:  # the broker not answering yet: Faust waits for it itself
        logging.getLogger(__name__).warning("could not check the topics' partition counts at start: %r", exc)
        return
    if problems:
        raise SettingsError(problems)


app.start_checks.append(_check_partition_counts)


def place(message) -> str:
    """A record's place, in the one format every log line uses: ``payments.raw[2]@1045``."""
    return f"{message.topic}[{message.partition}]@{message.offset}"
