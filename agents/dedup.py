"""dedup: forward the first occurrence of each event id, drop and count the rest.

    {prefix}.events (event_id -> Payment)  ->  {prefix}.unique (account -> Payment)
    state: seen-events (event_id -> first seen), changelog {app_id}-seen-events-changelog

The source text's rule "ignore duplicate event ids" made safe under crashes.
Input duplicates (a producer retry, a client re-sending) share an event id
and, keyed by it, a partition: one worker sees every copy.

Order matters under at_least_once: the id is marked seen only AFTER the
forwarded output is acknowledged by the broker (``await`` on the send's
future). Marking first would let a crash between the two lose the event for
good: the local RocksDB row says "seen", the output never arrived, and the
redelivered event is dropped. Forwarding first only risks a duplicate in
``{prefix}.unique`` (crash after the ack, before the commit), which is the
at-least-once contract.

- at_least_once: no event is lost; a crash can forward one id twice.
- exactly_once: forward, seen-row and offset commit in one transaction, so the
  per-event wait for the ack is unnecessary and skipped.

The seen-row expires after DEDUP_HORIZON (tables/seen_events.py).
"""

from __future__ import annotations

import logging

from streams_app.app import app, settings
from streams_app.faults import crashpoint
from streams_app.processing import first_deliveries, processing
from streams_app.topics import payment_events, unique_payments
from tables.counters import count
from tables.seen_events import is_duplicate, mark_seen

log = logging.getLogger(__name__)

#: Under exactly_once the transaction orders everything; elsewhere wait for the ack.
AWAIT_OUTPUT_BEFORE_MARKING = settings.faust_guarantee != "exactly_once"


@app.agent(payment_events)
async def dedup_payments(stream):
    """Drop every event id already forwarded within the horizon."""
    stream = stream.noack()  # acked by processing() once the event is handled
    async for event in first_deliveries(stream):
        async with processing(stream, event, stage="dedup"):
            payment = event.value
            if is_duplicate(payment.event_id):
                count("dedup.duplicates")
                continue
            sent = await unique_payments.send(key=payment.account, value=payment)
            if AWAIT_OUTPUT_BEFORE_MARKING:
                await sent
            crashpoint("dedup.after_forward")
            mark_seen(payment.event_id)
            count("dedup.unique")
