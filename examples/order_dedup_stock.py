"""The same order dedup in stock Faust, without the kit: what a Faust user writes today.
For comparison only (tests/integration/test_example_app.py): under exactly_once with
SIGKILLs it loses or repeats orders."""

import os

import faust

# the lab's kill switch only, no fix:
from faust_guarantees.crashpoints import crashpoint

PREFIX = os.environ.get("ORDERS_PREFIX", "orders")
app = faust.App(f"{PREFIX}-dedup", broker="kafka://localhost:9092", processing_guarantee="exactly_once")
# Raw bytes in and out: with value_type=bytes alone Faust decodes values with the app's JSON
# codec, and its conductor drops (acks) a value it cannot decode. Decode in the agent instead.
RAW = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
orders = app.topic(PREFIX, **RAW)
unique = app.topic(f"{PREFIX}.unique", **RAW)
seen = app.Table(f"{PREFIX}-seen", key_type=bytes, value_type=bytes)


@app.agent(orders)
async def dedup(stream):
    async for event in stream.events():
        order_id = event.message.key
        if order_id and order_id not in seen:
            seen[order_id] = b"1"
            await unique.send(key=order_id, value=event.message.value)
            crashpoint("orders.after_forward")  # the lab may SIGKILL here: sent, not committed
