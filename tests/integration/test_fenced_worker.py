"""A worker paused past its session timeout (a GC pause, a stopped VM) while another
takes its partitions: when it wakes up it is a zombie, fenced by the broker.

Stock Faust crashes on the fenced commit (ProducerFenced, exit 1) and marks its
stop clean, so the restart keeps local table rows written by the transactions
the broker aborted. With ``fenced-restart`` the worker stops with its stop marked
unclean and starts again in the same process (Kafka Streams' rejoin: no supervisor
needed): the new worker wipes the local state and restores it from the committed
changelog, and the output is exact.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from lab.checker import check
from streams_app.traffic import Traffic, generate
from tests.fixtures.kafka import wait_for

pytestmark = pytest.mark.integration


def test_a_worker_fenced_after_a_long_pause_rejoins_from_the_committed_state(pipeline_factory, fresh_db):
    # The sink charges into PostgreSQL: a worker paused inside a ledger transaction holds
    # its row locks until the server ends the idle transaction (the ledger's session
    # timeout); with a shared SQLite file the paused worker held the file lock, the other
    # worker's sink waited for it and its revocation with it, and the takeover came only
    # after the pause (CI on f894b32: 25 s).
    pipeline = pipeline_factory("exactly_once", sink_db=fresh_db)
    w1 = pipeline.worker("w1")
    w2 = pipeline.worker("w2")
    config = pipeline.config
    traffic = generate(30_500, duplicate_rate=0.2, seed=30, id_prefix=config.run_id)
    first, middle, last = traffic.records[:300], traffic.records[300:30_300], traffic.records[30_300:]
    pipeline.send(_part(first))
    pipeline.drain()

    pipeline.send(_part(middle))
    # w1 is in the middle of transactions with outputs in them: 30,000 records take the two
    # workers seconds. A w1 stopped with nothing in flight is not fenced: it simply rejoins
    # (1,000 records were done in under 0.5 s once the stages took batches; 6,000 in under a
    # second once they sent record batches: 2 of 10 local runs had w1 idle at the pause).
    time.sleep(0.3)
    os.killpg(w1.process.pid, signal.SIGSTOP)  # past BROKER_SESSION_TIMEOUT (10 s in tests)
    time.sleep(15)
    # Paused until w2 owns every stream partition (4 source topics): its InitProducerId for
    # them has fenced w1's producers. A fixed 25 s pause sometimes ended before the takeover
    # completed, and w1 simply rejoined, never fenced (2 of 16 local runs, session 13).
    wait_for(lambda: _owns(w2, 4 * config.partitions), 60, lambda: "expected w2 to take over every partition")
    time.sleep(3)
    os.killpg(w1.process.pid, signal.SIGCONT)
    pid = w1.process.pid

    def rejoined() -> bool:
        log = w1.log_path.read_text()
        return "fenced-restart: rejoining" in log and log.rsplit("fenced-restart: rejoining", 1)[1].count(
            "[^Worker]: Ready") > 0

    wait_for(rejoined, 90, lambda: f"expected the fenced worker to rejoin:\n{w1.log_tail(40)}")
    log = w1.log_path.read_text()
    assert "fenced-restart: this worker was fenced" in log, w1.log_tail(60)
    assert w1.running and w1.process.pid == pid, "the same process, no supervisor restart"
    rejoin = log.rsplit("fenced-restart: rejoining", 1)[1]
    assert "did not stop cleanly: deleting local table state" in rejoin
    pipeline.send(_part(last))
    pipeline.drain()
    assert w1.running and w2.running
    counts = asyncio.run(check(config, traffic))
    assert counts.charged_unique == counts.unique_events == len(traffic.unique_events)
    assert counts.duplicate_charges == 0 and counts.lost == 0
    assert counts.output_duplicates == 0 and counts.output_missing == 0
    assert counts.balance_mismatches == 0, counts.mismatch_examples
    assert counts.open_transactions == 0


def _owns(worker, count: int) -> bool:
    """``worker`` holds ``count`` stream partitions (its dashboard's lag rows); a worker busy
    in the rebalance may not answer in time: ask again."""
    try:
        return len(worker.stats()["lag"]) >= count
    except OSError:
        return False


def _part(records):
    """A slice of the traffic, sent on its own (the checks use the whole)."""
    return Traffic(records=list(records))
