"""apply: add each unique payment to its account's balance and emit the result.

    {prefix}.unique (account -> Payment)  ->  {prefix}.applied (account -> AppliedPayment)
    state: balances (account -> {currency: minor units}), changelog {app_id}-balances-changelog

This is the Kafka-to-Kafka path that Kafka transactions can make exact.
Records are taken in batches of what is already fetched (``BATCH_MAX``); an
account's balance is written once per batch (one changelog record), after the
batch's outputs were sent, and each output carries the balance after its own
payment.

A payment is applied only in its account's partition (where dedup sends it, keyed
by account): the balances table is read and written in the partition of the
record, so one written to another partition by anything else would start a
second balance of the account; it is dead-lettered (code ``wrong_partition``).

- exactly_once: the balance change, the applied record and the source offset
  commit together or not at all; after any crash every balance equals the sum
  of the unique input (the lab checks it with a read_committed consumer).
- at_least_once: a crash after the update and before the offset commit
  re-applies the event on restart: the balance counts it twice and
  ``{prefix}.applied`` holds a copy. Nothing is lost. The copy carries the same
  event id, so the sink can still charge once (idempotent mode).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from faust.types import EventT

from agents.processing import AppProcessing
from faust_guarantees.processing import as_current
from streams_app.exceptions import InvalidPayment
from streams_app.faults import crashpoint
from streams_app.models import AppliedPayment, json_key, parse_payment
from streams_app.topics import Topics
from tables import Tables


@dataclass
class ApplyStage:
    agent: Any
    #: at_least_once: a batch's outputs are acknowledged before its records are acked, so an
    #: output that failed (after the producer's own retries) is dead-lettered, not lost when
    #: the offset commits. exactly_once: the transaction covers them; at_most_once: the
    #: offsets are committed first anyway. Read per batch.
    await_outputs: bool


def register(app: Any, topics: Topics, tables: Tables, processing: AppProcessing) -> ApplyStage:
    """Declare the apply agent on ``app``."""
    settings = app.settings
    # Bound once here: the agent below uses each per record, as a local of its closure.
    max_bytes, max_amount = settings.max_record_bytes, settings.max_amount
    batches, processing_batch, record_batches = (
        processing.batches, processing.processing_batch, processing.record_batches)
    balance_of, set_balance = tables.balances.balance_of, tables.balances.set_balance
    count = tables.counters.count
    applied_payments, key_partition = topics.applied, topics.key_partition
    stage = ApplyStage(agent=None, await_outputs=settings.processing_guarantee == "at_least_once")
    unique_topic = settings.topic("unique")

    def misrouted(payment: Any, owner: int, partition: int) -> InvalidPayment:
        return InvalidPayment(
            "wrong_partition",
            f"account {payment.account!r} belongs to partition {owner} of {unique_topic}, not {partition}: "
            "applied here it would start a second balance of the account (a replay sends it by its key)")

    async def apply_payments(stream: Any) -> None:
        """Apply each payment to its account and publish the new balance."""
        stream = stream.noack()  # acked by processing_batch() once the batch is handled
        async for batch in batches(stream):
            async with processing_batch(stream, batch, stage="apply") as work:
                # account -> (its balance after the batch so far, an event of its partition)
                changed: dict[str, tuple[dict[str, int], EventT]] = {}
                outputs, queued = record_batches(), []
                applied_ok: dict[int, Any] = {}
                for event in batch:
                    with work.record(event):
                        message = event.message
                        payment = parse_payment(message.value, max_bytes=max_bytes, max_amount=max_amount)
                        key = json_key(payment.account)
                        owner = key_partition(key)
                        if owner != message.partition:
                            raise misrouted(payment, owner, message.partition)
                        before = (changed[payment.account][0] if payment.account in changed
                                  else balance_of(payment.account))
                        after = dict(before)
                        after[payment.currency] = after.get(payment.currency, 0) + payment.amount
                        applied = AppliedPayment(
                            event_id=payment.event_id, account=payment.account, amount=payment.amount,
                            currency=payment.currency, created_at=payment.created_at,
                            balance_after=after[payment.currency],
                        )
                        queued.append((event, outputs.publish(applied_payments, key=key, value=applied.to_json(),
                                                              partition=owner)))
                        changed[payment.account] = (after, event)
                        applied_ok[id(event)] = payment
                await outputs.flush()  # a failure here fails the batch: no balance is written
                sends = [(event, q.future) for event, q in queued]
                if stage.await_outputs and sends:
                    delivered = {id(e) for e in await work.acknowledged(sends)}
                    for event, _ in sends:
                        if id(event) not in delivered:  # dead-lettered: its amount is not applied
                            lost = applied_ok.pop(id(event))
                            balance = dict(changed[lost.account][0])
                            balance[lost.currency] -= lost.amount
                            changed[lost.account] = (balance, changed[lost.account][1])
                rows = record_batches()
                for account, (balance, event) in changed.items():
                    as_current(event)
                    set_balance(rows, account, balance)
                await rows.flush()
                for event in batch:
                    if id(event) in applied_ok:
                        as_current(event)
                        count("apply.applied")
                        crashpoint("apply.after_update")

    stage.agent = app.agent(topics.unique, name="agents.apply.apply_payments")(apply_payments)
    return stage
