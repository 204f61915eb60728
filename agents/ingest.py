r"""ingest: untrusted bytes in, validated events or dead letters out.

    {prefix}.raw (bytes -> bytes)  ->  {prefix}.events (event_id -> Payment)
                                   \->  {prefix}.dlq   (original key, bytes and headers; where
                                        from and why: streams_app/dead_letters.py)

Guarantee: every raw record produces exactly one output, a valid event or a
dead letter, and nothing is dropped silently. An invalid record (anything from
a null to a record too large to copy, which is dead-lettered as a reference) is
a dead letter with the rule it broke; even an unexpected error in this code
becomes a dead letter (code ``processing_error``) instead of the silent ack
stock Faust gives an event whose processing raised (streams_app/processing.py).

- at_least_once: a crash after the send and before the offset commit re-reads
  the record and sends it again: ``{prefix}.events`` may hold a copy, which the
  dedup stage drops. Outputs are not awaited one by one: Faust flushes the
  producer before it commits offsets, so no offset is committed ahead of its
  output.
- exactly_once: output, counters and offset commit in one transaction.

Run: ``faust -A streams_app worker -l info``, then
``faust -A streams_app produce --count 1000 --bad-rate 0.05``; the dashboard's
"dead-lettered" count equals the bad records the producer reports.
"""

from __future__ import annotations

from streams_app.app import app, settings
from streams_app.faults import crashpoint
from streams_app.models import json_key, parse_payment
from streams_app.processing import first_deliveries, processing
from streams_app.topics import payment_events, raw_payments
from tables.counters import count


@app.agent(raw_payments)
async def ingest_payments(stream):
    """Validate each raw record; forward it keyed by event id (a bad one is dead-lettered)."""
    stream = stream.noack()  # acked by processing() once the record is handled
    async for event in first_deliveries(stream):
        async with processing(stream, event, stage="ingest"):
            payment = parse_payment(event.value, max_bytes=settings.max_record_bytes,
                                    max_amount=settings.max_amount)
            await payment_events.send(key=json_key(payment.event_id), value=payment.to_json())
            count("ingest.valid")
            crashpoint("ingest.after_forward")
