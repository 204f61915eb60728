"""A database outage on the real broker: the sink waits, the rest of the pipeline does not.

Exactly_once holds a commit gate while an event is in progress (a commit never
splits an event). Before, the sink retried a database outage INSIDE that gate,
so one outage froze every stage's commits: nothing new reached a read_committed
reader of ``applied`` until the database came back. Now a try gives up after a
bounded wait, leaves the gate, and the sink waits outside it: ingest, dedup and
apply keep committing, and once PostgreSQL is back every event is charged once.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from infra import postgres
from lab.checker import check
from common.readback import read_topic
from streams_app.traffic import generate
from tests.fixtures.kafka import wait_for

pytestmark = pytest.mark.integration


def test_other_stages_keep_committing_while_the_sink_database_is_down(pipeline_factory, own_pg_server, own_fresh_db):
    pipeline = pipeline_factory("exactly_once", sink_db=own_fresh_db)
    worker = pipeline.worker()
    config = pipeline.config
    warm = generate(20, seed=21, id_prefix=f"{config.run_id}-warm")
    pipeline.send(warm)
    pipeline.drain()  # the ledger has connected and charged: the outage meets a live pool

    postgres.stop(own_pg_server.port)
    down_at = time.monotonic()
    try:
        traffic = generate(150, duplicate_rate=0.2, seed=22, id_prefix=f"{config.run_id}-down")
        pipeline.send(traffic)
        applied: list = []

        def all_applied() -> bool:
            applied[:] = asyncio.run(read_topic(config.bootstrap, config.topic("applied")))
            return len(applied) == len(warm.unique_events) + len(traffic.unique_events)

        wait_for(all_applied, 60, lambda: f"expected {len(traffic.unique_events)} more records committed in "
                 f"applied while the database is down, got {len(applied) - len(warm.unique_events)}")
        assert worker.running, worker.log_tail(40)
        wait_for(lambda: "other stages go on" in worker.log_path.read_text(), 30,
                 "expected the sink to log that it waits for the database")
    finally:
        down_s = time.monotonic() - down_at
        postgres.start(own_pg_server.port)
    pipeline.drain()

    for sent in (warm, traffic):
        counts = asyncio.run(check(config, sent))
        assert counts.charged_unique == counts.unique_events == len(sent.unique_events) > 0
        assert counts.duplicate_charges == 0 and counts.lost == 0
        assert counts.output_duplicates == 0 and counts.output_missing == 0
    assert counts.dead_lettered == 0, "an outage is not the record's fault: nothing dead-lettered"
    assert down_s > 2.0  # longer than one try (agents/sink.py TRY_S): the gate was released
