"""ingest: untrusted bytes in, validated events or dead letters out.

    {prefix}.raw (bytes -> bytes)  ->  {prefix}.events (event_id -> Payment)
                                   \->  {prefix}.dlq   (original key and bytes;
                                        headers x-dlq-code, x-dlq-reason, x-dlq-source)

Guarantee: every raw record produces exactly one output, a valid event or a
dead letter, and nothing is dropped silently. Validation never raises out of
the agent: a record Faust cannot process would otherwise be acked in Faust's
``finally`` block and vanish (see ../shared/notes/faust-semantics.md), so even
an unexpected error becomes a dead letter with code ``internal_error``.

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

import logging

from streams_app.app import app, settings
from streams_app.exceptions import InvalidPayment
from streams_app.faults import crashpoint
from streams_app.models import parse_payment
from streams_app.topics import dead_letters, payment_events, place, raw_payments
from tables.counters import count

log = logging.getLogger(__name__)


def dead_letter_headers(code: str, reason: str, message) -> list[tuple[str, bytes]]:
    """Why and where from, as Kafka Connect's DLQ does: the value stays untouched."""
    return [
        ("x-dlq-code", code.encode()),
        ("x-dlq-reason", reason.encode()[:1024]),
        ("x-dlq-source", place(message).encode()),
        ("x-dlq-stage", b"ingest"),
    ]


@app.agent(raw_payments)
async def ingest_payments(stream):
    """Validate each raw record; forward it keyed by event id or dead-letter it."""
    async for event in stream.events():
        message = event.message
        try:
            payment = parse_payment(
                event.value, max_bytes=settings.max_record_bytes, max_amount=settings.max_amount
            )
        except InvalidPayment as exc:
            code, reason = exc.code, exc.reason
        except Exception as exc:  # a bug must not drop the record: dead-letter it
            log.exception("ingest: unexpected error on %s", place(message))
            code, reason = "internal_error", f"{type(exc).__name__}: {exc}"
        else:
            await payment_events.send(key=payment.event_id, value=payment)
            count("ingest.valid")
            crashpoint("ingest.after_forward")
            continue
        log.info("ingest: dead-lettering %s (%s: %s)", place(message), code, reason)
        await dead_letters.send(
            key=event.key, value=event.value,
            headers=dead_letter_headers(code, reason, message),
        )
        count("ingest.dead_lettered")
