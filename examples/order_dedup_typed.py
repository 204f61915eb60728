"""Order dedup with typed records: values decoded by Faust into a ``faust.Record`` (its JSON
codec). Through faust_guarantees a record the model cannot decode goes to the dead-letter
topic with its original bytes; stock Faust's conductor acks it and drops it without a
trace. Run it with ``faust -A examples.order_dedup_typed worker`` (ORDERS_PREFIX names
its topics; records keyed by order id)."""

import os

import faust

import faust_guarantees
from faust_guarantees.processing import Processing, publish

PREFIX = os.environ.get("ORDERS_PREFIX", "orders")
app = faust.App(f"{PREFIX}-typed", broker="kafka://localhost:9092", processing_guarantee="exactly_once")
guarantees = faust_guarantees.install(app)
discipline = Processing(guarantees, dead_letters=app.topic(f"{PREFIX}.dlq"))


class Order(faust.Record, serializer="json"):
    order: str
    amount: int


orders = app.topic(PREFIX, key_type=bytes, key_serializer="raw", value_type=Order)
unique = app.topic(f"{PREFIX}.unique", key_type=bytes, key_serializer="raw", value_type=Order)
seen = app.Table(f"{PREFIX}-typed-seen", key_type=str, value_type=int)  # changelog-backed dedup state


@app.agent(orders)
async def dedup(stream):
    stream = stream.noack()  # acks are the discipline's: after the work, never before
    async for events in discipline.batches(stream):  # an undecodable record never gets here
        async with discipline.processing_batch(stream, events, stage="dedup") as batch:
            sends = []
            for event in events:
                with batch.record(event):
                    order: Order = event.value
                    if order.order not in seen:
                        seen[order.order] = order.amount
                        sends.append((event, await publish(app, unique, key=event.key, value=order.dumps())))
            await batch.acknowledged(sends)
