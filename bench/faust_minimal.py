"""The raw loop's work as one stock Faust agent: what Faust itself costs, without our pipeline.

The project's pipeline is three agents (dedup, apply, sink) taking records in batches,
with dashboard counters and the delivery fixes of faust_guarantees.
This app is the least Faust can do for the same function, record for record
(:mod:`bench.payload`): one agent, one changelogged table, no fixes:

    input (event id -> bytes) -> parse -> drop seen ids (table ``seen``) -> output (account -> JSON)

Its figures split the gap between the Faust pipeline and the raw loop into
"Faust" (this app vs the raw loop) and "the pipeline's design" (the pipeline vs
this app). Under exactly_once it runs stock Faust, whose transactions do not
cover a topic the app does not consume (faust-streaming#177): it is a speed
reference, not a correct exactly-once pipeline.

Run: ``faust -A bench.faust_minimal worker`` with BENCH_BOOTSTRAP, BENCH_INPUT,
BENCH_OUTPUT, BENCH_GROUP, BENCH_STATE_DIR, BENCH_PARTITIONS, BENCH_GUARANTEE
(and optionally BENCH_HORIZON) in the environment.
"""

from __future__ import annotations

import os
import time

import faust

from .payload import DEFAULT_HORIZON_S, encode, parse, seen_within

HORIZON_S = float(os.environ.get("BENCH_HORIZON", DEFAULT_HORIZON_S))
PARTITIONS = int(os.environ["BENCH_PARTITIONS"])

app = faust.App(
    os.environ["BENCH_GROUP"],
    broker=f"kafka://{os.environ['BENCH_BOOTSTRAP']}",
    processing_guarantee=os.environ["BENCH_GUARANTEE"],
    store="rocksdb://",
    datadir=os.environ["BENCH_STATE_DIR"],
    topic_partitions=PARTITIONS,
    topic_replication_factor=1,
    producer_acks=-1,
    web_enabled=False,
    autodiscover=False,
)
source = app.topic(os.environ["BENCH_INPUT"], key_type=bytes, value_type=bytes,
                   key_serializer="raw", value_serializer="raw")
sink = app.topic(os.environ["BENCH_OUTPUT"], key_type=bytes, value_type=bytes,
                 key_serializer="raw", value_serializer="raw")
seen = app.Table("seen", key_type=str, value_type=float, partitions=PARTITIONS)


#: As agents/dedup.py: mark an id seen only once its output is acknowledged, except
#: under exactly_once, where the transaction orders both.
AWAIT_OUTPUT = os.environ["BENCH_GUARANTEE"] != "exactly_once"


@app.agent(source)
async def dedup(stream: faust.StreamT) -> None:
    """Forward the first occurrence of each event id within the horizon."""
    async for value in stream:
        payment = parse(value)
        if payment is None:
            continue
        now = time.time()
        if seen_within(seen.get(payment["event_id"]), now, HORIZON_S):
            continue
        sent = await sink.send(key=payment["account"].encode(), value=encode(payment))
        if AWAIT_OUTPUT:
            await sent
        seen[payment["event_id"]] = now
