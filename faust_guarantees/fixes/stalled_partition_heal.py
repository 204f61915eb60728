"""The stalled-partition-heal fix.

Faust commits a partition only up to the first offset it has not seen acked. Two things
leave a head gap that is never acked, after which the partition never commits again (lag
grows forever; a restart reprocesses everything after it): a record lost between fetch
and agent (a queue cleared on rebalance or recovery, faust-streaming#596 and the
resume-before-seek race), and, on a topic written in transactions, offsets that hold
only transaction markers or aborted records which Faust's gap tracking
(Consumer._add_gap) missed. Fix: a partition whose acked offsets start past its
committed offset for 3 commit intervals is probed with a read_committed reader. If the
gap holds no committed record, it is registered as a gap (nothing to deliver, nothing to
duplicate). If it holds one, the partition is sought back to deliver it again; the
records after it that were already processed (under exactly_once, into the open
transaction) are skipped when they come again (faust_guarantees/memory.py), so nothing is
repeated. A commit in flight is not a stall: it removes the offsets it commits from the
acked list before it awaits the producer flush and the broker, and updates the committed
offset only after, so the check waits for it to end (at commit interval 0.1 s a commit
took up to 0.46 s, and the heal sought partitions back 40 times in 17 s of a benchmark
run). A partition behind its high watermark with nothing acked after its committed
offset (records lost at its tail, where no hole shows) is probed the same way once the
worker has had nothing in progress for 5 s; a range that holds only transaction markers
is probed once. A hole holding a record an agent still has in hand (delivered since the
last rebalance, not acked) is work in progress, not a stall: it is left alone.

Regression tests: tests/unit/test_stall_heal.py; on the broker,
test_the_stall_heal_tells_transaction_markers... and
test_at_least_once_at_commit_interval_0_1_s_drains_without_heal_seeks (before: the
benchmark's at_least_once worker stopped draining in 3 of 3 runs; after: 0 seeks).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from .. import state
from ..holes import first_hole
from ..probe import bootstrap, first_committed_record
from ..seeking import seek_back
from ..state import Guarantees

log = logging.getLogger(__name__)

NAME = "stalled-partition-heal"
#: The guarantee it is for; None: every one.
ONLY = None
#: The upstream code it replaces or relies on, with the fingerprint of the verified source.
UPSTREAM = {
    "faust.transport.consumer:Consumer.ack": "5fcf41cf4515",
}


#: A worker with nothing in progress and a partition behind is stalled after this long.
IDLE_STALL_S = 5.0


def install(guarantees: Guarantees) -> None:
    app = guarantees.app
    app.timer(app.conf.broker_commit_interval)(_heal_stalled_partitions_for(guarantees))


def _heal_stalled_partitions_for(guarantees: Guarantees) -> Any:
    app = guarantees.app
    memory = guarantees.memory
    stalled_since: dict[Any, tuple[int, int]] = {}  # tp -> (committed, checks seen stalled)
    idle_since: dict[Any, tuple[int, float]] = {}  # tp -> (committed, first seen idle behind)
    #: tp -> (committed, high watermark) of a range probed and found to hold no record (under
    #: exactly_once an idle partition ends on a transaction marker: probed once, not every time)
    empty: dict[Any, tuple[int, int]] = {}

    async def heal_stalled_partitions() -> None:
        consumer = app.consumer
        if consumer._commit_fut is not None:
            # A commit in flight took its offsets out of the acked list and sets the
            # committed offset only once the broker answers: a head gap that is not one.
            return
        idle = _worker_idle(app)
        now = asyncio.get_running_loop().time()
        for tp in list(consumer.assignment()):
            acked = consumer._acked.get(tp)
            committed = consumer._committed_offset.get(tp)
            if committed is not None:
                memory.forget_below(tp, committed)
            if not acked:
                stalled_since.pop(tp, None)
                behind = _idle_behind(app, consumer, tp, committed, idle, now, idle_since)
                if behind is not None and empty.get(tp) != (committed, behind) \
                        and await _heal(app, consumer, tp, committed, behind, tail=True) == "gap":
                    empty[tp] = (committed, behind)
                continue
            idle_since.pop(tp, None)
            hole = _hole(consumer, tp, acked, committed)
            if hole is None or _in_progress(app, tp, hole):
                stalled_since.pop(tp, None)
                continue
            seen_at, checks = stalled_since.get(tp, (hole, 0))
            checks = checks + 1 if seen_at == hole else 1
            stalled_since[tp] = (hole, checks)
            if checks < 3:
                continue
            stalled_since.pop(tp, None)
            await _heal(app, consumer, tp, committed, hole[1], start=hole[0])

    return heal_stalled_partitions


def _in_progress(app: Any, tp: Any, hole: tuple[int, int]) -> bool:
    """Whether a record in ``hole`` is in an agent's hands (delivered since the last
    rebalance, not yet acked): a stage holding it (a sink waiting for its database, or
    setting aside a record its target keeps failing while it goes on) is no stall, and
    seeking back would deliver it a second time while the first is still worked on."""
    generation = app.consumer_generation_id
    start, end = hole
    return any(message.tp == tp and start <= message.offset < end and not message.acked
               and message.generation_id == generation for message in list(app.consumer._unacked_messages))


def _worker_idle(app: Any) -> bool:
    """Nothing in progress: the flow runs, no event is being processed, every stream's
    queue is empty and no table is recovering."""
    consumer = app.consumer
    if not consumer.flow_active or app.in_recovery or consumer._unacked_messages:
        return False
    return all(channel.queue.empty() for channel in app.topics._topics if hasattr(channel, "queue"))


def _idle_behind(app: Any, consumer: Any, tp: Any, committed: int | None, idle: bool, now: float,
                 idle_since: dict[Any, tuple[int, float]]) -> int | None:
    """The partition's high watermark when ``tp`` has been behind it for IDLE_STALL_S while
    the worker had nothing in progress and nothing acked for it: records fetched and never
    delivered at the partition's tail, which leave no hole below an acked offset (so the
    head-gap check never sees them) and no event that could still move the commit."""
    highwater = consumer.highwater(tp) if idle and committed is not None else None
    if highwater is None or committed is None or highwater <= committed \
            or not app.topics.acks_enabled_for(tp.topic):
        idle_since.pop(tp, None)
        return None
    seen_at, since = idle_since.get(tp, (committed, now))
    if seen_at != committed:
        seen_at, since = committed, now
    idle_since[tp] = (seen_at, since)
    if now - since < IDLE_STALL_S:
        return None
    idle_since.pop(tp, None)
    return highwater


def _hole(consumer: Any, tp: Any, acked: Any, committed: int | None) -> tuple[int, int] | None:
    """The first hole below ``tp``'s acked offsets: [start, end) neither acked nor a gap."""
    if committed is None:
        return None
    if getattr(consumer._new_offset, "_fixed", False):  # exact-gaps: any hole, head or not
        return first_hole(acked, consumer._gap.get(tp), committed)
    # Faust's own commit passes a one-offset hole at the head and commits up to the others.
    first_acked = min(acked)
    return (committed, first_acked) if first_acked - committed > 1 else None


async def _heal(app: Any, consumer: Any, tp: Any, committed: int, first_acked: int,
                tail: bool = False, start: int | None = None) -> str | None:
    """Probe [start, first_acked) (``start``: the committed offset unless given) with a
    read_committed reader: register it as a gap ("gap") if it holds no committed record,
    else seek back to the committed offset to deliver it again ("seek"). ``tail``: the
    range ends at the high watermark (nothing acked after it), not at an acked offset."""
    start = committed if start is None else start
    try:
        record = await first_committed_record(bootstrap(app), tp, start, first_acked)
    except TimeoutError:  # an open transaction holds the range back: ask again later
        return None
    if record is None or record >= first_acked:
        log.info(
            "stalled-partition-heal: %s offsets %d-%d hold no committed record (transaction "
            "markers or aborted data); registering them as a gap so commits go on",
            tp, start, first_acked - 1,
        )
        await consumer._add_gap(tp, start, first_acked - 1)
        state.of(app).intervened(NAME, "gap")
        return "gap"
    if tail:
        log.warning(
            "stalled-partition-heal: %s is behind (committed %d, high watermark %d) with "
            "nothing in progress for %.0f s: records fetched and never delivered; seeking "
            "back to %d to deliver them again", tp, committed, first_acked, IDLE_STALL_S, committed,
        )
    else:
        # Records after the hole that were processed (under exactly_once: into the open
        # transaction) come again and are skipped by first_deliveries, unrepeated.
        log.warning(
            "stalled-partition-heal: %s has acked offsets from %d but record %d was "
            "never acked; seeking back to %d to deliver it again",
            tp, first_acked, record, committed,
        )
    try:
        await seek_back(consumer, tp, committed)
        state.of(app).intervened(NAME, "seek")
    except Exception as exc:  # noqa: BLE001 - e.g. the partition was revoked meanwhile
        log.warning("stalled-partition-heal: seeking %s back failed (%r); trying again later", tp, exc)
    return "seek"
