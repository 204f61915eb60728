"""The payments pipeline on the real broker, under both guarantees.

Each test is a story: start a worker (the real `faust -A streams_app worker`
command), send traffic with re-sends and malformed records, wait until the
consumer group has committed past every record, then count with an
independent read_committed consumer and SQL on the sink database.
"""

from __future__ import annotations

import asyncio

import pytest

from lab.checker import charges_by_event, check
from streams_app.traffic import generate
from tests.fixtures.kafka import wait_for
from tests.fixtures.pipeline import recovery_start_offsets

pytestmark = pytest.mark.integration

GUARANTEES = ["at_least_once", "exactly_once"]


def traffic_for(pipeline, count=400, seed=11):
    return generate(count, duplicate_rate=0.2, bad_rate=0.05, seed=seed, id_prefix=pipeline.config.run_id)


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_every_unique_event_is_charged_once_and_every_bad_record_dead_lettered(pipeline_factory, guarantee):
    """N events with re-sends and malformed records: every unique valid event is
    charged exactly once (idempotent sink), every bad record is in the DLQ with a
    reason, and every balance equals the sum recomputed from the input."""
    pipeline = pipeline_factory(guarantee)
    worker = pipeline.worker()
    traffic = traffic_for(pipeline)
    pipeline.send(traffic)
    pipeline.drain()

    counts = asyncio.run(check(pipeline.config, traffic))
    assert counts.unique_events == len(traffic.unique_events) > 0
    assert counts.charged_unique == counts.unique_events, "expected every unique event charged"
    assert counts.duplicate_charges == 0
    assert counts.lost == 0
    assert counts.output_duplicates == 0 and counts.output_missing == 0
    assert counts.balance_mismatches == 0, counts.mismatch_examples
    assert counts.dead_lettered == counts.expected_dead_letters == sum(traffic.bad.values()) > 0
    assert counts.dead_letters_without_reason == 0
    assert counts.open_transactions == 0

    stats = worker.stats()
    assert stats["processing_guarantee"] == guarantee
    assert stats["consumed"] == len(traffic.records)
    assert stats["dead_lettered"] == sum(traffic.bad.values())
    assert stats["duplicates_dropped"] == traffic.duplicates
    assert stats["charges"] == stats["charged_events"] == len(traffic.unique_events)
    assert stats["duplicate_charges"] == 0


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_graceful_restart_restores_tables_without_new_charges(pipeline_factory, guarantee):
    """A SIGTERM'd worker restarts: balances come back from the changelog (read
    through the web view), the changelog is not replayed from the start (the
    RocksDB persisted offsets were written), and no event is charged again."""
    pipeline = pipeline_factory(guarantee)
    worker = pipeline.worker()
    traffic = traffic_for(pipeline, seed=12)
    pipeline.send(traffic)
    pipeline.drain()
    charges_before = charges_by_event(pipeline.config.sink_db)

    assert worker.stop() == 0
    worker.start()
    worker.wait_ready()
    pipeline.drain()

    for account, expected in list(traffic.expected_balances.items())[:10]:
        status, body = worker.get_json(f"/api/accounts/{account}")
        assert status == 200 and body["balances"] == expected, (account, body)
    assert charges_by_event(pipeline.config.sink_db) == charges_before
    restart_log = worker.log_path.read_text().rsplit("==== start", 1)[1]
    assert "balances-changelog" in restart_log and "Highwater - Active" in restart_log
    starts = recovery_start_offsets(restart_log, "balances-changelog")
    # Faust logs where it starts reading each changelog partition, or nothing when
    # the persisted offsets are already at the end; -1 would mean "from the start".
    assert all(offset >= 0 for offset in starts), (
        f"expected the restart to read the changelog from the persisted offsets, not from the start: {starts}"
    )
    seen_starts = recovery_start_offsets(restart_log, "seen-events-changelog")
    assert all(offset >= 0 for offset in seen_starts), seen_starts
    # The seen ids came back too (their changelog records go straight to the producer:
    # faust_guarantees.processing.set_row): the same records again are all dropped.
    dropped = worker.stats()["duplicates_dropped"]
    pipeline.send(traffic)
    pipeline.drain()
    assert worker.stats()["duplicates_dropped"] == dropped + len(traffic.records) - sum(traffic.bad.values())
    assert charges_by_event(pipeline.config.sink_db) == charges_before


def test_naive_sink_without_faults_charges_each_event_once(pipeline_factory):
    """Without a fault the naive sink is also exact: keys matter only on redelivery."""
    pipeline = pipeline_factory("at_least_once", sink="naive")
    pipeline.worker()
    traffic = traffic_for(pipeline, count=200, seed=13)
    pipeline.send(traffic)
    pipeline.drain()
    counts = asyncio.run(check(pipeline.config, traffic))
    assert counts.charged_unique == len(traffic.unique_events)
    assert counts.duplicate_charges == 0


def test_balance_view_is_served_by_the_worker_that_owns_the_account(pipeline_factory):
    """Two workers share the partitions; asking either one for an account's
    balance gives the same answer, served by the owner through table_route.
    (exactly_once, so the balances are exact even if the second worker's
    rebalance overlaps the traffic.)"""
    pipeline = pipeline_factory("exactly_once")
    w1 = pipeline.worker("w1")
    w2 = pipeline.worker("w2")
    traffic = traffic_for(pipeline, count=300, seed=14)
    pipeline.send(traffic)
    pipeline.drain()

    owners = set()
    for account, expected in list(traffic.expected_balances.items())[:12]:
        answers = [w.get_json(f"/api/accounts/{account}") for w in (w1, w2)]
        assert [status for status, _ in answers] == [200, 200], answers
        assert answers[0][1]["balances"] == answers[1][1]["balances"] == expected
        assert answers[0][1]["served_by"] == answers[1][1]["served_by"]
        owners.add(answers[0][1]["served_by"].rstrip("/"))
    assert owners == {w1.url, w2.url}, f"expected both workers to own some accounts, got {owners}"


def test_unknown_account_is_a_404_with_a_reason(pipeline_factory):
    """404 names the account. (Right after start-up Faust answers 503 until its
    router knows which worker owns each partition; that is waited out.)"""
    pipeline = pipeline_factory("at_least_once")
    worker = pipeline.worker()
    answers = []

    def answered() -> bool:
        answers.append(worker.get_json("/api/accounts/nobody-here"))
        return answers[-1][0] != 503

    wait_for(answered, 20, lambda: f"expected an answer other than 503, got {answers[-1]}")
    status, body = answers[-1]
    assert status == 404
    assert "nobody-here" in str(body)
    # Faust's raw table dumps stay off unless WEB_TABLES_ENABLED=true.
    assert worker.get_json("/table/balances/")[0] == 404
