"""apply: add each unique payment to its account's balance and emit the result.

    {prefix}.unique (account -> Payment)  ->  {prefix}.applied (account -> AppliedPayment)
    state: balances (account -> {currency: minor units}), changelog {app_id}-balances-changelog

This is the Kafka-to-Kafka path that Kafka transactions can make exact.

- exactly_once: the balance change, the applied record and the source offset
  commit together or not at all; after any crash every balance equals the sum
  of the unique input (the lab checks it with a read_committed consumer).
- at_least_once: a crash after the update and before the offset commit
  re-applies the event on restart: the balance counts it twice and
  ``{prefix}.applied`` holds a copy. Nothing is lost. The copy carries the same
  event id, so the sink can still charge once (idempotent mode).
"""

from __future__ import annotations

from streams_app.app import app, settings
from streams_app.faults import crashpoint
from streams_app.models import AppliedPayment, json_key, parse_payment
from streams_app.processing import first_deliveries, processing
from streams_app.topics import applied_payments, unique_payments
from tables.balances import add_to_balance
from tables.counters import count


@app.agent(unique_payments)
async def apply_payments(stream):
    """Apply each payment to its account and publish the new balance."""
    stream = stream.noack()  # acked by processing() once the event is handled
    async for event in first_deliveries(stream):
        async with processing(stream, event, stage="apply"):
            payment = parse_payment(event.value, max_bytes=settings.max_record_bytes,
                                    max_amount=settings.max_amount)
            balance = add_to_balance(payment.account, payment.currency, payment.amount)
            applied = AppliedPayment(
                event_id=payment.event_id, account=payment.account, amount=payment.amount,
                currency=payment.currency, created_at=payment.created_at, balance_after=balance,
            )
            await applied_payments.send(key=json_key(payment.account), value=applied.to_json())
            count("apply.applied")
            crashpoint("apply.after_update")
