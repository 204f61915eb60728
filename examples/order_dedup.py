"""Order dedup: forward each order id once, through faust_guarantees. Run it with
``faust -A examples.order_dedup worker``; Faust reads BROKER_URL, PROCESSING_GUARANTEE etc.
from the environment, ORDERS_PREFIX names its topics (records keyed by order id)."""

import os

import faust

import faust_guarantees
from faust_guarantees.crashpoints import crashpoint
from faust_guarantees.processing import Processing, RejectedRecord, publish

PREFIX = os.environ.get("ORDERS_PREFIX", "orders")
app = faust.App(f"{PREFIX}-dedup", broker="kafka://localhost:9092", processing_guarantee="exactly_once")
guarantees = faust_guarantees.install(app)  # first: some fixes subclass the tables' classes for this app
discipline = Processing(guarantees, dead_letters=app.topic(f"{PREFIX}.dlq"))
# Raw bytes in and out: with value_type=bytes alone Faust decodes values with the app's JSON
# codec, and its conductor drops (acks) a value it cannot decode. Decode in the agent instead.
RAW = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
orders = app.topic(PREFIX, **RAW)
unique = app.topic(f"{PREFIX}.unique", **RAW)
seen = app.Table(f"{PREFIX}-seen", key_type=bytes, value_type=bytes)  # changelog-backed dedup state


@app.agent(orders)
async def dedup(stream):
    stream = stream.noack()  # acks are the discipline's: after the work, never before
    async for events in discipline.batches(stream):
        async with discipline.processing_batch(stream, events, stage="dedup") as batch:
            sends = []
            for event in events:
                with batch.record(event):
                    order_id = event.message.key
                    if not order_id:
                        raise RejectedRecord("no_key", "an order needs its id as the record key")
                    if order_id not in seen:
                        seen[order_id] = b"1"
                        sends.append((event, await publish(app, unique, key=order_id, value=event.message.value)))
                        crashpoint("orders.after_forward")  # the lab may SIGKILL here: sent, not committed
            await batch.acknowledged(sends)  # an output the broker refused: that record is dead-lettered
