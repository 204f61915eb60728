"""sink: charge each applied payment in the external database.

    {prefix}.applied (account -> AppliedPayment)  ->  SINK_DB table ``charges``

The source text's last point made runnable: Kafka transactions end at Kafka.
The database write is not part of any Kafka transaction, so under EVERY
guarantee a crash after the write and before the offset commit delivers the
event again, and the charge happens again unless the database refuses it.

- SINK_MODE=naive: a plain insert. A redelivery is a second charge: the lab's
  crash point ``sink.after_effect`` shows duplicates > 0 even under exactly_once.
- SINK_MODE=idempotent: the idempotency key is the event id, guarded by a
  UNIQUE constraint, inserted with ON CONFLICT DO NOTHING: redeliveries,
  crashes and rebalances all end in one charge per event.
- SINK_MODE=transactional: the charge and the record's offset are written in
  one database transaction, and a record at or below the stored offset is
  skipped: offsets stored with the effect, so the Kafka commit no longer
  matters (streams_app/ledger.py).
- PROCESSING_GUARANTEE=at_most_once: the offset is committed BEFORE the charge
  (streams_app/processing.py); a crash in between loses the charge for good
  (crash point ``sink.after_commit``). Shown for completeness, never
  recommended for money.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3

import psycopg
from faust.types import EventT

from streams_app.app import app, settings
from streams_app.exceptions import SinkError
from streams_app.faults import crashpoint
from streams_app.ledger import Ledger
from streams_app.models import AppliedPayment
from streams_app.processing import first_deliveries, processing
from streams_app.topics import applied_payments

log = logging.getLogger(__name__)

ledger = Ledger(settings.sink_db)
IDEMPOTENT = settings.sink_mode == "idempotent"
OFFSETS_IN_DATABASE = settings.sink_mode == "transactional"

#: Errors that mean "the database is not reachable right now": retry, never skip.
TRANSIENT = (sqlite3.OperationalError, psycopg.OperationalError, SinkError)


@app.agent(applied_payments)
async def charge_payments(stream):
    """Perform the external side effect once per delivery (naive) or per event id."""
    stream = stream.noack()  # acked by processing(): after the effect, or before it in at_most_once
    async for event in first_deliveries(stream):
        async with processing(stream, event, stage="sink"):
            await charge(event)
            crashpoint("sink.after_effect")


async def charge(event: EventT) -> bool:
    """Insert the charge, retrying while the database is unavailable.

    An outage must delay the effect, not skip it: the event stays unacked (so
    its offset is not committed) until the database takes the row.
    """
    payment: AppliedPayment = event.value
    fields = dict(event_id=payment.event_id, account=payment.account, amount=payment.amount,
                  currency=payment.currency, created_at=payment.created_at)
    delay = 0.1
    while True:
        try:
            if OFFSETS_IN_DATABASE:
                message = event.message
                return await ledger.charge_at_offset(
                    topic=message.topic, partition=message.partition, offset=message.offset, **fields
                )
            return await ledger.charge(idempotent=IDEMPOTENT, **fields)
        except TRANSIENT as exc:
            log.warning("sink: database unavailable (%s); retrying in %.1f s", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
