"""The payments pipeline's named crash points, seek-back and slow-restore faults, for the semantics lab.

A crash point is a line in an agent such as ``crashpoint("sink.after_effect")``; the lab
arms one with ``FAULT_CRASH_AT=sink.after_effect:25`` and the worker SIGKILLs itself on
the 25th pass (the kit's mechanism: faust_guarantees/crashpoints.py). Here: the names
this pipeline declares (an unknown name stops the worker at start-up with the list).
"""

from __future__ import annotations

import logging
import os
from collections import Counter

from faust_guarantees import crashpoints
from faust_guarantees.seeking import seek_back

log = logging.getLogger(__name__)

#: Every crash point an agent declares; the lab validates names against this.
CRASH_POINTS = {
    "ingest.after_forward": "ingest sent the validated event, offset not committed",
    "dedup.after_forward": "dedup forwarded a unique event, before marking it seen",
    "apply.after_update": "apply updated the balance and sent the output, offset not committed",
    "sink.after_effect": "the sink's database write committed, the Kafka offset did not",
    "sink.after_commit": "at_most_once: the sink committed the offset, the charge is not done yet",
}


def _parse(spec: str) -> tuple[str, int]:
    return crashpoints.parse(spec, known=CRASH_POINTS)


crashpoint = crashpoints.from_environment(known=CRASH_POINTS)


# -- seek-backs ----------------------------------------------------------------------
#
#     FAULT_SEEK_BACK_EVERY=0.2     # every 0.2 s, one stream partition in turn
#
# seeks a partition back to its committed offset the way the stall heal does (its acked
# offsets forgotten, the flow stopped around the seek): what a burst of heal seeks, or
# any redelivery, does to Faust's fetch path. Everything after the committed offset comes
# again and must be skipped as already processed: nothing lost, nothing repeated.


def _positive_seconds(name: str, spec: str) -> float:
    """A fault's ``name=spec`` setting as seconds; the worker stops at start-up otherwise."""
    try:
        seconds = float(spec)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise SystemExit(f"{name}={spec!r}: expected a positive number of seconds")
    return seconds


def install_seek_backs(app) -> None:
    """Arm the seek-back fault on ``app`` when FAULT_SEEK_BACK_EVERY is set."""
    spec = os.environ.get("FAULT_SEEK_BACK_EVERY", "")
    if not spec:
        return
    interval = _positive_seconds("FAULT_SEEK_BACK_EVERY", spec)
    turns = Counter()

    @app.timer(interval)
    async def seek_back_in_turn() -> None:
        consumer = app.consumer
        partitions = sorted(tp for tp in consumer.assignment() if app.topics.acks_enabled_for(tp.topic))
        if not partitions:
            return
        tp = partitions[turns["seek"] % len(partitions)]
        turns["seek"] += 1
        committed = consumer._committed_offset.get(tp)
        if committed is None:
            return
        log.info("FAULT: seeking %s[%d] back to %d", tp.topic, tp.partition, committed)
        await seek_back(consumer, tp, committed)


# -- a slow restore ------------------------------------------------------------------
#
#     FAULT_SLOW_RESTORE_S=4
#
# holds the first changelog records a table restore fetches for that many seconds between
# the consumer thread (whose position has moved past them) and the recovery: what a loaded
# machine does now and then. The restore must wait for them (verified-restore-end).


def install_slow_restore(app) -> None:
    """Arm the slow-restore fault on ``app`` when FAULT_SLOW_RESTORE_S is set."""
    import asyncio

    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    spec = os.environ.get("FAULT_SLOW_RESTORE_S", "")
    if not spec:
        return
    delay = _positive_seconds("FAULT_SLOW_RESTORE_S", spec)
    thread_class = app._kit_classes.of(AIOKafkaConsumerThread)  # the app's own class, not Faust's
    stock_getmany = thread_class.getmany
    held: list[int] = []

    async def getmany(self, active_partitions, timeout):
        records = await stock_getmany(self, active_partitions, timeout)
        changelog = sum(len(batch) for tp, batch in (records or {}).items() if tp.topic.endswith("-changelog"))
        if changelog and not held and app.in_recovery:
            held.append(changelog)
            log.info("FAULT: holding %d changelog records for %s s on their way to the recovery", changelog, delay)
            await asyncio.sleep(delay)
        return records

    thread_class.getmany = getmany


# -- a full disk under the dedup state -------------------------------------------------
#
#     FAULT_STORE_ERROR_AT=3        # the 3rd batch of seen ids this worker writes fails
#     FAULT_STORE_ERROR_AT=3:2      # ... in each of its first 2 lifetimes
#
# makes that write raise what rocksdict raises when the disk is full, after the batch's
# outputs were sent: a dependency failing in the middle of a batch. Nothing may be
# dead-lettered, lost or (under exactly_once) repeated: the worker starts again and the
# batch comes again (faust_guarantees/dependencies.py). A lifetime is a run of the process
# between such restarts (the kit tells the next one how many came before).

STORE_ERROR = "IO error: No space left on device: While appending to file (FAULT_STORE_ERROR_AT)"


def install_store_errors(seen_events) -> None:
    """Arm the store-error fault on the seen-events table (``tables.SeenEvents``) when
    FAULT_STORE_ERROR_AT is set; before the stages take its methods."""
    from faust_guarantees.fencing import DEPENDENCY_RESTARTS_ENV, recent_rejoins

    spec = os.environ.get("FAULT_STORE_ERROR_AT", "")
    if not spec:
        return
    nth, _, lifetimes = spec.partition(":")
    try:
        nth_write, fail_lifetimes = int(nth), int(lifetimes or "1")
    except ValueError:
        raise SystemExit(f"FAULT_STORE_ERROR_AT={spec!r}: expected N or N:LIFETIMES, whole numbers") from None
    if len(recent_rejoins(env=DEPENDENCY_RESTARTS_ENV)) >= fail_lifetimes:
        return
    stock = seen_events.mark_all_seen
    writes = Counter()

    def mark_all_seen(rows, seen, now=None):
        writes["seen"] += 1
        if writes["seen"] == nth_write:
            log.warning("FAULT: write %d of seen ids fails as on a full disk", nth_write)
            raise Exception(STORE_ERROR)  # what rocksdict raises: a plain Exception with RocksDB's status
        return stock(rows, seen, now)

    seen_events.mark_all_seen = mark_all_seen
