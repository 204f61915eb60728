"""Named crash points for the semantics lab; free when no fault is armed.

A crash point is a line in an agent such as ``crashpoint("sink.after_effect")``.
The lab arms one by starting a worker with

    FAULT_CRASH_AT=sink.after_effect:25     # SIGKILL on the 25th pass

and the worker kills itself with SIGKILL exactly there: no ``finally`` block,
no flush, no commit, no Faust shutdown, as in a power cut. That makes the
lab's "> 0 duplicates" predictions certain instead of likely.

When ``FAULT_CRASH_AT`` is unset, :func:`crashpoint` is a function that
returns at once (one call, no lookups).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections import Counter

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
    name, _, nth = spec.partition(":")
    if name not in CRASH_POINTS:
        raise SystemExit(
            f"FAULT_CRASH_AT={spec!r}: unknown crash point {name!r}; "
            f"use one of: {', '.join(sorted(CRASH_POINTS))}"
        )
    try:
        count = int(nth or "1")
    except ValueError:
        raise SystemExit(f"FAULT_CRASH_AT={spec!r}: expected NAME:N with N a whole number") from None
    return name, count


def _armed(target: str, nth: int):
    passes: Counter[str] = Counter()

    def crashpoint(name: str) -> None:
        if name != target:
            return
        passes[name] += 1
        if passes[name] == nth:
            print(f"FAULT: SIGKILL at crash point {name} (pass {nth})", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    return crashpoint


def _disarmed(name: str) -> None:
    return None


_spec = os.environ.get("FAULT_CRASH_AT", "")
crashpoint = _armed(*_parse(_spec)) if _spec else _disarmed


# -- seek-backs ----------------------------------------------------------------------
#
#     FAULT_SEEK_BACK_EVERY=0.2     # every 0.2 s, one stream partition in turn
#
# seeks a partition back to its committed offset the way the stall heal does (its acked
# offsets forgotten, the flow stopped around the seek): what a burst of heal seeks, or
# any redelivery, does to Faust's fetch path. Everything after the committed offset comes
# again and must be skipped as already processed: nothing lost, nothing repeated.


def _seek_back_interval(spec: str) -> float:
    try:
        interval = float(spec)
    except ValueError:
        interval = 0.0
    if not interval > 0:
        raise SystemExit(f"FAULT_SEEK_BACK_EVERY={spec!r}: expected a positive number of seconds")
    return interval


def install_seek_backs(app) -> None:
    """Arm the seek-back fault on ``app`` when FAULT_SEEK_BACK_EVERY is set."""
    spec = os.environ.get("FAULT_SEEK_BACK_EVERY", "")
    if not spec:
        return
    interval = _seek_back_interval(spec)
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
