r"""dedup: untrusted bytes in; each valid event id forwarded once, everything else dead-lettered.

    {prefix}.raw (bytes -> bytes)  ->  {prefix}.unique (account -> Payment)
    {prefix}.events (moved here)   \->  {prefix}.events (a valid record outside its id's partition)
                                   \->  {prefix}.dlq    (original key, bytes and headers; where
                                         from and why: faust_guarantees/dead_letters.py)
    state: seen-events (event_id -> first seen), changelog {app_id}-seen-events-changelog

Validation and the source text's rule "ignore duplicate event ids" in one hop.
Every copy of an event id must meet in one partition for the id to be dropped
the second time; raw records are keyed by event id (Topics.event_partition), so
copies meet in the raw partition itself. A valid record found in another
partition (another key, no key, another partitioner) is moved to its id's
partition of ``{prefix}.events``, read by this same stage: co-partitioned with
raw, it shares the partition's seen-events state. A record that reuses an event
id with another account or amount meets the first one there and is dropped.

Guarantee: every raw record produces exactly one outcome, forwarded, dropped as
a duplicate, moved, or dead-lettered with the rule it broke (an unexpected error
too: code ``processing_error``); nothing is dropped silently
(agents/processing.py). Records are taken in batches of what is already
fetched (``BATCH_MAX``): one wait for the broker's acks per batch, not per event,
and a batch's outputs and seen-rows go to Kafka as one record batch per partition
(faust_guarantees/batching.py).

Order matters under at_least_once: an id is marked seen only AFTER its output
is acknowledged by the broker. Marking first would let a crash between the two
lose the event for good: the local RocksDB row says "seen", the output never
arrived, and the redelivered event is dropped. Forwarding first only risks a
duplicate in ``{prefix}.unique`` (crash after the ack, before the commit,
crash point ``dedup.after_forward``), which is the at-least-once contract.

Under at_most_once the order is the other way round: the ids are marked seen
BEFORE the outputs are sent. The stage has already committed the batch's
offsets (agents/processing.py), so the records never come again, but a
second copy of an id (another record) does; with the at-least-once order a
crash between an output's ack and its seen-row lets that copy through (the lab
measured 1 to 11 forwarded twice at 1,000 events and 6 kills). Marking first
turns that crash into a lost event, the at-most-once contract. "First" must hold
at the broker: the seen-rows go to the changelog through Faust's producer
buffer, the outputs straight to the producer, so the producer is flushed (the
seen-rows acknowledged by Kafka) before the outputs are sent, once per batch.

- at_least_once: no event is lost; a crash can forward one id twice.
- at_most_once: no id is forwarded twice; a crash can lose an event.
- exactly_once: outputs, seen-rows and offsets in one transaction per source
  partition, and a commit never splits a batch (the commit gate), so the wait
  for the acks is unnecessary and skipped.

The seen-row expires after DEDUP_HORIZON (tables/seen_events.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from faust.types import EventT, Message

from agents.processing import AppProcessing
from streams_app.faults import crashpoint
from streams_app.models import Payment, json_key, parse_payment
from streams_app.topics import Topics
from tables import Tables


@dataclass
class DedupStage:
    agent: Any
    #: at_most_once: mark the ids seen first; a crash then loses an event, never repeats its id.
    mark_before_forwarding: bool
    #: at_least_once: mark them only once the outputs are acknowledged; exactly_once: the
    #: transaction orders everything. Both read per batch.
    await_output_before_marking: bool


def register(app: Any, topics: Topics, tables: Tables, processing: AppProcessing) -> DedupStage:
    """Declare the dedup agent on ``app``."""
    settings = app.settings
    guarantee = settings.processing_guarantee
    stage = DedupStage(agent=None, mark_before_forwarding=guarantee == "at_most_once",
                       await_output_before_marking=guarantee == "at_least_once")
    raw = settings.topic("raw")
    # Bound once here: the agent below uses each per record, as a local of its closure.
    max_bytes, max_amount = settings.max_record_bytes, settings.max_amount
    batches, processing_batch, publish, record_batches = (
        processing.batches, processing.processing_batch, processing.publish, processing.record_batches)
    count, count_each = tables.counters.count, tables.counters.count_each
    is_duplicate, mark_all_seen = tables.seen_events.is_duplicate, tables.seen_events.mark_all_seen
    event_partition, key_partition = topics.event_partition, topics.key_partition
    payment_events, unique_payments = topics.events, topics.unique

    def stage_of(message: Message) -> str:
        """Dead letters and counters say where a record failed: a raw record at ingest
        (validation), a moved one at dedup."""
        return "ingest" if message.topic == raw else "dedup"

    async def dedup_payments(stream: Any) -> None:
        """Validate each raw record and forward the first occurrence of each event id."""
        stream = stream.noack()  # acked by processing_batch() once the batch is handled
        async for batch in batches(stream):
            async with processing_batch(stream, batch, stage=stage_of) as work:
                first: list[tuple[EventT, Payment]] = []
                in_batch: set[str] = set()
                for event in batch:
                    with work.record(event):
                        message = event.message
                        payment = parse_payment(message.value, max_bytes=max_bytes, max_amount=max_amount)
                        if message.topic == raw:
                            count("ingest.valid")
                        home = event_partition(payment.event_id)
                        if home != message.partition:
                            await publish(payment_events, key=payment.event_id.encode(), value=message.value,
                                          partition=home, headers=message.headers)
                            count("ingest.moved")
                            crashpoint("ingest.after_forward")
                            continue
                        if payment.event_id in in_batch or is_duplicate(payment.event_id):
                            count("dedup.duplicates")
                            continue
                        in_batch.add(payment.event_id)
                        first.append((event, payment))
                mark_first = stage.mark_before_forwarding
                if mark_first and first:
                    rows = record_batches()
                    mark_all_seen(rows, [(event, payment.event_id) for event, payment in first])
                    await rows.flush()
                    await app.producer.flush()  # the seen-rows are in Kafka before the outputs leave
                outputs, queued = record_batches(), []
                for event, payment in first:
                    with work.record(event):
                        key = json_key(payment.account)
                        queued.append((event, outputs.publish(unique_payments, key=key, value=payment.to_json(),
                                                              partition=key_partition(key))))
                await outputs.flush()
                sends = [(event, q.future) for event, q in queued]
                if stage.await_output_before_marking:
                    forwarded = await work.acknowledged(sends)
                else:
                    forwarded = [e for e, _ in sends]
                for event in forwarded:
                    crashpoint("dedup.after_forward")
                rows = record_batches()
                if not mark_first:
                    ids = {id(event): payment.event_id for event, payment in first}
                    mark_all_seen(rows, [(event, ids[id(event)]) for event in forwarded])
                count_each("dedup.unique", forwarded)
                await rows.flush()

    stage.agent = app.agent(topics.dedup_sources, name="agents.dedup.dedup_payments")(dedup_payments)
    return stage
