"""The consuming side: each outbox event's effect applied once, whatever Kafka delivers.

Kafka gives this consumer every outbox event at least once, and sometimes
twice: the relay republishes a batch after a crash between its acks and
marking the rows sent, and the consumer itself re-reads records after a crash
between its database commit and its offset commit, or after a rebalance. The
outbox id in the ``x-outbox-id`` header names the event across all of those
copies, so the consumer keeps the ids it has applied IN THE SAME DATABASE
TRANSACTION AS THE EFFECT. Per fetched batch::

    BEGIN
      for each record: INSERT its id INTO processed_outbox_ids (primary key) ON CONFLICT DO NOTHING
                       only if a row was inserted: apply the effect
    COMMIT
    commit the Kafka offsets

What a crash does at each point:

* before the database commit: neither the effects nor the ids exist; the
  records are fetched again and applied then. Nothing lost.
* after the database commit, before the offset commit: the records are fetched
  again; every id is already stored, so each is a no-op. Nothing doubled.
* after the offset commit: nothing is fetched again.

Hence 0 duplicate effects whatever Kafka delivers: the Kafka offset only
decides how much is read again, never what is applied. The effect itself is
deliberately not idempotent (an ``order_effects`` row and a running total in
``customer_totals``), so only the id table stands between a duplicate record
and a duplicate effect. ``deduplicate=False`` removes it: the naive consumer,
which the tests run to show the duplicates the table absorbs.

Limits: an outbox id is unique within ONE outbox database, so a topic must be
fed by one outbox (two sources sharing a topic would need the source in the
key of ``processed_outbox_ids``), and that database must never hand out an id
again (no reset behind the consumer's back). Ids are kept forever here;
pruning them is only safe for ids older than anything that can still be
republished or re-read. An event type other than ``OrderPlaced`` stops the
consumer (the batch is rolled back, nothing is committed) rather than being
skipped unseen.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord

from outbox import EVENT_TYPE_HEADER, ORDER_PLACED, OUTBOX_ID_HEADER
from outbox.schema import Connection, connect, create_consumer_schema, iso_utc

FETCH_TIMEOUT_MS = 500


@dataclass(frozen=True)
class OutboxEvent:
    outbox_id: int
    aggregate_id: str
    type: str
    payload: dict[str, Any]


@dataclass
class ConsumerStats:
    records: int = 0
    applied: int = 0
    duplicates: int = 0

    def add(self, other: ConsumerStats) -> None:
        self.records += other.records
        self.applied += other.applied
        self.duplicates += other.duplicates


class MalformedEvent(ValueError):
    """A record this consumer cannot apply: no outbox id, or an unknown event type."""


def event_from_record(record: ConsumerRecord[bytes, bytes]) -> OutboxEvent:
    """Read an outbox event from a record written by :mod:`outbox.relay`."""
    headers = dict(record.headers)
    place = f"{record.topic}[{record.partition}]@{record.offset}"
    if OUTBOX_ID_HEADER not in headers or EVENT_TYPE_HEADER not in headers or record.key is None:
        raise MalformedEvent(f"{place}: not an outbox record (key, {OUTBOX_ID_HEADER}, {EVENT_TYPE_HEADER})")
    return OutboxEvent(
        outbox_id=int(headers[OUTBOX_ID_HEADER]),
        aggregate_id=record.key.decode(),
        type=headers[EVENT_TYPE_HEADER].decode(),
        payload=json.loads(record.value or b"null"),
    )


async def apply_events(conn: Connection, events: Sequence[OutboxEvent], *, deduplicate: bool = True) -> ConsumerStats:
    """Apply the events not applied before, and record their ids, in one transaction."""
    stats = ConsumerStats(records=len(events))
    processed_at = iso_utc()
    async with conn.transaction():
        for event in events:
            if deduplicate and not await _first_time(conn, event.outbox_id, processed_at):
                stats.duplicates += 1
                continue
            await apply_effect(conn, event)
            stats.applied += 1
    return stats


async def apply_effect(conn: Connection, event: OutboxEvent) -> None:
    """The business effect of one event: log it and add it to the customer's running total."""
    if event.type != ORDER_PLACED:
        raise MalformedEvent(f"outbox id {event.outbox_id}: unknown event type {event.type!r}")
    order = event.payload
    await conn.execute(
        "INSERT INTO order_effects (outbox_id, customer_id, order_id, amount) VALUES (%s, %s, %s, %s)",
        (event.outbox_id, event.aggregate_id, order["id"], order["amount"]),
    )
    await conn.execute(
        "INSERT INTO customer_totals (customer_id, orders, amount) VALUES (%s, 1, %s)"
        " ON CONFLICT (customer_id) DO UPDATE"
        " SET orders = customer_totals.orders + 1, amount = customer_totals.amount + excluded.amount",
        (event.aggregate_id, order["amount"]),
    )


async def consume(
    conn: Connection,
    consumer: AIOKafkaConsumer,
    *,
    deduplicate: bool = True,
    until_caught_up: bool = False,
    stop: asyncio.Event | None = None,
) -> ConsumerStats:
    """Fetch, apply, commit offsets; until ``stop`` is set or, with ``until_caught_up``, the end is reached."""
    total = ConsumerStats()
    while stop is None or not stop.is_set():
        batches = await consumer.getmany(timeout_ms=FETCH_TIMEOUT_MS)
        events = [event_from_record(record) for records in batches.values() for record in records]
        if events:
            total.add(await apply_events(conn, events, deduplicate=deduplicate))
            await consumer.commit()  # the positions after the records just applied
        if until_caught_up and await _caught_up(consumer):
            break
    return total


async def run_consumer(
    db_url: str,
    bootstrap: str,
    topic: str,
    group_id: str,
    *,
    deduplicate: bool = True,
    until_caught_up: bool = False,
    stop: asyncio.Event | None = None,
) -> ConsumerStats:
    """Consume ``topic`` in group ``group_id`` into the database at ``db_url``."""
    conn = await connect(db_url)
    try:
        await create_consumer_schema(conn)
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            return await consume(conn, consumer, deduplicate=deduplicate, until_caught_up=until_caught_up, stop=stop)
        finally:
            await consumer.stop()
    finally:
        await conn.close()


async def _first_time(conn: Connection, outbox_id: int, processed_at: str) -> bool:
    """Record ``outbox_id`` as processed; false if it already was (this event is a duplicate)."""
    inserted = await conn.execute(
        "INSERT INTO processed_outbox_ids (outbox_id, processed_at) VALUES (%s, %s) ON CONFLICT (outbox_id) DO NOTHING",
        (outbox_id, processed_at),
    )
    return inserted == 1


async def _caught_up(consumer: AIOKafkaConsumer) -> bool:
    """Whether every assigned partition has been read up to its current end."""
    assigned = list(consumer.assignment())
    if not assigned:
        return False
    ends = await consumer.end_offsets(assigned)
    return all([await consumer.position(tp) >= end for tp, end in ends.items()])
