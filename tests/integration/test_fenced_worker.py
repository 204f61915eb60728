"""A worker paused past its session timeout (a GC pause, a stopped VM) while another
takes its partitions: when it wakes up it is a zombie, fenced by the broker.

Kafka Streams calls this "task migrated": the zombie's transactions are aborted,
it closes its tasks (under exactly_once wiping their local state, which may hold
rows of the aborted transactions) and rejoins the group. Stock Faust crashes
instead (ProducerFenced, "PaymentsApp Crashed", exit 1): nothing is duplicated,
but an operator's supervisor has to restart it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from lab.checker import check
from streams_app.traffic import Traffic, generate

pytestmark = pytest.mark.integration


def test_a_worker_fenced_after_a_long_pause_rejoins_and_nothing_is_repeated(pipeline_factory):
    pipeline = pipeline_factory("exactly_once")
    w1 = pipeline.worker("w1")
    w2 = pipeline.worker("w2")
    config = pipeline.config
    traffic = generate(1500, duplicate_rate=0.2, seed=30, id_prefix=config.run_id)
    first, middle, last = traffic.records[:300], traffic.records[300:1300], traffic.records[1300:]
    pipeline.send(_part(first))
    pipeline.drain()

    pipeline.send(_part(middle))
    time.sleep(0.5)  # w1 is in the middle of transactions with outputs in them
    os.killpg(w1.process.pid, signal.SIGSTOP)  # past BROKER_SESSION_TIMEOUT (10 s in tests)
    time.sleep(25)
    os.killpg(w1.process.pid, signal.SIGCONT)
    time.sleep(20)  # the zombie finds out: fenced producers, a rejoin
    assert w1.running, f"the fenced worker exited ({w1.returncode}):\n{w1.log_tail(60)}"

    pipeline.send(_part(last))
    pipeline.drain()
    assert w1.running and w2.running
    counts = asyncio.run(check(config, traffic))
    assert counts.charged_unique == counts.unique_events == len(traffic.unique_events)
    assert counts.duplicate_charges == 0 and counts.lost == 0
    assert counts.output_duplicates == 0 and counts.output_missing == 0
    assert counts.balance_mismatches == 0, counts.mismatch_examples
    assert counts.open_transactions == 0


def _part(records):
    """A slice of the traffic, sent on its own (the checks use the whole)."""
    return Traffic(records=list(records))
