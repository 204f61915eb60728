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
import json
import time

import pytest

from common.readback import read_topic
from infra import postgres
from lab.checker import check
from streams_app.traffic import generate
from tests.fixtures.kafka import wait_for

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("events", [150, 8000], ids=["trickle", "more-than-the-sink-queue-holds"])
def test_other_stages_keep_committing_while_the_sink_database_is_down(pipeline_factory, own_pg_server, own_fresh_db,
                                                                     events):
    """With 8,000 events the sink's stream queue (4,096) fills while the database is down: a
    fetch that brings more ``applied`` records than the queue has room for must not block the
    consumer's delivery of every other topic (head-of-line blocking: one stuck stage would
    stop dedup and apply too)."""
    pipeline, worker, warm = _warmed_up(pipeline_factory, "exactly_once", own_fresh_db, seed=21)
    config = pipeline.config

    postgres.stop(own_pg_server.port)
    down_at = time.monotonic()
    try:
        traffic = generate(events, duplicate_rate=0.2, seed=22, id_prefix=f"{config.run_id}-down")
        pipeline.send(traffic)
        applied: list = []

        def all_applied() -> bool:
            applied[:] = asyncio.run(read_topic(config.bootstrap, config.topic("applied")))
            return len(applied) == len(warm.unique_events) + len(traffic.unique_events)

        wait_for(all_applied, 90, lambda: f"expected {len(traffic.unique_events)} more records committed in "
                 f"applied while the database is down, got {len(applied) - len(warm.unique_events)}")
        assert worker.running, worker.log_tail(40)
        wait_for(lambda: "other stages go on" in worker.log_path.read_text(), 30,
                 "expected the sink to log that it waits for the database")
    finally:
        down_s = time.monotonic() - down_at
        postgres.start(own_pg_server.port)
    pipeline.drain()

    counts = _each_charged_once(config, warm, traffic, exact_output=True)
    assert counts.dead_lettered == 0, "an outage is not the record's fault: nothing dead-lettered"
    assert down_s > 2.0  # longer than one try (agents/sink.py TRY_S): the gate was released


def test_a_worker_restarted_during_the_outage_with_a_backlog_for_the_sink_still_runs_the_other_stages(
        pipeline_factory, own_pg_server, own_fresh_db):
    """The worker is restarted while the database is down and thousands of ``applied`` records
    wait for the sink: its first fetches bring them by the thousand. Faust pauses a partition
    whose stream queue is 80 % full, but a fetch with more records for a full queue than it
    has room for blocks the consumer's delivery of EVERY topic until the sink takes some
    (head-of-line blocking): new payments would not even be deduplicated or applied until
    the database came back."""
    pipeline, worker, warm = _warmed_up(pipeline_factory, "at_least_once", own_fresh_db, seed=31)
    config = pipeline.config

    postgres.stop(own_pg_server.port)
    try:
        backlog = generate(10_000, duplicate_rate=0.0, seed=32, id_prefix=f"{config.run_id}-backlog")
        pipeline.send(backlog)
        missing: set = set()

        def backlog_applied() -> bool:
            missing.clear()
            missing.update(set(backlog.unique_events) - _applied_ids(config))
            return not missing

        wait_for(backlog_applied, 120, lambda: f"expected the backlog applied while the database is down: "
                 f"{len(missing)} of {len(backlog.unique_events)} missing, e.g. {sorted(missing)[:3]}")
        worker.kill()  # uncommitted by the sink: all of it comes again to the restarted worker
        worker.start()
        worker.wait_ready()
        time.sleep(5.0)  # the sink's first fetches: thousands of records of the backlog
        fresh = generate(100, duplicate_rate=0.0, seed=33, id_prefix=f"{config.run_id}-fresh")
        pipeline.send(fresh)
        seen: set = set()

        def fresh_applied() -> bool:
            seen.update(_applied_ids(config) & set(fresh.unique_events))
            return len(seen) == len(fresh.unique_events)

        wait_for(fresh_applied, 60, lambda: f"expected {len(fresh.unique_events)} new payments applied while "
                 f"the database is down, got {len(seen)}")
    finally:
        postgres.start(own_pg_server.port)
    pipeline.drain(timeout=240)
    _each_charged_once(config, warm, backlog, fresh)


def _each_charged_once(config, *sent_traffic, exact_output: bool = False):
    """Every payment of each traffic charged once, none lost; with ``exact_output``, none
    missing or repeated in ``applied`` either (exactly_once). The last traffic's counts."""
    for sent in sent_traffic:
        counts = asyncio.run(check(config, sent))
        assert counts.charged_unique == counts.unique_events == len(sent.unique_events) > 0
        assert counts.duplicate_charges == 0 and counts.lost == 0
        if exact_output:
            assert counts.output_duplicates == 0 and counts.output_missing == 0
    return counts


def _applied_ids(config) -> set[str]:
    """The event ids in ``applied`` (under at_least_once a restart may apply some twice)."""
    return {json.loads(record.value)["event_id"] for record in asyncio.run(read_topic(config.bootstrap,
                                                                                       config.topic("applied")))}


@pytest.mark.parametrize("guarantee", ["exactly_once", "at_least_once"])
def test_sigterm_during_a_sink_outage_stops_the_worker_and_loses_nothing(pipeline_factory, own_pg_server,
                                                                         own_fresh_db, guarantee):
    """The sink holds its records (neither acked nor dead-lettered) while the database is
    down; Faust's stop waited for them without end (still running 90 s after SIGTERM, until
    the database came back). Now the kit releases them, unacked (held-records-released), and
    the stop goes on (bounded-stop limits whatever else is in progress): the restarted worker
    charges them, each once."""
    pipeline, worker, warm = _warmed_up(pipeline_factory, guarantee, own_fresh_db, seed=41)
    config = pipeline.config

    postgres.stop(own_pg_server.port)
    try:
        held = generate(300, duplicate_rate=0.2, seed=42, id_prefix=f"{config.run_id}-held")
        pipeline.send(held)
        wait_for(lambda: "other stages go on" in worker.log_path.read_text(), 60,
                 "expected the sink to wait for the database")
        stopping = time.monotonic()
        worker.stop(timeout=60)  # raises if SIGTERM is ignored for 60 s
        assert time.monotonic() - stopping < 60
        # The held records were released (held-records-released): the stop made its last
        # commit of what was done, without waiting out bounded-stop's timeout.
        assert "held-records-released" in worker.log_path.read_text()
    finally:
        postgres.start(own_pg_server.port)
    worker.start()
    worker.wait_ready()
    pipeline.drain()
    _each_charged_once(config, warm, held, exact_output=guarantee == "exactly_once")


def test_a_rebalance_during_a_sink_outage_does_not_stop_the_other_stages(pipeline_factory, own_pg_server,
                                                                        own_fresh_db):
    """The sink holds its records (neither acked nor dead-lettered) while the database is down.
    At a revocation Faust waits, without a bound, until every delivered record is acked
    (Consumer.wait_empty): a worker joining during the outage left the whole group's
    rebalance waiting for the database (no new payment applied in 90 s, and again at the next
    rebalance). Now the kit releases the records the sink holds, unacked
    (held-records-released): the rebalance goes on, the other stages apply new payments, and
    once the database is back every payment is charged once."""
    pipeline, w1, warm = _warmed_up(pipeline_factory, "exactly_once", own_fresh_db, seed=61)
    config = pipeline.config
    postgres.stop(own_pg_server.port)
    try:
        held = generate(300, seed=62, id_prefix=f"{config.run_id}-held")
        pipeline.send(held)
        wait_for(lambda: "other stages go on" in w1.log_path.read_text(), 60,
                 "expected the sink to wait for the database")
        w2 = pipeline.worker("w2")
        fresh = generate(100, seed=63, id_prefix=f"{config.run_id}-fresh")
        pipeline.send(fresh)
        seen: set[str] = set()

        def fresh_applied() -> bool:
            seen.update(_applied_ids(config) & set(fresh.unique_events))
            return len(seen) == len(fresh.unique_events)

        wait_for(fresh_applied, 90, lambda: f"{len(fresh.unique_events) - len(seen)} of "
                 f"{len(fresh.unique_events)} new payments not applied after a worker joined during the outage")
        assert "held-records-released" in w1.log_path.read_text() + w2.log_path.read_text()
    finally:
        postgres.start(own_pg_server.port)
    pipeline.drain(timeout=240)
    _each_charged_once(config, warm, held, fresh, exact_output=True)


def _warmed_up(pipeline_factory, guarantee: str, sink_db: str, seed: int):
    """A pipeline whose worker has charged 20 payments: the ledger has connected, so an
    outage meets a live pool. Returns (pipeline, its worker, the warm-up traffic)."""
    pipeline = pipeline_factory(guarantee, sink_db=sink_db)
    worker = pipeline.worker()
    warm = generate(20, seed=seed, id_prefix=f"{pipeline.config.run_id}-warm")
    pipeline.send(warm)
    pipeline.drain()
    return pipeline, worker, warm
