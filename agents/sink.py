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
- PROCESSING_GUARANTEE=at_most_once: the offset is committed BEFORE the charge;
  a crash in between loses the charge for good (crash point
  ``sink.after_commit``). Shown for completeness, never recommended for money.
"""

from __future__ import annotations

import logging

from streams_app.app import app, settings
from streams_app.faults import crashpoint
from streams_app.ledger import Ledger
from streams_app.topics import applied_payments

log = logging.getLogger(__name__)

ledger = Ledger(settings.sink_db)
IDEMPOTENT = settings.sink_mode == "idempotent"
COMMIT_BEFORE_EFFECT = settings.processing_guarantee == "at_most_once"


@app.agent(applied_payments)
async def charge_payments(stream):
    """Perform the external side effect once per delivery (naive) or per event id."""
    if COMMIT_BEFORE_EFFECT:
        stream = stream.noack()
    async for event in stream.events():
        payment = event.value
        if COMMIT_BEFORE_EFFECT:
            await stream.ack(event)
            await app.consumer.commit({event.message.tp})
            crashpoint("sink.after_commit")
        await ledger.charge(
            event_id=payment.event_id, account=payment.account, amount=payment.amount,
            currency=payment.currency, created_at=payment.created_at, idempotent=IDEMPOTENT,
        )
        crashpoint("sink.after_effect")
