"""A dependency failing in the middle of a batch, on the real broker: the disk under the dedup
state fills up (the lab's FAULT_STORE_ERROR_AT makes a write of seen ids raise what rocksdict
raises then), after the batch's outputs were sent.

Before: every record of the batch was dead-lettered (processing_error) though valid, and
under exactly_once the outputs sent before the failure committed with the dead letters.
Now the worker stops without committing and starts again after a wait
(faust_guarantees/dependencies.py, fencing.stop_for_dependency): nothing dead-lettered,
nothing lost, and under exactly_once nothing repeated.
"""

from __future__ import annotations

import asyncio

import pytest

from common.readback import read_topic
from lab.checker import check
from streams_app.traffic import generate

pytestmark = pytest.mark.integration


#: exactly_once: the 2nd write fails in the first 2 lifetimes (the second restart waits
#: longer); at_least_once, whose stop waits for the unacked batch: in the first only.
@pytest.mark.parametrize(("guarantee", "lifetimes"), [("exactly_once", 2), ("at_least_once", 1)])
def test_a_full_disk_in_the_middle_of_a_batch_dead_letters_nothing_and_repeats_nothing(pipeline_factory, guarantee,
                                                                                      lifetimes):
    pipeline = pipeline_factory(guarantee, FAULT_STORE_ERROR_AT=f"2:{lifetimes}")
    worker = pipeline.worker()
    traffic = generate(300, duplicate_rate=0.2, bad_rate=0.0, seed=11, id_prefix=pipeline.config.run_id)
    pipeline.send(traffic)
    pipeline.drain(timeout=180)

    log = worker.log_path.read_text()
    assert log.count("FAULT: write 2 of seen ids fails") == lifetimes, worker.log_tail(60)
    assert log.count("a dependency failed in the middle of") >= lifetimes
    waits = ["rejoining in 1 s", "rejoining in 2 s"][:lifetimes]
    assert all(wait in log for wait in waits), "each restart waits longer than the one before"
    counts = asyncio.run(check(pipeline.config, traffic))
    dead_letters = asyncio.run(read_topic(pipeline.config.bootstrap, pipeline.config.topic("dlq")))
    assert dead_letters == [], [r.headers for r in dead_letters[:3]]
    assert counts.lost == 0 and counts.charged_unique == len(traffic.unique_events)
    assert counts.duplicate_charges == 0  # the idempotent sink, under both guarantees
    if guarantee == "exactly_once":
        assert counts.output_duplicates == 0 and counts.output_missing == 0
        assert counts.balance_mismatches == 0, counts.mismatch_examples
        assert counts.open_transactions == 0
    assert worker.running, worker.log_tail(40)
