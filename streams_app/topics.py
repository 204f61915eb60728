"""The one registry of the pipeline's topics; agents, commands and tests import it.

    {prefix}.raw      bytes -> bytes          untrusted input, as producers wrote it
    {prefix}.dlq      bytes -> bytes          raw records that failed validation;
                                              headers x-dlq-code / x-dlq-reason / x-dlq-source
    {prefix}.events   event_id -> Payment     validated, keyed by event id (dedup co-partitioning)
    {prefix}.unique   account -> Payment      first occurrence of each event id, keyed by account
    {prefix}.applied  account -> AppliedPayment   applied to the balance; what the sink charges

The prefix is ``TOPIC_PREFIX`` (default ``payments``), so tests and lab runs get
their own topics. Every topic has ``TOPIC_PARTITIONS`` partitions: Faust's
assignor keeps equal partition numbers on one worker, which is what lets the
tables of one stage be read by the same worker.

Keys of the three internal keyed topics are JSON strings, as Faust writes
table keys: a key then hashes to the same partition in the stream and in the
table's changelog, which is what table_route uses to find the worker that
owns an account.

All five are declared ``internal=True``: the worker creates any that are
missing, with these partition counts, before it subscribes. Faust creates no
source topic otherwise, and one auto-created by a first send would get the
broker's default partition count and break the co-partitioning.
"""

from __future__ import annotations

from .app import app, settings
from .models import AppliedPayment, Payment

PARTITIONS = settings.partitions

raw_payments = app.topic(
    settings.topic("raw"), key_type=bytes, value_type=bytes,
    key_serializer="raw", value_serializer="raw", partitions=PARTITIONS, internal=True,
)
dead_letters = app.topic(
    settings.topic("dlq"), key_type=bytes, value_type=bytes,
    key_serializer="raw", value_serializer="raw", partitions=PARTITIONS, internal=True,
)
payment_events = app.topic(
    settings.topic("events"), key_type=str, value_type=Payment,
    key_serializer="json", partitions=PARTITIONS, internal=True,
)
unique_payments = app.topic(
    settings.topic("unique"), key_type=str, value_type=Payment,
    key_serializer="json", partitions=PARTITIONS, internal=True,
)
applied_payments = app.topic(
    settings.topic("applied"), key_type=str, value_type=AppliedPayment,
    key_serializer="json", partitions=PARTITIONS, internal=True,
)

ALL_TOPICS = (raw_payments, dead_letters, payment_events, unique_payments, applied_payments)


def place(message) -> str:
    """A record's place, in the one format every log line uses: ``payments.raw[2]@1045``."""
    return f"{message.topic}[{message.partition}]@{message.offset}"
